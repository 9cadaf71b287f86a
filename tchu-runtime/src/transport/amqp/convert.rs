//! Conversions between lapin's types and tchu-core's transport-neutral [`WireMessage`].

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
#[cfg(feature = "service")]
use serde_json::Number;
use serde_json::{Map, Value};
use std::sync::OnceLock;
#[cfg(feature = "service")]
use tchu_core::envelope::CELERY_HEADERS;
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
/// the four varying values inserted (the id twice, as `id` and `root_id`).
fn celery_table(task: &CeleryTask) -> FieldTable {
    static CONSTANT: OnceLock<FieldTable> = OnceLock::new();
    let mut table =
        (CONSTANT.get_or_init(|| map_to_table(&CeleryTask::constant_headers()))).clone();
    for (name, value) in task.varying() {
        table.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
    }
    table
}

/// Received headers: Celery's nineteen as a typed [`CeleryTask`] when they are exactly what
/// tchu-tchu's `TchuClient` and tchu write (any task id, reprs and origin), the others as
/// JSON; else every header as JSON. The typed form spares converting nineteen values per
/// delivery; [`WireMessage::all_headers`] gives back what the JSON form holds (a test holds
/// the two to each other).
#[cfg(feature = "service")]
fn received_headers(table: &FieldTable) -> (Option<CeleryTask>, Map<String, Value>) {
    match celery_task_of(table) {
        Some(task) => {
            let others = table
                .inner()
                .iter()
                .filter(|(k, _)| !CELERY_HEADERS.contains(&k.as_str()));
            let map = others
                .map(|(k, v)| (k.as_str().to_owned(), amqp_to_value(v)))
                .collect();
            (Some(task), map)
        }
        None => (None, table_to_map(table)),
    }
}

/// The Celery headers of a table as a task, when all nineteen are there, the fourteen
/// constant ones hold tchu-tchu's values, and the varying ones are text (`root_id` the id).
#[cfg(feature = "service")]
fn celery_task_of(table: &FieldTable) -> Option<CeleryTask> {
    static CONSTANT: OnceLock<Map<String, Value>> = OnceLock::new();
    let headers = table.inner();
    let constant = CONSTANT.get_or_init(CeleryTask::constant_headers);
    if !constant
        .iter()
        .all(|(name, want)| headers.get(name.as_str()).is_some_and(|v| same(v, want)))
    {
        return None;
    }
    let text = |name: &str| match headers.get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    };
    let id = text("id")?;
    (text("root_id")? == id).then_some(())?;
    Some(CeleryTask {
        id: id.to_owned(),
        argsrepr: text("argsrepr")?.to_owned(),
        kwargsrepr: text("kwargsrepr")?.to_owned(),
        origin: text("origin")?.to_owned().into(),
    })
}

/// Whether `v` converts to exactly `want` (as [`amqp_to_value`] would), for the plain values
/// of Celery's constant headers; anything else is not the same.
#[cfg(feature = "service")]
fn same(v: &AMQPValue, want: &Value) -> bool {
    let int = |v: &AMQPValue| -> Option<i128> {
        Some(match v {
            AMQPValue::ShortShortInt(i) => i128::from(*i),
            AMQPValue::ShortShortUInt(i) => i128::from(*i),
            AMQPValue::ShortInt(i) => i128::from(*i),
            AMQPValue::ShortUInt(i) => i128::from(*i),
            AMQPValue::LongInt(i) => i128::from(*i),
            AMQPValue::LongUInt(i) => i128::from(*i),
            AMQPValue::LongLongInt(i) => i128::from(*i),
            _ => return None,
        })
    };
    match (v, want) {
        (AMQPValue::Void, Value::Null) => true,
        (AMQPValue::Boolean(b), Value::Bool(w)) => b == w,
        (AMQPValue::LongString(s), Value::String(w)) => s.as_bytes() == w.as_bytes(),
        (AMQPValue::ShortString(s), Value::String(w)) => s.as_str() == w,
        (AMQPValue::FieldArray(a), Value::Array(w)) => {
            a.as_slice().len() == w.len() && a.as_slice().iter().zip(w).all(|(v, w)| same(v, w))
        }
        (AMQPValue::FieldTable(t), Value::Object(w)) => {
            t.inner().len() == w.len()
                && w.iter()
                    .all(|(k, w)| t.inner().get(k.as_str()).is_some_and(|v| same(v, w)))
        }
        (v, Value::Number(w)) => int(v).is_some_and(|i| w.as_i64().map(i128::from) == Some(i)),
        _ => false,
    }
}

