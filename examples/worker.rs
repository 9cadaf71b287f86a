//! A worker whose handler takes a while: with acknowledgements after handling (the default), a
//! worker killed mid-handler leaves the message on the broker, and another worker gets it.
//!
//! Run with: `cargo run --example worker` (RabbitMQ), then publish `demo.work` events, e.g.
//! `cargo run --example worker -- publish 42`. Environment: `TCHU_WORK_MS` (handler duration,
//! default 500), `TCHU_EXIT_AFTER` (exit after N handled events), `TCHU_QUEUE`.
//!
//! A `demo.work` event with `"poison": true` aborts the process, the way an out-of-memory kill
//! or a stack overflow would: restarted by a supervisor, the worker gets it back, runs it alone
//! from the quarantine, and after `TCHU_REDELIVERY_LIMIT` runs (default 5) tchu parks it in the
//! dead-letter queue as `crashed` instead of running it again; the events that were in flight
//! beside it are handled. `TCHU_PREFETCH` and `TCHU_QUEUE_TYPE` (`quorum` or `classic`) apply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tchu::prelude::*;

#[tchu::event(topic = "demo.work")]
struct Work {
    id: u64,
    #[serde(default)]
    poison: bool,
}

static DONE: AtomicUsize = AtomicUsize::new(0);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tchu::subscribe]
async fn work(w: Work, msg: Message) {
    println!("started {} (redelivered: {})", w.id, msg.redelivered());
    if w.poison {
        std::process::abort();
    }
    tokio::time::sleep(Duration::from_millis(
        env_u64("TCHU_WORK_MS").unwrap_or(500),
    ))
    .await;
    println!("done {}", w.id);
    let n = DONE.fetch_add(1, Ordering::SeqCst) as u64 + 1;
    if env_u64("TCHU_EXIT_AFTER").is_some_and(|limit| n >= limit) {
        tokio::spawn(async {
            // Let the acknowledgement go out first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::process::exit(0);
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("publish") {
        let client = tchu::Client::from_env().await?;
        for id in args[2..].iter().map(|a| a.parse::<u64>()) {
            client
                .publish(&Work {
                    id: id?,
                    poison: false,
                })
                .await?;
        }
        client.close().await;
        return Ok(());
    }
    Ok(tchu::run!(queue = "demo_worker", prefetch = 1)?)
}
