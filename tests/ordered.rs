//! In order per key (`ordered(key = ...)`): 50 accounts × 40 entries each, with handler runs of
//! scattered lengths, first runs that fail (retried in place) and two entries that are parked:
//! per account, the effects happen in publish order, the entries after a parked one are parked
//! behind it as `held`, in order, and releasing the key (the parked entry replayed, or
//! skipped) runs the held ones in order before the key's newer entries. On the in-memory
//! broker and on RabbitMQ; two replicas with one killed by SIGKILL mid-run are in
//! `tests/ordered_replicas.rs`.
#![cfg(feature = "service")]

mod common;

use common::{channel, drain_at_least, header, unique, wait_until};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tchu::prelude::*;

/// The tests on RabbitMQ take turns: their services bind the same topic, and would each
/// receive the other's entries.
static ON_RABBITMQ: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ACCOUNTS: u64 = 50;
const ENTRIES: u64 = 40;
/// Entries that fail until the ledger is fixed: account 7's 10th (replayed once fixed) and
/// account 9's 20th (skipped).
const REPLAYED: (u64, u64) = (7, 10);
const SKIPPED: (u64, u64) = (9, 20);

/// The effects, in the order they happened, and whether the broken entries work yet.
#[derive(Default)]
struct Ledger {
    effects: Mutex<Vec<(String, u64)>>,
    fixed: AtomicBool,
}

impl Ledger {
    fn by_account(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (a, s) in self.effects.lock().unwrap().iter() {
            out.entry(a.clone()).or_default().push(*s);
        }
        out
    }
    fn len(&self) -> usize {
        self.effects.lock().unwrap().len()
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

    /// First runs of every seventh entry fail; the broken entries fail until fixed; runs take
    /// 0 to 4 ms, scattered, so that nothing but the lanes keeps an account's entries in order.
    #[tchu::subscribe(
        "ord.#",
        ordered(key = "account"),
        retry(max = 3, backoff = "5ms..20ms")
    )]
    async fn apply(e: Entry, attempt: Attempt, ledger: State<Ledger>) -> Result<(), Busy> {
        let broken = [REPLAYED, SKIPPED]
            .iter()
            .any(|(a, s)| e.account == format!("acct-{a}") && e.seq == *s);
        if broken && !ledger.fixed.load(Ordering::SeqCst) {
            return Err(Busy);
        }
        if e.seq % 7 == 3 && attempt.0 == 1 {
            return Err(Busy);
        }
        let salt: u64 = e.account.bytes().map(u64::from).sum();
        tokio::time::sleep(Duration::from_millis((e.seq * 7 + salt) % 5)).await;
        ledger.effects.lock().unwrap().push((e.account, e.seq));
        Ok(())
    }
}

fn entry(a: u64, seq: u64) -> ledger::Entry {
    ledger::Entry {
        account: format!("acct-{a}"),
        seq,
    }
}

/// Publishes entries in one confirmed batch: they arrive faster than the handler runs.
async fn publish(client: &tchu::Client, entries: &[ledger::Entry]) {
    for r in client.publish_all(entries).await {
        r.unwrap();
    }
}

/// Every account's entries, round-robin over the accounts (entry 0 of each, then entry 1...).
fn all_entries() -> Vec<ledger::Entry> {
    (0..ENTRIES)
        .flat_map(|seq| (0..ACCOUNTS).map(move |a| entry(a, seq)))
        .collect()
}

/// Each account's effects in publish order: for the two broken accounts, up to their broken
/// entry (`released: false`), or, released, account 7's 0..42 and account 9's without its 20.
fn assert_in_order(ledger: &Ledger, released: bool) {
    let by_account = ledger.by_account();
    assert_eq!(by_account.len() as u64, ACCOUNTS);
    for a in 0..ACCOUNTS {
        let got = &by_account[&format!("acct-{a}")];
        let want: Vec<u64> = match (a, released) {
            (a, false) if a == REPLAYED.0 => (0..REPLAYED.1).collect(),
            (a, false) if a == SKIPPED.0 => (0..SKIPPED.1).collect(),
            (a, true) if a == REPLAYED.0 => (0..ENTRIES + 5).collect(),
            (a, true) if a == SKIPPED.0 => (0..ENTRIES).filter(|s| *s != SKIPPED.1).collect(),
            _ => (0..ENTRIES).collect(),
        };
        assert_eq!(got, &want, "the effects of acct-{a}");
    }
}

