//! The dispatch of one delivery, as a pipeline that decides before it acts:
//!
//! ```text
//! inbound (admit, or turn away) → route (which handlers) → run (run them)
//!   → verdict (what each outcome means) → reply (the RPC answer) → settle
//! ```
//!
//! Every outcome is a [`Disposition`] value before anything touches the broker, and
//! [`settle`] is the only module that acknowledges, requeues or publishes copies.
//! Retries are decided in [`verdict`]; admission in [`inbound`]; both are pure and
//! table-tested.

pub(crate) mod alone;
mod inbound;
mod metrics;
pub(crate) mod order;
mod reply;
mod route;
mod run;
mod settle;
mod spans;
mod trust;
mod verdict;

pub(crate) use self::metrics::ServiceMetrics;
use crate::client::Client;
use crate::handler::{Handler, HandlerError, Incoming, Message, Outcome, Resources};
use crate::observe::{TraceContext, TraceIdHex};
use crate::transport::{Delivery, Topology};
use inbound::Inbound;
#[cfg(test)]
pub(crate) use inbound::{Limits, admit};
use route::Route;
use std::sync::Arc;
use tchu_core::envelope::{Envelope, WireMessage};
use tchu_core::retry::{AckPolicy, RetryPolicy};
use tracing::{Instrument, debug, error, info_span, warn};
pub(crate) use trust::SigningKey;
pub(crate) use trust::mark_replayed;
pub use trust::{mark_forced_replay, mark_log_replay, sign_control};
use verdict::{Failure, Rules, Verdict};

/// What a service's dispatch needs: its handlers, their shared resources, and where copies go.
pub(crate) struct Dispatcher {
    pub(crate) handlers: Vec<Arc<Handler>>,
    /// The queue's name, shared by every span of the service's work.
    pub(crate) service: Arc<str>,
    pub(crate) resources: Arc<Resources>,
    pub(crate) client: Client,
    pub(crate) topo: Topology,
    pub(crate) default_retry: RetryPolicy,
    pub(crate) prefetch: u16,
    pub(crate) metrics: ServiceMetrics,
    /// Signs the control headers of copies, and checks those of deliveries.
    pub(crate) signing: SigningKey,
    /// Redeliveries without an acknowledgement before a message is parked as `crashed`.
    pub(crate) redelivery_limit: u32,
    /// Body bytes the deliveries in progress may hold together (the consume loop's budget).
    pub(crate) max_in_flight_bytes: usize,
    /// Where `dedup` handlers claim their keys, and `Tx` handlers get their transaction.
    pub(crate) inbox: Option<Arc<crate::inbox::Inbox>>,
    /// The keys of ordered handlers held behind a parked message.
    pub(crate) holds: order::Holds,
    /// The sagas of a service without a PostgreSQL inbox (on the in-memory broker).
    pub(crate) sagas: crate::saga::MemorySagas,
    /// The service's schedules, told how each occurrence's run went.
    pub(crate) schedules: Option<Arc<crate::schedule::Schedules>>,
}

impl Dispatcher {
    /// The signing key: `TCHU_SIGNING_KEY`, else derived from the broker credentials.
    pub(crate) fn signing_key(client: &Client) -> SigningKey {
        match std::env::var(crate::headers::SIGNING_KEY_ENV) {
            Ok(k) if !k.is_empty() => SigningKey::from_secret(k.as_bytes()),
            _ => SigningKey::from_secret(&client.transport().signing_secret()),
        }
    }
}

/// What to do with a delivery, decided before anything touches the broker.
#[derive(Debug)]
pub(crate) enum Disposition {
    /// Handled, or nothing to do: acknowledge.
    Ack,
    /// A Celery task other than tchu's dispatcher: acknowledged, never dispatched.
    Ignore { task: String },
    /// A retry still waiting: on to the next delay tier, nothing run.
    DelayHop { remaining_ms: u64 },
    /// Redelivered: moved to the quarantine, where it will run alone; nothing run now.
    Quarantine,
    /// One copy per failure (a retry, or a dead letter), then acknowledge.
    Copies {
        failures: Vec<Failure>,
        attempt: u32,
    },
}

