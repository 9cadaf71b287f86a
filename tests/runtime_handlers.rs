//! Handlers built at run time (`tchu::Handler`, `Service::on`): on RabbitMQ they run beside the
//! attribute ones with the same extractors, retry and RPC rules; the start-up checks refuse
//! what the attribute's compile-time checks refuse; `topology --json` and the AsyncAPI export
//! of a `run!()` binary list them with their metadata.
#![cfg(feature = "service")]

mod common;
mod python;

use common::{channel, delete_service_queues, drain_at_least, header, unique, wait_until};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tchu::prelude::*;
use tchu::{DedupKey, Service};

#[tchu::event(topic = "it.rth.ping")]
struct Ping {
    id: String,
    mode: String,
}

#[tchu::event(topic = "it.rth.other")]
struct Other {
    id: String,
}

#[tchu::payload]
#[derive(Debug)]
struct Total {
    cents: i64,
}

#[tchu::payload]
#[derive(Debug)]
enum QuoteRefused {
    Unknown { sku: String },
}

#[tchu::event(topic = "it.rth.quote", response = Total, error = QuoteRefused)]
struct AskQuote {
    sku: String,
}

/// What every handler saw: (handler, id, detail).
#[derive(Default)]
struct Seen(Mutex<Vec<(String, String, String)>>);

impl Seen {
    fn push(&self, handler: &str, id: &str, detail: impl Into<String>) {
        let row = (handler.to_owned(), id.to_owned(), detail.into());
        self.0.lock().unwrap().push(row);
    }
    fn of(&self, handler: &str, id: &str) -> Vec<String> {
        let rows = self.0.lock().unwrap();
        let mine = rows.iter().filter(|r| r.0 == handler && r.1 == id);
        mine.map(|r| r.2.clone()).collect()
    }
}

use common::Transient;

mod attr {
    use super::*;

    #[tchu::subscribe(metadata(owner = "it"))]
    async fn pinged(p: Ping, seen: State<Seen>) {
        seen.push("attr", &p.id, "attribute");
    }
}

/// A module with no attribute handlers: services of only run-time handlers select it.
mod none {}

async fn client() -> Client {
    Client::connect(&common::broker_url()).await.unwrap()
}

#[tokio::test]
async fn runtime_handlers_run_beside_attribute_ones_with_the_same_extractors() {
    let queue = unique("it_rth_run");
    let seen = Arc::new(Seen::default());
    let greeting = format!("configured-{}", queue.len()); // what a closure captures
    let service = Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::attr"))
        .state_arc(seen.clone())
        .on::<(Ping, State<Seen>, Attempt, RoutingKey)>(move |(p, seen, attempt, key)| {
            let greeting = greeting.clone();
            async move {
                let detail = format!("{greeting} attempt={} key={}", attempt.0, &*key);
                seen.push("typed", &p.id, detail);
            }
        })
        .on_pattern::<(Message, State<Seen>)>("it.rth.#", |(msg, seen)| async move {
            let id = msg.payload()["id"].as_str().unwrap_or_default().to_owned();
            seen.push("pattern", &id, msg.topic());
        });
    let client = client().await;
    let handle = service.start(&client).await.unwrap();
    let id = unique("ping");
    client
        .publish(&Ping {
            id: id.clone(),
            mode: "ok".into(),
        })
        .await
        .unwrap();
    client.publish(&Other { id: id.clone() }).await.unwrap();
    let all_seen = wait_until(Duration::from_secs(10), || {
        seen.of("pattern", &id).len() == 2 && !seen.of("typed", &id).is_empty()
    })
    .await;
    handle.shutdown().await.unwrap();
    delete_service_queues(&queue).await;
    assert!(
        all_seen,
        "not every handler ran: {:?}",
        seen.0.lock().unwrap()
    );
    let expected = format!("configured-{} attempt=1 key=it.rth.ping", queue.len());
    assert_eq!(seen.of("typed", &id), vec![expected]);
    assert_eq!(seen.of("attr", &id), vec!["attribute".to_owned()]);
    let mut topics = seen.of("pattern", &id);
    topics.sort();
    assert_eq!(topics, vec!["it.rth.other", "it.rth.ping"]);
}

