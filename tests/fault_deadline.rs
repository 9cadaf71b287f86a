//! Fault test: with the broker down longer than the publish deadline, a publish fails with a
//! clear error instead of hanging or reporting success; once the broker is back, publishing
//! works again on the same client. Its own test binary: it stops the broker.
#![cfg(feature = "service")]

mod common;

use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_during_a_long_outage_fails_after_the_deadline() {
    let queue = common::unique("fault_deadline");
    let (_c, ch) = common::channel().await;
    ch.queue_declare(
        queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        "tchu_events".into(),
        "fault.deadline".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let client = tchu::Client::builder()
        .url(common::broker_url())
        .publish_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    client
        .publish_raw("fault.deadline", &serde_json::json!({"n": 1}))
        .await
        .unwrap();

    tokio::task::spawn_blocking(|| common::rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    let started = Instant::now();
    let err = client
        .publish_raw("fault.deadline", &serde_json::json!({"n": 2}))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    tokio::task::spawn_blocking(|| common::rabbitmqctl(&["start_app"]))
        .await
        .unwrap();
    assert!(matches!(err, tchu::Error::Disconnected { .. }), "{err:?}");
    assert!(err.to_string().contains("may not have been taken"), "{err}");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );

    // Back up: the same client publishes again (confirmed) once it has reconnected; until
    // then each try fails after its 2 s, unsent.
    let back = Instant::now() + Duration::from_secs(60);
    loop {
        match client
            .publish_raw("fault.deadline", &serde_json::json!({"n": 3}))
            .await
        {
            Ok(_) => break,
            Err(tchu::Error::Disconnected { .. }) if Instant::now() < back => {}
            Err(e) => panic!("after the restart: {e:?}"),
        }
    }
    let (_c, ch) = common::channel().await;
    let got = common::drain_at_least(&ch, &queue, 2, Duration::from_secs(10)).await;
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.delivery.data).into_owned())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies.iter().all(|b| !b.contains("\\\"n\\\": 2")),
        "the failed publish must not have been sent"
    );
    common::delete_queues(&ch, &[&queue]).await;
}
