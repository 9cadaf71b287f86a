//! In order per key: a ledger applies the entries of each account in the order they were
//! published, whatever replica runs them, through retries and dead letters; entries of
//! different accounts run side by side.
//!
//! Run with: `cargo run --example ledger` (RabbitMQ), then publish entries, e.g.
//! `cargo run --example ledger -- publish 20 5` (20 accounts, 5 entries each). Run it twice
//! to see two replicas: one takes the ordered queue, the other stands by and takes over when
//! the first goes (kill it with `kill -9`).
//!
//! An entry with `"fail_first": true` fails its first run and is retried in place (its
//! account's later entries wait); one with `"broken": true` fails until the file named by
//! `TCHU_REPAIRED` exists, and is parked after its retries, holding its account's later
//! entries behind it in the dead-letter queue as `held` (`tchu dlq list ledger`); once the
//! file exists, `tchu dlq replay ledger --id <its id>` runs it, then the held ones, in order.
//! Environment: `TCHU_QUEUE` (default `ledger`), `TCHU_WORK_MS` (longest handler run, default
//! 5), `TCHU_EFFECTS` (a file each applied entry is appended to as `account seq pid`),
//! `TCHU_PREFETCH`.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;
use tchu::prelude::*;

/// One ledger entry of an account.
#[tchu::event(topic = "ledger.entry")]
struct Entry {
    account: String,
    seq: u64,
    amount: i64,
    #[serde(default)]
    fail_first: bool,
    #[serde(default)]
    broken: bool,
}

#[derive(Debug)]
struct LedgerDown(&'static str);

impl std::fmt::Display for LedgerDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for LedgerDown {}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tchu::subscribe(
    "ledger.#",
    ordered(key = "account"),
    retry(max = 3, backoff = "20ms..100ms")
)]
async fn apply(e: Entry, attempt: Attempt) -> Result<(), LedgerDown> {
    // Broken until someone repairs the ledger: the file `TCHU_REPAIRED` names exists.
    let repaired = std::env::var_os("TCHU_REPAIRED").is_some_and(|p| Path::new(&p).exists());
    if e.broken && !repaired {
        return Err(LedgerDown(
            "this entry cannot be applied until the ledger is repaired",
        ));
    }
    if e.fail_first && attempt.0 == 1 {
        return Err(LedgerDown("the ledger was busy"));
    }
    // Runs of different lengths, so that entries of one account would overtake each other
    // if nothing kept them in order.
    let spread = env_u64("TCHU_WORK_MS").unwrap_or(5) + 1;
    let salt: u64 = e.account.bytes().map(u64::from).sum();
    tokio::time::sleep(Duration::from_millis((e.seq * 7 + salt) % spread)).await;
    let line = format!("{} {} {}\n", e.account, e.seq, std::process::id());
    match std::env::var("TCHU_EFFECTS") {
        Ok(path) => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|_| LedgerDown("the effects file cannot be opened"))?;
            file.write_all(line.as_bytes())
                .map_err(|_| LedgerDown("the effects file cannot be written"))?;
        }
        Err(_) => print!("applied {line}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("publish") {
        let accounts: u64 = args.get(2).map_or(Ok(10), |a| a.parse())?;
        let entries: u64 = args.get(3).map_or(Ok(5), |a| a.parse())?;
        let client = tchu::Client::from_env().await?;
        for seq in 0..entries {
            for a in 0..accounts {
                let account = format!("acct-{a}");
                let entry = Entry {
                    account,
                    seq,
                    amount: 10,
                    fail_first: seq % 7 == 3,
                    broken: false,
                };
                client.publish(&entry).await?;
            }
        }
        client.close().await;
        return Ok(());
    }
    tchu::init_tracing();
    let queue = std::env::var("TCHU_QUEUE").unwrap_or_else(|_| "ledger".into());
    let prefetch = env_u64("TCHU_PREFETCH").unwrap_or(16) as u16;
    let client = tchu::Client::from_env().await?;
    tchu::Service::new(queue)
        .prefetch(prefetch)
        .run(&client)
        .await?;
    Ok(())
}
