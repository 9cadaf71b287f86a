//! The inbox on real servers: a `dedup` handler's effect happens once per key, with Redis and
//! with PostgreSQL, however many copies the broker delivers; a failed attempt releases its key
//! so the retry runs; a responder's duplicate request gets the recorded answer; two replicas
//! receiving the same key at once run it once.
#![cfg(all(feature = "service", feature = "postgres", feature = "redis"))]

mod common;

use futures_lite::StreamExt;
use lapin::options::BasicPublishOptions;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tchu::sqlx::{self, PgPool};
use tchu::{Inbox, Tx};

#[tchu::event(topic = "inbox.test.charge")]
#[derive(Debug)]
struct Charge {
    order_id: String,
    cents: i64,
}

#[tchu::payload]
#[derive(Debug, PartialEq)]
struct Quote {
    serial: u32,
}

#[tchu::event(topic = "rpc.inbox.test.quote", response = Quote)]
struct AskQuote {
    order_id: String,
}

/// What handlers did, by order id.
#[derive(Default)]
struct Effects {
    runs: Mutex<HashMap<String, Vec<u32>>>,
}

impl Effects {
    fn record(&self, order_id: &str, attempt: u32) {
        let mut runs = self.runs.lock().unwrap();
        runs.entry(order_id.to_owned()).or_default().push(attempt);
    }

    fn of(&self, order_id: &str) -> Vec<u32> {
        self.runs
            .lock()
            .unwrap()
            .get(order_id)
            .cloned()
            .unwrap_or_default()
    }
}

mod redis_once {
    use super::*;
    use tchu::{Attempt, State};

    #[tchu::subscribe(dedup)]
    async fn charge(c: Charge, a: Attempt, effects: State<Effects>) {
        tokio::time::sleep(Duration::from_millis(30)).await;
        effects.record(&c.order_id, a.0);
    }
}

mod redis_flaky {
    use super::*;
    use tchu::{Attempt, State};

    #[tchu::subscribe(dedup(key = "order_id"), retry(max = 3, backoff = "100ms"))]
    async fn charge(c: Charge, a: Attempt, effects: State<Effects>) -> tchu::Result<()> {
        if a.0 == 1 {
            return Err(tchu::Error::handler(std::io::Error::other(
                "card network down",
            )));
        }
        effects.record(&c.order_id, a.0);
        Ok(())
    }
}

mod quote {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tchu::State;

    #[tchu::subscribe(dedup(key = "order_id"))]
    async fn quote(_q: AskQuote, serial: State<AtomicU32>) -> Quote {
        Quote {
            serial: serial.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }
}

mod pg_once {
    use super::*;

    #[tchu::subscribe(dedup(key = "order_id"))]
    async fn charge(c: Charge, tx: Tx) -> tchu::Result<()> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        sqlx::query("INSERT INTO effects (order_id, attempt) VALUES ($1, 1)")
            .bind(&c.order_id)
            .execute(&mut *tx.lock().await?)
            .await?;
        Ok(())
    }
}

mod pg_counted {
    use super::*;
    use tchu::State;

    #[tchu::subscribe(dedup(key = "order_id"))]
    async fn charge(c: Charge, effects: State<Effects>) {
        effects.record(&c.order_id, 1);
    }
}

mod missing_key {
    use tchu::Message;

    #[tchu::subscribe("inbox.test.charge", dedup(key = "order.id"))]
    async fn charge(_m: Message) {
        unreachable!("no message has the key");
    }
}

mod pg_flaky {
    use super::*;
    use tchu::Attempt;

