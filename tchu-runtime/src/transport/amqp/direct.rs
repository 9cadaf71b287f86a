//! Direct AMQP access for operator tools, re-exported as `tchu_runtime::amqp`.

use crate::broker_url::BrokerUrl;
use crate::error::{Error, Result};
use lapin::ConnectionProperties;
use lapin::types::LongString;
use std::time::Duration;

pub use lapin;

/// How long connecting to one broker address may take in [`connect`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to the first reachable address of `urls` (comma-separated, as
/// [`BrokerUrl::parse_list`] reads them), through tchu's frame guard (frames lapin's parser
/// would refuse close the connection with a reason instead of wedging it), trusting the CA in
/// `TCHU_TLS_CA_FILE` for `amqps://` addresses. The connection is named `tchu:<name>` in the
/// management UI. Unlike a [`Client`](crate::Client)'s, it is not supervised: a lost
/// connection stays lost.
///
/// # Errors
/// [`Error::Connect`] for the last address tried when none answers within
/// [`CONNECT_TIMEOUT`]; a configuration error for an invalid URL, an unreadable CA file or an
/// `amqps://` address without the `tls` feature.
pub async fn connect(urls: &str, name: &str) -> Result<lapin::Connection> {
    let ca = crate::broker_url::ca_from_env()?;
    let mut last = Error::NoBrokerAddress;
    for url in BrokerUrl::parse_list(urls)? {
        match tokio::time::timeout(CONNECT_TIMEOUT, open(&url, name, ca.as_deref())).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e @ Error::Connect { .. })) => last = e,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let waited = format!("no answer within {CONNECT_TIMEOUT:?}");
                last = Error::Connect {
                    url: url.to_string(),
                    source: lapin::Error::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        waited,
                    ))
                    .into(),
                };
            }
        }
    }
    Err(last)
}

async fn open(url: &BrokerUrl, name: &str, ca_pem: Option<&str>) -> Result<lapin::Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("tchu:{name}")));
    super::connection::connect_with(url, props, ca_pem).await
}

/// Declares the `tchu_events` exchange exactly as tchu and tchu-tchu do (topic, durable, no
/// arguments): declaring it any other way makes the broker close the channel.
///
/// # Errors
/// [`Error::Amqp`] when the broker refuses or the channel is lost.
pub async fn declare_exchange(channel: &lapin::Channel) -> Result<()> {
    super::connection::declare_exchange(channel).await
}

/// A delivery as the message a service decodes: properties and headers (AMQP values as JSON,
/// as handlers see them, Celery's among them) and the body. Decode it with
/// `tchu::wire::decode`.
#[cfg(feature = "service")]
pub fn message_from_delivery(
    routing_key: &str,
    properties: &lapin::BasicProperties,
    body: Vec<u8>,
) -> tchu_core::envelope::WireMessage {
    super::convert::from_delivery(routing_key, properties, body).expanded()
}

/// An AMQP header table as JSON, by the mapping handlers see.
#[cfg(feature = "service")]
pub fn table_to_json(
    table: &lapin::types::FieldTable,
) -> serde_json::Map<String, serde_json::Value> {
    super::convert::table_to_map(table)
}

/// One AMQP field value as JSON, by the mapping handlers see.
#[cfg(feature = "service")]
pub fn value_to_json(value: &lapin::types::AMQPValue) -> serde_json::Value {
    super::convert::amqp_to_value(value)
}
