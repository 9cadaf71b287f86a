//! The caller side of RPC: one reply consumer per client, multiplexing any number of calls by
//! correlation id.
//!
//! On RabbitMQ the replies come through direct reply-to (`amq.rabbitmq.reply-to`): no reply
//! queue is declared, and the request is published on the same channel that consumes the
//! replies, as the broker requires. Requests are mandatory and confirmed, so a topic no queue
//! is bound to fails at once with [`CallError::NoResponder`] instead of timing out.

use crate::error::Error;
use crate::transport::{EXCHANGE, ReplyEndpoint, ReplySender};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tchu_core::envelope::{EncodeOptions, WireMessage, encode_typed};
use tchu_core::rpc::{ReplyOutcome, decode_reply, looks_like_error};
use tchu_core::topic::validate_topic;
use tchu_core::{Format, TchuTchu};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

/// How long a call waits for its answer unless told otherwise (tchu-tchu's default too).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call did not produce a response. `E` is the request's business error type.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The responder answered with the request's business error.
    Business(E),
    /// No answer within the deadline.
    Timeout {
        /// The topic called.
        topic: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// No service is bound to the topic (found at once through the mandatory flag), or the
    /// call's deadline passed and the only services that replied have no handler for it.
    NoResponder {
        /// The topic called.
        topic: String,
    },
    /// The responder's handler failed or panicked.
    HandlerFailed {
        /// The responder's handler name.
        handler: String,
        /// Its error message.
        message: String,
    },
    /// The responder's dispatcher failed (a Celery `FAILURE` result).
    Remote {
        /// The exception type.
        exc_type: String,
        /// The exception message.
        message: String,
    },
    /// The answer could not be decoded into the response or the error type.
    Decode {
        /// What did not fit.
        reason: String,
    },
    /// The request could not be sent or the connection was lost while waiting.
    Connection(Error),
    /// The request could not be built, so nothing was sent: an invalid topic
    /// ([`Error::Topic`]) or a payload that does not encode ([`Error::Encode`]); the
    /// cause is the `source()`.
    Request(Error),
}

impl<E: fmt::Debug> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Business(e) => write!(f, "the responder answered with a business error: {e:?}"),
            Self::Timeout { topic, after } => write!(f, "no answer to `{topic}` within {after:?}"),
            Self::NoResponder { topic } => {
                write!(f, "no responder for `{topic}`: no service handles it")
            }
            Self::HandlerFailed { handler, message } => {
                write!(f, "responder `{handler}` failed: {message}")
            }
            Self::Remote { exc_type, message } => {
                write!(f, "the responder failed with {exc_type}: {message}")
            }
            Self::Decode { reason } => write!(f, "the answer could not be decoded: {reason}"),
            // Said at this level only: the cause is the source.
            Self::Connection(_) => write!(f, "connection trouble during the call"),
            Self::Request(_) => write!(f, "the request could not be built; nothing was sent"),
        }
    }
}

impl<E> CallError<E> {
    /// The entry of the troubleshooting guide for this failure (see [`Error::help`]).
    #[must_use]
    pub fn help(&self) -> &'static str {
        match self {
            Self::Business(_) => crate::error::entry("business-error"),
            Self::Timeout { .. } => crate::error::entry("rpc-timeout"),
            Self::NoResponder { .. } => crate::error::entry("no-responder"),
            Self::HandlerFailed { .. } => crate::error::entry("handler-failed"),
            Self::Remote { .. } => crate::error::entry("remote-failure"),
            Self::Decode { .. } => crate::error::entry("reply-decode"),
            Self::Connection(e) | Self::Request(e) => e.help(),
        }
    }
}