    /// Writes its effect, then fails the first attempt: the write must roll back with the
    /// claim, and the retry must run.
    #[tchu::subscribe(dedup, retry(max = 3, backoff = "100ms"))]
    async fn charge(c: Charge, a: Attempt, tx: Tx) -> tchu::Result<()> {
        sqlx::query("INSERT INTO effects (order_id, attempt) VALUES ($1, $2)")
            .bind(&c.order_id)
            .bind(i32::try_from(a.0).unwrap())
            .execute(&mut *tx.lock().await?)
            .await?;
        if a.0 == 1 {
            return Err(tchu::Error::handler(std::io::Error::other("declined")));
        }
        Ok(())
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A pool on a schema of the test's own, with its effects table.
async fn pg_pool() -> PgPool {
    let (_, pool) = common::scoped_database("inbox").await;
    sqlx::query("CREATE TABLE effects (order_id text NOT NULL, attempt int NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn effects_in(pool: &PgPool, order_id: &str) -> Vec<i32> {
    sqlx::query_as::<_, (i32,)>("SELECT attempt FROM effects WHERE order_id = $1 ORDER BY attempt")
        .bind(order_id)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(a,)| a)
        .collect()
}

/// Publishes `charge` once with the client, catches the message on a queue of the test's own,
/// and publishes that exact message `copies` more times by hand: same id, same bytes.
async fn publish_with_copies(client: &tchu::Client, charge: &Charge, copies: usize) {
    let (_conn, ch) = common::channel().await;
    let (_q, mut caught) = common::temp_queue(&ch, Some("inbox.test.charge")).await;
    client.publish(charge).await.unwrap();
    let original = loop {
        let d = tokio::time::timeout(Duration::from_secs(10), caught.next())
            .await
            .expect("the published event did not arrive")
            .unwrap()
            .unwrap();
        if String::from_utf8_lossy(&d.data).contains(&charge.order_id) {
            break d;
        }
    };
    for _ in 0..copies {
        ch.basic_publish(
            "tchu_events".into(),
            "inbox.test.charge".into(),
            BasicPublishOptions::default(),
            &original.data,
            original.properties.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

/// Waits until `probe` gives `want`, for up to 20 s; returns the last value.
async fn settle<T: PartialEq + std::fmt::Debug, F: std::future::Future<Output = T>>(
    want: &T,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = probe().await;
        if &got == want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Shuts the service down (draining and acknowledging what it holds) and checks no copy of
/// `order_id` was left in its queue or parked: every copy was settled. (Other tests' charges
/// reach the queue too: it is bound to the same topic.)
async fn shut_down_settled(service: tchu::ServiceHandle, queue: &str, order_id: &str) {
    service.shutdown().await.unwrap();
    let (_conn, ch) = common::channel().await;
    for q in [queue.to_owned(), format!("{queue}.dlq")] {
        let ours = common::drain(&ch, &q)
            .await
            .into_iter()
            .filter(|m| String::from_utf8_lossy(&m.delivery.data).contains(order_id))
            .count();
        assert_eq!(ours, 0, "{ours} copies were left in {q}");
    }
    common::delete_service_queues(queue).await;
}

fn order() -> Charge {
    Charge {
        order_id: common::unique("ord"),
        cents: 500,
    }
}

#[tokio::test]
async fn redis_the_same_message_six_times_has_one_effect() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("inbox_redis_once");
    let effects = std::sync::Arc::new(Effects::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::redis_once"))
        .state_arc(effects.clone())
        .inbox(Inbox::redis(&redis_url()).unwrap())
        .start(&client)
        .await
        .unwrap();
    let charge = order();
    publish_with_copies(&client, &charge, 5).await;
    let runs = settle(&vec![1], || async { effects.of(&charge.order_id) }).await;
    assert_eq!(runs, vec![1], "the handler ran once, on its first attempt");
    tokio::time::sleep(Duration::from_millis(500)).await;
    shut_down_settled(service, &queue, &charge.order_id).await;
    assert_eq!(
        effects.of(&charge.order_id),
        vec![1],
        "no copy ran it again"
    );
}

#[tokio::test]
async fn postgres_the_same_message_six_times_has_one_effect() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let pool = pg_pool().await;
    let queue = common::unique("inbox_pg_once");
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::pg_once"))
        .inbox(Inbox::postgres(pool.clone()))
        .start(&client)
        .await
        .unwrap();
    let charge = order();
    publish_with_copies(&client, &charge, 5).await;
    let runs = settle(&vec![1], || effects_in(&pool, &charge.order_id)).await;
    assert_eq!(runs, vec![1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    shut_down_settled(service, &queue, &charge.order_id).await;
    assert_eq!(effects_in(&pool, &charge.order_id).await, vec![1]);
    let (rows,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tchu_inbox WHERE queue = $1 AND key = $2")
            .bind(&queue)
            .bind(&charge.order_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 1, "one inbox row for the key");
}

#[tokio::test]
async fn postgres_a_payload_key_merges_different_messages() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let pool = pg_pool().await;
    let queue = common::unique("inbox_pg_key");
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::pg_once"))
        .inbox(Inbox::postgres(pool.clone()))
        .start(&client)
        .await
        .unwrap();
    let charge = order();
    // Three messages with their own ids, one business key.
    for _ in 0..3 {
        client.publish(&charge).await.unwrap();
    }
    let runs = settle(&vec![1], || effects_in(&pool, &charge.order_id)).await;
    assert_eq!(runs, vec![1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    shut_down_settled(service, &queue, &charge.order_id).await;
    assert_eq!(effects_in(&pool, &charge.order_id).await, vec![1]);
}

#[tokio::test]
async fn postgres_a_hostile_key_still_deduplicates_and_parks_nothing() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let pool = pg_pool().await;
    let queue = common::unique("inbox_pg_hostile");
    let effects = std::sync::Arc::new(Effects::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::pg_counted"))
        .state_arc(effects.clone())
        .inbox(Inbox::postgres(pool.clone()))
        .start(&client)
        .await
        .unwrap();
    // Far over PostgreSQL's index row limit, with a NUL it refuses in text.
    let charge = Charge {
        order_id: format!("{}\u{0}{}", common::unique("ord"), "k".repeat(100_000)),
        cents: 1,
    };
    for _ in 0..3 {
        client.publish(&charge).await.unwrap();
    }
    let runs = settle(&vec![1], || async { effects.of(&charge.order_id) }).await;
    assert_eq!(runs, vec![1], "once, keyed by the value's hash");
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.shutdown().await.unwrap();
    assert_eq!(effects.of(&charge.order_id), vec![1]);
    // Other tests' charges reach this queue too; theirs are short, kept as they are.
    let (hashed,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tchu_inbox WHERE queue = $1 AND key LIKE 'sha256:%'")
            .bind(&queue)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(hashed, 1);
    let (_conn, ch) = common::channel().await;
    let parked = common::drain(&ch, &format!("{queue}.dlq")).await;
    let ours = parked
        .iter()
        .filter(|m| m.delivery.data.len() > 100_000)
        .count();
    assert_eq!(ours, 0, "nothing of ours was dead-lettered");
    common::delete_service_queues(&queue).await;
}

#[tokio::test]
async fn a_message_without_the_key_is_dead_lettered_as_rejected() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("inbox_missing_key");
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::missing_key"))
        .inbox(Inbox::redis(&redis_url()).unwrap())
        .start(&client)
        .await
        .unwrap();
    let charge = order();
    client.publish(&charge).await.unwrap();
    let (_conn, ch) = common::channel().await;
    let dlq = format!("{queue}.dlq");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ours = loop {
        let parked = common::drain(&ch, &dlq).await;
        let found = parked
            .into_iter()
            .find(|m| String::from_utf8_lossy(&m.delivery.data).contains(&charge.order_id));
        if let Some(m) = found {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kind = common::header(&ours, tchu::headers::ERROR_KIND_HEADER);
    assert_eq!(kind.as_deref(), Some("rejected"));
    let why = common::header(&ours, tchu::headers::ERROR_HEADER).unwrap_or_default();
    assert!(why.contains("order.id"), "{why}");
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}

#[tokio::test]
async fn postgres_a_failed_attempt_rolls_back_with_its_claim_and_the_retry_runs() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let pool = pg_pool().await;
    let queue = common::unique("inbox_pg_flaky");
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::pg_flaky"))
        .inbox(Inbox::postgres(pool.clone()))
        .start(&client)
        .await
        .unwrap();
    let charge = order();
    client.publish(&charge).await.unwrap();
    // Attempt 1 wrote then failed: its write is gone; attempt 2's stays.
    let runs = settle(&vec![2], || effects_in(&pool, &charge.order_id)).await;
    assert_eq!(runs, vec![2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    shut_down_settled(service, &queue, &charge.order_id).await;
}

#[tokio::test]
async fn redis_a_failed_attempt_releases_its_claim_and_the_retry_runs_once() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("inbox_redis_flaky");
    let effects = std::sync::Arc::new(Effects::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::redis_flaky"))
        .state_arc(effects.clone())
        .inbox(Inbox::redis(&redis_url()).unwrap())
        .start(&client)
        .await
        .unwrap();
    let charge = order();
    publish_with_copies(&client, &charge, 2).await;
    // Had the first attempt kept its claim, the retry would wait out the 30 s lease.
    let runs = settle(&vec![2], || async { effects.of(&charge.order_id) }).await;
    assert_eq!(runs, vec![2], "the retry ran, and only it");
    tokio::time::sleep(Duration::from_millis(500)).await;
    shut_down_settled(service, &queue, &charge.order_id).await;
    assert_eq!(effects.of(&charge.order_id), vec![2]);
}

/// A responder's duplicate request (same key field, new message id) gets the recorded answer.
async fn a_duplicate_request_gets_the_recorded_answer(inbox: Inbox) {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("inbox_quote");
    let serial = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::quote"))
        .state_arc(serial.clone())
        .inbox(inbox)
        .start(&client)
        .await
        .unwrap();
    let order_id = common::unique("ord");
    let ask = AskQuote {
        order_id: order_id.clone(),
    };
    let first = client
        .call(&ask)
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    let again = client
        .call(&ask)
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    let other = AskQuote {
        order_id: common::unique("ord"),
    };
    let fresh = client
        .call(&other)
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(first, Quote { serial: 1 });
    assert_eq!(again, first, "the duplicate got the recorded answer");
    assert_eq!(fresh, Quote { serial: 2 }, "another key runs the responder");
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}

#[tokio::test]
async fn redis_a_duplicate_request_gets_the_recorded_answer() {
    a_duplicate_request_gets_the_recorded_answer(Inbox::redis(&redis_url()).unwrap()).await;
}

#[tokio::test]
async fn postgres_a_duplicate_request_gets_the_recorded_answer() {
    a_duplicate_request_gets_the_recorded_answer(Inbox::postgres(pg_pool().await)).await;
}

/// Two replicas on one queue get copies of the same messages at the same time: each effect
/// still happens once.
async fn two_replicas(module: &str, inbox: impl Fn() -> Inbox, pool: Option<PgPool>) {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("inbox_replicas");
    let effects = std::sync::Arc::new(Effects::default());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let replica = tchu::Service::new(&queue)
            .handlers_in(module)
            .state_arc(effects.clone())
            .prefetch(8)
            .inbox(inbox())
            .start(&client)
            .await
            .unwrap();
        replicas.push(replica);
    }
    let orders: Vec<Charge> = (0..10).map(|_| order()).collect();
    for charge in &orders {
        publish_with_copies(&client, charge, 3).await;
    }
    for charge in &orders {
        let count = match &pool {
            Some(pool) => {
                settle(&1, || async {
                    effects_in(pool, &charge.order_id).await.len()
                })
                .await
            }
            None => settle(&1, || async { effects.of(&charge.order_id).len() }).await,
        };
        assert_eq!(count, 1, "order {} ran {count} times", charge.order_id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in replicas {
        r.shutdown().await.unwrap();
    }
    for charge in &orders {
        let count = match &pool {
            Some(pool) => effects_in(pool, &charge.order_id).await.len(),
            None => effects.of(&charge.order_id).len(),
        };
        assert_eq!(count, 1, "order {} ran {count} times", charge.order_id);
    }
    common::delete_service_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_replicas_run_each_key_once() {
    let url = redis_url();
    two_replicas(
        concat!(module_path!(), "::redis_once"),
        || Inbox::redis(&url).unwrap(),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_run_each_key_once() {
    let pool = pg_pool().await;
    let p = pool.clone();
    two_replicas(
        concat!(module_path!(), "::pg_once"),
        move || Inbox::postgres(p.clone()),
        Some(pool),
    )
    .await;
}

#[tokio::test]
async fn a_dedup_handler_without_an_inbox_does_not_start() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let err = tchu::Service::new(common::unique("inbox_missing"))
        .handlers_in(concat!(module_path!(), "::redis_once"))
        .state(Effects::default())
        .start(&client)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has `dedup` but the service has no inbox"),
        "{err}"
    );
}

#[tokio::test]
async fn tx_needs_a_postgres_inbox() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let err = tchu::Service::new(common::unique("inbox_tx_missing"))
        .handlers_in(concat!(module_path!(), "::pg_once"))
        .inbox(Inbox::redis(&redis_url()).unwrap())
        .start(&client)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs `Tx`"), "{err}");
}
