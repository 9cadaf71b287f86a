//! What a service writes to its log (the `worker` example, stderr to a pipe): no ANSI colour
//! codes when stderr is not a terminal; a stranger's text in a payload cannot forge a log line
//! (control characters are escaped); `TCHU_LOG_FORMAT=json` writes one JSON object per line.
#![cfg(feature = "service")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FORGED: &str = "2026-01-01T00:00:00.000000Z ERROR forged: the payload wrote this line";

/// Runs the worker with `env`, sends it a payload whose `id` carries a forged log line, and
/// returns its stderr lines up to the rejection's log line (bounded).
async fn stderr_of_a_hostile_delivery(env: &[(&str, &str)]) -> Vec<String> {
    let queue = common::unique("logs");
    let mut cmd = Command::new(common::example("worker"));
    cmd.env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", &queue)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let child = common::KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut published = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let consuming = line.contains("consuming");
        let done = line.contains("dead-letter");
        lines.push(line);
        if consuming && !published {
            let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
            let id = format!("x\n{FORGED}");
            let payload = serde_json::json!({ "id": id });
            client.publish_raw("demo.work", &payload).await.unwrap();
            published = true;
        }
        if done {
            break;
        }
    }
    drop(child);
    common::delete_service_queues(&queue).await;
    lines
}

#[tokio::test]
async fn text_logs_have_no_colour_codes_and_no_forged_lines() {
    let lines = stderr_of_a_hostile_delivery(&[]).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("dead-letter") && l.contains("\\n2026-01-01")),
        "the rejection is logged, its text escaped: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("2026-01-01")),
        "a line forged by the payload: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains('\u{1b}')),
        "colour codes on a pipe: {lines:#?}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let lines = stderr_of_a_hostile_delivery(&[("TCHU_LOG_FORMAT", "json")]).await;
    assert!(lines.len() >= 3, "{lines:#?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains(FORGED)),
        "the payload's text is inside a JSON string: {lines:#?}"
    );
}
