//! Wire formats: what a tchu event looks like on the broker, in each form tchu speaks.
//!
//! Entry points: [`encode`] turns a payload into a [`WireMessage`]; [`decode`] turns any received
//! message into a [`Decoded`]. Decoding never panics: every malformed input is a [`DecodeError`]
//! whose text says what was expected, so the runtime can dead-letter the message with that reason.
//!
//! Formats (see `docs/wire.md`):
//! - [`Format::CeleryV2`], the default: exactly what `TchuClient.publish` sends (Celery task
//!   protocol v2, task `tchu_tchu.dispatch_event`, body `[args, kwargs, embed]` with `args[0]` a
//!   JSON string made by Python's `json.dumps`, `_tchu_meta` last).
//! - [`Format::CeleryV1`]: what tchu-tchu's `ServerlessProducer` sends (no headers, task in body).
//! - [`Format::Native`]: the payload object itself, content type `application/vnd.tchu+json`,
//!   id in `message_id`. Also how plain JSON objects from other producers (tchu 0.1.2) decode.

use crate::pyjson;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;

/// Celery task name of tchu-tchu's dispatcher; the only task tchu consumes.
pub const DISPATCH_TASK: &str = "tchu_tchu.dispatch_event";
/// Body key tchu-tchu 3.x adds to every dict payload, stripped before handlers see it.
pub const META_KEY: &str = "_tchu_meta";
/// Content type of the native format.
pub const NATIVE_CONTENT_TYPE: &str = "application/vnd.tchu+json";

/// AMQP message headers, as JSON values (converted to and from AMQP field tables by the runtime).
pub type Headers = Map<String, Value>;

/// Which wire format a message uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Format {
    /// Celery task protocol v2, as tchu-tchu's `TchuClient` sends it. The default.
    #[default]
    CeleryV2,
    /// Celery task protocol v1, as tchu-tchu's `ServerlessProducer` sends it.
    CeleryV1,
    /// The bare payload object.
    Native,
}

/// Which major version of Python tchu-tchu the Celery messages are written for: whether the
/// payload carries `_tchu_meta` (see `docs/wire.md`, "tchu-tchu 2.x and 3.x side by side").
///
/// - A 3.x consumer strips `_tchu_meta`; without it, it takes every message for a call and runs
///   its handlers inline (no handler task, so no Celery retries), answering only a `reply_to`.
/// - A 2.x consumer does not know `_tchu_meta`: its handlers receive it as a key of their data.
///
/// So a fleet whose consumers are all 3.x (or Rust) takes [`TchuTchu::V3`], the default; one
/// with any 2.x consumer takes [`TchuTchu::V2`]. tchu's own consumers read both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TchuTchu {
    /// tchu-tchu 3.x: `"_tchu_meta": {"is_rpc": ...}` last in every payload. The default.
    #[default]
    V3,
    /// tchu-tchu 2.x: the payload alone, as tchu-tchu 2.4.0 publishes it. Events carry no
    /// `reply_to` in this form: a consumer takes a message without `_tchu_meta` for a call,
    /// and would answer every event it was given a reply address for.
    V2,
}

impl TchuTchu {
    /// Reads a version as people write it: `2`, `2.x`, `2.4.0`, `v2`, `3`, `3.0.4`...: its
    /// major version decides. `None` for anything else.
    ///
    /// ```
    /// use tchu_core::TchuTchu;
    /// assert_eq!(TchuTchu::parse("2.4.0"), Some(TchuTchu::V2));
    /// assert_eq!(TchuTchu::parse("3"), Some(TchuTchu::V3));
    /// assert_eq!(TchuTchu::parse("1.0"), None);
    /// ```
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
        let major = text.split('.').next()?;
        match major {
            "2" => Some(Self::V2),
            "3" => Some(Self::V3),
            _ => None,
        }
    }

    /// The major version, as `parse` reads it back: `"2"` or `"3"`.
    pub fn major(self) -> &'static str {
        match self {
            Self::V2 => "2",
            Self::V3 => "3",
        }
    }
}

