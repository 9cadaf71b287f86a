//! The publish-only producer: confirmed events a service receives, in either Celery format, and
//! the serverless-style example.
#![cfg(feature = "service")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

#[tchu::event(topic = "producer.test.event")]
struct Ping {
    n: u64,
}

#[derive(Default)]
struct Seen {
    got: Mutex<Vec<(u64, tchu::Format)>>,
}

mod svc {
    use super::*;
    #[tchu::subscribe]
    async fn ping(p: Ping, msg: Message, seen: State<Seen>) {
        seen.got.lock().unwrap().push((p.n, msg.format()));
    }
}

#[tokio::test]
async fn producer_publishes_confirmed_events_a_service_receives() {
    let queue = common::unique("producer_svc");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let seen = Arc::new(Seen::default());
    let svc = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();

    let producer = tchu::Producer::connect(&common::broker_url())
        .await
        .unwrap();
    for n in 0..5 {
        producer.publish(&Ping { n }).await.unwrap();
    }
    producer.close().await;
    // tchu-tchu's serverless form (Celery v1), and a producer dropped without `close`.
    let v1 = tchu::Producer::connect(&common::broker_url())
        .await
        .unwrap()
        .with_format(tchu::Format::CeleryV1);
    v1.publish_raw("producer.test.event", &serde_json::json!({"n": 5}))
        .await
        .unwrap();
    drop(v1);
    // For a tchu-tchu 2.x fleet: the serverless form without `_tchu_meta`.
    let (_rc, rch) = common::channel().await;
    let (_rq, mut raw) = common::temp_queue(&rch, Some("producer.test.event")).await;
    let v1_2x = tchu::Producer::connect(&common::broker_url())
        .await
        .unwrap()
        .with_format(tchu::Format::CeleryV1)
        .with_tchu_tchu(tchu::TchuTchu::V2);
    v1_2x
        .publish_raw("producer.test.event", &serde_json::json!({"n": 6}))
        .await
        .unwrap();
    v1_2x.close().await;
    let d = tokio::time::timeout(
        Duration::from_secs(10),
        futures_lite::StreamExt::next(&mut raw),
    )
    .await
    .expect("the raw copy")
    .unwrap()
    .unwrap();
    let body = String::from_utf8_lossy(&d.data).into_owned();
    assert!(
        body.contains(r#""args": ["{\"n\": 6}"]"#),
        "the payload alone: {body}"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.got.lock().unwrap().len() < 7 {
        assert!(
            Instant::now() < deadline,
            "got {:?}",
            seen.got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = seen.got.lock().unwrap().clone();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6]
    );
    assert!(got[..5].iter().all(|g| g.1 == tchu::Format::CeleryV2));
    assert_eq!(got[5].1, tchu::Format::CeleryV1);
    assert_eq!(got[6].1, tchu::Format::CeleryV1);
    svc.shutdown().await.unwrap();
    let (_c, ch) = common::channel().await;
    common::delete_queues(&ch, &[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test]
async fn the_serverless_example_accepts_valid_orders_and_rejects_bad_input() {
    let (_c, ch) = common::channel().await;
    let (_q, mut consumer) = common::temp_queue(&ch, Some("order.placed")).await;
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(common::example("lambda"))
            .env(tchu::BROKER_URL_ENV, common::broker_url())
            .args([r#"{"order_id": 77, "amount_cents": 5}"#, "not json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("202 accepted order 77"), "{stdout}");
    assert!(stdout.contains("400 bad request"), "{stdout}");
    use futures_lite::StreamExt;
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&d.data).contains(r#"\"order_id\": 77"#));
}
