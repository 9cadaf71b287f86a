//! The quarantine: where a redelivered message runs alone, so that a message that ends the
//! process is blamed, counted exactly, and never multiplied, and nothing else is blamed with it.
//!
//! A delivery the broker marks as redelivered either ended a process (it ran when the process
//! died) or was merely in flight beside the one that did, on this replica or another. The
//! consume loop never runs one beside others: it stops consuming, lets what runs finish, and,
//! while nothing runs, moves each redelivered message to `<queue>.quarantine` (a confirmed copy,
//! then the acknowledgement: with nothing running, only an outside kill can fall between the
//! two). Then it takes the quarantine's messages one at a time (`basic.get`) and runs each
//! alone, before it consumes again. A process that ends while one of them runs can only have
//! been ended by it (or from outside), and the quarantine, a quorum queue, counts each such
//! return in `x-delivery-count`: admission parks the message as `crashed` once it ran `limit`
//! times in all. An innocent runs once, alone, and is acknowledged.

use crate::dispatch::{self, Dispatcher, Source};
use crate::error_chain;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{info, warn};

pub(super) use crate::dispatch::alone::{alone, beside_others};

/// Whether messages wait in the quarantine (another replica's, or left by a process that
/// ended while running one).
pub(super) async fn waiting(shared: &Dispatcher) -> bool {
    let depth = shared
        .client
        .transport()
        .depth(&shared.topo.quarantine_queue);
    matches!(depth.await, Some((n, _)) if n > 0)
}

/// Takes the quarantine's messages one at a time and runs each alone, until it is empty or the
/// service is told to stop. `false` when the quarantine could not be read.
pub(super) async fn run_alone(shared: &Arc<Dispatcher>, stop: &watch::Receiver<bool>) -> bool {
    let queue = &shared.topo.quarantine_queue;
    let taker = match shared.client.transport().taker().await {
        Ok(t) => t,
        Err(e) => {
            warn!(help = "tchu::troubleshooting#quarantine-unreadable", %queue, error = %error_chain(&e), "cannot read the quarantine; trying again later");
            return false;
        }
    };
    let mut read = true;
    while !*stop.borrow() {
        // Taken before the message is: a message taken is on this process's hands, and would
        // be counted should another one end the process.
        let _alone = alone().await;
        match taker.take(queue).await {
            Ok(Some(d)) => {
                info!(%queue, routing_key = %d.msg.routing_key, "running a redelivered message alone");
                dispatch::handle(shared.clone(), d, Source::Quarantine).await;
            }
            Ok(None) => break,
            Err(e) => {
                warn!(help = "tchu::troubleshooting#quarantine-unreadable", %queue, error = %error_chain(&e), "reading the quarantine failed; trying again later");
                read = false;
                break;
            }
        }
    }
    taker.close().await;
    read
}
