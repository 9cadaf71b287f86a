//! The event log and `tchu replay`, on the real broker:
//! - 10,000 past events across 20 topics; a new service bound to half of them gets exactly
//!   its half from `tchu replay`, in log order, while live events keep arriving, and with the
//!   inbox applies nothing twice across the cut;
//! - a replay killed with SIGKILL mid-way resumes where it stopped;
//! - a log whose retention dropped its start says where the replay really began;
//! - `tchu log grep` prints what matches, up to now, and stops; `tchu log tail` goes on with
//!   what is published after it started;
//! - a service started with a replay point (`Service::replay_from`) catches up in log order,
//!   then goes live, and does not replay again at its next start; killed with SIGKILL
//!   mid-replay (`examples/catch_up.rs`), it resumes and applies each event once.
#![cfg(all(feature = "service", feature = "postgres"))]

mod common;

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::{DedupKey, Handler, Message};

/// A test event: which topic, and its place in the order published.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Past {
    seq: u64,
}

fn tchu(args: &[String]) -> Command {
    let mut cmd = Command::new(common::tchu_bin());
    cmd.args(args)
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env_remove("RUST_LOG");
    cmd
}

/// Owned arguments, for a command run on another thread.
fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Runs `tchu` to completion (bounded), returning its stdout and stderr.
fn tchu_ok(args: &[String]) -> (String, String) {
    let out = tchu(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "tchu {args:?}:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Declares a plain queue for a replay to fill.
async fn plain_queue(ch: &lapin::Channel, queue: &str) {
    ch.queue_declare(queue.into(), Default::default(), Default::default())
        .await
        .unwrap();
}

/// How many messages wait in `queue`.
async fn depth(ch: &lapin::Channel, queue: &str) -> u32 {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch.queue_declare(queue.into(), passive, Default::default());
    q.await.unwrap().message_count()
}

/// A log of the test's own, deleted when dropped.
struct Log(String);

impl Log {
    fn declare(extra: &[&str]) -> Self {
        let name = common::unique("tchu_events.log");
        let mut args = vec!["log", "declare", "--log", &name];
        args.extend_from_slice(extra);
        tchu_ok(&owned(&args));
        Self(name)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (_c, ch) = common::channel().await;
                let _ = ch
                    .queue_delete(name.as_str().into(), Default::default())
                    .await;
            });
        })
        .join();
    }
}

/// Publishes `n` events of `seq` from `first`, round robin over `topics`.
async fn publish(client: &tchu::Client, topics: &[String], first: u64, n: u64) {
    for seq in first..first + n {
        let topic = &topics[(seq % topics.len() as u64) as usize];
        let payload = serde_json::to_value(Past { seq }).unwrap();
        // Unroutable before the service binds: the log takes every topic, so it is not.
        client.publish_raw(topic, &payload).await.unwrap();
    }
}

