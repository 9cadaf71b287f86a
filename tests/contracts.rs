//! Two builds of one service on the broker (`examples/contract_v1.rs`, and `contract_v2.rs`
//! with a breaking change, `contract_v2_compatible.rs` without): the gate refuses the breaking
//! build and passes the compatible one; a version 1 consumer dead-letters the breaking build's
//! events as `schema_mismatch` with both schema fingerprints, and handles the compatible ones.
#![cfg(feature = "service")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn run(example: &str, args: &[&str], queue: &str) -> Output {
    Command::new(common::example(example))
        .args(args)
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", queue)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the example")
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 16 && s.chars().all(|c| c.is_ascii_hexdigit())
}

#[test]
fn the_gate_refuses_the_breaking_build_and_passes_the_compatible_one() {
    let queue = common::unique("contract_gate");
    let dir = std::env::temp_dir().join(common::unique("contract_v1"));
    let d = dir.to_str().unwrap();
    assert!(
        run("contract_v1", &["schema", "--out", d], &queue)
            .status
            .success()
    );
    let breaking = run("contract_v2", &["schema", "--check-against", d], &queue);
    assert_eq!(breaking.status.code(), Some(1));
    let out = String::from_utf8_lossy(&breaking.stdout);
    assert!(
        out.contains("contract.order.placed") && out.contains("$.id"),
        "{out}"
    );
    assert!(
        out.contains("type changed") && out.contains("both"),
        "{out}"
    );
    let compatible = run(
        "contract_v2_compatible",
        &["schema", "--check-against", d],
        &queue,
    );
    assert_eq!(
        compatible.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&compatible.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_v1_consumer_parks_v2s_events_as_schema_mismatch_and_handles_compatible_ones() {
    let queue = common::unique("contract_orders");
    let mut v1 = Command::new(common::example("contract_v1"))
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", &queue)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (out, err) = (v1.stdout.take().unwrap(), v1.stderr.take().unwrap());
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let mut v1 = common::KillOnDrop(v1);
    let wait_for = |what: &str| loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line containing {what:?}"),
        }
    };
    wait_for("consuming");

    assert!(
        run("contract_v2", &["publish", "ord-7"], &queue)
            .status
            .success()
    );
    let (_c, ch) = common::channel().await;
    let parked =
        common::drain_at_least(&ch, &format!("{queue}.dlq"), 1, Duration::from_secs(20)).await;
    assert_eq!(parked.len(), 1);
    let p = &parked[0];
    assert_eq!(
        common::header(p, tchu::headers::ERROR_KIND_HEADER).as_deref(),
        Some("schema_mismatch")
    );
    let error = common::header(p, tchu::headers::ERROR_HEADER).unwrap();
    let sent = common::header(p, tchu::headers::SCHEMA_HEADER).unwrap();
    assert!(is_fingerprint(&sent), "{sent}");
    let expected = error
        .split("this service expects ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains(&format!("sent with schema {sent}")),
        "{error}"
    );
    assert!(is_fingerprint(&expected) && expected != sent, "{error}");

    // A compatible v2: another fingerprint, logged, and handled.
    assert!(
        run("contract_v2_compatible", &["publish", "8"], &queue)
            .status
            .success()
    );
    wait_for("placed 8 (500 cents)");
    let _ = v1.0.kill();
    common::delete_service_queues(&queue).await;
}
