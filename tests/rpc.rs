//! Typed RPC on a real RabbitMQ (and the same semantics on the in-memory broker).
#![cfg(feature = "service")]

mod common;

use common::{channel, delete_queues, unique};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tchu::prelude::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct PaymentOk {
    receipt: String,
    amount_cents: i64,
}

/// A custom error shape (not tchu-tchu's standard dict).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct PaymentError {
    reason: String,
    retry_after: Option<u32>,
}

#[tchu::event(topic = "it.rpc.pay", response = PaymentOk, error = PaymentError)]
struct ProcessPayment {
    user_id: u64,
    amount_cents: i64,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    explode: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Echoed {
    n: u64,
}

/// No `error` declared: the business error is tchu-tchu's standard `RpcError` dict.
#[tchu::event(topic = "it.rpc.echo", response = Echoed)]
struct Echo {
    n: u64,
}

#[tchu::event(topic = "it.rpc.nobody", response = Echoed)]
struct NobodyAnswers {
    n: u64,
}

/// Answered by `responders::watched`, and seen by `observers::audit` too.
#[tchu::event(topic = "it.rpc.watched.echo", response = Echoed)]
struct WatchedEcho {
    n: u64,
}

/// Only `observers::audit` sees it.
#[tchu::event(topic = "it.rpc.watched.unanswered", response = Echoed)]
struct Unanswered {
    n: u64,
}

/// Answered by both services of the twin test.
#[tchu::event(topic = "it.rpc.twin", response = Echoed)]
struct TwinEcho {
    n: u64,
}

/// Answered by hand in `a_python_observers_null_reply_is_not_the_answer`.
#[tchu::event(topic = "it.rpc.pyobs", response = Echoed)]
struct PythonObserved {
    n: u64,
}

/// How many times `observers::audit` ran.
static OBSERVED: AtomicUsize = AtomicUsize::new(0);
/// How many times `responders::twin` ran, over both services.
static TWIN_RUNS: AtomicUsize = AtomicUsize::new(0);

fn pay_request(amount_cents: i64) -> ProcessPayment {
    ProcessPayment {
        user_id: 1,
        amount_cents,
        delay_ms: 0,
        explode: false,
    }
}

mod responders {
    use super::*;

    #[tchu::subscribe]
    async fn pay(req: ProcessPayment) -> Result<PaymentOk, PaymentError> {
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms)).await;
        }
        assert!(
            !req.explode,
            "card reader exploded for user {}",
            req.user_id
        );
        if req.amount_cents < 0 {
            return Err(PaymentError {
                reason: format!("negative amount {}", req.amount_cents),
                retry_after: Some(30),
            });
        }
        Ok(PaymentOk {
            receipt: format!("r-{}-{}", req.user_id, req.amount_cents),
            amount_cents: req.amount_cents,
        })
    }

    #[tchu::subscribe]
    async fn watched(req: WatchedEcho) -> Echoed {
        Echoed { n: req.n }
    }

    #[tchu::subscribe]
    async fn echo(req: Echo) -> Result<Echoed, RpcError> {
        if req.n == 0 {
            return Err(RpcError::new("ZERO", "zero is not allowed").with_detail("n", 0));
        }
        Ok(Echoed { n: req.n })
    }
}

/// The twin test's responder, in a module of its own so that no other test's service binds it.
mod twins {
    use super::*;

    #[tchu::subscribe]
    async fn twin(req: TwinEcho) -> Echoed {
        TWIN_RUNS.fetch_add(1, Ordering::SeqCst);
        Echoed { n: req.n }
    }
}

/// An audit log on RPC topics: an observer, which never answers.
mod observers {
    use super::*;

    #[tchu::subscribe("it.rpc.watched.#")]
    async fn audit(_m: Message) {
        OBSERVED.fetch_add(1, Ordering::SeqCst);
    }
}

async fn service(client: &tchu::Client, queue: &str) -> tchu::ServiceHandle {
    tchu::Service::new(queue)
        .handlers_in(concat!(module_path!(), "::responders"))
        .prefetch(64)
        .start(client)
        .await
        .unwrap()
}

async fn cleanup(queues: &[&str]) {
    let (_c, ch) = channel().await;
    for q in queues {
        delete_queues(&ch, &[q, &format!("{q}.dlq")]).await;
    }
}

