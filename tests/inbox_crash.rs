//! A service that dies around its inbox commit, on PostgreSQL, with the `charges` example as
//! the service (built with tchu's `fault-injection` feature for tests, which makes it exit at
//! the named point):
//! - dead after the commit, before the acknowledgement: the broker redelivers, and the
//!   restarted service skips the copy; the charge stays single;
//! - dead before the commit: nothing was charged, and the restarted service charges once.
#![cfg(all(feature = "service", feature = "postgres"))]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tchu::sqlx::{self, PgPool};

/// Starts the `charges` example on `queue`; every stdout and stderr line arrives on the channel.
fn spawn_charges(
    queue: &str,
    db: &str,
    fault: Option<&str>,
) -> (common::KillOnDrop, mpsc::Receiver<String>) {
    let mut cmd = Command::new(common::example("charges"));
    cmd.env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", queue)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(f) = fault {
        cmd.env("TCHU_FAULT", f);
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    (common::KillOnDrop(child), rx)
}

fn wait_for(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line containing {what:?} within 30 s"),
        }
    }
}

/// Waits (bounded) for the child to exit on its own; returns its exit code.
fn exit_code(child: &mut common::KillOnDrop) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the service did not exit within 30 s");
}

/// Stops the child with SIGTERM (it drains and acknowledges) and checks it exits cleanly.
fn terminate(child: &mut common::KillOnDrop) {
    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    assert_eq!(exit_code(child), Some(0), "a clean exit after SIGTERM");
}

async fn charges_of(pool: &PgPool, order_id: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM charges WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap();
    n
}

async fn place(order_id: &str) {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    client
        .publish_raw(
            "order.placed",
            &serde_json::json!({ "order_id": order_id, "cents": 750 }),
        )
        .await
        .unwrap();
    client.close().await;
}

/// One test, the two scenarios in turn: both services consume `order.placed`, so run side by
/// side each would receive (and die on) the other's order.
#[tokio::test]
async fn a_crash_around_the_inbox_commit_leaves_one_charge() {
    let (db, pool) = common::scoped_database("crash").await;
    dead_after_the_commit_the_redelivery_is_skipped(&db, &pool).await;
    dead_before_the_commit_the_redelivery_charges_once(&db, &pool).await;
}

async fn dead_after_the_commit_the_redelivery_is_skipped(db: &str, pool: &PgPool) {
    let queue = common::unique("crash_after_commit");
    let order_id = common::unique("ord");
    let (mut first, rx1) = spawn_charges(&queue, db, Some("exit-after-inbox-commit"));
    wait_for(&rx1, "consuming");
    place(&order_id).await;
    assert_eq!(
        exit_code(&mut first),
        Some(86),
        "it died at the fault point"
    );
    assert_eq!(charges_of(pool, &order_id).await, 1, "the charge committed");

    let (mut second, rx2) = spawn_charges(&queue, db, None);
    let line = wait_for(&rx2, "duplicate skipped");
    assert!(line.contains(&order_id), "{line}");
    terminate(&mut second);
    assert_eq!(charges_of(pool, &order_id).await, 1, "still charged once");
    let (_c, ch) = common::channel().await;
    let left = common::drain(&ch, &queue).await;
    let parked = common::drain(&ch, &format!("{queue}.dlq")).await;
    assert!(
        left.is_empty() && parked.is_empty(),
        "the copy was acknowledged"
    );
    common::delete_service_queues(&queue).await;
}

async fn dead_before_the_commit_the_redelivery_charges_once(db: &str, pool: &PgPool) {
    let queue = common::unique("crash_before_commit");
    let order_id = common::unique("ord");
    let (mut first, rx1) = spawn_charges(&queue, db, Some("exit-before-inbox-commit"));
    wait_for(&rx1, "consuming");
    place(&order_id).await;
    assert_eq!(
        exit_code(&mut first),
        Some(86),
        "it died at the fault point"
    );
    assert_eq!(charges_of(pool, &order_id).await, 0, "nothing committed");

    let (mut second, rx2) = spawn_charges(&queue, db, None);
    wait_for(&rx2, &format!("charged {order_id}"));
    terminate(&mut second);
    assert_eq!(charges_of(pool, &order_id).await, 1, "charged once");
    common::delete_service_queues(&queue).await;
}
