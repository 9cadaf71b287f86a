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
use crate::headers::{
    DELIVERY_COUNT_HEADER, FailureKind, HANDLER_HEADER, HELD_SEQ_HEADER, ORDER_KEY_HEADER,
    QUEUE_HEADER, RELEASE_HEADER,
};
use crate::transport::{Delivery, Taker};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tchu_core::envelope::WireMessage;
use tracing::{debug, info, warn};

/// The keys held behind a parked message, by handler and key: the id of the message parked
/// first, and of every one parked since. A later message of a held key is parked behind it as
/// `held`, without running; one already parked (delivered again) is acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    held: Mutex<HashMap<(String, String), Held>>,
    last_seq: AtomicU64,
    /// Held while the dead-letter queue is read through: two reads at once would each take
    /// part of it.
    reading: tokio::sync::Mutex<()>,
}

/// One held key.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// The message parked first, which the others wait behind.
    head: String,
    /// Every message of the key parked, the head included.
    parked: std::collections::HashSet<String>,
}

impl Held {
    fn of(head: String) -> Self {
        let parked = std::iter::once(head.clone()).collect();
        Self { head, parked }
    }
}

/// Where a message of a held key stands.
enum Standing {
    /// Its key is free.
    Free,
    /// Its key waits behind this message.
    Behind(String),
    /// It is parked already: this is another delivery of it.
    Parked,
}

impl Holds {
    /// Where message `id` of `key` of `handler` stands.
    fn standing(&self, handler: &str, key: &str, id: &str) -> Standing {
        let k = (handler.to_owned(), key.to_owned());
        match self.lock().get(&k) {
            None => Standing::Free,
            Some(held) if held.parked.contains(id) => Standing::Parked,
            Some(held) => Standing::Behind(held.head.clone()),
        }
    }

    /// Holds `key` of `handler` behind message `id`, or, held already, adds `id` to its parked.
    fn hold(&self, handler: &str, key: &str, id: &str) {
        let mut held = self.lock();
        let entry = held.entry((handler.to_owned(), key.to_owned()));
        entry
            .or_insert_with(|| Held::of(id.to_owned()))
            .parked
            .insert(id.to_owned());
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

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Held>> {
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
    /// A request to release a held key (`tchu dlq replay` or `tchu dlq skip`), not an event.
    pub(crate) release: Option<Release>,
    /// What its dispatch needs to know besides the message.
    pub(crate) circumstances: Circumstances,
}

impl Planned {
    fn admitted(admitted: Result<Inbound, Disposition>) -> Self {
        Self {
            admitted,
            lanes: Vec::new(),
            release: None,
            circumstances: Circumstances::default(),
        }
    }
}

/// What the dispatch of an ordered delivery knows besides the message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Circumstances {
    /// Why it is parked as `crashed` without running, when it keeps ending the process.
    pub(crate) crashed: Option<String>,
    /// A dead letter run again by a release: its place among the parked messages of its key,
    /// which it keeps should it be parked again.
    pub(crate) seq: Option<u64>,
    /// Its handlers run alone in the process (a redelivered delivery; the loop sets it).
    pub(crate) alone: bool,
}

/// What `tchu dlq replay` or `tchu dlq skip` asks of a held key, in the body of a signed
/// message on the ordered queue, where it waits in the key's lane for the messages before it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Release {
    /// The ordered handler.
    pub handler: String,
    /// The key's value.
    pub key: String,
    /// The id of the first parked message of the key, as the operator saw it.
    pub head: String,
    /// Drop that message instead of running it again (only if it is still the first).
    pub skip: bool,
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
    if msg.headers.contains_key(RELEASE_HEADER) {
        return plan_release(d, msg, hasher, crashed);
    }
    let mut planned = Planned::admitted(inbound::admit(msg, &limits(d)));
    planned.circumstances.crashed = crashed;
    planned.lanes = match &planned.admitted {
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
    planned
}

/// What admission checks an ordered delivery against: never one from the quarantine.
fn limits(d: &Dispatcher) -> inbound::Limits<'_> {
    inbound::Limits {
        max_bytes: d.client.max_message_bytes(),
        redelivery_limit: d.redelivery_limit,
        key: &d.signing,
        quarantined: false,
    }
}

