//! A message the broker keeps refusing (here: over RabbitMQ's `max_message_size`, lowered for
//! the test) neither stops the outbox nor is lost: the relay parks it in `tchu_outbox_parked`
//! with the reason after five refusals, and the events behind it go out. Its own test binary:
//! it changes a broker-wide setting.
#![cfg(all(feature = "service", feature = "postgres"))]

mod common;

use futures_lite::StreamExt;
use std::time::Duration;

const DEFAULT_MAX: &str = "134217728";

/// Puts the broker's limit back even when an assertion fails.
struct RestoreMaxSize;

impl Drop for RestoreMaxSize {
    fn drop(&mut self) {
        set_max_message_size(DEFAULT_MAX);
    }
}

fn set_max_message_size(bytes: &str) {
    common::rabbitmqctl(&[
        "eval",
        &format!("application:set_env(rabbit, max_message_size, {bytes})."),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_is_parked_and_the_rest_go_out() {
    let _restore = RestoreMaxSize;
    set_max_message_size("8192");
    let (_, pool) = common::scoped_database("outbox_refused").await;
    let outbox = tchu::Outbox::new(pool.clone())
        .await
        .unwrap()
        .poll_interval(Duration::from_millis(50));
    // Connected after the change: channels read the limit when they open.
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let topic = format!("outbox.refused.{}", uuid::Uuid::new_v4().simple());
    let (_conn, ch) = common::channel().await;
    let (_q, mut received) = common::temp_queue(&ch, Some(&topic)).await;
    let mut tx = pool.begin().await.unwrap();
    for (seq, pad) in [(0, 10), (1, 20_000), (2, 10)] {
        let json = serde_json::json!({ "seq": seq, "pad": "x".repeat(pad) });
        outbox.publish_raw(&mut tx, &topic, &json).await.unwrap();
    }
    tx.commit().await.unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = {
        let (relay, client) = (outbox.relay(), client.clone());
        tokio::spawn(async move {
            relay
                .run_until(&client, async { drop(stopped.await) })
                .await
        })
    };
    // First arrivals, in order: a message sent before the refusal whose confirm the closing
    // channel lost is published again (at least once), which the consumer's inbox absorbs.
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seqs.contains(&2) {
        let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, received.next()).await else {
            break;
        };
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        let v: serde_json::Value = serde_json::from_str(body[0][0].as_str().unwrap()).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        if !seqs.contains(&seq) {
            seqs.push(seq);
        }
    }
    assert_eq!(seqs, vec![0, 2], "the small events went out, in order");
    // The relay deletes after the broker confirmed: the table catches up a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut left = (-1, -1);
    while tokio::time::Instant::now() < deadline {
        left = (
            outbox.pending().await.unwrap(),
            outbox.parked().await.unwrap(),
        );
        if left == (0, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, (0, 1), "nothing pending; the big one parked, only it");
    let (reason,): (String,) = tchu::sqlx::query_as("SELECT reason FROM tchu_outbox_parked")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(reason.starts_with("refused 5 times"), "{reason}");
    let _ = stop.send(());
    relay.await.unwrap();
    // The client publishes on afterwards.
    client
        .publish_raw(&topic, &serde_json::json!({ "seq": 3 }))
        .await
        .unwrap();
}
