//! tchu next to raw lapin, same machine, same run, alternating.
//!
//! Run with: `cargo bench --bench compare` (RabbitMQ on 127.0.0.1, or `TCHU_BROKER_URL`).
//! Options: `--runs N` (default 5), `--publish N` (events per publish run, default 20000),
//! `--rpc N` (sequential calls per RPC run, default 2000).
//!
//! Each scenario runs tchu and a minimal lapin program doing the same AMQP work, alternating,
//! `runs` times; the table shows medians and the tchu / lapin ratio. Nothing here asserts: the
//! figures go to BENCHMARKS.md.

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
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

const RAW_RPC_QUEUE: &str = "bench_raw_rpc";
const PUBLISH_QUEUE: &str = "bench_publish_sink";
/// In-flight publishes when pipelining (both sides use the same window).
const WINDOW: usize = 256;

struct Opts {
    runs: usize,
    publish: usize,
    rpc: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        runs: 5,
        publish: 20_000,
        rpc: 2_000,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let val = args.get(i + 1).and_then(|v| v.parse().ok());
        match (args[i].as_str(), val) {
            ("--runs", Some(v)) => o.runs = v,
            ("--publish", Some(v)) => o.publish = v,
            ("--rpc", Some(v)) => o.rpc = v,
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

async fn lapin_publish(ch: &Channel, n: usize) -> f64 {
    let (body, props) = v2_template();
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "tchu_events".into(),
                "bench.publish.tick".into(),
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

/// The raw side's responder: consume, answer to `reply_to` with the correlation id, ack.
async fn lapin_responder(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        RAW_RPC_QUEUE.into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        RAW_RPC_QUEUE.into(),
        "tchu_events".into(),
        "bench.raw.ping".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
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
    let ch = conn.create_channel().await.unwrap();
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

fn row(name: &str, unit: &str, tchu: f64, lapin: f64) {
    println!(
        "| {name} | {tchu:.1} {unit} | {lapin:.1} {unit} | {:.2} |",
        tchu / lapin
    );
}

#[tokio::main]
async fn main() {
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

    service.shutdown().await.unwrap();
    client.close().await;
    for q in [PUBLISH_QUEUE, "bench_tchu_rpc", "bench_tchu_rpc.dlq"] {
        let _ = setup
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bench done".into()).await;
}
