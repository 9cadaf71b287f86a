//! The service binary's own commands (`examples/orders.rs`, a `tchu::run!()` service):
//! `topology` against what the broker holds after start (read back with `rabbitmqctl`), `check`
//! and `check --fix` against bindings changed behind the service's back, `schema` validating real
//! payloads and `asyncapi` validating against the AsyncAPI 3.0 JSON Schema vendored in
//! `tests/fixtures/asyncapi/`. The validators are Python's `jsonschema` (tests/python).
#![cfg(feature = "service")]
#![allow(
    clippy::too_many_lines,
    reason = "a scenario test reads top to bottom, one step after the other"
)]

mod common;
mod python;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `check` reads the shared delay route, which one test removes a level of: the tests that run
/// `check` take turns.
static CHECKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn orders(queue: &str, args: &[&str]) -> Output {
    Command::new(common::example("orders"))
        .args(args)
        .env("TCHU_QUEUE", queue)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the orders example")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn rabbitmqctl_json(args: &[&str]) -> Value {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .args(["--formatter", "json"])
        .output()
        .expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}");
    serde_json::from_slice(&out.stdout).expect("rabbitmqctl JSON")
}

/// The binding keys on `tchu_events` to `queue`, as the broker reports them.
fn broker_bindings(queue: &str) -> BTreeSet<String> {
    rabbitmqctl_json(&[
        "list_bindings",
        "source_name",
        "destination_name",
        "routing_key",
    ])
    .as_array()
    .unwrap()
    .iter()
    .filter(|b| b["source_name"] == "tchu_events" && b["destination_name"] == queue)
    .map(|b| b["routing_key"].as_str().unwrap().to_owned())
    .collect()
}

fn topology_queues(topo: &Value) -> Vec<String> {
    let mut v = vec![
        topo["queue"]["name"].as_str().unwrap().to_owned(),
        topo["dead_letter_queue"]["name"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    for d in topo["delay_queues"].as_array().unwrap() {
        v.push(d["name"].as_str().unwrap().to_owned());
    }
    v
}

/// Runs the service until its "consuming" log line: from then on its topology exists.
fn start_service(queue: &str) -> common::KillOnDrop {
    let mut svc = Command::new(common::example("orders"))
        .env("TCHU_QUEUE", queue)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = svc.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("consuming") {
                let _ = tx.send(());
            }
        }
    });
    let svc = common::KillOnDrop(svc);
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        panic!("the service did not start consuming within 30 s");
    }
    svc
}

async fn cleanup(topo: &Value) {
    let (_conn, ch) = common::channel().await;
    let names = topology_queues(topo);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    common::delete_queues(&ch, &refs).await;
}

#[tokio::test]
async fn topology_matches_what_the_broker_holds_after_start() {
    let queue = common::unique("orders_topo");
    let out = orders(&queue, &["topology", "--json"]);
    assert!(out.status.success());
    let topo = stdout_json(&out);
    assert_eq!(topo["queue"]["name"], json!(queue));
    assert_eq!(
        topo["dead_letter_queue"]["name"],
        json!(format!("{queue}.dlq"))
    );
    // A handler with retries: the 13 delay tiers are part of the topology.
    assert_eq!(topo["delay_queues"].as_array().unwrap().len(), 13);
    let handlers: BTreeSet<&str> = topo["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        handlers,
        BTreeSet::from(["orders::audit", "orders::quote", "orders::reserve_stock"])
    );
    let quote = topo["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "orders::quote")
        .unwrap();
    assert_eq!(quote["rpc"], true);
    assert_eq!(quote["event"], "QuoteRequest");

    // The human form names the same things.
    let text = orders(&queue, &["topology"]);
    let text = String::from_utf8(text.stdout).unwrap();
    for needle in [
        &queue as &str,
        "tchu_events",
        "orders.#",
        "orders::reserve_stock",
        ".dlq",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }

    // Start the service; once it consumes, the broker must hold exactly that topology.
    drop(start_service(&queue));

    let want: BTreeSet<String> = topo["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["routing_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(broker_bindings(&queue), want);
    let listed = rabbitmqctl_json(&["list_queues", "name", "durable", "arguments"]);
    for d in topo["delay_queues"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        let q = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("delay queue {name} not on the broker"));
        assert_eq!(q["durable"], true);
        let ttl = q["arguments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a[0] == "x-message-ttl")
            .map(|a| a[2].clone());
        assert_eq!(ttl, Some(d["ttl_ms"].clone()), "{name}");
    }
    for name in [queue.clone(), format!("{queue}.dlq")] {
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q["name"] == name.as_str()),
            "{name} not on the broker"
        );
    }
    cleanup(&topo).await;
}

