//! Checklist item 25: persistent events survive a broker restart, for a Rust service and
//! Python services of tchu-tchu 3.0.4 and 2.4.0 alike, in one restart. In its own test binary
//! because it stops and starts RabbitMQ.
#![cfg(feature = "service")]

mod common;
mod python;

use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

/// Each release's own Python queue: a worker of the other interop binaries may still be
/// shutting down on the shared ones.
const PY_QUEUES: [(&python::Release, &str); 2] = [
    (&python::V3, "tchu_interop_py_restart"),
    (&python::V2, "tchu_interop_py2_restart"),
];

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
    for (_, queue) in PY_QUEUES {
        let bind = tokio::task::spawn_blocking(move || python::start_bind_only(queue))
            .await
            .unwrap();
        assert!(bind, "binding the Python queue {queue} failed");
    }

    // Nobody consumes: the events wait in durable queues, as persistent messages. Each Python
    // queue gets the event in both forms; each release is checked on its own form.
    client
        .publish_raw("interop.restart.rust", &json!({"marker": marker}))
        .await
        .unwrap();
    for (release, _) in PY_QUEUES {
        client
            .with_tchu_tchu(release.tchu_tchu)
            .publish_raw(
                "interop.py.event",
                &json!({"marker": marker, "for": release.package}),
            )
            .await
            .unwrap();
    }
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

    let (_c, ch) = common::channel().await;
    for (release, queue) in PY_QUEUES {
        each_release_gets_its_form(release, queue, &marker).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (py3, py2) = (PY_QUEUES[0].1, PY_QUEUES[1].1);
    common::delete_queues(&ch, &[&queue, &format!("{queue}.dlq"), py3, py2]).await;
}

/// Starts `release`'s worker on `queue` and waits for the event in `release`'s own form.
async fn each_release_gets_its_form(
    release: &'static python::Release,
    queue: &'static str,
    marker: &str,
) {
    let py = tokio::task::spawn_blocking(move || python::start_of(release, queue, false))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = json!({"marker": marker, "for": release.package});
    while !py.records("py.event").contains(&want) {
        assert!(
            Instant::now() < deadline,
            "{}: the event queued before the restart did not arrive as {want}: {:?}",
            release.package,
            py.records("py.event")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    py.assert_alive();
    drop(py); // stops the worker before its queue goes
}
