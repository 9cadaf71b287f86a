//! Handlers chosen by configuration: built at run time with `tchu::Handler`, next to an
//! attribute handler, in one `tchu::run!()` binary.
//!
//! ```text
//! NOTIFY_PATTERN='alerts.*' cargo run --example configured
//! cargo run --example configured -- topology --json   # both kinds, with their metadata
//! ```

use std::time::Duration;
use tchu::prelude::*;

/// A user signed up.
#[tchu::event(topic = "users.signed_up")]
#[derive(Debug)]
pub struct SignedUp {
    /// The user.
    pub user_id: u64,
}

/// Asks how many alerts were sent so far.
#[tchu::event(topic = "notify.count", response = AlertCount)]
#[derive(Debug)]
pub struct CountAlerts {}

/// How many alerts were sent.
#[tchu::payload]
#[derive(Debug)]
pub struct AlertCount {
    /// Alerts handled since start.
    pub sent: u64,
}

#[tchu::subscribe(metadata(owner = "growth", "runbook.url" = "https://runbooks.example/welcome"))]
async fn welcome(ev: SignedUp) {
    println!("welcome {}", ev.user_id);
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let pattern = std::env::var("NOTIFY_PATTERN").unwrap_or_else(|_| "alerts.#".into());
    let prefix = std::env::var("NOTIFY_PREFIX").unwrap_or_else(|_| "[alert]".into());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let alerts = Handler::on_pattern::<Message>(pattern, move |msg| {
        let (prefix, counter) = (prefix.clone(), counter.clone());
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            println!("{prefix} {} {}", msg.topic(), msg.payload());
        }
    })
    .with_name("notify.alerts")
    .with_retry(RetryPolicy::fixed(3, Duration::from_secs(2)))
    .with_metadata("owner", "sre");
    let count = Handler::on::<CountAlerts>(move |_| {
        let sent = sent.load(Ordering::Relaxed);
        async move { AlertCount { sent } }
    })
    .with_name("notify.count");
    tchu::run!(
        queue = "configured_queue",
        handler = alerts,
        handler = count
    )
}
