//! The transactional outbox on PostgreSQL and RabbitMQ: a rolled-back transaction publishes
//! nothing; committed events arrive in order per transaction, in tchu-tchu's wire format; a
//! relay that dies mid-batch (after its publishes were confirmed, before it deleted them)
//! publishes that batch again on restart, and the inbox of the consumer removes the copies.
#![cfg(all(feature = "service", feature = "postgres", feature = "redis"))]

mod common;

use futures_lite::StreamExt;
use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tchu::sqlx::{self, PgPool};

/// Collects the JSON payloads (args[0] of the Celery body) a temp queue receives, until `n`
/// arrived or `within` passed.
async fn collect(
    consumer: &mut lapin::Consumer,
    n: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let Ok(Some(Ok(d))) = next else { break };
        out.push(payload(&d.data));
    }
    out
}

/// The event payload of a Celery v2 body: `[[<json string>], {...}, {...}]`.
fn payload(body: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let inner = v[0][0].as_str().expect("a Celery v2 body");
    serde_json::from_str(inner).unwrap()
}

/// Runs the outbox's relay beside the test until the sender is used (or dropped).
fn spawn_relay(
    outbox: &tchu::Outbox,
    client: &tchu::Client,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (relay, client) = (outbox.relay(), client.clone());
    let handle = tokio::spawn(async move {
        relay
            .run_until(&client, async { drop(stopped.await) })
            .await;
    });
    (stop, handle)
}

/// Relays until the outbox is empty (bounded).
async fn relay_all(outbox: &tchu::Outbox, client: &tchu::Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox.pending().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the outbox did not empty");
        outbox.relay_once(client).await.unwrap();
    }
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing() {
    let (_, pool) = common::scoped_database("outbox").await;
    let outbox = tchu::Outbox::new(pool.clone()).await.unwrap();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let topic = format!("outbox.test.{}", uuid::Uuid::new_v4().simple());
    let (_conn, ch) = common::channel().await;
    let (_q, mut received) = common::temp_queue(&ch, Some(&topic)).await;

    let mut tx = pool.begin().await.unwrap();
    let json = serde_json::json!({ "n": "rolled back" });
    outbox.publish_raw(&mut tx, &topic, &json).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let json = serde_json::json!({ "n": "committed" });
    outbox.publish_raw(&mut tx, &topic, &json).await.unwrap();
    tx.commit().await.unwrap();
    relay_all(&outbox, &client).await;

    let got = collect(&mut received, 2, Duration::from_secs(2)).await;
    let got: Vec<&serde_json::Value> = got.iter().map(|v| &v["n"]).collect();
    assert_eq!(got, vec!["committed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_arrive_in_order_per_transaction_in_tchu_tchus_format() {
    let (_, pool) = common::scoped_database("outbox").await;
    let outbox = tchu::Outbox::new(pool.clone()).await.unwrap().batch_size(7);
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let topic = format!("outbox.test.{}", uuid::Uuid::new_v4().simple());
    let (_conn, ch) = common::channel().await;
    let (_q, mut received) = common::temp_queue(&ch, Some(&topic)).await;
    // The relay runs beside the writers, woken by their notifications.
    let (stop, relay) = spawn_relay(&outbox, &client);
    let mut writers = tokio::task::JoinSet::new();
    for t in 0..5u32 {
        let (pool, outbox, topic) = (pool.clone(), outbox.clone(), topic.clone());
        writers.spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            for seq in 0..20u32 {
                let json = serde_json::json!({ "tx": t, "seq": seq });
                outbox.publish_raw(&mut tx, &topic, &json).await.unwrap();
            }
            tx.commit().await.unwrap();
        });
    }
    while writers.join_next().await.is_some() {}

    let got = collect(&mut received, 100, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 100, "every committed event arrived");
    let mut last: HashMap<u64, i64> = HashMap::new();
    for v in &got {
        // tchu-tchu's own args[0]: the payload with its `_tchu_meta`.
        assert_eq!(v["_tchu_meta"], serde_json::json!({ "is_rpc": false }));
        let (t, seq) = (v["tx"].as_u64().unwrap(), v["seq"].as_i64().unwrap());
        let prev = last.insert(t, seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "transaction {t}: {seq} after {prev}");
    }
    let _ = stop.send(());
    relay.await.unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_nacks_waits_in_the_outbox_until_the_broker_takes_it() {
    let (_, pool) = common::scoped_database("outbox_nack").await;
    let outbox = tchu::Outbox::new(pool.clone()).await.unwrap();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let topic = format!("outbox.nack.{}", uuid::Uuid::new_v4().simple());
    let (_conn, ch) = common::channel().await;
    let queue = common::reject_publish_queue(&ch, &topic).await;
    let filler = serde_json::json!({ "n": "filler" });
    client.publish_raw(&topic, &filler).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let json = serde_json::json!({ "n": "from the outbox" });
    outbox.publish_raw(&mut tx, &topic, &json).await.unwrap();
    tx.commit().await.unwrap();
    let (stop, relay) = spawn_relay(&outbox, &client);
    // Nacked for 4 s: more than five tries of the relay.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM tchu_outbox_parked")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "a nacked message was parked");
    assert_eq!(common::drain(&ch, &queue).await.len(), 1, "the filler");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = common::drain(&ch, &queue).await;
    }
    assert_eq!(
        got.len(),
        1,
        "the outbox's message reached the queue once room was made"
    );
    assert_eq!(payload(&got[0].data)["n"], "from the outbox");
    let _ = stop.send(());
    relay.await.unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 0);
    common::delete_queues(&ch, &[&queue]).await;
}

