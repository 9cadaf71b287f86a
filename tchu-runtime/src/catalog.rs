//! What a binary knows about its events: every `#[tchu::event]` type registers itself at link
//! time, so a service can export the JSON Schema of every event, response and error, and an
//! AsyncAPI 3.0 document of itself (see `app::documents`), without a list kept by hand.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

/// The schemas of one payload type, as functions so nothing is computed until asked.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFns {
    /// The type's standalone JSON Schema (draft 2020-12, definitions under `$defs`).
    pub root: fn() -> Value,
    /// The type's schema inside a document whose definitions live in `generator`.
    pub sub: fn(&mut SchemaGenerator) -> Schema,
}

impl SchemaFns {
    /// The schema functions of `T`.
    pub const fn of<T: JsonSchema>() -> Self {
        Self {
            root: root_schema::<T>,
            sub: SchemaGenerator::subschema_for::<T>,
        }
    }
}

fn root_schema<T: JsonSchema>() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    standardize(&mut schema);
    schema
}

/// Rewrites schemars' own integer formats (`uint32`, `int64`, ...), which strict validators
/// (Ajv in strict mode) refuse as unknown, into the standard `minimum` and `maximum` they
/// stand for; every other keyword is standard already. Applied to every schema tchu exports.
pub fn standardize(schema: &mut Value) {
    match schema {
        Value::Object(m) => {
            let bounds = m
                .get("format")
                .and_then(Value::as_str)
                .and_then(integer_bounds);
            if let Some((lo, hi)) = bounds {
                m.remove("format");
                let tighter = |old: Option<&Value>, new: &Value, min: bool| match old {
                    Some(o)
                        if o.as_f64()
                            .zip(new.as_f64())
                            .is_some_and(|(o, n)| if min { o >= n } else { o <= n }) =>
                    {
                        o.clone()
                    }
                    _ => new.clone(),
                };
                let lo = tighter(m.get("minimum"), &lo, true);
                let hi = tighter(m.get("maximum"), &hi, false);
                m.insert("minimum".into(), lo);
                m.insert("maximum".into(), hi);
            }
            m.values_mut().for_each(standardize);
        }
        Value::Array(items) => items.iter_mut().for_each(standardize),
        _ => {}
    }
}

/// The bounds of schemars' integer formats, exactly.
fn integer_bounds(format: &str) -> Option<(Value, Value)> {
    Some(match format {
        "uint8" => (0.into(), u8::MAX.into()),
        "uint16" => (0.into(), u16::MAX.into()),
        "uint32" => (0.into(), u32::MAX.into()),
        "uint64" | "uint" => (0.into(), u64::MAX.into()),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" | "int" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

/// An event type, as `#[tchu::event]` registers it.
#[derive(Debug)]
pub struct EventDescriptor {
    /// The type's name.
    pub name: &'static str,
    /// `module_path!()` where it is defined.
    pub module: &'static str,
    /// Its topic.
    pub topic: &'static str,
    /// Its payload's schemas.
    pub payload: SchemaFns,
    /// The response's schemas, for RPC requests.
    pub response: Option<SchemaFns>,
    /// The business error's schemas, for RPC requests.
    pub error: Option<SchemaFns>,
}

inventory::collect!(EventDescriptor);

/// Every event type linked into the binary, by topic then name.
pub fn registered_events() -> Vec<&'static EventDescriptor> {
    let mut v: Vec<_> = inventory::iter::<EventDescriptor>.into_iter().collect();
    v.sort_by_key(|e| (e.topic, e.name, e.module));
    v
}

/// The schema fingerprint of the event type registered for `topic`: 16 hex digits of FNV-1a
/// (64 bits) over its JSON Schema as generated. Computed once per binary. Two builds whose
/// event types generate the same schema share it; any change to the schema changes it.
pub fn fingerprint(topic: &str) -> Option<&'static str> {
    static PRINTS: std::sync::OnceLock<std::collections::HashMap<&'static str, String>> =
        std::sync::OnceLock::new();
    let prints = PRINTS.get_or_init(|| {
        let mut m = std::collections::HashMap::new();
        for e in registered_events() {
            m.entry(e.topic)
                .or_insert_with(|| fnv_hex(&(e.payload.root)().to_string()));
        }
        m
    });
    prints.get(topic).map(String::as_str)
}

fn fnv_hex(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// When a delivery of `topic` carries a schema fingerprint other than this binary's: (sent,
/// expected). The first sighting of each unknown fingerprint is logged, and every one counted
/// in `tchu_schema_drift_total{topic}`.
pub(crate) fn drift(
    topic: &'static str,
    headers: &serde_json::Map<String, serde_json::Value>,
) -> Option<(String, &'static str)> {
    let sent = headers.get(tchu_core::headers::SCHEMA_HEADER)?.as_str()?;
    let expected = fingerprint(topic)?;
    if sent == expected {
        return None;
    }
    static SEEN: std::sync::Mutex<Vec<(&'static str, String)>> = std::sync::Mutex::new(Vec::new());
    let sent: String = sent.chars().take(64).collect();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.len() < 1024 && !seen.iter().any(|(t, s)| *t == topic && *s == sent) {
        seen.push((topic, sent.clone()));
        tracing::warn!(help = "tchu::troubleshooting#schema-drift", topic, sent = %sent, expected, "a message of another schema version: the sender's event type differs from this service's");
    }
    drop(seen);
    metrics::counter!("tchu_schema_drift_total", "topic" => topic).increment(1);
    Some((sent, expected))
}

/// The broker an AsyncAPI document names.
#[derive(Debug, Clone)]
pub struct Server {
    /// `host:port`.
    pub host: String,
    /// `amqps`.
    pub tls: bool,
    /// The virtual host.
    pub vhost: String,
}