impl<E: fmt::Debug> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connection(e) | Self::Request(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> CallError<E> {
    pub(crate) fn map_business<F>(self, f: impl FnOnce(E) -> F) -> CallError<F> {
        match self {
            Self::Business(e) => CallError::Business(f(e)),
            Self::Timeout { topic, after } => CallError::Timeout { topic, after },
            Self::NoResponder { topic } => CallError::NoResponder { topic },
            Self::HandlerFailed { handler, message } => {
                CallError::HandlerFailed { handler, message }
            }
            Self::Remote { exc_type, message } => CallError::Remote { exc_type, message },
            Self::Decode { reason } => CallError::Decode { reason },
            Self::Connection(e) => CallError::Connection(e),
            Self::Request(e) => CallError::Request(e),
        }
    }
}

pub(crate) type Answer = std::result::Result<(Value, Option<bool>), CallError<Value>>;

/// A call waiting for its answer.
struct Waiter {
    tx: oneshot::Sender<Answer>,
    /// Whether an unmarked `null` is a valid response for this call (a unit or optional
    /// response type). When it is not, such a reply is an observer's silence and is skipped.
    null_is_answer: bool,
    /// Whether a service answered that it has no handler for the topic.
    no_handlers: bool,
}

/// How many finished correlation ids are remembered, to tell a surplus answer (a second service
/// bound to the same topic) from a stray one, and to log it once.
const RECENT: usize = 4096;

/// What became of a reply.
#[derive(Debug, PartialEq)]
enum Fate {
    /// It ended its call.
    Answered,
    /// Its call goes on waiting (a `STARTED` meta, an observer's `null`, `no_handlers`).
    Waiting,
    /// No call of this client waits for it: dropped unread.
    Dropped,
}

pub(crate) struct Replies {
    /// The largest reply read (the client's message size limit).
    max_bytes: usize,
    pending: Mutex<HashMap<String, Waiter>>,
    recent: Mutex<VecDeque<String>>,
    alive: AtomicBool,
    reply_to: String,
    /// How requests go out (on RabbitMQ, on the channel that consumes the replies).
    sender: ReplySender,
    generation: u64,
}

impl Replies {
    /// Starts reading the replies of `endpoint`; the reader ends with the consumer, or when the
    /// client drops this.
    pub(crate) fn start(endpoint: ReplyEndpoint, max_bytes: usize) -> Arc<Self> {
        let ReplyEndpoint {
            reply_to,
            generation,
            sender,
            mut stream,
        } = endpoint;
        let me = Arc::new(Self::new(reply_to, sender, generation, max_bytes));
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            while let Some(reply) = stream.next().await {
                let Some(me) = weak.upgrade() else { return };
                match reply {
                    Ok(r) => drop(me.deliver(r.correlation_id, &r.body)),
                    Err(e) => return me.fail_all(&format!("reply consumer failed: {e}")),
                }
            }
            if let Some(me) = weak.upgrade() {
                me.fail_all("reply consumer closed");
            }
        });
        me
    }

    fn new(reply_to: String, sender: ReplySender, generation: u64, max_bytes: usize) -> Self {
        Self {
            max_bytes,
            pending: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            alive: AtomicBool::new(true),
            reply_to,
            sender,
            generation,
        }
    }

    /// The connection generation the reply consumer lives on.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn remember(&self, id: String) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(id);
    }

    /// Takes a reply off the reply address. Only a reply to a call of this client still
    /// waiting is read: anyone who saw a request could otherwise make this client parse
    /// whatever it sends there, as large as the broker allows.
    fn deliver(&self, correlation_id: Option<String>, body: &[u8]) -> Fate {
        let Some(id) = correlation_id else {
            warn!(
                help = "tchu::troubleshooting#late-reply",
                "RPC reply without a correlation id dropped"
            );
            return Fate::Dropped;
        };
        if !self.is_waiting(&id) {
            self.not_waited_for(&id);
            return Fate::Dropped;
        }
        if body.len() > self.max_bytes {
            let reason = format!(
                "the reply is {} bytes, over the limit of {} bytes",
                body.len(),
                self.max_bytes
            );
            warn!(help = "tchu::troubleshooting#reply-decode", correlation_id = %id, %reason, "RPC reply dropped");
            self.finish(id, Err(CallError::Decode { reason }));
            return Fate::Answered;
        }
        let outcome = match decode_reply(body) {
            // STARTED and friends: the final answer follows.
            Ok(ReplyOutcome::Pending) => return Fate::Waiting,
            Ok(o) => o,
            Err(reason) => {
                warn!(help = "tchu::troubleshooting#reply-decode", correlation_id = %id, %reason, "undecodable RPC reply");
                self.finish(id, Err(CallError::Decode { reason }));
                return Fate::Answered;
            }
        };
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = pending.get_mut(&id)
                && !is_final(&outcome, w)
            {
                debug!(correlation_id = %id, "RPC reply without an answer skipped; waiting for a responder");
                return Fate::Waiting;
            }
        }
        let result = match outcome {
            ReplyOutcome::Answered { value, is_error } => Ok((value, is_error)),
            ReplyOutcome::HandlerFailed { handler, error } => Err(CallError::HandlerFailed {
                handler,
                message: error,
            }),
            ReplyOutcome::NoHandlers { routing_key } => {
                Err(CallError::NoResponder { topic: routing_key })
            }
            ReplyOutcome::Failure { exc_type, message } => {
                Err(CallError::Remote { exc_type, message })
            }
            _ => return Fate::Waiting,
        };
        self.finish(id, result);
        Fate::Answered
    }

    fn is_waiting(&self, id: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// Ends a call with its answer.
    fn finish(&self, id: String, answer: Answer) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(w) = waiter {
            self.remember(id);
            let _ = w.tx.send(answer);
        }
    }

    /// A reply for a call that ended (a second service's answer, or one after the deadline),
    /// or for no call of this client: logged, never read.
    fn not_waited_for(&self, id: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = recent.iter().position(|r| r == id) {
            // Removing it makes the next surplus answer for this call silent: logged once.
            recent.remove(pos);
            info!(correlation_id = %id, "surplus or late RPC answer dropped (several responders, or the call had ended)");
        } else {
            debug!(correlation_id = %id, "RPC answer for an unknown call dropped");
        }
    }

    fn fail_all(&self, why: &str) {
        self.alive.store(false, Ordering::SeqCst);
        let waiters: Vec<Waiter> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in waiters {
            let lost = Error::RepliesLost {
                reason: why.to_owned(),
            };
            let _ = w.tx.send(Err(CallError::Connection(lost)));
        }
    }

    /// Sends a request and waits for its answer until `timeout`. `null_is_answer`: whether an
    /// unmarked `null` reply answers this call.
    pub(crate) async fn call(
        &self,
        (format, tchu_tchu): (Format, TchuTchu),
        topic: &str,
        payload: &(impl Serialize + ?Sized + Sync),
        timeout: Duration,
        null_is_answer: bool,
    ) -> Answer {
        let id = uuid::Uuid::new_v4().to_string();
        let msg = self.request((format, tchu_tchu), topic, payload, &id)?;
        let kind = crate::observe::SpanKind::Client;
        let mut span = crate::observe::message_span(|| format!("call {topic}"), kind, &msg, topic);
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            tx,
            null_is_answer,
            no_handlers: false,
        };
        let pending = &self.pending;
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), waiter);
        // Removes the waiter however the call ends, the caller dropping its future included.
        let _forget = Forget {
            replies: self,
            id: &id,
        };
        let answer = match self.sender.send(EXCHANGE, &msg).await {
            Err(Error::Unroutable { topic }) => Err(CallError::NoResponder { topic }),
            Err(other) => Err(CallError::Connection(other)),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(CallError::Connection(Error::Closed)),
                Err(_) => Err(self.timed_out(&id, topic, timeout)),
            },
        };
        match &answer {
            // A business error is an answer: the call itself went well.
            Err(CallError::Business(_)) | Ok(_) => {}
            Err(e) => span.fail(e),
        }
        answer
    }

    /// The request message: the topic's event, replying to this consumer, transient.
    fn request(
        &self,
        (format, tchu_tchu): (Format, TchuTchu),
        topic: &str,
        payload: &(impl Serialize + ?Sized + Sync),
        id: &str,
    ) -> std::result::Result<WireMessage, CallError<Value>> {
        validate_topic(topic).map_err(|e| CallError::Request(e.into()))?;
        let options = EncodeOptions {
            format,
            id,
            is_rpc: true,
            reply_to: Some(&self.reply_to),
            tchu_tchu,
        };
        let mut msg =
            encode_typed(topic, payload, &options).map_err(|e| CallError::Request(e.into()))?;
        msg.properties.correlation_id = Some(id.to_owned());
        // Transient: a persistent message on a durable queue is confirmed only once it is on
        // disk (measured: the confirm then came ~1 ms after the reply, doubling the round
        // trip), and a request is worth nothing after its caller's deadline, which a broker
        // restart exceeds anyway.
        msg.properties.delivery_mode = Some(1);
        crate::observe::stamp(&mut msg.headers);
        Ok(msg)
    }

    /// How a call that got no answer in time ends: `NoResponder` when every service that said
    /// anything said it has no handler, `Timeout` otherwise.
    fn timed_out(&self, id: &str, topic: &str, after: Duration) -> CallError<Value> {
        self.remember(id.to_owned());
        let no_handlers = (self.pending.lock().unwrap_or_else(|e| e.into_inner()))
            .get(id)
            .is_some_and(|w| w.no_handlers);
        let topic = topic.to_owned();
        if no_handlers {
            CallError::NoResponder { topic }
        } else {
            CallError::Timeout { topic, after }
        }
    }
}