/// The AMQP basic properties tchu reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// `content_type`.
    pub content_type: Option<String>,
    /// `content_encoding`.
    pub content_encoding: Option<String>,
    /// `delivery_mode`: 2 is persistent.
    pub delivery_mode: Option<u8>,
    /// `priority`.
    pub priority: Option<u8>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `message_id`.
    pub message_id: Option<String>,
    /// `expiration`: the message's time to live in a queue, in milliseconds as text.
    pub expiration: Option<String>,
}

/// A message as a transport sends or receives it: routing key, properties, headers and body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireMessage {
    /// The AMQP routing key (the topic for events).
    pub routing_key: String,
    /// Basic properties.
    pub properties: Properties,
    /// Headers.
    pub headers: Headers,
    /// Celery's task headers, carried typed rather than in `headers` ([`encode_typed`]): the
    /// AMQP transport writes them from a table built once per process instead of converting
    /// twenty JSON values per message. A received message has them here when they are exactly
    /// what tchu-tchu writes (in `headers` otherwise); [`encode`]'s messages hold them in
    /// `headers`. [`WireMessage::expand_celery`] moves them into `headers`.
    pub celery: Option<CeleryTask>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl WireMessage {
    /// Moves the typed Celery headers, if any, into `headers`, in Celery's order and before
    /// the others (a header of the same name in `headers` wins, as it would on the wire).
    pub fn expand_celery(&mut self) {
        if let Some(task) = self.celery.take() {
            self.headers = task.headers_before(std::mem::take(&mut self.headers));
        }
    }

    /// Every header the message carries, the typed Celery ones included, as
    /// [`WireMessage::expand_celery`] would leave them.
    #[must_use]
    pub fn all_headers(&self) -> Headers {
        match &self.celery {
            None => self.headers.clone(),
            Some(task) => task.headers_before(self.headers.clone()),
        }
    }

    /// The message with the typed Celery headers moved into `headers`.
    #[must_use]
    pub fn expanded(mut self) -> Self {
        self.expand_celery();
        self
    }
}

/// The Celery task protocol v2 headers of one message, as tchu-tchu's `TchuClient` and tchu
/// write them. Four values vary (the task id, also the `root_id`, the two reprs, and the
/// sending process in `origin`); the other fourteen headers are the same for every message
/// ([`CeleryTask::constant_headers`]). tchu encodes its own messages so, and reads received
/// ones so when their Celery headers are exactly these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeleryTask {
    /// `id` and `root_id`: the task id.
    pub id: String,
    /// `argsrepr`: Python's repr of the arguments, cut at 1024 characters.
    pub argsrepr: String,
    /// `kwargsrepr`: Python's repr of the keyword arguments, cut at 1024 characters.
    pub kwargsrepr: String,
    /// `origin`: the sending process, `<name><pid>@<host>`.
    pub origin: std::borrow::Cow<'static, str>,
}

/// Celery's v2 header names, in the order `TchuClient` writes them.
pub const CELERY_HEADERS: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

impl CeleryTask {
    /// The headers that vary per message, by name.
    #[must_use]
    pub fn varying(&self) -> [(&'static str, &str); 5] {
        [
            ("id", &self.id),
            ("root_id", &self.id),
            ("argsrepr", &self.argsrepr),
            ("kwargsrepr", &self.kwargsrepr),
            ("origin", &self.origin),
        ]
    }

    /// The fourteen headers every message carries alike, whoever sends it.
    #[must_use]
    pub fn constant_headers() -> Headers {
        let mut h = Headers::with_capacity(16);
        for name in CELERY_HEADERS {
            let value = match name {
                "lang" => "py".into(),
                "task" => DISPATCH_TASK.into(),
                "retries" | "replaced_task_nesting" => 0.into(),
                "timelimit" => json!([null, null]),
                "stamps" => json!({}),
                "id" | "root_id" | "argsrepr" | "kwargsrepr" | "origin" => continue,
                _ => Value::Null,
            };
            h.insert(name.into(), value);
        }
        h
    }

    /// All nineteen headers as JSON, in Celery's order, followed by `others` (one of the same
    /// name in `others` wins, as it would on the wire).
    #[must_use]
    pub fn headers_before(&self, others: Headers) -> Headers {
        let mut all = self.headers();
        all.extend(others);
        all
    }

    /// All nineteen headers as JSON, in Celery's order.
    #[must_use]
    pub fn headers(&self) -> Headers {
        let mut constant = Self::constant_headers();
        let varying = self.varying();
        // Sized once: the 19 Celery headers, plus tchu's trace and version headers.
        let mut h = Headers::with_capacity(24);
        for name in CELERY_HEADERS {
            let value = match varying.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => Value::from(*v),
                None => constant.remove(name).unwrap_or(Value::Null),
            };
            h.insert(name.into(), value);
        }
        h
    }
}

