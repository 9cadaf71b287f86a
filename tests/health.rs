//! The health probes (`TCHU_HEALTH_ADDR`) of a `run!()` service (the `orders` example) while
//! RabbitMQ is stopped and started: `/readyz` goes 200 → 503 → 200, `/livez` stays 200, and on
//! SIGTERM the service reports `draining` before it exits. Its own test binary: it stops the
//! broker.
#![cfg(feature = "service")]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The status code and body of `GET path`, or `None` when nothing answers.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: tchu\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((code, body))
}

/// Polls `path` until it answers `code` (bounded); returns the last answer.
fn until(addr: &str, path: &str, code: u16, within: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + within;
    loop {
        let got = get(addr, path);
        if got.as_ref().is_some_and(|(c, _)| *c == code) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_and_the_drain() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let queue = common::unique("health");
    let child = Command::new(common::example("orders"))
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", &queue)
        .env("TCHU_HEALTH_ADDR", &addr)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = common::KillOnDrop(child);
    let ready = until(&addr, "/readyz", 200, Duration::from_secs(30));
    assert_eq!(ready, Some((200, "consuming".into())));
    assert_eq!(get(&addr, "/livez").map(|r| r.0), Some(200));
    assert_eq!(get(&addr, "/other").map(|r| r.0), Some(404));

    let _restart = common::StartAppOnDrop;
    common::rabbitmqctl(&["stop_app"]);
    let down = until(&addr, "/readyz", 503, Duration::from_secs(30));
    assert_eq!(down, Some((503, "reconnecting".into())));
    assert_eq!(
        get(&addr, "/livez").map(|r| r.0),
        Some(200),
        "alive while reconnecting"
    );
    common::rabbitmqctl(&["start_app"]);
    common::rabbitmqctl(&["await_startup"]);
    let back = until(&addr, "/readyz", 200, Duration::from_secs(60));
    assert_eq!(back, Some((200, "consuming".into())));

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    let mut saw = Vec::new();
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        if let Some(r) = get(&addr, "/readyz") {
            saw.push((killed.elapsed(), r));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The signal reaches the process a moment after `kill` returns: a probe answered in that
    // moment may still say ready, none after it.
    assert!(
        saw.iter()
            .all(|(at, (c, _))| *c == 503 || *at < Duration::from_millis(100)),
        "ready after SIGTERM: {saw:?}"
    );
    common::delete_service_queues(&queue).await;
}
