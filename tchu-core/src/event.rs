use serde::{Serialize, de::DeserializeOwned};

/// A typed event: a JSON object published on one concrete topic.
///
/// Implemented by `#[tchu::event(topic = "...")]`, which also derives `Serialize`, `Deserialize`
/// and `JsonSchema` and checks the topic at compile time. Implementing it by hand is possible; the
/// topic must then pass [`crate::topic::validate_topic`] or publishing fails.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tchu event",
    label = "not a tchu event",
    note = "add `#[tchu::event(topic = \"...\")]` to the definition of `{Self}`"
)]
pub trait Event:
    Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static
{
    /// The concrete topic (AMQP routing key) the event is published on.
    const TOPIC: &'static str;

    /// The JSON Schema of the event's payload (draft 2020-12, as schemars writes it).
    fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Self)).unwrap_or(serde_json::Value::Null)
    }
}
