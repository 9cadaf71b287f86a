//! Connection supervision: notice a lost connection, reconnect with backoff, fail over.

use super::Amqp;
use super::connection::{EventStream, Live};
use crate::broker_url::BrokerUrl;
use crate::error::Result;
use crate::error_chain;
use futures_lite::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Tries every address once, starting at `first`; the first that answers wins. The exchange
/// is declared on each new connection.
pub(super) async fn open_any(
    urls: &[BrokerUrl],
    name: &str,
    ca_pem: Option<&str>,
    first: usize,
    generation: u64,
) -> Result<(Live, usize)> {
    let mut last = None;
    for i in 0..urls.len() {
        let idx = (first + i) % urls.len();
        match Live::open(&urls[idx], name, ca_pem, generation).await {
            Ok(live) => return Ok((live, idx)),
            Err(e) => {
                warn!(help = "tchu::troubleshooting#connect-refused", url = %urls[idx], error = %error_chain(&e), "broker unreachable");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(crate::Error::NoBrokerAddress))
}

/// Watches the live connection; on loss, reconnects with jittered exponential backoff and
/// publishes the new connection. Ends when the client is closed or dropped.
pub(super) async fn supervise(me: Weak<Amqp>, mut idx: usize) {
    loop {
        let Some(amqp) = me.upgrade() else { return };
        let Some(live) = amqp.live.borrow().clone() else {
            return;
        };
        let events = live.events.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(events) = events else { return };
        let signals = Signals {
            broken: amqp.broken.clone(),
            broken_gen: amqp.broken_gen.clone(),
            closing: amqp.closing.clone(),
        };
        drop(amqp);
        let reason = watch_until_lost(&live, events, &signals).await;
        let amqp = me.upgrade().filter(|a| !a.closing.load(Ordering::SeqCst));
        let Some(amqp) = amqp else {
            // Closed or dropped: nothing may reconnect, and the connection goes with the client.
            let _ = live.conn.close(200, "tchu client closed".into()).await;
            return;
        };
        amqp.live.send_replace(None);
        warn!(help = "tchu::troubleshooting#reconnecting", url = %live.url, reason = %reason, "broker connection lost; reconnecting");
        drop(amqp);
        let generation = live.generation;
        // Whatever still runs on the old connection (consumers, reply channels) must end with it.
        tokio::spawn(async move {
            let _ = live.conn.close(320, "tchu reconnecting".into()).await;
        });
        match reconnect(&me, idx, generation).await {
            Some(i) => idx = i,
            None => return,
        }
    }
}

/// How the client tells its supervisor that something happened, without keeping it alive.
struct Signals {
    broken: Arc<Notify>,
    broken_gen: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
}

/// Waits until the connection is lost, a channel on it broke while it looks up, or the client
/// closed; says why.
async fn watch_until_lost(live: &Live, mut events: EventStream, signals: &Signals) -> String {
    loop {
        if signals.closing.load(Ordering::SeqCst) {
            return "client closed".to_owned();
        }
        // The status check catches a loss that happened before the listener existed.
        if !live.is_connected() {
            return "connection closed".to_owned();
        }
        tokio::select! {
            ev = events.next() => match ev {
                // lapin also reports a single channel's closure here: only a connection that
                // is down needs a reconnect.
                Some(lapin::Event::Error(e)) if !live.is_connected() => return e.to_string(),
                Some(_) => continue,
                None => return "connection closed".to_owned(),
            },
            () = signals.broken.notified() => {
                if signals.broken_gen.load(Ordering::SeqCst) == live.generation {
                    return "the publisher channel failed".to_owned();
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Reconnects, trying the address after `idx` first, until it succeeds or the client is
/// closed; publishes the new connection and returns the index of its address.
async fn reconnect(me: &Weak<Amqp>, idx: usize, generation: u64) -> Option<usize> {
    let (urls, name, ca) = {
        let amqp = me.upgrade()?;
        (amqp.urls.clone(), amqp.name.clone(), amqp.ca_pem.clone())
    };
    let mut delay = Duration::from_millis(100);
    loop {
        // Full jitter keeps a fleet of services from reconnecting in lockstep.
        tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
        if me
            .upgrade()
            .is_none_or(|a| a.closing.load(Ordering::SeqCst))
        {
            return None;
        }
        let next = (idx + 1) % urls.len();
        match open_any(&urls, &name, ca.as_deref(), next, generation + 1).await {
            Ok((new, i)) => {
                let amqp = me.upgrade().filter(|a| !a.closing.load(Ordering::SeqCst));
                let Some(amqp) = amqp else {
                    let _ = new.conn.close(200, "tchu client closed".into()).await;
                    return None;
                };
                info!(url = %new.url, generation = new.generation, "reconnected to the broker");
                amqp.live.send_replace(Some(Arc::new(new)));
                return Some(i);
            }
            Err(e) => {
                let (error, retry_in_ms) = (error_chain(&e), delay.as_millis() as u64);
                warn!(help = "tchu::troubleshooting#reconnecting", %error, retry_in_ms, "reconnection failed");
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