/// A decoded tchu event, whichever format it arrived in.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Message id (Celery task id, or `message_id` for native messages); may be empty.
    pub id: String,
    /// The topic: `kwargs.routing_key` for Celery formats (as tchu-tchu's dispatcher reads it),
    /// else the AMQP routing key.
    pub topic: String,
    /// The payload, always a JSON object, without `_tchu_meta`.
    pub payload: Value,
    /// Whether the sender asked for a reply. Celery messages without `_tchu_meta` (tchu-tchu 2.x)
    /// count as RPC when they carry a `reply_to`, as tchu-tchu 3.x answers them (tchu-tchu
    /// 2.x's publisher sets one on every message; tchu's 2.x form only on calls).
    pub is_rpc: bool,
    /// The format it arrived in.
    pub format: Format,
}

impl Envelope {
    /// Deserialises the payload into a type.
    ///
    /// # Errors
    /// [`DecodeError::Shape`] when the payload does not fit `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, DecodeError> {
        T::deserialize(&self.payload).map_err(DecodeError::Shape)
    }
}

/// What [`decode`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A tchu event.
    Event(Envelope),
    /// A Celery task other than the dispatcher (tchu-tchu 3.x handler tasks and retries share the
    /// exchange and the queue-name routing key): not for tchu, acknowledged and ignored.
    ForeignTask {
        /// The Celery task name.
        task: String,
    },
}

/// Why a received message is not a usable tchu event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The message claims to be a Celery message but does not have Celery's shape.
    #[error("malformed Celery {format} message: {reason}")]
    Celery {
        /// `v1` or `v2`.
        format: &'static str,
        /// What was expected and what was found.
        reason: String,
    },
    /// The event payload is not a JSON object.
    #[error("event payload must be a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// The payload is a JSON object that does not fit the handler's event type.
    #[error("payload does not match the event type: {0}")]
    Shape(#[source] serde_json::Error),
}

/// Why a payload could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Serialisation failed.
    #[error("payload could not be serialised to JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// tchu-tchu only carries dicts: the payload must serialise to a JSON object.
    #[error("payload must serialise to a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// The payload uses the key tchu-tchu reserves for its metadata.
    #[error("payload must not contain the reserved key `_tchu_meta`")]
    ReservedKey,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How to encode one message.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodeOptions<'a> {
    /// The wire format.
    pub format: Format,
    /// The message id (a UUID string for Celery formats).
    pub id: &'a str,
    /// Whether a reply is expected (`_tchu_meta.is_rpc`).
    pub is_rpc: bool,
    /// Where replies go. tchu-tchu's publisher sets it on every v2 message, even without RPC.
    pub reply_to: Option<&'a str>,
    /// Which tchu-tchu the Celery formats are written for: with `_tchu_meta` (3.x, the
    /// default) or without (2.x). The native format has no `_tchu_meta` either way.
    pub tchu_tchu: TchuTchu,
}

/// Encodes a payload for `topic` in the chosen format.
///
/// ```
/// use tchu_core::envelope::{encode, EncodeOptions};
/// let m = encode("user.created", &serde_json::json!({"user_id": 1}),
///     &EncodeOptions { id: "6f1c…", ..Default::default() })?;
/// assert!(m.body.starts_with(br#"[["{\"user_id\": 1, \"_tchu_meta\": {\"is_rpc\": false}}"]"#));
/// # Ok::<(), tchu_core::EncodeError>(())
/// ```
///
/// # Errors
/// [`EncodeError`] when the payload does not serialise to a JSON object.
pub fn encode<T: Serialize + ?Sized>(
    topic: &str,
    payload: &T,
    opts: &EncodeOptions<'_>,
) -> Result<WireMessage, EncodeError> {
    encode_typed(topic, payload, opts).map(WireMessage::expanded)
}

