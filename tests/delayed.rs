//! Delayed events and publish options on RabbitMQ: `publish_in` holds an event in the broker's
//! delay levels and delivers it to every queue bound to its topic when due (measured here
//! against the requested delay); extra headers, expiration and priority reach a generic AMQP
//! consumer as the README says. The in-memory broker's timer is tested on a paused clock.
#![cfg(feature = "service")]

mod common;

use common::{channel, temp_queue, unique};
use futures_lite::StreamExt;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::time::{Duration, Instant};
use tchu::{Client, PublishOptions};

async fn client() -> Client {
    Client::connect(&common::broker_url()).await.unwrap()
}

/// How long each delivery on `consumer` took since `start`, by the payload's `n`, until `n`
/// deliveries arrived or `timeout` passed.
async fn arrivals(
    consumer: &mut lapin::Consumer,
    start: Instant,
    n: usize,
    timeout: Duration,
) -> Vec<(u64, Duration, lapin::message::Delivery)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, consumer.next()).await else {
            break;
        };
        let wire = tchu::amqp::message_from_delivery(
            d.routing_key.as_str(),
            &d.properties,
            d.data.clone(),
        );
        let env = tchu::wire::decode(&wire);
        let n = match env {
            Ok(tchu::wire::Decoded::Event(e)) => e.payload["n"].as_u64().unwrap(),
            other => panic!("not an event: {other:?}"),
        };
        out.push((n, start.elapsed(), d));
    }
    out
}

#[tokio::test]
async fn delayed_events_arrive_when_due_not_before_and_within_a_bounded_lateness() {
    let (_conn, ch) = channel().await;
    let topic = format!("it.delay.{}", unique("t"));
    let (_q, mut consumer) = temp_queue(&ch, Some(&topic)).await;
    let client = client().await;
    // The levels are declared on a client's first delayed publish: not part of the delay.
    let warm = PublishOptions::new().delay(Duration::from_millis(1));
    let other = format!("{topic}.warm");
    client
        .publish_raw_with(&other, &serde_json::json!({}), &warm)
        .await
        .unwrap();
    let delays_ms = [0_u64, 1, 150, 777, 1234, 2500];
    // Published while the consumer reads, so each arrival is timed when it happens.
    let sending = tokio::spawn({
        let topic = topic.clone();
        async move {
            let mut sent = Vec::new();
            for (n, ms) in delays_ms.iter().enumerate() {
                let payload = serde_json::json!({ "n": n });
                let options = PublishOptions::new().delay(Duration::from_millis(*ms));
                sent.push(Instant::now());
                client
                    .publish_raw_with(&topic, &payload, &options)
                    .await
                    .unwrap();
            }
            sent
        }
    });
    let start = Instant::now();
    let got = arrivals(
        &mut consumer,
        start,
        delays_ms.len(),
        Duration::from_secs(15),
    )
    .await;
    let sent = sending.await.unwrap();
    assert_eq!(got.len(), delays_ms.len(), "every delayed event arrived");
    for (n, at, d) in &got {
        let due = Duration::from_millis(delays_ms[*n as usize]);
        let after = (start + *at) - sent[*n as usize];
        eprintln!("due after {due:?}: arrived after {after:?}");
        // Never early; late by the hops' latency only (one per set bit of the delay).
        assert!(
            after >= due,
            "event {n} due after {due:?} arrived after {after:?}"
        );
        let late = after - due;
        assert!(
            late < Duration::from_millis(150),
            "event {n} due after {due:?}: {after:?}"
        );
        assert_eq!(
            d.routing_key.as_str(),
            topic,
            "re-published on its own topic"
        );
    }
    let order: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4, 5], "delivered in due order");
}

