//! Publishing: with publisher confirms for events and requests, without for RPC replies.

use super::connection::Live;
use super::{Amqp, channel_refused, short};
use crate::error::{Error, Result};
use crate::error_chain;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use std::future::Future;
use std::sync::Arc;
use tchu_core::envelope::WireMessage;
use tokio::time::Instant;
use tracing::warn;

/// Publishes on a confirm-mode channel and waits for the broker's answer. With `mandatory`, a
/// message no queue takes is an [`Error::Unroutable`].
pub(crate) async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    msg: &WireMessage,
    mandatory: bool,
) -> Result<()> {
    let confirm = send_one(ch, exchange, msg, mandatory)
        .await?
        .await
        .map_err(Error::amqp("publisher confirm"))?;
    confirmed(msg, confirm)
}

/// What the broker's answer to a publish means.
fn confirmed(msg: &WireMessage, confirm: Confirmation) -> Result<()> {
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Error::Unroutable {
            topic: msg.routing_key.clone(),
        }),
        Confirmation::Nack(_) => Err(Error::Nacked {
            topic: msg.routing_key.clone(),
        }),
    }
}

/// Publishes on the client's publisher channel and waits for the confirm, riding out a lost
/// connection (bounded by the publish timeout) and one refused channel.
pub(crate) async fn publish(
    amqp: &Amqp,
    exchange: &str,
    msg: &WireMessage,
    mandatory: bool,
) -> Result<()> {
    let deadline = Instant::now() + amqp.publish_timeout();
    let mut live = amqp.live(deadline).await?;
    let (mut refusals, mut nacks) = (0, 0);
    loop {
        let channel = live.publisher();
        let attempt = tokio::time::timeout_at(
            deadline,
            publish_confirmed(&channel, exchange, msg, mandatory),
        );
        let Ok(result) = attempt.await else {
            // No confirm in time (a blocked broker, a dead socket): not sent.
            return Err(Error::Disconnected {
                waited: amqp.publish_timeout(),
            });
        };
        match result {
            // The broker closed the channel to refuse a publish, this one or another in flight
            // on it: a fresh channel, and one more try tells which. The connection and its
            // consumers are not disturbed.
            Err(Error::Amqp { op, source }) if channel_refused(&source) && live.is_connected() => {
                if let Err(e) = live.reopen_publisher(&channel).await {
                    warn!(help = "tchu::troubleshooting#reconnecting", error = %error_chain(&e), "could not reopen the publisher channel; reconnecting");
                    live = reconnected(amqp, &live, deadline).await?;
                    continue;
                }
                refusals += 1;
                if refusals > 1 {
                    return Err(Error::Refused { op, source });
                }
            }
            // The connection failed under the publish: the broker may or may not have it, so
            // publish again once reconnected (at-least-once); an unconfirmed publish is never
            // reported as sent.
            Err(Error::Amqp { op, source }) => {
                warn!(help = "tchu::troubleshooting#reconnecting", %op, error = %source, "publish failed; retrying after reconnection");
                live = reconnected(amqp, &live, deadline).await?;
            }
            // The broker would not take the message just now: a quorum queue without a leader
            // (a partition, a node lost) or a full queue that rejects publishes. Tried again
            // with a growing pause until the deadline, then reported.
            Err(e @ Error::Nacked { .. }) => {
                let pause = NACK_PAUSE_FIRST * 2u32.pow(nacks.min(5));
                let pause = pause.min(NACK_PAUSE_MAX);
                if Instant::now() + pause >= deadline {
                    return Err(e);
                }
                if nacks == 0 {
                    warn!(help = "tchu::troubleshooting#nacked", topic = %msg.routing_key, "the broker refused the message (negative confirm); trying again until the publish deadline");
                }
                nacks += 1;
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

/// The first pause after a negative confirm, doubled after each one up to the last.
const NACK_PAUSE_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
const NACK_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Publishes messages in order on the publisher channel with up to `window` confirms in
/// flight. They go out in chunks of half a window, each chunk handed to lapin at once (its
/// frames queued together, written together), and a confirm is awaited only when the window
/// is full: a batch costs neither a round trip nor a write per message. One result per
/// message, in order; after a failure to send, the rest are not sent. A failed connection is
/// reported to the supervisor, never retried here: the caller decides what to publish again.
pub(crate) async fn publish_batch(
    amqp: &Amqp,
    exchange: &str,
    msgs: &[WireMessage],
    window: usize,
) -> Vec<Result<()>> {
    if msgs.is_empty() {
        return Vec::new();
    }
    let deadline = Instant::now() + amqp.publish_timeout();
    let not_sent = || Error::Disconnected {
        waited: amqp.publish_timeout(),
    };
    let live = match amqp.live(deadline).await {
        Ok(live) => live,
        Err(e) => {
            let rest = msgs[1..].iter().map(|_| Err(not_sent()));
            return std::iter::once(Err(e)).chain(rest).collect();
        }
    };
    let channel = live.publisher();
    let chunk = (window / 2).max(1);
    let mut results: Vec<Option<Result<()>>> = msgs.iter().map(|_| None).collect();
    let mut in_flight = std::collections::VecDeque::with_capacity(window.min(msgs.len()));
    for (c, part) in msgs.chunks(chunk).enumerate() {
        let sent = tokio::time::timeout_at(deadline, sent_in_order(&channel, exchange, part));
        // No answer in time (a blocked broker, a dead socket): this chunk and the rest are
        // not sent.
        let Ok(sent) = sent.await else {
            break;
        };
        let mut failed = false;
        for (k, s) in sent.into_iter().enumerate() {
            match s {
                Ok(confirm) => in_flight.push_back((c * chunk + k, confirm)),
                Err(e) => {
                    let result = after_failure(amqp, &live, &channel, Err(e)).await;
                    results[c * chunk + k] = Some(result);
                    failed = true;
                }
            }
        }
        while in_flight.len() + chunk > window.max(chunk) || (failed && !in_flight.is_empty()) {
            let Some((at, confirm)) = in_flight.pop_front() else {
                break;
            };
            let result = settled(&msgs[at], confirm, deadline, not_sent).await;
            results[at] = Some(after_failure(amqp, &live, &channel, result).await);
        }
        if failed {
            break;
        }
    }
    for (at, confirm) in in_flight {
        let result = settled(&msgs[at], confirm, deadline, not_sent).await;
        results[at] = Some(after_failure(amqp, &live, &channel, result).await);
    }
    (results.into_iter())
        .map(|r| r.unwrap_or_else(|| Err(not_sent())))
        .collect()
}

/// A future of one publish, boxed so that a chunk of them can be driven together.
type Sending<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<lapin::PublisherConfirm>> + Send + 'a>>;

/// Hands `msgs` to lapin in order (mandatory) and waits until each is written: its pending
/// confirm, or why it was not sent. Each publish queues its frames the first time it is
/// polled, and they are first polled in order, so the broker gets them in order.
async fn sent_in_order(
    channel: &lapin::Channel,
    exchange: &str,
    msgs: &[WireMessage],
) -> Vec<Result<lapin::PublisherConfirm>> {
    let mut sending: Vec<Sending<'_>> = (msgs.iter())
        .map(|msg| Box::pin(send_one(channel, exchange, msg, true)) as Sending<'_>)
        .collect();
    let mut done: Vec<Option<Result<lapin::PublisherConfirm>>> =
        msgs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (fut, out) in sending.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => *out = Some(r),
                    std::task::Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Hands one message to lapin: its pending confirm once written.
async fn send_one(
    channel: &lapin::Channel,
    exchange: &str,
    msg: &WireMessage,
    mandatory: bool,
) -> Result<lapin::PublisherConfirm> {
    channel
        .basic_publish(
            short(exchange, "exchange")?,
            short(&msg.routing_key, "routing key")?,
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            &msg.body,
            super::convert::to_properties(msg),
        )
        .await
        .map_err(Error::amqp("basic.publish"))
}

/// The broker's answer to one message of a batch, waited for until the deadline.
async fn settled(
    msg: &WireMessage,
    confirm: lapin::PublisherConfirm,
    deadline: Instant,
    not_sent: impl Fn() -> Error,
) -> Result<()> {
    match tokio::time::timeout_at(deadline, confirm).await {
        Ok(Ok(c)) => confirmed(msg, c),
        Ok(Err(e)) => Err(Error::amqp("publisher confirm")(e)),
        Err(_) => Err(not_sent()),
    }
}

/// What a failed batch publish leaves behind: a channel the broker closed to refuse a
/// message is replaced (the connection and its consumers are not disturbed) and the failure
/// is [`Error::Refused`]; a failed connection is reported to the supervisor. A timeout is
/// left to the heartbeats.
async fn after_failure(
    amqp: &Amqp,
    live: &Live,
    channel: &lapin::Channel,
    result: Result<()>,
) -> Result<()> {
    match result {
        Err(Error::Amqp { op, source }) if channel_refused(&source) && live.is_connected() => {
            if let Err(e) = live.reopen_publisher(channel).await {
                warn!(help = "tchu::troubleshooting#reconnecting", error = %error_chain(&e), "could not reopen the publisher channel");
            }
            Err(Error::Refused { op, source })
        }
        Err(Error::Amqp { op, source }) => {
            amqp.report_broken(live.generation);
            Err(Error::Amqp { op, source })
        }
        other => other,
    }
}

/// Has the supervisor replace `live` and waits for the new connection until `deadline`.
async fn reconnected(amqp: &Amqp, live: &Live, deadline: Instant) -> Result<Arc<Live>> {
    amqp.report_broken(live.generation);
    amqp.live_after(live.generation, deadline).await
}

/// Publishes without waiting for the confirm: for RPC replies, which are transient and whose
/// loss the caller's deadline already covers; waiting would add a round trip to every call.
#[cfg(feature = "service")]
pub(crate) async fn send_unconfirmed(amqp: &Amqp, exchange: &str, msg: &WireMessage) -> Result<()> {
    let live = amqp.live_now().await?;
    // A channel without confirms: nothing to track per reply. A reply the broker refused
    // closes it only later (nothing waits for a confirm), so the reply after it finds it
    // closed: it reopens the channel and goes out on the new one.
    let mut tries = 2;
    loop {
        let channel = live.replier().await?;
        let sent = channel
            .basic_publish(
                short(exchange, "exchange")?,
                short(&msg.routing_key, "routing key")?,
                BasicPublishOptions::default(),
                &msg.body,
                super::convert::to_properties(msg),
            )
            .await;
        let e = match sent {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        tries -= 1;
        if !channel_refused(&e) || tries == 0 {
            return Err(Error::Amqp {
                op: "basic.publish",
                source: e.into(),
            });
        }
        live.reopen_replier(&channel).await?;
    }
}