async fn amqp_client() -> tchu::Client {
    tchu::Client::connect(&common::broker_url()).await.unwrap()
}

#[tokio::test]
async fn success_business_errors_and_custom_shapes() {
    let client = amqp_client().await;
    let q = unique("it_rpc_basic");
    let svc = service(&client, &q).await;

    let ok = client.call(&pay_request(500)).await.unwrap();
    assert_eq!(
        ok,
        PaymentOk {
            receipt: "r-1-500".into(),
            amount_cents: 500
        }
    );

    match client.call(&pay_request(-5)).await {
        Err(CallError::Business(e)) => {
            assert_eq!(
                e,
                PaymentError {
                    reason: "negative amount -5".into(),
                    retry_after: Some(30)
                }
            )
        }
        other => panic!("expected the custom business error, got {other:?}"),
    }

    match client.call(&Echo { n: 0 }).await {
        Err(CallError::Business(e)) => {
            assert_eq!(
                (e.error_code.as_str(), e.error_message.as_str(), e.success),
                ("ZERO", "zero is not allowed", false)
            );
            assert_eq!(e.error_details["n"], 0);
        }
        other => panic!("expected the standard business error, got {other:?}"),
    }
    assert_eq!(client.call(&Echo { n: 9 }).await.unwrap(), Echoed { n: 9 });

    // The dynamic form, for tools.
    let v = client
        .call_raw(
            "it.rpc.echo",
            &serde_json::json!({"n": 4}),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!({"n": 4}));
    match client
        .call_raw(
            "it.rpc.echo",
            &serde_json::json!({"n": 0}),
            Duration::from_secs(10),
        )
        .await
    {
        Err(CallError::Business(v)) => assert_eq!(v["error_code"], "ZERO"),
        other => panic!("{other:?}"),
    }
    svc.shutdown().await.unwrap();
    cleanup(&[&q]).await;
}

#[tokio::test]
async fn no_responder_is_reported_at_once() {
    let client = amqp_client().await;
    // Warm the reply consumer up so the measurement is the call alone.
    let _ = client.call(&NobodyAnswers { n: 0 }).await;
    let started = Instant::now();
    let err = client
        .call(&NobodyAnswers { n: 1 })
        .timeout(Duration::from_secs(20))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, CallError::NoResponder { topic } if topic == "it.rpc.nobody"),
        "{err:?}"
    );
    assert!(took < Duration::from_millis(100), "took {took:?}");
    let err = client
        .call_raw(
            &unique("it.rpc.unbound"),
            &serde_json::json!({}),
            Duration::from_secs(20),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::NoResponder { .. }), "{err:?}");
}

#[tokio::test]
async fn timeout_then_the_next_call_still_works() {
    let client = amqp_client().await;
    let q = unique("it_rpc_slow");
    let svc = service(&client, &q).await;
    let slow = ProcessPayment {
        delay_ms: 1500,
        ..pay_request(1)
    };
    let started = Instant::now();
    let err = client
        .call(&slow)
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { after, .. } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1000));
    // The late answer to the first call must not be taken for this one's.
    let ok = client
        .call(&pay_request(2))
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ok.amount_cents, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ok = client
        .call(&pay_request(3))
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ok.amount_cents, 3);
    svc.shutdown().await.unwrap();
    cleanup(&[&q]).await;
}