/// Moves a redelivered message to the quarantine, where it will run alone (see
/// `service::quarantine`). Called only while nothing else runs. A stranger's control headers
/// park it instead: the copy would carry tchu's signature over them.
pub(crate) async fn quarantine(d: &Dispatcher, delivery: Delivery) {
    let Delivery { msg, acker, .. } = delivery;
    let disposition = inbound::untrusted(&msg, &d.signing).unwrap_or(Disposition::Quarantine);
    if let Disposition::Copies { failures, .. } = &disposition {
        log_copies(failures);
    } else {
        debug!(queue = %d.topo.queue, routing_key = %msg.routing_key, "redelivered: to the quarantine");
    }
    settle::apply(d, Some(acker), msg, disposition, None).await;
}

/// Where a delivery was taken from.
pub(crate) enum Source {
    /// The service queue.
    Service,
    /// The quarantine, where a redelivered message runs alone.
    Quarantine,
    /// The ordered queue, admitted by the consume loop before it waited for its lanes.
    Ordered(Box<order::Planned>),
}

/// Dispatches one delivery, from admission to settlement.
pub(crate) async fn handle(d: Arc<Dispatcher>, delivery: Delivery, from: Source) {
    let span = info_span!(
        "tchu.delivery",
        queue = %d.topo.queue,
        routing_key = %delivery.msg.routing_key,
        topic = tracing::field::Empty,
        id = tracing::field::Empty,
        attempt = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        redelivered = delivery.redelivered,
    );
    let service = d.service.clone();
    let work = async move {
        let Delivery {
            mut msg,
            redelivered,
            acker,
        } = delivery;
        let mut acker = Some(acker);
        let quarantined = matches!(from, Source::Quarantine);
        let limits = inbound::Limits {
            max_bytes: d.client.max_message_bytes(),
            redelivery_limit: d.redelivery_limit,
            key: &d.signing,
            quarantined,
        };
        // What ran before, and came back: what the handlers see as a redelivery.
        let redelivered = redelivered || quarantined;
        let (admitted, planned) = match from {
            Source::Ordered(p) => {
                let order::Planned {
                    admitted,
                    release,
                    circumstances,
                    ..
                } = *p;
                (admitted, Some((release, circumstances)))
            }
            _ => (inbound::admit(&mut msg, &limits), None),
        };
        // Boxed, all: their state machines are kilobytes each, and every delivery's task is
        // moved whole when spawned (measured: 10 KB unboxed, copied per delivery).
        let (disposition, reply) = match (admitted, planned) {
            // A release request (admitted as such: signed, readable, not crashing).
            (_, Some((Some(release), _))) => (Box::pin(order::release(&d, release)).await, None),
            (Err(turned_away), _) => (turned_away, None),
            (Ok(inbound), None) if replayed_request(&msg, &inbound) => (Disposition::Ack, None),
            (Ok(inbound), Some((None, c))) => {
                Box::pin(order::dispatch(&d, &mut msg, inbound, redelivered, &c)).await
            }
            (Ok(inbound), None) => {
                Box::pin(dispatch(&d, &mut msg, inbound, redelivered, &mut acker)).await
            }
        };
        if let Disposition::Copies { failures, .. } = &disposition {
            log_copies(failures);
        }
        Box::pin(settle::apply(&d, acker, msg, disposition, reply)).await;
    }
    .instrument(span);
    crate::observe::in_service(service, work).await
}

/// Whether an admitted message is a request replayed from the event log (its mark verified
/// on admission): its caller is long gone, and running it again would redo its effect for
/// nobody, so it is acknowledged without running.
fn replayed_request(msg: &WireMessage, inbound: &Inbound) -> bool {
    let replayed = msg.headers.contains_key(crate::headers::LOG_OFFSET_HEADER);
    if replayed && inbound.reply_to.is_some() {
        tracing::info!(topic = %msg.routing_key, id = %inbound.env.id, "a request replayed from the event log: acknowledged without running (its caller is gone)");
    }
    replayed && inbound.reply_to.is_some()
}