/// The effects expected before the release: all but the broken accounts' later entries.
fn before_release() -> usize {
    (ACCOUNTS * ENTRIES - (ENTRIES - REPLAYED.1) - (ENTRIES - SKIPPED.1)) as usize
}

/// The effects expected once released, with account 7's 5 later entries.
fn after_release() -> usize {
    (ACCOUNTS * ENTRIES + 5 - 1) as usize
}

async fn service(client: &tchu::Client, queue: &str, ledger: Arc<Ledger>) -> tchu::ServiceHandle {
    tchu::Service::new(queue)
        .handlers_in(concat!(module_path!(), "::ledger"))
        .prefetch(32)
        .state_arc(ledger)
        .start(client)
        .await
        .unwrap()
}

/// A parked copy as the test reads it.
#[derive(Debug, Clone)]
struct Parked {
    kind: String,
    handler: String,
    key: String,
    seq: u64,
    id: String,
    held_by: Option<String>,
}

fn parked(headers: impl Fn(&str) -> Option<String>, body: &[u8]) -> Parked {
    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
    let payload: serde_json::Value = serde_json::from_str(body[0][0].as_str().unwrap()).unwrap();
    Parked {
        kind: headers("x-tchu-error-kind").unwrap(),
        handler: headers("x-tchu-handler").unwrap_or_default(),
        key: headers("x-tchu-order-key").unwrap_or_default(),
        seq: payload["seq"].as_u64().unwrap_or(0),
        id: headers("id").unwrap_or_default(),
        held_by: headers("x-tchu-held-by"),
    }
}

fn from_wire(m: &tchu::wire::WireMessage) -> Parked {
    let h = |n: &str| m.headers.get(n).and_then(|v| v.as_str()).map(str::to_owned);
    parked(h, &m.body)
}

fn from_lapin(m: &lapin::message::BasicGetMessage) -> Parked {
    parked(|n| header(m, n), &m.delivery.data)
}

/// The broken entries parked as `failed`, then the later entries of their accounts as `held`
/// behind them, in order, each naming the one it waits behind; and one entry without the key,
/// parked as `rejected` holding nothing. Returns the two heads.
fn assert_held(parked: &[Parked]) -> (Parked, Parked) {
    let keyless: Vec<_> = parked.iter().filter(|p| p.key.is_empty()).collect();
    assert_eq!(keyless.len(), 1, "{keyless:?}");
    assert_eq!(keyless[0].kind, "rejected");
    // Account 7 also holds the two entries published while it was held.
    let heads = [(REPLAYED, ENTRIES + 2), (SKIPPED, ENTRIES)].map(|((a, broken), end)| {
        let account = format!("acct-{a}");
        let of: Vec<&Parked> = parked.iter().filter(|p| p.key == account).collect();
        let head = of[0].clone();
        assert_eq!((head.kind.as_str(), head.seq), ("failed", broken), "{of:?}");
        assert_eq!(head.held_by, None);
        let seqs: Vec<u64> = of[1..].iter().map(|p| p.seq).collect();
        assert_eq!(seqs, ((broken + 1)..end).collect::<Vec<_>>(), "{account}");
        for p in &of[1..] {
            assert_eq!(p.kind, "held");
            assert_eq!(p.held_by.as_deref(), Some(head.id.as_str()));
        }
        head
    });
    let [replayed, skipped] = heads;
    (replayed, skipped)
}

fn release(head: &Parked, skip: bool) -> tchu::amqp::Release {
    tchu::amqp::Release {
        handler: head.handler.clone(),
        key: head.key.clone(),
        head: head.id.clone(),
        skip,
    }
}

