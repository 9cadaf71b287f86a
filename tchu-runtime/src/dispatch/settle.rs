//! Settlement: the only place a delivery is acknowledged or given back, and the only place
//! copies (delay hops, retries, dead letters) are built and published.

use super::verdict::Failure;
use super::{Dispatcher, Disposition};
use crate::error::Error;
use crate::error_chain;
use crate::headers::{
    ATTEMPT_HEADER, ATTEMPTS_HEADER, BROKER_HEADERS, DELAY_HEADER, ERROR_HEADER, ERROR_KIND_HEADER,
    FAILED_AT_HEADER, FailureKind, HANDLER_HEADER, HELD_BY_HEADER, HELD_SEQ_HEADER,
    INBOX_FORCE_HEADER, LAST_ERROR_HEADER, ORDER_KEY_HEADER, ORIGINAL_KEY_HEADER, QUEUE_HEADER,
    REDELIVERIES_HEADER, TCHU_HEADERS, TRIMMED_HEADER,
};
use crate::transport::Acker;
use crate::transport::delay_queue_name;
use std::time::Duration;
use tchu_core::envelope::WireMessage;
use tchu_core::retry::plan_hops;
use tracing::{debug, error, warn};

/// How long a message that could not be parked waits before it is given back to the queue.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// How often a copy the broker refused (its queue missing, or full) is tried again, after
/// re-declaring the service's queues, before the delivery is given back to the queue.
const COPY_TRIES: u32 = 8;

/// Acknowledges before the handlers run (`ack = "early"`, Celery's default).
pub(crate) async fn ack_early(acker: Acker) {
    logged(acker.ack().await);
}

/// Sends a request's answer, if any, and carries out the disposition. `acker` is `None` when
/// the delivery was acknowledged early.
pub(crate) async fn apply(
    d: &Dispatcher,
    acker: Option<Acker>,
    msg: WireMessage,
    disposition: Disposition,
    reply: Option<WireMessage>,
) {
    let Some(reply) = reply else {
        return carry_out(d, acker, msg, disposition).await;
    };
    if let Disposition::Ack = disposition {
        // The answer's frames are queued first, then the acknowledgement's, before either is
        // awaited: the connection writes them in that order, and the responder waits for its
        // connection once per request instead of twice.
        futures_lite::future::zip(Box::pin(super::reply::send(d, &reply)), ack(acker)).await;
    } else {
        Box::pin(super::reply::send(d, &reply)).await;
        carry_out(d, acker, msg, disposition).await;
    }
}

/// Carries out a disposition.
async fn carry_out(
    d: &Dispatcher,
    acker: Option<Acker>,
    msg: WireMessage,
    disposition: Disposition,
) {
    match disposition {
        Disposition::Ack => ack(acker).await,
        Disposition::Ignore { task } => {
            debug!(task, "ignoring a Celery task that is not tchu's dispatcher");
            ack(acker).await;
        }
        // Boxed: a copy's publish and confirm make a future of kilobytes, which every
        // delivery's task would otherwise carry (and the runtime move) for the rare case.
        other => Box::pin(send_on(d, acker, msg, other)).await,
    }
}

/// Carries out a disposition that sends a copy: to the quarantine, the next delay hop, a
/// retry or the dead-letter queue.
async fn send_on(d: &Dispatcher, acker: Option<Acker>, msg: WireMessage, disposition: Disposition) {
    match disposition {
        Disposition::Ack | Disposition::Ignore { .. } => ack(acker).await,
        Disposition::Quarantine => {
            let mut copy = fresh_copy(&msg);
            copy.headers
                .entry(ORIGINAL_KEY_HEADER)
                .or_insert_with(|| msg.routing_key.clone().into());
            // Delivered once already, so its time to live did not run out in the queue; in
            // the quarantine it would dead-letter into the DLQ instead of being dropped.
            copy.properties.expiration = None;
            copy.routing_key = d.topo.quarantine_queue.clone();
            match publish_copy(d, &mut copy).await {
                Ok(()) => ack(acker).await,
                Err(Error::Refused { source, .. }) => park_refused(d, acker, msg, &source).await,
                Err(e) => {
                    error!(help = "tchu::troubleshooting#park-failed", error = %error_chain(&e), "could not move a redelivered message to the quarantine; requeueing it in a second");
                    requeue(acker, msg).await;
                }
            }
        }
        Disposition::DelayHop { remaining_ms } => {
            match send_delayed(d, fresh_copy(&msg), remaining_ms).await {
                Ok(()) => ack(acker).await,
                Err(Error::Refused { source, .. }) => park_refused(d, acker, msg, &source).await,
                Err(e) => {
                    error!(help = "tchu::troubleshooting#park-failed", error = %error_chain(&e), "could not move a delayed retry on; requeueing it in a second");
                    requeue(acker, msg).await;
                }
            }
        }
        Disposition::Copies { failures, attempt } => {
            copies(d, acker, msg, &failures, attempt).await;
        }
    }
}

