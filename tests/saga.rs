//! Sagas: an order process kept across its events, declared with `saga(...)` on handlers
//! taking a `Saga<Order>`.
//! - in memory (users' unit tests): begin, move on, complete; an event for a saga that is not
//!   running is parked as `no_saga`, or ignored when the handler says so;
//! - on RabbitMQ with the PostgreSQL inbox and two replicas: 40 orders, each moved on by
//!   three events published at once (the replicas apply them one after the other, none lost),
//!   every event delivered twice (each step applied once), and a failing step that leaves the
//!   saga as it was.
#![cfg(feature = "service")]

mod common;
#[cfg(feature = "postgres")]
mod python;

use serde::{Deserialize, Serialize};
use tchu::{Saga, SagaState};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Order {
    cents: i64,
    /// The items reserved so far, in the order their events were applied.
    reserved: Vec<String>,
    paid: bool,
}

impl SagaState for Order {
    const NAME: &'static str = "test_order";
}

#[tchu::event(topic = "saga.order.placed")]
struct Placed {
    order_id: String,
    cents: i64,
}

#[tchu::event(topic = "saga.item.reserved")]
struct Reserved {
    order_id: String,
    item: String,
}

#[tchu::event(topic = "saga.order.paid")]
struct Paid {
    order_id: String,
}

#[tchu::event(topic = "saga.order.late")]
struct Late {
    order_id: String,
}

/// What each `paid` step found: the order and its reserved items.
static PAID_WITH: std::sync::Mutex<Vec<(String, Vec<String>)>> = std::sync::Mutex::new(Vec::new());

fn paid_with(order_id: &str) -> Vec<Vec<String>> {
    let all = PAID_WITH.lock().unwrap();
    all.iter()
        .filter(|(id, _)| id == order_id)
        .map(|(_, items)| items.clone())
        .collect()
}

mod shop {
    use super::*;

    #[tchu::subscribe(saga(key = "order_id", start))]
    async fn placed(e: Placed, mut order: Saga<Order>) {
        order.cents = e.cents;
    }

    #[tchu::subscribe(saga(key = "order_id"))]
    async fn reserved(e: Reserved, mut order: Saga<Order>) -> tchu::Result<()> {
        // Changed, then failed: the change must not be saved.
        order.reserved.push(e.item.clone());
        if e.item == "broken" {
            return Err(tchu::Error::Store("the warehouse is down".into()));
        }
        Ok(())
    }

    #[tchu::subscribe(saga(key = "order_id"))]
    async fn paid(_: Paid, mut order: Saga<Order>) {
        order.paid = true;
        let seen = (order.key().to_owned(), order.reserved.clone());
        PAID_WITH.lock().unwrap().push(seen);
        if order.reserved.len() >= 3 {
            order.complete();
        }
    }

    #[tchu::subscribe(saga(key = "order_id", unknown = "ignore"))]
    async fn late(_: Late, order: Saga<Order>) {
        assert!(!order.is_new());
    }
}

#[tchu::event(topic = "saga.timed.placed")]
struct TimedPlaced {
    order_id: String,
    /// Ask for the payment deadline a second time, later: the later one replaces the first.
    again: bool,
    /// The deadline, 300 ms unless said.
    #[serde(default)]
    due_ms: Option<u64>,
    /// How long the step lingers after asking for it, before it commits.
    #[serde(default)]
    linger_ms: u64,
}

#[tchu::event(topic = "saga.timed.paid")]
struct TimedPaid {
    order_id: String,
}

#[tchu::event(topic = "saga.timed.pay_by")]
struct PayBy {
    order_id: String,
}

/// The orders whose payment deadline ran, with when.
static LATE_RAN: std::sync::Mutex<Vec<(String, std::time::Instant)>> =
    std::sync::Mutex::new(Vec::new());

#[derive(Debug, Default, Serialize, Deserialize)]
struct Timed {
    cancelled: bool,
}

impl SagaState for Timed {
    const NAME: &'static str = "test_timed";
}

mod timed {
    use super::*;
    use std::time::Duration;

