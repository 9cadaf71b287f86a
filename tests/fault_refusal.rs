//! Fault test: the broker refuses one publish by closing its channel (403 ACCESS_REFUSED, 406
//! PRECONDITION_FAILED). That publish fails at once with `Error::Refused`; the connection, the
//! consumers on it and every later publish or RPC reply are not disturbed. Its own test binary:
//! it lowers the broker's `max_message_size` for a while.
#![cfg(feature = "service")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tchu::prelude::*;

#[tchu::event(topic = "it.refusal.tick")]
struct Tick {
    n: u64,
}

#[tchu::payload]
#[derive(Debug)]
struct Blob {
    data: String,
}

#[tchu::event(topic = "it.refusal.blob", response = Blob)]
struct GetBlob {
    size: usize,
}

#[derive(Default)]
struct Seen {
    last: AtomicU64,
}

mod svc {
    use super::*;

    #[tchu::subscribe]
    async fn tick(t: Tick, seen: State<Seen>) {
        seen.last.fetch_max(t.n, Ordering::SeqCst);
    }

    #[tchu::subscribe]
    async fn blob(req: GetBlob) -> Blob {
        Blob {
            data: "x".repeat(req.size),
        }
    }
}

/// The broker's limit, lowered while a test needs it and put back however the test ends.
struct MaxMessageSize;

impl MaxMessageSize {
    fn lower(bytes: usize) -> Self {
        common::rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, max_message_size, {bytes})."),
        ]);
        MaxMessageSize
    }
}

impl Drop for MaxMessageSize {
    fn drop(&mut self) {
        common::rabbitmqctl(&[
            "eval",
            "application:set_env(rabbit, max_message_size, 134217728).",
        ]);
    }
}

async fn ticked(seen: &Seen, n: u64) -> bool {
    common::wait_until(Duration::from_secs(10), || {
        seen.last.load(Ordering::SeqCst) >= n
    })
    .await
}

/// The tests take turns: one lowers a broker-wide limit.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_refused_publish_fails_alone_and_the_consumers_stay() {
    let _turn = SERIAL.lock().await;
    let user = "tchu_refusal_no_write";
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["delete_user", user])
        .output();
    common::rabbitmqctl(&["add_user", user, "pw"]);
    // May declare and consume its own queues, may not publish to `tchu_events`. Writing to
    // the default exchange is what every service needs (dead letters, the quarantine's
    // dead-letter target, which RabbitMQ checks when the quarantine is declared).
    common::rabbitmqctl(&[
        "set_permissions",
        "-p",
        "/",
        user,
        ".*",
        "^(it_refusal.*|amq\\.default)$",
        ".*",
    ]);
    let url = format!("amqp://{user}:pw@127.0.0.1:5672/%2f");
    let restricted = tchu::Client::connect(&url).await.unwrap();
    let queue = common::unique("it_refusal");
    let seen = Arc::new(Seen::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(seen.clone())
        .start(&restricted)
        .await
        .unwrap();
    let states = service.watch_state();
    let publisher = tchu::Client::connect(&common::broker_url()).await.unwrap();
    publisher.publish(&Tick { n: 1 }).await.unwrap();
    assert!(ticked(&seen, 1).await);

    let started = Instant::now();
    let refused = restricted.publish(&Tick { n: 99 }).await;
    assert!(
        matches!(refused, Err(tchu::Error::Refused { .. })),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after the publish deadline: {:?}",
        started.elapsed()
    );
    // The service on the same connection kept consuming.
    publisher.publish(&Tick { n: 2 }).await.unwrap();
    assert!(ticked(&seen, 2).await);
    assert!(
        !states.has_changed().unwrap(),
        "the service never reconnected"
    );
    assert_eq!(
        seen.last.load(Ordering::SeqCst),
        2,
        "the refused tick never arrived"
    );

    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
    restricted.close().await;
    publisher.close().await;
    common::rabbitmqctl(&["delete_user", user]);
}

#[tokio::test]
async fn a_refused_reply_does_not_silence_the_replies_after_it() {
    let _turn = SERIAL.lock().await;
    let limit = MaxMessageSize::lower(100_000);
    // Connected after the limit is lowered: the broker reads it when a channel opens.
    let responder = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("it_refusal_rpc");
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state(Seen::default())
        .start(&responder)
        .await
        .unwrap();
    let caller = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let small = caller
        .call(&GetBlob { size: 10 })
        .timeout(Duration::from_secs(5))
        .await;
    assert_eq!(small.unwrap().data.len(), 10);
    let big = caller
        .call(&GetBlob { size: 200_000 })
        .timeout(Duration::from_secs(2))
        .await;
    assert!(matches!(big, Err(CallError::Timeout { .. })), "{big:?}");
    for _ in 0..3 {
        let again = caller
            .call(&GetBlob { size: 10 })
            .timeout(Duration::from_secs(5))
            .await;
        assert_eq!(
            again.unwrap().data.len(),
            10,
            "replies after a refused one still go out"
        );
    }
    drop(limit);
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
    responder.close().await;
    caller.close().await;
}

/// A message queued before the broker's limit was lowered (or before an upgrade to RabbitMQ 4,
/// whose default is 16 MiB) and then rejected by its handler: the broker refuses its dead
/// letter. Giving it back to the queue would bring it here again, forever; it is parked
/// trimmed instead, and says so.
#[tokio::test]
async fn a_dead_letter_the_broker_refuses_is_parked_trimmed() {
    let _turn = SERIAL.lock().await;
    let queue = common::unique("it_refusal_park");
    let service = || {
        tchu::Service::new(&queue)
            .handlers_in(concat!(module_path!(), "::svc"))
            .state(Seen::default())
    };
    let setup = tchu::Client::connect(&common::broker_url()).await.unwrap();
    service()
        .start(&setup)
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    // 150 KB that the `tick` handler rejects (no `n`), queued while the limit is the default.
    let filler = "x".repeat(150_000);
    setup
        .publish_raw("it.refusal.tick", &serde_json::json!({ "filler": filler }))
        .await
        .unwrap();
    let limit = MaxMessageSize::lower(100_000);
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let running = service().start(&client).await.unwrap();
    let (_c, ch) = common::channel().await;
    let parked =
        common::drain_at_least(&ch, &format!("{queue}.dlq"), 1, Duration::from_secs(15)).await;
    assert_eq!(parked.len(), 1, "parked, not given back forever");
    assert_eq!(
        common::header(&parked[0], "x-tchu-error-kind").as_deref(),
        Some("rejected")
    );
    let trimmed = common::header(&parked[0], "x-tchu-trimmed").unwrap_or_default();
    assert!(trimmed.contains("refused"), "{trimmed}");
    assert_eq!(parked[0].delivery.data.len(), 64 * 1024);
    drop(limit);
    running.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
    client.close().await;
    setup.close().await;
}
