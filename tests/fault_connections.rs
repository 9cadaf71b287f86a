//! Fault test: the broker closes every connection (`rabbitmqctl close_all_connections`). The
//! service reconnects and keeps consuming without a restart, and RPC works again afterwards.
//! Its own test binary: it disturbs every connection on the broker.
#![cfg(feature = "service")]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tchu::prelude::*;

#[tchu::event(topic = "fault.conn.tick")]
struct Tick {
    seq: u64,
}

#[tchu::payload]
struct Pong {
    seq: u64,
}

#[tchu::event(topic = "fault.conn.ping", response = Pong)]
struct Ping {
    seq: u64,
}

#[derive(Default)]
struct Seen {
    ticks: AtomicU64,
}

mod svc {
    use super::*;

    #[tchu::subscribe]
    async fn tick(_t: Tick, seen: State<Seen>) {
        seen.ticks.fetch_add(1, Ordering::SeqCst);
    }

    #[tchu::subscribe]
    async fn ping(p: Ping) -> Pong {
        Pong { seq: p.seq }
    }
}

/// Both tests close every connection on the broker: run in parallel, one would cut the
/// other's fresh connections mid-setup.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_reconnects_after_the_broker_closes_all_connections() {
    let _serial = SERIAL.lock().await;
    let queue = common::unique("fault_conn");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let seen = Arc::new(Seen::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    assert_eq!(client.call(&Ping { seq: 1 }).await.unwrap().seq, 1);
    client.publish(&Tick { seq: 1 }).await.unwrap();

    let mut states = service.watch_state();
    let out = Command::new("rabbitmqctl")
        .args(["close_all_connections", "tchu fault test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The service notices, reconnects and consumes again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_reconnecting = false;
    while !(saw_reconnecting && service.state() == tchu::ServiceState::Consuming) {
        assert!(
            Instant::now() < deadline,
            "the service did not come back (state {:?})",
            service.state()
        );
        if tokio::time::timeout(Duration::from_millis(200), states.changed())
            .await
            .is_ok()
        {
            saw_reconnecting |= *states.borrow() == tchu::ServiceState::Reconnecting;
        }
    }
    // Publishing and RPC work again on the same client, without a restart.
    for seq in 2..=11 {
        client.publish(&Tick { seq }).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.ticks.load(Ordering::SeqCst) < 11 {
        assert!(
            Instant::now() < deadline,
            "only {} of 11 ticks handled",
            seen.ticks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pong = client
        .call(&Ping { seq: 2 })
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(pong.seq, 2);
    service.shutdown().await.unwrap();
    let (_c, ch) = common::channel().await;
    common::delete_queues(&ch, &[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_at_a_disconnect_fails_fast_with_a_connection_error() {
    let _serial = SERIAL.lock().await;
    // Nobody answers this topic in time: the call is waiting when the connection goes.
    let queue = common::unique("fault_conn_slow");
    let (_c, ch) = common::channel().await;
    ch.queue_declare(
        queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        "tchu_events".into(),
        "fault.conn.silent".into(),
        Default::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call_raw(
                    "fault.conn.silent",
                    &serde_json::json!({}),
                    Duration::from_secs(60),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let _ = Command::new("rabbitmqctl")
        .args(["close_all_connections", "tchu fault test"])
        .output()
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call did not fail fast")
        .unwrap();
    assert!(matches!(res, Err(CallError::Connection(_))), "{res:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
