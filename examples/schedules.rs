//! Schedules: periodic work inside a service, each occurrence run once however many replicas
//! run, with no beat process.
//!
//! Three schedules, every two seconds:
//! - `heartbeat` runs a missed occurrence once when the service comes back (the default);
//! - `sweep` skips the occurrences nobody was up to run (`missed = "skip"`);
//! - `flaky` fails its first attempt and succeeds on the retry its policy schedules.
//!
//! Each run records itself in `schedule_runs` in the inbox's transaction: with the inbox, an
//! occurrence delivered twice (its replica killed mid-run) records once. Start it three times:
//! every occurrence is still one row.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/tchu_test cargo run --example
//! schedules --features postgres` (RabbitMQ and PostgreSQL), then `tchu schedule list`.
//! Environment: `DATABASE_URL`, `TCHU_QUEUE` (default `schedules`), `TCHU_REPLICA` (a name
//! for the rows), `SCHEDULE_RUN_MS` (how long each run takes, default 300).

use std::time::Duration;
use tchu::{Attempt, Inbox, Occurrence, State, Tx, sqlx};

/// Who this replica is, and how long a run takes.
struct Replica {
    name: String,
    run_for: Duration,
}

#[tchu::schedule(cron = "*/2 * * * * *")]
async fn heartbeat(run: Occurrence, tx: Tx, me: State<Replica>) -> tchu::Result<()> {
    tokio::time::sleep(me.run_for).await;
    record(&run, 1, &tx, &me).await
}

#[tchu::schedule(cron = "*/2 * * * * *", missed = "skip")]
async fn sweep(run: Occurrence, tx: Tx, me: State<Replica>) -> tchu::Result<()> {
    record(&run, 1, &tx, &me).await
}

#[tchu::schedule(
    cron = "*/2 * * * * *",
    tz = "Europe/Amsterdam",
    retry(max_attempts = 3, backoff = "200ms")
)]
async fn flaky(
    run: Occurrence,
    attempt: Attempt,
    tx: Tx,
    me: State<Replica>,
) -> Result<(), BoxError> {
    if attempt.0 == 1 {
        return Err("the first attempt of every run fails".into());
    }
    Ok(record(&run, attempt.0, &tx, &me).await?)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One row per run, written in the inbox's transaction: it commits with the occurrence's
/// inbox key, or not at all.
async fn record(run: &Occurrence, attempt: u32, tx: &Tx, me: &Replica) -> tchu::Result<()> {
    let due_ms = run
        .due()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    sqlx::query(
        "INSERT INTO schedule_runs (schedule, due_unix_ms, missed, attempt, replica) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(run.schedule())
    .bind(due_ms)
    .bind(i64::from(run.missed()))
    .bind(i64::from(attempt))
    .bind(&me.name)
    .execute(&mut *tx.lock().await?)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tchu_test".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await?;
    // Replicas starting together: one creates the table, under a lock.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(42)")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schedule_runs (schedule text NOT NULL, \
         due_unix_ms bigint NOT NULL, missed bigint NOT NULL, attempt bigint NOT NULL, \
         replica text NOT NULL, at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let replica = Replica {
        name: std::env::var("TCHU_REPLICA").unwrap_or_else(|_| std::process::id().to_string()),
        run_for: Duration::from_millis(
            std::env::var("SCHEDULE_RUN_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(300),
        ),
    };
    tchu::run!(
        queue = "schedules",
        inbox = Inbox::postgres(pool),
        state = replica
    )
}
