//! The cost of the inbox and the outbox, next to raw lapin in the same run.
//!
//! `cargo bench --bench stores --features postgres,redis [-- N]` (RabbitMQ, PostgreSQL and Redis
//! on 127.0.0.1; `DATABASE_URL`, `REDIS_URL`). Prints two tables:
//! - inbox: a backlog of N events drained by one service (prefetch 16) with a plain handler,
//!   a `dedup` handler on Redis, a `dedup` handler on PostgreSQL, and a PostgreSQL `dedup`
//!   handler that also writes a row through `Tx`; raw lapin consuming and acknowledging the same
//!   backlog is the reference;
//! - outbox: N events through the relay (batch 256) against `Client::publish` one by one and 64
//!   at a time, and raw lapin publishing the same bytes pipelined with confirms; plus the
//!   writer's cost, one event per committed transaction.

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tchu::sqlx::{self, PgPool};
use tchu::{Inbox, State, Tx};

#[tchu::event(topic = "bench.stores.plain")]
struct Plain {
    n: u64,
}

#[tchu::event(topic = "bench.stores.redis")]
struct ViaRedis {
    n: u64,
}

#[tchu::event(topic = "bench.stores.pg")]
struct ViaPg {
    n: u64,
}

#[tchu::event(topic = "bench.stores.pgwrite")]
struct ViaPgWrite {
    n: u64,
}

#[tchu::event(topic = "bench.stores.raw")]
struct Raw {
    n: u64,
}

/// Handled events.
#[derive(Default)]
struct Count(AtomicU64);

mod plain {
    use super::*;
    #[tchu::subscribe]
    async fn h(_e: Plain, c: State<Count>) {
        c.0.0.fetch_add(1, Ordering::SeqCst);
    }
}

mod redis {
    use super::*;
    #[tchu::subscribe(dedup)]
    async fn h(_e: ViaRedis, c: State<Count>) {
        c.0.0.fetch_add(1, Ordering::SeqCst);
    }
}

mod pg {
    use super::*;
    #[tchu::subscribe(dedup)]
    async fn h(_e: ViaPg, c: State<Count>) {
        c.0.0.fetch_add(1, Ordering::SeqCst);
    }
}

