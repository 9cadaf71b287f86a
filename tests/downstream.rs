//! tchu as its users get it. `tests/downstream/` is a crate outside this workspace (its own
//! `[workspace]`), depending on tchu by path with every public feature, written from the
//! README's examples. This test builds it with cargo as a user would (no `[patch]` of tchu's
//! reaches it), runs its service on RabbitMQ over `amqp://` and over `amqps://`, and publishes
//! to it, with pika, every frame lapin's parser refuses. For each: the service stays up and
//! connected, the message is parked once in `<queue>.dlq` as `malformed`, and the next event
//! and an RPC call are handled. Its own code reads as a user's would: its extractor runs, an
//! error matched by kind prints each cause once through `anyhow`, and its own `tracing` span
//! is exported under the handler's span.
#![cfg(all(feature = "tls", feature = "otel"))]

mod common;
mod nodes;
mod python;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Builds the downstream crate (incrementally) and returns its binary. It shares the suite's
/// target directory, so the dependencies both resolve alike are built once.
fn downstream_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target");
    let mut cargo = Command::new(env!("CARGO"));
    // As from a user's shell: none of the variables cargo set for this test.
    for (name, _) in std::env::vars() {
        if name.starts_with("CARGO_") && name != "CARGO_HOME" {
            cargo.env_remove(name);
        }
    }
    let out = cargo
        .args(["build", "--quiet", "--manifest-path"])
        .arg(root.join("tests/downstream/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "the downstream crate does not build as a user's crate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug/tchu-downstream")
}

/// Where a broker is, for the service and for the stranger.
struct Broker {
    /// What the service and its publisher connect to.
    url: String,
    /// The CA the service trusts, for `amqps://`.
    ca: Option<PathBuf>,
    /// A plain address of the same node, for pika and the test's own reads.
    plain: String,
}

/// The downstream service, its stdout and stderr gathered line by line.
struct Service {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Service {
    fn start(bin: &Path, broker: &Broker, queue: &str, otlp: Option<&str>) -> Service {
        let mut cmd = Command::new(bin);
        if let Some(endpoint) = otlp {
            cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint);
        }
        cmd.env(tchu::BROKER_URL_ENV, &broker.url)
            .env("TCHU_QUEUE", queue)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ca) = &broker.ca {
            cmd.env(tchu::TLS_CA_FILE_ENV, ca);
        }
        let mut child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for reader in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    let mut all = output.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        Service { child, output }
    }

    fn said(&self, what: &str) -> bool {
        self.output.lock().unwrap().contains(what)
    }

    async fn wait_for(&self, what: &str) {
        let seen = common::wait_until(Duration::from_secs(30), || self.said(what)).await;
        assert!(seen, "no {what:?} in:\n{}", self.output.lock().unwrap());
    }

    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.output.lock().unwrap().clone()
    }
}

