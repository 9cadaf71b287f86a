//! OpenTelemetry export (`otel` feature), against OTLP receivers this test starts: one trace
//! crosses two services and a retry on RabbitMQ, with the application's own `tracing` span
//! under the handler's span and the next publish under that; an RPC call and its answer are
//! spans of their own; a collector answering 503 and 429 is retried; and the three transports
//! (`http/protobuf`, `http/json`, `grpc`) are decoded by someone else's code (OpenTelemetry's
//! own protobuf classes in Python; JSON read field by field as the OTLP specification names
//! them).
#![cfg(all(feature = "service", feature = "otel"))]

mod common;
mod python;

use common::otlp::{Bodies, receiver};
use common::{delete_service_queues, unique, wait_until};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tchu::observe::otlp::{OtlpConfig, Protocol};
use tchu::prelude::*;
use tchu::{Handler, Service};
use tracing::Instrument;

#[tchu::event(topic = "it.otel.ask", response = Answer)]
struct Ask {
    marker: String,
}

#[tchu::payload]
#[derive(Debug)]
struct Answer {
    marker: String,
}

/// No attribute handlers: each service runs the run-time ones it is given.
mod none {}

fn none() -> &'static str {
    concat!(module_path!(), "::none")
}

fn span<'a>(spans: &'a [Value], name: &str, attempt: Option<u64>) -> &'a Value {
    spans
        .iter()
        .find(|s| {
            s["name"] == name
                && attempt
                    .is_none_or(|a| s["attributes"]["tchu.attempt"].as_i64() == Some(a as i64))
        })
        .unwrap_or_else(|| panic!("no span {name:?} (attempt {attempt:?}) in {spans:#?}"))
}

fn child_of(child: &Value, parent: &Value) -> bool {
    child["traceId"] == parent["traceId"] && child["parentSpanId"] == parent["spanId"]
}

#[tokio::test]
async fn one_trace_crosses_two_services_and_a_retry_rpc_calls_are_spans_and_json_too() {
    // The application's subscriber, with tchu's layer: its spans join tchu's.
    {
        use tracing_subscriber::prelude::*;
        let _ = tracing_subscriber::registry()
            .with(tchu::observe::otlp::layer())
            .try_init();
    }
    // The collector is overloaded at first: the batch is sent again.
    let (url, bodies) = receiver(&[503, 429]).await;
    let mut config = OtlpConfig::new(&url);
    config.protocol = Protocol::HttpProtobuf;
    tchu::observe::otlp::install(config);

    let u = unique("t");
    let (start, next) = (format!("it.otel.{u}.start"), format!("it.otel.{u}.next"));
    let (qa, qb) = (unique("it_otel_a"), unique("it_otel_b"));
    let client = Client::connect(&common::broker_url()).await.unwrap();
    let (a, b) = start_services(&client, (&qa, &qb), (&start, &next)).await;
    client
        .publish_raw(&start, &json!({ "marker": u }))
        .await
        .unwrap();
    let answer = client.call(&Ask { marker: u.clone() }).await.unwrap();
    assert_eq!(answer.marker, u);
    let spans = collect_protobuf_spans(&bodies).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    delete_service_queues(&qa).await;
    delete_service_queues(&qb).await;

    assert_the_event_trace(&spans, (&qa, &qb), (&start, &next));
    assert_the_rpc_spans(&spans);
    http_json_carries_hex_ids_and_string_timestamps_as_otlp_specifies().await;
    grpc_exports_the_same_spans_to_a_grpc_collector().await;
}

/// Service A forwards `start` to `next` and answers `Ask`; service B fails `next` once, then
/// its retry succeeds.
async fn start_services(
    client: &Client,
    (qa, qb): (&str, &str),
    (start, next): (&str, &str),
) -> (tchu::ServiceHandle, tchu::ServiceHandle) {
    let forward = next.to_owned();
    let a = Service::new(qa)
        .handlers_in(none())
        .handler(
            Handler::on_pattern::<(Message, Client)>(start.to_owned(), move |(msg, client)| {
                let next = forward.clone();
                // The application's own span, as a database query or an HTTP call would have.
                let lookup = tracing::info_span!("user.lookup", tenant = "acme");
                async move { client.publish_raw(&next, msg.payload()).await.map(drop) }
                    .instrument(lookup)
            })
            .with_name("forward"),
        )
        .on::<Ask>(|ask| async move { Answer { marker: ask.marker } })
        .start(client)
        .await
        .unwrap();
    let b = Service::new(qb)
        .handlers_in(none())
        .handler(
            Handler::on_pattern::<Attempt>(next.to_owned(), |attempt| async move {
                match attempt.0 {
                    1 => Err(tchu::Error::handler(std::io::Error::other("flaky"))),
                    _ => Ok(()),
                }
            })
            .with_name("flaky")
            .with_retry(RetryPolicy::fixed(2, Duration::from_millis(50))),
        )
        .start(client)
        .await
        .unwrap();
    (a, b)
}

