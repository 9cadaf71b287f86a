//! The crash guard under a supervisor (issue 27). The `worker` example is run the way systemd
//! or Kubernetes would run it: restarted whenever it ends. One event whose handler aborts the
//! process (a killer) and 20 ordinary ones are published together. What must hold, on classic
//! and quorum service queues, with prefetch 16 and 1, with one replica and with two:
//! - the killer runs at most the redelivery limit's number of times (5);
//! - it ends in `<queue>.dlq` exactly once, as `crashed`, with its topic;
//! - all 20 ordinary events are handled, and none of them is parked.
#![cfg(feature = "service")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default redelivery limit: how many runs a killer gets.
const LIMIT: usize = 5;
/// Restarts a supervisor allows before it gives up (bounded, whatever goes wrong).
const RESTARTS: usize = 15;

/// A worker restarted whenever it ends; every line it prints is gathered in `lines`.
struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn spawn_worker(
    queue: &str,
    prefetch: u16,
    quorum: bool,
    lines: &Arc<Mutex<Vec<String>>>,
) -> Child {
    let mut child = Command::new(common::example("worker"))
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", queue)
        .env("TCHU_PREFETCH", prefetch.to_string())
        .env("TCHU_QUEUE_TYPE", if quorum { "quorum" } else { "classic" })
        .env("TCHU_WORK_MS", "30")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let (l1, l2) = (lines.clone(), lines.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l1.lock().unwrap().push(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("consuming") {
                l2.lock().unwrap().push("<consuming>".into());
            }
        }
    });
    child
}

fn supervise(
    queue: &str,
    prefetch: u16,
    quorum: bool,
    lines: &Arc<Mutex<Vec<String>>>,
) -> Supervisor {
    let stop = Arc::new(AtomicBool::new(false));
    let (queue, lines, halt) = (queue.to_owned(), lines.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        for _ in 0..RESTARTS {
            let mut child = spawn_worker(&queue, prefetch, quorum, &lines);
            loop {
                if halt.load(Ordering::SeqCst) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    Supervisor {
        stop,
        thread: Some(thread),
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn count(lines: &Mutex<Vec<String>>, prefix: &str) -> usize {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with(prefix))
        .count()
}

/// The service tests take turns: each starts processes, and the machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn killer_among_twenty(prefetch: u16, quorum: bool, replicas: usize) {
    let _turn = SERIAL.lock().await;
    let queue = common::unique("crash_loop");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let supervisors: Vec<Supervisor> = (0..replicas)
        .map(|_| supervise(&queue, prefetch, quorum, &lines))
        .collect();
    let all_up = || count(&lines, "<consuming>") >= replicas;
    assert!(common::wait_until(Duration::from_secs(30), all_up).await);
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    for id in 1..=20u64 {
        if id == 6 {
            let killer = serde_json::json!({"id": 0, "poison": true});
            client.publish_raw("demo.work", &killer).await.unwrap();
        }
        let ordinary = serde_json::json!({"id": id});
        client.publish_raw("demo.work", &ordinary).await.unwrap();
    }
    let (_c, ch) = common::channel().await;
    let dlq = format!("{queue}.dlq");
    let mut parked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    let all_done = || (1..=20).all(|i| count(&lines, &format!("done {i}")) > 0);
    while (parked.is_empty() || !all_done()) && Instant::now() < deadline {
        parked.extend(common::drain(&ch, &dlq).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for a copy loop to show itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    parked.extend(common::drain(&ch, &dlq).await);
    drop(supervisors);
    let runs = count(&lines, "started 0 ");
    let shown = lines.lock().unwrap().join("\n");
    assert!(all_done(), "every ordinary event handled:\n{shown}");
    eprintln!(
        "prefetch {prefetch}, quorum {quorum}, {replicas} replica(s): the killer ran {runs} times"
    );
    assert!(
        (1..=LIMIT).contains(&runs),
        "the killer ran {runs} times:\n{shown}"
    );
    let kinds: Vec<_> = parked
        .iter()
        .map(|m| {
            (
                common::header(m, "x-tchu-error-kind"),
                String::from_utf8_lossy(&m.data).into_owned(),
            )
        })
        .collect();
    assert_eq!(parked.len(), 1, "parked exactly once: {kinds:?}");
    assert_eq!(kinds[0].0.as_deref(), Some("crashed"), "{kinds:?}");
    assert!(
        kinds[0].1.contains("poison"),
        "the killer is the one parked: {kinds:?}"
    );
    assert_eq!(
        common::header(&parked[0], "x-tchu-original-routing-key").as_deref(),
        Some("demo.work")
    );
    client.close().await;
    common::delete_service_queues(&queue).await;
}

#[tokio::test]
async fn classic_prefetch_16() {
    killer_among_twenty(16, false, 1).await;
}

#[tokio::test]
async fn classic_prefetch_1() {
    killer_among_twenty(1, false, 1).await;
}

#[tokio::test]
async fn quorum_prefetch_16() {
    killer_among_twenty(16, true, 1).await;
}

#[tokio::test]
async fn quorum_prefetch_1() {
    killer_among_twenty(1, true, 1).await;
}

#[tokio::test]
async fn classic_two_replicas() {
    killer_among_twenty(16, false, 2).await;
}

#[tokio::test]
async fn quorum_two_replicas() {
    killer_among_twenty(16, true, 2).await;
}
