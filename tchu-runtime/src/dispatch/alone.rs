//! Running alone in the process: what the quarantine (`service::quarantine`) and the ordered
//! queue's redelivered messages need, so that a process that ends while one runs can only have
//! been ended by it.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Alone means alone in the process: several services may share one, and a process that ends
/// takes every service's deliveries with it. Every delivery task holds this for reading while
/// its handlers run; moving redelivered messages and running one alone hold it for writing.
static ALONE: RwLock<()> = RwLock::const_new(());

/// Held by a delivery task while it runs.
pub(crate) async fn beside_others() -> RwLockReadGuard<'static, ()> {
    ALONE.read().await
}

/// Held while nothing else in the process may run.
pub(crate) async fn alone() -> RwLockWriteGuard<'static, ()> {
    ALONE.write().await
}

/// Either guard.
pub(crate) enum Guard {
    Beside(#[allow(dead_code, reason = "held for its drop")] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code, reason = "held for its drop")] RwLockWriteGuard<'static, ()>),
}

/// Alone, or beside the others.
pub(crate) async fn guard(alone_: bool) -> Guard {
    if alone_ {
        Guard::Alone(alone().await)
    } else {
        Guard::Beside(beside_others().await)
    }
}
