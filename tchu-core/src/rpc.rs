//! RPC: the [`Request`] trait, the standard business error [`RpcError`], and the reply shapes
//! on the wire.
//!
//! A responder answers in the Celery `rpc://` result shape tchu-tchu's `TchuClient.call` reads
//! (`docs/wire.md` 2.6): a result meta `{"status": "SUCCESS", "result": <dispatcher
//! envelope>, "task_id": ...}` whose envelope lists one entry per handler. A business error
//! travels as data in a success entry, as tchu-tchu's `TchuRPCException.to_response_dict()` does;
//! tchu marks such entries `"is_error": true` so a Rust caller need not guess (Python ignores the
//! key). [`decode_reply`] reads every shape a Python or Rust responder sends.

use crate::Event;
use crate::envelope::{Headers, Properties, WireMessage};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// An event that is a request: a responder answers it with a `Response` or an `Error`.
///
/// Implemented by `#[tchu::event(topic = "...", response = R, error = E)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tchu RPC request",
    label = "not a request",
    note = "declare the response type: `#[tchu::event(topic = \"...\", response = MyResponse)]`"
)]
pub trait Request: Event {
    /// What a successful call returns.
    type Response: Serialize + DeserializeOwned + schemars::JsonSchema + Send + 'static;
    /// The business error a responder may answer with ([`RpcError`] unless declared).
    type Error: Serialize + DeserializeOwned + schemars::JsonSchema + Send + 'static;
}

/// The standard business error, shaped like tchu-tchu's `TchuRPCException.to_response_dict()`:
/// `{"success": false, "error_message": ..., "error_code": ..., "error_details": {...}}`.
///
/// ```
/// let e = tchu_core::RpcError::new("CARD_DECLINED", "the card was declined")
///     .with_detail("retry_after", 30);
/// assert_eq!(e.to_string(), "CARD_DECLINED: the card was declined");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RpcError {
    /// Always `false`.
    #[serde(default)]
    pub success: bool,
    /// Human-readable message.
    pub error_message: String,
    /// Machine-readable code (tchu-tchu's default is `RPC_ERROR`).
    pub error_code: String,
    /// Free-form details.
    #[serde(default)]
    pub error_details: Map<String, Value>,
}

impl RpcError {
    /// A business error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            success: false,
            error_message: message.into(),
            error_code: code.into(),
            error_details: Map::new(),
        }
    }

    /// Adds a detail.
    #[must_use]
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.error_details.insert(key.into(), value.into());
        self
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_code, self.error_message)
    }
}

impl std::error::Error for RpcError {}

/// One handler's part of a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyEntry {
    /// The handler answered (a response, or a business error when `is_error`).
    Answered {
        /// Handler name.
        handler: String,
        /// The JSON answer.
        value: Value,
        /// Whether `value` is the request's business error.
        is_error: bool,
    },
    /// The handler failed or panicked.
    Failed {
        /// Handler name.
        handler: String,
        /// What went wrong.
        error: String,
    },
}

/// The reply to `request`, ready to publish on the default exchange: the Celery `rpc://`
/// result ([`encode_reply`]) with the properties a Celery or tchu caller matches it by.
/// `None` when the request names no `reply_to` (nobody waits for an answer).
///
/// `now` is the completion time, ISO 8601 ([`crate::time::now_iso8601`]).
pub fn reply_message(
    request: &WireMessage,
    task_id: &str,
    topic: &str,
    entries: &[ReplyEntry],
    now: &str,
) -> Option<WireMessage> {
    let reply_to = request.properties.reply_to.clone()?;
    // v1 requests carry no correlation id: Celery then uses the task id, and so do we.
    let correlation_id =
        (request.properties.correlation_id.clone()).unwrap_or_else(|| task_id.to_owned());
    Some(WireMessage {
        routing_key: reply_to,
        properties: Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            // Transient: an answer is worth nothing after its caller's deadline.
            delivery_mode: Some(1),
            priority: Some(0),
            correlation_id: Some(correlation_id),
            ..Properties::default()
        },
        headers: Headers::default(),
        celery: None,
        body: encode_reply(task_id, topic, entries, now),
    })
}