/// Account 7's entries 40 and 41: published while it is held, they are held behind it.
fn while_held() -> Vec<ledger::Entry> {
    vec![entry(REPLAYED.0, ENTRIES), entry(REPLAYED.0, ENTRIES + 1)]
}

/// Account 7's entry 42: published once the others were seen held.
fn late_held() -> Vec<ledger::Entry> {
    vec![entry(REPLAYED.0, ENTRIES + 2)]
}

/// Account 7's entries 43 and 44: published after the release was asked for.
fn after_asked() -> Vec<ledger::Entry> {
    vec![
        entry(REPLAYED.0, ENTRIES + 3),
        entry(REPLAYED.0, ENTRIES + 4),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_keys_run_in_publish_order_and_parked_entries_hold_theirs_until_released() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tchu_runtime=info")
        .with_test_writer()
        .try_init();
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let ledger = Arc::new(Ledger::default());
    let svc = service(&client, "mem_ledger", ledger.clone()).await;
    assert_eq!(broker.bindings("mem_ledger.ordered"), ["ord.#"]);
    assert_eq!(broker.bindings("mem_ledger"), ["mem_ledger"]);

    publish(&client, &all_entries()).await;
    // Without the key: parked as `rejected`, holding nothing.
    client
        .publish_raw("ord.entry", &json!({"seq": 1}))
        .await
        .unwrap();
    publish(&client, &while_held()).await;
    let want = before_release();
    assert!(wait_until(Duration::from_secs(30), || ledger.len() >= want).await);
    broker.settled().await;
    assert_in_order(&ledger, false);
    let dlq = broker.peek("mem_ledger.dlq");
    let (replayed, skipped) = assert_held(&dlq.iter().map(from_wire).collect::<Vec<_>>());
    // The parked entry delivered again (a publisher's duplicate): acknowledged, not run, and
    // its key stays held.
    let head = dlq.iter().find(|m| from_wire(m).id == replayed.id).unwrap();
    let mut again = head.clone();
    again.headers.retain(|k, _| !k.starts_with("x-"));
    again.routing_key = "ord.entry".into();
    broker.send(&again).unwrap();
    publish(&client, &late_held()).await;
    broker.settled().await;
    let dlq_again = broker.peek("mem_ledger.dlq");
    assert_eq!(
        dlq_again.len(),
        dlq.len() + 1,
        "the new entry held, the duplicate not parked"
    );
    assert_eq!(from_wire(dlq_again.last().unwrap()).kind, "held");
    assert_in_order(&ledger, false);

    ledger.fixed.store(true, Ordering::SeqCst);
    tchu::release_held(&client, "mem_ledger", &release(&replayed, false))
        .await
        .unwrap();
    tchu::release_held(&client, "mem_ledger", &release(&skipped, true))
        .await
        .unwrap();
    publish(&client, &after_asked()).await;
    let want = after_release();
    assert!(
        wait_until(Duration::from_secs(30), || ledger.len() >= want).await,
        "{} of {want} effects: {:?} {:?}",
        ledger.len(),
        ledger.by_account()["acct-7"],
        ledger.by_account()["acct-9"]
    );
    broker.settled().await;
    svc.shutdown().await.unwrap();
    assert_in_order(&ledger, true);
    let left: Vec<Parked> = broker
        .take("mem_ledger.dlq")
        .iter()
        .map(from_wire)
        .collect();
    assert_eq!(left.len(), 1, "only the keyless entry stays: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_keys_run_in_publish_order_and_parked_entries_hold_theirs_until_released() {
    let _turn = ON_RABBITMQ.lock().await;
    let queue = unique("it_ordered");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let ledger = Arc::new(Ledger::default());
    let svc = service(&client, &queue, ledger.clone()).await;
    assert_eq!(common::bindings_of(&format!("{queue}.ordered")), ["ord.#"]);

    publish(&client, &all_entries()).await;
    client
        .publish_raw("ord.entry", &json!({"seq": 1}))
        .await
        .unwrap();
    publish(&client, &while_held()).await;
    let want = before_release();
    assert!(
        wait_until(Duration::from_secs(60), || ledger.len() >= want).await,
        "{} of {want} effects",
        ledger.len()
    );
    let dlq = format!("{queue}.dlq");
    let parked_n = (ENTRIES - REPLAYED.1 + 2 + ENTRIES - SKIPPED.1 + 1) as usize;
    let all = peek(&dlq, parked_n).await;
    let (replayed, skipped) = assert_held(&all);
    publish(&client, &late_held()).await;

    ledger.fixed.store(true, Ordering::SeqCst);
    tchu::release_held(&client, &queue, &release(&replayed, false))
        .await
        .unwrap();
    tchu::release_held(&client, &queue, &release(&skipped, true))
        .await
        .unwrap();
    publish(&client, &after_asked()).await;
    let want = after_release();
    assert!(
        wait_until(Duration::from_secs(60), || ledger.len() >= want).await,
        "{} of {want} effects",
        ledger.len()
    );
    let (_conn, ch) = channel().await;
    let left = drain_at_least(&ch, &dlq, 1, Duration::from_secs(5)).await;
    svc.shutdown().await.unwrap();
    assert_in_order(&ledger, true);
    assert_eq!(left.len(), 1, "only the keyless entry stays");
    common::delete_service_queues(&queue).await;
}

/// The first `n` messages of a queue (waiting up to 10 s for them), left in it: taken without
/// acknowledgement on a channel that then closes.
async fn peek(queue: &str, n: usize) -> Vec<Parked> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (conn, ch) = channel().await;
        let mut got = Vec::new();
        let get = lapin::options::BasicGetOptions { no_ack: false };
        while let Some(m) = ch.basic_get(queue.into(), get).await.unwrap() {
            got.push(from_lapin(&m));
        }
        let _ = conn.close(200, "peeked".into()).await;
        if got.len() >= n || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_lists_held_keys_refuses_a_held_entry_and_releases_by_replay_or_skip() {
    let _turn = ON_RABBITMQ.lock().await;
    let queue = unique("it_ordered_cli");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let ledger = Arc::new(Ledger::default());
    let svc = service(&client, &queue, ledger.clone()).await;
    // Account 7 breaks at 10, account 9 at 20: each holds two entries behind.
    let entries: Vec<_> = (8..13)
        .map(|s| entry(REPLAYED.0, s))
        .chain((18..23).map(|s| entry(SKIPPED.0, s)))
        .collect();
    publish(&client, &entries).await;
    let dlq = format!("{queue}.dlq");
    let parked = peek(&dlq, 6).await;
    assert_eq!(parked.len(), 6, "{parked:?}");
    let id_of = |account: u64, seq: u64| {
        let p = parked
            .iter()
            .find(|p| p.key == format!("acct-{account}") && p.seq == seq);
        p.unwrap().id.clone()
    };
    let (head7, head9) = (id_of(REPLAYED.0, 10), id_of(SKIPPED.0, 20));

    let (code, out, _) = common::tchu_output(&["--json", "dlq", "list", &queue]).await;
    assert_eq!(code, 0);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let held = summary["held_keys"].as_array().unwrap();
    assert_eq!(held.len(), 2, "{summary}");
    assert_eq!(held[0]["key"], "acct-7");
    assert_eq!(held[0]["head"], head7.as_str());
    assert_eq!(held[0]["head_kind"], "failed");
    assert_eq!(held[0]["held"], 2);
    assert_eq!(held[1]["key"], "acct-9");
    assert_eq!(held[1]["head"], head9.as_str());
    let (code, out, _) = common::tchu_output(&["dlq", "list", &queue]).await;
    assert_eq!(code, 0);
    assert!(out.contains("2 held key(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "key `acct-7` of ordered::ledger::apply: behind {head7} (failed), 2 held"
        )),
        "{out}"
    );

    // A held entry alone would run before the one it waits behind.
    let (code, _, err) =
        common::tchu_output(&["dlq", "replay", &queue, "--id", &id_of(REPLAYED.0, 11)]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("held behind {head7}")), "{err}");
    assert_eq!(peek(&dlq, 6).await.len(), 6, "nothing moved");

    ledger.fixed.store(true, Ordering::SeqCst);
    let (code, out, err) = common::tchu_output(&["dlq", "replay", &queue, "--id", &head7]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("release 1 held key(s)"), "{out}");
    let (code, out, err) = common::tchu_output(&["dlq", "skip", &queue, "--id", &head9]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("drop message {head9}")), "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || ledger.len() >= 9).await,
        "{:?}",
        ledger.by_account()
    );
    let (_conn, ch) = channel().await;
    let left = drain_at_least(&ch, &dlq, 0, Duration::from_millis(200)).await;
    svc.shutdown().await.unwrap();
    let by_account = ledger.by_account();
    assert_eq!(by_account["acct-7"], [8, 9, 10, 11, 12]);
    assert_eq!(by_account["acct-9"], [18, 19, 21, 22]);
    assert!(left.is_empty(), "the dead-letter queue is empty");
    common::delete_service_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_time_handler_is_ordered_by_its_key_too() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let ledger = Arc::new(Ledger::default());
    let effects = ledger.clone();
    let handler = tchu::Handler::on_pattern::<ledger::Entry>("ord.#", move |e| {
        let effects = effects.clone();
        async move {
            let salt: u64 = e.account.bytes().map(u64::from).sum();
            tokio::time::sleep(Duration::from_millis((e.seq * 7 + salt) % 5)).await;
            effects.effects.lock().unwrap().push((e.account, e.seq));
        }
    })
    .with_name("runtime.apply")
    .with_ordered("account");
    assert_eq!(handler.ordered(), Some("account"));
    let svc = tchu::Service::new("mem_runtime_ledger")
        .handlers_in(concat!(module_path!(), "::none"))
        .prefetch(32)
        .handler(handler)
        .start(&client)
        .await
        .unwrap();
    let entries: Vec<_> = (0..30)
        .flat_map(|seq| (0..10).map(move |a| entry(a, seq)))
        .collect();
    publish(&client, &entries).await;
    assert!(wait_until(Duration::from_secs(30), || ledger.len() >= 300).await);
    svc.shutdown().await.unwrap();
    for (account, seqs) in ledger.by_account() {
        assert_eq!(seqs, (0..30).collect::<Vec<_>>(), "{account}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_dead_letter_holds_no_key() {
    let _turn = ON_RABBITMQ.lock().await;
    let queue = unique("it_ordered_forged");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    // The service declares its queues, then stops: its successor reads the held keys.
    let ledger = Arc::new(Ledger::default());
    service(&client, &queue, ledger.clone())
        .await
        .shutdown()
        .await
        .unwrap();
    // A dead letter of account 3 written by a stranger, with every header tchu would write
    // but no signature.
    let (_conn, ch) = channel().await;
    let mut headers = lapin::types::FieldTable::default();
    let text = |s: &str| lapin::types::AMQPValue::LongString(s.into());
    headers.insert("x-tchu-queue".into(), text(&queue));
    headers.insert("x-tchu-handler".into(), text("ordered::ledger::apply"));
    headers.insert("x-tchu-order-key".into(), text("acct-3"));
    headers.insert("x-tchu-error-kind".into(), text("failed"));
    headers.insert(
        "x-tchu-held-seq".into(),
        lapin::types::AMQPValue::LongLongInt(1),
    );
    let props = lapin::BasicProperties::default().with_headers(headers);
    let dlq = format!("{queue}.dlq");
    ch.basic_publish(
        "".into(),
        dlq.as_str().into(),
        Default::default(),
        b"{}",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let svc = service(&client, &queue, ledger.clone()).await;
    publish(&client, &[entry(3, 0), entry(3, 1)]).await;
    assert!(
        wait_until(Duration::from_secs(20), || ledger.len() >= 2).await,
        "account 3 ran: {:?}",
        ledger.by_account()
    );
    svc.shutdown().await.unwrap();
    assert_eq!(ledger.by_account()["acct-3"], [0, 1]);
    common::delete_service_queues(&queue).await;
}