#[tchu::event(topic = "outbox.test.killed")]
struct Numbered {
    seq: u32,
}

#[derive(Default)]
struct Seen(Mutex<HashMap<u32, u32>>);

mod consumer {
    use super::*;
    use tchu::State;

    #[tchu::subscribe(dedup(key = "seq"))]
    async fn seen(n: Numbered, seen: State<Seen>) {
        *seen.0.0.lock().unwrap().entry(n.seq).or_default() += 1;
    }
}

/// Runs `tchu outbox relay` on the scoped database; `fault` makes it die at that point.
fn relay_process(db: &str, batch: usize, fault: Option<&str>) -> common::KillOnDrop {
    let mut cmd = Command::new(common::tchu_bin());
    cmd.args(["outbox", "relay", "--batch", &batch.to_string()])
        .args(["--database-url", db])
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("RUST_LOG", "warn");
    if let Some(f) = fault {
        cmd.env("TCHU_FAULT", f);
    }
    common::KillOnDrop(cmd.spawn().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_dead_mid_batch_repeats_only_that_batch_and_the_inbox_drops_the_copies() {
    const N: u32 = 2_000;
    const BATCH: usize = 300;
    let (db, pool) = common::scoped_database("outbox").await;
    let outbox = tchu::Outbox::new(pool.clone()).await.unwrap();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let (_conn, ch) = common::channel().await;
    let (_q, mut raw) = common::temp_queue(&ch, Some("outbox.test.killed")).await;
    let seen = std::sync::Arc::new(Seen::default());
    let queue = common::unique("outbox_consumer");
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::consumer"))
        .state_arc(seen.clone())
        .prefetch(64)
        .inbox(tchu::Inbox::redis(&redis).unwrap())
        .start(&client)
        .await
        .unwrap();
    // The inbox key is the payload's `seq`: a fresh namespace per run, by a fresh queue.
    for t in 0..N / 100 {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..100 {
            outbox
                .publish(&mut tx, &Numbered { seq: t * 100 + i })
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    // The first relay publishes its first batch, has it confirmed, and dies before deleting it.
    let mut first = relay_process(&db, BATCH, Some("exit-after-relay-publish"));
    let status = tokio::task::spawn_blocking(move || first.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(86), "the relay died at the fault point");
    assert_eq!(
        outbox.pending().await.unwrap(),
        i64::from(N),
        "nothing was deleted"
    );
    let _second = relay_process(&db, BATCH, None);

    let got = collect(&mut raw, N as usize + BATCH, Duration::from_secs(60)).await;
    let mut copies: HashMap<u64, u32> = HashMap::new();
    for v in &got {
        *copies.entry(v["seq"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(copies.len(), N as usize, "every event arrived");
    let twice: Vec<u64> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        copies.values().all(|n| *n <= 2),
        "no event arrived three times"
    );
    assert_eq!(
        twice.len(),
        BATCH,
        "exactly the dead relay's batch arrived twice"
    );
    assert!(
        twice.iter().all(|s| *s < BATCH as u64),
        "the copies are the first batch: {twice:?}"
    );
    assert!(
        common::wait_until(Duration::from_secs(30), || seen.0.lock().unwrap().len()
            == N as usize)
        .await,
        "the consumer saw every event"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.shutdown().await.unwrap();
    let once = seen.0.lock().unwrap().values().all(|n| *n == 1);
    assert!(once, "the inbox ran each event once");
    common::delete_service_queues(&queue).await;
    assert_eq!(outbox.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn the_schema_commands_print_what_tchu_creates() {
    for (store, sql) in [
        ("inbox", tchu::sql::INBOX_SCHEMA),
        ("outbox", tchu::sql::OUTBOX_SCHEMA),
    ] {
        let out = Command::new(common::tchu_bin())
            .args([store, "schema"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim_end(),
            sql.trim_end()
        );
    }
    // And the printed SQL is what a migration can apply: idempotent, on an empty schema.
    let (_, pool) = common::scoped_database("schema").await;
    for _ in 0..2 {
        sqlx::raw_sql(tchu::sql::INBOX_SCHEMA)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(tchu::sql::OUTBOX_SCHEMA)
            .execute(&pool)
            .await
            .unwrap();
    }
    let outbox = tchu::Outbox::unmanaged(pool.clone());
    assert_eq!(outbox.pending().await.unwrap(), 0);
    let _: &PgPool = outbox.pool();
}