    #[tchu::subscribe(saga(key = "order_id", start))]
    async fn placed(e: TimedPlaced, mut order: Saga<Timed>) -> tchu::Result<()> {
        let pay_by = PayBy {
            order_id: e.order_id.clone(),
        };
        let due = Duration::from_millis(e.due_ms.unwrap_or(300));
        order.timeout_in(due, &pay_by).await?;
        if e.again {
            order
                .timeout_in(Duration::from_millis(900), &pay_by)
                .await?;
        }
        assert_eq!(
            order.waiting_for().collect::<Vec<_>>(),
            ["saga.timed.pay_by"]
        );
        tokio::time::sleep(Duration::from_millis(e.linger_ms)).await;
        Ok(())
    }

    #[tchu::subscribe(saga(key = "order_id"))]
    async fn paid(_: TimedPaid, mut order: Saga<Timed>) {
        order.cancel_timeout::<PayBy>();
    }

    #[tchu::subscribe(saga(key = "order_id", unknown = "ignore"))]
    async fn pay_by(e: PayBy, mut order: Saga<Timed>) {
        LATE_RAN
            .lock()
            .unwrap()
            .push((e.order_id, std::time::Instant::now()));
        order.cancelled = true;
        order.complete();
    }
}

async fn memory_service(broker: &tchu::MemoryBroker, queue: &str) -> tchu::ServiceHandle {
    tchu::Service::new(queue)
        .handlers_in(concat!(module_path!(), "::shop"))
        .default_retry(tchu::RetryPolicy::fixed(
            1,
            std::time::Duration::from_millis(1),
        ))
        .start(&tchu::Client::memory(broker))
        .await
        .unwrap()
}

#[tokio::test]
async fn in_memory_a_saga_begins_moves_on_and_completes() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let svc = memory_service(&broker, "saga_mem").await;
    let id = || "o-1".to_owned();
    let reserve = |item: &str| {
        let e = Reserved {
            order_id: id(),
            item: item.to_owned(),
        };
        let client = client.clone();
        async move { client.publish(&e).await.unwrap() }
    };
    client
        .publish(&Placed {
            order_id: id(),
            cents: 1250,
        })
        .await
        .unwrap();
    for item in ["a", "b"] {
        reserve(item).await;
    }
    // Two items only: paid, not complete.
    client.publish(&Paid { order_id: id() }).await.unwrap();
    client.publish(&Late { order_id: id() }).await.unwrap();
    broker.settled().await;
    assert!(broker.peek("saga_mem.dlq").is_empty(), "nothing parked yet");
    assert_eq!(paid_with("o-1"), [["a", "b"]]);
    reserve("c").await;
    client.publish(&Paid { order_id: id() }).await.unwrap();
    broker.settled().await;
    // Completed: a late event is ignored as its handler says; another is parked.
    client.publish(&Late { order_id: id() }).await.unwrap();
    reserve("d").await;
    broker.settled().await;
    let parked = broker.peek("saga_mem.dlq");
    assert_eq!(
        parked.len(),
        1,
        "only the event of a completed saga is parked"
    );
    let kind = parked[0].headers.get(tchu::headers::ERROR_KIND_HEADER);
    assert_eq!(kind.and_then(|v| v.as_str()), Some("no_saga"));
    svc.shutdown().await.unwrap();
}

/// The `timed` saga's service on the in-memory broker.
async fn timed_memory_service(client: &tchu::Client, queue: &str) -> tchu::ServiceHandle {
    tchu::Service::new(queue)
        .handlers_in(concat!(module_path!(), "::timed"))
        .start(client)
        .await
        .unwrap()
}

#[tokio::test]
async fn in_memory_a_timeout_runs_once_unless_cancelled_or_replaced() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let svc = timed_memory_service(&client, "saga_mem_timed").await;
    let started = std::time::Instant::now();
    for (order_id, again) in [("t-late", false), ("t-paid", false), ("t-again", true)] {
        let order_id = order_id.to_owned();
        let placed = TimedPlaced {
            order_id,
            again,
            due_ms: None,
            linger_ms: 0,
        };
        client.publish(&placed).await.unwrap();
    }
    let order_id = "t-paid".to_owned();
    client.publish(&TimedPaid { order_id }).await.unwrap();
    let ran = |id: &str| {
        let all = LATE_RAN.lock().unwrap();
        all.iter()
            .filter(|(o, _)| o == id)
            .map(|(_, at)| at.duration_since(started))
            .collect::<Vec<_>>()
    };
    let both = || ran("t-late").len() + ran("t-again").len() >= 2;
    assert!(common::wait_until(std::time::Duration::from_secs(5), both).await);
    // Past every deadline, the stale ones included.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    broker.settled().await;
    let late = ran("t-late");
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(late[0] >= std::time::Duration::from_millis(300), "{late:?}");
    assert!(ran("t-paid").is_empty(), "cancelled: not run");
    let again = ran("t-again");
    assert_eq!(again.len(), 1, "the first deadline was replaced: {again:?}");
    assert!(
        again[0] >= std::time::Duration::from_millis(900),
        "{again:?}"
    );
    assert!(broker.peek("saga_mem_timed.dlq").is_empty());
    svc.shutdown().await.unwrap();
}

