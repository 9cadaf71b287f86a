//! Helpers shared by the broker tests. They talk to the real RabbitMQ on 127.0.0.1 (or
//! `TCHU_BROKER_URL`); `.ci/run` makes sure one is running.
#![allow(dead_code)]

#[cfg(feature = "otel")]
pub mod otlp;

use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;

pub fn broker_url() -> String {
    std::env::var(tchu::BROKER_URL_ENV).unwrap_or_else(|_| tchu::DEFAULT_BROKER_URL.into())
}

/// A name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub async fn channel() -> (Connection, Channel) {
    channel_at(&broker_url()).await
}

/// A channel on the broker at `url`.
pub async fn channel_at(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running on 127.0.0.1:5672 (see README)");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes every message currently in a queue (acknowledging them).
pub async fn drain(ch: &Channel, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m);
    }
    out
}

/// A child process killed (and reaped) when dropped, so a failing assertion never leaves a
/// service running after the test.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deletes a service's queue, its dead-letter queue, its quarantine and its retry delay tiers.
///
/// The service queue goes last: deleting it cancels a running service's consumer, which then
/// declares its queues again, and a quorum queue (the quarantine) declared while its deletion
/// is still under way is refused by RabbitMQ 3.10 for as long as its old Raft server lingers.
pub async fn delete_service_queues(queue: &str) {
    let (_conn, ch) = channel().await;
    let mut names = vec![
        format!("{queue}.dlq"),
        format!("{queue}.quarantine"),
        format!("{queue}.ordered"),
        format!("{queue}.replay"),
    ];
    names.extend(
        tchu::retry::DELAY_TIERS_MS
            .iter()
            .map(|t| format!("{queue}.delay.{t}ms")),
    );
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    delete_queues(&ch, &refs).await;
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// Deletes the queues, and with a service queue its quarantine and ordered queue: every service
/// declares a quarantine, a quorum queue, and hundreds left behind make a small broker slow to
/// stop and start.
pub async fn delete_queues(ch: &Channel, queues: &[&str]) {
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
        if !q.contains('.') {
            for suffix in ["quarantine", "ordered"] {
                let q = format!("{q}.{suffix}");
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
    }
}

/// A header of a message fetched with lapin, as a string.
pub fn header(m: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    let h = m.delivery.properties.headers().as_ref()?;
    match h.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        lapin::types::AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// Drains a queue until at least `n` messages were taken or `timeout` passes.
pub async fn drain_at_least(
    ch: &Channel,
    queue: &str,
    n: usize,
    timeout: Duration,
) -> Vec<lapin::message::BasicGetMessage> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        out.extend(drain(ch, queue).await);
        if out.len() >= n || tokio::time::Instant::now() >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An example binary, built by `cargo test` next to the test binaries' `deps/` directory.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built; run through `cargo test`",
        path.display()
    );
    path
}

/// Runs `rabbitmqctl` on the machine's node and insists it succeeds.
pub fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A queue bound to `topic` that refuses what it has no room for (one message,
/// `x-overflow = reject-publish`): the broker nacks publishes to it while it is full, as it
/// does for a quorum queue without a leader during a partition. `tchu_events` must exist.
pub async fn reject_publish_queue(ch: &Channel, topic: &str) -> String {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let queue = unique("it_nack");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    let reject = LongString::from("reject-publish");
    args.insert("x-overflow".into(), AMQPValue::LongString(reject));
    ch.queue_declare(queue.as_str().into(), Default::default(), args)
        .await
        .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        "tchu_events".into(),
        topic.into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    queue
}

/// A server-named, exclusive queue consumed without acks; bound on `tchu_events` to `key` when
/// one is given. Returns its name and consumer.
pub async fn temp_queue(ch: &Channel, key: Option<&str>) -> (String, lapin::Consumer) {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    if let Some(key) = key {
        // On a fresh broker, before any service declared it.
        ch.exchange_declare(
            "tchu_events".into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            q.name().clone(),
            "tchu_events".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let consumer = ch
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    (q.name().as_str().to_owned(), consumer)
}

/// Starts the `worker` example on `queue`; its stdout lines, and `<consuming>` once its service
/// consumes, arrive on the returned channel.
pub fn spawn_worker(
    queue: &str,
    work_ms: u64,
    exit_after: Option<u32>,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(example("worker"));
    cmd.env(tchu::BROKER_URL_ENV, broker_url())
        .env("TCHU_QUEUE", queue)
        .env("TCHU_WORK_MS", work_ms.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = exit_after {
        cmd.env("TCHU_EXIT_AFTER", n.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("consuming") {
                let _ = tx2.send("<consuming>".into());
            }
        }
    });
    (child, rx)
}

/// The routing keys binding `queue` to `tchu_events`, as `rabbitmqctl` lists them.
pub fn bindings_of(queue: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_bindings",
            "source_name",
            "destination_name",
            "routing_key",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() == 3 && cols[0] == "tchu_events" && cols[1] == queue)
                .then(|| cols[2].to_owned())
        })
        .collect()
}

/// Every state a service goes through from now on, in order (its current one first).
#[cfg(feature = "service")]
pub fn record_states(
    service: &tchu::ServiceHandle,
) -> std::sync::Arc<std::sync::Mutex<Vec<tchu::ServiceState>>> {
    let states = std::sync::Arc::new(std::sync::Mutex::new(vec![service.state()]));
    let mut watch = service.watch_state();
    let out = states.clone();
    tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let s = *watch.borrow_and_update();
            out.lock().unwrap().push(s);
        }
    });
    states
}