#[tokio::test]
async fn a_delayed_event_reaches_every_queue_bound_to_its_topic_once() {
    let (_conn, ch) = channel().await;
    let prefix = format!("it.fan.{}", unique("t"));
    let topic = format!("{prefix}.placed");
    let (_a, mut a) = temp_queue(&ch, Some(&topic)).await;
    let (_b, mut b) = temp_queue(&ch, Some(&format!("{prefix}.#"))).await;
    let client = client().await;
    let start = Instant::now();
    let payload = serde_json::json!({ "n": 7 });
    let options = PublishOptions::new()
        .delay(Duration::from_millis(300))
        .header("tenant", "acme");
    client
        .publish_raw_with(&topic, &payload, &options)
        .await
        .unwrap();
    let got_a = arrivals(&mut a, start, 2, Duration::from_secs(2)).await;
    let got_b = arrivals(&mut b, start, 2, Duration::from_secs(1)).await;
    assert_eq!(got_a.len(), 1, "one copy, not one per hop");
    assert_eq!(got_b.len(), 1);
    let d = &got_a[0].2;
    let m =
        tchu::amqp::message_from_delivery(d.routing_key.as_str(), &d.properties, d.data.clone());
    assert_eq!(m.headers["tenant"], "acme");
    assert!(
        m.headers.contains_key("x-death"),
        "the broker's own record of the hops"
    );
}

#[tokio::test]
async fn expiration_drops_an_unread_message_and_priority_orders_a_priority_queue() {
    let (_conn, ch) = channel().await;
    let topic = format!("it.opts.{}", unique("t"));
    let queue = unique("it_opts_prio");
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), exclusive, args)
        .await
        .unwrap();
    let bind = QueueBindOptions::default();
    let table = FieldTable::default();
    ch.queue_bind(
        queue.as_str().into(),
        "tchu_events".into(),
        topic.as_str().into(),
        bind,
        table,
    )
    .await
    .unwrap();
    let client = client().await;
    let send = |n: u64, o: PublishOptions| {
        let (client, topic) = (client.clone(), topic.clone());
        async move {
            let payload = serde_json::json!({ "n": n });
            client.publish_raw_with(&topic, &payload, &o).await.unwrap();
        }
    };
    send(1, PublishOptions::new().priority(1)).await;
    send(
        2,
        PublishOptions::new().expiration(Duration::from_millis(100)),
    )
    .await;
    send(3, PublishOptions::new().priority(8)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut order = Vec::new();
    let no_ack = BasicGetOptions { no_ack: true };
    while let Some(m) = ch.basic_get(queue.as_str().into(), no_ack).await.unwrap() {
        order.push(m.delivery.properties.priority().unwrap_or(0));
    }
    // Sent 1, 2, 3: the expired 2 was dropped unread, 3 (priority 8) overtook 1.
    assert_eq!(order, vec![8, 1]);
}

#[tokio::test]
async fn options_tchu_cannot_carry_are_refused_before_anything_is_sent() {
    let client = client().await;
    let topic = format!("it.opts.{}", unique("bad"));
    let payload = serde_json::json!({});
    for options in [
        PublishOptions::new().header("x-tchu-handler", "forged"),
        PublishOptions::new().header("task", "celery.steal"),
        PublishOptions::new().priority(42),
        PublishOptions::new()
            .delay(Duration::from_secs(1))
            .expiration(Duration::from_secs(1)),
    ] {
        match client.publish_raw_with(&topic, &payload, &options).await {
            Err(tchu::Error::PublishOptions(_)) => {}
            other => panic!("expected PublishOptions, got {other:?}"),
        }
    }
}

/// No attribute handlers here: the in-memory service runs only the one it is given.
mod none {}

#[tokio::test(start_paused = true)]
async fn in_memory_a_delayed_event_waits_on_the_clock() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let broker = tchu::MemoryBroker::new();
    let client = Client::memory(&broker);
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let handle = tchu::Service::new("mem_delay")
        .handlers_in(concat!(module_path!(), "::none"))
        .on_pattern::<tchu::Message>("it.mem.delay", move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {}
        })
        .start(&client)
        .await
        .unwrap();
    let payload = serde_json::json!({ "n": 1 });
    let options = PublishOptions::new().delay(Duration::from_secs(90));
    client
        .publish_raw_with("it.mem.delay", &payload, &options)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(89)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 0, "not before it is due");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    handle.shutdown().await.unwrap();
}