/// As [`encode`], with Celery's task headers in [`WireMessage::celery`] instead of
/// `headers`: the same bytes once a transport writes them, without building their JSON.
///
/// # Errors
/// As [`encode`].
pub fn encode_typed<T: Serialize + ?Sized>(
    topic: &str,
    payload: &T,
    opts: &EncodeOptions<'_>,
) -> Result<WireMessage, EncodeError> {
    match opts.format {
        Format::Native => encode_native(topic, payload, opts),
        Format::CeleryV1 | Format::CeleryV2 => encode_celery(topic, payload, opts),
    }
}

/// `dumps_message({**payload, "_tchu_meta": {"is_rpc": ...}})`, keys in the payload's own order;
/// for tchu-tchu 2.x, `dumps_message(payload)`.
fn args0(
    payload: &(impl Serialize + ?Sized),
    is_rpc: bool,
    tchu_tchu: TchuTchu,
) -> Result<String, EncodeError> {
    let mut s = pyjson::to_string(payload, true)?;
    if !s.starts_with('{') {
        let v: Value = serde_json::from_str(&s)?;
        return Err(EncodeError::NotAnObject {
            found: json_type(&v),
        });
    }
    if s.contains("\"_tchu_meta\"") {
        let v: Value = serde_json::from_str(&s)?;
        if v.get(META_KEY).is_some() {
            return Err(EncodeError::ReservedKey);
        }
    }
    if tchu_tchu == TchuTchu::V2 {
        return Ok(s);
    }
    // Splice the meta in as the last key rather than going through a map: this keeps the
    // payload's field order, as Python's dict does, at the cost of one string edit.
    s.pop();
    if s.len() > 1 {
        s.push_str(", ");
    }
    s.push_str(if is_rpc {
        "\"_tchu_meta\": {\"is_rpc\": true}}"
    } else {
        "\"_tchu_meta\": {\"is_rpc\": false}}"
    });
    Ok(s)
}

fn encode_celery<T: Serialize + ?Sized>(
    topic: &str,
    payload: &T,
    opts: &EncodeOptions<'_>,
) -> Result<WireMessage, EncodeError> {
    let inner = args0(payload, opts.is_rpc, opts.tchu_tchu)?;
    // Without `_tchu_meta` a reply address is what makes a message a call, to tchu-tchu 3.x
    // and to tchu alike: an event in the 2.x form must not carry one.
    let reply_to = match opts.tchu_tchu {
        TchuTchu::V2 if !opts.is_rpc => None,
        _ => opts.reply_to,
    };
    let mut props = Properties {
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        delivery_mode: Some(2),
        priority: Some(0),
        ..Properties::default()
    };
    if opts.format == Format::CeleryV1 {
        // ServerlessProducer: task fields in the body, no headers, no correlation id or reply_to
        // unless a reply is wanted; outer JSON with ensure_ascii=False.
        let mut body = Map::new();
        body.insert("task".into(), DISPATCH_TASK.into());
        body.insert("id".into(), opts.id.into());
        body.insert("args".into(), json!([inner]));
        body.insert("kwargs".into(), json!({ "routing_key": topic }));
        body.insert("retries".into(), 0.into());
        body.insert("eta".into(), Value::Null);
        body.insert("expires".into(), Value::Null);
        if let Some(r) = reply_to {
            props.correlation_id = Some(opts.id.into());
            props.reply_to = Some(r.into());
        }
        return Ok(WireMessage {
            routing_key: topic.into(),
            properties: props,
            headers: Headers::new(),
            celery: None,
            body: pyjson::to_string(&body, false)?.into_bytes(),
        });
    }
    props.correlation_id = Some(opts.id.into());
    props.reply_to = reply_to.map(Into::into);
    let task = CeleryTask {
        id: opts.id.into(),
        argsrepr: truncate_repr(format!("[{}]", pyjson::repr_str(&inner))),
        kwargsrepr: truncate_repr(format!("{{'routing_key': {}}}", pyjson::repr_str(topic))),
        origin: origin().into(),
    };
    // `[[inner], {"routing_key": topic}, embed]` as kombu writes it, without a JSON tree.
    let (inner, topic_json) = (
        pyjson::to_string(&inner, true)?,
        pyjson::to_string(topic, true)?,
    );
    let mut body = String::with_capacity(inner.len() + topic_json.len() + 96);
    for part in [
        "[[",
        &inner,
        "], {\"routing_key\": ",
        &topic_json,
        "}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]",
    ] {
        body.push_str(part);
    }
    Ok(WireMessage {
        routing_key: topic.into(),
        properties: props,
        headers: Headers::new(),
        celery: Some(task),
        body: body.into_bytes(),
    })
}

