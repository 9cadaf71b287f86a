//! Replay throughput: a service catching up from the event log (`Service::replay_from`: the
//! log read with stream offsets and flow control, each event decoded and dispatched to its
//! handler) next to raw lapin reading the same stream (a stream consumer with the same
//! prefetch, acknowledging each event and doing nothing else), alternating, in the same run.
//!
//! Run with: `cargo bench --bench replay -- [--events N] [--runs N] [--prefetch N]`
//! (RabbitMQ on 127.0.0.1, or `TCHU_BROKER_URL`; defaults 50000 events, 3 runs, prefetch 256).
//! The stream is this bench's own and is deleted at the end. Nothing here asserts: the figures
//! go to BENCHMARKS.md.

mod support;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{cpu_seconds, median, url};

#[tchu::event(topic = "bench.replay.tick")]
struct Tick {
    seq: u64,
    payload: String,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);

/// What one replay took: events per second, and CPU microseconds per event.
struct Run {
    rate: f64,
    cpu_us: f64,
}

struct Opts {
    events: u64,
    runs: usize,
    prefetch: u16,
}

fn opts() -> Opts {
    let mut o = Opts {
        events: 50_000,
        runs: 3,
        prefetch: 256,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let n = pair[1].parse::<u64>().ok();
        match (pair[0].as_str(), n) {
            ("--events", Some(n)) => o.events = n,
            ("--runs", Some(n)) => o.runs = usize::try_from(n).unwrap_or(3).max(1),
            ("--prefetch", Some(n)) => o.prefetch = u16::try_from(n).unwrap_or(256).max(1),
            _ => {}
        }
    }
    o
}

/// Declares the bench's stream, bound to its topic on tchu_events.
async fn declare_log(conn: &Connection, log: &str) {
    let ch = conn.create_channel().await.unwrap();
    tchu::amqp::declare_exchange(&ch).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(log.into(), durable, args).await.unwrap();
    let bind = QueueBindOptions::default();
    let key = "bench.replay.#";
    (ch.queue_bind(
        log.into(),
        tchu::EXCHANGE.into(),
        key.into(),
        bind,
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

/// Publishes `n` ticks, confirmed.
async fn fill(client: &tchu::Client, n: u64) {
    let payload = "x".repeat(200);
    let mut seq = 0;
    while seq < n {
        let batch: Vec<Tick> = (seq..(seq + 1000).min(n))
            .map(|seq| Tick {
                seq,
                payload: payload.clone(),
            })
            .collect();
        for r in client.publish_all(&batch).await {
            r.expect("publish");
        }
        seq += 1000;
    }
}

/// A service replaying the whole log: from its start until it goes live.
async fn tchu_replay(client: &tchu::Client, log: &str, o: &Opts) -> Run {
    let queue = format!("bench_replay_{}", uuid::Uuid::new_v4().simple());
    HANDLED.store(0, Ordering::SeqCst);
    let handler = tchu::Handler::on(|_t: Tick| async {
        HANDLED.fetch_add(1, Ordering::Relaxed);
    });
    let service = tchu::Service::new(&queue)
        .handlers_in("no::attribute::handlers")
        .handler(handler)
        .prefetch(o.prefetch)
        .replay_from("first")
        .event_log(log);
    let (cpu, started) = (cpu_seconds(), Instant::now());
    let handle = service.start(client).await.expect("start");
    let mut state = handle.watch_state();
    let deadline = Duration::from_secs(600);
    let live = state.wait_for(|s| *s == tchu::ServiceState::Consuming);
    tokio::time::timeout(deadline, live)
        .await
        .expect("replayed within 10 minutes")
        .expect("state");
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    handle.shutdown().await.expect("shutdown");
    assert_eq!(
        HANDLED.load(Ordering::SeqCst),
        o.events,
        "every event handled"
    );
    delete_service(client, &queue).await;
    Run {
        rate: o.events as f64 / took,
        cpu_us: cpu * 1e6 / o.events as f64,
    }
}

/// The service's queues, gone.
async fn delete_service(_client: &tchu::Client, queue: &str) {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut names = vec![
        queue.to_owned(),
        format!("{queue}.dlq"),
        format!("{queue}.quarantine"),
        format!("{queue}.replay"),
    ];
    names.extend((tchu::retry::DELAY_TIERS_MS.iter()).map(|t| format!("{queue}.delay.{t}ms")));
    for name in names {
        let _ = ch
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bench".into()).await;
}

/// Raw lapin reading the stream from its first event until it has them all.
async fn lapin_replay(conn: &Connection, log: &str, o: &Opts) -> Run {
    let (cpu, started) = (cpu_seconds(), Instant::now());
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(o.prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            log.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap();
    let mut read = 0;
    while read < o.events {
        let d = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("delivered");
        d.ack(BasicAckOptions::default()).await.unwrap();
        read += 1;
    }
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let _ = ch.close(200, "read".into()).await;
    Run {
        rate: o.events as f64 / took,
        cpu_us: cpu * 1e6 / o.events as f64,
    }
}

#[tokio::main]
async fn main() {
    let o = opts();
    let client = tchu::Client::connect(&url()).await.expect("broker");
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let log = format!("bench_replay_{}.log", uuid::Uuid::new_v4().simple());
    declare_log(&conn, &log).await;
    fill(&client, o.events).await;
    let (mut tchu_runs, mut lapin_runs) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        tchu_runs.push(tchu_replay(&client, &log, &o).await);
        lapin_runs.push(lapin_replay(&conn, &log, &o).await);
    }
    let rate = |runs: &[Run]| median(runs.iter().map(|r| r.rate).collect());
    let cpu = |runs: &[Run]| median(runs.iter().map(|r| r.cpu_us).collect());
    println!(
        "replay of {} events (~260 B each), prefetch {}, median of {} runs",
        o.events, o.prefetch, o.runs
    );
    println!("| | tchu (Service::replay_from) | raw lapin (stream consumer) | tchu / lapin |");
    println!("|---|---:|---:|---:|");
    let (t, l) = (rate(&tchu_runs), rate(&lapin_runs));
    println!("| events/s | {t:.0} | {l:.0} | {:.2} |", t / l);
    let (t, l) = (cpu(&tchu_runs), cpu(&lapin_runs));
    println!("| CPU µs/event | {t:.1} | {l:.1} | {:.2} |", t / l);
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(log.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bench done".into()).await;
    client.close().await;
}
