//! Checklist item 25: persistent events survive a broker restart, for a Rust and a Python
//! service alike. In its own test binary because it stops and starts RabbitMQ.
#![cfg(feature = "service")]

mod common;
mod python;

use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

/// Its own Python queue: a worker of the other interop binary may still be shutting down on
/// the shared one.
const PY_QUEUE: &str = "tchu_interop_py_restart";

#[derive(Default)]
struct Seen {
    events: Mutex<Vec<serde_json::Value>>,
}

mod rs {
    use super::*;
    #[tchu::subscribe("interop.restart.rust")]
    async fn restart(m: Message, seen: State<Seen>) {
        seen.events.lock().unwrap().push(m.payload().clone());
    }
}

async fn wait_for_broker() {
    let deadline = Instant::now() + Duration::from_secs(120);
    while tchu::Client::connect(&common::broker_url()).await.is_err() {
        assert!(Instant::now() < deadline, "RabbitMQ did not come back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn item25_queued_events_survive_a_broker_restart_on_both_sides() {
    let queue = common::unique("tchu_interop_restart");
    let marker = common::unique("m");
    // Declare the Python queue and its bindings (no worker yet) and the Rust service's topology.
    let _ = tokio::task::spawn_blocking(python::venv).await.unwrap();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let seen = Arc::new(Seen::default());
    let module = concat!(module_path!(), "::rs");
    let svc = tchu::Service::new(&queue)
        .handlers_in(module)
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    svc.shutdown().await.unwrap();
    let bind = tokio::task::spawn_blocking(|| python::start_bind_only(PY_QUEUE))
        .await
        .unwrap();
    assert!(bind, "binding the Python queue failed");

    // Nobody consumes: both events wait in durable queues, as persistent messages.
    client
        .publish_raw("interop.restart.rust", &json!({"marker": marker}))
        .await
        .unwrap();
    client
        .publish_raw("interop.py.event", &json!({"marker": marker}))
        .await
        .unwrap();
    client.close().await;

    common::rabbitmqctl(&["stop_app"]);
    common::rabbitmqctl(&["start_app"]);
    wait_for_broker().await;

    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let svc = tchu::Service::new(&queue)
        .handlers_in(module)
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen
        .events
        .lock()
        .unwrap()
        .iter()
        .any(|p| p["marker"] == marker.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "the Rust service did not get the event queued before the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svc.shutdown().await.unwrap();

    let py = tokio::task::spawn_blocking(|| python::start(PY_QUEUE, false))
        .await
        .unwrap();
    py.wait_record("py.event", &marker, Duration::from_secs(30))
        .await
        .expect("the Python service did not get the event queued before the restart");
    py.assert_alive();
    let (_c, ch) = common::channel().await;
    drop(py); // stops the worker before its queue goes
    tokio::time::sleep(Duration::from_secs(4)).await;
    common::delete_queues(&ch, &[&queue, &format!("{queue}.dlq"), PY_QUEUE]).await;
}
