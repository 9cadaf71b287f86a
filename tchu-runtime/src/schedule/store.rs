//! Where schedules are kept: a row per schedule of a service, holding when its next occurrence
//! is due and how its last one went. In PostgreSQL (`tchu_schedules`, beside the service's
//! inbox) every replica of the service shares the rows; in memory, every service on one
//! in-memory broker does.
//!
//! A replica fires a due occurrence while it holds the row: `FOR UPDATE SKIP LOCKED` in
//! PostgreSQL (another replica skips the row, and then finds it moved on), the store's lock in
//! memory. The occurrence is sent, confirmed, and the row moved on, in one transaction: a
//! failed send leaves the row due, for the next try.

use super::Compiled;
use super::plan::{Plan, plan};
use crate::error::Result;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// How a schedule's last occurrence went, as its handler finished it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

/// One schedule's row, in memory.
#[derive(Debug, Clone)]
struct Row {
    described: String,
    next_due: DateTime<Utc>,
}

/// The rows of every service on one in-memory broker, by service and schedule.
#[derive(Debug, Default)]
pub(crate) struct MemoryRows(tokio::sync::Mutex<BTreeMap<(String, String), Row>>);

/// The store of a service's schedules.
#[derive(Clone)]
pub(crate) enum Store {
    Memory(Arc<MemoryRows>),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

impl Store {
    /// Adds the rows of schedules new to the store, due at their next occurrence after now;
    /// a schedule whose expression or time zone changed starts over from now. The others keep
    /// their next due time: occurrences missed while no replica ran meet their policy.
    pub(crate) async fn register(&self, service: &str, schedules: &[Compiled]) -> Result<()> {
        match self {
            Store::Memory(rows) => {
                let mut rows = rows.0.lock().await;
                for s in schedules {
                    let key = (service.to_owned(), s.name.clone());
                    let fresh = || Row {
                        described: s.described.clone(),
                        next_due: s.next_after(Utc::now()),
                    };
                    let row = rows.entry(key).or_insert_with(fresh);
                    if row.described != s.described {
                        *row = fresh();
                    }
                }
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => pg::register(pool, service, schedules).await,
        }
    }

    /// Fires every due schedule of `schedules` this replica can hold, through `send` (which
    /// sends one occurrence: the schedule, its due time, how many were missed before it).
    /// Returns what each one did, and when the next is due.
    pub(crate) async fn tick<F, Fut>(
        &self,
        service: &str,
        schedules: &[Compiled],
        send: F,
    ) -> Result<(Vec<(String, Plan)>, Option<DateTime<Utc>>)>
    where
        F: Fn(&Compiled, DateTime<Utc>, u32) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        match self {
            Store::Memory(rows) => {
                let mut rows = rows.0.lock().await;
                let (mut done, now) = (Vec::new(), Utc::now());
                for s in schedules {
                    let Some(row) = rows.get_mut(&(service.to_owned(), s.name.clone())) else {
                        continue;
                    };
                    if row.described != s.described {
                        continue;
                    }
                    let p = plan(s, row.next_due, now);
                    if let Plan::Fire { due, missed, .. } = &p {
                        send(s, *due, *missed).await?;
                    }
                    if let Plan::Fire { next, .. } | Plan::Skip { next, .. } = &p {
                        row.next_due = *next;
                        done.push((s.name.clone(), p));
                    }
                }
                let next = schedules
                    .iter()
                    .filter_map(|s| rows.get(&(service.to_owned(), s.name.clone())))
                    .map(|r| r.next_due)
                    .min();
                Ok((done, next))
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => pg::tick(pool, service, schedules, send).await,
        }
    }

    /// Records how the occurrence due at `due` went (the last outcome `tchu schedule list`
    /// shows). In memory, nothing is recorded.
    pub(crate) async fn finished(
        &self,
        service: &str,
        schedule: &str,
        due_unix_ms: i64,
        outcome: Outcome,
        error: Option<&str>,
    ) -> Result<()> {
        match self {
            Store::Memory(_) => {
                let _ = (service, schedule, due_unix_ms, outcome, error);
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                pg::finished(pool, service, schedule, due_unix_ms, outcome, error).await
            }
        }
    }
}

#[cfg(feature = "postgres")]
mod pg {
    use super::{Compiled, Outcome, Plan, plan};
    use crate::error::{Error, Result};
    use chrono::{DateTime, Utc};
    use sqlx::PgPool;
    use std::future::Future;