#[tokio::test]
async fn a_panicking_responder_is_a_handler_failure_and_keeps_serving() {
    let client = amqp_client().await;
    let q = unique("it_rpc_panic");
    let svc = service(&client, &q).await;
    let err = client
        .call(&ProcessPayment {
            explode: true,
            ..pay_request(1)
        })
        .await
        .unwrap_err();
    match &err {
        CallError::HandlerFailed { handler, message } => {
            assert_eq!(handler, "rpc::responders::pay");
            assert!(
                message.contains("card reader exploded for user 1"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.call(&pay_request(7)).await.unwrap().amount_cents, 7);
    svc.shutdown().await.unwrap();
    cleanup(&[&q]).await;
}

#[tokio::test]
async fn a_thousand_concurrent_calls_on_one_client() {
    let client = amqp_client().await;
    let q = unique("it_rpc_many");
    let svc = service(&client, &q).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000i64 {
        let client = client.clone();
        set.spawn(async move {
            (
                i,
                client
                    .call(&pay_request(i))
                    .timeout(Duration::from_secs(60))
                    .await,
            )
        });
    }
    let mut answered = 0;
    while let Some(r) = set.join_next().await {
        let (i, res) = r.unwrap();
        let ok = res.unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(
            ok,
            PaymentOk {
                receipt: format!("r-1-{i}"),
                amount_cents: i
            }
        );
        answered += 1;
    }
    assert_eq!(answered, 1000);
    svc.shutdown().await.unwrap();
    cleanup(&[&q]).await;
}

#[tokio::test]
async fn two_services_bound_to_one_topic_give_one_answer() {
    let client = amqp_client().await;
    let (q1, q2) = (unique("it_rpc_twin_a"), unique("it_rpc_twin_b"));
    let twin = |q: String| {
        tchu::Service::new(q)
            .handlers_in(concat!(module_path!(), "::twins"))
            .start(&client)
    };
    let s1 = twin(q1.clone()).await.unwrap();
    let s2 = twin(q2.clone()).await.unwrap();
    for n in 1..=5 {
        assert_eq!(client.call(&TwinEcho { n }).await.unwrap(), Echoed { n });
    }
    // Both services ran (and answered) every call; the surplus answers were dropped without
    // disturbing the calls that followed.
    assert!(
        common::wait_until(Duration::from_secs(5), || TWIN_RUNS.load(Ordering::SeqCst)
            == 10)
        .await,
        "both responders run every call: {} runs for 5 calls",
        TWIN_RUNS.load(Ordering::SeqCst)
    );
    assert_eq!(
        client.call(&TwinEcho { n: 6 }).await.unwrap(),
        Echoed { n: 6 }
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || TWIN_RUNS.load(Ordering::SeqCst)
            == 12)
        .await
    );
    s1.shutdown().await.unwrap();
    s2.shutdown().await.unwrap();
    cleanup(&[&q1, &q2]).await;
}

#[tokio::test]
async fn the_in_memory_broker_has_the_same_semantics() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let svc = service(&client, "mem_rpc").await;
    assert_eq!(client.call(&pay_request(5)).await.unwrap().amount_cents, 5);
    assert!(matches!(
        client.call(&pay_request(-1)).await,
        Err(CallError::Business(PaymentError {
            retry_after: Some(30),
            ..
        }))
    ));
    assert!(matches!(
        client.call(&Echo { n: 0 }).await,
        Err(CallError::Business(RpcError { .. }))
    ));
    assert!(matches!(
        client.call(&NobodyAnswers { n: 1 }).await,
        Err(CallError::NoResponder { .. })
    ));
    let err = client
        .call(&ProcessPayment {
            delay_ms: 500,
            ..pay_request(1)
        })
        .timeout(Duration::from_millis(50))
        .await;
    assert!(matches!(err, Err(CallError::Timeout { .. })), "{err:?}");
    assert!(matches!(
        client
            .call(&ProcessPayment {
                explode: true,
                ..pay_request(1)
            })
            .await,
        Err(CallError::HandlerFailed { .. })
    ));
    assert_eq!(client.call(&Echo { n: 3 }).await.unwrap(), Echoed { n: 3 });
    svc.shutdown().await.unwrap();
}

/// A request is transient (a persistent one on a durable queue is confirmed only once on
/// disk, which doubled the round trip) and carries what the responder answers to.
#[tokio::test]
async fn requests_are_transient_with_reply_to_and_correlation_id() {
    use futures_lite::StreamExt;
    let (_conn, ch) = channel().await;
    let topic = format!("it.rpc.shape.{}", unique("t"));
    let (_q, mut requests) = common::temp_queue(&ch, Some(&topic)).await;
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    // Nobody answers: the call times out, the request stays in the capture queue.
    let err = client
        .call_raw(
            &topic,
            &serde_json::json!({"n": 1}),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, tchu::CallError::Timeout { .. }), "{err}");
    let d = tokio::time::timeout(Duration::from_secs(5), requests.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(*d.properties.delivery_mode(), Some(1), "transient");
    // The broker rewrites the direct reply-to pseudo-queue into the caller's own address.
    let reply_to = d.properties.reply_to().as_ref().map(|r| r.to_string());
    assert!(
        reply_to
            .as_deref()
            .is_some_and(|r| r.starts_with("amq.rabbitmq.reply-to.")),
        "{reply_to:?}"
    );
    assert!(d.properties.correlation_id().is_some());
    client.close().await;
}

/// An observer service (a raw handler on `it.rpc.watched.#`) next to a responder: it runs for
/// every request and never answers, so every call gets the responder's answer. With the
/// observer alone, the call times out: it is never a decoding error.
#[tokio::test]
async fn observers_never_answer_requests() {
    let client = amqp_client().await;
    let (qr, qo) = (unique("it_rpc_watched"), unique("it_rpc_observer"));
    let responder = service(&client, &qr).await;
    let observer = tchu::Service::new(&qo)
        .handlers_in(concat!(module_path!(), "::observers"))
        .start(&client)
        .await
        .unwrap();
    for n in 0..100 {
        let got = client
            .call(&WatchedEcho { n })
            .timeout(Duration::from_secs(5))
            .await;
        assert_eq!(got.unwrap(), Echoed { n }, "call {n}");
    }
    assert!(
        common::wait_until(Duration::from_secs(10), || OBSERVED.load(Ordering::SeqCst)
            == 100)
        .await,
        "the observer runs for every request: {}",
        OBSERVED.load(Ordering::SeqCst)
    );
    // Only the observer is bound: nobody answers.
    for n in 0..3 {
        let got = client
            .call(&Unanswered { n })
            .timeout(Duration::from_millis(500))
            .await;
        assert!(matches!(got, Err(CallError::Timeout { .. })), "{got:?}");
    }
    assert!(
        common::wait_until(Duration::from_secs(5), || OBSERVED.load(Ordering::SeqCst)
            == 103)
        .await
    );
    // Nothing was parked: an observer that ran is not a failure.
    let (_c, ch) = channel().await;
    assert!(common::drain(&ch, &format!("{qo}.dlq")).await.is_empty());
    observer.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
    cleanup(&[&qr, &qo]).await;
}

/// A reply carrying only a Python observer's `None` (what tchu-tchu's dispatcher sends for a
/// `@subscribe("rpc.#")` handler) is skipped: the caller takes the responder's answer after it.
#[tokio::test]
async fn a_python_observers_null_reply_is_not_the_answer() {
    use futures_lite::StreamExt;
    use lapin::options::BasicPublishOptions;
    let (_conn, ch) = channel().await;
    let (_q, mut requests) = common::temp_queue(&ch, Some(PythonObserved::TOPIC)).await;
    let client = amqp_client().await;
    let caller = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(&PythonObserved { n: 7 })
                .timeout(Duration::from_secs(5))
                .await
        })
    };
    let d = tokio::time::timeout(Duration::from_secs(5), requests.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply_to = d.properties.reply_to().as_ref().unwrap().to_string();
    let cid = d.properties.correlation_id().clone().unwrap();
    let reply = |result: &str| {
        format!(
            r#"{{"status": "SUCCESS", "result": {{"status": "completed", "is_rpc": true, "results": {result}}}, "task_id": "t"}}"#
        )
    };
    for body in [
        reply(r#"[{"handler": "audit", "status": "success", "result": null}]"#),
        reply(r#"[{"handler": "pay", "status": "success", "result": {"n": 7}}]"#),
    ] {
        ch.basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            lapin::BasicProperties::default().with_correlation_id(cid.clone()),
        )
        .await
        .unwrap();
    }
    assert_eq!(caller.await.unwrap().unwrap(), Echoed { n: 7 });
    client.close().await;
}

/// A call whose request cannot be built (an invalid topic) sends nothing and says so, with
/// the topic error as its source: not a connection error.
#[tokio::test]
async fn a_request_that_cannot_be_built_is_not_a_connection_error() {
    let client = amqp_client().await;
    let res = client
        .call_raw(
            "not a topic!",
            &serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await;
    match &res {
        Err(e @ CallError::Request(tchu::Error::Topic(_))) => {
            assert!(e.to_string().contains("nothing was sent"), "{e}");
            assert!(std::error::Error::source(e).is_some());
        }
        other => panic!("{other:?}"),
    }
    client.close().await;
}