fn encode_native<T: Serialize + ?Sized>(
    topic: &str,
    payload: &T,
    opts: &EncodeOptions<'_>,
) -> Result<WireMessage, EncodeError> {
    let body = serde_json::to_vec(payload)?;
    if body.first() != Some(&b'{') {
        let v: Value = serde_json::from_slice(&body)?;
        return Err(EncodeError::NotAnObject {
            found: json_type(&v),
        });
    }
    Ok(WireMessage {
        routing_key: topic.into(),
        properties: Properties {
            content_type: Some(NATIVE_CONTENT_TYPE.into()),
            content_encoding: Some("utf-8".into()),
            delivery_mode: Some(2),
            message_id: Some(opts.id.into()),
            correlation_id: opts.reply_to.map(|_| opts.id.into()),
            reply_to: opts.reply_to.map(Into::into),
            ..Properties::default()
        },
        headers: Headers::new(),
        celery: None,
        body,
    })
}

/// Celery caps `argsrepr`/`kwargsrepr` at 1024 characters (`argsrepr_maxsize`).
fn truncate_repr(mut s: String) -> String {
    const MAX: usize = 1024;
    if s.chars().count() > MAX {
        s = s.chars().take(MAX - 3).collect::<String>() + "...";
    }
    s
}

/// Celery's `origin` header: `<name><pid>@<hostname>`.
fn origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        format!("tchu{}@{}", std::process::id(), host)
    })
}

/// Decodes any message that reached a tchu queue.
///
/// # Errors
/// [`DecodeError`] when the message is not JSON, has a broken Celery shape, or carries a
/// payload that is not an object. The message is then for the dead-letter queue.
pub fn decode(msg: &WireMessage) -> Result<Decoded, DecodeError> {
    if msg.celery.is_some() {
        return decode_v2(msg).map(Decoded::Event);
    }
    if let Some(task) = msg.headers.get("task") {
        let Some(task) = task.as_str() else {
            return Err(celery("v2", "header `task` is not a string".into()));
        };
        if task != DISPATCH_TASK {
            return Ok(Decoded::ForeignTask { task: task.into() });
        }
        return decode_v2(msg).map(Decoded::Event);
    }
    let body: Value = serde_json::from_slice(&msg.body).map_err(DecodeError::NotJson)?;
    let Value::Object(mut obj) = body else {
        return Err(DecodeError::NotAnObject {
            found: json_type(&body),
        });
    };
    // A Celery v1 body has a string `task`, a string `id` and an `args` array; a native message
    // (our content type) is never one, whatever its payload's keys.
    let native = msg.properties.content_type.as_deref() == Some(NATIVE_CONTENT_TYPE);
    if !native
        && let Some(Value::String(task)) = obj.get("task")
        && obj.get("id").is_some_and(Value::is_string)
        && obj.get("args").is_some_and(Value::is_array)
    {
        if task != DISPATCH_TASK {
            return Ok(Decoded::ForeignTask { task: task.clone() });
        }
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let args = obj.remove("args").unwrap_or(Value::Null);
        let kwargs = obj.remove("kwargs").unwrap_or(Value::Null);
        return finish_celery("v1", msg, id, args, kwargs, Format::CeleryV1).map(Decoded::Event);
    }
    let id = msg
        .properties
        .message_id
        .clone()
        .or_else(|| msg.properties.correlation_id.clone());
    let is_rpc = match obj.remove(META_KEY) {
        Some(meta) => meta.get("is_rpc").and_then(Value::as_bool).unwrap_or(false),
        None => msg.properties.reply_to.is_some(),
    };
    Ok(Decoded::Event(Envelope {
        id: id.unwrap_or_default(),
        topic: msg.routing_key.clone(),
        payload: Value::Object(obj),
        is_rpc,
        format: Format::Native,
    }))
}