/// Whether a reply ends the call. Every service bound to the topic may reply, so a reply
/// that says nothing does not: an observer's `null` (tchu-tchu answers for observers; tchu
/// services do not), or `no_handlers` (tchu-tchu answers so when the broker routed a request
/// its local matcher does not match, like any `#` binding: bug B3). The call goes on waiting
/// for a responder; a `no_handlers` seen makes a call that times out end in `NoResponder`.
fn is_final(outcome: &ReplyOutcome, waiter: &mut Waiter) -> bool {
    match outcome {
        ReplyOutcome::NoHandlers { .. } => {
            waiter.no_handlers = true;
            false
        }
        o => o.carries_answer() || waiter.null_is_answer,
    }
}

struct Forget<'a> {
    replies: &'a Replies,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.replies
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.id);
    }
}

/// Decodes an answer into the response or the business error. A tchu responder says which it
/// is; for a Python responder, an object with a non-null `error_code` is an error (tchu-tchu's
/// own rule), and otherwise whichever type fits.
pub(crate) fn decode_answer<T: DeserializeOwned, E: DeserializeOwned>(
    value: Value,
    is_error: Option<bool>,
) -> std::result::Result<T, CallError<E>> {
    let as_ok = |v: &Value| T::deserialize(v).map_err(|e| format!("response: {e}"));
    let as_err = |v: &Value| E::deserialize(v).map_err(|e| format!("business error: {e}"));
    match is_error {
        Some(true) => {
            Err(as_err(&value)
                .map_or_else(|reason| CallError::Decode { reason }, CallError::Business))
        }
        Some(false) => as_ok(&value).map_err(|reason| CallError::Decode { reason }),
        None if looks_like_error(&value) => match as_err(&value) {
            Ok(e) => Err(CallError::Business(e)),
            Err(err_reason) => as_ok(&value).map_err(|ok_reason| CallError::Decode {
                reason: format!("{err_reason}; {ok_reason}"),
            }),
        },
        None => match as_ok(&value) {
            Ok(v) => Ok(v),
            Err(ok_reason) => match as_err(&value) {
                Ok(e) => Err(CallError::Business(e)),
                Err(err_reason) => Err(CallError::Decode {
                    reason: format!("{ok_reason}; {err_reason}"),
                }),
            },
        },
    }
}

