//! Which broker a URL points at. lapin does not keep the `server_properties` of the broker's
//! `connection.start`, so tchu reads them itself: the AMQP protocol header sent over a short
//! plain TCP connection is answered with `connection.start`, and the connection is then dropped
//! (the broker logs a client that closed before its handshake, nothing more).

use crate::broker_url::BrokerUrl;
use lapin::types::parsing::parse_field_table;
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a broker says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// `product`, like `RabbitMQ`.
    pub product: String,
    /// `version`, like `3.10.8` or `4.1.0`.
    pub version: String,
}

impl BrokerInfo {
    /// The major version (3, 4, ...), when the version starts with a number.
    pub fn major(&self) -> Option<u32> {
        self.version.split('.').next()?.parse().ok()
    }
}

/// The broker's product and version, read from its `connection.start`; `None` for an
/// `amqps://` address (a TLS handshake first: not worth a probe), or when it does not answer
/// within two seconds.
pub async fn broker_info(url: &BrokerUrl) -> Option<BrokerInfo> {
    if url.is_tls() {
        return None;
    }
    let authority = &url.uri().authority;
    let addr = (authority.host.clone(), authority.port);
    tokio::time::timeout(Duration::from_secs(2), async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        // A frame: type (1), channel (2), size (4), payload, frame end.
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).await.ok()?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        if head[0] != 1 || size > 64 * 1024 {
            return None;
        }
        let mut payload = vec![0u8; size];
        stream.read_exact(&mut payload).await.ok()?;
        parse_start(&payload)
    })
    .await
    .ok()
    .flatten()
}

/// Reads `connection.start` (class 10, method 10): version bytes, then the server properties.
fn parse_start(payload: &[u8]) -> Option<BrokerInfo> {
    if payload.get(..4)? != [0, 10, 0, 10] {
        return None;
    }
    let (_, props) = parse_field_table(payload.get(6..)?).ok()?;
    Some(BrokerInfo {
        product: text(&props, "product"),
        version: text(&props, "version"),
    })
}

fn text(props: &FieldTable, key: &str) -> String {
    match props.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_start_is_read() {
        // class 10, method 10, 0-9, then a table {product: "RabbitMQ", version: "4.1.0"}.
        let mut table = Vec::new();
        for (k, v) in [("product", "RabbitMQ"), ("version", "4.1.0")] {
            table.push(k.len() as u8);
            table.extend_from_slice(k.as_bytes());
            table.push(b'S');
            table.extend_from_slice(&(v.len() as u32).to_be_bytes());
            table.extend_from_slice(v.as_bytes());
        }
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
        payload.extend(table);
        let info = parse_start(&payload).unwrap();
        assert_eq!(info.version, "4.1.0");
        assert_eq!(info.major(), Some(4));
        assert_eq!(parse_start(&[0, 10, 0, 11, 0, 9]), None);
    }
}
