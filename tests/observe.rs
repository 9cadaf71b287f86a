//! Observability on RabbitMQ: a W3C trace follows an event from one service to the next, the
//! correlation id is in every log line of a delivery, and (with the `prometheus` feature) the
//! metrics of a real service are scraped from its `/metrics` endpoint.
#![cfg(feature = "service")]
#![allow(
    clippy::too_many_lines,
    reason = "a scenario test reads top to bottom, one step after the other"
)]

mod common;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;
use tchu::TraceContext;

mod relay {
    use std::sync::Mutex;
    use tchu::prelude::*;

    #[tchu::event(topic = "observe.first")]
    pub struct First {
        pub n: u32,
    }

    #[tchu::event(topic = "observe.second")]
    pub struct Second {
        pub n: u32,
    }

    /// What the handler saw: the sender's trace context.
    pub static SEEN: Mutex<Vec<Option<tchu::TraceContext>>> = Mutex::new(Vec::new());

    pub mod svc {
        use super::*;

        #[tchu::subscribe]
        async fn relay(ev: First, msg: Message, client: Client) -> tchu::Result<()> {
            SEEN.lock().unwrap().push(msg.trace_context());
            client.publish(&Second { n: ev.n + 1 }).await?;
            Ok(())
        }
    }
}

fn header_str(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    d.properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        })
}

#[tokio::test]
async fn a_trace_follows_an_event_across_services() {
    let queue = common::unique("observe_relay");
    let client = tchu::Client::from_env().await.unwrap();
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::relay::svc"))
        .start(&client)
        .await
        .unwrap();
    let (_conn, ch) = common::channel().await;
    let (_q, mut seconds) = common::temp_queue(&ch, Some("observe.second")).await;

    // An upstream (say an OpenTelemetry-instrumented Python service) sends with a traceparent.
    let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut msg = tchu::wire::encode(
        "observe.first",
        &json!({"n": 1}),
        &tchu::wire::EncodeOptions {
            format: tchu::Format::Native,
            id: "first-1",
            is_rpc: false,
            reply_to: None,
            ..Default::default()
        },
    )
    .unwrap();
    msg.headers.insert("traceparent".into(), upstream.into());
    msg.headers
        .insert("tracestate".into(), "congo=t61rcWkgMzE".into());
    let mut headers = FieldTable::default();
    for (k, v) in &msg.headers {
        if let Some(s) = v.as_str() {
            headers.insert(k.as_str().into(), AMQPValue::LongString(s.into()));
        }
    }
    ch.basic_publish(
        "tchu_events".into(),
        "observe.first".into(),
        BasicPublishOptions::default(),
        &msg.body,
        BasicProperties::default()
            .with_content_type(
                msg.properties
                    .content_type
                    .clone()
                    .unwrap_or_default()
                    .as_str()
                    .into(),
            )
            .with_message_id("first-1".into())
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let d = tokio::time::timeout(Duration::from_secs(10), seconds.next())
        .await
        .expect("the relayed event did not arrive")
        .unwrap()
        .unwrap();
    let sent = TraceContext::parse(&header_str(&d, "traceparent").expect("no traceparent"))
        .expect("a valid traceparent");
    let up = TraceContext::parse(upstream).unwrap();
    assert_eq!(sent.trace_id, up.trace_id, "the trace id must carry over");
    assert_ne!(
        sent.span_id, up.span_id,
        "the relay's own span is the new parent"
    );
    assert_eq!(sent.flags, 1);
    assert_eq!(
        header_str(&d, "tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );
    let seen = relay::SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].as_ref().map(|c| c.traceparent()).as_deref(),
        Some(upstream)
    );

    // Published outside any handler: a new trace, still a valid header.
    client.publish(&relay::Second { n: 9 }).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), seconds.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let fresh = TraceContext::parse(&header_str(&d, "traceparent").unwrap()).unwrap();
    assert_ne!(fresh.trace_id, up.trace_id);

    service.shutdown().await.unwrap();
    client.close().await;
    common::delete_queues(&ch, &[&queue, &format!("{queue}.dlq")]).await;
}

/// Runs the `orders` example with `env`; its stderr lines arrive on the channel.
fn orders(queue: &str, env: &[(&str, &str)]) -> (common::KillOnDrop, Receiver<String>) {
    let mut cmd = Command::new(common::example("orders"));
    cmd.env("TCHU_QUEUE", queue)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (common::KillOnDrop(child), rx)
}

fn wait_for(rx: &Receiver<String>, needle: &str, lines: &mut Vec<String>) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(needle);
                lines.push(l);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test]
