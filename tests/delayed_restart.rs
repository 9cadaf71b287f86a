//! A delayed event is held by the broker, not by the publisher: it survives the publisher's
//! exit and a restart of RabbitMQ itself (`rabbitmqctl stop_app` / `start_app`), and arrives
//! when due; levels deleted behind a client's back are declared again. Its own test binary: it
//! stops the broker.
#![cfg(feature = "service")]

mod common;

use common::{channel, drain_at_least, unique};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::time::{Duration, Instant};
use tchu::{Client, PublishOptions};

#[tokio::test]
async fn a_delayed_event_survives_its_publisher_and_a_broker_restart() {
    let topic = format!("it.delay.restart.{}", unique("t"));
    let queue = unique("it_delay_restart");
    {
        let (_conn, ch) = channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let (q, t) = (queue.as_str(), topic.as_str());
        ch.queue_declare(q.into(), durable, FieldTable::default())
            .await
            .unwrap();
        let bind = QueueBindOptions::default();
        ch.queue_bind(
            q.into(),
            "tchu_events".into(),
            t.into(),
            bind,
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let sent = Instant::now();
    {
        let client = Client::connect(&common::broker_url()).await.unwrap();
        let options = PublishOptions::new().delay(Duration::from_secs(12));
        let payload = serde_json::json!({ "n": 1 });
        client
            .publish_raw_with(&topic, &payload, &options)
            .await
            .unwrap();
        client.close().await;
    }
    {
        let _restart = common::StartAppOnDrop;
        common::rabbitmqctl(&["stop_app"]);
        common::rabbitmqctl(&["start_app"]);
        common::rabbitmqctl(&["await_startup"]);
    }
    let (_conn, ch) = channel().await;
    let got = drain_at_least(&ch, &queue, 1, Duration::from_secs(40)).await;
    let after = sent.elapsed();
    common::delete_queues(&ch, &[&queue]).await;
    assert_eq!(got.len(), 1, "the delayed event was lost in the restart");
    assert!(
        after >= Duration::from_secs(12),
        "arrived after {after:?}, before it was due"
    );
    assert!(String::from_utf8_lossy(&got[0].delivery.data).contains("\\\"n\\\": 1"));

    delay_levels_deleted_behind_a_clients_back_are_declared_again().await;
}

/// The second part of the test (deleting a level would disturb tests running beside it):
/// levels deleted behind a client's back are declared again by its next delayed publish.
async fn delay_levels_deleted_behind_a_clients_back_are_declared_again() {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions, QueuePurgeOptions};
    let client = Client::connect(&common::broker_url()).await.unwrap();
    let topic = format!("it.delay.{}", unique("gone"));
    let far = Duration::from_millis((1 << 20) + 1); // level 20: no other test waits there
    let payload = serde_json::json!({ "n": 1 });
    let options = PublishOptions::new().delay(far);
    client
        .publish_raw_with(&topic, &payload, &options)
        .await
        .unwrap();
    let (_conn, ch) = channel().await;
    let level = tchu::delay::level_name(20);
    ch.queue_delete(level.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(level.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    // The client declared the levels before: its next delayed publish finds them gone.
    client
        .publish_raw_with(&topic, &payload, &options)
        .await
        .unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(level.as_str().into(), passive, FieldTable::default())
        .await
        .expect("the level's queue is back");
    assert_eq!(q.message_count(), 1, "the second event waits there");
    let _ = ch
        .queue_purge(level.as_str().into(), QueuePurgeOptions::default())
        .await;
}
