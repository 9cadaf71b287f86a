//! An OTLP/HTTP collector for the tests: keeps what it is sent.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Every request body the receiver got, with its content type.
pub type Bodies = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP receiver: answers the first `refuse.len()` POSTs with those statuses
/// (each a retryable refusal), then `200 {}` to every POST, and keeps the accepted bodies.
pub async fn receiver(refuse: &'static [u16]) -> (String, Bodies) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let bodies: Bodies = Arc::default();
    let kept = bodies.clone();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (kept, refused) = (kept.clone(), refused.clone());
            tokio::spawn(async move {
                let mut conn = BufReader::new(stream);
                while let Some((content_type, body)) = read_request(&mut conn).await {
                    let n = refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let answer = match refuse.get(n) {
                        Some(status) => {
                            format!("HTTP/1.1 {status} Refused\r\ncontent-length: 0\r\n\r\n")
                        }
                        None => {
                            kept.lock().unwrap().push((content_type, body));
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_owned()
                        }
                    };
                    if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, bodies)
}

/// One HTTP/1.1 request: its content type and body.
async fn read_request(conn: &mut BufReader<tokio::net::TcpStream>) -> Option<(String, Vec<u8>)> {
    let (mut length, mut content_type) = (0, String::new());
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().ok()?,
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.ok()?;
    Some((content_type, body))
}