    fn failed(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
        move |e| Error::Store(format!("schedules ({what}): {e}"))
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    fn names(schedules: &[Compiled]) -> Vec<String> {
        schedules.iter().map(|s| s.name.clone()).collect()
    }

    pub(super) async fn register(
        pool: &PgPool,
        service: &str,
        schedules: &[Compiled],
    ) -> Result<()> {
        for s in schedules {
            let next = s.next_after(Utc::now()).timestamp_millis();
            sqlx::query(
                "INSERT INTO tchu_schedules (service, name, spec, missed, next_due) \
                 VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000)) \
                 ON CONFLICT (service, name) DO UPDATE SET \
                   next_due = CASE WHEN tchu_schedules.spec = EXCLUDED.spec \
                     THEN tchu_schedules.next_due ELSE EXCLUDED.next_due END, \
                   spec = EXCLUDED.spec, missed = EXCLUDED.missed",
            )
            .bind(service)
            .bind(&s.name)
            .bind(&s.described)
            .bind(s.missed.as_str())
            .bind(next)
            .execute(pool)
            .await
            .map_err(failed("register"))?;
        }
        Ok(())
    }

    pub(super) async fn tick<F, Fut>(
        pool: &PgPool,
        service: &str,
        schedules: &[Compiled],
        send: F,
    ) -> Result<(Vec<(String, Plan)>, Option<DateTime<Utc>>)>
    where
        F: Fn(&Compiled, DateTime<Utc>, u32) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut done = Vec::new();
        // One transaction per occurrence: a failed send leaves the others sent and moved on.
        while let Some(fired) = fire_one(pool, service, schedules, &send).await? {
            done.push(fired);
        }
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM min(next_due)) * 1000)::int8 FROM tchu_schedules \
             WHERE service = $1 AND name = ANY($2)",
        )
        .bind(service)
        .bind(names(schedules))
        .fetch_one(pool)
        .await
        .map_err(failed("next due"))?;
        Ok((done, next.map(at)))
    }

    /// Holds one due row of `schedules` no other replica holds, fires or skips it, and moves
    /// it on; `None` when there is none.
    async fn fire_one<F, Fut>(
        pool: &PgPool,
        service: &str,
        schedules: &[Compiled],
        send: &F,
    ) -> Result<Option<(String, Plan)>>
    where
        F: Fn(&Compiled, DateTime<Utc>, u32) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut tx = pool.begin().await.map_err(failed("begin"))?;
        let specs: Vec<String> = schedules.iter().map(|s| s.described.clone()).collect();
        // The database's clock, the same for every replica. A row whose expression is not
        // this release's belongs meanwhile to the replicas of the release that registered it.
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT name, (extract(epoch FROM next_due) * 1000)::int8, \
                    (extract(epoch FROM now()) * 1000)::int8 \
             FROM tchu_schedules \
             WHERE service = $1 AND next_due <= now() \
               AND (name, spec) IN (SELECT * FROM unnest($2::text[], $3::text[])) \
             ORDER BY next_due LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(service)
        .bind(names(schedules))
        .bind(specs)
        .fetch_optional(&mut *tx)
        .await
        .map_err(failed("claim"))?;
        let Some((name, next_due, now)) = row else {
            return Ok(None);
        };
        let Some(s) = schedules.iter().find(|s| s.name == name) else {
            return Ok(None);
        };
        let p = plan(s, at(next_due), at(now));
        let (next, fired, skipped, last) = match &p {
            Plan::Wait => return Ok(None),
            Plan::Fire { due, missed, next } => {
                send(s, *due, *missed).await?;
                (next, 1i64, i64::from(*missed), Some(due.timestamp_millis()))
            }
            Plan::Skip { skipped, next } => (next, 0, i64::from(*skipped), None),
        };
        sqlx::query(
            "UPDATE tchu_schedules SET next_due = to_timestamp($3::float8 / 1000), \
               fired = fired + $4, skipped = skipped + $5, \
               last_due = COALESCE(to_timestamp($6::float8 / 1000), last_due), \
               last_fired_at = CASE WHEN $4 > 0 THEN now() ELSE last_fired_at END, \
               last_outcome = CASE WHEN $4 > 0 THEN 'sent' ELSE last_outcome END, \
               last_error = CASE WHEN $4 > 0 THEN NULL ELSE last_error END \
             WHERE service = $1 AND name = $2",
        )
        .bind(service)
        .bind(&name)
        .bind(next.timestamp_millis())
        .bind(fired)
        .bind(skipped)
        .bind(last)
        .execute(&mut *tx)
        .await
        .map_err(failed("move on"))?;
        tx.commit().await.map_err(failed("commit"))?;
        Ok(Some((name, p)))
    }

    pub(super) async fn finished(
        pool: &PgPool,
        service: &str,
        schedule: &str,
        due_unix_ms: i64,
        outcome: Outcome,
        error: Option<&str>,
    ) -> Result<()> {
        // Only the latest occurrence's outcome: a late retry of an older one does not hide it.
        sqlx::query(
            "UPDATE tchu_schedules SET last_outcome = $4, last_error = $5, \
               last_finished_at = now() \
             WHERE service = $1 AND name = $2 \
               AND (last_due IS NULL OR last_due <= to_timestamp($3::float8 / 1000))",
        )
        .bind(service)
        .bind(schedule)
        .bind(due_unix_ms)
        .bind(outcome.as_str())
        .bind(error)
        .execute(pool)
        .await
        .map_err(failed("record the outcome"))?;
        Ok(())
    }
}