/// Routes an admitted message, runs its handlers, and says what is left to settle: the
/// disposition, and the answer to send when the message is a request. Acknowledges first
/// (through `settle`) when every handler asked for it.
async fn dispatch(
    d: &Arc<Dispatcher>,
    msg: &mut WireMessage,
    inbound: Inbound,
    redelivered: bool,
    acker: &mut Option<crate::transport::Acker>,
) -> (Disposition, Option<WireMessage>) {
    let (trace, mut process) = record_span(msg, &inbound);
    let handlers = match route::select(&d.handlers, &inbound, &d.topo.queue, false) {
        Route::Handlers(h) => h,
        other => return unrouted(msg, &inbound, other),
    };
    // Only responders answer: a service whose matching handlers are all observers (an audit
    // log on `rpc.#`) runs them and stays silent, so its `null` can never be taken for the
    // responder's answer. A service with both answers with its responders' entries.
    let caller_waits = inbound.reply_to.is_some() && handlers.iter().any(|h| h.responder);
    if handlers.iter().all(|h| h.ack == AckPolicy::Early)
        && let Some(a) = acker.take()
    {
        settle::ack_early(a).await;
    }
    let Inbound { env, attempt, .. } = inbound;
    let (id, topic) = (env.id.clone(), env.topic.clone());
    let meta = (attempt, redelivered);
    let outcomes = run_lending(d, &handlers, msg, env, meta, &trace, RunMode::Once).await;
    let (mut answers, mut failures) = (Vec::new(), Vec::new());
    for (h, (outcome, _)) in handlers.iter().zip(outcomes) {
        let rules = Rules::of(h, d.default_retry);
        match verdict::judge(&rules, outcome, attempt, caller_waits, fastrand::f64()) {
            Verdict::Done => debug!(handler = %h.name, "handled"),
            Verdict::Answer(entry) => answers.push(entry),
            Verdict::Copy(failure) => failures.push(failure),
        }
    }
    let concluded = Concluded {
        answers,
        failures,
        attempt,
    };
    conclude(
        msg,
        (&id, &topic),
        caller_waits,
        concluded,
        &trace,
        &mut process,
    )
}

/// What a message no handler takes calls for: the RPC caller told at once, or a dead letter.
fn unrouted(
    msg: &WireMessage,
    inbound: &Inbound,
    route: Route,
) -> (Disposition, Option<WireMessage>) {
    match route {
        Route::NoHandlersReply => {
            warn!(help = "tchu::troubleshooting#no-responder", topic = %inbound.env.topic, "RPC request no handler matches; answering `no_handlers`");
            let answer = reply::answer(msg, &inbound.env.id, &inbound.env.topic, &[]);
            (Disposition::Ack, answer)
        }
        Route::Park(failure) => {
            let copies = Disposition::Copies {
                failures: vec![failure],
                attempt: inbound.attempt,
            };
            (copies, None)
        }
        Route::Handlers(_) => (Disposition::Ack, None),
    }
}

/// The handlers' verdicts gathered: the answer's entries, the copies to make, and the run
/// the copies count.
struct Concluded {
    answers: Vec<tchu_core::rpc::ReplyEntry>,
    failures: Vec<Failure>,
    attempt: u32,
}

/// What is left to settle once the handlers were judged: the answer to send, when a caller
/// waits, and the copies to make.
fn conclude(
    msg: &WireMessage,
    (id, topic): (&str, &str),
    caller_waits: bool,
    c: Concluded,
    trace: &TraceContext,
    process: &mut crate::observe::Span,
) -> (Disposition, Option<WireMessage>) {
    for failure in &c.failures {
        spans::copy(trace, failure, c.attempt);
    }
    let answer = caller_waits
        .then(|| reply::answer(msg, id, topic, &c.answers))
        .flatten();
    if answer.is_some() {
        spans::reply(trace, topic);
    }
    if let Some(f) = c.failures.first() {
        process.fail(&f.reason);
    }
    if c.failures.is_empty() {
        (Disposition::Ack, answer)
    } else {
        let (failures, attempt) = (c.failures, c.attempt);
        (Disposition::Copies { failures, attempt }, answer)
    }
}

