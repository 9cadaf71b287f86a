//! Fault test: the service's topology disappears while it runs, and the service re-creates it.
//! Three faults, one after the other, on one running service: its queue deleted; its bindings
//! removed and every connection closed; the broker node reset (`rabbitmqctl reset`: exchange,
//! queues, bindings, all gone). After each, the queue, its dead-letter queue and every binding
//! exist again, and an event published then is handled. Its own test binary: it resets the node.
#![cfg(feature = "service")]

mod common;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

#[tchu::event(topic = "fault.topology.tick")]
struct Tick {
    seq: u64,
}

#[derive(Default)]
struct Seen {
    last: AtomicU64,
}

mod svc {
    use super::*;

    #[tchu::subscribe]
    async fn tick(t: Tick, seen: State<Seen>) {
        seen.last.fetch_max(t.seq, Ordering::SeqCst);
    }

    #[tchu::subscribe("fault.topology.#")]
    async fn everything(_m: Message) {}
}

/// Every state the service went through, in order.
type States = Arc<Mutex<Vec<tchu::ServiceState>>>;

/// Waits until the service has reported an outage since `from` and consumes again.
async fn recovered(states: &States, from: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = states.lock().unwrap()[from..].to_vec();
        let lost = seen
            .iter()
            .position(|s| *s == tchu::ServiceState::Reconnecting);
        if lost.is_some_and(|i| seen[i..].contains(&tchu::ServiceState::Consuming)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the service did not recover: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The queue and its dead-letter queue exist, and every binding is back.
async fn topology_is_back(queue: &str, bindings: &[String]) {
    let (_c, ch) = common::channel().await;
    for q in [queue.to_owned(), format!("{queue}.dlq")] {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{q} was not re-declared: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut got = common::bindings_of(queue);
        got.sort();
        if got == bindings {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bindings {got:?}, want {bindings:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An event published now is routed and handled.
async fn handled(client: &tchu::Client, seen: &Seen, seq: u64) {
    client
        .publish(&Tick { seq })
        .await
        .unwrap_or_else(|e| panic!("event {seq}: {e}"));
    assert!(
        common::wait_until(Duration::from_secs(10), || seen.last.load(Ordering::SeqCst)
            >= seq)
        .await,
        "event {seq} was not handled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_re_creates_its_topology_after_it_was_removed() {
    let queue = common::unique("fault_topology");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let seen = Arc::new(Seen::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    let mut bindings = service.bindings().to_vec();
    bindings.sort();
    let states = common::record_states(&service);
    handled(&client, &seen, 1).await;

    // 1. The queue is deleted behind the service's back: the broker cancels its consumer.
    let from = states.lock().unwrap().len();
    common::delete_service_queues(&queue).await;
    recovered(&states, from, "queue deleted").await;
    topology_is_back(&queue, &bindings).await;
    handled(&client, &seen, 2).await;

    // 2. Its bindings are removed, then every connection is closed.
    let from = states.lock().unwrap().len();
    {
        let (_c, ch) = common::channel().await;
        for key in &bindings {
            ch.queue_unbind(
                queue.as_str().into(),
                tchu::EXCHANGE.into(),
                key.as_str().into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
    }
    assert!(common::bindings_of(&queue).is_empty());
    common::rabbitmqctl(&["close_all_connections", "tchu fault test"]);
    recovered(&states, from, "bindings removed, connections closed").await;
    topology_is_back(&queue, &bindings).await;
    handled(&client, &seen, 3).await;

    // 3. The node is reset: the exchange, every queue and binding are gone.
    let from = states.lock().unwrap().len();
    tokio::task::spawn_blocking(|| {
        common::rabbitmqctl(&["stop_app"]);
        common::rabbitmqctl(&["reset"]);
        common::rabbitmqctl(&["start_app"]);
        common::rabbitmqctl(&["await_startup"]);
    })
    .await
    .unwrap();
    recovered(&states, from, "node reset").await;
    topology_is_back(&queue, &bindings).await;
    handled(&client, &seen, 4).await;

    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
    client.close().await;
}
