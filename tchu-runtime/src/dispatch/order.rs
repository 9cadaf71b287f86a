//! Ordered handlers (`ordered(key = ...)`): which lanes a delivery of the ordered queue takes,
//! which of its keys are held behind a parked message, and its dispatch, where a failure
//! retries in place (holding its key) and a dead letter holds the later messages of its key.
//!
//! The consume loop (`service::ordered`) runs the deliveries of one lane one after the other,
//! in queue order, and those of different lanes side by side.

use super::inbound::{self, Inbound};
use super::route::{self, Route};
use super::verdict::{Failure, OrderMark, Rules, Verdict};
use super::{Dispatcher, Disposition, RunMode};
use crate::handler::{Handler, payload_key};
use crate::headers::{DELIVERY_COUNT_HEADER, FailureKind};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tchu_core::envelope::WireMessage;
use tracing::{debug, warn};

/// The keys held behind a parked message, by handler and key: the id of the message parked
/// first. A later message of a held key is parked behind it as `held`, without running.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    held: Mutex<HashMap<(String, String), String>>,
    last_seq: AtomicU64,
}

impl Holds {
    /// The message `key` of `handler` waits behind, if it is held by another one than `id`.
    /// Held by `id` itself (parked, then given back because the dead letter could not be
    /// published), it is released: that message runs again.
    fn held_by(&self, handler: &str, key: &str, id: &str) -> Option<String> {
        let mut held = self.lock();
        let k = (handler.to_owned(), key.to_owned());
        match held.get(&k) {
            Some(head) if head == id => {
                held.remove(&k);
                None
            }
            other => other.cloned(),
        }
    }

    /// Holds `key` of `handler` behind message `id`, unless it is held already.
    fn hold(&self, handler: &str, key: &str, id: &str) {
        let mut held = self.lock();
        held.entry((handler.to_owned(), key.to_owned()))
            .or_insert_with(|| id.to_owned());
    }

