//! Health probes for a service, on `TCHU_HEALTH_ADDR` (e.g. `0.0.0.0:8080`), for Kubernetes
//! and load balancers:
//! - `GET /livez`: 200 while the service runs (also while it reconnects or drains), 503 once it
//!   stopped;
//! - `GET /readyz`: 200 only while it consumes; 503 while it reconnects to the broker, drains
//!   after a shutdown signal, or stopped.
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, the request line read
//! with a bound on size and time, no dependency beyond tokio.

use super::ServiceState;
use crate::error::{Error, Result};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The environment variable naming the address of the health probes.
pub const HEALTH_ADDR_ENV: &str = "TCHU_HEALTH_ADDR";

/// Serves the probes on `TCHU_HEALTH_ADDR` when it is set, until the service's state channel
/// closes.
///
/// # Errors
/// [`Error::Health`] when the address cannot be bound.
pub(super) async fn serve_from_env(
    state: watch::Receiver<ServiceState>,
    stopping: watch::Receiver<bool>,
) -> Result<()> {
    let Ok(addr) = std::env::var(HEALTH_ADDR_ENV) else {
        return Ok(());
    };
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| Error::Health {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(%addr, "health probes: /livez, /readyz");
    tokio::spawn(accept_loop(listener, state, stopping));
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    state: watch::Receiver<ServiceState>,
    stopping: watch::Receiver<bool>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let (state, stopping) = (state.clone(), stopping.clone());
        tokio::spawn(async move {
            let (status, body) = match request_path(&mut conn).await.as_deref() {
                Some("/livez") => live(*state.borrow()),
                Some("/readyz") => ready(*state.borrow(), *stopping.borrow()),
                Some(_) => ("404 Not Found", "unknown probe: /livez or /readyz"),
                None => ("400 Bad Request", "bad request"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// The path of the request line (`GET /readyz HTTP/1.1`), read within 2 s and 1 KiB.
async fn request_path(conn: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    let read = async {
        while len < buf.len() && !buf[..len].contains(&b'\n') {
            match conn.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()?;
    let line = std::str::from_utf8(&buf[..len]).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET" | "HEAD"), Some(path)) => Some(path.split('?').next()?.to_owned()),
        _ => None,
    }
}

fn live(state: ServiceState) -> (&'static str, &'static str) {
    match state {
        ServiceState::Stopped => ("503 Service Unavailable", "stopped"),
        _ => ("200 OK", "alive"),
    }
}

fn ready(state: ServiceState, stopping: bool) -> (&'static str, &'static str) {
    match (state, stopping) {
        (_, true) => ("503 Service Unavailable", "draining"),
        (ServiceState::Consuming, false) => ("200 OK", "consuming"),
        (ServiceState::Reconnecting, false) => ("503 Service Unavailable", "reconnecting"),
        _ => ("503 Service Unavailable", "stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_consuming() {
        assert_eq!(ready(ServiceState::Consuming, false).0, "200 OK");
        assert_eq!(ready(ServiceState::Consuming, true).1, "draining");
        assert_eq!(ready(ServiceState::Reconnecting, false).1, "reconnecting");
        assert_eq!(ready(ServiceState::Stopped, false).1, "stopped");
        assert_eq!(live(ServiceState::Reconnecting).0, "200 OK");
        assert_eq!(live(ServiceState::Stopped).0, "503 Service Unavailable");
    }
}
