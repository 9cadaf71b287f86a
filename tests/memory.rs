//! The in-memory transport: the same routing, dispatch and dead-lettering as on RabbitMQ,
//! for users' unit tests and the demo.
#![cfg(feature = "service")]

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tchu::prelude::*;
use tchu::wire::WireMessage;

#[derive(Default)]
struct Hits {
    typed: AtomicUsize,
    star: AtomicUsize,
    hash: AtomicUsize,
}

mod shop {
    use super::*;

    #[tchu::event(topic = "mem.order.placed")]
    pub struct Placed {
        pub id: u64,
    }

    pub mod svc {
        use super::*;
        #[tchu::subscribe]
        async fn typed(_p: Placed, h: State<Hits>) {
            h.typed.fetch_add(1, Ordering::SeqCst);
        }
        #[tchu::subscribe("mem.*.placed")]
        async fn star(_m: Message, h: State<Hits>) {
            h.star.fetch_add(1, Ordering::SeqCst);
        }
        #[tchu::subscribe("mem.#")]
        async fn hash(_m: Message, h: State<Hits>) {
            h.hash.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn start(broker: &tchu::MemoryBroker, queue: &str, hits: Arc<Hits>) -> tchu::ServiceHandle {
    tchu::Service::new(queue)
        .handlers_in(concat!(module_path!(), "::shop::svc"))
        .state_arc(hits)
        .start(&tchu::Client::memory(broker))
        .await
        .unwrap()
}

#[tokio::test]
async fn routes_with_amqp_semantics_and_fans_out() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let (h1, h2) = (Arc::new(Hits::default()), Arc::new(Hits::default()));
    let s1 = start(&broker, "mem_one", h1.clone()).await;
    let s2 = start(&broker, "mem_two", h2.clone()).await;
    assert_eq!(
        broker.bindings("mem_one"),
        ["mem_one", "mem.#", "mem.*.placed", "mem.order.placed"]
    );

    client.publish(&shop::Placed { id: 1 }).await.unwrap();
    client.publish_raw("mem.a.b.c", &json!({})).await.unwrap(); // only `mem.#`
    client
        .publish_raw("mem.gift.placed", &json!({}))
        .await
        .unwrap(); // `mem.*.placed` and `mem.#`
    broker.settled().await;
    for h in [&h1, &h2] {
        assert_eq!(h.typed.load(Ordering::SeqCst), 1);
        assert_eq!(h.star.load(Ordering::SeqCst), 2);
        assert_eq!(h.hash.load(Ordering::SeqCst), 3);
    }
    let err = client
        .publish_raw("elsewhere.nobody", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, tchu::Error::Unroutable { .. }));
    s1.shutdown().await.unwrap();
    s2.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_a_reason() {
    let broker = tchu::MemoryBroker::new();
    let hits = Arc::new(Hits::default());
    let svc = start(&broker, "mem_bad", hits.clone()).await;
    broker
        .send(&WireMessage {
            routing_key: "mem.order.placed".into(),
            body: b"{oops".to_vec(),
            ..Default::default()
        })
        .unwrap();
    let client = tchu::Client::memory(&broker);
    // Fits `Message` handlers but not the typed one: only the typed handler's copy is parked.
    client
        .publish_raw("mem.order.placed", &json!({"id": "not a number"}))
        .await
        .unwrap();
    broker.settled().await;
    let parked = broker.take("mem_bad.dlq");
    assert_eq!(parked.len(), 2, "{parked:#?}");
    assert_eq!(parked[0].headers["x-tchu-error-kind"], "undecodable");
    assert_eq!(parked[1].headers["x-tchu-error-kind"], "rejected");
    assert_eq!(
        parked[1].headers["x-tchu-handler"],
        "memory::shop::svc::typed"
    );
    assert_eq!(hits.star.load(Ordering::SeqCst), 1);
    assert_eq!(hits.typed.load(Ordering::SeqCst), 0);
    assert_eq!(broker.queue_len("mem_bad"), 0);
    svc.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_state_and_empty_services_are_refused_at_startup() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let err = tchu::Service::new("mem_nostate")
        .handlers_in(concat!(module_path!(), "::shop::svc"))
        .start(&client)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, tchu::Error::InvalidService { .. }), "{err:?}");
    assert!(
        text.contains("State<") && text.contains("Hits") && text.contains("Service::state"),
        "{text}"
    );