#[tokio::test]
async fn check_finds_a_binding_removed_behind_the_services_back_and_fix_restores_it() {
    use lapin::options::QueueBindOptions;
    use lapin::types::FieldTable;
    let _alone = CHECKS.lock().await;
    let queue = common::unique("orders_check");
    let topo = stdout_json(&orders(&queue, &["topology", "--json"]));

    // Nothing declared yet: everything is missing, and `check` says so with exit code 1.
    let before = orders(&queue, &["check", "--json"]);
    assert_eq!(before.status.code(), Some(1));
    let report = stdout_json(&before);
    assert_eq!(report["in_sync"], false);
    assert!(
        report["missing_objects"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("queue `{queue}`")))
    );

    // `--fix` declares it all; a second check is clean.
    let fixed = orders(&queue, &["check", "--fix"]);
    assert_eq!(
        fixed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fixed.stdout)
    );
    assert_eq!(orders(&queue, &["check"]).status.code(), Some(0));

    // Behind the service's back: a handler's binding removed (the tchu-tchu "events vanish"
    // case) and a binding no handler wants any more.
    let (_conn, ch) = common::channel().await;
    ch.queue_unbind(
        queue.as_str().into(),
        "tchu_events".into(),
        "orders.placed".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        "tchu_events".into(),
        "orders.legacy".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(!broker_bindings(&queue).contains("orders.placed"));

    let out = orders(&queue, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout_json(&out);
    assert_eq!(report["missing_bindings"], json!(["orders.placed"]));
    assert_eq!(report["stale_bindings"], json!(["orders.legacy"]));
    assert_eq!(report["missing_objects"], json!([]));
    let text = orders(&queue, &["check"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("missing binding `orders.placed`"), "{text}");
    assert!(text.contains("stale binding `orders.legacy`"), "{text}");

    let out = orders(&queue, &["check", "--fix", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report = stdout_json(&out);
    assert_eq!(report["remaining"], json!([]));
    // Read back through the broker, not through tchu.
    let bindings = broker_bindings(&queue);
    assert!(bindings.contains("orders.placed"), "{bindings:?}");
    assert!(!bindings.contains("orders.legacy"), "{bindings:?}");
    assert_eq!(orders(&queue, &["check"]).status.code(), Some(0));

    // A delay tier re-created with another TTL cannot be fixed without deleting it: `--fix`
    // still restores what it can (a removed binding), reports the rest and exits 1.
    let tier = format!("{queue}.delay.10ms");
    common::delete_queues(&ch, &[&tier]).await;
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), lapin::types::AMQPValue::LongInt(99));
    ch.queue_declare(
        tier.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_unbind(
        queue.as_str().into(),
        "tchu_events".into(),
        "orders.quote".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let out = orders(&queue, &["check", "--fix", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout_json(&out);
    let remaining = report["remaining"].to_string();
    assert!(remaining.contains(&tier), "{report:#}");
    assert_eq!(
        report["fixed"],
        json!(["bound `orders.quote`"]),
        "{report:#}"
    );
    assert!(broker_bindings(&queue).contains("orders.quote"));
    cleanup(&topo).await;
}

/// The exchange and the shared delay route are in the topology, and `check` holds the broker to
/// them: a level deleted behind everyone's back is missing drift, and `--fix` declares it.
#[tokio::test]
async fn check_reports_the_delay_route_and_fix_declares_a_missing_level() {
    let _alone = CHECKS.lock().await;
    let queue = common::unique("orders_delays");
    let topo = stdout_json(&orders(&queue, &["topology", "--json"]));
    let exchange = json!({"name": "tchu_events", "type": "topic", "durable": true});
    assert_eq!(topo["exchange"], exchange);
    let route = topo["delay_route"].as_array().expect("the delay route");
    assert_eq!(route.len(), 32);
    assert_eq!(route[0]["next"], "tchu_events");
    assert_eq!(route[5]["ttl_ms"], 32);
    assert_eq!(route[5]["exchange"]["type"], "headers");
    let dlx = &route[5]["queue"]["arguments"]["x-dead-letter-exchange"];
    assert_eq!(dlx, "tchu_delay.b04");
    let text = String::from_utf8_lossy(&orders(&queue, &["topology"]).stdout).into_owned();
    assert!(
        text.contains("delays    32 levels tchu_delay.b00..tchu_delay.b31"),
        "{text}"
    );

    // The service's own parts and the route (a delayed publish declares it) in place.
    assert_eq!(orders(&queue, &["check", "--fix"]).status.code(), Some(0));
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let later = tchu::PublishOptions::new().delay(Duration::from_secs(3600));
    client
        .publish_raw_with(&format!("{queue}.later"), &json!({}), &later)
        .await
        .ok();
    client.close().await;
    assert_eq!(orders(&queue, &["check"]).status.code(), Some(0));

    // Level 31 (24 days) deleted behind everyone's back: drift, until `--fix` declares it.
    let (_conn, ch) = common::channel().await;
    common::delete_queues(&ch, &["tchu_delay.b31"]).await;
    let out = orders(&queue, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout_json(&out);
    let missing = json!("delay level `tchu_delay.b31`");
    assert!(
        report["missing_objects"]
            .as_array()
            .unwrap()
            .contains(&missing),
        "{report:#}"
    );
    let out = orders(&queue, &["check", "--fix", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = stdout_json(&out);
    let fixed = json!("declared delay level `tchu_delay.b31`");
    assert!(
        report["fixed"].as_array().unwrap().contains(&fixed),
        "{report:#}"
    );
    let args = &rabbitmq_queue_arguments("tchu_delay.b31");
    assert_eq!(args["x-message-ttl"], json!(1u64 << 31), "{args}");
    cleanup(&topo).await;
}

/// A queue's arguments, as the management API reports them.
fn rabbitmq_queue_arguments(name: &str) -> Value {
    let api = tchu::admin::Management::from_env().unwrap();
    let q = api.queue(name).unwrap().expect("the queue exists");
    q["arguments"].clone()
}

#[test]
fn unknown_commands_are_usage_errors() {
    let out = orders("orders_usage_unused", &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown command `frobnicate`"), "{err}");
    assert!(err.contains("topology"), "{err}");
    let out = orders("orders_usage_unused", &["topology", "--nope"]);
    assert_eq!(out.status.code(), Some(2));
    let help = orders("orders_usage_unused", &["help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("asyncapi"));
}

/// Every `$ref` inside the document points at something in it.
fn assert_refs_resolve(doc: &Value, at: &Value) {
    match at {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let pointer = r.strip_prefix('#').expect("local ref");
                assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
            }
            m.values().for_each(|v| assert_refs_resolve(doc, v));
        }
        Value::Array(a) => a.iter().for_each(|v| assert_refs_resolve(doc, v)),
        _ => {}
    }
}

#[test]
fn asyncapi_document_validates_against_the_asyncapi_3_schema() {
    let out = orders("orders_queue", &["asyncapi"]);
    assert!(out.status.success());
    let doc = stdout_json(&out);
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "orders_queue");
    assert_refs_resolve(&doc, &doc);

    // Channels are topics and patterns; operations are the handlers and the linked events.
    let addresses: BTreeSet<&str> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| c["address"].as_str())
        .collect();
    for a in [
        "orders.placed",
        "orders.shipped",
        "orders.quote",
        "orders.#",
    ] {
        assert!(addresses.contains(a), "no channel for {a}: {addresses:?}");
    }
    let ops = doc["operations"].as_object().unwrap();
    let receives: BTreeSet<&str> = ops
        .values()
        .filter(|o| o["action"] == "receive")
        .map(|o| o["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        receives,
        BTreeSet::from(["orders::audit", "orders::quote", "orders::reserve_stock"])
    );
    let quote = ops
        .values()
        .find(|o| o["title"] == "orders::quote")
        .unwrap();
    assert_eq!(quote["reply"]["messages"].as_array().unwrap().len(), 2);
    assert!(
        ops.values()
            .any(|o| o["action"] == "send" && o["title"] == "publish OrderShipped")
    );

    let schema = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/asyncapi/asyncapi-3.0.0.schema.json");
    // A broken copy must fail, or the validator proves nothing.
    let mut broken = doc.clone();
    let first = broken["operations"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    broken["operations"][&first]["action"] = json!("publish");
    let mut wrong_version = doc.clone();
    wrong_version["asyncapi"] = json!("2.6.0");
    let errors = python::validate(&schema, &[doc.clone(), broken, wrong_version]);
    assert_eq!(
        errors[0],
        Vec::<String>::new(),
        "the document is not valid AsyncAPI 3.0"
    );
    assert!(!errors[1].is_empty(), "a wrong action was accepted");
    assert!(!errors[2].is_empty(), "a wrong version was accepted");
}

#[test]
fn every_event_schema_validates_real_payloads() {
    let out = orders("orders_queue", &["schema"]);
    assert!(out.status.success());
    let doc = stdout_json(&out);
    let events = doc["events"].as_array().unwrap();
    let topics: BTreeSet<&str> = events
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        topics,
        BTreeSet::from(["orders.placed", "orders.quote", "orders.shipped"])
    );
    let placed = events
        .iter()
        .find(|e| e["topic"] == "orders.placed")
        .unwrap();
    assert_eq!(placed["handled_by"], json!(["orders::reserve_stock"]));

    let dir = std::env::temp_dir().join(common::unique("tchu_schemas"));
    let out = orders("orders_queue", &["schema", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success());
    // (file, payloads that must validate, payloads that must not)
    let cases: Vec<(&str, Vec<Value>, Vec<Value>)> = vec![
        (
            "orders.placed.json",
            vec![
                json!({"order_id": 7, "lines": [{"sku": "apple", "quantity": 2}], "note": "ring twice"}),
                json!({"order_id": 8, "lines": []}),
            ],
            vec![
                json!({"order_id": "seven", "lines": []}),
                json!({"order_id": 7}),
                json!({"order_id": 7, "lines": [{"sku": "apple", "quantity": -1}]}),
            ],
        ),
        (
            "orders.shipped.json",
            vec![json!({"order_id": 7, "tracking": "TRK7"})],
            vec![json!({"order_id": 7})],
        ),
        (
            "orders.quote.json",
            vec![json!({"lines": [{"sku": "pear", "quantity": 1}]})],
            vec![json!({"lines": "pear"})],
        ),
        (
            "orders.quote.response.json",
            vec![json!({"total_cents": 95})],
            vec![json!({"total_cents": "95"})],
        ),
        (
            "orders.quote.error.json",
            vec![json!({"UnknownSku": {"sku": "kiwi"}})],
            vec![json!({"Unknown": {}})],
        ),
    ];
    for (file, good, bad) in cases {
        let path = dir.join(file);
        assert!(path.exists(), "{} not written", path.display());
        let n = good.len();
        let all: Vec<Value> = good.into_iter().chain(bad).collect();
        let errors = python::validate(&path, &all);
        for (i, e) in errors.iter().enumerate() {
            if i < n {
                assert!(e.is_empty(), "{file}: {} rejected: {e:?}", all[i]);
            } else {
                assert!(!e.is_empty(), "{file}: {} accepted", all[i]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The schema of a payload published by a real tchu client (the service's own handler
/// publishes `OrderShipped`) validates what actually travels.
#[tokio::test]
async fn the_schema_validates_a_payload_that_travelled_through_the_broker() {
    let queue = common::unique("orders_travel");
    let (_conn, ch) = common::channel().await;
    let (_tmp, mut shipped) = common::temp_queue(&ch, Some("orders.shipped")).await;
    let svc = start_service(&queue);
    let client = tchu::Client::from_env().await.unwrap();
    client
        .publish_raw(
            "orders.placed",
            &json!({"order_id": 41, "lines": [{"sku": "apple", "quantity": 3}]}),
        )
        .await
        .unwrap();
    use futures_lite::StreamExt;
    let delivery = tokio::time::timeout(Duration::from_secs(30), shipped.next())
        .await
        .expect("no OrderShipped within 30 s")
        .unwrap()
        .unwrap();
    drop(svc);
    client.close().await;
    // Celery protocol v2: `[args, kwargs, embed]`, `args[0]` the JSON text of the event.
    let body: Value = serde_json::from_slice(&delivery.data).unwrap();
    let payload: Value = serde_json::from_str(body[0][0].as_str().unwrap()).unwrap();
    assert_eq!(payload["order_id"], 41);
    assert_eq!(payload["tracking"], "TRK41");

    let dir = std::env::temp_dir().join(common::unique("tchu_schemas"));
    assert!(
        orders(&queue, &["schema", "--out", dir.to_str().unwrap()])
            .status
            .success()
    );
    let errors = python::validate(
        &dir.join("orders.shipped.json"),
        std::slice::from_ref(&payload),
    );
    assert!(errors[0].is_empty(), "{payload}: {:?}", errors[0]);
    let _ = std::fs::remove_dir_all(&dir);
    let topo = stdout_json(&orders(&queue, &["topology", "--json"]));
    cleanup(&topo).await;
}

#[test]
fn every_exported_schema_passes_a_strict_validator() {
    let dir = std::env::temp_dir().join(common::unique("tchu_strict"));
    let out = orders("orders_queue", &["schema", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let problems = python::strict_problems(&schema);
        assert_eq!(problems, Vec::<String>::new(), "{}", path.display());
        checked += 1;
    }
    assert_eq!(checked, 5, "orders has 3 events, a response and an error");
    let doc = stdout_json(&orders("orders_queue", &["asyncapi"]));
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        assert_eq!(
            python::strict_problems(schema),
            Vec::<String>::new(),
            "{name}"
        );
    }
    // The ranges schemars' formats stood for are kept as standard keywords.
    let placed: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("orders.placed.json")).unwrap())
            .unwrap();
    assert_eq!(placed["properties"]["order_id"]["minimum"], 0);
    assert_eq!(placed["properties"]["order_id"]["maximum"], u64::MAX);
    let _ = std::fs::remove_dir_all(&dir);
}
