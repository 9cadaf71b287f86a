//! In order per key against the same handler unordered, and against raw lapin, same run.
//!
//! Run with: `cargo bench --bench ordered` (RabbitMQ on 127.0.0.1, or `TCHU_BROKER_URL`).
//! Options: `--runs N` (default 3), `--events N` (default 20000), `--keys N` (default 1000),
//! `--prefetch N` (default 64).
//!
//! Each run fills a queue with `events` messages spread over `keys` keys (the same Celery v2
//! bytes for all three sides), then times how long its consumer takes to drain it: a tchu
//! service whose handler is ordered by the key, the same handler unordered, and a raw lapin
//! consumer running each delivery in a task of its own (no order at all), each with the same
//! prefetch, then at the ordered queue's window, on classic and quorum queues. Twice: with handlers that do nothing (the framework's own cost) and with
//! handlers that wait 2 ms (I/O, where running keys side by side is what counts). The table
//! shows medians, events per second and CPU time per event. Nothing here asserts: the figures
//! go to BENCHMARKS.md.

mod support;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{cpu_seconds, median, url};
use tokio::sync::watch;

#[derive(Clone, Copy)]
struct Opts {
    runs: usize,
    events: u64,
    keys: u64,
    prefetch: u16,
    /// The service queue (or the raw side's queue) is a quorum queue, as the ordered queue is.
    quorum: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: u64| {
        (args.iter().position(|a| a == name))
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Opts {
        runs: get("--runs", 3) as usize,
        events: get("--events", 20_000),
        keys: get("--keys", 1000),
        prefetch: get("--prefetch", 64) as u16,
        quorum: false,
    }
}

/// Which consumer drains the queue.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ordered,
    Unordered,
    Raw,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ordered => "ordered",
            Side::Unordered => "unordered",
            Side::Raw => "raw",
        }
    }
}