/// A stranger's event carrying a saga timeout's header is not taken for a timeout: the header
/// is one of tchu's signed control headers, and the event is parked as `untrusted`.
#[tokio::test]
async fn in_memory_a_strangers_timeout_header_is_parked_as_untrusted() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let svc = timed_memory_service(&client, "saga_mem_forged").await;
    let placed = TimedPlaced {
        order_id: "t-forged".into(),
        again: false,
        due_ms: Some(60_000),
        linger_ms: 0,
    };
    client.publish(&placed).await.unwrap();
    broker.settled().await;
    let options = tchu::wire::EncodeOptions {
        id: "6f1c0000-0000-4000-8000-000000000001",
        ..Default::default()
    };
    let payload = serde_json::json!({ "order_id": "t-forged" });
    let mut forged = tchu::wire::encode("saga.timed.pay_by", &payload, &options).unwrap();
    forged
        .headers
        .insert(tchu::headers::SAGA_TIMEOUT_HEADER.into(), "guessed".into());
    broker.send(&forged).unwrap();
    broker.settled().await;
    let parked = broker.peek("saga_mem_forged.dlq");
    assert_eq!(parked.len(), 1, "parked, not taken for a stale timeout");
    let kind = &parked[0].headers[tchu::headers::ERROR_KIND_HEADER];
    assert_eq!(kind, "untrusted");
    assert!(
        LATE_RAN
            .lock()
            .unwrap()
            .iter()
            .all(|(o, _)| o != "t-forged")
    );
    svc.shutdown().await.unwrap();
}

#[tokio::test]
async fn start_up_refuses_a_saga_handler_wired_wrong_or_without_a_store() {
    use tchu::{Handler, SagaSpec};
    let broker = tchu::MemoryBroker::new();
    let memory = tchu::Client::memory(&broker);
    let refused = |handler: Handler, client: tchu::Client| async move {
        let err = tchu::Service::new("saga_wired")
            .handlers_in("no::such::module")
            .handler(handler)
            .start(&client)
            .await
            .unwrap_err();
        err.to_string()
    };
    let other_state = Handler::on_pattern("saga.x", |_: Saga<Order>| async {})
        .with_saga(SagaSpec::of::<Timed>("order_id"));
    let why = refused(other_state, memory.clone()).await;
    assert!(
        why.contains("takes `Saga` of `test_order` but its saga spec names `test_timed`"),
        "{why}"
    );
    let no_argument = Handler::on_pattern("saga.x", |_: tchu::Message| async {})
        .with_saga(SagaSpec::of::<Order>("order_id"));
    let why = refused(no_argument, memory.clone()).await;
    assert!(why.contains("takes no `Saga` argument"), "{why}");
    let no_spec = Handler::on_pattern("saga.x", |_: Saga<Order>| async {});
    let why = refused(no_spec, memory).await;
    assert!(why.contains("without a saga spec"), "{why}");
    // On RabbitMQ a saga needs the PostgreSQL inbox.
    let rabbit = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let storeless = Handler::on_pattern("saga.x", |_: Saga<Order>| async {})
        .with_saga(SagaSpec::of::<Order>("order_id"));
    let why = refused(storeless, rabbit.clone()).await;
    assert!(why.contains("no PostgreSQL inbox"), "{why}");
    rabbit.close().await;
}