/// A log of the test's own bound to `prefix.#`, and 10,000 past events in it, round robin
/// over twenty topics (`prefix.a.t00`, `prefix.b.t01`, ...: half of them under `a`).
async fn ten_thousand_past(client: &tchu::Client, prefix: &str) -> (Log, Vec<String>) {
    let log = Log::declare(&["--bind", &format!("{prefix}.#")]);
    let topics: Vec<String> = (0..20)
        .map(|i| format!("{prefix}.{}.t{i:02}", if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    publish(client, &topics, 0, 10_000).await;
    (log, topics)
}

/// What the service handled: (seq, replayed).
type Seen = Arc<Mutex<Vec<(u64, bool)>>>;

/// The service bound to `pattern`, one message at a time (so handling follows queue order),
/// with the PostgreSQL inbox de-duplicating on the message id.
async fn service(
    queue: &str,
    pattern: String,
    pool: tchu::sqlx::PgPool,
    seen: &Seen,
) -> tchu::ServiceHandle {
    let svc = recording(queue, pattern, seen, true).inbox(tchu::Inbox::postgres(pool));
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    svc.start(&client).await.unwrap()
}

/// A service bound to `pattern` recording what it handles in `seen`, one message at a time,
/// de-duplicating on the message id with `dedup` (its inbox then to be given).
fn recording(queue: &str, pattern: String, seen: &Seen, dedup: bool) -> tchu::Service {
    let seen = seen.clone();
    let h = Handler::on_pattern(pattern, move |m: Message| {
        let seen = seen.clone();
        async move {
            let past: Past = m.decode().unwrap();
            seen.lock()
                .unwrap()
                .push((past.seq, m.replayed_from().is_some()));
        }
    });
    let h = if dedup {
        h.with_dedup(DedupKey::MessageId)
    } else {
        h
    };
    tchu::Service::new(queue)
        .handlers_in("no::attribute::handlers")
        .handler(h)
        .prefetch(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_service_replays_exactly_its_half_in_order_while_live_events_arrive() {
    let prefix = common::unique("lg");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let (log, topics) = ten_thousand_past(&client, &prefix).await;
    let (_db, pool) = common::scoped_database("log_replay").await;
    let queue = common::unique("log_replay");
    let seen: Seen = Arc::default();
    let svc = service(&queue, format!("{prefix}.a.*"), pool, &seen).await;
    // Live events before, during and after the replay.
    publish(&client, &topics, 10_000, 100).await;
    let live = {
        let (client, topics) = (client.clone(), topics.clone());
        tokio::spawn(async move { publish(&client, &topics, 10_100, 300).await })
    };
    let pattern = format!("{prefix}.a.*");
    let args = owned(&[
        "replay", "--queue", &queue, "--since", "1h", "--topic", &pattern, "--log", &log.0,
    ]);
    let (_, stderr) = tokio::task::spawn_blocking(move || tchu_ok(&args))
        .await
        .unwrap();
    live.await.unwrap();
    // The 5,000 past ones, and the live ones published before the replay began (in the log
    // before its marker: they come twice, and apply once).
    let replayed: u64 = (stderr.lines())
        .find_map(|l| l.strip_prefix("replayed ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!((5050..=5200).contains(&replayed), "{stderr}");
    let expected: BTreeSet<u64> = (0..10_400).filter(|s| s % 2 == 0).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < expected.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    svc.shutdown().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let got: BTreeSet<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(got.len(), seen.len(), "nothing applied twice");
    assert_eq!(got, expected, "exactly its half, past and live");
    let replayed: Vec<u64> = seen.iter().filter(|s| s.1).map(|s| s.0).collect();
    assert!(replayed.windows(2).all(|w| w[0] < w[1]), "in log order");
    assert!(
        replayed.len() >= 5000,
        "every past event came by the replay"
    );
    client.close().await;
    common::delete_service_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_way_resumes_where_it_stopped() {
    let topic = common::unique("lgk");
    let log = Log::declare(&["--bind", &topic]);
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    publish(&client, std::slice::from_ref(&topic), 0, 10_000).await;
    let queue = common::unique("log_resume");
    let (_conn, ch) = common::channel().await;
    plain_queue(&ch, &queue).await;
    let args = owned(&[
        "replay", "--queue", &queue, "--since", "1h", "--topic", &topic, "--log", &log.0,
    ]);
    let mut first = tchu(&args).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if depth(&ch, &queue).await >= 3000 {
            break;
        }
        assert!(Instant::now() < deadline, "the replay did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let (_, stderr) = tokio::task::spawn_blocking(move || tchu_ok(&args))
        .await
        .unwrap();
    assert!(
        stderr.contains("resuming an interrupted replay"),
        "{stderr}"
    );
    let mut seqs = Vec::new();
    while let Some(m) = ch
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let env = tchu::wire::decode(&tchu::amqp::message_from_delivery(
            &topic,
            &m.delivery.properties,
            m.delivery.data.clone(),
        ))
        .unwrap();
        let tchu::wire::Decoded::Event(env) = env else {
            panic!("an event")
        };
        seqs.push(env.payload["seq"].as_u64().unwrap());
    }
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct, (0..10_000).collect(), "every event, none lost");
    assert!(
        seqs.len() - distinct.len() <= 1000 + 256,
        "copied again only since the last checkpoint: {}",
        seqs.len() - distinct.len()
    );
    client.close().await;
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_whose_retention_dropped_the_start_says_where_the_replay_began() {
    let topic = common::unique("lgr");
    let log = Log::declare(&[
        "--max-bytes",
        "300000",
        "--segment-bytes",
        "50000",
        "--bind",
        &topic,
    ]);
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    // About 1 MB of events: the oldest segments go.
    let big = "x".repeat(300);
    for seq in 0..3000u64 {
        let payload = serde_json::json!({ "seq": seq, "pad": big });
        client.publish_raw(&topic, &payload).await.unwrap();
    }
    let queue = common::unique("log_retention");
    let (_conn, ch) = common::channel().await;
    plain_queue(&ch, &queue).await;
    let args = owned(&[
        "replay", "--queue", &queue, "--since", "1h", "--topic", &topic, "--log", &log.0,
    ]);
    let (_, stderr) = tchu_ok(&args);
    assert!(
        stderr.contains("the log keeps events from offset"),
        "{stderr}"
    );
    let replayed = depth(&ch, &queue).await;
    assert!(replayed < 3000 && replayed > 0, "{replayed}");
    client.close().await;
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_grep_prints_what_matches_up_to_now_and_stops() {
    let prefix = common::unique("lgg");
    let log = Log::declare(&["--bind", &format!("{prefix}.#")]);
    let topics = vec![
        format!("{prefix}.order.placed"),
        format!("{prefix}.user.created"),
    ];
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    publish(&client, &topics, 0, 40).await;
    let pattern = format!("{prefix}.order.#");
    let (stdout, stderr) = tchu_ok(&owned(&[
        "--json", "log", "grep", "--since", "10m", &pattern, "--log", &log.0,
    ]));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20, "{stdout}\n{stderr}");
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l["payload"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..40).step_by(2).collect::<Vec<_>>(), "in log order");
    assert!(lines.iter().all(|l| l["offset"].as_u64().is_some()));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tail_prints_what_is_published_after_it_started() {
    let prefix = common::unique("lgt");
    let log = Log::declare(&["--bind", &format!("{prefix}.#")]);
    let topics = vec![format!("{prefix}.order.placed")];
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    publish(&client, &topics, 0, 5).await;
    let pattern = format!("{prefix}.order.#");
    let args = owned(&[
        "--json",
        "log",
        "tail",
        "--since",
        "10m",
        &pattern,
        "--log",
        &log.0,
        "--count",
        "8",
        "--timeout",
        "60s",
    ]);
    let tail = tokio::task::spawn_blocking(move || tchu_ok(&args));
    // Published once the tail read the first five: it waits for the three that follow.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&client, &topics, 5, 3).await;
    let (stdout, stderr) = tail.await.unwrap();
    let seqs: Vec<u64> = (stdout.lines())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]["seq"].as_u64())
        .map(Option::unwrap)
        .collect();
    assert_eq!(seqs, (0..8).collect::<Vec<_>>(), "{stderr}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_a_replay_point_catch_up_once_in_order_then_go_live() {
    let prefix = common::unique("lgs");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let (log, topics) = ten_thousand_past(&client, &prefix).await;
    let (_db, pool) = common::scoped_database("log_catch_up").await;
    let queue = common::unique("log_catch_up");
    let seen: Seen = Arc::default();
    let mut replicas = Vec::new();
    // Two replicas, each on a connection of its own: one replays, the other waits for it.
    for _ in 0..2 {
        let svc = recording(&queue, format!("{prefix}.a.*"), &seen, true)
            .inbox(tchu::Inbox::postgres(pool.clone()))
            .replay_from("1h")
            .event_log(&log.0);
        let own = tchu::Client::connect(&common::broker_url()).await.unwrap();
        replicas.push((svc.start(&own).await.unwrap(), own));
    }
    // Live events while it replays.
    publish(&client, &topics, 10_000, 400).await;
    let expected: BTreeSet<u64> = (0..10_400).filter(|s| s % 2 == 0).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < expected.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (svc, own) in replicas {
        // The one that waited looks every second whether the replay is done.
        let mut state = svc.watch_state();
        let live = state.wait_for(|s| *s == tchu::ServiceState::Consuming);
        let live = tokio::time::timeout(Duration::from_secs(10), live)
            .await
            .is_ok();
        assert!(live, "both went live: {:?}", svc.state());
        svc.shutdown().await.unwrap();
        own.close().await;
    }
    let got_all = seen.lock().unwrap().clone();
    let got: BTreeSet<u64> = got_all.iter().map(|s| s.0).collect();
    assert_eq!(got.len(), got_all.len(), "nothing applied twice");
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    let replayed: Vec<u64> = got_all.iter().filter(|s| s.1).map(|s| s.0).collect();
    assert!(replayed.len() >= 5000, "every past event came from the log");
    assert!(replayed.windows(2).all(|w| w[0] < w[1]), "in log order");
    let first_live = got_all.iter().position(|s| !s.1).unwrap();
    assert!(
        got_all[first_live..].iter().all(|s| !s.1),
        "the past first, then the live ones"
    );
    client.close().await;
    common::delete_service_queues(&queue).await;
}

/// Starts a replica replaying from `since` on a connection of its own (no inbox: a repeat
/// would show), lets it take what is there, stops it, and returns what it handled.
async fn replica_run(queue: &str, pattern: &str, log: &str, since: &str) -> Vec<(u64, bool)> {
    let seen: Seen = Arc::default();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let svc = recording(queue, pattern.to_owned(), &seen, false)
        .replay_from(since)
        .event_log(log)
        .start(&client)
        .await
        .unwrap();
    let mut state = svc.watch_state();
    let live = state.wait_for(|s| *s == tchu::ServiceState::Consuming);
    tokio::time::timeout(Duration::from_secs(60), live)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    svc.shutdown().await.unwrap();
    client.close().await;
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_point_is_replayed_once_and_another_point_again() {
    let topic = common::unique("lgo");
    let log = Log::declare(&["--bind", &topic]);
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    publish(&client, std::slice::from_ref(&topic), 0, 200).await;
    let queue = common::unique("log_once");
    let replayed = |seen: &[(u64, bool)]| seen.iter().filter(|s| s.1).count();
    let first = replica_run(&queue, &topic, &log.0, "1h").await;
    assert_eq!(replayed(&first), 200, "the first start replays");
    let again = replica_run(&queue, &topic, &log.0, "1h").await;
    assert_eq!(replayed(&again), 0, "the same point: nothing again");
    let other = replica_run(&queue, &topic, &log.0, "2h").await;
    assert_eq!(replayed(&other), 200, "another point: replayed again");
    let other_again = replica_run(&queue, &topic, &log.0, "2h").await;
    assert_eq!(replayed(&other_again), 0, "that point, once");
    client.close().await;
    common::delete_service_queues(&queue).await;
}

/// `examples/catch_up.rs` on `queue` (database `db`, table `indexed`) for the topics of
/// `pattern` from `log`, logging at info; the caller adds what differs and spawns it.
fn catch_up(db: &str, queue: &str, pattern: &str, log: &str) -> Command {
    let mut cmd = Command::new(common::example("catch_up"));
    cmd.env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("DATABASE_URL", db)
        .env("TCHU_QUEUE", queue)
        .env("TCHU_PATTERN", pattern)
        .env("TCHU_TABLE", "indexed")
        .env("TCHU_EVENT_LOG", log)
        .env("RUST_LOG", "info");
    cmd
}

/// Rows the catch-up example indexed: (seq, replayed) in the order written.
async fn indexed(pool: &tchu::sqlx::PgPool, table: &str) -> Vec<(u64, bool)> {
    let rows: Vec<(i64, bool)> = tchu::sqlx::query_as(&format!(
        "SELECT (body->>'seq')::bigint, replayed FROM {table} ORDER BY id"
    ))
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter().map(|(s, r)| (s as u64, r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_mid_replay_resumes_and_applies_each_event_once() {
    let prefix = common::unique("lgc");
    let log = Log::declare(&["--bind", &format!("{prefix}.#")]);
    let topics = vec![format!("{prefix}.user.created")];
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    publish(&client, &topics, 0, 10_000).await;
    let (db, pool) = common::scoped_database("log_killed").await;
    let queue = common::unique("log_killed");
    let pattern = format!("{prefix}.#");
    let run = |stderr: Stdio| {
        let mut cmd = catch_up(&db, &queue, &pattern, &log.0);
        cmd.env("TCHU_PREFETCH", "32")
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let mut first = run(Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(90);
    while indexed(&pool, "indexed").await.len() < 3000 {
        assert!(Instant::now() < deadline, "the replay did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = run(Stdio::piped());
    // A bound, not a timing: after the kill, what the ended run may have been running runs one
    // event at a time (the crash guard), slow beside the other tests of this file.
    let deadline = Instant::now() + Duration::from_secs(300);
    while indexed(&pool, "indexed").await.len() < 10_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    second.kill().unwrap();
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resuming an interrupted replay"),
        "{stderr}"
    );
    assert!(stderr.contains("replay done"), "{stderr}");
    let rows = indexed(&pool, "indexed").await;
    let distinct: BTreeSet<u64> = rows.iter().map(|r| r.0).collect();
    let missing: Vec<u64> = (0..10_000).filter(|s| !distinct.contains(s)).collect();
    assert!(missing.is_empty(), "every event: missing {missing:?}");
    assert_eq!(rows.len(), 10_000, "none applied twice");
    assert!(rows.iter().all(|r| r.1), "all from the log");
    client.close().await;
    common::delete_service_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_and_check_describe_the_event_log_a_service_replays_from() {
    let prefix = common::unique("lgd");
    let (db, _pool) = common::scoped_database("log_describe").await;
    let missing = common::unique("tchu_events.log");
    let (queue, pattern) = (format!("{prefix}_q"), format!("{prefix}.user.*"));
    let run = |log: &str, args: &[&str]| {
        let out = catch_up(&db, &queue, &pattern, log)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<serde_json::Value>(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)))
    };
    let topo = run(&missing, &["topology", "--json"]);
    assert_eq!(topo["replay"]["since"], "first");
    assert_eq!(topo["replay"]["log"], missing.as_str());
    assert_eq!(
        topo["replay"]["progress_queue"],
        format!("{prefix}_q.replay")
    );
    let report = run(&missing, &["check", "--json"]);
    let drift = report["mismatched"].to_string();
    assert!(
        drift.contains(&format!("event log `{missing}` does not exist")),
        "{report}"
    );
    let log = Log::declare(&["--bind", &format!("{prefix}.user.#")]);
    let report = run(&log.0, &["check", "--json"]);
    let notes = report["notes"].to_string();
    assert!(
        !report["mismatched"].to_string().contains("event log"),
        "{report}"
    );
    assert!(
        notes.contains(&format!("keeps {prefix}.user.#")),
        "{report}"
    );
    assert!(!notes.contains("keeps nothing known"), "{report}");
    let narrow = Log::declare(&["--bind", &format!("{prefix}.user.created")]);
    let report = run(&narrow.0, &["check", "--json"]);
    let notes = report["notes"].to_string();
    assert!(notes.contains("keeps nothing known"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_ends_the_process_mid_replay_is_parked_as_crashed_not_run_for_ever() {
    let topic = common::unique("lgp");
    let log = Log::declare(&["--bind", &topic]);
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    for seq in 0..300u64 {
        let payload = serde_json::json!({ "seq": seq, "poison": seq == 120 });
        client.publish_raw(&topic, &payload).await.unwrap();
    }
    let (db, pool) = common::scoped_database("log_poison").await;
    let queue = common::unique("log_poison");
    let run = || {
        let mut cmd = catch_up(&db, &queue, &topic, &log.0);
        cmd.env("TCHU_PREFETCH", "16")
            .env("TCHU_REDELIVERY_LIMIT", "3")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Started again each time it ends, as an orchestrator would, a bounded number of times.
    let (mut ends, mut last) = (0, String::new());
    for _ in 0..8 {
        let mut child = run();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            if indexed(&pool, "indexed").await.len() >= 299 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = child.kill();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if last.contains("replay done") {
            break;
        }
        ends += 1;
    }
    assert!(
        last.contains("replay done"),
        "ended {ends} times; last run:\n{last}"
    );
    assert!(
        ends <= 3,
        "it ended {ends} times: 1 in the pass, then 2 running alone"
    );
    let rows = indexed(&pool, "indexed").await;
    let distinct: BTreeSet<u64> = rows.iter().map(|r| r.0).collect();
    let expected: BTreeSet<u64> = (0..300).filter(|s| *s != 120).collect();
    assert_eq!(rows.len(), distinct.len(), "none applied twice");
    assert!(
        distinct == expected,
        "every other event: {} of 299",
        distinct.len()
    );
    let (_conn, ch) = common::channel().await;
    let parked = common::drain(&ch, &format!("{queue}.dlq")).await;
    assert_eq!(parked.len(), 1, "the poison, parked once");
    assert_eq!(
        common::header(&parked[0], "x-tchu-error-kind").as_deref(),
        Some("crashed")
    );
    client.close().await;
    common::delete_service_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_point_is_refused_at_start_where_it_cannot_be_kept() {
    let refusal = |r: tchu::Result<tchu::ServiceHandle>| match r {
        Err(e @ tchu::Error::InvalidService { .. }) => e.to_string(),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("started"),
    };
    let seen: Seen = Arc::default();
    let memory = tchu::Client::memory(&tchu::MemoryBroker::new());
    let svc = recording("replay_memory", "lgm.#".into(), &seen, false).replay_from("1h");
    let why = refusal(svc.start(&memory).await);
    assert!(why.contains("the in-memory broker keeps none"), "{why}");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let svc = recording("replay_bad_point", "lgm.#".into(), &seen, false);
    let why = refusal(svc.replay_from("yesterday").start(&client).await);
    assert!(why.contains("replay_from `yesterday`"), "{why}");
    let ordered = Handler::on_pattern("lgm.ordered", |_m: Message| async {})
        .with_ordered("account")
        .with_name("ledger");
    let svc = recording("replay_ordered", "lgm.#".into(), &seen, false).handler(ordered);
    let why = refusal(svc.replay_from("1h").start(&client).await);
    assert!(why.contains("ordered handlers (`ledger`"), "{why}");
    client.close().await;
}

/// A message to `topic` as tchu publishes it (taken from a queue of the test's own, before
/// the log exists), for a stranger to publish again with a header of its own.
async fn as_published(client: &tchu::Client, topic: &str, payload: serde_json::Value) -> Taken {
    use futures_lite::StreamExt;
    let (_conn, ch) = common::channel().await;
    let (_q, mut consumer) = common::temp_queue(&ch, Some(topic)).await;
    client.publish_raw(topic, &payload).await.unwrap();
    let d = consumer.next().await.unwrap().unwrap();
    (d.data, d.properties)
}

type Taken = (Vec<u8>, lapin::BasicProperties);

/// Publishes `taken` to `topic` on tchu_events as a stranger, with `extra` added.
async fn tampered(topic: &str, (data, props): Taken, extra: &str) {
    let (_conn, ch) = common::channel().await;
    let mut headers = props.headers().clone().unwrap_or_default();
    let value = lapin::types::AMQPValue::LongString("tchu_events.log@0".into());
    headers.insert(extra.into(), value);
    let props = props.with_headers(headers);
    let options = lapin::options::BasicPublishOptions::default();
    let publish = ch.basic_publish("tchu_events".into(), topic.into(), options, &data, props);
    publish.await.unwrap().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_runs_no_past_request_and_reads_a_strangers_headers_as_live() {
    let prefix = common::unique("lgh");
    let topic = format!("{prefix}.ev");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let second = as_published(&client, &topic, serde_json::json!({ "seq": 2 })).await;
    let third = as_published(&client, &topic, serde_json::json!({ "seq": 3 })).await;
    let log = Log::declare(&["--bind", &format!("{prefix}.#")]);
    client
        .publish_raw(&topic, &serde_json::json!({ "seq": 0 }))
        .await
        .unwrap();
    // A request nobody answered: in the log, its caller long gone when the replay runs.
    let request = serde_json::json!({ "seq": 1 });
    let asked = client.call_raw(&topic, &request, Duration::from_millis(300));
    assert!(asked.await.is_err());
    // A marker header does not make an event a marker; a replay mark a stranger wrote is not
    // trusted.
    tampered(&topic, second, "x-tchu-log-marker").await;
    tampered(&topic, third, "x-tchu-log-offset").await;
    client
        .publish_raw(&topic, &serde_json::json!({ "seq": 4 }))
        .await
        .unwrap();
    let queue = common::unique("log_hostile");
    let seen = replica_run(&queue, &topic, &log.0, "first").await;
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    let (_conn, ch) = common::channel().await;
    let parked = common::drain(&ch, &format!("{queue}.dlq")).await;
    let why: Vec<_> = parked
        .iter()
        .map(|p| common::header(p, "x-tchu-error"))
        .collect();
    assert_eq!(seqs, vec![0, 2, 4], "{seen:?} {why:?}");
    assert!(seen.iter().all(|s| s.1), "marked as replayed");
    assert_eq!(parked.len(), 1, "{why:?}");
    assert_eq!(
        common::header(&parked[0], "x-tchu-error-kind").as_deref(),
        Some("untrusted")
    );
    client.close().await;
    common::delete_service_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_log_dropped_its_start_says_where_its_replay_began() {
    let topic = common::unique("lgq");
    let retention = ["--max-bytes", "300000", "--segment-bytes", "50000"];
    let log = Log::declare(&[&retention[..], &["--bind", &topic]].concat());
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let big = "x".repeat(300);
    for seq in 0..3000u64 {
        let payload = serde_json::json!({ "seq": seq, "pad": big });
        client.publish_raw(&topic, &payload).await.unwrap();
    }
    let (db, pool) = common::scoped_database("log_kept").await;
    let queue = common::unique("log_kept");
    let stderr_path = std::env::temp_dir().join(format!("{queue}.stderr"));
    let mut child = catch_up(&db, &queue, &topic, &log.0)
        .env("TCHU_REPLAY_FROM", "1h")
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let done = common::wait_until(Duration::from_secs(60), || read().contains("replay done")).await;
    let _ = child.kill();
    let _ = child.wait();
    let stderr = read();
    let _ = std::fs::remove_file(&stderr_path);
    assert!(done, "{stderr}");
    assert!(
        stderr.contains("the log keeps events from offset"),
        "{stderr}"
    );
    let rows = indexed(&pool, "indexed").await.len();
    assert!(rows > 0 && rows < 3000, "{rows}");
    client.close().await;
    common::delete_service_queues(&queue).await;
}
