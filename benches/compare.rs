//! tchu next to raw lapin, same machine, same run, alternating.
//!
//! Run with: `cargo bench --bench compare` (RabbitMQ on 127.0.0.1, or `TCHU_BROKER_URL`).
//! Options: `--runs N` (default 5), `--publish N` (events per publish run, default 20000),
//! `--rpc N` (sequential calls per RPC run, default 2000).
//!
//! Each scenario runs tchu and a minimal lapin program doing the same AMQP work, alternating,
//! `runs` times; the table shows medians and the tchu / lapin ratio. Nothing here asserts: the
//! figures go to BENCHMARKS.md.
#![allow(
    clippy::too_many_lines,
    reason = "the benchmark's main prints one table, row after row"
)]

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tchu::event(topic = "bench.publish.tick")]
struct Tick {
    seq: u64,
    payload: String,
}

#[tchu::payload]
struct Pong {
    seq: u64,
}

#[tchu::event(topic = "bench.rpc.ping", response = Pong)]
struct Ping {
    seq: u64,
}

mod responder {
    use super::*;
    #[tchu::subscribe]
    async fn pong(p: Ping) -> Pong {
        Pong { seq: p.seq }
    }
}

#[tchu::event(topic = "bench.e2e.one")]
struct E2eOne {
    seq: u64,
    payload: String,
}

#[tchu::event(topic = "bench.e2e.fan")]
struct E2eFan {
    seq: u64,
    payload: String,
}

#[tchu::event(topic = "bench.lat")]
struct Lat {
    sent_ns: u64,
}

#[tchu::event(topic = "bench.child.tick")]
struct ChildTick {
    seq: u64,
    payload: String,
}