/// The spans exported over protobuf, decoded, once the flow's last ones are in (the retried
/// run of `flaky`, and the RPC answer).
async fn collect_protobuf_spans(bodies: &Bodies) -> Vec<Value> {
    let decoded = || {
        let protobuf: Vec<Vec<u8>> = (bodies.lock().unwrap().iter())
            .filter(|(t, _)| t == "application/x-protobuf")
            .map(|(_, b)| b.clone())
            .collect();
        python::otlp_spans(&protobuf)
    };
    let mut spans = Vec::new();
    for _ in 0..20 {
        tchu::observe::otlp::flush(Duration::from_secs(5));
        spans = decoded();
        let done = |s: &Value| s["name"] == "handle flaky" && s["attributes"]["tchu.attempt"] == 2;
        if spans.iter().any(done) && spans.iter().any(|s| s["name"] == "reply it.otel.ask") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    spans
}

/// publish → process (A) → handle → publish → process (B) → failed handle and its retry →
/// process (B, attempt 2) → handle: one trace, each span the child of the one it follows.
fn assert_the_event_trace(spans: &[Value], (qa, qb): (&str, &str), (start, next): (&str, &str)) {
    let publish = span(spans, &format!("publish {start}"), None);
    assert_eq!(publish["kind"], 4, "producer");
    assert_eq!(publish["parentSpanId"], "", "the root of the trace");
    let process_a = span(spans, &format!("process {start}"), Some(1));
    assert!(child_of(process_a, publish));
    assert_eq!(
        (process_a["kind"].clone(), process_a["service"].clone()),
        (json!(5), json!(qa))
    );
    let forward = span(spans, "handle forward", Some(1));
    assert!(child_of(forward, process_a));
    let lookup = span(spans, "user.lookup", None);
    assert!(
        child_of(lookup, forward),
        "the application's span sits under the handler's"
    );
    assert_eq!(lookup["service"], json!(qa));
    assert_eq!(lookup["attributes"]["tenant"], "acme");
    let publish_next = span(spans, &format!("publish {next}"), None);
    assert!(
        child_of(publish_next, lookup),
        "published from inside the application's span"
    );
    assert_eq!(publish_next["service"], json!(qa));
    let first = span(spans, &format!("process {next}"), Some(1));
    assert!(child_of(first, publish_next));
    assert_eq!(first["service"], json!(qb), "the second service");
    let failed = span(spans, "handle flaky", Some(1));
    assert!(child_of(failed, first));
    assert_eq!(failed["status"], 2, "the failed run is an error");
    let retry = span(spans, "retry flaky", Some(1));
    assert!(child_of(retry, first));
    assert_eq!(retry["attributes"]["tchu.retry_in_ms"], 50);
    let second = span(spans, &format!("process {next}"), Some(2));
    assert!(
        child_of(second, publish_next),
        "the retried copy keeps its sender's context"
    );
    let ok = span(spans, "handle flaky", Some(2));
    assert!(child_of(ok, second));
    assert_eq!(ok["status"], 0);
}

/// call → process → reply, in a trace of its own.
fn assert_the_rpc_spans(spans: &[Value]) {
    let call = span(spans, "call it.otel.ask", None);
    assert_eq!(call["kind"], 3, "client");
    assert_eq!(
        call["parentSpanId"], "",
        "a call from outside any handler starts a trace"
    );
    let asked = span(spans, "process it.otel.ask", Some(1));
    assert!(child_of(asked, call));
    let reply = span(spans, "reply it.otel.ask", None);
    assert!(child_of(reply, asked));
    assert!(
        call["end"].as_u64() >= reply["start"].as_u64(),
        "the call ends after the answer"
    );
}

/// The second half of the test (the exporter is one per process, so the halves take turns):
/// OTLP/JSON carries hex ids and string timestamps, as the specification says.
async fn http_json_carries_hex_ids_and_string_timestamps_as_otlp_specifies() {
    let (url, bodies) = receiver(&[]).await;
    let mut config = OtlpConfig::new(&url);
    config.protocol = Protocol::HttpJson;
    config.service_name = Some("it-json".into());
    tchu::observe::otlp::install(config);
    let broker = tchu::MemoryBroker::new();
    let client = Client::memory(&broker);
    let topic = format!("it.otel.{}", unique("json"));
    let q = unique("json");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let handle = Service::new(&q)
        .handlers_in(none())
        .on_pattern::<Message>(topic.clone(), move |m| {
            kept.lock().unwrap().push(m.trace_context().unwrap());
            async {}
        })
        .start(&client)
        .await
        .unwrap();
    client.publish_raw(&topic, &json!({})).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || !seen.lock().unwrap().is_empty()).await);
    let sent = seen.lock().unwrap()[0].clone();
    let mut body = None;
    for _ in 0..20 {
        tchu::observe::otlp::flush(Duration::from_secs(5));
        body = (bodies.lock().unwrap().iter())
            .find(|(t, b)| t == "application/json" && String::from_utf8_lossy(b).contains(&topic))
            .map(|(_, b)| b.clone());
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown().await.unwrap();
    let doc: Value = serde_json::from_slice(&body.expect("no JSON export")).unwrap();
    let rs = &doc["resourceSpans"][0];
    assert_eq!(rs["resource"]["attributes"][0]["key"], "service.name");
    assert_eq!(
        rs["resource"]["attributes"][0]["value"]["stringValue"],
        "it-json"
    );
    let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
    let publish = spans
        .iter()
        .find(|s| s["name"] == format!("publish {topic}"))
        .expect("the publish span");
    // The ids the message carried in `traceparent` are the exported span's, in lowercase hex.
    assert_eq!(publish["traceId"], sent.trace_id_hex());
    assert_eq!(publish["spanId"], format!("{:016x}", sent.span_id));
    let start = publish["startTimeUnixNano"]
        .as_str()
        .expect("a string")
        .parse::<u64>();
    assert!(start.unwrap() > 1_600_000_000_000_000_000);
    assert_eq!(publish["kind"], 4);
}