/// Encodes a responder's reply: a Celery `rpc://` result meta with tchu-tchu's dispatcher envelope.
///
/// An empty `entries` encodes tchu-tchu's `{"status": "no_handlers", ...}` result.
pub fn encode_reply(
    task_id: &str,
    routing_key: &str,
    entries: &[ReplyEntry],
    date_done: &str,
) -> Vec<u8> {
    // Written from borrowed structs in Python's key order: no JSON tree is built, and each
    // handler's answer is serialised where it lies (measured with callgrind: a tree of moved
    // values cost a third of a responder's dispatch, `json!` more).
    let result = if entries.is_empty() {
        DispatchResult::NoHandlers {
            status: "no_handlers",
            routing_key,
        }
    } else {
        DispatchResult::Completed {
            status: "completed",
            routing_key,
            is_rpc: true,
            handlers_executed: entries.len(),
            results: entries.iter().map(WireEntry::of).collect(),
        }
    };
    let meta = ResultMeta {
        status: "SUCCESS",
        result,
        traceback: (),
        children: [(); 0],
        date_done,
        task_id,
    };
    crate::pyjson::to_string(&meta, true)
        .unwrap_or_default()
        .into_bytes()
}

/// Celery's `rpc://` result meta, members in the order Celery writes them.
#[derive(Serialize)]
struct ResultMeta<'a> {
    status: &'static str,
    result: DispatchResult<'a>,
    traceback: (),
    children: [(); 0],
    date_done: &'a str,
    task_id: &'a str,
}

/// tchu-tchu's dispatcher result, as `dispatch_event` returns it.
#[derive(Serialize)]
#[serde(untagged)]
enum DispatchResult<'a> {
    NoHandlers {
        status: &'static str,
        routing_key: &'a str,
    },
    Completed {
        status: &'static str,
        routing_key: &'a str,
        is_rpc: bool,
        handlers_executed: usize,
        results: Vec<WireEntry<'a>>,
    },
}

/// One handler's entry in a reply's `results`.
#[derive(Serialize)]
#[serde(untagged)]
enum WireEntry<'a> {
    Answered {
        handler: &'a str,
        status: &'static str,
        result: &'a Value,
        // Always marked: a tchu responder's `null` is an answer, where an unmarked `null`
        // may be a Python observer's (see `ReplyOutcome::carries_answer`).
        is_error: bool,
    },
    Failed {
        handler: &'a str,
        status: &'static str,
        error: &'a str,
    },
}

impl<'a> WireEntry<'a> {
    fn of(e: &'a ReplyEntry) -> Self {
        match e {
            ReplyEntry::Answered {
                handler,
                value,
                is_error,
            } => Self::Answered {
                handler,
                status: "success",
                result: value,
                is_error: *is_error,
            },
            ReplyEntry::Failed { handler, error } => Self::Failed {
                handler,
                status: "error",
                error,
            },
        }
    }
}

/// What a caller makes of a reply message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReplyOutcome {
    /// Not final yet (`STARTED`, `RETRY`, `PENDING`): keep waiting.
    Pending,
    /// A handler answered. `is_error` is `Some(_)` when a tchu responder marked the answer as
    /// the response or the business error, `None` when the responder did not say (Python).
    /// An unmarked `null` may be nothing but an observer's silence: see
    /// [`ReplyOutcome::carries_answer`].
    Answered {
        /// The answer.
        value: Value,
        /// The responder's marker, if any.
        is_error: Option<bool>,
    },
    /// The answering handler failed.
    HandlerFailed {
        /// Handler name.
        handler: String,
        /// Its error.
        error: String,
    },
    /// The responding service had no handler for the topic.
    NoHandlers {
        /// The topic.
        routing_key: String,
    },
    /// The responder's dispatcher itself failed (Celery `FAILURE` / `REVOKED`).
    Failure {
        /// Exception type.
        exc_type: String,
        /// Exception message.
        message: String,
    },
}

/// Decodes a reply body.
///
/// # Errors
/// A description when the body is not a result meta at all.
pub fn decode_reply(body: &[u8]) -> Result<ReplyOutcome, String> {
    match decode_completed(body) {
        Some(outcome) => Ok(outcome),
        None => decode_reply_general(body),
    }
}

/// A `SUCCESS` meta whose result is tchu-tchu's `completed` dispatcher result, as tchu and
/// tchu-tchu responders send it.
#[derive(Deserialize)]
struct CompletedMeta<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    result: CompletedResult<'a>,
}

#[derive(Deserialize)]
struct CompletedResult<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    results: Vec<ReadEntry<'a>>,
}

/// A handler's entry, its values left as JSON text until one is chosen.
#[derive(Deserialize)]
struct ReadEntry<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_error: Option<&'a RawValue>,
}

