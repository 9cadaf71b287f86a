//! In order per key (`ordered(key = ...)`): 50 accounts × 40 entries each, with handler runs of
//! scattered lengths, first runs that fail (retried in place) and one entry that is parked:
//! per account, the effects happen in publish order, and the entries after the parked one are
//! parked behind it as `held`, in order. On the in-memory broker and on RabbitMQ; two replicas
//! with one killed by SIGKILL mid-run are in `tests/ordered_replicas.rs`.
#![cfg(feature = "service")]

mod common;

use common::{channel, drain_at_least, header, unique, wait_until};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tchu::prelude::*;

const ACCOUNTS: u64 = 50;
const ENTRIES: u64 = 40;
/// The entry that always fails: account 7, entry 10.
const BROKEN: (u64, u64) = (7, 10);

/// The effects, in the order they happened.
#[derive(Default)]
struct Effects(Mutex<Vec<(String, u64)>>);

impl Effects {
    fn by_account(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (a, s) in self.0.lock().unwrap().iter() {
            out.entry(a.clone()).or_default().push(*s);
        }
        out
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[derive(Debug)]
struct Busy;
impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("busy")
    }
}
impl std::error::Error for Busy {}

mod ledger {
    use super::*;

    #[tchu::event(topic = "ord.entry")]
    pub struct Entry {
        pub account: String,
        pub seq: u64,
    }

    /// First runs of every seventh entry fail; the broken entry always does; runs take
    /// 0 to 4 ms, scattered, so that nothing but the lanes keeps an account's entries in order.
    #[tchu::subscribe(
        "ord.#",
        ordered(key = "account"),
        retry(max = 3, backoff = "5ms..20ms")
    )]
    async fn apply(e: Entry, attempt: Attempt, effects: State<Effects>) -> Result<(), Busy> {
        if e.account == format!("acct-{}", BROKEN.0) && e.seq == BROKEN.1 {
            return Err(Busy);
        }
        if e.seq % 7 == 3 && attempt.0 == 1 {
            return Err(Busy);
        }
        let salt: u64 = e.account.bytes().map(u64::from).sum();
        tokio::time::sleep(Duration::from_millis((e.seq * 7 + salt) % 5)).await;
        effects.0.0.lock().unwrap().push((e.account, e.seq));
        Ok(())
    }
}

fn entry(a: u64, seq: u64) -> ledger::Entry {
    ledger::Entry {
        account: format!("acct-{a}"),
        seq,
    }
}

/// Publishes the entries round-robin over the accounts (entry 0 of each, then entry 1, ...),
/// in one confirmed batch: they arrive faster than the handler runs.
async fn publish_all(client: &tchu::Client) {
    let entries: Vec<_> = (0..ENTRIES)
        .flat_map(|seq| (0..ACCOUNTS).map(move |a| entry(a, seq)))
        .collect();
    for r in client.publish_all(&entries).await {
        r.unwrap();
    }
}

/// Every account's effects in publish order; the broken account's stop before its broken entry.
fn assert_in_order(effects: &Effects) {
    let by_account = effects.by_account();
    assert_eq!(by_account.len() as u64, ACCOUNTS);
    for a in 0..ACCOUNTS {
        let got = &by_account[&format!("acct-{a}")];
        let end = if a == BROKEN.0 { BROKEN.1 } else { ENTRIES };
        let want: Vec<u64> = (0..end).collect();
        assert_eq!(got, &want, "the effects of acct-{a}");
    }
}

async fn service(client: &tchu::Client, queue: &str, effects: Arc<Effects>) -> tchu::ServiceHandle {
    tchu::Service::new(queue)
        .handlers_in(concat!(module_path!(), "::ledger"))
        .prefetch(32)
        .state_arc(effects)
        .start(client)
        .await
        .unwrap()
}