fn celery(format: &'static str, reason: String) -> DecodeError {
    DecodeError::Celery { format, reason }
}

/// The v2 body as tchu-tchu's publisher writes it: `args` a one-element array holding the
/// event as a JSON string, `kwargs` an object (or null) whose `routing_key` is a string.
#[derive(serde::Deserialize)]
struct PublishedV2<'a>(
    #[serde(borrow)] (std::borrow::Cow<'a, str>,),
    #[serde(borrow)] Option<PublishedKwargs<'a>>,
    serde::de::IgnoredAny,
);

#[derive(serde::Deserialize)]
struct PublishedKwargs<'a> {
    #[serde(borrow)]
    routing_key: Option<std::borrow::Cow<'a, str>>,
}

/// Decodes the common v2 body straight into its parts, with no JSON tree for the body
/// itself; `None` for any other shape, which [`decode_v2`]'s general path then judges (and
/// explains).
fn decode_v2_published(msg: &WireMessage, id: &str) -> Option<Result<Envelope, DecodeError>> {
    let PublishedV2((args0,), kwargs, _) = serde_json::from_slice(&msg.body).ok()?;
    let topic = kwargs.and_then(|k| k.routing_key);
    let payload = match serde_json::from_str(&args0) {
        Ok(Value::Object(payload)) => payload,
        Ok(other) => {
            return Some(Err(DecodeError::NotAnObject {
                found: json_type(&other),
            }));
        }
        Err(e) => return Some(Err(DecodeError::NotJson(e))),
    };
    Some(Ok(celery_event(
        id.to_owned(),
        topic.map_or_else(|| msg.routing_key.clone(), String::from),
        payload,
        (Format::CeleryV2, msg.properties.reply_to.is_some()),
    )))
}