#[tokio::test]
async fn in_memory_a_failed_step_changes_nothing_and_unknown_sagas_are_parked() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let svc = memory_service(&broker, "saga_mem_fail").await;
    let order_id = "o-2".to_owned();
    let placed = Placed {
        order_id: order_id.clone(),
        cents: 5,
    };
    client.publish(&placed).await.unwrap();
    for item in ["a", "broken", "b", "c"] {
        let (order_id, item) = (order_id.clone(), item.to_owned());
        client.publish(&Reserved { order_id, item }).await.unwrap();
    }
    client.publish(&Paid { order_id }).await.unwrap();
    // Never placed: parked, not begun.
    let stranger = "o-unknown".to_owned();
    client.publish(&Paid { order_id: stranger }).await.unwrap();
    broker.settled().await;
    let parked = broker.peek("saga_mem_fail.dlq");
    let kinds: Vec<_> = parked
        .iter()
        .map(|m| {
            let kind = m.headers.get(tchu::headers::ERROR_KIND_HEADER);
            kind.and_then(|v| v.as_str()).unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        ["failed", "no_saga"],
        "the broken step, the stranger"
    );
    assert_eq!(
        paid_with("o-2"),
        [["a", "b", "c"]],
        "the broken step's change was not saved"
    );
    assert!(paid_with("o-unknown").is_empty(), "not run for a stranger");
    svc.shutdown().await.unwrap();
}