async fn ack(acker: Option<Acker>) {
    if let Some(acker) = acker {
        logged(acker.ack().await);
    }
}

/// Gives a message back to the queue after a pause, so a broken broker link does not turn
/// into a hot redelivery loop.
async fn requeue(acker: Option<Acker>, msg: WireMessage) {
    match acker {
        Some(acker) => {
            tokio::time::sleep(REQUEUE_PAUSE).await;
            logged(acker.requeue(msg).await);
        }
        None => {
            error!(
                help = "tchu::troubleshooting#park-failed",
                "the message was acknowledged early (`ack = \"early\"`) and is lost"
            );
        }
    }
}

fn logged(r: crate::error::Result<()>) {
    if let Err(e) = r {
        // The broker redelivers an unacknowledged message: at worst a duplicate, never a loss.
        warn!(help = "tchu::troubleshooting#ack-failed", error = %error_chain(&e), "acknowledgement failed; the broker will redeliver");
    }
}

/// Sends one copy per failure, to a delay tier (retry) or to the dead-letter queue, then
/// acknowledges. If a copy cannot be sent, the whole message is requeued instead, so it is
/// never lost (handlers that had succeeded may then run again: at-least-once).
async fn copies(
    d: &Dispatcher,
    acker: Option<Acker>,
    msg: WireMessage,
    failures: &[Failure],
    attempt: u32,
) {
    let failed_at = tchu_core::time::now_iso8601(true);
    // Given back, a message of an ordered key would let the key's next one run first: its
    // dead letter is tried again, the key waiting, until the broker takes it (or the consumer
    // goes, and the broker gives the message back in its place).
    let in_place = failures.iter().any(|f| f.order.is_some());
    for f in failures {
        let mut pause = Duration::from_secs(1);
        let sent = loop {
            match send_copy(d, &msg, f, attempt, &failed_at).await {
                Err(e) if in_place && !matches!(e, Error::Closed) => {
                    error!(help = "tchu::troubleshooting#park-failed", error = %error_chain(&e), "could not park a message of an ordered key; trying again, the key waiting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
                other => break other,
            }
        };
        match &sent {
            Ok(()) if f.retry_in.is_some() => {
                if let Some(m) = f.handler.as_deref().and_then(|h| d.metrics.handler(h)) {
                    m.retried.increment(1);
                }
            }
            Ok(()) => d.metrics.dead_lettered(f.kind.as_str()),
            Err(e) => {
                error!(help = "tchu::troubleshooting#park-failed", error = %error_chain(&e), "could not park the message or schedule its retry; requeueing it in a second");
                requeue(acker, msg).await;
                return;
            }
        }
    }
    ack(acker).await;
}

/// Sends the copy for one failure: a retry to a delay tier, or a dead letter.
async fn send_copy(
    d: &Dispatcher,
    msg: &WireMessage,
    f: &Failure,
    attempt: u32,
    failed_at: &str,
) -> crate::Result<()> {
    let copy = copy_for(d, msg, f, attempt, failed_at);
    match f.retry_in {
        Some(delay) => match send_delayed(d, copy, delay.as_millis() as u64).await {
            // Requeued, it would come back to the same refusal: parked instead.
            Err(Error::Refused { source, .. }) => {
                let parked = Failure {
                    retry_in: None,
                    reason: format!("{} (its retry copy was refused: {source})", f.reason),
                    ..f.clone()
                };
                park(d, copy_for(d, msg, &parked, attempt, failed_at)).await
            }
            other => other,
        },
        None => park(d, copy).await,
    }
}

/// The copy of `msg` for one failure: a retry for its handler, or a dead letter with the
/// reason in `x-tchu-*` headers. Copies are persistent, whatever the original was.
fn copy_for(
    d: &Dispatcher,
    msg: &WireMessage,
    f: &Failure,
    attempt: u32,
    failed_at: &str,
) -> WireMessage {
    let mut copy = fresh_copy(msg);
    let h = &mut copy.headers;
    // The message's original routing key (admission restored it from a verified copy).
    h.insert(ORIGINAL_KEY_HEADER.into(), msg.routing_key.clone().into());
    match f.handler.as_deref() {
        Some(name) => {
            h.insert(HANDLER_HEADER.into(), name.into());
        }
        // A stranger's target is not kept, not even parked: tchu would sign it.
        None if f.kind == FailureKind::Untrusted => {
            h.remove(HANDLER_HEADER);
        }
        // A verified copy parked before any handler ran (it crashed the process, say) keeps
        // its target: replayed, it re-runs only that handler.
        None => {}
    }
    // The count of crashes is about this delivery; what comes next starts afresh.
    h.remove(REDELIVERIES_HEADER);
    if f.retry_in.is_some() {
        h.insert(ATTEMPT_HEADER.into(), (attempt + 1).into());
        h.insert(
            LAST_ERROR_HEADER.into(),
            super::truncate(&f.reason, 4096).into(),
        );
        return copy;
    }
    h.insert(QUEUE_HEADER.into(), d.topo.queue.clone().into());
    h.insert(ERROR_KIND_HEADER.into(), f.kind.as_str().into());
    h.insert(ERROR_HEADER.into(), super::truncate(&f.reason, 4096).into());
    h.insert(FAILED_AT_HEADER.into(), failed_at.into());
    h.insert(ATTEMPTS_HEADER.into(), attempt.into());
    for name in [ORDER_KEY_HEADER, HELD_SEQ_HEADER, HELD_BY_HEADER] {
        h.remove(name);
    }
    if let Some(mark) = &f.order {
        h.insert(ORDER_KEY_HEADER.into(), mark.key.clone().into());
        h.insert(HELD_SEQ_HEADER.into(), mark.seq.into());
        if let Some(head) = &mark.held_by {
            h.insert(HELD_BY_HEADER.into(), head.clone().into());
        }
    }
    // A replayed dead letter starts its retries afresh, and forces the inbox only when the
    // replay asks again (`--force`): a parked copy must never carry a force tchu signs.
    h.remove(INBOX_FORCE_HEADER);
    h.remove(ATTEMPT_HEADER);
    h.remove(DELAY_HEADER);
    h.remove(LAST_ERROR_HEADER);
    copy.routing_key = d.topo.dead_letter_queue.clone();
    copy
}

/// Parks a copy in the delay tier for the next hop of `delay_ms`, or straight back in the
/// service queue when nothing is left to wait.
async fn send_delayed(d: &Dispatcher, mut copy: WireMessage, delay_ms: u64) -> crate::Result<()> {
    match plan_hops(delay_ms) {
        None => {
            copy.headers.remove(DELAY_HEADER);
            copy.routing_key = d.topo.queue.clone();
        }
        Some((tier, rest)) => {
            copy.headers.insert(DELAY_HEADER.into(), rest.into());
            copy.routing_key = delay_queue_name(&d.topo.queue, tier);
        }
    }
    publish_copy(d, &mut copy).await
}

/// A copy of a delivery as tchu publishes it: persistent, without the broker's routing and
/// bookkeeping headers.
fn fresh_copy(msg: &WireMessage) -> WireMessage {
    let mut copy = msg.clone();
    // Every header in the map, so the trimming of oversized copies counts Celery's too (a
    // stranger's reprs need not be short); copies are rare, the conversion cheap there.
    copy.expand_celery();
    copy.properties.delivery_mode = Some(2);
    for name in BROKER_HEADERS {
        copy.headers.remove(*name);
    }
    copy
}

/// A copy that only moves a message along (a redelivery count, a delay hop) was refused:
/// given back, the message would meet the same refusal forever, so it is parked.
async fn park_refused(d: &Dispatcher, acker: Option<Acker>, msg: WireMessage, why: &lapin::Error) {
    let reason = format!("the broker refused tchu's copy of it: {why}");
    let failure = Failure::park(None, FailureKind::Refused, reason);
    copies(d, acker, msg, &[failure], 1).await;
}

/// How much of the body a dead letter keeps when the broker refused the whole copy.
const KEPT_BODY: usize = 64 * 1024;

/// Parks a dead letter. A copy the broker refuses (over its `max_message_size` once tchu's
/// headers are added to a message that just fit) is parked trimmed instead: foreign headers
/// dropped and the body cut, with `x-tchu-trimmed` saying so. Giving the message back would
/// only bring it here again, forever.
async fn park(d: &Dispatcher, mut copy: WireMessage) -> crate::Result<()> {
    let refused = match publish_copy(d, &mut copy).await {
        Err(Error::Refused { source, .. }) => source,
        other => return other,
    };
    let mut trimmed = copy;
    trimmed
        .headers
        .retain(|k, _| TCHU_HEADERS.contains(&k.as_str()));
    let size = trimmed.body.len();
    trimmed.body.truncate(KEPT_BODY);
    let note = format!(
        "the broker refused the dead letter ({refused}); parked with only tchu's headers and the first {} of its {size} body bytes",
        trimmed.body.len()
    );
    warn!(help = "tchu::troubleshooting#dead-letter-trimmed", %note, "dead letter trimmed");
    trimmed
        .headers
        .insert(TRIMMED_HEADER.into(), super::truncate(&note, 1024).into());
    publish_copy(d, &mut trimmed).await
}

/// Room left in a frame for the properties beside the headers, and the frame's own bytes.
const FRAME_MARGIN: usize = 4096;

/// Keeps a copy within the broker's limits: headers that no longer fit in one frame (a
/// stranger's, plus the ones tchu adds) would make the broker close the connection, and the
/// message would come back on the next one. The largest headers that are not tchu's go first,
/// and `x-tchu-trimmed` says which.
fn fit_frame(copy: &mut WireMessage, frame_max: usize) {
    let budget = frame_max.saturating_sub(FRAME_MARGIN);
    let entry = |k: &String, v: &serde_json::Value| 1 + k.len() + encoded_len(v);
    let mut total: usize = copy.headers.iter().map(|(k, v)| entry(k, v)).sum();
    if total <= budget {
        return;
    }
    let mut theirs: Vec<(String, usize)> = copy
        .headers
        .iter()
        .filter(|(k, _)| !TCHU_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), entry(k, v)))
        .collect();
    theirs.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let mut dropped = Vec::new();
    for (name, n) in theirs {
        if total <= budget {
            break;
        }
        copy.headers.remove(&name);
        total -= n;
        dropped.push(name);
    }
    let note = format!(
        "headers dropped to fit the broker's frame of {frame_max} bytes: {}",
        dropped.join(", ")
    );
    copy.headers
        .insert(TRIMMED_HEADER.into(), super::truncate(&note, 1024).into());
}

