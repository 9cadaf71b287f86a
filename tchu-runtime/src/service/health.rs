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
use crate::error_chain;
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
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of file descriptors, say: accepting again at once would spin.
                tracing::warn!(error = %error_chain(&e), "health probes: accept failed; pausing");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let (state, stopping) = (state.clone(), stopping.clone());
        tokio::spawn(async move {
            let request = request_line(&mut conn).await;
            let (status, body) = match request.as_ref().map(|(_, path)| path.as_str()) {
                Some("/livez") => live(*state.borrow()),
                Some("/readyz") => ready(*state.borrow(), *stopping.borrow()),
                Some(_) => ("404 Not Found", "unknown probe: /livez or /readyz"),
                None => ("400 Bad Request", "bad request"),
            };
            // A `HEAD` response has the headers of the `GET` one, and no body.
            let head = matches!(&request, Some((Method::Head, _)));
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{}",
                body.len(),
                if head { "" } else { body }
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// How long the probes stop accepting after an accept fails.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The methods the probes answer.
enum Method {
    Get,
    Head,
}

/// The method and path of the request line (`GET /readyz HTTP/1.1`), read within 2 s and
/// 1 KiB.
async fn request_line(conn: &mut tokio::net::TcpStream) -> Option<(Method, String)> {
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
    let method = match parts.next()? {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return None,
    };
    Some((method, parts.next()?.split('?').next()?.to_owned()))
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
        (ServiceState::Replaying, false) => ("200 OK", "replaying"),
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
        assert_eq!(ready(ServiceState::Replaying, false).0, "200 OK");
        assert_eq!(ready(ServiceState::Stopped, false).1, "stopped");
        assert_eq!(live(ServiceState::Reconnecting).0, "200 OK");
        assert_eq!(live(ServiceState::Stopped).0, "503 Service Unavailable");
    }

    async fn ask(port: u16, request: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_head_request_gets_the_headers_and_no_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_state_tx, state) = watch::channel(ServiceState::Consuming);
        let (_stop_tx, stopping) = watch::channel(false);
        tokio::spawn(accept_loop(listener, state, stopping));
        let get = ask(port, "GET /readyz HTTP/1.1\r\n\r\n").await;
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.ends_with("\r\n\r\nconsuming"), "{get}");
        let head = ask(port, "HEAD /readyz HTTP/1.1\r\n\r\n").await;
        assert!(head.contains("content-length: 9\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body: {head:?}");
    }
}
