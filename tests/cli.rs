//! The `tchu` command-line tool against the real RabbitMQ: publish, call, the dead-letter
//! commands (list, show, replay, purge) and tail, with their exit codes and `--json` output.
#![cfg(feature = "service")]
#![allow(
    clippy::too_many_lines,
    reason = "a scenario test reads top to bottom, one step after the other"
)]

mod common;

use common::{channel, delete_queues, unique, wait_until};
use futures_lite::StreamExt;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

/// How long one CLI run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// What a finished `tchu` run left.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "tchu failed: {self:#?}");
        self
    }

    /// stdout as JSON lines.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{self:#?}"))
            })
            .collect()
    }

    /// stdout as one JSON object.
    fn json(&self) -> Value {
        let lines = self.json_lines();
        assert_eq!(lines.len(), 1, "expected one JSON line: {self:#?}");
        lines.into_iter().next().unwrap()
    }
}

fn tchu_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::tchu_bin());
    cmd.args(args)
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env_remove(tchu::TCHU_TCHU_VERSION_ENV)
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `tchu` to completion (bounded by [`RUN_LIMIT`]), feeding `stdin`, with the
/// environment variables `env` set.
fn run_blocking(args: Vec<String>, stdin: Option<String>, env: Vec<(String, String)>) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = tchu_command(&args)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tchu binary");
    let mut input = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        if let Some(s) = stdin {
            let _ = input.write_all(s.as_bytes());
        }
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tchu {args:?} did not finish within {RUN_LIMIT:?}; stderr: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let r = Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    // `TCHU_CLI_TEST_ECHO=1 cargo test --workspace --features service --test cli -- --nocapture` shows every run.
    if std::env::var_os("TCHU_CLI_TEST_ECHO").is_some() {
        eprintln!(
            "$ tchu {}\n[{}]\n{}--- stderr\n{}",
            args.join(" "),
            r.code,
            r.stdout,
            r.stderr
        );
    }
    r
}

/// Runs `tchu` off the async runtime, so in-process services keep serving meanwhile.
async fn tchu_run(args: &[&str]) -> Run {
    let args = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_blocking(args, None, Vec::new()))
        .await
        .unwrap()
}

/// As [`tchu_run`], with one environment variable set.
async fn tchu_run_env(args: &[&str], name: &str, value: &str) -> Run {
    let args = args.iter().map(|s| (*s).to_owned()).collect();
    let env = vec![(name.to_owned(), value.to_owned())];
    tokio::task::spawn_blocking(move || run_blocking(args, None, env))
        .await
        .unwrap()
}

async fn tchu_run_stdin(args: &[&str], stdin: &str) -> Run {
    let args = args.iter().map(|s| (*s).to_owned()).collect();
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || run_blocking(args, Some(stdin), Vec::new()))
        .await
        .unwrap()
}

