//! Fault test: RabbitMQ is stopped and started (`rabbitmqctl stop_app` / `start_app`) while
//! 10,000 events are being published and consumed. Every confirmed event must be handled at
//! least once; duplicates are counted and bounded by what can be in flight. Its own test binary: it stops the broker.
#![cfg(feature = "service")]
#![allow(
    clippy::too_many_lines,
    reason = "a scenario test reads top to bottom, one step after the other"
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tchu::event(topic = "fault.restart.tick")]
struct Tick {
    seq: u64,
}

#[derive(Default)]
struct Handled {
    counts: Mutex<HashMap<u64, u32>>,
}

mod svc {
    use super::*;
    use tchu::State;

    #[tchu::subscribe]
    async fn tick(t: Tick, handled: State<Handled>) {
        *handled.counts.lock().unwrap().entry(t.seq).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_event_survives_a_broker_restart_mid_stream() {
    const N: u64 = 10_000;
    // The service's log is printed when the test fails: where it stood is the first question.
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "tchu=info,tchu_runtime=info".into()),
        )
        .with_test_writer()
        .init();
    let queue = common::unique("fault_restart");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let handled = Arc::new(Handled::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(handled.clone())
        .prefetch(64)
        .start(&client)
        .await
        .unwrap();
    let seen_states = common::record_states(&service);

    // Publish from 8 tasks; record which sequence numbers the broker confirmed.
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let mut publishers = tokio::task::JoinSet::new();
    for lane in 0..8u64 {
        let (client, confirmed, failed) = (client.clone(), confirmed.clone(), failed.clone());
        publishers.spawn(async move {
            let mut seq = lane;
            while seq < N {
                match client.publish(&Tick { seq }).await {
                    Ok(_) => confirmed.lock().unwrap().push(seq),
                    Err(e) => failed.lock().unwrap().push((seq, e.to_string())),
                }
                seq += 8;
            }
        });
    }
    // Restart the broker twice, once a quarter and once half of the events are through: each
    // time the connection dies mid-stream, acknowledgements on their way (measured: lapin 4.12
    // can leave one pending for good, and the quarantine waited on it before settlements
    // ended with their channel).
    for share in [4, 2] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while confirmed.lock().unwrap().len() < (N / share) as usize {
            assert!(
                Instant::now() < deadline,
                "publishing stalled before a restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let restart = tokio::task::spawn_blocking(|| {
            common::rabbitmqctl(&["stop_app"]);
            std::thread::sleep(Duration::from_secs(1));
            common::rabbitmqctl(&["start_app"]);
        });
        restart.await.unwrap();
    }
    let publishing = tokio::time::timeout(Duration::from_secs(180), async {
        while publishers.join_next().await.is_some() {}
    })
    .await;
    assert!(publishing.is_ok(), "publishing did not finish within 180 s");

    let confirmed: Vec<u64> = confirmed.lock().unwrap().clone();
    let failed = failed.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = {
            let counts = handled.counts.lock().unwrap();
            confirmed.iter().filter(|s| !counts.contains_key(s)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} confirmed events were never handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let duplicates: u32 = handled.counts.lock().unwrap().values().map(|c| c - 1).sum();
    println!(
        "restart test: {} confirmed, {} publish errors (never confirmed, so never reported as sent), {} duplicate deliveries",
        confirmed.len(),
        failed.len(),
        duplicates
    );
    assert_eq!(confirmed.len() + failed.len(), N as usize);
    // The outage (a few seconds) is well within the 30 s publish deadline: every publish
    // waits through it and is confirmed.
    assert!(
        failed.is_empty(),
        "{} publishes failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    // A duplicate is a delivery handled whose ack was lost with the connection (at most the
    // prefetch, 64, were in flight) or a publish confirmed by nobody and sent again (at most
    // one per publishing task, 8).
    assert!(
        duplicates <= 64 + 8,
        "{duplicates} duplicates: more than could have been in flight"
    );
    let went_through = seen_states.lock().unwrap().clone();
    let reconnecting = went_through
        .iter()
        .position(|s| *s == tchu::ServiceState::Reconnecting);
    assert!(
        reconnecting.is_some_and(|i| went_through[i..].contains(&tchu::ServiceState::Consuming)),
        "the service reported the outage and came back: {went_through:?}"
    );
    assert_eq!(
        service.state(),
        tchu::ServiceState::Consuming,
        "the service consumes again"
    );
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}