/// The bytes a header value takes in an AMQP field table, as tchu encodes it (integers as
/// 8-byte long-long, strings as long strings).
fn encoded_len(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    1 + match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 8,
        Value::String(s) => 4 + s.len(),
        Value::Array(items) => 4 + items.iter().map(encoded_len).sum::<usize>(),
        Value::Object(m) => {
            4 + m
                .iter()
                .map(|(k, v)| 1 + k.len() + encoded_len(v))
                .sum::<usize>()
        }
    }
}

/// Signs a copy's control headers and publishes it to the queue its routing key names. A
/// copy the broker refuses because the queue is missing (deleted behind the service's back)
/// or full is tried again with backoff, after re-declaring the service's queues: giving the
/// delivery back instead would run again the handlers that had succeeded.
async fn publish_copy(d: &Dispatcher, copy: &mut WireMessage) -> crate::Result<()> {
    if let Some(frame_max) = d.client.transport().frame_max() {
        fit_frame(copy, frame_max);
    }
    d.signing.sign(copy);
    let mut pause = Duration::from_millis(100);
    for tries_left in (0..COPY_TRIES).rev() {
        match d.client.transport().publish("", copy, true).await {
            Err(e @ (Error::Unroutable { .. } | Error::Nacked { .. })) if tries_left > 0 => {
                warn!(help = "tchu::troubleshooting#copy-refused", queue = %copy.routing_key, error = %error_chain(&e), "the broker refused a copy; re-declaring the service's queues and trying again");
                if let Err(e) = d.client.transport().declare(&d.topo).await {
                    warn!(help = "tchu::troubleshooting#copy-refused", error = %error_chain(&e), "re-declaring the service's queues failed");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
    unreachable!("the last try returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_over_the_frame_are_dropped_by_their_encoded_size() {
        let mut copy = WireMessage::default();
        // 20,000 one-digit numbers: ~40 KB as JSON, 180 KB as AMQP long-longs.
        copy.headers.insert("x-ints".into(), json!(vec![1; 20_000]));
        // Named like tchu's, but a stranger's.
        copy.headers
            .insert("x-tchu-junk".into(), json!("j".repeat(50_000)));
        copy.headers.insert(HANDLER_HEADER.into(), json!("svc::h"));
        fit_frame(&mut copy, 131_072);
        assert!(
            !copy.headers.contains_key("x-ints"),
            "{:?}",
            copy.headers.keys()
        );
        assert!(
            copy.headers.contains_key("x-tchu-junk"),
            "small enough once x-ints is gone"
        );
        assert_eq!(copy.headers[HANDLER_HEADER], "svc::h");
        let mut big = WireMessage::default();
        big.headers
            .insert("x-tchu-junk".into(), json!("j".repeat(200_000)));
        fit_frame(&mut big, 131_072);
        assert!(!big.headers.contains_key("x-tchu-junk"));
        assert!(
            big.headers[TRIMMED_HEADER]
                .as_str()
                .unwrap()
                .contains("x-tchu-junk")
        );
    }
}