/// What a parked copy says: (kind, account, seq, held-by).
fn parked_of(m: &tchu::wire::WireMessage) -> (String, String, u64, Option<String>) {
    let h = |n: &str| m.headers.get(n).and_then(|v| v.as_str()).map(str::to_owned);
    let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    let payload = serde_json::from_str::<serde_json::Value>(body[0][0].as_str().unwrap()).unwrap();
    (
        h("x-tchu-error-kind").unwrap(),
        h("x-tchu-order-key").unwrap(),
        payload["seq"].as_u64().unwrap(),
        h("x-tchu-held-by"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_each_key_runs_in_publish_order_and_a_parked_entry_holds_the_rest() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let effects = Arc::new(Effects::default());
    let svc = service(&client, "mem_ledger", effects.clone()).await;
    assert_eq!(broker.bindings("mem_ledger.ordered"), ["ord.#"]);
    assert_eq!(broker.bindings("mem_ledger"), ["mem_ledger"]);

    publish_all(&client).await;
    // Without the key: parked as `rejected`, holding nothing.
    client
        .publish_raw("ord.entry", &json!({"seq": 1}))
        .await
        .unwrap();
    let want = (ACCOUNTS * ENTRIES - (ENTRIES - BROKEN.1)) as usize;
    assert!(
        wait_until(Duration::from_secs(30), || effects.len() >= want).await,
        "{} of {want} effects",
        effects.len()
    );
    broker.settled().await;
    svc.shutdown().await.unwrap();
    assert_in_order(&effects);

    let parked: Vec<_> = broker
        .take("mem_ledger.dlq")
        .iter()
        .map(parked_of_or_keyless)
        .collect();
    assert_eq!(parked.len() as u64, ENTRIES - BROKEN.1 + 1, "{parked:?}");
    assert_eq!(
        parked.iter().filter(|p| p.0 == "rejected").count(),
        1,
        "{parked:?}"
    );
    let held: Vec<_> = parked.into_iter().filter(|p| p.0 != "rejected").collect();
    assert_sequence(&held);
}

/// A parked copy, or `("rejected", "", 0, None)` for one without an order key.
fn parked_of_or_keyless(m: &tchu::wire::WireMessage) -> (String, String, u64, Option<String>) {
    if m.headers.contains_key("x-tchu-order-key") {
        return parked_of(m);
    }
    let kind = m.headers["x-tchu-error-kind"].as_str().unwrap().to_owned();
    (kind, String::new(), 0, None)
}

/// The broken entry parked as `failed`, then the later entries of its account as `held`
/// behind it, in order.
fn assert_sequence(parked: &[(String, String, u64, Option<String>)]) {
    let account = format!("acct-{}", BROKEN.0);
    let (kind, key, seq, by) = &parked[0];
    assert_eq!(
        (kind.as_str(), key.as_str(), *seq, by),
        ("failed", account.as_str(), BROKEN.1, &None)
    );
    let seqs: Vec<u64> = parked[1..].iter().map(|p| p.2).collect();
    assert_eq!(seqs, ((BROKEN.1 + 1)..ENTRIES).collect::<Vec<_>>());
    for (kind, key, _, by) in &parked[1..] {
        assert_eq!((kind.as_str(), key.as_str()), ("held", account.as_str()));
        assert!(by.is_some(), "a held entry names the one it waits behind");
    }
    let heads: std::collections::BTreeSet<_> = parked[1..].iter().map(|p| p.3.clone()).collect();
    assert_eq!(heads.len(), 1, "all wait behind the same entry: {heads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_each_key_runs_in_publish_order_and_a_parked_entry_holds_the_rest() {
    let queue = unique("it_ordered");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let effects = Arc::new(Effects::default());
    let svc = service(&client, &queue, effects.clone()).await;
    assert_eq!(common::bindings_of(&format!("{queue}.ordered")), ["ord.#"]);

    publish_all(&client).await;
    let want = (ACCOUNTS * ENTRIES - (ENTRIES - BROKEN.1)) as usize;
    assert!(
        wait_until(Duration::from_secs(60), || effects.len() >= want).await,
        "{} of {want} effects",
        effects.len()
    );
    let (_conn, ch) = channel().await;
    let dlq = format!("{queue}.dlq");
    let parked = drain_at_least(
        &ch,
        &dlq,
        (ENTRIES - BROKEN.1) as usize,
        Duration::from_secs(10),
    )
    .await;
    svc.shutdown().await.unwrap();
    assert_in_order(&effects);
    let parked: Vec<_> = parked
        .iter()
        .map(|m| {
            let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
            let payload: serde_json::Value =
                serde_json::from_str(body[0][0].as_str().unwrap()).unwrap();
            (
                header(m, "x-tchu-error-kind").unwrap(),
                header(m, "x-tchu-order-key").unwrap(),
                payload["seq"].as_u64().unwrap(),
                header(m, "x-tchu-held-by"),
            )
        })
        .collect();
    assert_sequence(&parked);
    common::delete_service_queues(&queue).await;
}