/// The same order process on RabbitMQ and PostgreSQL, its events de-duplicated by an id of
/// their own so the test can deliver each twice.
#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};
    use tchu::sqlx::{self, PgPool};

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct PgOrder {
        pub cents: i64,
        pub reserved: Vec<String>,
    }

    impl SagaState for PgOrder {
        const NAME: &'static str = "test_pg_order";
        const KEEP_COMPLETED: bool = true;
    }

    #[tchu::event(topic = "saga.pg.placed")]
    pub struct PgPlaced {
        pub order_id: String,
        pub cents: i64,
    }

    #[tchu::event(topic = "saga.pg.reserved")]
    #[derive(Clone)]
    pub struct PgReserved {
        pub event_id: String,
        pub order_id: String,
        pub item: String,
    }

    pub mod svc {
        use super::*;

        #[tchu::subscribe(saga(key = "order_id", start), dedup(key = "order_id"))]
        async fn placed(e: PgPlaced, mut order: Saga<PgOrder>) {
            order.cents = e.cents;
        }

        #[tchu::subscribe(saga(key = "order_id"), dedup(key = "event_id"))]
        async fn reserved(e: PgReserved, mut order: Saga<PgOrder>) {
            order.reserved.push(e.item);
            // A step that takes a moment, so that steps of one order overlap.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if order.reserved.len() == 3 {
                order.complete();
            }
        }
    }

    async fn replica(queue: &str, pool: &PgPool) -> (tchu::Client, tchu::ServiceHandle) {
        let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
        let svc = tchu::Service::new(queue)
            .handlers_in(concat!(module_path!(), "::svc"))
            .inbox(tchu::Inbox::postgres(pool.clone()))
            .prefetch(16)
            .start(&client)
            .await
            .unwrap();
        (client, svc)
    }

    /// Every order's (status, version, state) once all are completed, or when the wait ends.
    async fn rows(pool: &PgPool, orders: usize) -> Vec<(String, String, i64, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
                "SELECT key, status, version, state FROM tchu_sagas \
                 WHERE saga = 'test_pg_order' ORDER BY key",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            let done = rows.iter().filter(|r| r.1 == "completed").count();
            if done == orders || Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_apply_concurrent_and_duplicate_events_once_each_in_turn() {
        let (db, pool) = common::scoped_database("saga").await;
        let queue = common::unique("saga_pg");
        let (c1, s1) = replica(&queue, &pool).await;
        let (c2, s2) = replica(&queue, &pool).await;
        const ORDERS: usize = 40;
        let ids: Vec<String> = (0..ORDERS).map(|i| format!("o{i:02}")).collect();
        for (i, order_id) in ids.iter().enumerate() {
            let cents = i64::try_from(i).unwrap() * 100;
            let placed = PgPlaced {
                order_id: order_id.clone(),
                cents,
            };
            c1.publish(&placed).await.unwrap();
        }
        // Placed first: a reservation before its order would be parked as `no_saga`.
        let placed = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tchu_sagas")
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while placed().await < ORDERS as i64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Three reservations per order, each delivered twice, all published at once.
        let mut publishes = tokio::task::JoinSet::new();
        for order_id in &ids {
            for item in ["x", "y", "z"] {
                let e = PgReserved {
                    event_id: format!("{order_id}-{item}"),
                    order_id: order_id.clone(),
                    item: item.into(),
                };
                for client in [c1.clone(), c2.clone()] {
                    let e = e.clone();
                    publishes.spawn(async move { client.publish(&e).await.unwrap() });
                }
            }
        }
        while let Some(r) = publishes.join_next().await {
            r.unwrap();
        }
        let rows = rows(&pool, ORDERS).await;
        assert_eq!(rows.len(), ORDERS);
        for (i, (key, status, version, state)) in rows.iter().enumerate() {
            let order: PgOrder = serde_json::from_str(state).unwrap();
            let items: BTreeSet<&str> = order.reserved.iter().map(String::as_str).collect();
            assert_eq!(order.reserved.len(), 3, "{key}: {:?}", order.reserved);
            assert_eq!(items, BTreeSet::from(["x", "y", "z"]), "{key}");
            assert_eq!(order.cents, i64::try_from(i).unwrap() * 100, "{key}");
            assert_eq!(status, "completed", "{key}");
            // Begun, then three steps: the duplicates changed nothing.
            assert_eq!(*version, 4, "{key}");
        }
        let (_c, ch) = common::channel().await;
        let parked = common::drain(&ch, &format!("{queue}.dlq")).await;
        assert!(parked.is_empty(), "{} parked", parked.len());
        // The operators' view: kept once completed, listed with --all, shown one by one.
        let tool = |args: &[&str]| {
            let args: Vec<&str> =
                [&["saga"][..], args, &["--database-url", &db, "--json"]].concat();
            let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (code, stdout, stderr) = common::tchu_output(&args).await;
                assert_eq!(code, 0, "{stderr}");
                serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
            }
        };
        let running = tool(&["list"]).await;
        assert_eq!(running["sagas"].as_array().unwrap().len(), 0, "{running}");
        let all = tool(&["list", "--all", "--saga", "test_pg_order"]).await;
        assert_eq!(all["sagas"].as_array().unwrap().len(), ORDERS, "{all}");
        let one = tool(&["show", "test_pg_order", "o07"]).await;
        assert_eq!(one["status"], "completed");
        assert_eq!(one["state"]["cents"], 700);
        for (client, svc) in [(c1, s1), (c2, s2)] {
            svc.shutdown().await.unwrap();
            client.close().await;
        }
        common::delete_service_queues(&queue).await;
    }

    /// A service of the `timed` saga's handlers on RabbitMQ and PostgreSQL.
    async fn timed_service(
        queue: &str,
        pool: &PgPool,
        client: &tchu::Client,
    ) -> tchu::Result<tchu::ServiceHandle> {
        let handlers = format!("{}::timed", module_path!().trim_end_matches("::pg"));
        tchu::Service::new(queue)
            .handlers_in(handlers)
            .inbox(tchu::Inbox::postgres(pool.clone()))
            .start(client)
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timeout_is_held_by_the_broker_while_the_service_is_down() {
        let _turn = TIMED_TOPICS.lock().await;
        let (db, pool) = common::scoped_database("saga_timed").await;
        let queue = common::unique("saga_timed");
        let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
        let start = || timed_service(&queue, &pool, &client);
        let svc = start().await.unwrap();
        let order_id = common::unique("t-pg");
        let placed = TimedPlaced {
            order_id: order_id.clone(),
            again: false,
            due_ms: None,
            linger_ms: 0,
        };
        client.publish(&placed).await.unwrap();
        let waiting = || async {
            let t: Option<String> =
                sqlx::query_scalar("SELECT timeouts FROM tchu_sagas WHERE key = $1")
                    .bind(&order_id)
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            t.is_some_and(|t| t.contains("saga.timed.pay_by"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !waiting().await {
            assert!(Instant::now() < deadline, "the saga did not begin");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let args = ["saga", "list", "--database-url", &db, "--json"];
        let (code, stdout, stderr) = common::tchu_output(&args).await;
        assert_eq!(code, 0, "{stderr}");
        let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let waiting = &listed["sagas"][0]["waiting_for"];
        assert!(waiting["saga.timed.pay_by"].as_u64().is_some(), "{listed}");
        // Down past the deadline: the broker holds the timeout, then queues it.
        svc.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            super::LATE_RAN
                .lock()
                .unwrap()
                .iter()
                .all(|(o, _)| *o != order_id)
        );
        let svc = start().await.unwrap();
        let ran = || {
            let all = super::LATE_RAN.lock().unwrap();
            all.iter().filter(|(o, _)| *o == order_id).count()
        };
        assert!(common::wait_until(Duration::from_secs(10), || ran() == 1).await);
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tchu_sagas WHERE key = $1")
            .bind(&order_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 0, "completed by its timeout, and deleted");
        svc.shutdown().await.unwrap();
        client.close().await;
        common::delete_service_queues(&queue).await;
    }

    /// The order process of `examples/order_saga.rs` as a child process on `queue`, serving
    /// its metrics on `metrics` when given.
    fn order_service(queue: &str, db: &str, fault: Option<&str>) -> common::KillOnDrop {
        order_service_with(queue, db, fault, None)
    }

    fn order_service_with(
        queue: &str,
        db: &str,
        fault: Option<&str>,
        metrics: Option<&str>,
    ) -> common::KillOnDrop {
        let mut cmd = std::process::Command::new(common::example("order_saga"));
        if let Some(addr) = metrics {
            cmd.env("TCHU_METRICS_ADDR", addr);
        }
        cmd.env(tchu::BROKER_URL_ENV, common::broker_url())
            .env("TCHU_QUEUE", queue)
            .env("DATABASE_URL", db)
            .env("ORDER_PAYMENT_WINDOW_MS", "2000")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(f) = fault {
            // Read by the test: where the fault point stopped it.
            let log = std::fs::File::create(fault_log(queue)).unwrap();
            cmd.env("TCHU_FAULT", f).stderr(log);
        }
        common::KillOnDrop(cmd.spawn().unwrap())
    }

    /// Where the order service started with a fault writes its log.
    fn fault_log(queue: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{queue}.stderr"))
    }

    /// What the stock and payment services are sent, and what the order service announces.
    struct Watch {
        consumer: lapin::Consumer,
        seen: Vec<(String, serde_json::Value)>,
        _conn: lapin::Connection,
    }

    impl Watch {
        async fn new() -> Self {
            let (conn, ch) = common::channel().await;
            let (queue, consumer) = common::temp_queue(&ch, Some("stock.#")).await;
            for key in ["payment.charge", "order.confirmed", "order.cancelled"] {
                ch.queue_bind(
                    queue.as_str().into(),
                    "tchu_events".into(),
                    key.into(),
                    Default::default(),
                    Default::default(),
                )
                .await
                .unwrap();
            }
            Self {
                consumer,
                seen: Vec::new(),
                _conn: conn,
            }
        }

        /// Waits (bounded) for a message of `topic` about `order`; returns its payload.
        async fn next(&mut self, topic: &str, order: &str) -> serde_json::Value {
            use futures_lite::StreamExt;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let found = self
                    .seen
                    .iter()
                    .find(|(t, v)| t == topic && v["order_id"] == order);
                if let Some((_, v)) = found {
                    return v.clone();
                }
                let next = tokio::time::timeout_at(deadline, self.consumer.next()).await;
                let Ok(Some(Ok(d))) = next else {
                    panic!("no `{topic}` for {order}; seen: {:?}", self.seen);
                };
                let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                let payload = serde_json::from_str(body[0][0].as_str().unwrap()).unwrap();
                self.seen.push((d.routing_key.to_string(), payload));
            }
        }

        fn count(&self, topic: &str, order: &str) -> usize {
            let of = |(t, v): &&(String, serde_json::Value)| t == topic && v["order_id"] == order;
            self.seen.iter().filter(of).count()
        }
    }

    /// Held by each test whose service handles the `saga.timed.*` events on RabbitMQ: both
    /// services would receive the other test's events.
    static TIMED_TOPICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Held by each test that runs the order process: every order service is bound to the same
    /// topics, and one test's events would reach the other's service.
    static ORDER_TOPICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Waits out the payment deadlines (2 s) of the test's orders while its service still runs:
    /// delayed events are routed when due, to every queue bound to their topic then, and
    /// another test's service would receive them.
    async fn settle_deadlines() {
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    async fn consuming(queue: &str) {
        let (conn, mut ch) = common::channel().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A passive declaration of a missing queue closes the channel.
            if !ch.status().connected() {
                ch = conn.create_channel().await.unwrap();
            }
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let q = ch
                .queue_declare(queue.into(), passive, Default::default())
                .await;
            if q.is_ok_and(|q| q.consumer_count() > 0) {
                return;
            }
            assert!(Instant::now() < deadline, "the order service did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn send(client: &tchu::Client, topic: &str, order: &str, extra: serde_json::Value) {
        let mut payload = serde_json::json!({ "order_id": order });
        payload
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        client.publish_raw(topic, &payload).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_order_saga_confirms_compensates_and_times_out() {
        let _turn = ORDER_TOPICS.lock().await;
        let (db, _pool) = common::scoped_database("saga_example").await;
        let queue = common::unique("orders_saga");
        let mut watch = Watch::new().await;
        let metrics = common::free_address();
        let _svc = order_service_with(&queue, &db, None, Some(&metrics));
        consuming(&queue).await;
        let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
        let none = serde_json::json!({});
        for (order, cents) in [("o-ok", 100), ("o-fail", 200), ("o-late", 300)] {
            send(
                &client,
                "order.placed",
                order,
                serde_json::json!({ "cents": cents }),
            )
            .await;
            watch.next("stock.reserve", order).await;
            send(&client, "stock.reserved", order, none.clone()).await;
            let charge = watch.next("payment.charge", order).await;
            assert_eq!(charge["cents"], cents);
        }
        send(&client, "payment.charged", "o-ok", none.clone()).await;
        watch.next("order.confirmed", "o-ok").await;
        let failed = serde_json::json!({ "reason": "card declined" });
        send(&client, "payment.failed", "o-fail", failed).await;
        watch.next("stock.release", "o-fail").await;
        let cancelled = watch.next("order.cancelled", "o-fail").await;
        assert_eq!(cancelled["reason"], "card declined");
        // No payment for o-late: its deadline (2 s) cancels it.
        watch.next("stock.release", "o-late").await;
        let cancelled = watch.next("order.cancelled", "o-late").await;
        assert_eq!(cancelled["reason"], "no payment in time");
        // A payment after the cancellation meets `payment_charged`'s policy: parked.
        send(&client, "payment.charged", "o-late", none.clone()).await;
        // Past every deadline: those of o-ok and o-fail found their sagas completed.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (_c, ch) = common::channel().await;
        let parked = common::drain(&ch, &format!("{queue}.dlq")).await;
        let kinds: Vec<_> = parked
            .iter()
            .map(|m| common::header(m, tchu::headers::ERROR_KIND_HEADER).unwrap_or_default())
            .collect();
        assert_eq!(kinds, ["no_saga"], "only the late payment");
        assert_eq!(watch.count("order.cancelled", "o-ok"), 0);
        assert_eq!(watch.count("order.cancelled", "o-fail"), 1);
        #[cfg(feature = "prometheus")]
        {
            let text = common::scrape(&metrics);
            let counted = |event: &str| {
                let line = text.lines().find(|l| {
                    l.starts_with("tchu_saga_total{")
                        && l.contains("saga=\"order\"")
                        && l.contains(&format!("event=\"{event}\""))
                });
                line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            };
            // The deadlines of o-ok and o-fail found their sagas completed: stale. The late
            // payment found none: parked.
            let want = [
                ("started", Some(3.0)),
                ("completed", Some(3.0)),
                ("timed_out", Some(1.0)),
                ("stale_timeout", Some(2.0)),
                ("no_saga", Some(1.0)),
                ("failed", None),
            ];
            for (event, n) in want {
                assert_eq!(counted(event), n, "{event}: {text}");
            }
        }
        client.close().await;
        common::delete_service_queues(&queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_cut_short_before_its_commit_runs_again_once() {
        cut_short("exit-before-inbox-commit", |svc, _| {
            svc.0.try_wait().unwrap().is_some()
        })
        .await;
    }

    /// kill -9 from outside while the step is in progress: its handler has run, its state,
    /// outbox message and inbox record wait in an open transaction, its locks are held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saga_service_killed_mid_step_runs_the_step_again_once() {
        cut_short("hold:exit-before-inbox-commit", |svc, log| {
            let held = log.contains("TCHU_FAULT: holding at exit-before-inbox-commit");
            if held {
                assert!(svc.0.try_wait().unwrap().is_none(), "held, not exited");
                svc.0.kill().unwrap();
                svc.0.wait().unwrap();
            }
            held
        })
        .await;
    }

    /// Starts the order service with `fault`, sends one order, waits until `stopped` says the
    /// step was cut short, then checks that nothing of it was committed and that a new
    /// service applies it once.
    async fn cut_short(
        fault: &str,
        mut stopped: impl FnMut(&mut common::KillOnDrop, &str) -> bool,
    ) {
        let _turn = ORDER_TOPICS.lock().await;
        let (db, pool) = common::scoped_database("saga_crash").await;
        let queue = common::unique("orders_saga_crash");
        let mut watch = Watch::new().await;
        let mut svc = order_service_with(&queue, &db, Some(fault), None);
        consuming(&queue).await;
        let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
        let cents = serde_json::json!({ "cents": 5 });
        send(&client, "order.placed", "o-crash", cents).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stopped(
            &mut svc,
            &std::fs::read_to_string(fault_log(&queue)).unwrap(),
        ) {
            assert!(
                Instant::now() < deadline,
                "the service did not stop at {fault}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let begun: i64 = sqlx::query_scalar("SELECT count(*) FROM tchu_sagas")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(begun, 0, "nothing of the cut step was committed");
        let _svc = order_service(&queue, &db, None);
        watch.next("stock.reserve", "o-crash").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Ok(Some(Ok(d))) = tokio::time::timeout(
            Duration::from_millis(200),
            futures_lite::StreamExt::next(&mut watch.consumer),
        )
        .await
        {
            let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
            let payload = serde_json::from_str(body[0][0].as_str().unwrap()).unwrap();
            watch.seen.push((d.routing_key.to_string(), payload));
        }
        assert_eq!(
            watch.count("stock.reserve", "o-crash"),
            1,
            "the step applied once"
        );
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM tchu_sagas WHERE key = 'o-crash'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(version, 1);
        settle_deadlines().await;
        client.close().await;
        common::delete_service_queues(&queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_order_saga_with_a_python_tchu_tchu_payment_service() {
        let _turn = ORDER_TOPICS.lock().await;
        let py = tokio::task::spawn_blocking(|| {
            let extra = [("PYSVC_EXTRA_KEYS", "payment.charge")];
            super::python::start_with(&super::python::V3, "saga_py_payments", true, &extra)
        })
        .await
        .unwrap();
        let (db, _pool) = common::scoped_database("saga_py").await;
        let queue = common::unique("orders_saga_py");
        let mut watch = Watch::new().await;
        let _svc = order_service(&queue, &db, None);
        consuming(&queue).await;
        let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
        for (order, cents) in [("py-ok", 500), ("py-declined", 200_000)] {
            send(
                &client,
                "order.placed",
                order,
                serde_json::json!({ "cents": cents }),
            )
            .await;
            watch.next("stock.reserve", order).await;
            send(&client, "stock.reserved", order, serde_json::json!({})).await;
        }
        // The Python service charges one and declines the other.
        watch.next("order.confirmed", "py-ok").await;
        watch.next("stock.release", "py-declined").await;
        let cancelled = watch.next("order.cancelled", "py-declined").await;
        assert_eq!(cancelled["reason"], "card declined");
        let charged: Vec<_> = py.records("payment.charge");
        let ids: BTreeSet<&str> = charged
            .iter()
            .filter_map(|d| d["order_id"].as_str())
            .collect();
        assert_eq!(ids, BTreeSet::from(["py-declined", "py-ok"]));
        py.assert_alive();
        settle_deadlines().await;
        client.close().await;
        common::delete_service_queues(&queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timeout_due_before_its_saga_began_waits_for_the_step_that_begins_it() {
        let _turn = TIMED_TOPICS.lock().await;
        let (_, pool) = common::scoped_database("saga_race").await;
        let queue = common::unique("saga_race");
        let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
        let svc = timed_service(&queue, &pool, &client).await.unwrap();
        // Due in 10 ms, while the step that asks for it lingers 1.5 s before its commit.
        let order_id = common::unique("t-race");
        let placed = TimedPlaced {
            order_id: order_id.clone(),
            again: false,
            due_ms: Some(10),
            linger_ms: 1500,
        };
        client.publish(&placed).await.unwrap();
        let ran = || {
            let all = super::LATE_RAN.lock().unwrap();
            all.iter().filter(|(o, _)| *o == order_id).count()
        };
        assert!(
            common::wait_until(Duration::from_secs(10), || ran() == 1).await,
            "the deadline found no saga: it was being begun"
        );
        svc.shutdown().await.unwrap();
        client.close().await;
        common::delete_service_queues(&queue).await;
    }
}
