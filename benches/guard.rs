//! The frame guard's cost on its own (`cargo bench --bench guard -- [--runs N] [--messages N]`):
//! the same raw lapin consumer drains the same backlog of Celery v2 messages (tchu-tchu's
//! headers and properties, so every content header is checked), over a plain lapin connection
//! and over one opened with tchu's `connect_guarded`, alternating, in one run. Prints the
//! medians: drain rate and the process's CPU time per message.

mod support;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::{Duration, Instant};
use support::{cpu_seconds, median, url};

const QUEUE: &str = "bench_guard";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A message as tchu-tchu publishes it: the v2 body, its headers and properties.
fn celery_message() -> (Vec<u8>, BasicProperties) {
    let payload = serde_json::json!({"seq": 1, "payload": "x".repeat(80)});
    let msg = tchu::wire::encode(
        "bench.guard.tick",
        &payload,
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
            serde_json::Value::String(s) => AMQPValue::LongString(s.as_str().into()),
            serde_json::Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().unwrap_or_default()),
            _ => AMQPValue::Void,
        };
        headers.insert(k.as_str().into(), value);
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_correlation_id("00000000-0000-4000-8000-000000000000".into())
        .with_reply_to("bench".into())
        .with_headers(headers);
    (msg.body, props)
}

/// Fills the queue with `n` messages, 256 confirms in flight.
async fn fill(ch: &Channel, n: usize) {
    let (body, props) = celery_message();
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() >= 256 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for c in pending {
        c.await.unwrap();
    }
}

/// Drains `n` messages on `conn` (prefetch 64, every one acknowledged): messages per second
/// and CPU microseconds per message.
async fn drain(conn: &Connection, n: usize) -> (f64, f64) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(64, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..n {
        let next = tokio::time::timeout(Duration::from_secs(60), consumer.next()).await;
        let delivery = next.expect("a delivery within 60 s").unwrap().unwrap();
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu) * 1e6 / n as f64;
    ch.close(200, "drained".into()).await.unwrap();
    (n as f64 / secs, cpu_us)
}

#[tokio::main]
async fn main() {
    let (runs, n) = (arg("--runs", 5), arg("--messages", 20_000));
    let url = url();
    let plain = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running");
    let uri = url.parse().expect("a broker URL");
    let guarded =
        tchu::__private::connect_guarded(uri, ConnectionProperties::default(), Default::default())
            .await
            .unwrap();
    let setup = plain.create_channel().await.unwrap();
    setup
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    setup
        .queue_declare(QUEUE.into(), durable, FieldTable::default())
        .await
        .unwrap();
    setup
        .queue_purge(QUEUE.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    let mut sides: [(&str, &Connection, Vec<f64>, Vec<f64>); 2] = [
        ("through the guard", &guarded, Vec::new(), Vec::new()),
        ("plain", &plain, Vec::new(), Vec::new()),
    ];
    for _ in 0..runs {
        for (_, conn, rates, cpus) in sides.iter_mut() {
            fill(&setup, n).await;
            let (rate, cpu) = drain(conn, n).await;
            rates.push(rate);
            cpus.push(cpu);
        }
    }
    let [(_, _, g_rate, g_cpu), (_, _, p_rate, p_cpu)] = sides;
    let (g_rate, p_rate, g_cpu, p_cpu) =
        (median(g_rate), median(p_rate), median(g_cpu), median(p_cpu));
    println!("medians of {runs} runs, {n} persistent Celery v2 messages each, prefetch 64");
    println!("| scenario | raw lapin through tchu's frame guard | raw lapin | guard / plain |");
    println!("|---|---|---|---|");
    println!(
        "| drain rate | {g_rate:.0} msg/s | {p_rate:.0} msg/s | {:.2} |",
        g_rate / p_rate
    );
    println!(
        "| CPU per message (process) | {g_cpu:.1} µs | {p_cpu:.1} µs | {:.2} |",
        g_cpu / p_cpu
    );
    setup
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}