/// `DATABASE_URL`, else the local test database.
#[cfg(feature = "postgres")]
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tchu_test".into())
}

/// A PostgreSQL schema of the caller's own: a URL whose connections use it (for child
/// processes) and a pool on it. Tables the test creates, and tchu's own, live there.
#[cfg(feature = "postgres")]
pub async fn scoped_database(prefix: &str) -> (String, tchu::sqlx::PgPool) {
    use tchu::sqlx::{self, PgPool};
    let url = database_url();
    let schema = unique(prefix);
    let admin = PgPool::connect(&url)
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432 (see README)");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-csearch_path%3D{schema}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(24)
        .connect(&scoped)
        .await
        .unwrap();
    (scoped, pool)
}

/// Starts the broker's application again when dropped, so a test that stopped it
/// (`rabbitmqctl stop_app`) leaves a broker for the next one even when an assertion fails.
pub struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

/// An error a test's handler fails with, to be retried (`retry(on(Transient))`).
#[derive(Debug)]
pub struct Transient;

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("transient trouble")
    }
}

impl std::error::Error for Transient {}

/// The `tchu` command of the `tchu-cli` package. Cargo builds another package's binary only
/// for that package's own tests, so `cargo test --workspace` (the README's command) leaves it
/// next to this test's directory; `TCHU_BIN` names another one. When it is missing (one test
/// run alone with `cargo test --test NAME`), it is built with `cargo build -p tchu-cli`.
pub fn tchu_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("TCHU_BIN") {
            return bin.into();
        }
        let exe = std::env::current_exe().expect("the test's own path");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("a target dir");
        let bin = profile_dir.join(format!("tchu{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            let mut build = std::process::Command::new(env!("CARGO"));
            build.args(["build", "-p", "tchu-cli", "--bin", "tchu", "--target-dir"]);
            build.arg(profile_dir.parent().expect("the target dir"));
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "cargo build -p tchu-cli failed");
        }
        bin
    })
}

/// Runs `tchu` to completion, off the async runtime, with the test broker's URL and no
/// `RUST_LOG`: (exit code, stdout, stderr).
pub async fn tchu_output(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(tchu_bin())
            .args(&args)
            .env(tchu::BROKER_URL_ENV, broker_url())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    })
    .await
    .unwrap()
}

/// A local address nothing listens on now.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The body of `GET /metrics` on `addr` (a service's `TCHU_METRICS_ADDR`), headers included.
#[cfg(feature = "prometheus")]
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