fn decode_v2(msg: &WireMessage) -> Result<Envelope, DecodeError> {
    let id = (msg.celery.as_ref().map(|t| t.id.clone()))
        .or_else(|| {
            msg.headers
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| msg.properties.correlation_id.clone())
        .unwrap_or_default();
    match decode_v2_published(msg, &id) {
        Some(decoded) => decoded,
        None => decode_v2_general(msg, id),
    }
}

/// Any v2 body, through a JSON tree: what a Celery client other than tchu-tchu's may send,
/// and every malformed body, explained.
fn decode_v2_general(msg: &WireMessage, id: String) -> Result<Envelope, DecodeError> {
    let body: Value = serde_json::from_slice(&msg.body).map_err(DecodeError::NotJson)?;
    let Value::Array(mut parts) = body else {
        return Err(celery(
            "v2",
            format!(
                "body must be a 3-element array [args, kwargs, embed], found {}",
                json_type(&body)
            ),
        ));
    };
    if parts.len() != 3 {
        return Err(celery(
            "v2",
            format!(
                "body must be a 3-element array [args, kwargs, embed], found {} element{}",
                parts.len(),
                if parts.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    let kwargs = parts.swap_remove(1);
    let args = parts.swap_remove(0);
    finish_celery("v2", msg, id, args, kwargs, Format::CeleryV2)
}

fn finish_celery(
    fmt: &'static str,
    msg: &WireMessage,
    id: String,
    args: Value,
    kwargs: Value,
    format: Format,
) -> Result<Envelope, DecodeError> {
    let Value::Array(args) = args else {
        return Err(celery(
            fmt,
            format!("`args` must be an array, found {}", json_type(&args)),
        ));
    };
    let Some(first) = args.into_iter().next() else {
        return Err(celery(
            fmt,
            "`args` is empty; expected the event as args[0]".into(),
        ));
    };
    // tchu-tchu sends args[0] as a JSON string; its dispatcher also accepts an object there.
    let payload = match first {
        Value::String(s) => serde_json::from_str(&s).map_err(DecodeError::NotJson)?,
        other => other,
    };
    let Value::Object(payload) = payload else {
        return Err(DecodeError::NotAnObject {
            found: json_type(&payload),
        });
    };
    let topic = match &kwargs {
        Value::Object(k) => k
            .get("routing_key")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Value::Null => None,
        other => {
            return Err(celery(
                fmt,
                format!("`kwargs` must be an object, found {}", json_type(other)),
            ));
        }
    }
    .unwrap_or_else(|| msg.routing_key.clone());
    let reply_to = msg.properties.reply_to.is_some();
    Ok(celery_event(id, topic, payload, (format, reply_to)))
}

/// A Celery event's envelope, `_tchu_meta` taken out of its payload. Without it (tchu-tchu
/// 2.x) a message is a call when it names a `reply_to`, as tchu-tchu 3.x would answer it.
fn celery_event(
    id: String,
    topic: String,
    mut payload: Map<String, Value>,
    (format, reply_to): (Format, bool),
) -> Envelope {
    let is_rpc = match payload.remove(META_KEY) {
        Some(meta) => meta.get("is_rpc").and_then(Value::as_bool).unwrap_or(false),
        None => reply_to,
    };
    Envelope {
        id,
        topic,
        payload: Value::Object(payload),
        is_rpc,
        format,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(body: &str) -> WireMessage {
        WireMessage {
            routing_key: "from.the.key".into(),
            body: body.as_bytes().to_vec(),
            ..WireMessage::default()
        }
    }

    #[test]
    fn the_direct_v2_path_decodes_as_the_general_one() {
        let bodies = [
            r#"[["{\"n\": 1, \"_tchu_meta\": {\"is_rpc\": false}}"], {"routing_key": "a.b"}, {"callbacks": null}]"#,
            r#"[["{\"n\": 1}"], {"routing_key": "a.b"}, {}]"#,
            r#"[["{\"s\": \"\u00e9\\n\"}"], null, null]"#,
            r#"[["{}"], {}, 7]"#,
            r#"[["{\"n\": 1}"], {"routing_key": null, "other": [1]}, {}]"#,
            r#"[["[1, 2]"], {"routing_key": "a.b"}, {}]"#,
            r#"[["{oops"], {"routing_key": "a.b"}, {}]"#,
            r#"[["{\"n\": 1, \"n\": 2}"], {"routing_key": "a.b"}, {}]"#,
        ];
        for body in bodies {
            let msg = v2(body);
            let direct = decode_v2_published(&msg, "id-1").expect(body);
            let general = decode_v2_general(&msg, "id-1".into());
            match (direct, general) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{body}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{body}"),
                (a, b) => panic!("{body}: {a:?} against {b:?}"),
            }
        }
    }

    #[test]
    fn other_v2_shapes_take_the_general_path() {
        for body in [
            r#"[[{"n": 1}], {"routing_key": "a.b"}, {}]"#,
            r#"[["{}", 2], {}, {}]"#,
            r#"[["{}"], {"routing_key": 5}, {}]"#,
            r#"[["{}"], {"routing_key": "a", "routing_key": "b"}, {}]"#,
            r#"[["{}"], {}]"#,
            r#"{"task": "x"}"#,
        ] {
            assert!(decode_v2_published(&v2(body), "i").is_none(), "{body}");
        }
        // The general path still takes an object in args[0] and names broken shapes.
        let object = decode_v2_general(
            &v2(r#"[[{"n": 1}], {"routing_key": "a.b"}, {}]"#),
            "i".into(),
        );
        assert_eq!(object.unwrap().payload, serde_json::json!({"n": 1}));
        let two = decode_v2_general(&v2(r#"[["{}"], {}]"#), "i".into()).unwrap_err();
        assert!(two.to_string().contains("found 2 elements"), "{two}");
    }
}