async fn every_log_line_of_a_delivery_carries_its_correlation_id() {
    let queue = common::unique("observe_logs");
    let (child, rx) = orders(
        &queue,
        &[("RUST_LOG", "info,tchu_runtime=debug"), ("NO_COLOR", "1")],
    );
    let mut lines = Vec::new();
    assert!(wait_for(&rx, "consuming", &mut lines), "{lines:#?}");
    let client = tchu::Client::from_env().await.unwrap();
    // Handled (and it publishes `orders.shipped`, which the audit handler sees too)...
    let good = client
        .publish_raw("orders.placed", &json!({"order_id": 5, "lines": []}))
        .await
        .unwrap();
    // ...and rejected: the payload does not fit `OrderPlaced`.
    let bad = client
        .publish_raw("orders.placed", &json!({"order_id": "five"}))
        .await
        .unwrap();
    assert!(wait_for(&rx, "dead-letter queue", &mut lines), "{lines:#?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    lines.extend(rx.try_iter());
    drop(child);
    client.close().await;

    for id in [&good, &bad] {
        let of_delivery: Vec<&String> = lines.iter().filter(|l| l.contains(id.as_str())).collect();
        assert!(
            of_delivery.len() >= 2,
            "expected several log lines for {id}: {lines:#?}"
        );
        for l in &of_delivery {
            assert!(
                l.contains(&format!("correlation_id={id}")),
                "line without the correlation id: {l}"
            );
            assert!(l.contains("trace_id="), "line without the trace id: {l}");
        }
    }
    // Every line logged inside a delivery's span has it, whatever the message.
    for l in lines.iter().filter(|l| l.contains("tchu.delivery{")) {
        assert!(l.contains("correlation_id="), "{l}");
    }
    common::delete_service_queues(&queue).await;
}

#[cfg(feature = "prometheus")]
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(feature = "prometheus")]
#[tokio::test]
async fn a_service_serves_its_metrics_to_prometheus() {
    let queue = common::unique("observe_metrics");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (child, rx) = orders(
        &queue,
        &[("RUST_LOG", "info"), ("TCHU_METRICS_ADDR", addr.as_str())],
    );
    let mut lines = Vec::new();
    assert!(wait_for(&rx, "consuming", &mut lines), "{lines:#?}");
    let client = tchu::Client::from_env().await.unwrap();
    for n in 0..3 {
        client
            .publish_raw("orders.placed", &json!({"order_id": n, "lines": []}))
            .await
            .unwrap();
    }
    client
        .publish_raw("orders.placed", &json!({"order_id": "bad"}))
        .await
        .unwrap();
    let q = queue.as_str();
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        text = common::scrape(&addr);
        if metric(
            &text,
            "tchu_dead_lettered_total",
            &[("queue", q), ("reason", "rejected")],
        ) >= Some(1.0)
            && metric(
                &text,
                "tchu_handled_total",
                &[("queue", q), ("handler", "orders::reserve_stock")],
            ) >= Some(3.0)
            // The audit handler also runs on the `orders.shipped` events the service publishes:
            // scraped while one runs, the gauge reads 1.
            && metric(&text, "tchu_in_flight", &[("queue", q)]) == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(child);
    client.close().await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // Other tests (here or in other binaries under nextest) may publish `orders.placed` too,
    // and every orders service receives it: at least what this test sent, and consistent.
    let h = ("handler", "orders::reserve_stock");
    let handled = metric(&text, "tchu_handled_total", &[("queue", q), h]).unwrap_or(0.0);
    let rejected = metric(
        &text,
        "tchu_failed_total",
        &[("queue", q), h, ("kind", "rejected")],
    )
    .unwrap_or(0.0);
    assert!(handled >= 3.0, "{text}");
    assert!(rejected >= 1.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "tchu_dead_lettered_total",
            &[("queue", q), ("reason", "rejected")]
        ),
        Some(rejected),
        "every rejected delivery is dead-lettered: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "tchu_handler_duration_seconds_count",
            &[("queue", q), h]
        ),
        Some(handled + rejected),
        "{text}"
    );
    // The handler published three `orders.shipped` events, each confirmed.
    assert!(
        metric(&text, "tchu_published_total", &[("outcome", "confirmed")]).unwrap_or(0.0) >= 3.0,
        "{text}"
    );
    assert!(
        text.contains("tchu_publish_confirm_seconds_count"),
        "{text}"
    );
    assert_eq!(
        metric(&text, "tchu_in_flight", &[("queue", q)]),
        Some(0.0),
        "{text}"
    );
    common::delete_service_queues(&queue).await;
}

/// The backlog gauges: messages waiting in the dead-letter queue and the queue's consumers,
/// read by the service itself (passive declarations, no management plugin).
#[cfg(feature = "prometheus")]
#[tokio::test]
async fn a_service_reports_its_backlog() {
    use lapin::options::BasicPublishOptions;
    let queue = common::unique("observe_lag");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (child, rx) = orders(
        &queue,
        &[("RUST_LOG", "info"), ("TCHU_METRICS_ADDR", addr.as_str())],
    );
    let mut lines = Vec::new();
    assert!(wait_for(&rx, "consuming", &mut lines), "{lines:#?}");
    // Three messages parked by hand in the dead-letter queue.
    let (_c, ch) = common::channel().await;
    let dlq = format!("{queue}.dlq");
    for n in 0..3u8 {
        ch.basic_publish(
            "".into(),
            dlq.as_str().into(),
            BasicPublishOptions::default(),
            &[b'{', b'}', n],
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let q = queue.as_str();
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        text = common::scrape(&addr);
        // Other tests' rejected `orders.placed` reach this service too: at least ours.
        if metric(&text, "tchu_dlq_messages", &[("queue", q)]) >= Some(3.0)
            && metric(&text, "tchu_queue_consumers", &[("queue", q)]) == Some(1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(child);
    let parked = metric(&text, "tchu_dlq_messages", &[("queue", q)]);
    assert!(parked >= Some(3.0), "{text}");
    let consumers = metric(&text, "tchu_queue_consumers", &[("queue", q)]);
    assert_eq!(consumers, Some(1.0), "{text}");
    let waiting = metric(&text, "tchu_queue_messages", &[("queue", q)]);
    assert!(waiting.is_some(), "{text}");
    common::delete_service_queues(&queue).await;
}