/// A received message in tchu-core's transport-neutral form, Celery's headers typed when they
/// are tchu-tchu's (see [`received_headers`]).
#[cfg(feature = "service")]
pub fn from_delivery(routing_key: &str, props: &BasicProperties, body: Vec<u8>) -> WireMessage {
    let s = |o: &Option<ShortString>| o.as_ref().map(|v| v.as_str().to_owned());
    let (celery, headers) = props
        .headers()
        .as_ref()
        .map(received_headers)
        .unwrap_or_default();
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
        headers,
        celery,
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

    /// The headers of tchu-tchu 3.0.4's `TchuClient.publish` (tests/fixtures/v2_publish.json)
    /// as its AMQP library types them (`retries` a 32-bit integer), and tchu's own.
    fn received_tables() -> Vec<FieldTable> {
        let python = serde_json::json!({"lang":"py","task":"tchu_tchu.dispatch_event",
            "id":"04a1c845-5020-45d5-b503-ccfa5234a0bc","shadow":null,"eta":null,"expires":null,
            "group":null,"group_index":null,"retries":0,"timelimit":[null,null],
            "root_id":"04a1c845-5020-45d5-b503-ccfa5234a0bc","parent_id":null,
            "argsrepr":"['{\"user_id\": 1, \"_tchu_meta\": {\"is_rpc\": false}}']",
            "kwargsrepr":"{'routing_key': 'user.created'}","origin":"gen9319@vm",
            "ignore_result":null,"replaced_task_nesting":0,"stamped_headers":null,"stamps":{},
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"});
        let mut python = map_to_table(python.as_object().unwrap());
        python.insert("retries".into(), AMQPValue::LongInt(0));
        let opts = EncodeOptions {
            id: "0f6e4a4e-3c43-4d35-9a7a-2d3f4d1c9e11",
            ..Default::default()
        };
        let ours = encode_typed("a.b", &serde_json::json!({"n": 1}), &opts).unwrap();
        vec![python, to_properties(&ours).headers().clone().unwrap()]
    }

    /// What a received table becomes: its headers every way a reader can ask for them.
    fn received(table: &FieldTable) -> WireMessage {
        let props = BasicProperties::default().with_headers(table.clone());
        from_delivery("a.b", &props, b"[]".to_vec())
    }

    #[test]
    fn received_celery_headers_are_typed_and_give_back_the_same_json() {
        for table in received_tables() {
            let msg = received(&table);
            let task = msg.celery.as_ref().expect("tchu-tchu's headers are typed");
            assert_eq!(Value::from(task.id.as_str()), table_to_map(&table)["id"]);
            assert!(
                msg.headers
                    .keys()
                    .all(|k| !CELERY_HEADERS.contains(&k.as_str()))
            );
            assert_eq!(msg.all_headers(), table_to_map(&table));
        }
    }

    /// Any Celery header changed (another value, another type, missing): the typed form is
    /// declined or still gives back exactly the JSON of the table.
    #[test]
    fn received_celery_headers_that_differ_are_never_misread() {
        let variants = [
            AMQPValue::Void,
            AMQPValue::LongInt(1),
            AMQPValue::Double(0.0),
            AMQPValue::Boolean(false),
            AMQPValue::LongString("py".into()),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
            AMQPValue::ShortString("x".into()),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
            AMQPValue::FieldTable(FieldTable::default()),
        ];
        for table in received_tables() {
            for name in CELERY_HEADERS {
                let mut missing = FieldTable::default();
                for (k, v) in table.inner().iter().filter(|(k, _)| k.as_str() != name) {
                    missing.insert(k.clone(), v.clone());
                }
                let msg = received(&missing);
                assert!(msg.celery.is_none(), "{name} missing");
                assert_eq!(msg.all_headers(), table_to_map(&missing));
                for v in &variants {
                    let mut changed = table.clone();
                    changed.insert(name.into(), v.clone());
                    let msg = received(&changed);
                    assert_eq!(msg.all_headers(), table_to_map(&changed), "{name} = {v:?}");
                }
            }
        }
    }
}
