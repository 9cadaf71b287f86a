//! In order per key across replicas: two processes of the `ledger` example (an ordered handler
//! keyed by account) on one service queue, 50 accounts × 40 entries published by Rust or by
//! Python tchu-tchu, first runs of every seventh entry failing (retried in place), one entry
//! that always fails (parked, holding its account's later entries), and the replica applying
//! entries killed with SIGKILL a third of the way through. Per account the effects happen in
//! publish order (a killed replica's last entries may run again on the other, from where it
//! was: at least once), no entry is lost, and once the ledger is repaired, replaying the parked
//! entry runs it, then the held ones, in order.
#![cfg(feature = "service")]

mod common;
mod python;

use common::{KillOnDrop, unique, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The two tests take turns: their replicas bind the same topic.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ACCOUNTS: u64 = 50;
const ENTRIES: u64 = 40;
/// The entry that always fails: account 7's 10th.
const BROKEN: (u64, u64) = (7, 10);
const TOPIC: &str = "ledger.entry";

/// One replica of the ledger service, its stderr watched for "consuming in order per key".
struct Replica {
    child: KillOnDrop,
    consuming: std::sync::mpsc::Receiver<()>,
}

fn replica(queue: &str, effects: &Path) -> Replica {
    let mut child = Command::new(common::example("ledger"))
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", queue)
        .env("TCHU_EFFECTS", effects)
        .env("TCHU_REPAIRED", repaired_path(effects))
        .env("TCHU_WORK_MS", "20")
        .env("TCHU_PREFETCH", "16")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, consuming) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("consuming in order per key") {
                let _ = tx.send(());
            }
        }
    });
    Replica {
        child: KillOnDrop(child),
        consuming,
    }
}

impl Replica {
    fn wait_consuming(&self) {
        self.consuming
            .recv_timeout(Duration::from_secs(30))
            .expect("the replica consumes");
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// The effects file: one `account seq pid` line per applied entry, in the order applied.
fn effects(path: &Path) -> Vec<(String, u64, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let account = parts.next()?.to_owned();
            let seq = parts.next()?.parse().ok()?;
            let pid = parts.next()?.parse().ok()?;
            Some((account, seq, pid))
        })
        .collect()
}

fn distinct(path: &Path) -> usize {
    let all = effects(path);
    let set: std::collections::HashSet<_> = all.iter().map(|(a, s, _)| (a, s)).collect();
    set.len()
}

/// Per account: its effects are `want` in publish order, except that after the kill the other
/// replica may run the killed one's last entries again, from where it was, before going on. So
/// each account's sequence is at most two runs of consecutive entries, the second starting no
/// later than the first ended, together covering `want` exactly.
fn assert_in_publish_order(path: &Path, want: impl Fn(u64) -> Vec<u64>) {
    let mut by_account: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (a, s, _) in effects(path) {
        by_account.entry(a).or_default().push(s);
    }
    assert_eq!(by_account.len() as u64, ACCOUNTS);
    for a in 0..ACCOUNTS {
        let want = want(a);
        let got = &by_account[&format!("acct-{a}")];
        let runs: Vec<&[u64]> = got
            .chunk_by(|x, y| {
                want.iter().position(|w| w == y) == want.iter().position(|w| w == x).map(|p| p + 1)
            })
            .collect();
        assert!(runs.len() <= 2, "acct-{a}: {got:?}");
        let last = runs.last().unwrap();
        assert_eq!(runs[0].first(), want.first(), "acct-{a}: {got:?}");
        assert_eq!(last.last(), want.last(), "acct-{a}: {got:?}");
        if let [first, second] = runs[..] {
            let resumed = want.iter().position(|w| *w == second[0]).unwrap();
            let reached = want
                .iter()
                .position(|w| *w == *first.last().unwrap())
                .unwrap();
            assert!(resumed <= reached + 1, "acct-{a} skipped entries: {got:?}");
        }
    }
}

/// The file whose existence repairs the ledger.
fn repaired_path(effects: &Path) -> PathBuf {
    effects.with_extension("repaired")
}

/// The entries each account applies before the parked one is replayed.
fn before_replay(a: u64) -> Vec<u64> {
    let end = if a == BROKEN.0 { BROKEN.1 } else { ENTRIES };
    (0..end).collect()
}