/// Ready messages in a queue (passive declare).
async fn queue_len(ch: &lapin::Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

/// Polls until `queue` holds exactly `n` ready messages, for at most 10 s.
async fn wait_len(ch: &lapin::Channel, queue: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let len = queue_len(ch, queue).await;
        if len == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} holds {len} message(s), expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A durable queue (RabbitMQ 4.3 refuses transient ones that are not exclusive).
async fn declare_durable(ch: &lapin::Channel, queue: &str) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// A received lapin delivery as tchu's transport-neutral message, for `tchu::wire::decode`.
fn wire_of(d: &lapin::message::Delivery) -> tchu::wire::WireMessage {
    let p = &d.properties;
    let s = |o: &Option<lapin::types::ShortString>| o.as_ref().map(|v| v.as_str().to_owned());
    let mut headers = serde_json::Map::new();
    if let Some(h) = p.headers() {
        for (k, v) in h.inner() {
            let v = match v {
                AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
                AMQPValue::ShortString(s) => Value::from(s.as_str()),
                AMQPValue::LongLongInt(i) => Value::from(*i),
                _ => Value::Null,
            };
            headers.insert(k.as_str().to_owned(), v);
        }
    }
    tchu::wire::WireMessage {
        routing_key: d.routing_key.as_str().to_owned(),
        properties: tchu::wire::Properties {
            content_type: s(p.content_type()),
            content_encoding: s(p.content_encoding()),
            delivery_mode: *p.delivery_mode(),
            priority: *p.priority(),
            correlation_id: s(p.correlation_id()),
            reply_to: s(p.reply_to()),
            message_id: s(p.message_id()),
            expiration: s(p.expiration()),
        },
        headers,
        celery: None,
        body: d.data.clone(),
    }
}

async fn next_event(consumer: &mut lapin::Consumer) -> tchu::wire::Envelope {
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("no message within 10 s")
        .unwrap()
        .unwrap();
    match tchu::wire::decode(&wire_of(&d)).unwrap() {
        tchu::wire::Decoded::Event(env) => env,
        other => panic!("not an event: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// publish

#[tokio::test]
async fn publish_delivers_the_json_payload_in_each_format() {
    let (_c, ch) = channel().await;
    let topic = format!("it.cli.pub.{}", uuid::Uuid::new_v4().simple());
    let (_q, mut consumer) = common::temp_queue(&ch, Some(&topic)).await;

    let run = tchu_run(&["publish", &topic, r#"{"a": 1, "name": "é"}"#])
        .await
        .ok();
    let id = run.stdout.trim().to_owned();
    assert!(!id.is_empty(), "{run:#?}");
    let env = next_event(&mut consumer).await;
    assert_eq!(env.payload, json!({"a": 1, "name": "é"}));
    assert_eq!(env.topic, topic);
    assert_eq!(env.id, id);
    assert_eq!(env.format, tchu::Format::CeleryV2);

    // --format native, --json output, payload from stdin.
    let run = tchu_run_stdin(
        &["--json", "publish", &topic, "-", "--format", "native"],
        r#"{"b": [1, 2]}"#,
    )
    .await
    .ok();
    let out = run.json();
    assert_eq!(out["ok"], true);
    assert_eq!(out["topic"], topic.as_str());
    assert_eq!(out["format"], "native");
    let env = next_event(&mut consumer).await;
    assert_eq!(env.payload, json!({"b": [1, 2]}));
    assert_eq!(env.format, tchu::Format::Native);
    assert_eq!(Value::from(env.id), out["id"]);

    let run = tchu_run(&["publish", &topic, r#"{"c": true}"#, "--format", "v1"])
        .await
        .ok();
    let env = next_event(&mut consumer).await;
    assert_eq!(env.payload, json!({"c": true}));
    assert_eq!(env.format, tchu::Format::CeleryV1);
    assert_eq!(env.id, run.stdout.trim());
}

/// The next raw delivery: whether its `args[0]` carries `_tchu_meta`, and whether it has a
/// `reply_to`.
async fn next_meta_and_reply_to(consumer: &mut lapin::Consumer) -> (bool, bool) {
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("no message within 10 s")
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_slice(&d.data).unwrap();
    let args0 = body[0][0].as_str().expect("a v2 body");
    (
        args0.contains("_tchu_meta"),
        d.properties.reply_to().is_some(),
    )
}

#[tokio::test]
async fn publish_and_call_write_the_form_of_the_tchu_tchu_version_asked_for() {
    let (_c, ch) = channel().await;
    let topic = format!("it.cli.v2x.{}", uuid::Uuid::new_v4().simple());
    let (_q, mut consumer) = common::temp_queue(&ch, Some(&topic)).await;

    let run = tchu_run(&[
        "--json",
        "publish",
        &topic,
        r#"{"a": 1}"#,
        "--tchu-tchu",
        "2",
    ])
    .await;
    assert_eq!(run.ok().json()["tchu_tchu"], "2");
    assert_eq!(next_meta_and_reply_to(&mut consumer).await, (false, false));
    // The environment names the fleet's version; a flag overrides it.
    let env = tchu::TCHU_TCHU_VERSION_ENV;
    tchu_run_env(&["publish", &topic, "{}"], env, "2.4.0")
        .await
        .ok();
    assert_eq!(next_meta_and_reply_to(&mut consumer).await, (false, false));
    tchu_run_env(&["publish", &topic, "{}", "--tchu-tchu", "3"], env, "2")
        .await
        .ok();
    assert_eq!(next_meta_and_reply_to(&mut consumer).await, (true, true));
    tchu_run(&["publish", &topic, "{}"]).await.ok();
    assert_eq!(next_meta_and_reply_to(&mut consumer).await, (true, true));

    // A call in the 2.x form: no `_tchu_meta`, a reply address (nobody answers here).
    let run = tchu_run(&[
        "call",
        &topic,
        r#"{"b": 2}"#,
        "--tchu-tchu",
        "2",
        "--timeout",
        "300ms",
    ])
    .await;
    assert_eq!(run.code, 4, "{run:#?}");
    assert_eq!(next_meta_and_reply_to(&mut consumer).await, (false, true));

    // Unknown versions are usage errors, from the flag and from the environment.
    let run = tchu_run(&["publish", &topic, "{}", "--tchu-tchu", "1"]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("expected 2 or 3"), "{run:#?}");
    let run = tchu_run_env(&["publish", &topic, "{}"], env, "banana").await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr.contains("TCHU_TCHU_VERSION=\"banana\""),
        "{run:#?}"
    );
}

#[tokio::test]
async fn publish_with_a_delay_headers_and_priority_and_refused_options_as_usage_errors() {
    let (_c, ch) = channel().await;
    let topic = format!("it.cli.later.{}", uuid::Uuid::new_v4().simple());
    let (_q, mut consumer) = common::temp_queue(&ch, Some(&topic)).await;
    let started = std::time::Instant::now();
    let args = [
        "publish",
        &topic,
        r#"{"d": 1}"#,
        "--delay",
        "700ms",
        "--header",
        "tenant=acme",
        "--header",
        "n=3",
        "--priority",
        "4",
    ];
    tchu_run(&args).await.ok();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "delivered before it was due"
    );
    let wire = wire_of(&d);
    assert_eq!(wire.headers["tenant"], "acme");
    assert_eq!(wire.headers["n"], 3);
    assert_eq!(wire.properties.priority, Some(4));

    let run = tchu_run(&["publish", &topic, "{}", "--header", "x-tchu-handler=forged"]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("reserved"), "{run:#?}");
}

#[tokio::test]
async fn publish_to_an_unbound_topic_fails() {
    let topic = format!("it.cli.nobody.{}", uuid::Uuid::new_v4().simple());
    let run = tchu_run(&["publish", &topic, r#"{"a": 1}"#]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("unroutable"), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");

    let run = tchu_run(&["--json", "publish", &topic, r#"{"a": 1}"#]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    let out = run.json();
    assert_eq!(out["ok"], false);
    assert_eq!(out["error"], "unroutable");
}

#[tokio::test]
async fn publish_checks_its_input_before_connecting() {
    // Nothing listens on port 1: reaching the broker would be exit 3, not 2.
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f";
    for (args, needle) in [
        (vec!["publish", "it.cli.x", "{not json"], "not valid JSON"),
        (
            vec!["publish", "it.cli.x", "[1, 2]"],
            "must be a JSON object",
        ),
        (vec!["publish", "it..cli", "{}"], "invalid topic"),
        (vec!["publish", "it.cli.*", "{}"], "invalid topic"),
        (
            vec!["publish", "it.cli.x", "{}", "--priority", "12"],
            "0 to 9",
        ),
        (
            vec!["publish", "it.cli.x", "{}", "--header", "x-a=1"],
            "reserved",
        ),
        (
            vec!["publish", "it.cli.x", "{}", "--header", "novalue"],
            "NAME=VALUE",
        ),
        (vec!["call", "it.cli.x", "42"], "must be a JSON object"),
        (vec!["call", "it.cli.x", "{}", "--timeout", "soon"], "soon"),
        (vec!["tail", "it..#"], "invalid pattern"),
        (vec!["dlq", "purge", "some_queue"], "--yes"),
    ] {
        let mut args = args;
        args.extend(["--url", dead]);
        let run = tchu_run(&args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
        assert!(run.stderr.contains(needle), "{args:?}: {run:#?}");
    }
    // Valid input, no broker: exit 3, and the password is not shown.
    let run = tchu_run(&["publish", "it.cli.x", "{}", "--url", dead]).await;
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(run.stderr.contains("cannot connect"), "{run:#?}");
    assert!(!run.stderr.contains("guest:guest"), "{run:#?}");
    let run = tchu_run(&["dlq", "list", "q", "--url", dead]).await;
    assert_eq!(run.code, 3, "{run:#?}");
}

// ---------------------------------------------------------------------------------------------
// call

#[tchu::payload]
#[derive(Debug, PartialEq)]
struct Doubled {
    n: u64,
    doubled: u64,
}

#[tchu::event(topic = "it.cli.rpc.double", response = Doubled)]
struct Double {
    n: u64,
    #[serde(default)]
    delay_ms: u64,
}

mod rpc_svc {
    use super::*;

    #[tchu::subscribe(name = "cli_test.double")]
    async fn double(req: Double) -> Result<Doubled, RpcError> {
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms)).await;
        }
        if req.n == 0 {
            return Err(RpcError::new("ZERO", "zero cannot be doubled"));
        }
        Ok(Doubled {
            n: req.n,
            doubled: req.n * 2,
        })
    }
}

#[tokio::test]
async fn call_prints_the_answer_and_maps_failures_to_exit_codes() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = unique("it_cli_rpc");
    let svc = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::rpc_svc"))
        .start(&client)
        .await
        .unwrap();

    let run = tchu_run(&[
        "call",
        "it.cli.rpc.double",
        r#"{"n": 21}"#,
        "--timeout",
        "5s",
    ])
    .await
    .ok();
    let answer: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(answer, json!({"n": 21, "doubled": 42}));

    let run = tchu_run(&["--json", "call", "it.cli.rpc.double", r#"{"n": 4}"#])
        .await
        .ok();
    let out = run.json();
    assert_eq!(out["ok"], true);
    assert_eq!(out["response"], json!({"n": 4, "doubled": 8}));

    // A business error: exit 5, the error on stderr, and as data with --json.
    let run = tchu_run(&[
        "call",
        "it.cli.rpc.double",
        r#"{"n": 0}"#,
        "--timeout",
        "5s",
    ])
    .await;
    assert_eq!(run.code, 5, "{run:#?}");
    assert!(run.stderr.contains("business error"), "{run:#?}");
    assert!(run.stderr.contains("ZERO"), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    let run = tchu_run(&["--json", "call", "it.cli.rpc.double", r#"{"n": 0}"#]).await;
    assert_eq!(run.code, 5, "{run:#?}");
    let out = run.json();
    assert_eq!(out["error"], "business_error");
    assert_eq!(out["detail"]["error_code"], "ZERO");

    // Too slow: exit 4, after about the timeout.
    let started = Instant::now();
    let run = tchu_run(&[
        "call",
        "it.cli.rpc.double",
        r#"{"n": 1, "delay_ms": 3000}"#,
        "--timeout",
        "300ms",
    ])
    .await;
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(run.stderr.contains("timeout"), "{run:#?}");
    assert!(started.elapsed() < Duration::from_millis(2900), "{run:#?}");

    // Nobody bound: exit 1 at once.
    let topic = format!("it.cli.rpc.nobody.{}", uuid::Uuid::new_v4().simple());
    let run = tchu_run(&["call", &topic, r#"{"n": 1}"#, "--timeout", "20s"]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("no responder"), "{run:#?}");

    svc.shutdown().await.unwrap();
    client.close().await;
    let (_c, ch) = channel().await;
    delete_queues(&ch, &[&queue, &format!("{queue}.dlq")]).await;
}

// ---------------------------------------------------------------------------------------------
// dlq

#[tchu::event(topic = "it.cli.dlq.job")]
struct CliJob {
    n: u64,
}

/// Whether the job handler fails, and what it processed: (n, attempt, x-tchu-replayed).
#[derive(Default)]
struct JobState {
    fail: AtomicBool,
    done: Mutex<Vec<(u64, u32, Option<i64>)>>,
}

impl JobState {
    fn done(&self) -> Vec<u64> {
        self.done.lock().unwrap().iter().map(|d| d.0).collect()
    }
}

mod dlq_svc {
    use super::*;

    /// No retry policy: a failure is dead-lettered at once.
    #[tchu::subscribe(name = "cli_test.job")]
    async fn job(
        ev: CliJob,
        attempt: Attempt,
        headers: Headers,
        state: State<JobState>,
    ) -> Result<(), std::io::Error> {
        if state.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(format!("job {} refused", ev.n)));
        }
        let replayed = headers.get("x-tchu-replayed").and_then(Value::as_i64);
        state.done.lock().unwrap().push((ev.n, attempt.0, replayed));
        Ok(())
    }
}

#[tokio::test]
async fn dlq_list_show_and_replay_a_failed_message() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = unique("it_cli_dlq");
    let dlq = format!("{queue}.dlq");
    let state = Arc::new(JobState::default());
    state.fail.store(true, Ordering::SeqCst);
    let svc = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::dlq_svc"))
        .state_arc(state.clone())
        .start(&client)
        .await
        .unwrap();
    let (_c, ch) = channel().await;

    let id1 = client.publish(&CliJob { n: 1 }).await.unwrap();
    // One at a time, so the dead-letter order is known.
    wait_len(&ch, &dlq, 1).await;
    let id2 = client.publish(&CliJob { n: 2 }).await.unwrap();
    wait_len(&ch, &dlq, 2).await;

    // list: both, with handler, error and topic; nothing consumed.
    let run = tchu_run(&["dlq", "list", &queue]).await.ok();
    for needle in [
        &id1,
        &id2,
        "it.cli.dlq.job",
        "cli_test.job",
        "job 1 refused",
        "job 2 refused",
        &format!("2 message(s) in {dlq}"),
    ] {
        assert!(run.stdout.contains(needle), "{needle}: {run:#?}");
    }
    wait_len(&ch, &dlq, 2).await;

    // --json list (naming the DLQ itself): one object per message in queue order, then a summary.
    for _ in 0..2 {
        // Requeues are asynchronous in the broker: the count settles first.
        wait_len(&ch, &dlq, 2).await;
        let run = tchu_run(&["--json", "dlq", "list", &dlq]).await.ok();
        let lines = run.json_lines();
        assert_eq!(lines.len(), 3, "{run:#?}");
        assert_eq!(lines[0]["index"], 0);
        assert_eq!(lines[0]["id"], id1.as_str());
        assert_eq!(lines[1]["id"], id2.as_str());
        assert_eq!(lines[0]["topic"], "it.cli.dlq.job");
        assert_eq!(lines[0]["handler"], "cli_test.job");
        assert_eq!(lines[0]["error"], "job 1 refused");
        assert_eq!(lines[0]["attempts"], 1);
        assert_eq!(lines[0]["queue"], queue.as_str());
        assert!(lines[0]["failed_at"].is_string(), "{run:#?}");
        assert_eq!(lines[2]["summary"], true);
        assert_eq!(lines[2]["total"], 2);
        assert_eq!(lines[2]["listed"], 2);
    }
    wait_len(&ch, &dlq, 2).await;
    let run = tchu_run(&["--json", "dlq", "list", &queue, "--limit", "1"])
        .await
        .ok();
    let lines = run.json_lines();
    assert_eq!(lines.len(), 2, "{run:#?}");
    assert_eq!(lines[0]["id"], id1.as_str());
    assert_eq!(lines[1]["listed"], 1);
    wait_len(&ch, &dlq, 2).await;

    // show: the first message in full; --json for the second.
    let run = tchu_run(&["dlq", "show", &queue]).await.ok();
    for needle in [
        "payload:",
        "\"n\": 1",
        "x-tchu-error: job 1 refused",
        "x-tchu-handler: cli_test.job",
        &id1,
    ] {
        assert!(run.stdout.contains(needle), "{needle}: {run:#?}");
    }
    wait_len(&ch, &dlq, 2).await;
    let run = tchu_run(&["--json", "dlq", "show", &queue, "1"]).await.ok();
    let shown = run.json();
    assert_eq!(shown["payload"], json!({"n": 2}));
    assert_eq!(shown["id"], id2.as_str());
    assert_eq!(shown["headers"]["x-tchu-handler"], "cli_test.job");
    assert_eq!(shown["properties"]["delivery_mode"], 2);
    let run = tchu_run(&["dlq", "show", &queue, "7"]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    wait_len(&ch, &dlq, 2).await;
    assert!(state.done().is_empty());

    // replay --id: only the second message goes back, and the handler now succeeds.
    state.fail.store(false, Ordering::SeqCst);
    let run = tchu_run(&["--json", "dlq", "replay", &queue, "--id", &id2])
        .await
        .ok();
    let lines = run.json_lines();
    assert_eq!(lines.len(), 2, "{run:#?}");
    assert_eq!(lines[0]["id"], id2.as_str());
    assert_eq!(lines[0]["topic"], "it.cli.dlq.job");
    assert_eq!(lines[0]["handler"], "cli_test.job");
    assert_eq!(lines[0]["to"], queue.as_str());
    assert_eq!(lines[1]["summary"], true);
    assert_eq!(lines[1]["replayed"], 1);
    assert_eq!(lines[1]["left"], 1);
    assert!(
        wait_until(Duration::from_secs(10), || state.done() == vec![2]).await,
        "the handler did not receive the replayed message: {:?}",
        state.done()
    );
    wait_len(&ch, &dlq, 1).await;

    // An unknown id: exit 1, nothing moves.
    let run = tchu_run(&["dlq", "replay", &queue, "--id", "no-such-id"]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("no message with id"), "{run:#?}");
    wait_len(&ch, &dlq, 1).await;

    // replay everything that is left.
    let run = tchu_run(&["dlq", "replay", &dlq]).await.ok();
    assert!(
        run.stdout
            .contains(&format!("replayed 1 message(s) from {dlq} to {queue}")),
        "{run:#?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || state.done() == vec![2, 1]).await,
        "the handler did not receive the replayed message: {:?}",
        state.done()
    );
    wait_len(&ch, &dlq, 0).await;
    // The attempt count started afresh, and the replay is counted.
    for (n, attempt, replayed) in state.done.lock().unwrap().iter() {
        assert_eq!((*attempt, *replayed), (1, Some(1)), "job {n}");
    }

    // A message that fails again returns to the DLQ once, counted as replayed twice.
    state.fail.store(true, Ordering::SeqCst);
    let id3 = client.publish(&CliJob { n: 3 }).await.unwrap();
    wait_len(&ch, &dlq, 1).await;
    let run = tchu_run(&["dlq", "replay", &queue]).await.ok();
    assert!(run.stdout.contains("replayed 1 message(s)"), "{run:#?}");
    wait_len(&ch, &dlq, 1).await;
    let run = tchu_run(&["--json", "dlq", "replay", &queue]).await.ok();
    assert_eq!(run.json_lines().last().unwrap()["replayed"], 1, "{run:#?}");
    wait_len(&ch, &dlq, 1).await;
    let shown = tchu_run(&["--json", "dlq", "show", &queue])
        .await
        .ok()
        .json();
    assert_eq!(shown["id"], id3.as_str());
    assert_eq!(shown["headers"]["x-tchu-replayed"], 2);

    svc.shutdown().await.unwrap();
    client.close().await;
    delete_queues(&ch, &[&queue, &dlq]).await;
}

#[tokio::test]
async fn dlq_purge_missing_queues_and_unroutable_replays() {
    let (_c, ch) = channel().await;
    let queue = unique("it_cli_purge");
    let dlq = format!("{queue}.dlq");

    // A missing queue: exit 1, clearly.
    for sub in ["list", "show", "replay"] {
        let run = tchu_run(&["dlq", sub, &queue]).await;
        assert_eq!(run.code, 1, "{sub}: {run:#?}");
        assert!(
            run.stderr
                .contains(&format!("queue `{dlq}` does not exist")),
            "{sub}: {run:#?}"
        );
    }

    // A DLQ whose service queue does not exist: replay fails and loses nothing.
    declare_durable(&ch, &dlq).await;
    for n in 0..3 {
        ch.basic_publish(
            "".into(),
            dlq.as_str().into(),
            BasicPublishOptions::default(),
            format!(r#"{{"n": {n}}}"#).as_bytes(),
            lapin::BasicProperties::default()
                .with_content_type("application/vnd.tchu+json".into())
                .with_message_id(format!("m{n}").into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    wait_len(&ch, &dlq, 3).await;
    let run = tchu_run(&["dlq", "replay", &queue]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("unroutable"), "{run:#?}");
    wait_len(&ch, &dlq, 3).await;
    let run = tchu_run(&["--json", "dlq", "list", &queue]).await.ok();
    let ids: Vec<Value> = run.json_lines()[..3]
        .iter()
        .map(|l| l["id"].clone())
        .collect();
    assert_eq!(ids, [json!("m0"), json!("m1"), json!("m2")], "order kept");

    // purge needs --yes.
    let run = tchu_run(&["dlq", "purge", &queue]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    wait_len(&ch, &dlq, 3).await;
    let run = tchu_run(&["--json", "dlq", "purge", &queue, "--yes"])
        .await
        .ok();
    assert_eq!(run.json()["purged"], 3);
    wait_len(&ch, &dlq, 0).await;
    let run = tchu_run(&["dlq", "purge", &dlq, "--yes"]).await.ok();
    assert!(
        run.stdout
            .contains(&format!("purged 0 message(s) from {dlq}")),
        "{run:#?}"
    );

    delete_queues(&ch, &[&dlq]).await;
}

#[tokio::test]
async fn dlq_replay_resets_headers_keeps_order_and_reports_progress() {
    const N: usize = 1100;
    let (_c, ch) = channel().await;
    let dlq = format!("{}.dlq", unique("it_cli_bulk"));
    // The service queue named by `x-tchu-queue`, not the DLQ's name without `.dlq`.
    let target = unique("it_cli_bulk_target");
    declare_durable(&ch, &dlq).await;
    declare_durable(&ch, &target).await;
    for n in 0..N {
        let mut h = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(v.into());
        h.insert("x-tchu-queue".into(), s(&target));
        h.insert("x-tchu-handler".into(), s("bulk.handler"));
        h.insert("x-tchu-original-routing-key".into(), s("it.cli.bulk.done"));
        h.insert("x-tchu-error".into(), s("boom"));
        h.insert("x-tchu-error-kind".into(), s("failed"));
        h.insert("x-tchu-failed-at".into(), s("2026-01-01T00:00:00Z"));
        h.insert("x-tchu-attempts".into(), AMQPValue::LongLongInt(3));
        h.insert("x-tchu-attempt".into(), AMQPValue::LongLongInt(3));
        h.insert("x-tchu-delay-remaining".into(), AMQPValue::LongLongInt(5));
        h.insert("x-tchu-last-error".into(), s("boom"));
        h.insert("x-app".into(), s("kept"));
        if n == 0 {
            h.insert("x-tchu-replayed".into(), AMQPValue::LongInt(4));
        }
        ch.basic_publish(
            "".into(),
            dlq.as_str().into(),
            BasicPublishOptions::default(),
            format!(r#"{{"n": {n}}}"#).as_bytes(),
            lapin::BasicProperties::default()
                .with_content_type("application/vnd.tchu+json".into())
                .with_message_id(format!("m{n}").into())
                .with_app_id("it".into())
                .with_headers(h),
        )
        .await
        .unwrap();
    }
    wait_len(&ch, &dlq, N as u32).await;

    // A long list reports progress on stderr and leaves everything in place.
    let run = tchu_run(&["--json", "dlq", "list", &dlq]).await.ok();
    assert_eq!(run.json_lines().len(), N + 1);
    assert!(
        run.stderr.contains(&format!("read 500/{N}")),
        "{}",
        run.stderr
    );
    assert_eq!(run.json_lines()[0]["topic"], "it.cli.bulk.done");
    wait_len(&ch, &dlq, N as u32).await;

    let run = tchu_run(&["dlq", "replay", &dlq]).await.ok();
    assert!(
        run.stderr.contains(&format!("replayed 500/{N}")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("replayed 1000/{N}")),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains(&format!("replayed {N} message(s) from {dlq} to {target}")),
        "{run:#?}"
    );
    wait_len(&ch, &dlq, 0).await;
    let got = common::drain_at_least(&ch, &target, N, Duration::from_secs(10)).await;
    assert_eq!(got.len(), N);
    for (n, m) in got.iter().enumerate() {
        let p = &m.delivery.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str().to_owned()),
            Some(format!("m{n}")),
            "order kept"
        );
        assert_eq!(m.delivery.data, format!(r#"{{"n": {n}}}"#).into_bytes());
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("it"));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/vnd.tchu+json")
        );
        let header = |name| common::header(m, name);
        assert_eq!(header("x-tchu-handler").as_deref(), Some("bulk.handler"));
        assert_eq!(
            header("x-tchu-original-routing-key").as_deref(),
            Some("it.cli.bulk.done")
        );
        assert_eq!(header("x-app").as_deref(), Some("kept"));
        let replayed = if n == 0 { 5 } else { 1 };
        assert_eq!(
            header("x-tchu-replayed").as_deref(),
            Some(format!("LongLongInt({replayed})").as_str())
        );
        for gone in [
            "x-tchu-queue",
            "x-tchu-error",
            "x-tchu-error-kind",
            "x-tchu-failed-at",
            "x-tchu-attempts",
            "x-tchu-last-error",
        ] {
            assert_eq!(header(gone), None, "{gone} on message {n}");
        }
        // Signed control headers stay as they are, so the signature still holds: tchu's own
        // dead letters carry no attempt or delay, and a retry copy the broker dead-lettered
        // resumes where it was.
        assert_eq!(header("x-tchu-attempt").as_deref(), Some("LongLongInt(3)"));
        assert_eq!(
            header("x-tchu-delay-remaining").as_deref(),
            Some("LongLongInt(5)")
        );
    }

    // An empty DLQ: nothing to do, exit 0.
    let run = tchu_run(&["--json", "dlq", "replay", &dlq]).await.ok();
    assert_eq!(run.json()["replayed"], 0);
    delete_queues(&ch, &[&dlq, &target]).await;
}

// ---------------------------------------------------------------------------------------------
// tail

#[tokio::test]
async fn tail_shows_a_published_event() {
    let word = uuid::Uuid::new_v4().simple().to_string();
    let pattern = format!("it.cli.tail.{word}.#");
    let topic = format!("it.cli.tail.{word}.user.created");
    let mut child = tchu_command(&["tail", &pattern, "--count", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (out_tx, out_rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let ready = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains("tailing") {
                return Ok(line);
            }
            seen.push(line);
        }
        Err(seen)
    })
    .await
    .unwrap();
    let ready = match ready {
        Ok(line) => line,
        Err(seen) => {
            let _ = child.kill();
            panic!("tail never said it was tailing; stderr: {seen:?}");
        }
    };
    assert!(ready.contains(&pattern), "{ready}");

    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let id = client
        .publish_raw(&topic, &json!({"user_id": 7, "email": "a@b.c"}))
        .await
        .unwrap();
    client.close().await;

    let line = tokio::task::spawn_blocking(move || out_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    let line = match line {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("tail printed nothing");
        }
    };
    let ev: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["topic"], topic.as_str());
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(ev["payload"], json!({"user_id": 7, "email": "a@b.c"}));
    assert_eq!(ev["format"], "v2");

    // --count 1: it exits by itself, successfully.
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn tail_human_output_and_timeout() {
    let word = uuid::Uuid::new_v4().simple().to_string();
    // Nothing is published: --timeout ends it with 0.
    let started = Instant::now();
    let run = tchu_run(&[
        "tail",
        &format!("it.cli.quiet.{word}.*"),
        "--timeout",
        "300ms",
    ])
    .await
    .ok();
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(run.stderr.contains("received 0 event(s)"), "{run:#?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Human form: time, topic, id, compact payload.
    let pattern = format!("it.cli.human.{word}.*");
    let topic = format!("it.cli.human.{word}.ping");
    let args = vec![
        "tail".to_owned(),
        pattern,
        "--count".into(),
        "1".into(),
        "--timeout".into(),
        "15s".into(),
    ];
    let tail = tokio::task::spawn_blocking(move || run_blocking(args, None, Vec::new()));
    // Publish until the tail's queue exists (the first publishes are unroutable).
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let id = loop {
        match client.publish_raw(&topic, &json!({"k": "v"})).await {
            Ok(id) => break id,
            Err(tchu::Error::Unroutable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    client.close().await;
    let run = tail.await.unwrap().ok();
    let line = run.stdout.lines().next().unwrap_or_default().to_owned();
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields.len(), 4, "{run:#?}");
    assert!(fields[0].ends_with('Z'), "{run:#?}");
    assert_eq!(fields[1], topic);
    assert_eq!(fields[2], id);
    assert_eq!(fields[3], r#"{"k":"v"}"#);
}

#[tokio::test]
async fn tail_stops_on_ctrl_c() {
    let pattern = format!("it.cli.sigint.{}.#", uuid::Uuid::new_v4().simple());
    let mut child = tchu_command(&["tail", &pattern])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let pid = child.id().to_string();
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("tailing") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("tail never said it was tailing");
                }
            }
        }
        let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(kill.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "Ctrl-C ends tail with 0"
    );
}