    let err = tchu::Service::new("mem_empty")
        .handlers_in("no::such::module")
        .start(&client)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has no handlers"), "{err}");
}

#[tokio::test]
async fn settled_waits_for_handlers_that_publish_further_events() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let hits = Arc::new(Hits::default());
    let svc = start(&broker, "mem_chain", hits.clone()).await;
    let chain = tchu::Service::new("mem_chain_relay")
        .handlers_in(concat!(module_path!(), "::relay"))
        .start(&client)
        .await
        .unwrap();
    client
        .publish_raw("relay.start", &json!({"id": 5}))
        .await
        .unwrap();
    broker.settled().await;
    assert_eq!(
        hits.typed.load(Ordering::SeqCst),
        1,
        "the relayed event was handled before settled() returned"
    );
    svc.shutdown().await.unwrap();
    chain.shutdown().await.unwrap();
}

mod relay {
    use super::*;
    #[tchu::subscribe("relay.start")]
    async fn relay(msg: Message, client: Client) -> tchu::Result<()> {
        let id = msg.payload()["id"].as_u64().unwrap_or_default();
        client.publish(&shop::Placed { id }).await?;
        Ok(())
    }
}

#[tokio::test]
async fn oversized_messages_are_refused_on_publish_and_dead_lettered_on_consume() {
    let broker = tchu::MemoryBroker::new();
    let hits = Arc::new(Hits::default());
    let small = tchu::Client::memory(&broker).with_max_message_bytes(300);
    let svc = tchu::Service::new("mem_size")
        .handlers_in(concat!(module_path!(), "::shop::svc"))
        .state_arc(hits.clone())
        .start(&small)
        .await
        .unwrap();
    let big = json!({"id": 1, "padding": "x".repeat(400)});
    let err = small
        .publish_raw("mem.order.placed", &big)
        .await
        .unwrap_err();
    assert!(
        matches!(err, tchu::Error::TooLarge { max: 300, .. }),
        "{err:?}"
    );
    // A producer with a larger limit gets it to the broker; the service refuses to decode it.
    tchu::Client::memory(&broker)
        .publish_raw("mem.order.placed", &big)
        .await
        .unwrap();
    broker.settled().await;
    let parked = broker.take("mem_size.dlq");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].headers["x-tchu-error-kind"], "too_large");
    assert_eq!(hits.hash.load(Ordering::SeqCst), 0);
    svc.shutdown().await.unwrap();
}

mod fleet_2x {
    use super::*;

    #[derive(Default)]
    pub struct Seen(pub std::sync::Mutex<Vec<(serde_json::Value, bool)>>);

    #[tchu::payload]
    pub struct Doubled {
        pub n: u64,
    }

    #[tchu::event(topic = "mem.v2x.double", response = Doubled)]
    pub struct Double {
        pub n: u64,
    }

    pub mod svc {
        use super::*;
        #[tchu::subscribe("mem.v2x.event")]
        async fn event(m: Message, seen: State<Seen>) {
            let seen: &Seen = &seen;
            seen.0
                .lock()
                .unwrap()
                .push((m.payload().clone(), m.is_rpc()));
        }
        #[tchu::subscribe]
        async fn double(req: Double) -> Doubled {
            Doubled { n: req.n * 2 }
        }
    }
}

/// A client writing for a tchu-tchu 2.x fleet talks to Rust services on the in-memory broker
/// as on RabbitMQ: its events arrive as events (no `_tchu_meta`, no reply address), its calls
/// are answered.
#[tokio::test]
async fn the_2x_form_is_understood_by_rust_services_in_memory() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker).with_tchu_tchu(tchu::TchuTchu::V2);
    assert_eq!(client.tchu_tchu(), tchu::TchuTchu::V2);
    let seen = Arc::new(fleet_2x::Seen::default());
    let svc = tchu::Service::new("mem_v2x")
        .handlers_in(concat!(module_path!(), "::fleet_2x::svc"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    client
        .publish_raw("mem.v2x.event", &json!({"a": 1}))
        .await
        .unwrap();
    let answer = client
        .call(&fleet_2x::Double { n: 21 })
        .timeout(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.n, 42);
    broker.settled().await;
    assert_eq!(*seen.0.lock().unwrap(), vec![(json!({"a": 1}), false)]);
    svc.shutdown().await.unwrap();
}