#[tokio::test]
async fn retry_policies_and_retry_on_given_as_values_decide_like_the_attribute() {
    let queue = unique("it_rth_retry");
    let seen = Arc::new(Seen::default());
    let runs = seen.clone();
    let flaky = Handler::on::<(Ping, Attempt)>(move |(p, attempt)| {
        let runs = runs.clone();
        async move {
            runs.push("flaky", &p.id, attempt.0.to_string());
            match p.mode.as_str() {
                "flaky" if attempt.0 < 3 => Err(tchu::Error::handler(Transient)),
                "fatal" => Err(tchu::Error::handler(std::io::Error::other("disk gone"))),
                _ => Ok(()),
            }
        }
    })
    .with_name("it.flaky")
    .with_retry(RetryPolicy::fixed(4, Duration::from_millis(50)))
    .retry_on::<Transient>();
    let service = Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::none"))
        .handler(flaky);
    let client = client().await;
    let handle = service.start(&client).await.unwrap();
    let (flaky_id, fatal_id) = (unique("flaky"), unique("fatal"));
    for (id, mode) in [(&flaky_id, "flaky"), (&fatal_id, "fatal")] {
        let ping = Ping {
            id: id.clone(),
            mode: mode.into(),
        };
        client.publish(&ping).await.unwrap();
    }
    let (_conn, ch) = channel().await;
    let parked = drain_at_least(&ch, &format!("{queue}.dlq"), 1, Duration::from_secs(10)).await;
    let flaky_done = wait_until(Duration::from_secs(10), || {
        seen.of("flaky", &flaky_id).len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // a fourth run would show by now
    handle.shutdown().await.unwrap();
    delete_service_queues(&queue).await;
    assert!(flaky_done);
    // Transient is listed: retried until it succeeded on the third attempt, never parked.
    assert_eq!(seen.of("flaky", &flaky_id), vec!["1", "2", "3"]);
    // An io::Error is not listed: parked after one run, naming the handler.
    assert_eq!(seen.of("flaky", &fatal_id), vec!["1"]);
    assert_eq!(parked.len(), 1, "only the fatal message is parked");
    assert_eq!(
        header(&parked[0], "x-tchu-handler").as_deref(),
        Some("it.flaky")
    );
    assert_eq!(
        header(&parked[0], "x-tchu-error-kind").as_deref(),
        Some("failed")
    );
    let body: Value = serde_json::from_slice(&parked[0].delivery.data).unwrap();
    assert!(body.to_string().contains(&fatal_id));
}

#[tokio::test]
async fn a_runtime_responder_answers_calls_with_its_response_and_business_errors() {
    let queue = unique("it_rth_rpc");
    let prices = Arc::new(vec![("apple".to_owned(), 40_i64)]);
    let service = Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::none"))
        .on::<AskQuote>(move |q| {
            let prices = prices.clone();
            async move {
                match prices.iter().find(|(sku, _)| *sku == q.sku) {
                    Some((_, cents)) => Ok(Total { cents: *cents }),
                    None => Err(QuoteRefused::Unknown { sku: q.sku }),
                }
            }
        });
    let client = client().await;
    let handle = service.start(&client).await.unwrap();
    let ok = client
        .call(&AskQuote {
            sku: "apple".into(),
        })
        .await;
    let refused = client.call(&AskQuote { sku: "kiwi".into() }).await;
    handle.shutdown().await.unwrap();
    delete_service_queues(&queue).await;
    assert_eq!(ok.unwrap().cents, 40);
    match refused {
        Err(CallError::Business(QuoteRefused::Unknown { sku })) => assert_eq!(sku, "kiwi"),
        other => panic!("expected the business error, got {other:?}"),
    }
}

#[tokio::test]
async fn start_up_checks_refuse_what_the_attribute_would_refuse_at_compile_time() {
    struct Missing;
    let service = Service::new(unique("it_rth_bad"))
        .handlers_in(concat!(module_path!(), "::none"))
        .on::<(Ping, State<Missing>)>(|_| async {})
        .on_pattern::<Ping>("it.rth.other", |_| async {})
        .on::<Message>(|_| async {})
        .on_pattern::<Message>("it..rth", |_| async {})
        .on::<(Ping, Other)>(|_| async {})
        .handler(Handler::on::<Other>(|_| async {}).with_name("twice"))
        .handler(Handler::on::<Other>(|_| async {}).with_name("twice"))
        .handler(
            Handler::on::<Other>(|_| async {})
                .with_name("once")
                .with_dedup(DedupKey::MessageId),
        )
        .handler(Handler::on::<Other>(|_| async {}).with_name(""))
        .handler(
            Handler::on::<Other>(|_| async {})
                .with_name("path")
                .with_dedup(DedupKey::field("a..b")),
        )
        .handler(
            Handler::on::<Other>(|_| async {})
                .with_name("never")
                .with_retry(RetryPolicy::fixed(0, Duration::ZERO)),
        )
        .handler(
            Handler::on::<Other>(|_| async {})
                .with_name("inverted")
                .with_retry(RetryPolicy::exponential(
                    3,
                    Duration::from_secs(9),
                    Duration::from_secs(1),
                )),
        );
    let client = client().await;
    let problems = match service.start(&client).await {
        Err(tchu::Error::InvalidService { problems, .. }) => problems,
        Err(other) => panic!("expected InvalidService, got {other}"),
        Ok(_) => panic!("a service with broken handlers started"),
    };
    let text = problems.join("\n");
    for expected in [
        "needs `State<",
        "pattern `it.rth.other` can never match the topic `it.rth.ping`",
        "has no event argument and no pattern",
        "pattern `it..rth`",
        "takes more than one event argument",
        "two handlers are named `twice`",
        "has `dedup` but the service has no inbox",
        "has an empty name",
        "dedup key `a..b`",
        "`max_attempts` counts the first run too",
        "the backoff's cap 1s is below its base 9s",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    // Each message names where the handler was built, as the attribute's names its function.
    assert!(text.contains("tests/runtime_handlers.rs:"), "{text}");
    // The two-event handler also takes the first one's default name.
    assert!(
        text.contains("two handlers are named `on:it.rth.ping`"),
        "{text}"
    );
    assert_eq!(problems.len(), 12, "{text}");
}

#[tokio::test]
async fn start_up_checks_refuse_what_ordered_handlers_cannot_keep() {
    let service = Service::new(unique("it_rth_ordered"))
        .handlers_in(concat!(module_path!(), "::none"))
        .handler(
            Handler::on::<Other>(|_| async {})
                .with_name("unordered")
                .with_ordered("account..id"),
        )
        .handler(
            Handler::on::<Other>(|_| async {})
                .with_name("early")
                .with_ordered("account_id")
                .with_ack(tchu::AckPolicy::Early),
        )
        .handler(
            Handler::on::<Other>(|_| async {})
                .with_name("patient")
                .with_ordered("account_id")
                .with_retry(RetryPolicy::fixed(4, Duration::from_secs(300))),
        );
    let problems = match service.start(&client().await).await {
        Err(tchu::Error::InvalidService { problems, .. }) => problems,
        Err(other) => panic!("expected InvalidService, got {other}"),
        Ok(_) => panic!("a service with broken handlers started"),
    };
    let text = problems.join("\n");
    for expected in [
        "handler `unordered` (tests/runtime_handlers.rs:",
        "ordered key `account..id`",
        "combines `ordered` with early acknowledgement",
        "its retries wait up to 900s in all, over the 600s",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert_eq!(problems.len(), 3, "{text}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_runtime_dedup_handler_runs_once_per_key() {
    let queue = unique("it_rth_dedup");
    let seen = Arc::new(Seen::default());
    let effects = seen.clone();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let service = Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::none"))
        .inbox(tchu::Inbox::redis(&url).unwrap())
        .handler(
            Handler::on::<Ping>(move |p| {
                let effects = effects.clone();
                async move { effects.push("charge", &p.id, p.mode) }
            })
            .with_dedup(DedupKey::field("id")),
        );
    let client = client().await;
    let handle = service.start(&client).await.unwrap();
    let id = unique("charge");
    for n in 0..3 {
        let ping = Ping {
            id: id.clone(),
            mode: format!("copy{n}"),
        };
        client.publish(&ping).await.unwrap();
    }
    let ran = wait_until(Duration::from_secs(10), || {
        !seen.of("charge", &id).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a wrong second effect
    handle.shutdown().await.unwrap();
    delete_service_queues(&queue).await;
    assert!(ran);
    assert_eq!(seen.of("charge", &id), vec!["copy0"]);
}

fn configured(args: &[&str], pattern: &str) -> Value {
    let out = Command::new(common::example("configured"))
        .args(args)
        .env("NOTIFY_PATTERN", pattern)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the configured example");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn topology_lists_runtime_handlers_with_their_origin_and_metadata() {
    let doc = configured(&["topology", "--json"], "alerts.critical.*");
    let handlers = doc["handlers"].as_array().unwrap();
    let by_name = |n: &str| handlers.iter().find(|h| h["name"] == n).unwrap().clone();
    let alerts = by_name("notify.alerts");
    assert_eq!(alerts["origin"], "runtime");
    assert_eq!(
        alerts["pattern"], "alerts.critical.*",
        "chosen by configuration"
    );
    assert_eq!(alerts["metadata"], json!({ "owner": "sre" }));
    assert_eq!(alerts["retry"]["max_attempts"], 3);
    assert!(
        alerts["source"]
            .as_str()
            .unwrap()
            .starts_with("examples/configured.rs:")
    );
    let count = by_name("notify.count");
    assert_eq!(
        (count["origin"].clone(), count["rpc"].clone()),
        (json!("runtime"), json!(true))
    );
    let welcome = by_name("configured::welcome");
    assert_eq!(welcome["origin"], "attribute");
    assert_eq!(
        welcome["metadata"],
        json!({ "owner": "growth", "runbook.url": "https://runbooks.example/welcome" })
    );
    let keys: Vec<&str> = (doc["bindings"].as_array().unwrap().iter())
        .filter_map(|b| b["routing_key"].as_str())
        .collect();
    assert!(
        keys.contains(&"alerts.critical.*") && keys.contains(&"notify.count"),
        "{keys:?}"
    );
}

#[test]
fn the_asyncapi_export_carries_runtime_handlers_and_metadata_and_still_validates() {
    let doc = configured(&["asyncapi"], "alerts.#");
    let ops = doc["operations"].as_object().unwrap();
    let op = |title: &str| ops.values().find(|o| o["title"] == title).unwrap().clone();
    assert_eq!(
        op("notify.alerts")["x-tchu-metadata"],
        json!({ "owner": "sre" })
    );
    assert_eq!(op("notify.alerts")["x-tchu-origin"], "runtime");
    // The response, and tchu's default error for a request that declared none.
    assert_eq!(
        op("notify.count")["reply"]["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        op("configured::welcome")["x-tchu-metadata"]["owner"],
        "growth"
    );
    let schema = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/asyncapi/asyncapi-3.0.0.schema.json");
    let errors = python::validate(&schema, &[doc]);
    assert_eq!(errors[0], Vec::<String>::new(), "not valid AsyncAPI 3.0");
}
