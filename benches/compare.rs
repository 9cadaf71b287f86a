//! tchu next to raw lapin, same machine, same run, alternating.
//!
//! Run with: `cargo bench --bench compare` (RabbitMQ on 127.0.0.1, or `TCHU_BROKER_URL`).
//! Options: `--runs N` (default 3), `--publish N` (events per publish run, default 100000),
//! `--rpc N` (sequential calls per RPC run, default 2000), `--e2e N` (events per end-to-end run,
//! default 50000), `--replay N` (events in the log replayed, default 50000), `--only LIST`
//! (comma-separated sections: `publish`, `rpc`, `e2e`, `latency`, `concurrent`, `startup`,
//! `replay`, `user`; default all).
//!
//! Each scenario runs tchu and a minimal lapin program doing the same AMQP work, alternating,
//! `runs` times; the table shows medians and the tchu / lapin ratio. Next to the timings, the
//! process's CPU time per message or call (user + system, from `/proc/self/stat`): both sides
//! run in this one process, one after the other, so each side's CPU time is its own work, and
//! it moves far less with the machine's drift than a rate does. Nothing here asserts: the
//! figures go to BENCHMARKS.md.
#![allow(
    clippy::too_many_lines,
    reason = "the benchmark's main prints one table, row after row"
)]

mod support;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{cpu_seconds, median, url};

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