/// Publishes `user.created` number `n` and calls the responder, with the downstream binary.
fn publish(bin: &Path, broker: &Broker, n: u64) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(["publish", &n.to_string()])
        .env(tchu::BROKER_URL_ENV, &broker.url);
    if let Some(ca) = &broker.ca {
        cmd.env(tchu::TLS_CA_FILE_ENV, ca);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

async fn survives_every_malformed_frame(bin: PathBuf, broker: Broker) {
    let queue = common::unique("downstream");
    let service = Service::start(&bin, &broker, &queue, None);
    service.wait_for("consuming").await;
    let (_conn, ch) = common::channel_at(&broker.plain).await;
    let dlq = format!("{queue}.dlq");
    for (n, (case, reason)) in (1..).zip(python::MALFORMED_CASES) {
        let (q, url) = (queue.clone(), broker.plain.clone());
        let published =
            tokio::task::spawn_blocking(move || python::stranger(case, &q, &url, "user"))
                .await
                .unwrap();
        if published {
            let parked = common::drain_at_least(&ch, &dlq, 1, Duration::from_secs(15)).await;
            assert_eq!(parked.len(), 1, "{case}");
            let kind = common::header(&parked[0], "x-tchu-error-kind");
            assert_eq!(kind.as_deref(), Some("malformed"), "{case}");
            let why = common::header(&parked[0], "x-tchu-error").unwrap_or_default();
            assert!(why.contains(reason), "{case}: {why}");
        } else {
            assert_eq!(case, "unknown_type", "the broker refused {case}");
        }
        let (b, p) = (
            bin.clone(),
            Broker {
                url: broker.url.clone(),
                ca: broker.ca.clone(),
                plain: String::new(),
            },
        );
        let said = tokio::task::spawn_blocking(move || publish(&b, &p, n))
            .await
            .unwrap();
        assert!(said.contains(&format!("receipt r-{n}")), "{case}: {said}");
        service.wait_for(&format!("welcome {n} <a@b.c>")).await;
        service.wait_for(&format!("in order {n}")).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let extra = common::drain_at_least(&ch, &dlq, 0, Duration::ZERO).await;
    assert!(
        extra.is_empty(),
        "one dead letter per message, no copies: {extra:?}"
    );
    let output = service.stop();
    assert!(
        !output.contains("connection lost"),
        "the service stayed connected:\n{output}"
    );
    assert!(!output.contains("panicked"), "{output}");
    common::delete_queues(&ch, &[&queue, &dlq]).await;
}

/// The user's own code: its extractor, an error through `anyhow`, its span in the trace; a
/// saga of its own in a unit test.
async fn reads_as_a_users_code(bin: &Path, broker: &Broker) {
    let out = Command::new(bin).arg("saga").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("saga 7 ends after 1 email(s)"), "{text}");
    assert!(
        text.contains("parked 1"),
        "the second end found no saga: {text}"
    );

    let out = Command::new(bin).arg("schedule").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("tick tick missed 0"), "{text}");
    let ticked: u32 = (text.lines().find_map(|l| l.strip_prefix("ticked ")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((2..=3).contains(&ticked), "{text}");

    let out = Command::new(bin).arg("unreachable").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("kind Connection help connect-refused"),
        "{text}"
    );
    let chain = text.lines().find(|l| l.starts_with("anyhow ")).unwrap();
    assert!(chain.contains("cannot connect to the broker at"), "{chain}");
    assert_eq!(chain.matches("Connection refused").count(), 1, "{chain}");

    let (endpoint, bodies) = common::otlp::receiver(&[]).await;
    let queue = common::unique("downstream_traced");
    let service = Service::start(bin, broker, &queue, Some(&endpoint));
    service.wait_for("consuming").await;
    let (b, p) = (bin.to_owned(), broker.url.clone());
    let plain = Broker {
        url: p,
        ca: None,
        plain: String::new(),
    };
    tokio::task::spawn_blocking(move || publish(&b, &plain, 7))
        .await
        .unwrap();
    service.wait_for("welcome 7 <a@b.c>").await;
    service.wait_for("for default").await;
    let mut spans = Vec::new();
    for _ in 0..40 {
        let protobuf: Vec<Vec<u8>> = (bodies.lock().unwrap().iter())
            .map(|(_, b)| b.clone())
            .collect();
        spans = python::otlp_spans(&protobuf);
        if spans.iter().any(|s| s["name"] == "welcome.lookup") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    service.stop();
    let find = |name: &str| {
        let found = spans.iter().find(|s| s["name"] == name);
        found
            .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
            .clone()
    };
    let handler = find("handle tchu_downstream::welcome");
    let lookup = find("welcome.lookup");
    assert_eq!(lookup["traceId"], handler["traceId"]);
    assert_eq!(
        lookup["parentSpanId"], handler["spanId"],
        "under the handler's span"
    );
    let names: Vec<_> = spans
        .iter()
        .map(|s| (s["name"].clone(), s["service"].clone()))
        .collect();
    assert_eq!(lookup["service"], serde_json::json!(queue), "{names:?}");
    assert_eq!(handler["service"], serde_json::json!(queue), "{names:?}");
    common::delete_service_queues(&queue).await;
}

#[tokio::test]
async fn a_users_crate_builds_and_its_service_survives_malformed_frames() {
    let bin = tokio::task::spawn_blocking(downstream_binary)
        .await
        .unwrap();
    let url = common::broker_url();
    let plain = Broker {
        url: url.clone(),
        ca: None,
        plain: url,
    };
    reads_as_a_users_code(&bin, &plain).await;
    survives_every_malformed_frame(bin.clone(), plain).await;

    let certs = nodes::tls_certificates("downstream-certs");
    let conf = nodes::tls_listener(&certs, 5697);
    let node =
        tokio::task::spawn_blocking(move || nodes::Node::start("tchu_downstream", 5696, &conf))
            .await
            .unwrap();
    let tls = Broker {
        url: "amqps://guest:guest@localhost:5697/%2f".into(),
        ca: Some(certs.join("ca.pem")),
        plain: node.url(),
    };
    survives_every_malformed_frame(bin, tls).await;
    drop(node);
}