mod pgwrite {
    use super::*;
    #[tchu::subscribe(dedup)]
    async fn h(e: ViaPgWrite, tx: Tx, c: State<Count>) -> tchu::Result<()> {
        sqlx::query("INSERT INTO bench_effects (n) VALUES ($1)")
            .bind(i64::try_from(e.n).unwrap_or(i64::MAX))
            .execute(&mut *tx.lock().await?)
            .await?;
        c.0.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn broker() -> String {
    std::env::var(tchu::BROKER_URL_ENV).unwrap_or_else(|_| tchu::DEFAULT_BROKER_URL.into())
}

fn database() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tchu_test".into())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A pool on a fresh schema (dropped at the end by `drop_schema`).
async fn scoped_pool(schema: &str) -> PgPool {
    let admin = PgPool::connect(&database()).await.expect("PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let url = database();
    let sep = if url.contains('?') { '&' } else { '?' };
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(24)
        .connect(&format!("{url}{sep}options=-csearch_path%3D{schema}"))
        .await
        .unwrap()
}

/// Publishes N events, 64 in flight.
async fn backlog<E: tchu::Event + Sync + Send + 'static>(
    client: &tchu::Client,
    n: u64,
    make: fn(u64) -> E,
) {
    let mut set = tokio::task::JoinSet::new();
    for lane in 0..64 {
        let client = client.clone();
        set.spawn(async move {
            let mut i = lane;
            while i < n {
                client.publish(&make(i)).await.unwrap();
                i += 64;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Declares the service's queue and bindings without consuming, so the backlog waits.
async fn declare(client: &tchu::Client, queue: &str, module: &str, inbox: Option<Inbox>) {
    let mut s = tchu::Service::new(queue)
        .handlers_in(module)
        .state(Count::default());
    if let Some(i) = inbox {
        s = s.inbox(i);
    }
    s.start(client).await.unwrap().shutdown().await.unwrap();
}

/// Drains the backlog with a service; returns the seconds it took.
async fn drain(
    client: &tchu::Client,
    queue: &str,
    module: &str,
    inbox: Option<Inbox>,
    n: u64,
) -> f64 {
    let count = Arc::new(Count::default());
    let mut s = tchu::Service::new(queue)
        .handlers_in(module)
        .state_arc(count.clone())
        .prefetch(16);
    if let Some(i) = inbox {
        s = s.inbox(i);
    }
    let started = Instant::now();
    let service = s.start(client).await.unwrap();
    let deadline = started + Duration::from_secs(300);
    while count.0.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed().as_secs_f64();
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        n,
        "{queue}: every event handled"
    );
    service.shutdown().await.unwrap();
    took
}

/// Raw lapin: consumes and acknowledges N messages, prefetch 16, no handler; seconds.
async fn raw_drain(queue: &str, n: u64) -> f64 {
    let conn = Connection::connect(&broker(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(16, BasicQosOptions::default()).await.unwrap();
    let started = Instant::now();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Acks are sent without waiting for each, as a consumer with work in flight would.
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        acks.spawn(async move { d.ack(BasicAckOptions::default()).await.unwrap() });
    }
    while acks.join_next().await.is_some() {}
    let took = started.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    took
}

/// Makes the inbox of one bench case.
type MakeInbox = fn(&PgPool) -> Inbox;

async fn inbox_table(client: &tchu::Client, pool: &PgPool, n: u64) {
    sqlx::query("CREATE TABLE bench_effects (n bigint NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let q = |name: &str| format!("bench_stores_{name}_{run}");
    let module = |m: &str| format!("{}::{m}", module_path!());
    let cases: [(&str, &str, Option<MakeInbox>); 4] = [
        ("plain handler, no inbox", "plain", None),
        (
            "dedup, Redis",
            "redis",
            Some(|_| Inbox::redis(&redis_url()).unwrap()),
        ),
        (
            "dedup, PostgreSQL",
            "pg",
            Some(|p| Inbox::postgres(p.clone())),
        ),
        (
            "dedup + a row through Tx, PostgreSQL",
            "pgwrite",
            Some(|p| Inbox::postgres(p.clone())),
        ),
    ];
    // The raw reference drains a backlog of the plain event's exact bytes.
    let raw_q = q("raw");
    declare(client, &raw_q, &module("plain"), None).await;
    tchu_queue_rebind(&raw_q).await;
    backlog(client, n, |n| Raw { n }).await;
    let raw = raw_drain(&raw_q, n).await;
    println!("\n## inbox: draining {n} events, prefetch 16\n");
    println!("| consumer | events/s | µs per event | added vs plain |");
    println!("|---|---|---|---|");
    println!(
        "| raw lapin, consume + ack | {:.0} | {:.0} | |",
        n as f64 / raw,
        raw * 1e6 / n as f64
    );
    let mut plain_us = 0.0;
    for (name, m, inbox) in cases {
        let queue = q(m);
        declare(client, &queue, &module(m), inbox.map(|f| f(pool))).await;
        match m {
            "plain" => backlog(client, n, |n| Plain { n }).await,
            "redis" => backlog(client, n, |n| ViaRedis { n }).await,
            "pg" => backlog(client, n, |n| ViaPg { n }).await,
            _ => backlog(client, n, |n| ViaPgWrite { n }).await,
        }
        let took = drain(client, &queue, &module(m), inbox.map(|f| f(pool)), n).await;
        let us = took * 1e6 / n as f64;
        if m == "plain" {
            plain_us = us;
        }
        println!(
            "| tchu, {name} | {:.0} | {us:.0} | {:+.0} µs |",
            n as f64 / took,
            us - plain_us
        );
        delete(&queue).await;
    }
    delete(&raw_q).await;
}

/// Binds the raw reference queue to the raw event's topic instead of the plain handler's.
async fn tchu_queue_rebind(queue: &str) {
    let conn = Connection::connect(&broker(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_bind(
        queue.into(),
        "tchu_events".into(),
        "bench.stores.raw".into(),
        lapin::options::QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_unbind(
        queue.into(),
        "tchu_events".into(),
        "bench.stores.plain".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn delete(queue: &str) {
    let conn = Connection::connect(&broker(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in [queue.to_owned(), format!("{queue}.dlq")] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
}

async fn outbox_table(client: &tchu::Client, pool: &PgPool, n: u64) {
    let outbox = tchu::Outbox::new(pool.clone()).await.unwrap();
    // A queue on the topic, so every publish is routable and confirmed as delivered.
    let sink = format!("bench_stores_sink_{}", uuid::Uuid::new_v4().simple());
    declare(
        client,
        &sink,
        &format!("{}::raw_sink", module_path!()),
        None,
    )
    .await;
    println!("\n## outbox: {n} events\n");
    println!("| path | events/s | µs per event |");
    println!("|---|---|---|");
    let row = |name: &str, took: f64| {
        println!(
            "| {name} | {:.0} | {:.0} |",
            n as f64 / took,
            took * 1e6 / n as f64
        );
    };
    let started = Instant::now();
    for i in 0..n {
        client.publish(&Raw { n: i }).await.unwrap();
    }
    row(
        "`Client::publish`, one at a time (confirmed)",
        started.elapsed().as_secs_f64(),
    );
    let started = Instant::now();
    backlog(client, n, |n| Raw { n }).await;
    row(
        "`Client::publish`, 64 in flight",
        started.elapsed().as_secs_f64(),
    );
    row("raw lapin, pipelined with confirms", raw_pipelined(n).await);
    let started = Instant::now();
    for i in 0..n {
        let mut tx = pool.begin().await.unwrap();
        outbox.publish(&mut tx, &Raw { n: i }).await.unwrap();
        tx.commit().await.unwrap();
    }
    row(
        "outbox writer: one event per committed transaction",
        started.elapsed().as_secs_f64(),
    );
    let started = Instant::now();
    while outbox.pending().await.unwrap() > 0 {
        outbox.relay_once(client).await.unwrap();
    }
    row(
        "outbox relay, batch 256 (publish + confirm + delete)",
        started.elapsed().as_secs_f64(),
    );
    delete(&sink).await;
}

mod raw_sink {
    use super::*;
    #[tchu::subscribe]
    async fn h(_e: Raw) {}
}

/// Raw lapin: N messages of the raw event's bytes published back to back, then every confirm.
async fn raw_pipelined(n: u64) -> f64 {
    let conn = Connection::connect(&broker(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let body = br#"[["{\"n\": 1, \"_tchu_meta\": {\"is_rpc\": false}}"], {"routing_key": "bench.stores.raw"}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
    let props = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let started = Instant::now();
    let mut confirms = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let c = ch
            .basic_publish(
                "tchu_events".into(),
                "bench.stores.raw".into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props.clone(),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    for c in confirms {
        c.await.unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    took
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3_000);
    let client = tchu::Client::connect(&broker()).await.expect("RabbitMQ");
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let pool = scoped_pool(&schema).await;
    inbox_table(&client, &pool, n).await;
    outbox_table(&client, &pool, n).await;
    pool.close().await;
    let admin = PgPool::connect(&database()).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    client.close().await;
}
