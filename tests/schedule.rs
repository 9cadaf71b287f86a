//! Schedules: `#[tchu::schedule]` and `Handler::every`, each occurrence run once across
//! replicas.
//! - in memory (users' unit tests): two replicas on one broker run each occurrence once; a
//!   failing run is retried by its handler's policy; the attribute form runs;
//! - start-up refuses a schedule without a store, a malformed one, and one wired wrong;
//! - on RabbitMQ with PostgreSQL (`examples/schedules.rs`, three replicas as processes): every
//!   2-second occurrence runs once for a minute while one replica is killed with SIGKILL; all
//!   replicas stopped for a while and restarted run the missed `heartbeat` once (no burst) and
//!   skip the missed `sweep`; `flaky` fails its first attempt and its retry runs.
#![cfg(feature = "service")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tchu::{Attempt, Handler, Missed, Occurrence, ScheduleSpec};

/// What the runs of a test's schedule saw: due time (Unix ms), missed count, attempt.
type Runs = Arc<Mutex<Vec<(u128, u32, u32)>>>;

fn due_ms(run: &Occurrence) -> u128 {
    run.due().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// A handler of `spec` recording each run in `runs`; it fails the first attempt of each
/// occurrence when `fail_first`.
fn recorder(spec: ScheduleSpec, runs: &Runs, fail_first: bool) -> Handler {
    let runs = runs.clone();
    Handler::every(spec, move |(run, attempt): (Occurrence, Attempt)| {
        let runs = runs.clone();
        async move {
            if fail_first && attempt.0 == 1 {
                return Err(std::io::Error::other("first attempt fails"));
            }
            runs.lock()
                .unwrap()
                .push((due_ms(&run), run.missed(), attempt.0));
            Ok(())
        }
    })
}

async fn memory_replica(
    broker: &tchu::MemoryBroker,
    queue: &str,
    h: Handler,
) -> tchu::ServiceHandle {
    tchu::Service::new(queue)
        .handlers_in("no::attribute::handlers")
        .handler(h)
        .start(&tchu::Client::memory(broker))
        .await
        .unwrap()
}

/// The due times of `runs`, sorted.
fn dues(runs: &Runs) -> Vec<u128> {
    let mut d: Vec<u128> = runs.lock().unwrap().iter().map(|r| r.0).collect();
    d.sort_unstable();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_two_replicas_run_each_occurrence_once() {
    let broker = tchu::MemoryBroker::new();
    let runs: Runs = Arc::default();
    let every_second = || ScheduleSpec::cron("tick", "* * * * * *");
    let a = memory_replica(&broker, "sched_mem", recorder(every_second(), &runs, false)).await;
    let b = memory_replica(&broker, "sched_mem", recorder(every_second(), &runs, false)).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let all = runs.lock().unwrap().clone();
    let dues = dues(&runs);
    assert!(dues.len() >= 4, "ran {dues:?}");
    for pair in dues.windows(2) {
        // A stall of the machine over a second makes one run for the seconds missed, and
        // says so; never two runs of one second.
        let gap = pair[1] - pair[0];
        let said = all.iter().find(|r| r.0 == pair[1]).map_or(0, |r| r.1);
        assert!(gap > 0, "each second once: {all:?}");
        assert_eq!(
            u128::from(said),
            gap / 1000 - 1,
            "none missing unsaid: {all:?}"
        );
    }
}

/// What a stranger sends to a service's queue, on a schedule's topic.
fn strangers_occurrence(queue: &str, forged_header: bool) -> tchu::wire::WireMessage {
    let options = tchu::wire::EncodeOptions {
        id: "6f1c0000-0000-4000-8000-000000000002",
        ..Default::default()
    };
    let due = serde_json::json!({
        "schedule": "tick", "due": "2030-01-01T00:00:00Z",
        "due_unix_ms": 1_893_456_000_000_i64, "missed": 0,
    });
    let mut msg = tchu::wire::encode("tchu.schedule.tick", &due, &options).unwrap();
    msg.routing_key = queue.to_owned();
    if forged_header {
        let header = tchu::headers::OCCURRENCE_HEADER;
        msg.headers.insert(header.into(), "tick".into());
    }
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_stranger_cannot_run_a_schedule() {
    let broker = tchu::MemoryBroker::new();
    let runs: Runs = Arc::default();
    let yearly = ScheduleSpec::cron("tick", "0 0 0 1 1 *");
    let svc = memory_replica(
        &broker,
        "sched_mem_stranger",
        recorder(yearly, &runs, false),
    )
    .await;
    for forged in [false, true] {
        broker
            .send(&strangers_occurrence("sched_mem_stranger", forged))
            .unwrap();
    }
    broker.settled().await;
    svc.shutdown().await.unwrap();
    assert!(runs.lock().unwrap().is_empty(), "nothing ran");
    let parked = broker.peek("sched_mem_stranger.dlq");
    let mut kinds: Vec<&str> = (parked.iter())
        .filter_map(|m| m.headers[tchu::headers::ERROR_KIND_HEADER].as_str())
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["rejected", "untrusted"],
        "each parked once, with why"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_failing_run_is_retried_by_its_policy() {
    let broker = tchu::MemoryBroker::new();
    let runs: Runs = Arc::default();
    let spec = ScheduleSpec::cron("flaky", "* * * * * *");
    let h = recorder(spec, &runs, true)
        .with_retry(tchu::RetryPolicy::fixed(3, Duration::from_millis(50)));
    let svc = memory_replica(&broker, "sched_mem_retry", h).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    svc.shutdown().await.unwrap();
    let runs = runs.lock().unwrap().clone();
    assert!(runs.len() >= 2, "ran {runs:?}");
    assert!(
        runs.iter().all(|r| r.2 == 2),
        "each by its second attempt: {runs:?}"
    );
}

mod attr {
    use super::*;

    pub static RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    #[tchu::schedule(
        "* * * * * *",
        tz = "Europe/Amsterdam",
        missed = "skip",
        name = "attr_tick"
    )]
    async fn tick(run: Occurrence) {
        RUNS.lock().unwrap().push(run.schedule().to_owned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_the_attribute_form_runs_and_shows_in_the_topology() {
    let broker = tchu::MemoryBroker::new();
    let svc = tchu::Service::new("sched_attr").handlers_in(concat!(module_path!(), "::attr"));
    let topology = tchu::admin::topology_document(&svc);
    let schedule = &topology["handlers"][0]["schedule"];
    assert_eq!(schedule["name"], "attr_tick");
    assert_eq!(schedule["tz"], "Europe/Amsterdam");
    assert_eq!(schedule["missed"], "skip");
    assert_eq!(schedule["next"].as_array().unwrap().len(), 3);
    assert_eq!(
        topology["handlers"][0]["pattern"],
        "tchu.schedule.attr_tick"
    );
    let svc = svc.start(&tchu::Client::memory(&broker)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    svc.shutdown().await.unwrap();
    let runs = attr::RUNS.lock().unwrap().clone();
    assert!(
        runs.len() >= 2 && runs.iter().all(|r| r == "attr_tick"),
        "{runs:?}"
    );
}

#[tchu::event(topic = "sched.some.event")]
struct SomeEvent {
    n: u32,
}

#[tchu::event(topic = "sched.report.due")]
struct ReportDue {
    occurrence: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_schedule_publishes_an_event_each_occurrence() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let spec = ScheduleSpec::cron("report", "* * * * * *");
    let publishing = Handler::publishing(spec, |run: &Occurrence| ReportDue {
        occurrence: run.id().to_owned(),
    });
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g = got.clone();
    let listener = Handler::on(move |e: ReportDue| {
        let g = g.clone();
        async move { g.lock().unwrap().push(e.occurrence) }
    });
    let service =
        |queue: &str, h: Handler| tchu::Service::new(queue).handlers_in("none").handler(h);
    let reports = service("sched_reports", listener)
        .start(&client)
        .await
        .unwrap();
    let publisher = service("sched_publisher", publishing)
        .start(&client)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    publisher.shutdown().await.unwrap();
    broker.settled().await;
    reports.shutdown().await.unwrap();
    let got = got.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<&String> = got.iter().collect();
    assert!(got.len() >= 2, "{got:?}");
    assert_eq!(
        distinct.len(),
        got.len(),
        "one event per occurrence: {got:?}"
    );
}

/// Why `svc` may not start.
async fn refused(svc: tchu::Service, client: &tchu::Client) -> String {
    match svc.start(client).await {
        Err(e @ tchu::Error::InvalidService { .. }) => e.to_string(),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("started"),
    }
}

#[tokio::test]
async fn start_up_refuses_a_schedule_without_a_store_malformed_or_wired_wrong() {
    let rabbit = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let memory = tchu::Client::memory(&tchu::MemoryBroker::new());
    let svc = |h: Handler| {
        tchu::Service::new("sched_refused")
            .handlers_in("none")
            .handler(h)
    };
    let ok = |name: &'static str| {
        Handler::every(
            ScheduleSpec::cron(name, "0 * * * * *"),
            |_: Occurrence| async {},
        )
    };
    let why = refused(svc(ok("s")), &rabbit).await;
    assert!(
        why.contains("runs a schedule but the service has no PostgreSQL inbox"),
        "{why}"
    );
    let bad_cron = Handler::every(
        ScheduleSpec::cron("c", "61 * * * * *"),
        |_: Occurrence| async {},
    );
    let why = refused(svc(bad_cron), &memory).await;
    assert!(
        why.contains("schedule `c`: cron expression `61 * * * * *`"),
        "{why}"
    );
    let bad_tz = ScheduleSpec::cron("z", "0 * * * * *").tz("Mars/Olympus");
    let why = refused(
        svc(Handler::every(bad_tz, |_: Occurrence| async {})),
        &memory,
    )
    .await;
    assert!(
        why.contains("`Mars/Olympus` is not an IANA time zone"),
        "{why}"
    );
    let bad_name = Handler::every(
        ScheduleSpec::cron("a b", "0 * * * * *"),
        |_: Occurrence| async {},
    );
    let why = refused(svc(bad_name), &memory).await;
    assert!(why.contains("schedule name `a b`"), "{why}");
    let with_event = Handler::every(
        ScheduleSpec::cron("e", "0 * * * * *"),
        |_: SomeEvent| async {},
    );
    let why = refused(svc(with_event), &memory).await;
    assert!(
        why.contains("runs schedule `e` and takes an event argument"),
        "{why}"
    );
    let twice = svc(ok("dup")).handler(ok("dup").with_name("another"));
    let why = refused(twice, &memory).await;
    assert!(why.contains("two handlers run schedule `dup`"), "{why}");
    let skip = ScheduleSpec::cron("fine", "0 * * * * *").missed(Missed::Skip);
    let fine = svc(Handler::every(skip, |_: Occurrence| async {}));
    fine.start(&memory).await.unwrap().shutdown().await.unwrap();
    rabbit.close().await;
}

#[cfg(all(feature = "postgres", feature = "prometheus"))]
mod pg {
    use super::common;
    use std::time::{Duration, Instant};
    use tchu::sqlx::{self, PgPool};

    fn replica(queue: &str, db: &str, name: &str, metrics: Option<&str>) -> common::KillOnDrop {
        let mut cmd = std::process::Command::new(common::example("schedules"));
        if let Some(addr) = metrics {
            cmd.env("TCHU_METRICS_ADDR", addr);
        }
        cmd.env(tchu::BROKER_URL_ENV, common::broker_url())
            .env("TCHU_QUEUE", queue)
            .env("DATABASE_URL", db)
            .env("TCHU_REPLICA", name)
            .env("SCHEDULE_RUN_MS", "300")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        common::KillOnDrop(cmd.spawn().unwrap())
    }

    /// The runs of `schedule` recorded so far: (due Unix ms, missed, attempt, replica).
    async fn runs(pool: &PgPool, schedule: &str) -> Vec<(i64, i64, i64, String)> {
        sqlx::query_as(
            "SELECT due_unix_ms, missed, attempt, replica FROM schedule_runs \
             WHERE schedule = $1 ORDER BY due_unix_ms",
        )
        .bind(schedule)
        .fetch_all(pool)
        .await
        .unwrap_or_default()
    }

    /// Waits (bounded) until `schedule` ran `n` times in all.
    async fn ran(pool: &PgPool, schedule: &str, n: usize) -> Vec<(i64, i64, i64, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = runs(pool, schedule).await;
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{schedule} ran {} times, not {n}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each occurrence once, none missing between the first and the last.
    fn once_each(schedule: &str, runs: &[(i64, i64, i64, String)]) {
        for pair in runs.windows(2) {
            assert_eq!(
                pair[1].0 - pair[0].0,
                2000,
                "{schedule}: each 2-second occurrence once: {:?}",
                runs.iter().map(|r| r.0 % 100_000).collect::<Vec<_>>()
            );
        }
    }

    /// Sleeps until `ms` past the next even second: a heartbeat (300 ms) is then running.
    async fn mid_run(ms: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(2000 - now % 2000 + ms)).await;
    }

    /// The service: its queue and database.
    struct Setup {
        queue: String,
        db: String,
        pool: PgPool,
    }

    impl Setup {
        async fn fired(&self, schedule: &str) -> (i64, i64, Option<String>) {
            sqlx::query_as(
                "SELECT fired, skipped, last_outcome FROM tchu_schedules \
                 WHERE service = $1 AND name = $2",
            )
            .bind(&self.queue)
            .bind(schedule)
            .fetch_one(&self.pool)
            .await
            .unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_replicas_run_each_occurrence_once_through_a_kill_and_a_full_stop() {
        let (db, pool) = common::scoped_database("schedules").await;
        let queue = common::unique("schedules");
        let setup = Setup { queue, db, pool };
        let live = a_minute_with_a_kill(&setup).await;
        stopped_and_back(&setup, &live).await;
        common::delete_service_queues(&setup.queue).await;
    }

    /// Three replicas for a minute, the first killed (SIGKILL) after 20 s: each occurrence is
    /// sent once and runs once. Returns the heartbeat's runs; leaves no replica running.
    async fn a_minute_with_a_kill(s: &Setup) -> Vec<(i64, i64, i64, String)> {
        let mut replicas: Vec<_> = ["r1", "r2", "r3"]
            .iter()
            .map(|r| replica(&s.queue, &s.db, r, None))
            .collect();
        ran(&s.pool, "heartbeat", 1).await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            mid_run(150).await;
            if started.elapsed() > Duration::from_secs(20) && replicas.len() == 3 {
                // kill -9, in the middle of a run (if it is r1's turn).
                let mut r1 = replicas.remove(0);
                r1.0.kill().unwrap();
                r1.0.wait().unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let live = runs(&s.pool, "heartbeat").await;
        assert!(
            live.len() >= 29,
            "a minute of 2-second runs: {}",
            live.len()
        );
        once_each("heartbeat", &live);
        // Sent once each too, not only run once (the inbox would hide copies sent twice).
        let (sent, n) = (s.fired("heartbeat").await.0, live.len() as i64);
        assert!((n..=n + 1).contains(&sent), "sent {sent} for {n} runs");
        let by: std::collections::BTreeSet<&str> = live.iter().map(|r| r.3.as_str()).collect();
        assert!(by.len() >= 2, "the replicas shared the runs: {by:?}");
        once_each("sweep", &runs(&s.pool, "sweep").await);
        let flaky = runs(&s.pool, "flaky").await;
        once_each("flaky", &flaky);
        assert!(
            flaky.iter().all(|r| r.2 == 2),
            "each flaky run is its retry"
        );
        live
    }

    /// Every replica down for 9 s (four or five occurrences missed), then one back first
    /// (serving its metrics), then two more: the heartbeat runs the missed ones once, the
    /// sweep skips them.
    async fn stopped_and_back(s: &Setup, live: &[(i64, i64, i64, String)]) {
        let last_beat = live.last().unwrap().0;
        tokio::time::sleep(Duration::from_secs(9)).await;
        let metrics = common::free_address();
        let _first = replica(&s.queue, &s.db, "r4", Some(&metrics));
        let mut after = ran(&s.pool, "heartbeat", live.len() + 1).await;
        while !after[live.len()..].iter().any(|r| r.1 > 0) && after.len() < live.len() + 4 {
            after = ran(&s.pool, "heartbeat", after.len() + 1).await;
        }
        let _others = [
            replica(&s.queue, &s.db, "r5", None),
            replica(&s.queue, &s.db, "r6", None),
        ];
        let after = ran(&s.pool, "heartbeat", after.len() + 3).await;
        let since_stop = &after[live.len()..];
        // An occurrence sent just before the stop runs when the service is back: at least
        // once. Then one run for the whole gap, no burst.
        let at = (since_stop.iter().position(|r| r.1 > 0)).unwrap_or(since_stop.len());
        assert!(at <= 1, "one run for the gap: {since_stop:?}");
        if at == 1 {
            assert_eq!(since_stop[0].0, last_beat + 2000, "{since_stop:?}");
        }
        let caught_up = since_stop.get(at).expect("a catch-up run");
        assert!(
            caught_up.1 >= 3,
            "the catch-up run says what it dropped: {caught_up:?}"
        );
        let before = if at == 1 { since_stop[0].0 } else { last_beat };
        assert!(caught_up.0 - before >= 6000, "no burst: {since_stop:?}");
        once_each("heartbeat after the gap", &since_stop[at..]);
        let sweep = runs(&s.pool, "sweep").await;
        let widest = sweep.windows(2).map(|p| p[1].0 - p[0].0).max().unwrap_or(0);
        assert!(
            widest >= 8000,
            "the missed sweeps were skipped, not run: {widest} ms"
        );
        let (_, skipped, outcome) = s.fired("sweep").await;
        assert!(skipped >= 3, "skipped {skipped}");
        assert_eq!(outcome.as_deref(), Some("ok"));
        let scraped = common::scrape(&metrics);
        for line in [
            "tchu_schedule_total{schedule=\"heartbeat\",event=\"fired\"}",
            "tchu_schedule_total{schedule=\"heartbeat\",event=\"missed\"}",
            "tchu_schedule_total{schedule=\"sweep\",event=\"missed\"}",
            "tchu_schedule_total{schedule=\"flaky\",event=\"failed\"}",
        ] {
            assert!(scraped.contains(line), "{line} in\n{scraped}");
        }
    }
}