/// And after: every one.
fn after_replay(_: u64) -> Vec<u64> {
    (0..ENTRIES).collect()
}

/// The summary line of `tchu --json dlq list`, once `n` messages are parked (or 30 s passed).
async fn parked_summary(queue: &str, n: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = common::tchu_output(&["--json", "dlq", "list", queue]).await;
        assert_eq!(code, 0, "{err}");
        let last = out.lines().last().unwrap_or("{}");
        let summary: Value = serde_json::from_str(last).unwrap();
        if summary["total"] == n {
            return summary;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} parked: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn effects_path(queue: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir).unwrap();
    dir.join(format!("{queue}.effects"))
}

/// Runs the scenario with `publish` sending the entries.
async fn two_replicas_one_killed(publish: impl std::future::Future<Output = ()> + Send + 'static) {
    let _turn = TURN.lock().await;
    let queue = unique("it_ordered_replicas");
    let path = effects_path(&queue);
    let first = replica(&queue, &path);
    first.wait_consuming();
    let second = replica(&queue, &path);
    second.wait_consuming();

    // Killed while the entries still arrive.
    let publishing = tokio::spawn(publish);
    let third = (ACCOUNTS * ENTRIES / 3) as usize;
    assert!(wait_until(Duration::from_secs(60), || distinct(&path) >= third).await);
    // The active replica is the one applying entries; the other stands by.
    let active = effects(&path).last().unwrap().2;
    let (mut killed, survivor) = if active == first.pid() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(killed.pid(), active);
    killed.child.0.kill().unwrap();
    let _ = killed.child.0.wait();
    publishing.await.unwrap();

    let want = (ACCOUNTS * ENTRIES - (ENTRIES - BROKEN.1)) as usize;
    assert!(
        wait_until(Duration::from_secs(120), || distinct(&path) >= want).await,
        "{} of {want} entries applied",
        distinct(&path)
    );
    let survivor_pid = survivor.pid();
    let mut by_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for e in effects(&path) {
        *by_pid.entry(e.2).or_default() += 1;
    }
    assert!(
        by_pid.contains_key(&survivor_pid),
        "the standby replica {survivor_pid} took over from {active}: {by_pid:?}"
    );
    assert_in_publish_order(&path, before_replay);

    // The broken entry and the 29 held behind it, in order (the last may still be on their way).
    let summary = parked_summary(&queue, ENTRIES - BROKEN.1).await;
    let held = &summary["held_keys"][0];
    assert_eq!(
        (held["key"].as_str(), held["held"].as_u64()),
        (Some("acct-7"), Some(ENTRIES - BROKEN.1 - 1))
    );
    let head = held["head"].as_str().unwrap().to_owned();
    std::fs::write(repaired_path(&path), "").unwrap();
    let (code, _, err) = common::tchu_output(&["dlq", "replay", &queue, "--id", &head]).await;
    assert_eq!(code, 0, "{err}");
    let want = (ACCOUNTS * ENTRIES) as usize;
    assert!(
        wait_until(Duration::from_secs(60), || distinct(&path) >= want).await,
        "{} of {want} entries applied after the replay",
        distinct(&path)
    );
    assert_in_publish_order(&path, after_replay);
    drop(survivor);
    common::delete_service_queues(&queue).await;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(repaired_path(&path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_by_rust_each_account_applies_in_order_across_a_sigkill() {
    two_replicas_one_killed(async {
        let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
        let entries: Vec<Value> = (0..ENTRIES)
            .flat_map(|seq| {
                (0..ACCOUNTS).map(move |a| {
                    json!({
                        "account": format!("acct-{a}"), "seq": seq, "amount": 10,
                        "fail_first": seq % 7 == 3, "broken": (a, seq) == BROKEN,
                    })
                })
            })
            .collect();
        for e in &entries {
            client.publish_raw(TOPIC, e).await.unwrap();
        }
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_by_python_tchu_tchu_each_account_applies_in_order_across_a_sigkill() {
    two_replicas_one_killed(async {
        let data =
            json!({"accounts": ACCOUNTS, "entries": ENTRIES, "broken": [BROKEN.0, BROKEN.1]});
        let sent = python::publisher_of(&python::V3, "publish_ledger", TOPIC, data).await;
        assert_eq!(sent["ok"], ACCOUNTS * ENTRIES, "{sent}");
    })
    .await;
}
