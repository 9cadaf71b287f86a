//! `Client::publish_all`: many events at once, confirms pipelined, on a real RabbitMQ. Every
//! event is confirmed and arrives once, in order; an event nobody subscribes to is reported as
//! unroutable while the others are delivered; one that does not encode is reported and the
//! rest are sent; on the in-memory broker the same.
#![cfg(feature = "service")]

mod common;

use lapin::options::QueueBindOptions;
use std::time::Duration;

#[tchu::event(topic = "it.publish_all.tick")]
struct Tick {
    seq: u64,
}

#[tchu::event(topic = "it.publish_all.nobody")]
struct Nobody {
    seq: u64,
}

/// Serialises to a JSON string, which is no event object: it cannot be encoded.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NotAnObject(u64);

impl serde::Serialize for NotAnObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 0 {
            s.serialize_str("not an object")
        } else {
            let mut m = std::collections::BTreeMap::new();
            m.insert("seq", self.0);
            serde::Serialize::serialize(&m, s)
        }
    }
}

impl tchu::Event for NotAnObject {
    const TOPIC: &'static str = "it.publish_all.mixed";
}

#[tokio::test]
async fn every_event_is_confirmed_once_and_arrives_in_order() {
    let queue = common::unique("it_publish_all");
    let (_conn, ch) = common::channel().await;
    ch.queue_declare(
        queue.as_str().into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    for key in ["it.publish_all.tick", "it.publish_all.mixed"] {
        ch.queue_bind(
            queue.as_str().into(),
            "tchu_events".into(),
            key.into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();

    // More than four windows of confirms.
    let ticks: Vec<Tick> = (0..1_100).map(|seq| Tick { seq }).collect();
    let results = client.publish_all(&ticks).await;
    assert_eq!(results.len(), ticks.len());
    let ids: Vec<String> = results.into_iter().map(|r| r.expect("confirmed")).collect();
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "one id per event");
    let got = common::drain_at_least(&ch, &queue, ticks.len(), Duration::from_secs(30)).await;
    let seqs: Vec<u64> = got.iter().map(|m| seq_of(&m.delivery.data)).collect();
    assert_eq!(seqs, (0..1_100).collect::<Vec<_>>(), "each once, in order");

    // Nobody subscribes to this topic: each is unroutable, none is lost silently.
    let nobody: Vec<Nobody> = (0..3).map(|seq| Nobody { seq }).collect();
    let results = client.publish_all(&nobody).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(tchu::Error::Unroutable { .. }))),
        "{results:?}"
    );

    // The first does not encode: reported, and the others are sent.
    let mixed = [NotAnObject(0), NotAnObject(1), NotAnObject(2)];
    let results = client.publish_all(&mixed).await;
    assert!(
        matches!(results[0], Err(tchu::Error::Encode(_))),
        "{results:?}"
    );
    assert!(results[1].is_ok() && results[2].is_ok(), "{results:?}");
    let got = common::drain_at_least(&ch, &queue, 2, Duration::from_secs(10)).await;
    let seqs: Vec<u64> = got.iter().map(|m| seq_of(&m.delivery.data)).collect();
    assert_eq!(seqs, [1, 2]);

    client.close().await;
    common::delete_queues(&ch, &[&queue]).await;
}

#[tokio::test]
async fn in_memory_the_same() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    let handle = tchu::Service::new(common::unique("mem_publish_all"))
        .handlers_in(concat!(module_path!(), "::none"))
        .on::<Tick>(move |t| {
            kept.lock().unwrap().push(t.seq);
            async {}
        })
        .start(&client)
        .await
        .unwrap();
    let ticks: Vec<Tick> = (0..300).map(|seq| Tick { seq }).collect();
    let results = client.publish_all(&ticks).await;
    assert!(results.iter().all(Result::is_ok));
    let all = common::wait_until(Duration::from_secs(10), || {
        seen.lock().unwrap().len() == 300
    });
    assert!(all.await);
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    handle.shutdown().await.unwrap();
}

/// No attribute handlers in this file's services.
mod none {}

/// The `seq` of a Celery v2 body (`[["{\"seq\": n, ...}"], {...}, {...}]`: the event is a
/// JSON string, as Python's `json.dumps` made it).
fn seq_of(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let inner: serde_json::Value = serde_json::from_str(v[0][0].as_str().unwrap()).unwrap();
    inner["seq"].as_u64().unwrap()
}
