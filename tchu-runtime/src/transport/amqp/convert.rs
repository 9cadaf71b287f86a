//! Conversions between lapin's types and tchu-core's transport-neutral [`WireMessage`].

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
#[cfg(feature = "service")]
use serde_json::Number;
use serde_json::{Map, Value};
#[cfg(feature = "service")]
use tchu_core::envelope::Properties;
use tchu_core::envelope::WireMessage;

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
    for (k, v) in m {
        // Header names over 255 bytes cannot exist in AMQP; such a key is dropped rather than
        // letting lapin's `From<&str>` panic.
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            t.insert(key, value_to_amqp(v));
        }
    }
    t
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
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_value).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(t) => Value::Object(table_to_map(t)),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
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
    if !msg.headers.is_empty() {
        props = props.with_headers(map_to_table(&msg.headers));
    }
    props
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
        body,
    }
}

/// The patched AMQP parser (`patches/amq-protocol-types`) reads what a stranger can put in a
/// message's headers without failing the frame (which would close the connection).
#[cfg(test)]
mod tolerant_parser {
    use lapin::types::parsing::{
        MALFORMED_MARKER, MAX_NESTING, parse_field_table, parse_short_string,
    };
    use lapin::types::{AMQPValue, FieldTable};

    /// A field table's bytes: a 4-byte length, then the entries.
    fn table(entries: &[u8]) -> Vec<u8> {
        let mut out = (entries.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(entries);
        out
    }

    fn entry(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![key.len() as u8];
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out
    }

    fn marked_keys(t: &FieldTable) -> Vec<String> {
        t.inner()
            .keys()
            .filter(|k| k.as_str().contains(MALFORMED_MARKER))
            .map(|k| k.as_str().to_owned())
            .collect()
    }

    #[test]
    fn invalid_utf8_in_a_short_string_is_marked_not_fatal() {
        let (rest, s) = parse_short_string(&[3, b'a', 0xff, b'b'][..]).unwrap();
        assert!(rest.is_empty());
        assert!(s.as_str().starts_with(MALFORMED_MARKER), "{s:?}");
        // A header key, among good ones.
        let bytes = table(&[entry(b"ok", b"t\x01"), entry(b"\xc3\x28", b"t\x01")].concat());
        let (_, t) = parse_field_table(&bytes[..]).unwrap();
        assert_eq!(t.inner().len(), 2);
        assert_eq!(marked_keys(&t).len(), 1);
    }

    #[test]
    fn deep_nesting_is_cut_at_the_limit() {
        // 5,000 nested arrays: the original parser overflowed the stack on ~2,000.
        let mut value = b"A\x00\x00\x00\x00".to_vec();
        for _ in 0..5_000 {
            let mut outer = b"A".to_vec();
            outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
            outer.extend_from_slice(&value);
            value = outer;
        }
        let bytes = table(&entry(b"deep", &value));
        let (rest, t) = parse_field_table(&bytes[..]).unwrap();
        assert!(rest.is_empty());
        let mut depth = 0;
        let mut cur = t.inner().get("deep").unwrap().clone();
        while let AMQPValue::FieldArray(a) = cur {
            depth += 1;
            cur = a.as_slice()[0].clone();
        }
        assert!(depth <= MAX_NESTING as usize + 1, "{depth}");
        match cur {
            AMQPValue::LongString(s) => {
                assert!(String::from_utf8_lossy(s.as_bytes()).contains(MALFORMED_MARKER))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_type_marks_the_rest_of_its_table() {
        let bytes = table(&[entry(b"ok", b"t\x01"), entry(b"bad", b"\x01garbage")].concat());
        let (rest, t) = parse_field_table(&bytes[..]).unwrap();
        assert!(rest.is_empty());
        assert_eq!(t.inner().get("ok"), Some(&AMQPValue::Boolean(true)));
        assert_eq!(marked_keys(&t).len(), 1, "{t:?}");
    }
}
