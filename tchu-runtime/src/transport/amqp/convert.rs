//! Conversions between lapin's types and tchu-core's transport-neutral [`WireMessage`].

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
#[cfg(feature = "service")]
use serde_json::Number;
use serde_json::{Map, Value};
use std::sync::OnceLock;
#[cfg(feature = "service")]
use tchu_core::envelope::Properties;
use tchu_core::envelope::{CeleryTask, WireMessage};

pub(crate) fn value_to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            _ => AMQPValue::LongString(LongString::from(n.to_string())),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(value_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(o) => AMQPValue::FieldTable(map_to_table(o)),
    }
}

pub(crate) fn map_to_table(m: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    insert_all(&mut t, m);
    t
}

/// Inserts JSON headers into a table, replacing entries of the same names.
fn insert_all(t: &mut FieldTable, m: &Map<String, Value>) {
    for (k, v) in m {
        // Header names over 255 bytes cannot exist in AMQP; such a key is dropped rather than
        // letting lapin's `From<&str>` panic.
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            t.insert(key, value_to_amqp(v));
        }
    }
}

/// An AMQP field value as JSON (numbers as numbers, byte strings as lossy UTF-8).
#[cfg(feature = "service")]
pub fn amqp_to_value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            Number::from_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
                .map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(text(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_value).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(t) => Value::Object(table_to_map(t)),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

/// Bytes as text, lossy; checked whole first, which is much faster than the lossy walk for
/// the valid UTF-8 nearly every header is.
#[cfg(feature = "service")]
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// An AMQP field table as a JSON object.
#[cfg(feature = "service")]
pub fn table_to_map(t: &FieldTable) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), amqp_to_value(v)))
        .collect()
}

fn short(s: &str) -> Option<ShortString> {
    ShortString::try_new(s).ok()
}

pub(crate) fn to_properties(msg: &WireMessage) -> BasicProperties {
    let p = &msg.properties;
    let mut props = BasicProperties::default();
    if let Some(v) = p.content_type.as_deref().and_then(short) {
        props = props.with_content_type(v);
    }
    if let Some(v) = p.content_encoding.as_deref().and_then(short) {
        props = props.with_content_encoding(v);
    }
    if let Some(v) = p.delivery_mode {
        props = props.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    if let Some(v) = p.correlation_id.as_deref().and_then(short) {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = p.reply_to.as_deref().and_then(short) {
        props = props.with_reply_to(v);
    }
    if let Some(v) = p.message_id.as_deref().and_then(short) {
        props = props.with_message_id(v);
    }
    if let Some(v) = p.expiration.as_deref().and_then(short) {
        props = props.with_expiration(v);
    }
    let mut table = msg.celery.as_ref().map(celery_table).unwrap_or_default();
    insert_all(&mut table, &msg.headers);
    if !table.inner().is_empty() {
        props = props.with_headers(table);
    }
    props
}

/// Celery's task headers as an AMQP table: the constant ones converted once per process,
/// the three varying values inserted.
fn celery_table(task: &CeleryTask) -> FieldTable {
    static CONSTANT: OnceLock<FieldTable> = OnceLock::new();
    let mut table =
        (CONSTANT.get_or_init(|| map_to_table(&CeleryTask::constant_headers()))).clone();
    for (name, value) in task.varying() {
        table.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
    }
    table
}

/// A received message in tchu-core's transport-neutral form.
#[cfg(feature = "service")]
pub fn from_delivery(routing_key: &str, props: &BasicProperties, body: Vec<u8>) -> WireMessage {
    let s = |o: &Option<ShortString>| o.as_ref().map(|v| v.as_str().to_owned());
    WireMessage {
        routing_key: routing_key.to_owned(),
        properties: Properties {
            content_type: s(props.content_type()),
            content_encoding: s(props.content_encoding()),
            delivery_mode: *props.delivery_mode(),
            priority: *props.priority(),
            correlation_id: s(props.correlation_id()),
            reply_to: s(props.reply_to()),
            message_id: s(props.message_id()),
            expiration: s(props.expiration()),
        },
        headers: props
            .headers()
            .as_ref()
            .map(table_to_map)
            .unwrap_or_default(),
        celery: None,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
    use tchu_core::envelope::{EncodeOptions, Format, encode, encode_typed};

    /// The content header frame lapin writes for `msg`.
    fn header_bytes(msg: &WireMessage) -> Vec<u8> {
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: msg.body.len() as u64,
            properties: to_properties(msg),
        };
        crate::transport::guard::tests::encode(&AMQPFrame::Header(1, header))
    }

    #[test]
    fn typed_celery_headers_write_the_same_bytes_as_the_json_map() {
        let opts = EncodeOptions {
            format: Format::CeleryV2,
            id: "0f6e4a4e-3c43-4d35-9a7a-2d3f4d1c9e11",
            is_rpc: true,
            reply_to: Some("amq.rabbitmq.reply-to"),
            ..Default::default()
        };
        let payload = serde_json::json!({"order_id": 7, "note": "é\n'x'"});
        let mut typed = encode_typed("order.placed", &payload, &opts).unwrap();
        let mut json = encode("order.placed", &payload, &opts).unwrap();
        assert!(typed.celery.is_some() && typed.headers.is_empty());
        assert_eq!(json.headers.len(), 19);
        // tchu's own headers beside Celery's, and one that overrides a Celery header.
        for m in [&mut typed, &mut json] {
            m.headers.insert("traceparent".into(), "00-ab-cd-01".into());
            m.headers.insert("retries".into(), 3.into());
        }
        assert_eq!(to_properties(&typed), to_properties(&json));
        assert_eq!(header_bytes(&typed), header_bytes(&json));
        assert_eq!(typed.clone().expanded(), json);
        assert_eq!(typed.all_headers(), json.headers);
    }
}
