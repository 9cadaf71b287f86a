//! The cost of the crash guard: a delivery the broker marks as redelivered is moved to the
//! service's quarantine (one confirmed publish) while nothing runs, then taken from there and
//! run alone. Drains a backlog of first deliveries and a backlog of redelivered ones, with a
//! tchu service and with a raw lapin consumer, in the same run.
//!
//! Run with: `cargo bench --bench redelivery -- [events]` (RabbitMQ on 127.0.0.1).

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tchu::event(topic = "bench.redelivery.tick")]
struct Tick {
    seq: u64,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);

mod svc {
    use super::*;

    #[tchu::subscribe]
    async fn tick(_t: Tick) {
        HANDLED.fetch_add(1, Ordering::Relaxed);
    }
}

const QUEUE: &str = "bench_redelivery";

fn url() -> String {
    std::env::var("TCHU_BROKER_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Fills the service queue with `n` events (nobody consuming).
async fn backlog(client: &tchu::Client, n: u64) {
    let mut set = tokio::task::JoinSet::new();
    for lane in 0..64 {
        let client = client.clone();
        set.spawn(async move {
            let mut seq = lane;
            while seq < n {
                client.publish(&Tick { seq }).await.expect("publish");
                seq += 64;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Takes every message of the queue without acknowledging, then closes the channel: the broker
/// puts them all back, marked redelivered.
async fn mark_redelivered(conn: &Connection, n: u64) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(0, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = 0;
    while got < n {
        consumer.next().await.unwrap().unwrap();
        got += 1;
    }
    ch.close(200, "put back".into()).await.unwrap();
}

/// Drains the queue with a tchu service; returns events per second.
async fn tchu_drain(client: &tchu::Client, n: u64) -> f64 {
    HANDLED.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let service = tchu::Service::new(QUEUE)
        .handlers_in(concat!(module_path!(), "::svc"))
        .prefetch(64)
        .start(client)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while HANDLED.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "drain stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    service.shutdown().await.unwrap();
    rate
}

/// Drains the queue with a raw consumer acknowledging each delivery; returns events per second.
async fn lapin_drain(ch: &Channel, n: u64) -> f64 {
    ch.basic_qos(64, BasicQosOptions::default()).await.unwrap();
    let started = Instant::now();
    let mut consumer = ch
        .basic_consume(
            QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = 0;
    while got < n {
        let d = consumer.next().await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
        got += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    ch.basic_cancel(consumer.tag().as_str().into(), Default::default())
        .await
        .unwrap();
    rate
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000);
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running");
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await;
    let client = tchu::Client::connect(&url()).await.unwrap();
    // Declares the queue and its bindings, then stops: the backlog builds up unconsumed.
    tchu::Service::new(QUEUE)
        .handlers_in(concat!(module_path!(), "::svc"))
        .start(&client)
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for redelivered in [false, true] {
        backlog(&client, n).await;
        if redelivered {
            mark_redelivered(&conn, n).await;
        }
        let tchu = tchu_drain(&client, n).await;
        ch.queue_purge(QUEUE.into(), QueuePurgeOptions::default())
            .await
            .unwrap();
        backlog(&client, n).await;
        if redelivered {
            mark_redelivered(&conn, n).await;
        }
        let lapin = lapin_drain(&ch, n).await;
        rows.push((redelivered, tchu, lapin));
    }
    println!("\n{n} events, ~100 bytes, prefetch 64, classic durable queue\n");
    println!("| backlog drained | tchu | raw lapin (ack only) | tchu / lapin |");
    println!("|---|---|---|---|");
    for (redelivered, tchu, lapin) in &rows {
        let what = if *redelivered {
            "redelivered (tchu moves each to the quarantine, then runs it alone)"
        } else {
            "first deliveries"
        };
        println!(
            "| {what} | {tchu:.0} msg/s | {lapin:.0} msg/s | {:.2} |",
            tchu / lapin
        );
    }
    for queue in [QUEUE.to_owned(), format!("{QUEUE}.quarantine")] {
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    client.close().await;
}