/// How handlers run: once (a failure is judged, and retried through the broker), or retrying
/// in place after each failure's delay until it succeeds or is judged for good (ordered
/// handlers: the message holds its key meanwhile).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RunMode {
    Once,
    /// Each run holds the process's run lock (`alone`) by itself, not the waits between.
    RetryInPlace {
        caller_waits: bool,
        alone: bool,
    },
}

/// Runs the handlers on the message, its headers lent to them, not copied, and taken back
/// for the copies.
/// Each handler's outcome comes with the run it came from.
async fn run_lending(
    d: &Arc<Dispatcher>,
    handlers: &[Arc<Handler>],
    msg: &mut WireMessage,
    envelope: Envelope,
    (attempt, redelivered): (u32, bool),
    trace: &TraceContext,
    mode: RunMode,
) -> Vec<(Result<Outcome, HandlerError>, u32)> {
    let incoming = Arc::new(Incoming {
        message: Message {
            envelope,
            routing_key: msg.routing_key.clone(),
            headers: std::mem::take(&mut msg.headers),
            celery: msg.celery.take(),
            all: std::sync::OnceLock::new(),
            redelivered,
        },
        resources: d.resources.clone(),
        attempt,
    });
    let outcomes = run::all(d, handlers, incoming.clone(), trace, mode).await;
    (msg.headers, msg.celery) = match Arc::try_unwrap(incoming) {
        Ok(incoming) => (incoming.message.headers, incoming.message.celery),
        // A handler kept the message (a task it spawned): copy them back.
        Err(shared) => (
            shared.message.headers.clone(),
            shared.message.celery.clone(),
        ),
    };
    outcomes
}

/// Fills the delivery span's fields; returns this service's part of the sender's trace (or
/// a new one), and its exported span.
fn record_span(msg: &WireMessage, inbound: &Inbound) -> (TraceContext, crate::observe::Span) {
    let correlation = (msg.properties.correlation_id.as_deref()).unwrap_or(inbound.env.id.as_str());
    let sent = TraceContext::from_headers(&msg.headers);
    let sender = sent.as_ref().map(|t| t.span_id);
    let trace = sent.map_or_else(TraceContext::new_root, |t| t.child());
    let span = tracing::Span::current();
    // One call for the five: each `record` is a lookup and a format in the subscriber, which
    // cost more than decoding the event (measured with callgrind, `init_tracing` on).
    let names = ["topic", "id", "attempt", "correlation_id", "trace_id"];
    if let Some(fields) = span.metadata().map(tracing::Metadata::fields)
        && let [Some(t), Some(i), Some(a), Some(c), Some(tr)] = names.map(|n| fields.field(n))
    {
        let (topic, id) = (inbound.env.topic.as_str(), inbound.env.id.as_str());
        let correlation = tracing::field::display(correlation);
        let trace_id = tracing::field::display(TraceIdHex(trace.trace_id));
        let values: [(&tracing::field::Field, Option<&dyn tracing::Value>); 5] = [
            (&t, Some(&topic)),
            (&i, Some(&id)),
            (&a, Some(&inbound.attempt)),
            (&c, Some(&correlation)),
            (&tr, Some(&trace_id)),
        ];
        span.record_all(&fields.value_set(&values));
    }
    let process = spans::process(&trace, sender, inbound);
    (trace, process)
}

fn log_copies(failures: &[Failure]) {
    for f in failures {
        let handler = f.handler.as_deref().unwrap_or("-");
        match f.retry_in {
            Some(delay) => warn!(help = "tchu::troubleshooting#dead-lettered",
                handler,
                kind = f.kind.as_str(),
                delay_ms = delay.as_millis() as u64,
                error = %f.reason,
                "handler failed; retrying"
            ),
            None => error!(help = "tchu::troubleshooting#dead-lettered",
                handler,
                kind = f.kind.as_str(),
                error = %f.reason,
                "moving the message to the dead-letter queue"
            ),
        }
    }
}

/// Cuts a text to at most `max` bytes, on a character boundary, marking the cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