impl ReadEntry<'_> {
    fn marker(&self) -> Option<bool> {
        match self.is_error.map(RawValue::get) {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        }
    }

    /// As [`entry_answers`]: a success with a value or a marker (failures take the general
    /// path).
    fn answers(&self) -> bool {
        self.marker().is_some() || self.result.is_some()
    }
}

/// Reads the common answer straight from the bytes: no JSON tree but the chosen answer's.
/// `None` for any other reply (a failure, `no_handlers`, Python's unmarked shapes, anything
/// malformed), which [`decode_reply_general`] judges.
fn decode_completed(body: &[u8]) -> Option<ReplyOutcome> {
    let meta: CompletedMeta<'_> = serde_json::from_slice(body).ok()?;
    let results = &meta.result.results;
    let all_succeeded = results.iter().all(|e| e.status == "success");
    if meta.status != "SUCCESS" || meta.result.status == "no_handlers" || !all_succeeded {
        return None;
    }
    let chosen = results.iter().find(|e| e.answers()).or(results.first())?;
    let value = match chosen.result {
        Some(raw) => serde_json::from_str(raw.get()).ok()?,
        None => Value::Null,
    };
    Some(ReplyOutcome::Answered {
        value,
        is_error: chosen.marker(),
    })
}

/// Any reply, through a JSON tree.
fn decode_reply_general(body: &[u8]) -> Result<ReplyOutcome, String> {
    let mut meta: Value =
        serde_json::from_slice(body).map_err(|e| format!("reply is not JSON: {e}"))?;
    // Taken out, not cloned: the result is most of the reply.
    let result = meta
        .get_mut("result")
        .map(Value::take)
        .unwrap_or(Value::Null);
    let status = meta
        .get("status")
        .and_then(Value::as_str)
        .ok_or("reply has no `status`")?;
    match status {
        "SUCCESS" => {}
        "FAILURE" | "REVOKED" => {
            let exc_type = result
                .get("exc_type")
                .and_then(Value::as_str)
                .unwrap_or(status)
                .to_owned();
            let message = match result.get("exc_message") {
                Some(Value::Array(parts)) => {
                    parts.iter().map(value_text).collect::<Vec<_>>().join(", ")
                }
                Some(v) => value_text(v),
                None => String::new(),
            };
            return Ok(ReplyOutcome::Failure { exc_type, message });
        }
        _ => return Ok(ReplyOutcome::Pending),
    }
    let Value::Object(envelope) = result else {
        // tchu-tchu 2.x compatibility: a non-dict result is the answer itself.
        return Ok(ReplyOutcome::Answered {
            value: result,
            is_error: None,
        });
    };
    if envelope.get("status").and_then(Value::as_str) == Some("no_handlers") {
        let routing_key = envelope
            .get("routing_key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return Ok(ReplyOutcome::NoHandlers { routing_key });
    }
    let results = envelope
        .get("results")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or("reply has no handler results")?;
    // A Python service answers for every matching handler, observers included (their `None`);
    // the answer is the first entry that says something, or the first one when none does.
    let chosen = results
        .iter()
        .find(|e| entry_answers(e))
        .unwrap_or(&results[0]);
    let handler = chosen
        .get("handler")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match chosen.get("status").and_then(Value::as_str) {
        Some("success") => Ok(ReplyOutcome::Answered {
            value: chosen.get("result").cloned().unwrap_or(Value::Null),
            is_error: chosen.get("is_error").and_then(Value::as_bool),
        }),
        Some("error") => Ok(ReplyOutcome::HandlerFailed {
            handler,
            error: chosen.get("error").map(value_text).unwrap_or_default(),
        }),
        other => Err(format!("unknown handler status {other:?} in reply")),
    }
}

/// Whether a reply entry is more than an observer's `None`: a failure, a value, or an answer a
/// tchu responder marked as one.
fn entry_answers(entry: &Value) -> bool {
    match entry.get("status").and_then(Value::as_str) {
        Some("success") => {
            entry.get("is_error").is_some_and(Value::is_boolean)
                || entry.get("result").is_some_and(|r| !r.is_null())
        }
        _ => true,
    }
}

impl ReplyOutcome {
    /// Whether this reply carries an answer. An unmarked `null` does not: it is what a Python
    /// service sends when only its observers (handlers that return `None`) matched the request,
    /// so a caller keeps waiting for the responder unless `null` is a valid response for it.
    #[must_use]
    pub fn carries_answer(&self) -> bool {
        !matches!(
            self,
            Self::Answered {
                value: Value::Null,
                is_error: None
            }
        )
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether an answer from a responder that did not mark it looks like a business error: a JSON
/// object with a non-null `error_code`, the rule tchu-tchu's `TchuEvent.call` uses.
pub fn looks_like_error(value: &Value) -> bool {
    value.get("error_code").is_some_and(|c| !c.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_direct_reply_path_reads_as_the_general_one() {
        let meta = |result: Value| {
            json!({"status": "SUCCESS", "result": result, "traceback": null, "children": [],
                   "date_done": "d", "task_id": "t"})
            .to_string()
        };
        let completed = |results: Value| {
            meta(
                json!({"status": "completed", "routing_key": "rpc.x", "is_rpc": true,
                        "handlers_executed": 1, "results": results}),
            )
        };
        let answered = [
            completed(
                json!([{"handler": "h", "status": "success", "result": {"n": 1}, "is_error": false}]),
            ),
            completed(
                json!([{"handler": "h", "status": "success", "result": {"code": "x"}, "is_error": true}]),
            ),
            completed(
                json!([{"handler": "h", "status": "success", "result": null, "is_error": false}]),
            ),
            // Python: unmarked; an observer's None first, the responder's answer second.
            completed(
                json!([{"handler": "o", "status": "success", "result": null},
                             {"handler": "r", "status": "success", "result": [1, "é"]}]),
            ),
            completed(json!([{"handler": "o", "status": "success", "result": null}])),
            completed(
                json!([{"handler": "o", "status": "success", "result": 1, "is_error": "yes"}]),
            ),
            String::from_utf8(encode_reply(
                "t",
                "rpc.x",
                &[ReplyEntry::Answered {
                    handler: "h".into(),
                    value: json!({"a": [1, 2]}),
                    is_error: false,
                }],
                "d",
            ))
            .unwrap(),
        ];
        for body in &answered {
            let direct = decode_completed(body.as_bytes()).expect(body);
            assert_eq!(Ok(direct), decode_reply_general(body.as_bytes()), "{body}");
        }
        let general_only = [
            completed(json!([{"handler": "h", "status": "error", "error": "boom"}])),
            completed(json!([])),
            meta(json!({"status": "no_handlers", "routing_key": "rpc.x"})),
            meta(json!(42)),
            json!({"status": "FAILURE", "result": {"exc_type": "E", "exc_message": ["m"]}})
                .to_string(),
            json!({"status": "STARTED", "result": null}).to_string(),
            "not json".into(),
        ];
        for body in &general_only {
            assert_eq!(decode_completed(body.as_bytes()), None, "{body}");
            assert_eq!(
                decode_reply(body.as_bytes()),
                decode_reply_general(body.as_bytes())
            );
        }
    }

    /// The exact bytes, key order included: a Python caller's Celery reads them, and the
    /// encoder was rewritten for speed (maps built by moving, not with `json!`).
    #[test]
    fn reply_bytes_are_exact() {
        let entries = [
            ReplyEntry::Answered {
                handler: "h1".into(),
                value: json!({"b": 1, "a": [true, null]}),
                is_error: false,
            },
            ReplyEntry::Failed {
                handler: "h2".into(),
                error: "boom \"é\"".into(),
            },
        ];
        let body = encode_reply("t1", "rpc.x", &entries, "2026-12-03T00:00:00.000001+00:00");
        let expected = concat!(
            r#"{"status": "SUCCESS", "result": {"status": "completed", "routing_key": "rpc.x", "#,
            r#""is_rpc": true, "handlers_executed": 2, "results": [{"handler": "h1", "#,
            r#""status": "success", "result": {"b": 1, "a": [true, null]}, "is_error": false}, "#,
            r#"{"handler": "h2", "status": "error", "error": "boom \"\u00e9\""}]}, "#,
            r#""traceback": null, "children": [], "date_done": "2026-12-03T00:00:00.000001+00:00", "#,
            r#""task_id": "t1"}"#
        );
        assert_eq!(String::from_utf8(body).unwrap(), expected);
        let none = encode_reply("t2", "rpc.y", &[], "d");
        let expected = concat!(
            r#"{"status": "SUCCESS", "result": {"status": "no_handlers", "routing_key": "rpc.y"}, "#,
            r#""traceback": null, "children": [], "date_done": "d", "task_id": "t2"}"#
        );
        assert_eq!(String::from_utf8(none).unwrap(), expected);
    }

    #[test]
    fn reply_round_trips() {
        let body = encode_reply(
            "t1",
            "rpc.x",
            &[ReplyEntry::Answered {
                handler: "h".into(),
                value: json!({"ok": 1}),
                is_error: false,
            }],
            "2026-01-01T00:00:00+00:00",
        );
        assert_eq!(
            decode_reply(&body).unwrap(),
            ReplyOutcome::Answered {
                value: json!({"ok": 1}),
                is_error: Some(false)
            }
        );
        let body = encode_reply("t1", "rpc.x", &[], "d");
        assert_eq!(
            decode_reply(&body).unwrap(),
            ReplyOutcome::NoHandlers {
                routing_key: "rpc.x".into()
            }
        );
    }

    #[test]
    fn reads_the_python_shapes() {
        let ok = br#"{"status": "SUCCESS", "result": {"status": "completed", "routing_key": "rpc.tref.echo", "is_rpc": true, "handlers_executed": 1, "results": [{"handler": "rpc_echo", "status": "success", "result": {"echo": {"x": 1}}}]}, "traceback": null, "children": [], "date_done": "2026-11-28T16:03:53.042477+00:00", "task_id": "901a3276"}"#;
        assert_eq!(
            decode_reply(ok).unwrap(),
            ReplyOutcome::Answered {
                value: json!({"echo": {"x": 1}}),
                is_error: None
            }
        );
        let failure = br#"{"status": "FAILURE", "result": {"exc_type": "JSONDecodeError", "exc_message": ["Expecting value"], "exc_module": "json.decoder"}, "traceback": "..."}"#;
        assert_eq!(
            decode_reply(failure).unwrap(),
            ReplyOutcome::Failure {
                exc_type: "JSONDecodeError".into(),
                message: "Expecting value".into()
            }
        );
        assert_eq!(
            decode_reply(br#"{"status": "STARTED", "result": {"pid": 1}}"#).unwrap(),
            ReplyOutcome::Pending
        );
        assert_eq!(
            decode_reply(br#"{"status": "SUCCESS", "result": 42, "task_id": "t"}"#).unwrap(),
            ReplyOutcome::Answered {
                value: json!(42),
                is_error: None
            }
        );
        let err = br#"{"status": "SUCCESS", "result": {"status": "completed", "results": [{"handler": "h", "status": "error", "error": "boom"}]}, "task_id": "t"}"#;
        assert_eq!(
            decode_reply(err).unwrap(),
            ReplyOutcome::HandlerFailed {
                handler: "h".into(),
                error: "boom".into()
            }
        );
        assert!(decode_reply(b"nope").is_err());
    }

    fn python_reply(results: &str) -> Vec<u8> {
        format!(r#"{{"status": "SUCCESS", "result": {{"status": "completed", "is_rpc": true, "results": {results}}}, "task_id": "t"}}"#).into_bytes()
    }

    #[test]
    fn an_observers_none_is_not_an_answer() {
        // A Python service with only an observer on `rpc.#`.
        let only = decode_reply(&python_reply(
            r#"[{"handler": "audit", "status": "success", "result": null}]"#,
        ))
        .unwrap();
        assert!(!only.carries_answer(), "{only:?}");
        // The responder's answer wins whatever the order of the entries.
        for results in [
            r#"[{"handler": "audit", "status": "success", "result": null}, {"handler": "pay", "status": "success", "result": {"ok": 1}}]"#,
            r#"[{"handler": "pay", "status": "success", "result": {"ok": 1}}, {"handler": "audit", "status": "success", "result": null}]"#,
        ] {
            let got = decode_reply(&python_reply(results)).unwrap();
            assert!(got.carries_answer());
            assert_eq!(
                got,
                ReplyOutcome::Answered {
                    value: json!({"ok": 1}),
                    is_error: None
                }
            );
        }
        // A failing handler is an answer too (tchu-tchu's caller fails on it).
        let failed = decode_reply(&python_reply(
            r#"[{"handler": "audit", "status": "success", "result": null}, {"handler": "pay", "status": "error", "error": "boom"}]"#,
        ))
        .unwrap();
        assert!(
            matches!(failed, ReplyOutcome::HandlerFailed { ref handler, .. } if handler == "pay")
        );
        // A tchu responder's `null` (a unit or `None` response) is marked, so it is an answer.
        let unit = encode_reply(
            "t",
            "rpc.x",
            &[ReplyEntry::Answered {
                handler: "h".into(),
                value: Value::Null,
                is_error: false,
            }],
            "d",
        );
        assert!(decode_reply(&unit).unwrap().carries_answer());
    }
}