/// A gRPC collector: HTTP/2, answering every `Export` call with an empty response and status
/// 0, keeping each request's path and message (the gRPC frame's payload).
async fn grpc_receiver() -> (String, Bodies) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies: Bodies = Arc::default();
    let kept = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((request, respond))) = conn.accept().await {
                    tokio::spawn(grpc_answer(request, respond, kept.clone()));
                }
            });
        }
    });
    (url, bodies)
}

async fn grpc_answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    kept: Bodies,
) {
    let path = request.uri().path().to_owned();
    let mut body = request.into_body();
    let mut frame = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        frame.extend_from_slice(&chunk);
    }
    // A gRPC message: a compression flag, a 4-byte length, the protobuf.
    kept.lock()
        .unwrap()
        .push((path, frame.get(5..).unwrap_or_default().to_vec()));
    let head = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}

/// The third transport: the same spans over OTLP/gRPC, decoded by OpenTelemetry's classes.
async fn grpc_exports_the_same_spans_to_a_grpc_collector() {
    let (url, bodies) = grpc_receiver().await;
    let mut config = OtlpConfig::new(&url);
    config.protocol = Protocol::Grpc;
    tchu::observe::otlp::install(config);
    let broker = tchu::MemoryBroker::new();
    let client = Client::memory(&broker);
    let topic = format!("it.otel.{}", unique("grpc"));
    let q = unique("grpc");
    let handle = Service::new(&q)
        .handlers_in(none())
        .on_pattern::<Message>(topic.clone(), |_| async {})
        .start(&client)
        .await
        .unwrap();
    client.publish_raw(&topic, &json!({})).await.unwrap();
    let mut spans = Vec::new();
    for _ in 0..20 {
        tokio::task::spawn_blocking(|| tchu::observe::otlp::flush(Duration::from_secs(5)))
            .await
            .unwrap();
        let messages: Vec<Vec<u8>> = (bodies.lock().unwrap().iter())
            .map(|(path, m)| {
                assert_eq!(
                    path,
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                );
                m.clone()
            })
            .collect();
        spans = python::otlp_spans(&messages);
        if spans
            .iter()
            .any(|s| s["name"] == format!("process {topic}"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown().await.unwrap();
    let publish = span(&spans, &format!("publish {topic}"), None);
    let process = span(&spans, &format!("process {topic}"), Some(1));
    assert!(child_of(process, publish));
    assert_eq!(process["service"], json!(q));
}