/// Used by `call_raw`: the answer as JSON, business errors as JSON too.
pub(crate) fn raw_answer(r: Answer) -> std::result::Result<Value, CallError<Value>> {
    match r? {
        (v, Some(true)) => Err(CallError::Business(v)),
        (v, None) if looks_like_error(&v) => Err(CallError::Business(v)),
        (v, _) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(max_bytes: usize) -> Replies {
        let sender = ReplySender::Memory(crate::MemoryBroker::new());
        Replies::new("me".into(), sender, 0, max_bytes)
    }

    fn waiting(r: &Replies, id: &str) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        r.pending.lock().unwrap().insert(
            id.into(),
            Waiter {
                tx,
                null_is_answer: false,
                no_handlers: false,
            },
        );
        rx
    }

    #[test]
    fn a_reply_no_call_waits_for_is_dropped_unread() {
        let r = replies(1 << 20);
        let _rx = waiting(&r, "mine");
        // Not even looked at: a stranger's body for a stranger's id.
        assert_eq!(
            r.deliver(Some("theirs".into()), b"\xff not json"),
            Fate::Dropped
        );
        assert_eq!(r.deliver(None, b"{}"), Fate::Dropped);
        assert!(r.is_waiting("mine"));
    }

    #[test]
    fn an_oversized_reply_ends_its_call_unparsed() {
        let r = replies(16);
        let mut rx = waiting(&r, "mine");
        assert_eq!(r.deliver(Some("mine".into()), &[b' '; 64]), Fate::Answered);
        match rx.try_recv() {
            Ok(Err(CallError::Decode { reason })) => assert!(reason.contains("over the limit")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_final_reply_ends_a_call() {
        let r = replies(1 << 20);
        let mut rx = waiting(&r, "c");
        let started = br#"{"status": "STARTED", "result": {"pid": 1}}"#;
        assert_eq!(r.deliver(Some("c".into()), started), Fate::Waiting);
        let observer = br#"{"status": "SUCCESS", "result": {"status": "completed", "results": [{"handler": "a", "status": "success", "result": null}]}, "task_id": "c"}"#;
        assert_eq!(r.deliver(Some("c".into()), observer), Fate::Waiting);
        let answer = br#"{"status": "SUCCESS", "result": {"status": "completed", "results": [{"handler": "p", "status": "success", "result": 7}]}, "task_id": "c"}"#;
        assert_eq!(r.deliver(Some("c".into()), answer), Fate::Answered);
        assert!(matches!(rx.try_recv(), Ok(Ok((v, None))) if v == 7));
        // A second service's answer after that is dropped unread.
        assert_eq!(r.deliver(Some("c".into()), answer), Fate::Dropped);
    }
}
