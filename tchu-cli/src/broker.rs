//! Direct lapin access for `dlq` and `tail`: connecting, error mapping, and reading AMQP
//! messages as JSON and as tchu events.

use crate::exit::Failure;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{BasicProperties, Connection, ErrorKind};
use serde_json::{Map, Value};
use std::future::Future;
use std::time::Duration;
use tchu::wire::Decoded;

/// How long one broker operation (a get, a publish and its confirm) may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

pub use tchu::headers::{HANDLER_HEADER, ORIGINAL_KEY_HEADER};

/// Connects to the first reachable address of a comma-separated list, as tchu connects
/// (through its frame guard: `dlq` and `tail` read strangers' messages too; the CA of
/// `TCHU_TLS_CA_FILE` trusted).
///
/// # Errors
/// Exit 3 when no address answers; exit 2 for an invalid address, an `amqps://` address
/// without the `tls` feature or an unreadable CA file.
pub async fn connect(urls: &str) -> Result<Connection, Failure> {
    tchu::amqp::connect(urls, "cli")
        .await
        .map_err(|e| Failure::from_tchu(&e))
}

/// Runs one broker operation, bounded by [`OP_TIMEOUT`], mapping its error.
///
/// # Errors
/// The mapped lapin error (see [`amqp_failure`]), or a timeout failure (exit 1).
pub async fn op<T>(what: &str, fut: impl Future<Output = lapin::Result<T>>) -> Result<T, Failure> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(amqp_failure(what, &e)),
        Err(_) => Err(Failure::failed(
            "broker_timeout",
            format!("{what}: the broker did not answer within {OP_TIMEOUT:?}"),
        )),
    }
}

/// Maps a lapin error met while doing `what`: a missing queue, a refused access, a lost
/// connection (exit 3) or another broker failure (exit 1).
pub fn amqp_failure(what: &str, e: &lapin::Error) -> Failure {
    match e.kind() {
        ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => Failure::failed(
                "not_found",
                format!("{what}: not found ({})", p.get_message().as_str()),
            ),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Failure::failed(
                "access_refused",
                format!("{what}: access refused ({})", p.get_message().as_str()),
            ),
            _ => Failure::failed("broker", format!("{what}: the broker refused: {e}")),
        },
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError => {
            Failure::connect(format!("{what}: the broker connection was lost: {e}"))
        }
        _ => Failure::failed("broker", format!("{what}: {e}")),
    }
}

/// AMQP field values and tables as JSON: the runtime's own mapping, so the tool shows headers
/// exactly as handlers see them.
pub use tchu::amqp::{table_to_json as table_to_map, value_to_json as amqp_to_value};

/// The headers of a message as JSON (empty without headers).
pub fn headers(props: &BasicProperties) -> Map<String, Value> {
    props
        .headers()
        .as_ref()
        .map(table_to_map)
        .unwrap_or_default()
}

/// Every basic property that is set, except the headers, as JSON.
pub fn properties(props: &BasicProperties) -> Map<String, Value> {
    let mut m = Map::new();
    let mut s = |k: &str, v: &Option<lapin::types::ShortString>| {
        if let Some(v) = v {
            m.insert(k.into(), v.as_str().into());
        }
    };
    s("content_type", props.content_type());
    s("content_encoding", props.content_encoding());
    s("correlation_id", props.correlation_id());
    s("reply_to", props.reply_to());
    s("expiration", props.expiration());
    s("message_id", props.message_id());
    s("type", props.kind());
    s("user_id", props.user_id());
    s("app_id", props.app_id());
    s("cluster_id", props.cluster_id());
    if let Some(v) = props.delivery_mode() {
        m.insert("delivery_mode".into(), (*v).into());
    }
    if let Some(v) = props.priority() {
        m.insert("priority".into(), (*v).into());
    }
    if let Some(v) = props.timestamp() {
        m.insert("timestamp".into(), (*v).into());
    }
    m
}

/// What a message is, as far as tchu can tell.
#[derive(Debug, Clone)]
pub struct Described {
    /// The event id (Celery task id or `message_id`; else the correlation id or the `id`
    /// header); empty when the message has none.
    pub id: String,
    /// The event's topic (`kwargs.routing_key` for Celery forms), else the routing key.
    pub topic: String,
    /// `v2`, `v1` or `native` for a tchu event.
    pub format: Option<&'static str>,
    /// Whether the sender expects a reply.
    pub is_rpc: bool,
    /// The payload of a tchu event.
    pub payload: Option<Value>,
    /// The Celery task name of a task that is not tchu's dispatcher.
    pub foreign_task: Option<String>,
    /// Why the message does not decode.
    pub decode_error: Option<String>,
}

impl Described {
    /// The fields as JSON members: `id`, `topic`, `format`, `rpc`, `payload` and, when they
    /// apply, `task`, `decode_error` and `body` (the raw body as text).
    pub fn to_json(&self, body: &[u8]) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("topic".into(), self.topic.clone().into());
        m.insert(
            "format".into(),
            self.format.map_or(Value::Null, Value::from),
        );
        m.insert("rpc".into(), self.is_rpc.into());
        m.insert(
            "payload".into(),
            self.payload.clone().unwrap_or(Value::Null),
        );
        if let Some(t) = &self.foreign_task {
            m.insert("task".into(), t.clone().into());
        }
        if let Some(e) = &self.decode_error {
            m.insert("decode_error".into(), e.clone().into());
            m.insert(
                "body".into(),
                String::from_utf8_lossy(body).into_owned().into(),
            );
        }
        m
    }
}

/// Decodes a message with tchu's decoder (Celery v2, v1 and native forms). `routing_key` is the
/// key to read the topic from when the body does not carry one.
pub fn describe(routing_key: &str, props: &BasicProperties, body: &[u8]) -> Described {
    let msg = tchu::amqp::message_from_delivery(routing_key, props, body.to_vec());
    let fallback_id = msg
        .properties
        .message_id
        .clone()
        .or_else(|| msg.properties.correlation_id.clone())
        .or_else(|| {
            msg.headers
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut d = Described {
        id: fallback_id,
        topic: routing_key.to_owned(),
        format: None,
        is_rpc: false,
        payload: None,
        foreign_task: None,
        decode_error: None,
    };
    match tchu::wire::decode(&msg) {
        Ok(Decoded::Event(env)) => {
            if !env.id.is_empty() {
                d.id = env.id;
            }
            d.topic = env.topic;
            d.format = Some(format_name(env.format));
            d.is_rpc = env.is_rpc;
            d.payload = Some(env.payload);
        }
        Ok(Decoded::ForeignTask { task }) => d.foreign_task = Some(task),
        Err(e) => d.decode_error = Some(e.to_string()),
    }
    d
}

/// The command-line name of a wire format.
pub fn format_name(f: tchu::Format) -> &'static str {
    match f {
        tchu::Format::CeleryV2 => "v2",
        tchu::Format::CeleryV1 => "v1",
        tchu::Format::Native => "native",
        _ => "other",
    }
}
