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
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
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
