//! The outbox while RabbitMQ is down (`rabbitmqctl stop_app`): 10,000 events committed in 100
//! transactions wait in the table, and once the broker is back (`start_app`) the relay
//! delivers every one, in order per transaction. Its own test binary: it stops the broker.
#![cfg(all(feature = "service", feature = "postgres"))]

mod common;

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_committed_while_the_broker_is_down_all_arrive_in_order() {
    const TRANSACTIONS: u64 = 100;
    const PER_TX: u64 = 100;
    let (_, pool) = common::scoped_database("outbox_restart").await;
    let outbox = tchu::Outbox::new(pool.clone()).await.unwrap();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    // A durable queue of the test's own survives the broker's restart.
    let queue = common::unique("outbox_restart");
    let topic = format!("outbox.restart.{}", uuid::Uuid::new_v4().simple());
    declare_durable(&queue, &topic).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = {
        let (relay, client) = (outbox.relay(), client.clone());
        tokio::spawn(async move {
            relay
                .run_until(&client, async { drop(stopped.await) })
                .await
        })
    };

    let _restart = common::StartAppOnDrop;
    common::rabbitmqctl(&["stop_app"]);
    for t in 0..TRANSACTIONS {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..PER_TX {
            let json = serde_json::json!({ "tx": t, "seq": i });
            outbox.publish_raw(&mut tx, &topic, &json).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    // The relay keeps failing meanwhile; nothing leaves the table.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = TRANSACTIONS * PER_TX;
    assert_eq!(outbox.pending().await.unwrap(), total as i64);
    common::rabbitmqctl(&["start_app"]);
    common::rabbitmqctl(&["await_startup"]);

    let (_conn, ch) = common::channel().await;
    let (first_seen, copies) = receive(&ch, &queue, total).await;
    assert_eq!(copies.len() as u64, total, "every committed event arrived");
    let mut last: HashMap<u64, i64> = HashMap::new();
    for (t, seq) in &first_seen {
        let prev = last.insert(*t, *seq as i64).unwrap_or(-1);
        assert_eq!(*seq as i64, prev + 1, "transaction {t}: {seq} after {prev}");
    }
    let _ = stop.send(());
    relay.await.unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 0, "the table emptied");
    common::delete_queues(&ch, &[&queue]).await;
}

/// A durable queue bound to `topic`: it survives the broker's restart.
async fn declare_durable(queue: &str, topic: &str) {
    let (_conn, ch) = common::channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .unwrap();
    let options = QueueBindOptions::default();
    ch.queue_bind(
        queue.into(),
        "tchu_events".into(),
        topic.into(),
        options,
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Takes events from `queue` until `total` distinct ones arrived (bounded): the order in which
/// each first arrived, and how many copies of each.
async fn receive(
    ch: &lapin::Channel,
    queue: &str,
    total: u64,
) -> (Vec<(u64, u64)>, HashMap<(u64, u64), u32>) {
    let mut first_seen: Vec<(u64, u64)> = Vec::new();
    let mut copies: HashMap<(u64, u64), u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (copies.len() as u64) < total && Instant::now() < deadline {
        let got = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        let Some(m) = got else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
        let v: serde_json::Value = serde_json::from_str(body[0][0].as_str().unwrap()).unwrap();
        let key = (v["tx"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
        let n = copies.entry(key).or_default();
        *n += 1;
        if *n == 1 {
            first_seen.push(key);
        }
    }
    (first_seen, copies)
}
