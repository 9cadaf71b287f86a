//! Running handlers: concurrently when several match, each isolated (a panic is its own
//! failure), measured, and inside the delivery's trace.

use super::verdict::{self, Rules};
use super::{Dispatcher, RunMode};
use crate::handler::{DedupKey, Handler, HandlerError, HandlerErrorKind, Incoming, Outcome};
use crate::headers::INBOX_FORCE_HEADER;
use crate::inbox::ClaimKey;
use crate::observe::TraceContext;
use futures_lite::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::task::JoinSet;
use tracing::{Instrument, warn};

/// Runs every handler on the message; one failing or panicking does not stop the rest. The
/// outcomes come back in the handlers' order, each with the run it came from.
pub(crate) async fn all(
    d: &Arc<Dispatcher>,
    handlers: &[Arc<Handler>],
    incoming: Arc<Incoming>,
    trace: &TraceContext,
    mode: RunMode,
) -> Vec<(Result<Outcome, HandlerError>, u32)> {
    if let [h] = handlers {
        return vec![runs(d, h, incoming, trace, mode).await];
    }
    let first = incoming.attempt;
    let mut set = JoinSet::new();
    // A task does not inherit task-locals: the service its spans belong to is passed on.
    let service = crate::observe::current_service();
    for (i, h) in handlers.iter().enumerate() {
        let (d, h, incoming, trace) = (d.clone(), h.clone(), incoming.clone(), trace.clone());
        let service = service.clone();
        let run = async move { (i, runs(&d, &h, incoming, &trace, mode).await) };
        let run = async move {
            match service {
                Some(service) => crate::observe::in_service(service, run).await,
                None => run.await,
            }
        };
        set.spawn(run.in_current_span());
    }
    let mut out: Vec<Option<(Result<Outcome, HandlerError>, u32)>> = vec![None; handlers.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, r)) = r {
            out[i] = Some(r);
        }
    }
    let aborted = || HandlerError::new(HandlerErrorKind::Panicked, "handler task aborted");
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| (Err(aborted()), first)))
        .collect()
}

/// Runs one handler once, or (ordered handlers) again after each retryable failure's delay,
/// in place: the message stays unacknowledged, and its key waits, meanwhile.
async fn runs(
    d: &Dispatcher,
    h: &Handler,
    mut incoming: Arc<Incoming>,
    trace: &TraceContext,
    mode: RunMode,
) -> (Result<Outcome, HandlerError>, u32) {
    loop {
        let attempt = incoming.attempt;
        let guard = match mode {
            RunMode::RetryInPlace { alone, .. } => Some(super::alone::guard(alone).await),
            RunMode::Once => None,
        };
        let result = one(d, h, incoming.clone(), trace).await;
        drop(guard);
        let (Err(e), RunMode::RetryInPlace { caller_waits, .. }) = (&result, mode) else {
            return (result, attempt);
        };
        let rules = Rules::of(h, d.default_retry);
        let Some(delay) = verdict::retry_delay(&rules, e, attempt, caller_waits, fastrand::f64())
        else {
            return (result, attempt);
        };
        let (kind, delay_ms) = (e.kind().as_str(), delay.as_millis() as u64);
        warn!(help = "tchu::troubleshooting#dead-lettered", handler = %h.name, kind, delay_ms, error = %e.message(), "ordered handler failed; retrying in place, the later messages of its key waiting");
        if let Some(m) = d.metrics.handler(&h.name) {
            m.retried.increment(1);
        }
        tokio::time::sleep(delay).await;
        incoming = Arc::new(Incoming {
            message: incoming.message.clone(),
            resources: incoming.resources.clone(),
            attempt: attempt + 1,
        });
    }
}

/// Runs one handler, with its metrics.
async fn one(
    d: &Dispatcher,
    h: &Handler,
    incoming: Arc<Incoming>,
    trace: &TraceContext,
) -> Result<Outcome, HandlerError> {
    // A guard, so a task aborted at the end of the grace period still leaves the gauge right.
    struct InFlight<'a>(&'a metrics::Gauge);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    d.metrics.in_flight.increment(1.0);
    let in_flight = InFlight(&d.metrics.in_flight);
    let started = std::time::Instant::now();
    // The handler's run is a span of its own: what it publishes is its child.
    let run = trace.child();
    let mut span = super::spans::handler(trace, &run, h, incoming.attempt);
    let result = crate::observe::in_trace(run, guarded(d, h, incoming.clone())).await;
    if let Err(e) = &result {
        span.fail(e);
    }
    span.end();
    if let (Some(_), Some(schedules)) = (&h.schedule, &d.schedules) {
        crate::schedule::finished(schedules, h, &incoming, &result).await;
    }
    drop(in_flight);
    if let Some(m) = d.metrics.handler(&h.name) {
        m.duration.record(started.elapsed());
        match &result {
            Ok(_) => m.handled.increment(1),
            Err(e) => m.failed(e.kind()),
        }
    }
    result
}

/// Calls a handler under the service's inbox, when it has one: once per key for a `dedup`
/// handler, inside the store's transaction for a handler taking `Tx`.
async fn guarded(
    d: &Dispatcher,
    h: &Handler,
    incoming: Arc<Incoming>,
) -> Result<Outcome, HandlerError> {
    let call = stepped(d, h, incoming.clone());
    let Some(inbox) = &d.inbox else {
        return call.await;
    };
    // A saga step, or an occurrence of a schedule, happens once: de-duplicated on the message
    // id (an occurrence's names its schedule and due time) unless told otherwise.
    let once = h.saga.is_some() || h.schedule.is_some();
    let dedup = h.dedup.as_ref().or(once.then_some(&DedupKey::MessageId));
    let key = match dedup.map(|k| k.of(&incoming.message)).transpose() {
        Ok(key) => key,
        Err(why) => return Err(HandlerError::rejected(why)),
    };
    // Admission parked any message carrying a control header without a valid signature, so
    // a force here comes from `tchu dlq replay --force`.
    let force: Option<String> = incoming
        .message
        .headers
        .get(INBOX_FORCE_HEADER)
        .map(|t| t.as_str().unwrap_or("forced").to_owned());
    let key = key.as_deref().map(crate::inbox::stored_key);
    let claim = key.as_deref().map(|key| ClaimKey {
        queue: &d.topo.queue,
        handler: &h.name,
        key,
        force: force.as_deref(),
    });
    // Boxed: the store's queries make a future of kilobytes, and without the box every
    // delivery's task would carry (and the runtime move) that much, inbox or not.
    Box::pin(inbox.run(claim, call)).await
}

/// Calls a handler, inside its saga's step when it moves one on.
async fn stepped(
    d: &Dispatcher,
    h: &Handler,
    incoming: Arc<Incoming>,
) -> Result<Outcome, HandlerError> {
    match &h.saga {
        Some(spec) => {
            let call = isolated(h, incoming.clone());
            let key = d.signing.clone();
            let sign: crate::headers::Signer = Arc::new(move |msg| key.sign(msg));
            crate::saga::step(&d.sagas, spec, &incoming.message, sign, call).await
        }
        None => isolated(h, incoming).await,
    }
}

/// Calls a handler; a panic becomes its failure.
async fn isolated(h: &Handler, incoming: Arc<Incoming>) -> Result<Outcome, HandlerError> {
    match AssertUnwindSafe((h.call)(incoming)).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            Err(HandlerError::new(
                HandlerErrorKind::Panicked,
                format!("handler panicked: {text}"),
            ))
        }
    }
}