/// A release request: signed by an operator tool, in the lane of the key it releases.
fn plan_release(
    d: &Dispatcher,
    msg: &WireMessage,
    hasher: &impl BuildHasher,
    crashed: Option<String>,
) -> Planned {
    let mut planned = Planned::admitted(Err(Disposition::Ack));
    if let Some(turned_away) = inbound::untrusted(msg, &d.signing) {
        planned.admitted = Err(turned_away);
        return planned;
    }
    // A release whose messages keep ending the process: parked, and its key stays held.
    if let Some(why) = crashed {
        let failure = Failure::park(None, FailureKind::Crashed, why);
        planned.admitted = Err(Disposition::Copies {
            failures: vec![failure],
            attempt: 1,
        });
        return planned;
    }
    match serde_json::from_slice::<Release>(&msg.body) {
        Ok(r) => {
            planned.lanes = vec![hasher.hash_one((r.handler.as_str(), r.key.as_str()))];
            planned.release = Some(r);
        }
        Err(e) => {
            let why = format!("a release request that does not read: {e}");
            let failure = Failure::park(None, FailureKind::Undecodable, why);
            planned.admitted = Err(Disposition::Copies {
                failures: vec![failure],
                attempt: 1,
            });
        }
    }
    planned
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
    c: &Circumstances,
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
        let (kind, reason, held_by) = match (d.holds.standing(&h.name, &key, id), &c.crashed) {
            // Its dead letter is in the queue: this is another delivery of it (a redelivery
            // after its park was confirmed, a publisher's duplicate).
            (Standing::Parked, _) => {
                warn!(help = "tchu::troubleshooting#key-held", handler = %h.name, %key, %id, "a message of a held key already parked came again; acknowledged without running");
                continue;
            }
            (Standing::Behind(head), _) => {
                let why = format!("held behind `{head}`, parked earlier with the same key `{key}`");
                (FailureKind::Held, why, Some(head))
            }
            (Standing::Free, Some(why)) => (FailureKind::Crashed, why.clone(), None),
            (Standing::Free, None) => {
                out.run.push((h, key));
                continue;
            }
        };
        let mut f = Failure::park(Some(h.name.clone()), kind, reason);
        f.order = Some(mark(d, key, held_by, c.seq));
        out.parked.push(f);
    }
    out
}