/// Counters the end-to-end handlers bump, and the latencies the low-rate handler records.
#[derive(Default)]
struct Sink {
    one: std::sync::atomic::AtomicU64,
    fan_a: std::sync::atomic::AtomicU64,
    fan_b: std::sync::atomic::AtomicU64,
    lat_us: std::sync::Mutex<Vec<u64>>,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

mod e2e_a {
    use super::*;
    use std::sync::atomic::Ordering;
    #[tchu::subscribe]
    async fn one(_e: E2eOne, s: tchu::State<Sink>) {
        s.one.fetch_add(1, Ordering::Relaxed);
    }
    #[tchu::subscribe]
    async fn fan(_e: E2eFan, s: tchu::State<Sink>) {
        s.fan_a.fetch_add(1, Ordering::Relaxed);
    }
    #[tchu::subscribe]
    async fn lat(e: Lat, s: tchu::State<Sink>) {
        s.lat_us
            .lock()
            .unwrap()
            .push(now_ns().saturating_sub(e.sent_ns) / 1000);
    }
}

mod e2e_b {
    use super::*;
    use std::sync::atomic::Ordering;
    #[tchu::subscribe]
    async fn fan(_e: E2eFan, s: tchu::State<Sink>) {
        s.fan_b.fetch_add(1, Ordering::Relaxed);
    }
}

mod child {
    use super::*;
    #[tchu::subscribe]
    async fn tick(_t: ChildTick) {}
}

const RAW_RPC_QUEUE: &str = "bench_raw_rpc";
const PUBLISH_QUEUE: &str = "bench_publish_sink";
/// In-flight publishes when pipelining (both sides use the same window).
const WINDOW: usize = 256;

struct Opts {
    runs: usize,
    publish: usize,
    rpc: usize,
    e2e: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        runs: 3,
        publish: 100_000,
        rpc: 2_000,
        e2e: 50_000,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let val = args.get(i + 1).and_then(|v| v.parse().ok());
        match (args[i].as_str(), val) {
            ("--runs", Some(v)) => o.runs = v,
            ("--publish", Some(v)) => o.publish = v,
            ("--rpc", Some(v)) => o.rpc = v,
            ("--e2e", Some(v)) => o.e2e = v,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn url() -> String {
    std::env::var(tchu::BROKER_URL_ENV).unwrap_or_else(|_| tchu::DEFAULT_BROKER_URL.into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn payload() -> String {
    "x".repeat(80)
}

/// A ~100-byte body, what the tchu side's JSON weighs too.
fn raw_body(seq: u64) -> Vec<u8> {
    format!("{{\"seq\": {seq}, \"payload\": \"{}\"}}", payload()).into_bytes()
}

async fn tchu_publish(client: &tchu::Client, n: usize) -> f64 {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(WINDOW);
    for t in 0..WINDOW {
        let client = client.clone();
        set.spawn(async move {
            for i in 0..per_task {
                let seq = (t * per_task + i) as u64;
                client
                    .publish(&Tick {
                        seq,
                        payload: payload(),
                    })
                    .await
                    .expect("publish");
            }
        });
    }
    while set.join_next().await.is_some() {}
    (per_task * WINDOW) as f64 / started.elapsed().as_secs_f64()
}

/// The raw side sends the very message tchu sends (same headers and body size), encoded once
/// up front: the difference is tchu's own work, not a different wire format.
fn v2_template() -> (Vec<u8>, BasicProperties) {
    let msg = tchu::wire::encode(
        "bench.publish.tick",
        &Tick {
            seq: 0,
            payload: payload(),
        },
        &tchu::wire::EncodeOptions {
            id: "00000000-0000-4000-8000-000000000000",
            reply_to: Some("bench"),
            ..Default::default()
        },
    )
    .unwrap();
    let mut headers = FieldTable::default();
    for (k, v) in &msg.headers {
        let value = match v {
            serde_json::Value::String(s) => lapin::types::AMQPValue::LongString(s.as_str().into()),
            serde_json::Value::Number(n) => {
                lapin::types::AMQPValue::LongLongInt(n.as_i64().unwrap_or_default())
            }
            _ => lapin::types::AMQPValue::Void,
        };
        headers.insert(k.as_str().into(), value);
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_correlation_id("00000000-0000-4000-8000-000000000000".into())
        .with_reply_to("bench".into())
        .with_headers(headers);
    (msg.body, props)
}

/// Publishes the v2 template `n` times to `key`, `WINDOW` confirms in flight, every one acked.
async fn lapin_pipelined(ch: &Channel, key: &str, n: usize) {
    let (body, props) = v2_template();
    let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "tchu_events".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props.clone(),
            )
            .await
            .expect("publish");
        pending.push_back(confirm);
        if pending.len() >= WINDOW
            && let Some(c) = pending.pop_front()
        {
            assert!(matches!(c.await.expect("confirm"), Confirmation::Ack(None)));
        }
    }
    for c in pending {
        assert!(matches!(c.await.expect("confirm"), Confirmation::Ack(None)));
    }
}

async fn lapin_publish(ch: &Channel, n: usize) -> f64 {
    let started = Instant::now();
    lapin_pipelined(ch, "bench.publish.tick", n).await;
    n as f64 / started.elapsed().as_secs_f64()
}

struct RpcRun {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

async fn tchu_rpc(client: &tchu::Client, n: usize) -> RpcRun {
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for seq in 0..n as u64 {
        let t = Instant::now();
        let pong = client
            .call(&Ping { seq })
            .timeout(Duration::from_secs(10))
            .await
            .expect("call");
        assert_eq!(pong.seq, seq);
        lat.push(t.elapsed());
    }
    let total = started.elapsed();
    lat.sort();
    RpcRun {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        per_sec: n as f64 / total.as_secs_f64(),
    }
}

/// Declares `queue` with `opts` and binds it on `tchu_events` to `key`.
async fn declare_bound(ch: &Channel, queue: &str, key: &str, opts: QueueDeclareOptions) {
    ch.queue_declare(queue.into(), opts, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        queue.into(),
        "tchu_events".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// The raw side's responder: consume, answer to `reply_to` with the correlation id, ack.
async fn lapin_responder(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    declare_bound(
        &ch,
        RAW_RPC_QUEUE,
        "bench.raw.ping",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    let mut consumer = ch
        .basic_consume(
            RAW_RPC_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let reply_ch = ch.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let reply_to = d
                .properties
                .reply_to()
                .clone()
                .unwrap_or_else(|| ShortString::from(""));
            let cid = d
                .properties
                .correlation_id()
                .clone()
                .unwrap_or_else(|| ShortString::from(""));
            let _ = reply_ch
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &d.data,
                    BasicProperties::default().with_correlation_id(cid),
                )
                .await;
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });
    ch
}

/// The raw side's caller: direct reply-to, mandatory publish with a confirm, wait for the reply.
async fn lapin_rpc(conn: &Connection, n: usize) -> RpcRun {
    lapin_rpc_on(conn.create_channel().await.unwrap(), n).await
}

async fn lapin_rpc_on(ch: Channel, n: usize) -> RpcRun {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut replies = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for seq in 0..n as u64 {
        let t = Instant::now();
        let cid = format!("c{seq}");
        let confirm = ch
            .basic_publish(
                "tchu_events".into(),
                "bench.raw.ping".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &raw_body(seq),
                BasicProperties::default()
                    .with_reply_to("amq.rabbitmq.reply-to".into())
                    .with_correlation_id(cid.as_str().into()),
            )
            .await
            .unwrap();
        assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)));
        let reply = replies.next().await.unwrap().unwrap();
        assert_eq!(
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some(cid.as_str())
        );
        lat.push(t.elapsed());
    }
    let total = started.elapsed();
    let _ = ch.close(200, "done".into()).await;
    lat.sort();
    RpcRun {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        per_sec: n as f64 / total.as_secs_f64(),
    }
}

/// Publishes `n` events through tchu, `WINDOW` in flight, and waits until `done()` reaches
/// `target`; returns events per second from the first publish to the last handled one.
async fn tchu_e2e<E: tchu::Event>(
    client: &tchu::Client,
    n: usize,
    make: fn(u64) -> E,
    done: impl Fn() -> u64,
    target: u64,
) -> f64 {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(WINDOW);
    for t in 0..WINDOW {
        let client = client.clone();
        set.spawn(async move {
            for i in 0..per_task {
                let seq = (t * per_task + i) as u64;
                if (seq as usize) < n {
                    client.publish(&make(seq)).await.expect("publish");
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(300);
    while done() < target {
        assert!(
            Instant::now() < deadline,
            "end-to-end run stalled at {} of {target}",
            done()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// A raw consumer acknowledging every delivery on `queue` (bound to `key`), counting them.
async fn raw_sink(conn: &Connection, queue: &str, key: &str) -> Arc<std::sync::atomic::AtomicU64> {
    let ch = conn.create_channel().await.unwrap();
    declare_bound(
        &ch,
        queue,
        key,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await;
    ch.basic_qos(64, Default::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(Ok(d)) = consumer.next().await {
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    count
}

/// The raw side of an end-to-end run: the same pre-encoded message to `key`, `WINDOW` in flight.
async fn lapin_e2e(ch: &Channel, key: &str, n: usize, done: impl Fn() -> u64, target: u64) -> f64 {
    let started = Instant::now();
    lapin_pipelined(ch, key, n).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while done() < target {
        assert!(Instant::now() < deadline, "raw end-to-end run stalled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// 1,000 events 1 ms apart; returns (p50, p99) publish-to-handler latency in ms.
async fn tchu_latency(client: &tchu::Client, sink: &Sink) -> (f64, f64) {
    sink.lat_us.lock().unwrap().clear();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..1000 {
        tick.tick().await;
        client.publish(&Lat { sent_ns: now_ns() }).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.lat_us.lock().unwrap().len() < 1000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut v = sink.lat_us.lock().unwrap().clone();
    v.sort_unstable();
    (
        v[v.len() / 2] as f64 / 1e3,
        v[(v.len() * 99) / 100] as f64 / 1e3,
    )
}

async fn lapin_latency(conn: &Connection, ch: &Channel) -> (f64, f64) {
    let rx = conn.create_channel().await.unwrap();
    let q = rx
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
    rx.queue_bind(
        q.name().clone(),
        "tchu_events".into(),
        "bench.raw.lat".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = rx
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(1000)));
    let l = lat.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let sent = v["sent_ns"].as_u64().unwrap_or_default();
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            let mut g = l.lock().unwrap();
            g.push(now_ns().saturating_sub(sent) / 1000);
            if g.len() >= 1000 {
                return;
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..1000 {
        tick.tick().await;
        let body = format!("{{\"sent_ns\": {}}}", now_ns());
        ch.basic_publish(
            "tchu_events".into(),
            "bench.raw.lat".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
    let mut v = lat.lock().unwrap().clone();
    v.sort_unstable();
    (
        v[v.len() / 2] as f64 / 1e3,
        v[(v.len() * 99) / 100] as f64 / 1e3,
    )
}

/// 64 callers in parallel, `per` calls each; calls per second.
async fn tchu_rpc_concurrent(client: &tchu::Client, per: usize) -> f64 {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let client = client.clone();
        set.spawn(async move {
            for seq in 0..per as u64 {
                client
                    .call(&Ping { seq })
                    .timeout(Duration::from_secs(30))
                    .await
                    .expect("call");
            }
        });
    }
    while set.join_next().await.is_some() {}
    (64 * per) as f64 / started.elapsed().as_secs_f64()
}

/// The raw equivalent: 64 callers, each on its own channel with its own direct reply-to consumer.
async fn lapin_rpc_concurrent(conn: &Connection, per: usize) -> f64 {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let ch = conn.create_channel().await.unwrap();
        set.spawn(async move {
            let _ = lapin_rpc_on(ch, per).await;
        });
    }
    while set.join_next().await.is_some() {}
    (64 * per) as f64 / started.elapsed().as_secs_f64()
}

/// `--child tchu|lapin`: a minimal service process, for memory and start-up time.
async fn child(kind: &str) {
    let url = url();
    if kind == "tchu" {
        let client = tchu::Client::connect(&url).await.unwrap();
        let _svc = tchu::Service::new("bench_child_tchu")
            .handlers_in(concat!(module_path!(), "::child"))
            .prefetch(64)
            .start(&client)
            .await
            .unwrap();
        println!("READY");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    } else {
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let _count = raw_sink(&conn, "bench_child_lapin", "bench.child.raw").await;
        println!("READY");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Producer cold start: connect, publish one confirmed event, close. Median ms of `n` rounds.
async fn producer_cold_start(n: usize) -> (f64, f64) {
    let url = url();
    let (mut t, mut l) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let start = Instant::now();
        let p = tchu::Producer::connect(&url).await.unwrap();
        p.publish(&E2eOne {
            seq: 0,
            payload: payload(),
        })
        .await
        .unwrap();
        p.close().await;
        t.push(start.elapsed().as_secs_f64() * 1e3);

        let (body, props) = v2_template();
        let start = Instant::now();
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let c = ch
            .basic_publish(
                "tchu_events".into(),
                "bench.raw.one".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(c, Confirmation::Ack(None)));
        let _ = conn.close(200, "done".into()).await;
        l.push(start.elapsed().as_secs_f64() * 1e3);
    }
    (median(t), median(l))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Spawns a child, returns (ms from spawn to consuming, idle RSS MiB, RSS MiB under 20,000 events).
async fn measure_child(kind: &str, load: impl std::future::Future<Output = ()>) -> (f64, f64, f64) {
    use std::io::BufRead;
    let started = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child", kind])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(child.id());
    let pid = child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let p = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            p.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    load.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sampler.abort();
    let _ = child.kill();
    let _ = child.wait();
    (
        ready_ms,
        idle as f64 / 1024.0,
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
    )
}

fn row(name: &str, unit: &str, tchu: f64, lapin: f64) {
    println!(
        "| {name} | {tchu:.1} {unit} | {lapin:.1} {unit} | {:.2} |",
        tchu / lapin
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(args.get(i + 1).map_or("tchu", String::as_str)).await;
    }
    let o = opts();
    let url = url();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running");
    let setup = conn.create_channel().await.unwrap();
    setup
        .queue_declare(
            PUBLISH_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    setup
        .queue_bind(
            PUBLISH_QUEUE.into(),
            "tchu_events".into(),
            "bench.publish.tick".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let pub_ch = conn.create_channel().await.unwrap();
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    let client = tchu::Client::connect(&url).await.unwrap();
    let service = tchu::Service::new("bench_tchu_rpc")
        .handlers_in(concat!(module_path!(), "::responder"))
        .prefetch(64)
        .start(&client)
        .await
        .unwrap();
    let _raw_responder = lapin_responder(&conn).await;

    // Warm-up: connections, channels, reply consumers.
    let _ = tchu_rpc(&client, 50).await;
    let _ = lapin_rpc(&conn, 50).await;

    let (mut tp, mut lp) = (vec![], vec![]);
    let (mut t50, mut t99, mut tps, mut l50, mut l99, mut lps) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut n50 = vec![];
    let mut c50 = vec![];
    // The same client sending tchu's native format: no Celery headers, the body alone.
    let native = client.with_format(tchu::Format::Native);
    for run in 0..o.runs {
        eprintln!("run {}/{}", run + 1, o.runs);
        tp.push(tchu_publish(&client, o.publish).await);
        lp.push(lapin_publish(&pub_ch, o.publish).await);
        setup
            .queue_purge(PUBLISH_QUEUE.into(), QueuePurgeOptions::default())
            .await
            .unwrap();
        let t = tchu_rpc(&client, o.rpc).await;
        let n = tchu_rpc(&native, o.rpc).await;
        n50.push(n.p50.as_secs_f64() * 1e3);
        // Diagnostic: tchu's caller against the raw responder (whose echo is not a Celery
        // result, so each call ends in a decode error: only its timing matters here).
        let mut lat = Vec::with_capacity(o.rpc);
        for _ in 0..o.rpc {
            let t = Instant::now();
            let _ = client
                .call_raw(
                    "bench.raw.ping",
                    &serde_json::json!({"seq": 1}),
                    Duration::from_secs(10),
                )
                .await;
            lat.push(t.elapsed());
        }
        lat.sort();
        c50.push(percentile(&lat, 0.5).as_secs_f64() * 1e3);
        let l = lapin_rpc(&conn, o.rpc).await;
        t50.push(t.p50.as_secs_f64() * 1e3);
        t99.push(t.p99.as_secs_f64() * 1e3);
        tps.push(t.per_sec);
        l50.push(l.p50.as_secs_f64() * 1e3);
        l99.push(l.p99.as_secs_f64() * 1e3);
        lps.push(l.per_sec);
    }

    println!(
        "\nmedians of {} runs; publish: {} persistent ~100-byte events (Celery v2 headers on both sides), confirms, {} in flight; RPC: {} sequential calls\n",
        o.runs, o.publish, WINDOW, o.rpc
    );
    println!("| scenario | tchu | raw lapin | tchu / lapin |");
    println!("|---|---|---|---|");
    row("publish throughput", "msg/s", median(tp), median(lp));
    println!(
        "| RPC round trip p50 | {:.3} ms | {:.3} ms | {:.2} |",
        median(t50.clone()),
        median(l50.clone()),
        median(t50) / median(l50.clone())
    );
    println!(
        "| RPC round trip p99 | {:.3} ms | {:.3} ms | {:.2} |",
        median(t99.clone()),
        median(l99.clone()),
        median(t99) / median(l99)
    );
    row("RPC sequential", "calls/s", median(tps), median(lps));
    println!(
        "| RPC p50, tchu caller with the raw responder | {:.3} ms | {:.3} ms | {:.2} |",
        median(c50.clone()),
        median(l50.clone()),
        median(c50) / median(l50.clone())
    );
    println!(
        "| RPC p50, native format (no Celery headers) | {:.3} ms | {:.3} ms | {:.2} |",
        median(n50.clone()),
        median(l50.clone()),
        median(n50) / median(l50)
    );

    // End to end, fan-out, low-rate latency, concurrent RPC, memory and start-up.
    let sink = Arc::new(Sink::default());
    let svc_a = tchu::Service::new("bench_e2e_a")
        .handlers_in(concat!(module_path!(), "::e2e_a"))
        .with_state_arc(sink.clone())
        .prefetch(64)
        .start(&client)
        .await
        .unwrap();
    let svc_b = tchu::Service::new("bench_e2e_b")
        .handlers_in(concat!(module_path!(), "::e2e_b"))
        .with_state_arc(sink.clone())
        .prefetch(64)
        .start(&client)
        .await
        .unwrap();
    let raw_one = raw_sink(&conn, "bench_raw_one", "bench.raw.one").await;
    let raw_fan_a = raw_sink(&conn, "bench_raw_fan_a", "bench.raw.fan").await;
    let raw_fan_b = raw_sink(&conn, "bench_raw_fan_b", "bench.raw.fan").await;
    let ld = std::sync::atomic::Ordering::Relaxed;
    let (mut e1t, mut e1l, mut e2t, mut e2l) = (vec![], vec![], vec![], vec![]);
    let (mut lt50, mut lt99, mut ll50, mut ll99) = (vec![], vec![], vec![], vec![]);
    let (mut ct, mut cl) = (vec![], vec![]);
    let n = o.e2e;
    for run in 0..o.runs {
        eprintln!("end-to-end run {}/{}", run + 1, o.runs);
        let base = sink.one.load(ld);
        e1t.push(
            tchu_e2e(
                &client,
                n,
                |seq| E2eOne {
                    seq,
                    payload: payload(),
                },
                || sink.one.load(ld),
                base + n as u64,
            )
            .await,
        );
        let base = raw_one.load(ld);
        e1l.push(
            lapin_e2e(
                &pub_ch,
                "bench.raw.one",
                n,
                || raw_one.load(ld),
                base + n as u64,
            )
            .await,
        );
        let (ba, bb) = (sink.fan_a.load(ld), sink.fan_b.load(ld));
        e2t.push(
            tchu_e2e(
                &client,
                n,
                |seq| E2eFan {
                    seq,
                    payload: payload(),
                },
                || sink.fan_a.load(ld).min(sink.fan_b.load(ld) + ba - bb),
                ba + n as u64,
            )
            .await,
        );
        let (ra, rb) = (raw_fan_a.load(ld), raw_fan_b.load(ld));
        e2l.push(
            lapin_e2e(
                &pub_ch,
                "bench.raw.fan",
                n,
                || raw_fan_a.load(ld).min(raw_fan_b.load(ld) + ra - rb),
                ra + n as u64,
            )
            .await,
        );
        let (a, b) = tchu_latency(&client, &sink).await;
        lt50.push(a);
        lt99.push(b);
        let (a, b) = lapin_latency(&conn, &pub_ch).await;
        ll50.push(a);
        ll99.push(b);
        ct.push(tchu_rpc_concurrent(&client, 50).await);
        cl.push(lapin_rpc_concurrent(&conn, 50).await);
    }
    let child_load = |key: &'static str| {
        let client = client.clone();
        async move {
            let raw = key == "bench.child.raw";
            for seq in 0..20_000u64 {
                if raw {
                    let _ = client
                        .publish_raw(key, &serde_json::json!({"seq": seq, "payload": payload()}))
                        .await;
                } else {
                    let _ = client
                        .publish(&ChildTick {
                            seq,
                            payload: payload(),
                        })
                        .await;
                }
            }
        }
    };
    let (p_tchu, p_lapin) = producer_cold_start(20).await;
    let (t_ready, t_idle, t_load) = measure_child("tchu", child_load("bench.child.tick")).await;
    let (l_ready, l_idle, l_load) = measure_child("lapin", child_load("bench.child.raw")).await;

    println!(
        "\nmedians of {} runs; end to end: {n} events, 256 in flight, handler + ack; latency: 1,000 events 1 ms apart; concurrent RPC: 64 callers × 50 calls\n",
        o.runs
    );
    println!("| scenario | tchu | raw lapin | tchu / lapin |");
    println!("|---|---|---|---|");
    row(
        "end-to-end throughput, one service",
        "events/s",
        median(e1t),
        median(e1l),
    );
    row(
        "end-to-end throughput, two services (fan-out)",
        "events/s",
        median(e2t),
        median(e2l),
    );
    println!(
        "| latency publish → handler p50 | {:.3} ms | {:.3} ms | {:+.3} ms |",
        median(lt50.clone()),
        median(ll50.clone()),
        median(lt50) - median(ll50)
    );
    println!(
        "| latency publish → handler p99 | {:.3} ms | {:.3} ms | {:+.3} ms |",
        median(lt99.clone()),
        median(ll99.clone()),
        median(lt99) - median(ll99)
    );
    row(
        "RPC, 64 concurrent callers",
        "calls/s",
        median(ct),
        median(cl),
    );
    println!(
        "| producer cold start (connect, publish, confirm, close) | {p_tchu:.2} ms | {p_lapin:.2} ms | {:.2} |",
        p_tchu / p_lapin
    );
    println!(
        "| start to consuming | {t_ready:.0} ms | {l_ready:.0} ms | {:.2} |",
        t_ready / l_ready
    );
    println!(
        "| resident memory, idle | {t_idle:.1} MiB | {l_idle:.1} MiB | {:.2} |",
        t_idle / l_idle
    );
    println!(
        "| resident memory, 20,000 events | {t_load:.1} MiB | {l_load:.1} MiB | {:.2} |",
        t_load / l_load
    );
    svc_a.shutdown().await.unwrap();
    svc_b.shutdown().await.unwrap();
    for q in [
        "bench_e2e_a",
        "bench_e2e_a.dlq",
        "bench_e2e_b",
        "bench_e2e_b.dlq",
        "bench_raw_one",
        "bench_raw_fan_a",
        "bench_raw_fan_b",
        "bench_child_tchu",
        "bench_child_tchu.dlq",
        "bench_child_lapin",
    ] {
        let _ = setup
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
    service.shutdown().await.unwrap();
    client.close().await;
    for q in [PUBLISH_QUEUE, "bench_tchu_rpc", "bench_tchu_rpc.dlq"] {
        let _ = setup
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bench done".into()).await;
}