/// Sent in `Format::Native` (the body alone), against plain JSON from raw lapin.
#[tchu::event(topic = "bench.e2e.native")]
struct E2eNative {
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
    native: std::sync::atomic::AtomicU64,
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
    async fn native(_e: E2eNative, s: tchu::State<Sink>) {
        s.native.fetch_add(1, Ordering::Relaxed);
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

#[path = "compare/replay.rs"]
mod replay;
#[path = "compare/user.rs"]
mod user;

const RAW_RPC_QUEUE: &str = "bench_raw_rpc";
const PUBLISH_QUEUE: &str = "bench_publish_sink";
/// In-flight publishes when pipelining (both sides use the same window).
const WINDOW: usize = 256;

struct Opts {
    runs: usize,
    publish: usize,
    rpc: usize,
    e2e: usize,
    replay: usize,
    /// The sections to run; empty: all.
    only: Vec<String>,
}

impl Opts {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn opts() -> Opts {
    let mut o = Opts {
        runs: 3,
        publish: 100_000,
        rpc: 2_000,
        e2e: 50_000,
        replay: 50_000,
        only: Vec::new(),
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        if args[i] == "--only"
            && let Some(list) = args.get(i + 1)
        {
            o.only = list.split(',').map(str::to_owned).collect();
            i += 2;
            continue;
        }
        let val = args.get(i + 1).and_then(|v| v.parse().ok());
        match (args[i].as_str(), val) {
            ("--runs", Some(v)) => o.runs = v,
            ("--publish", Some(v)) => o.publish = v,
            ("--rpc", Some(v)) => o.rpc = v,
            ("--e2e", Some(v)) => o.e2e = v,
            ("--replay", Some(v)) => o.replay = v,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `work`, returning its result and the process CPU microseconds per unit of `units`.
async fn with_cpu<T>(units: usize, work: impl std::future::Future<Output = T>) -> (T, f64) {
    let before = cpu_seconds();
    let out = work.await;
    (out, (cpu_seconds() - before) * 1e6 / units as f64)
}

/// Waits for `fut`, or panics naming `what`: a raw side waiting on a broker that never answers
/// must end the bench, not hang it.
async fn bounded<T>(what: &str, secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {secs} s"))
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

/// Plain JSON, the least a raw program sends: the body alone, persistent, no headers.
fn plain_json() -> (Vec<u8>, BasicProperties) {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    (raw_body(0), props)
}

/// Publishes `message` `n` times to `key`, `WINDOW` confirms in flight, every one acked.
async fn lapin_pipelined(ch: &Channel, key: &str, n: usize, message: &(Vec<u8>, BasicProperties)) {
    let (body, props) = message;
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
                body,
                props.clone(),
            )
            .await
            .expect("publish");
        pending.push_back(confirm);
        if pending.len() >= WINDOW
            && let Some(c) = pending.pop_front()
        {
            let c = bounded("raw publisher confirm", 60, c).await;
            assert!(matches!(c.expect("confirm"), Confirmation::Ack(None)));
        }
    }
    for c in pending {
        let c = bounded("raw publisher confirm", 60, c).await;
        assert!(matches!(c.expect("confirm"), Confirmation::Ack(None)));
    }
}

/// `Client::publish_all`: the events built up front, one call, `PUBLISH_WINDOW` confirms in
/// flight (what a batch job or an importer does).
async fn tchu_publish_all(client: &tchu::Client, n: usize) -> f64 {
    let ticks: Vec<Tick> = (0..n as u64)
        .map(|seq| Tick {
            seq,
            payload: payload(),
        })
        .collect();
    let started = Instant::now();
    let results = bounded("publish_all", 120, client.publish_all(&ticks)).await;
    assert!(results.iter().all(Result::is_ok), "every event confirmed");
    n as f64 / started.elapsed().as_secs_f64()
}

/// Raw lapin at its best: `n` publishes of `message` to `key`, half a window of them handed to
/// lapin at once (each queues its frames when first polled, so they go out in a few writes),
/// `WINDOW` confirms in flight, every one acked.
async fn lapin_batched(ch: &Channel, key: &str, n: usize, message: &(Vec<u8>, BasicProperties)) {
    let (body, props) = message;
    let chunk = WINDOW / 2;
    let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
    let mut left = n;
    while left > 0 {
        let take = left.min(chunk);
        left -= take;
        let mut sending: Vec<_> = (0..take)
            .map(|_| {
                Box::pin(ch.basic_publish(
                    "tchu_events".into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    props.clone(),
                ))
            })
            .collect();
        let mut sent = Vec::with_capacity(take);
        // Polled in order the first time: the frames are queued in order.
        std::future::poll_fn(|cx| {
            let mut i = 0;
            while i < sending.len() {
                match sending[i].as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => {
                        drop(sending.remove(i));
                        sent.push(r.expect("publish"));
                    }
                    std::task::Poll::Pending => i += 1,
                }
            }
            if sending.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        pending.extend(sent);
        while pending.len() > WINDOW - chunk {
            let c = bounded("raw confirm", 60, pending.pop_front().expect("one")).await;
            assert!(matches!(c.expect("confirm"), Confirmation::Ack(None)));
        }
    }
    for c in pending {
        let c = bounded("raw confirm", 60, c).await;
        assert!(matches!(c.expect("confirm"), Confirmation::Ack(None)));
    }
}

async fn lapin_publish(ch: &Channel, n: usize) -> f64 {
    let started = Instant::now();
    lapin_pipelined(ch, "bench.publish.tick", n, &v2_template()).await;
    n as f64 / started.elapsed().as_secs_f64()
}

struct RpcRun {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

impl RpcRun {
    /// From the latencies of sequential calls.
    fn of(mut lat: Vec<Duration>) -> Self {
        let total: Duration = lat.iter().sum();
        lat.sort();
        Self {
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
            per_sec: lat.len() as f64 / total.as_secs_f64(),
        }
    }
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

/// How the raw caller sends its requests.
#[derive(Clone, Copy, PartialEq)]
enum RawCaller {
    /// As tchu does: mandatory, and the confirm awaited before the reply.
    Confirmed,
    /// The least a round trip needs: no confirm, not mandatory (a request no queue takes is
    /// lost silently and the caller waits for its deadline).
    Bare,
    /// Confirmed, sending the very request tchu sends (Celery v2 headers and body).
    CeleryBytes,
}

/// tchu's Celery v2 request for `Ping`, as raw headers and body.
fn v2_request() -> (Vec<u8>, FieldTable) {
    let msg = tchu::wire::encode(
        "bench.raw.ping",
        &Ping { seq: 1 },
        &tchu::wire::EncodeOptions {
            id: "00000000-0000-4000-8000-000000000000",
            is_rpc: true,
            reply_to: Some("amq.rabbitmq.reply-to"),
            ..Default::default()
        },
    )
    .unwrap();
    let (_, props) = v2_template();
    let mut headers = props.headers().clone().unwrap_or_default();
    for (k, v) in &msg.headers {
        if let serde_json::Value::String(s) = v {
            headers.insert(
                k.as_str().into(),
                lapin::types::AMQPValue::LongString(s.as_str().into()),
            );
        }
    }
    (msg.body, headers)
}

/// The raw side's caller: direct reply-to, a transient request, wait for the reply.
struct RawRpc {
    ch: Channel,
    replies: lapin::Consumer,
    how: RawCaller,
    celery: Option<(Vec<u8>, FieldTable)>,
}

impl RawRpc {
    async fn open(conn: &Connection, how: RawCaller) -> Self {
        let ch = conn.create_channel().await.unwrap();
        if how != RawCaller::Bare {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
        }
        let replies = ch
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
        let celery = (how == RawCaller::CeleryBytes).then(v2_request);
        Self {
            ch,
            replies,
            how,
            celery,
        }
    }

    fn properties(&self, cid: &str) -> BasicProperties {
        match &self.celery {
            Some((_, headers)) => BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_delivery_mode(1)
                .with_priority(0)
                .with_headers(headers.clone()),
            None => BasicProperties::default(),
        }
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_correlation_id(cid.into())
    }

    /// One round trip.
    async fn call(&mut self, seq: u64) {
        let cid = format!("c{seq}");
        let confirmed = self.how != RawCaller::Bare;
        let body = self
            .celery
            .as_ref()
            .map_or_else(|| raw_body(seq), |(b, _)| b.clone());
        let confirm = self
            .ch
            .basic_publish(
                "tchu_events".into(),
                "bench.raw.ping".into(),
                BasicPublishOptions {
                    mandatory: confirmed,
                    ..Default::default()
                },
                &body,
                self.properties(&cid),
            )
            .await
            .unwrap();
        if confirmed {
            let confirm = bounded("raw request confirm", 10, confirm).await;
            assert!(matches!(confirm.unwrap(), Confirmation::Ack(None)));
        }
        let reply = bounded("raw RPC reply", 10, self.replies.next())
            .await
            .unwrap()
            .unwrap();
        let got = reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned());
        assert_eq!(got.as_deref(), Some(cid.as_str()));
    }

    async fn close(self) {
        let _ = self.ch.close(200, "done".into()).await;
    }
}

/// `n` sequential raw calls on a caller of their own.
async fn lapin_rpc(conn: &Connection, n: usize, how: RawCaller) -> RpcRun {
    let mut caller = RawRpc::open(conn, how).await;
    let run = raw_calls(&mut caller, n).await;
    caller.close().await;
    run
}

/// `n` sequential calls on `caller`.
async fn raw_calls(caller: &mut RawRpc, n: usize) -> RpcRun {
    let mut lat = Vec::with_capacity(n);
    for seq in 0..n as u64 {
        let t = Instant::now();
        caller.call(seq).await;
        lat.push(t.elapsed());
    }
    RpcRun::of(lat)
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

/// The raw side of an end-to-end run: one pre-encoded message to `key`, `WINDOW` in flight,
/// writes batched.
async fn lapin_e2e(
    ch: &Channel,
    (key, message): (&str, &(Vec<u8>, BasicProperties)),
    n: usize,
    done: impl Fn() -> u64,
    target: u64,
) -> f64 {
    let started = Instant::now();
    // The raw program at its best: its writes batched (an outside harness's raw side is).
    lapin_batched(ch, key, n, message).await;
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
        let mut caller = RawRpc::open(conn, RawCaller::Confirmed).await;
        set.spawn(async move {
            for seq in 0..per as u64 {
                caller.call(seq).await;
            }
            caller.close().await;
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

/// One row of a table: a rate or a time for each side, and their ratio.
fn row(name: &str, unit: &str, tchu: f64, lapin: f64) {
    println!(
        "| {name} | {tchu:.1} {unit} | {lapin:.1} {unit} | {:.2} |",
        tchu / lapin
    );
}

/// A row of milliseconds (three decimals), and their ratio.
fn row_ms(name: &str, tchu: f64, lapin: f64) {
    println!(
        "| {name} | {tchu:.3} ms | {lapin:.3} ms | {:.2} |",
        tchu / lapin
    );
}

/// A row of CPU microseconds per unit.
fn row_cpu(name: &str, tchu: f64, lapin: f64) {
    println!(
        "| {name} | {tchu:.1} µs | {lapin:.1} µs | {:.2} |",
        tchu / lapin
    );
}

fn table_head() {
    println!("| scenario | tchu | raw lapin | tchu / lapin |");
    println!("|---|---|---|---|");
}

/// Medians of one scenario's runs, per side.
#[derive(Default)]
struct Pair {
    tchu: Vec<f64>,
    raw: Vec<f64>,
}

impl Pair {
    fn push(&mut self, tchu: f64, raw: f64) {
        self.tchu.push(tchu);
        self.raw.push(raw);
    }
    fn medians(&self) -> (f64, f64) {
        (median(self.tchu.clone()), median(self.raw.clone()))
    }
    /// Prints the medians as a row of rates or sizes in `unit`.
    fn row(&self, name: &str, unit: &str) {
        let (t, l) = self.medians();
        row(name, unit, t, l);
    }
    /// Prints the medians as a row of milliseconds.
    fn row_ms(&self, name: &str) {
        let (t, l) = self.medians();
        row_ms(name, t, l);
    }
    /// Prints the medians as a row of CPU microseconds per unit.
    fn row_cpu(&self, name: &str) {
        let (t, l) = self.medians();
        row_cpu(name, t, l);
    }
}

/// What every section shares: the options, the raw connection, the tchu client.
struct Bench {
    o: Opts,
    conn: Connection,
    /// The raw side's publisher channel, in confirm mode.
    pub_ch: Channel,
    setup: Channel,
    client: tchu::Client,
}

/// Declares what the raw side publishes to, which no tchu service declares for it.
async fn raw_setup(conn: &Connection) -> Channel {
    let setup = conn.create_channel().await.unwrap();
    // On a fresh broker nothing has declared tchu's exchange yet.
    setup
        .exchange_declare(
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
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_bound(&setup, PUBLISH_QUEUE, "bench.publish.tick", durable).await;
    setup
}

async fn publish_section(b: &Bench) {
    let (mut rate, mut cpu) = (Pair::default(), Pair::default());
    let (mut all_rate, mut all_cpu) = (Pair::default(), Pair::default());
    for run in 0..b.o.runs {
        eprintln!("publish run {}/{}", run + 1, b.o.runs);
        let (t, tc) = with_cpu(b.o.publish, tchu_publish(&b.client, b.o.publish)).await;
        let (l, lc) = with_cpu(b.o.publish, lapin_publish(&b.pub_ch, b.o.publish)).await;
        rate.push(t, l);
        cpu.push(tc, lc);
        let (t, tc) = with_cpu(b.o.publish, tchu_publish_all(&b.client, b.o.publish)).await;
        let (l, lc) = with_cpu(b.o.publish, lapin_publish(&b.pub_ch, b.o.publish)).await;
        all_rate.push(t, l);
        all_cpu.push(tc, lc);
        b.setup
            .queue_purge(PUBLISH_QUEUE.into(), QueuePurgeOptions::default())
            .await
            .unwrap();
    }
    println!(
        "\nmedians of {} runs; {} persistent ~100-byte events (Celery v2 headers on both sides), confirms, {WINDOW} in flight\n",
        b.o.runs, b.o.publish
    );
    table_head();
    rate.row("publish throughput", "msg/s");
    cpu.row_cpu("CPU time per published event");
    all_rate.row(
        "publish_all throughput (one call, no task per event)",
        "msg/s",
    );
    all_cpu.row_cpu("CPU time per event, publish_all");
}

/// The RPC section's figures, one `Pair` each.
#[derive(Default)]
struct RpcFigures {
    p50: Pair,
    p99: Pair,
    rate: Pair,
    cpu: Pair,
    bare_p50: Pair,
    bare_cpu: Pair,
    tchu_caller_p50: Pair,
    native_p50: Pair,
    celery_bytes_p50: Pair,
    main_thread_p50: Pair,
}

/// Runs `fut` in a task of its own and waits for it.
async fn spawned<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    tokio::spawn(fut).await.unwrap()
}

/// tchu's caller against the raw responder (whose echo is not a Celery result, so each call
/// ends in a decode error: only its timing matters here).
async fn tchu_caller_raw_responder(client: &tchu::Client, n: usize) -> f64 {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
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
    percentile(&lat, 0.5).as_secs_f64() * 1e3
}

/// Calls per block when the RPC sides take turns: small enough that the machine's drift hits
/// every side alike, large enough that a block's CPU time is many clock ticks.
const RPC_BLOCK: usize = 200;

/// Latencies and CPU seconds of one side, accumulated block by block.
#[derive(Default)]
struct Side {
    lat: Vec<Duration>,
    cpu: f64,
}

impl Side {
    fn run(self) -> (RpcRun, f64) {
        let n = self.lat.len();
        (RpcRun::of(self.lat), self.cpu * 1e6 / n as f64)
    }
}

/// Runs `calls` timed calls of one side, adding to `side`.
macro_rules! block {
    ($side:expr, $calls:expr, |$seq:ident| $call:expr) => {{
        let cpu = cpu_seconds();
        for $seq in 0..$calls as u64 {
            let t = Instant::now();
            $call;
            $side.lat.push(t.elapsed());
        }
        $side.cpu += cpu_seconds() - cpu;
    }};
}

/// One RPC run: tchu, raw confirmed and raw bare callers take turns, `RPC_BLOCK` calls each.
/// The callers run in a spawned task, as a caller inside a service does (`main`'s own thread
/// is measured apart: see `rpc_section`).
async fn rpc_run(b: &Bench, n: usize) -> [(RpcRun, f64); 3] {
    let client = b.client.clone();
    let mut confirmed = RawRpc::open(&b.conn, RawCaller::Confirmed).await;
    let mut bare_caller = RawRpc::open(&b.conn, RawCaller::Bare).await;
    let turns = async move {
        let (mut t, mut l, mut bare) = (Side::default(), Side::default(), Side::default());
        for _ in 0..n.div_ceil(RPC_BLOCK) {
            block!(t, RPC_BLOCK, |seq| {
                let pong = client
                    .call(&Ping { seq })
                    .timeout(Duration::from_secs(10))
                    .await
                    .expect("call");
                assert_eq!(pong.seq, seq);
            });
            block!(l, RPC_BLOCK, |seq| confirmed.call(seq).await);
            block!(bare, RPC_BLOCK, |seq| bare_caller.call(seq).await);
        }
        confirmed.close().await;
        bare_caller.close().await;
        [t.run(), l.run(), bare.run()]
    };
    tokio::spawn(turns).await.unwrap()
}

async fn rpc_section(b: &Bench) {
    let service = tchu::Service::new("bench_tchu_rpc")
        .handlers_in(concat!(module_path!(), "::responder"))
        .prefetch(64)
        .start(&b.client)
        .await
        .unwrap();
    let _raw_responder = lapin_responder(&b.conn).await;
    // Warm-up: connections, channels, reply consumers.
    let _ = tchu_rpc(&b.client, 50).await;
    let _ = lapin_rpc(&b.conn, 50, RawCaller::Confirmed).await;
    // The same client sending tchu's native format: no Celery headers, the body alone.
    let n = b.o.rpc;
    let mut f = RpcFigures::default();
    for run in 0..b.o.runs {
        let native = b.client.with_format(tchu::Format::Native);
        eprintln!("RPC run {}/{}", run + 1, b.o.runs);
        let [(t, tc), (l, lc), (bare, bc)] = rpc_run(b, n).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        f.p50.push(ms(t.p50), ms(l.p50));
        f.p99.push(ms(t.p99), ms(l.p99));
        f.rate.push(t.per_sec, l.per_sec);
        f.cpu.push(tc, lc);
        f.bare_p50.push(ms(t.p50), ms(bare.p50));
        f.bare_cpu.push(tc, bc);
        // Diagnostics, one after the other (not interleaved), each in a task of its own.
        let native_run = spawned(async move { tchu_rpc(&native, n).await }).await;
        f.native_p50.push(ms(native_run.p50), ms(l.p50));
        let client = b.client.clone();
        let caller = spawned(async move { tchu_caller_raw_responder(&client, n).await }).await;
        f.tchu_caller_p50.push(caller, ms(l.p50));
        let mut raw = RawRpc::open(&b.conn, RawCaller::CeleryBytes).await;
        let celery = spawned(async move { raw_calls(&mut raw, n).await }).await;
        f.celery_bytes_p50.push(ms(celery.p50), ms(l.p50));
        // From `main`'s own thread (`block_on`): tchu's reply reader is a task on a worker,
        // so the answer reaches the caller through one more thread wake-up than a raw
        // caller reading its own consumer.
        let main_t = tchu_rpc(&b.client, n).await;
        let main_l = lapin_rpc(&b.conn, n, RawCaller::Confirmed).await;
        f.main_thread_p50.push(ms(main_t.p50), ms(main_l.p50));
    }
    println!(
        "\nmedians of {} runs; {n} sequential calls per side and run, the three callers taking turns every {RPC_BLOCK} calls\n",
        b.o.runs
    );
    table_head();
    f.p50.row_ms("RPC round trip p50");
    f.p99.row_ms("RPC round trip p99");
    f.rate.row("RPC sequential", "calls/s");
    f.cpu
        .row_cpu("CPU time per RPC round trip (caller + responder)");
    f.bare_p50
        .row_ms("RPC p50 against a raw caller without confirm");
    f.bare_cpu
        .row_cpu("CPU time per RPC, raw caller without confirm");
    f.tchu_caller_p50
        .row_ms("RPC p50, tchu caller with the raw responder");
    f.native_p50
        .row_ms("RPC p50, native format (no Celery headers)");
    f.celery_bytes_p50
        .row_ms("RPC p50, raw caller sending tchu's Celery request (in the tchu column)");
    f.main_thread_p50
        .row_ms("RPC p50, both callers on `main`'s thread (`block_on`)");
    service.shutdown().await.unwrap();
    for q in [RAW_RPC_QUEUE, "bench_tchu_rpc", "bench_tchu_rpc.dlq"] {
        let _ = b
            .setup
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
}

/// The end-to-end services (tchu's two and the raw sinks) and their counters.
struct E2eServices {
    sink: Arc<Sink>,
    svc_a: tchu::ServiceHandle,
    svc_b: tchu::ServiceHandle,
    raw_one: Arc<std::sync::atomic::AtomicU64>,
    raw_fan_a: Arc<std::sync::atomic::AtomicU64>,
    raw_fan_b: Arc<std::sync::atomic::AtomicU64>,
    raw_json: Arc<std::sync::atomic::AtomicU64>,
}

const E2E_QUEUES: [&str; 8] = [
    "bench_e2e_a",
    "bench_e2e_a.dlq",
    "bench_e2e_b",
    "bench_e2e_b.dlq",
    "bench_raw_one",
    "bench_raw_fan_a",
    "bench_raw_fan_b",
    "bench_raw_json",
];

impl E2eServices {
    async fn start(b: &Bench) -> Self {
        let sink = Arc::new(Sink::default());
        let start = |name: &'static str, module: &'static str| {
            tchu::Service::new(name)
                .handlers_in(module)
                .state_arc(sink.clone())
                .prefetch(64)
                .start(&b.client)
        };
        let svc_a = start("bench_e2e_a", concat!(module_path!(), "::e2e_a"))
            .await
            .unwrap();
        let svc_b = start("bench_e2e_b", concat!(module_path!(), "::e2e_b"))
            .await
            .unwrap();
        Self {
            svc_a,
            svc_b,
            raw_one: raw_sink(&b.conn, "bench_raw_one", "bench.raw.one").await,
            raw_fan_a: raw_sink(&b.conn, "bench_raw_fan_a", "bench.raw.fan").await,
            raw_fan_b: raw_sink(&b.conn, "bench_raw_fan_b", "bench.raw.fan").await,
            raw_json: raw_sink(&b.conn, "bench_raw_json", "bench.raw.json").await,
            sink,
        }
    }

    async fn stop(self, b: &Bench) {
        self.svc_a.shutdown().await.unwrap();
        self.svc_b.shutdown().await.unwrap();
        for q in E2E_QUEUES {
            let _ = b
                .setup
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

fn e2e_one(seq: u64) -> E2eOne {
    E2eOne {
        seq,
        payload: payload(),
    }
}

fn e2e_fan(seq: u64) -> E2eFan {
    E2eFan {
        seq,
        payload: payload(),
    }
}

fn e2e_native(seq: u64) -> E2eNative {
    E2eNative {
        seq,
        payload: payload(),
    }
}

#[derive(Default)]
struct E2eFigures {
    one: Pair,
    one_cpu: Pair,
    fan: Pair,
    fan_cpu: Pair,
    native: Pair,
    native_cpu: Pair,
}

/// One service, two services (fan-out), and the native format against plain JSON, alternating
/// tchu and raw lapin.
async fn e2e_runs(b: &Bench, s: &E2eServices, f: &mut E2eFigures) {
    let ld = std::sync::atomic::Ordering::Relaxed;
    let (n, client, sink) = (b.o.e2e, &b.client, &s.sink);
    let v2 = v2_template();
    let target = |base: u64| base + n as u64;
    let base = sink.one.load(ld);
    let t = with_cpu(
        n,
        tchu_e2e(client, n, e2e_one, || sink.one.load(ld), target(base)),
    )
    .await;
    let base = s.raw_one.load(ld);
    let done = || s.raw_one.load(ld);
    let l = with_cpu(
        n,
        lapin_e2e(&b.pub_ch, ("bench.raw.one", &v2), n, done, target(base)),
    )
    .await;
    f.one.push(t.0, l.0);
    f.one_cpu.push(t.1, l.1);

    let (ba, bb) = (sink.fan_a.load(ld), sink.fan_b.load(ld));
    let done = || sink.fan_a.load(ld).min(sink.fan_b.load(ld) + ba - bb);
    let t = with_cpu(n, tchu_e2e(client, n, e2e_fan, done, target(ba))).await;
    let (ra, rb) = (s.raw_fan_a.load(ld), s.raw_fan_b.load(ld));
    let done = || s.raw_fan_a.load(ld).min(s.raw_fan_b.load(ld) + ra - rb);
    let l = with_cpu(
        n,
        lapin_e2e(&b.pub_ch, ("bench.raw.fan", &v2), n, done, target(ra)),
    )
    .await;
    f.fan.push(t.0, l.0);
    f.fan_cpu.push(t.1, l.1);

    let native = client.with_format(tchu::Format::Native);
    let base = sink.native.load(ld);
    let done = || sink.native.load(ld);
    let t = with_cpu(n, tchu_e2e(&native, n, e2e_native, done, target(base))).await;
    let base = s.raw_json.load(ld);
    let json = plain_json();
    let done = || s.raw_json.load(ld);
    let l = with_cpu(
        n,
        lapin_e2e(&b.pub_ch, ("bench.raw.json", &json), n, done, target(base)),
    )
    .await;
    f.native.push(t.0, l.0);
    f.native_cpu.push(t.1, l.1);
}

async fn e2e_section(b: &Bench) {
    let services = E2eServices::start(b).await;
    let mut f = E2eFigures::default();
    for run in 0..b.o.runs {
        eprintln!("end-to-end run {}/{}", run + 1, b.o.runs);
        e2e_runs(b, &services, &mut f).await;
    }
    println!(
        "\nmedians of {} runs; {} events, {WINDOW} in flight, handler + ack, publisher and consumers in this process; CPU time per event covers both\n",
        b.o.runs, b.o.e2e
    );
    table_head();
    f.one.row("end-to-end throughput, one service", "events/s");
    f.one_cpu.row_cpu("CPU time per event, one service");
    f.fan
        .row("end-to-end throughput, two services (fan-out)", "events/s");
    f.fan_cpu.row_cpu("CPU time per event, fan-out");
    f.native
        .row("end to end, Format::Native against plain JSON", "events/s");
    f.native_cpu
        .row_cpu("CPU time per event, Format::Native against plain JSON");
    services.stop(b).await;
}

async fn latency_section(b: &Bench) {
    let services = E2eServices::start(b).await;
    let (mut p50, mut p99) = (Pair::default(), Pair::default());
    for run in 0..b.o.runs {
        eprintln!("latency run {}/{}", run + 1, b.o.runs);
        let (t50, t99) = tchu_latency(&b.client, &services.sink).await;
        let (l50, l99) = lapin_latency(&b.conn, &b.pub_ch).await;
        p50.push(t50, l50);
        p99.push(t99, l99);
    }
    println!(
        "\nmedians of {} runs; 1,000 events 1 ms apart, publish to handler\n",
        b.o.runs
    );
    table_head();
    for (name, pair) in [("p50", p50), ("p99", p99)] {
        let (t, l) = pair.medians();
        println!(
            "| latency publish → handler {name} | {t:.3} ms | {l:.3} ms | {:+.3} ms |",
            t - l
        );
    }
    services.stop(b).await;
}

async fn concurrent_section(b: &Bench) {
    let service = tchu::Service::new("bench_tchu_rpc")
        .handlers_in(concat!(module_path!(), "::responder"))
        .prefetch(64)
        .start(&b.client)
        .await
        .unwrap();
    let _raw_responder = lapin_responder(&b.conn).await;
    let mut rate = Pair::default();
    for run in 0..b.o.runs {
        eprintln!("concurrent RPC run {}/{}", run + 1, b.o.runs);
        let t = tchu_rpc_concurrent(&b.client, 50).await;
        let l = lapin_rpc_concurrent(&b.conn, 50).await;
        rate.push(t, l);
    }
    println!("\nmedians of {} runs; 64 callers × 50 calls\n", b.o.runs);
    table_head();
    rate.row("RPC, 64 concurrent callers", "calls/s");
    service.shutdown().await.unwrap();
    for q in [RAW_RPC_QUEUE, "bench_tchu_rpc", "bench_tchu_rpc.dlq"] {
        let _ = b
            .setup
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
}

async fn startup_section(b: &Bench) {
    // 20,000 events, 64 confirmed publishes in flight: one at a time, a persistent publish
    // waits for the broker's disk, and the load would take minutes on a slow disk.
    let child_load = |key: &'static str| {
        let client = b.client.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for task in 0..64u64 {
                let client = client.clone();
                set.spawn(async move {
                    for seq in (task..20_000).step_by(64) {
                        if key == "bench.child.raw" {
                            let payload = serde_json::json!({"seq": seq, "payload": payload()});
                            let _ = client.publish_raw(key, &payload).await;
                        } else {
                            let _ = client
                                .publish(&ChildTick {
                                    seq,
                                    payload: payload(),
                                })
                                .await;
                        }
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    };
    eprintln!("start-up and memory");
    // The cold-start producers publish mandatory events: queues must be bound to them.
    let services = E2eServices::start(b).await;
    let (p_tchu, p_lapin) = producer_cold_start(20 * b.o.runs.max(1)).await;
    services.stop(b).await;
    let (t_ready, t_idle, t_load) = measure_child("tchu", child_load("bench.child.tick")).await;
    let (l_ready, l_idle, l_load) = measure_child("lapin", child_load("bench.child.raw")).await;
    println!(
        "\nproducer cold start: median of {} rounds; one child process each for the rest\n",
        20 * b.o.runs.max(1)
    );
    table_head();
    println!(
        "| producer cold start (connect, publish, confirm, close) | {p_tchu:.2} ms | {p_lapin:.2} ms | {:.2} |",
        p_tchu / p_lapin
    );
    row("start to consuming", "ms", t_ready, l_ready);
    row("resident memory, idle", "MiB", t_idle, l_idle);
    row("resident memory, 20,000 events", "MiB", t_load, l_load);
    for q in [
        "bench_child_tchu",
        "bench_child_tchu.dlq",
        "bench_child_lapin",
    ] {
        let _ = b
            .setup
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
}

/// One side of one scenario alone (`--only rpc-tchu`, `rpc-native`, `rpc-raw`,
/// `rpc-raw-celery`, `e2e-tchu`, `e2e-raw`), for a
/// profiler or an instruction counter: `scripts/bench-instructions.sh` runs these under
/// callgrind with two sizes, and the difference is the cost of the extra messages alone.
async fn side_alone(b: &Bench, which: &str) {
    let n = if which.starts_with("rpc") {
        b.o.rpc
    } else {
        b.o.e2e
    };
    let started = Instant::now();
    let cpu = cpu_seconds();
    match which {
        "user-v2" | "user-native" | "user-raw" => user::user_alone(b, which, n).await,
        "publish-all" | "publish-raw" => {
            if which == "publish-all" {
                tchu_publish_all(&b.client, n).await;
            } else {
                lapin_publish(&b.pub_ch, n).await;
            }
            let purge = QueuePurgeOptions::default();
            let _ = b.setup.queue_purge(PUBLISH_QUEUE.into(), purge).await;
        }
        "rpc-tchu" | "rpc-native" | "rpc-raw" | "rpc-raw-celery" => {
            let service = tchu::Service::new("bench_tchu_rpc")
                .handlers_in(concat!(module_path!(), "::responder"))
                .prefetch(64)
                .start(&b.client)
                .await
                .unwrap();
            let _raw_responder = lapin_responder(&b.conn).await;
            if which == "rpc-tchu" {
                tchu_rpc(&b.client, n).await;
            } else if which == "rpc-native" {
                tchu_rpc(&b.client.with_format(tchu::Format::Native), n).await;
            } else if which == "rpc-raw-celery" {
                lapin_rpc(&b.conn, n, RawCaller::CeleryBytes).await;
            } else {
                lapin_rpc(&b.conn, n, RawCaller::Confirmed).await;
            }
            service.shutdown().await.unwrap();
        }
        _ => {
            let s = E2eServices::start(b).await;
            let ld = std::sync::atomic::Ordering::Relaxed;
            if which == "e2e-tchu" {
                let base = s.sink.one.load(ld);
                tchu_e2e(
                    &b.client,
                    n,
                    e2e_one,
                    || s.sink.one.load(ld),
                    base + n as u64,
                )
                .await;
            } else {
                let base = s.raw_one.load(ld);
                let key = ("bench.raw.one", &v2_template());
                lapin_e2e(&b.pub_ch, key, n, || s.raw_one.load(ld), base + n as u64).await;
            }
            s.stop(b).await;
        }
    }
    println!(
        "{which}: {n} in {:.3} s, {:.3} s CPU",
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(args.get(i + 1).map_or("tchu", String::as_str)).await;
    }
    let url = url();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running");
    let setup = raw_setup(&conn).await;
    let pub_ch = conn.create_channel().await.unwrap();
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let client = tchu::Client::connect(&url).await.unwrap();
    let b = Bench {
        o: opts(),
        conn,
        pub_ch,
        setup,
        client,
    };
    let alone = [
        "rpc-tchu",
        "rpc-native",
        "rpc-raw",
        "rpc-raw-celery",
        "e2e-tchu",
        "e2e-raw",
        "user-v2",
        "user-native",
        "user-raw",
        "publish-all",
        "publish-raw",
    ];
    if let Some(which) = alone.iter().find(|w| b.o.only.iter().any(|o| o == *w)) {
        side_alone(&b, which).await;
        b.client.close().await;
        return;
    }
    if b.o.runs("publish") {
        publish_section(&b).await;
    }
    if b.o.runs("rpc") {
        rpc_section(&b).await;
    }
    if b.o.runs("e2e") {
        e2e_section(&b).await;
    }
    if b.o.runs("latency") {
        latency_section(&b).await;
    }
    if b.o.runs("concurrent") {
        concurrent_section(&b).await;
    }
    if b.o.runs("startup") {
        startup_section(&b).await;
    }
    if b.o.runs("replay") {
        replay::replay_section(&b).await;
    }
    // Last: it installs a tracing subscriber for good.
    if b.o.runs("user") {
        user::user_section(&b).await;
    }
    b.client.close().await;
    let _ = b
        .setup
        .queue_delete(PUBLISH_QUEUE.into(), QueueDeleteOptions::default())
        .await;
    let _ = b.conn.close(200, "bench done".into()).await;
}