fn mark(d: &Dispatcher, key: String, held_by: Option<String>, seq: Option<u64>) -> OrderMark {
    OrderMark {
        seq: seq.unwrap_or_else(|| d.holds.next_seq()),
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
    c: &Circumstances,
) -> (Disposition, Option<WireMessage>) {
    let (trace, mut process) = super::record_span(msg, &inbound);
    let handlers = match route::select(&d.handlers, &inbound, &d.topo.queue, true) {
        Route::Handlers(h) => h,
        other => return super::unrouted(msg, &inbound, other),
    };
    let caller_waits = inbound.reply_to.is_some() && handlers.iter().any(|h| h.responder);
    let Split { run, mut parked } = split(d, handlers, &inbound, c);
    let Inbound { env, attempt, .. } = inbound;
    let (id, topic) = (env.id.clone(), env.topic.clone());
    let handlers: Vec<Arc<Handler>> = run.iter().map(|(h, _)| h.clone()).collect();
    let mode = RunMode::RetryInPlace {
        caller_waits,
        alone: c.alone,
    };
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
                failure.order = Some(mark(d, key, None, c.seq));
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

/// How many dead letters a release or a restore reads at most.
const DLQ_READ_MAX: usize = 100_000;

/// The dead letters of ordered handlers taken from the service's dead-letter queue,
/// unacknowledged: those asked for, in the order they were parked, and the others, given back
/// when done.
struct Taken {
    taker: Taker,
    mine: Vec<(u64, Delivery)>,
    others: Vec<Delivery>,
}

impl Taken {
    /// Reads the dead-letter queue through, keeping the dead letters of ordered handlers that
    /// `wanted` picks by handler and key.
    async fn read(d: &Dispatcher, wanted: impl Fn(&str, &str) -> bool) -> crate::Result<Self> {
        let taker = d.client.transport().taker().await?;
        let mut taken = Taken {
            taker,
            mine: Vec::new(),
            others: Vec::new(),
        };
        while taken.mine.len() + taken.others.len() < DLQ_READ_MAX {
            let Some(delivery) = taken.taker.take(&d.topo.dead_letter_queue).await? else {
                break;
            };
            let parked = parked_key(d, &delivery.msg);
            if let Some((_, _, seq)) = parked {
                // Places are clock readings: a later one here never sorts before one of
                // another replica's, whatever the clocks.
                d.holds.last_seq.fetch_max(seq, Ordering::Relaxed);
            }
            match parked {
                Some((handler, key, seq)) if wanted(handler, key) => {
                    taken.mine.push((seq, delivery));
                }
                _ => taken.others.push(delivery),
            }
        }
        taken.mine.sort_by_key(|(seq, _)| *seq);
        Ok(taken)
    }

    /// The dead letters asked for, in the order they were parked, taken out.
    fn take_mine(&mut self) -> Vec<Delivery> {
        let mine = std::mem::take(&mut self.mine);
        mine.into_iter().map(|(_, delivery)| delivery).collect()
    }

    /// Gives back what was not settled (`left` of the ones taken out, and the rest), in order.
    async fn give_back(mut self, left: Vec<Delivery>) {
        let mine = self.take_mine();
        let all = left.into_iter().chain(mine).chain(self.others);
        for d in all.collect::<Vec<_>>().into_iter().rev() {
            d.acker.leave();
        }
        self.taker.close().await;
    }
}

/// The handler, key and place of a dead letter of one of this service's ordered handlers,
/// parked by one of its replicas (its control headers signed).
fn parked_key<'m>(d: &Dispatcher, msg: &'m WireMessage) -> Option<(&'m str, &'m str, u64)> {
    let text = |name| msg.headers.get(name).and_then(serde_json::Value::as_str);
    if text(QUEUE_HEADER) != Some(d.topo.queue.as_str()) {
        return None;
    }
    let handler = text(HANDLER_HEADER)?;
    let key = text(ORDER_KEY_HEADER)?;
    let seq = msg.headers.get(HELD_SEQ_HEADER)?.as_u64()?;
    let ordered = d
        .handlers
        .iter()
        .any(|h| h.name == handler && h.ordered.is_some());
    // Only a dead letter a replica parked: one a stranger wrote into the queue holds no key.
    let parked_by_tchu = || d.signing.verify(msg) == super::trust::Trust::Signed;
    (ordered && parked_by_tchu()).then_some((handler, key, seq))
}

/// The id of a dead letter, as its handler saw it.
fn id_of(msg: &WireMessage) -> String {
    match tchu_core::envelope::decode(msg) {
        Ok(tchu_core::envelope::Decoded::Event(env)) => env.id,
        _ => String::new(),
    }
}

/// Which keys are held, read from the dead-letter queue: what a consumer of the ordered queue
/// knows before its first delivery, since another replica may have parked messages while it
/// stood by. `fresh`: what was known is replaced; else what is found is added.
pub(crate) async fn restore(d: &Dispatcher, fresh: bool) -> crate::Result<usize> {
    let _reading = d.holds.reading.lock().await;
    let taken = Taken::read(d, |_, _| true).await?;
    let mut found: HashMap<(String, String), Held> = HashMap::new();
    for (_, delivery) in &taken.mine {
        if let Some((handler, key, _)) = parked_key(d, &delivery.msg) {
            let (k, id) = ((handler.to_owned(), key.to_owned()), id_of(&delivery.msg));
            // In place order: the first of each key is its head.
            let held = found.entry(k).or_insert_with(|| Held::of(id.clone()));
            held.parked.insert(id);
        }
    }
    let held = found.len();
    {
        let mut known = d.holds.lock();
        if fresh {
            known.clear();
        }
        for (k, f) in found {
            let entry = known.entry(k).or_insert_with(|| Held::of(f.head.clone()));
            entry.parked.extend(f.parked);
        }
    }
    taken.give_back(Vec::new()).await;
    Ok(held)
}

/// Releases a held key, in the key's lane: the first parked message runs again (or, skipping,
/// is dropped), then the held ones, in the order they were parked, each removed from the
/// dead-letter queue once it ran. One that fails for good is parked again, in its place, and
/// holds the key behind it as before; the rest stay where they are.
pub(crate) async fn release(d: &Arc<Dispatcher>, r: Release) -> Disposition {
    let wanted = |h: &str, k: &str| h == r.handler && k == r.key;
    let _reading = d.holds.reading.lock().await;
    // Tried again in place, the key waiting: given back, the request would come back first
    // and count toward the queue's delivery limit.
    let mut pause = std::time::Duration::from_secs(1);
    let taken = loop {
        match Taken::read(d, wanted).await {
            Ok(t) => break t,
            Err(e) => {
                let error = crate::error_chain(&e);
                warn!(help = "tchu::troubleshooting#key-held", handler = %r.handler, key = %r.key, %error, "cannot read the dead-letter queue to release a key; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
        }
    };
    let mut taken = taken;
    d.holds.lock().remove(&(r.handler.clone(), r.key.clone()));
    let (ran, skipped, left) = run_released(d, &r, taken.take_mine()).await;
    let still_held = !left.is_empty();
    taken.give_back(left).await;
    if !still_held {
        recheck(d, &r).await;
    }
    info!(handler = %r.handler, key = %r.key, ran, skipped, still_held, "released a held key");
    Disposition::Ack
}

/// Drops the first of a released key's dead letters when asked to skip it, then runs the
/// others in order until one is parked again. Returns how many ran, the id of the one
/// dropped, and the ones left parked.
async fn run_released(
    d: &Arc<Dispatcher>,
    r: &Release,
    mine: Vec<Delivery>,
) -> (usize, String, Vec<Delivery>) {
    let first_is_head = mine.first().is_some_and(|h| id_of(&h.msg) == r.head);
    if r.skip && !first_is_head {
        warn!(help = "tchu::troubleshooting#key-held", handler = %r.handler, key = %r.key, head = %r.head, "not skipped: it is no longer the first parked message of its key; releasing the key without skipping");
    }
    let mut mine = mine.into_iter();
    let mut skipped = String::new();
    if r.skip
        && first_is_head
        && let Some(head) = mine.next()
    {
        skipped = id_of(&head.msg);
        if let Err(e) = head.acker.ack().await {
            warn!(help = "tchu::troubleshooting#ack-failed", error = %crate::error_chain(&e), "the skipped message could not be removed from the dead-letter queue");
        }
    }
    let k = (r.handler.clone(), r.key.clone());
    let mut ran = 0usize;
    for mut delivery in mine.by_ref() {
        let planned = Box::new(released(d, &mut delivery.msg));
        let run = super::handle(d.clone(), delivery, super::Source::Ordered(planned));
        Box::pin(run).await;
        ran += 1;
        if d.holds.lock().contains_key(&k) {
            break;
        }
    }
    (ran, skipped, mine.collect())
}

/// How long after a release its dead-letter queue is read again for the key.
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_millis(300);

/// Reads the dead-letter queue again for a released key: a tool reading it at the same time
/// (`tchu dlq list`) hides what it holds from the release. A dead letter of the key found now
/// holds the key again, so that the key's newer messages wait behind it for the next release
/// instead of overtaking it.
async fn recheck(d: &Dispatcher, r: &Release) {
    tokio::time::sleep(RECHECK_AFTER).await;
    let wanted = |h: &str, k: &str| h == r.handler && k == r.key;
    let Ok(again) = Taken::read(d, wanted).await else {
        return;
    };
    if let Some((_, first)) = again.mine.first() {
        let head = id_of(&first.msg);
        warn!(help = "tchu::troubleshooting#key-held", handler = %r.handler, key = %r.key, %head, "a dead letter of the released key was out of sight during the release; the key is held behind it again");
        d.holds.hold(&r.handler, &r.key, &head);
    }
    again.give_back(Vec::new()).await;
}

/// A dead letter run again by a release, admitted: it keeps its place should it be parked
/// again.
fn released(d: &Dispatcher, msg: &mut WireMessage) -> Planned {
    let seq = msg
        .headers
        .get(HELD_SEQ_HEADER)
        .and_then(serde_json::Value::as_u64);
    let mut planned = Planned::admitted(inbound::admit(msg, &limits(d)));
    planned.circumstances.seq = seq;
    planned
}

/// Releases a key of an ordered handler held behind a parked message: service `queue` runs
/// the parked message again (or with `skip`, drops it), then the held ones of the key in
/// order, then the key's new messages. The request, signed with the key the service's
/// replicas check (the client's credentials, or `TCHU_SIGNING_KEY`), waits in the service's
/// ordered queue behind the messages of the key sent before it. What `tchu dlq replay` and
/// `tchu dlq skip` send; in memory, what a unit test calls.
///
/// ```no_run
/// # async fn demo(client: tchu_runtime::Client) -> tchu_runtime::Result<()> {
/// let release = tchu_runtime::amqp::Release {
///     handler: "ledger::apply".into(),
///     key: "acct-7".into(),
///     head: "5f0c...".into(), // the id of the first parked message of the key
///     skip: false,
/// };
/// tchu_runtime::release_held(&client, "ledger", &release).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`crate::Error::Unroutable`] when the service has no ordered queue; broker errors.
pub async fn release_held(
    client: &crate::Client,
    queue: &str,
    release: &Release,
) -> crate::Result<()> {
    let mut msg = WireMessage {
        routing_key: format!("{queue}.ordered"),
        body: serde_json::to_vec(release).expect("a release serialises"),
        ..WireMessage::default()
    };
    msg.properties.delivery_mode = Some(2);
    msg.properties.content_type = Some("application/json".into());
    let mode = if release.skip { "skip" } else { "replay" };
    msg.headers.insert(RELEASE_HEADER.into(), mode.into());
    Dispatcher::signing_key(client).sign(&mut msg);
    client.transport().publish("", &msg, true).await
}