/// What the handler does: nothing, or wait.
async fn work(wait: Duration) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// Publishes the backlog: `events` messages, keys round-robin, 64 publishers at once (the
/// order of one key is not what is measured here: `tests/ordered.rs` checks it).
async fn fill(client: &tchu::Client, topic: &str, o: &Opts) {
    const PUBLISHERS: u64 = 64;
    let mut set = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let (client, topic, events, keys) = (client.clone(), topic.to_owned(), o.events, o.keys);
        set.spawn(async move {
            for i in (p..events).step_by(PUBLISHERS as usize) {
                let payload = json!({"key": format!("k-{}", i % keys), "seq": i});
                client.publish_raw(&topic, &payload).await.expect("publish");
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Drains a filled queue with a tchu service; returns (events/s, CPU µs per event).
async fn tchu_side(side: Side, o: &Opts, wait: Duration) -> (f64, f64) {
    let client = tchu::Client::connect(&url()).await.unwrap();
    let queue = format!("bench_ordered_{}", side.name());
    let topic = format!("bench.ord.{}", side.name());
    let done = Arc::new(AtomicU64::new(0));
    let (gate_tx, gate) = watch::channel(false);
    let counted = done.clone();
    let mut handler = tchu::Handler::on_pattern::<tchu::Message>(topic.clone(), move |_| {
        let (counted, mut gate) = (counted.clone(), gate.clone());
        async move {
            let _ = gate.wait_for(|open| *open).await;
            work(wait).await;
            counted.fetch_add(1, Ordering::Relaxed);
        }
    })
    .with_name("bench.apply");
    if side == Side::Ordered {
        handler = handler.with_ordered("key");
    }
    let svc = tchu::Service::new(&queue)
        .quorum(o.quorum)
        .handlers_in("none")
        .prefetch(o.prefetch)
        .handler(handler)
        .start(&client)
        .await
        .unwrap();
    fill(&client, &topic, o).await;
    let (started, cpu) = (Instant::now(), cpu_seconds());
    gate_tx.send_replace(true);
    wait_for(&done, o.events).await;
    let figures = figures(started, cpu, o.events);
    svc.shutdown().await.unwrap();
    client.close().await;
    figures
}

/// Drains a filled queue with raw lapin, each delivery in a task; returns (events/s, CPU µs
/// per event).
async fn raw_side(o: &Opts, wait: Duration) -> (f64, f64) {
    let client = tchu::Client::connect(&url()).await.unwrap();
    let conn = lapin::Connection::connect(&url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let (queue, topic) = ("bench_ordered_raw", "bench.ord.raw");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut args = FieldTable::default();
    if o.quorum {
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    ch.queue_declare(queue.into(), durable, args).await.unwrap();
    let bind = QueueBindOptions::default();
    ch.queue_bind(
        queue.into(),
        tchu::EXCHANGE.into(),
        topic.into(),
        bind,
        FieldTable::default(),
    )
    .await
    .unwrap();
    fill(&client, topic, o).await;
    ch.basic_qos(o.prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let counted = done.clone();
    let consuming = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                work(wait).await;
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                counted.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    wait_for(&done, o.events).await;
    let figures = figures(started, cpu, o.events);
    consuming.abort();
    // Bounded: RabbitMQ 3.10's channel process was seen to crash on the cancel of a quorum
    // queue's consumer here, and lapin's promises then never resolve.
    let teardown = async {
        let _ = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let _ = conn.close(200, "done".into()).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), teardown).await;
    client.close().await;
    figures
}

async fn wait_for(done: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "stalled at {}",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn figures(started: Instant, cpu: f64, n: u64) -> (f64, f64) {
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu) * 1e6 / n as f64;
    (rate, cpu_us)
}

/// Deletes what a run declared, so each run starts empty.
async fn clean() {
    let conn = lapin::Connection::connect(&url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for side in ["ordered", "unordered", "raw"] {
        for suffix in ["", ".ordered", ".dlq", ".quarantine"] {
            let q = format!("bench_ordered_{side}{suffix}");
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "clean".into()).await;
}

/// The sides, each with the prefetch it runs at (the service's, and the ordered queue's window,
/// for a comparison at equal messages in flight) and its queue type (the ordered queue is a
/// quorum queue; a classic queue delivers a backlog at another rate).
fn sides(o: &Opts) -> Vec<(Side, u16, bool, String)> {
    let (p, w) = (o.prefetch, o.prefetch.saturating_mul(8));
    vec![
        (
            Side::Ordered,
            p,
            true,
            format!("ordered (prefetch {p}, window {w})"),
        ),
        (
            Side::Unordered,
            p,
            false,
            format!("unordered, classic (prefetch {p})"),
        ),
        (
            Side::Unordered,
            p,
            true,
            format!("unordered, quorum (prefetch {p})"),
        ),
        (
            Side::Unordered,
            w,
            true,
            format!("unordered, quorum (prefetch {w})"),
        ),
        (
            Side::Raw,
            p,
            false,
            format!("raw lapin, classic (prefetch {p})"),
        ),
        (
            Side::Raw,
            w,
            true,
            format!("raw lapin, quorum (prefetch {w})"),
        ),
    ]
}

#[tokio::main]
async fn main() {
    let o = opts();
    println!(
        "in order per key: {} events over {} keys, {} runs (medians)",
        o.events, o.keys, o.runs
    );
    let sides = sides(&o);
    for wait in [Duration::ZERO, Duration::from_millis(2)] {
        let mut rates = vec![Vec::new(); sides.len()];
        let mut cpus = vec![Vec::new(); sides.len()];
        for _ in 0..o.runs {
            for (i, (side, prefetch, quorum, _)) in sides.iter().enumerate() {
                clean().await;
                let o = Opts {
                    prefetch: *prefetch,
                    quorum: *quorum,
                    ..o
                };
                let (rate, cpu) = match side {
                    Side::Raw => raw_side(&o, wait).await,
                    _ => tchu_side(*side, &o, wait).await,
                };
                eprintln!("{} ({} ms): {rate:.0}/s", sides[i].3, wait.as_millis());
                rates[i].push(rate);
                cpus[i].push(cpu);
            }
        }
        let rates: Vec<f64> = rates.into_iter().map(median).collect();
        let cpus: Vec<f64> = cpus.into_iter().map(median).collect();
        println!("\nhandlers that wait {} ms", wait.as_millis());
        println!(
            "  {:<36} {:>10} {:>14} {:>16}",
            "consumer", "events/s", "CPU µs/event", "ordered ÷ this"
        );
        for (i, (_, _, _, name)) in sides.iter().enumerate() {
            println!(
                "  {name:<36} {:>10.0} {:>14.1} {:>16.2}",
                rates[i],
                cpus[i],
                rates[0] / rates[i]
            );
        }
    }
    clean().await;
}