    /// The next place among parked messages: nanoseconds since the epoch, always increasing.
    fn next_seq(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut last = self.last_seq.load(Ordering::Relaxed);
        loop {
            let seq = now.max(last + 1);
            match (self.last_seq).compare_exchange(last, seq, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return seq,
                Err(seen) => last = seen,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A delivery of the ordered queue, admitted (or turned away) before it waits for its lanes.
pub(crate) struct Planned {
    pub(crate) admitted: Result<Inbound, Disposition>,
    /// The lanes it runs in: one per ordered handler it matches that has a key in it.
    pub(crate) lanes: Vec<u64>,
    /// Why it is parked as `crashed` without running, when it keeps ending the process.
    pub(crate) crashed: Option<String>,
}

/// Admits a delivery of the ordered queue and finds its lanes. `first`: the first delivery of
/// this consumer, the one that ran when the previous consumer's process ended, if anything did.
pub(crate) fn plan(
    d: &Dispatcher,
    msg: &mut WireMessage,
    first: bool,
    hasher: &impl BuildHasher,
) -> Planned {
    let crashed = first.then(|| crashed(msg, d.redelivery_limit)).flatten();
    let limits = inbound::Limits {
        max_bytes: d.client.max_message_bytes(),
        redelivery_limit: d.redelivery_limit,
        key: &d.signing,
        quarantined: false,
    };
    let admitted = inbound::admit(msg, &limits);
    let lanes = match &admitted {
        Ok(inbound) => match route::select(&d.handlers, inbound, &d.topo.queue, true) {
            Route::Handlers(handlers) => handlers
                .iter()
                .filter_map(|h| Some((h, key_of(h, inbound).ok()?)))
                .map(|(h, key)| hasher.hash_one((h.name.as_ref(), key.as_str())))
                .collect(),
            _ => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    Planned {
        admitted,
        lanes,
        crashed,
    }
}

/// The key of an ordered handler in a message, or why it has none.
fn key_of(h: &Handler, inbound: &Inbound) -> Result<String, String> {
    let path = h.ordered.as_deref().unwrap_or_default();
    payload_key(&inbound.env.payload, path, "ordered")
}

/// The guard against a message that kills the process, on the ordered queue: redelivered
/// messages run one at a time in queue order, so the one that ran when a process ended is the
/// first its successor receives, and the broker counts its returns (`x-delivery-count`: the
/// queue is a quorum queue). Past `limit` it is parked instead of run.
fn crashed(msg: &WireMessage, limit: u32) -> Option<String> {
    let returns = msg
        .headers
        .get(DELIVERY_COUNT_HEADER)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    (returns >= u64::from(limit)).then(|| {
        format!(
            "came back unacknowledged {returns} times, the first message its consumer got each time (a run of it ended the process); the limit is {limit}"
        )
    })
}

/// What runs of an admitted ordered delivery, and what is parked without running: the held
/// keys, a crashing message, and a message without the handler's key (parked as `rejected`,
/// holding nothing: it has no key to hold).
struct Split {
    run: Vec<(Arc<Handler>, String)>,
    parked: Vec<Failure>,
}

fn split(
    d: &Dispatcher,
    handlers: Vec<Arc<Handler>>,
    inbound: &Inbound,
    crashed: Option<&str>,
) -> Split {
    let mut out = Split {
        run: Vec::new(),
        parked: Vec::new(),
    };
    let id = inbound.env.id.as_str();
    for h in handlers {
        let key = match key_of(&h, inbound) {
            Ok(key) => key,
            Err(why) => {
                let f = Failure::park(Some(h.name.clone()), FailureKind::Rejected, why);
                out.parked.push(f);
                continue;
            }
        };
        let (kind, reason, held_by) = match (d.holds.held_by(&h.name, &key, id), crashed) {
            (Some(head), _) => {
                let why = format!("held behind `{head}`, parked earlier with the same key `{key}`");
                (FailureKind::Held, why, Some(head))
            }
            (None, Some(why)) => (FailureKind::Crashed, why.to_owned(), None),
            (None, None) => {
                out.run.push((h, key));
                continue;
            }
        };
        let mut f = Failure::park(Some(h.name.clone()), kind, reason);
        f.order = Some(mark(d, key, held_by));
        out.parked.push(f);
    }
    out
}

fn mark(d: &Dispatcher, key: String, held_by: Option<String>) -> OrderMark {
    OrderMark {
        seq: d.holds.next_seq(),
        key,
        held_by,
    }
}

/// Dispatches an admitted delivery of the ordered queue: what [`super::dispatch`] does, with
/// held keys parked behind their head, retries in place, and a dead letter holding its key.
pub(crate) async fn dispatch(
    d: &Arc<Dispatcher>,
    msg: &mut WireMessage,
    inbound: Inbound,
    redelivered: bool,
    crashed: Option<&str>,
) -> (Disposition, Option<WireMessage>) {
    let (trace, mut process) = super::record_span(msg, &inbound);
    let handlers = match route::select(&d.handlers, &inbound, &d.topo.queue, true) {
        Route::Handlers(h) => h,
        other => return super::unrouted(msg, &inbound, other),
    };
    let caller_waits = inbound.reply_to.is_some() && handlers.iter().any(|h| h.responder);
    let Split { run, mut parked } = split(d, handlers, &inbound, crashed);
    let Inbound { env, attempt, .. } = inbound;
    let (id, topic) = (env.id.clone(), env.topic.clone());
    let handlers: Vec<Arc<Handler>> = run.iter().map(|(h, _)| h.clone()).collect();
    let mode = RunMode::RetryInPlace { caller_waits };
    let outcomes =
        super::run_lending(d, &handlers, msg, env, (attempt, redelivered), &trace, mode).await;
    let (mut answers, mut runs) = (Vec::new(), attempt);
    for ((h, key), (outcome, attempts)) in run.into_iter().zip(outcomes) {
        runs = runs.max(attempts);
        let rules = Rules::of(&h, d.default_retry);
        match super::verdict::judge(&rules, outcome, attempts, caller_waits, fastrand::f64()) {
            Verdict::Done => debug!(handler = %h.name, "handled"),
            Verdict::Answer(entry) => answers.push(entry),
            Verdict::Copy(mut failure) => {
                failure.order = Some(mark(d, key, None));
                parked.push(failure);
            }
        }
    }
    for f in &parked {
        if let (Some(h), Some(mark)) = (&f.handler, &f.order) {
            if mark.held_by.is_none() {
                warn!(help = "tchu::troubleshooting#key-held", handler = %h, key = %mark.key, id = %id, "parked: the later messages of its key wait behind it until it is replayed or skipped");
            }
            d.holds.hold(h, &mark.key, &id);
        }
    }
    let concluded = super::Concluded {
        answers,
        failures: parked,
        attempt: runs,
    };
    super::conclude(
        msg,
        (&id, &topic),
        caller_waits,
        concluded,
        &trace,
        &mut process,
    )
}
