//! Schedules in PostgreSQL: `tchu_schedules`, one row per schedule of a service, shared by its
//! replicas. Every time is the database's clock, the same for all of them.

use super::plan::{Plan, plan};
use super::{ABANDONED_AFTER, Compiled, Looked, Outcome};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

fn failed(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| Error::Store(format!("schedules ({what}): {e}"))
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The schedules' names and expressions, as two arrays for `unnest`.
fn keys(schedules: &[Compiled]) -> (Vec<String>, Vec<String>) {
    schedules
        .iter()
        .map(|s| (s.name.clone(), s.described.clone()))
        .unzip()
}

/// The database's clock.
async fn db_now(pool: &PgPool) -> Result<DateTime<Utc>> {
    let ms: i64 = sqlx::query_scalar("SELECT (extract(epoch FROM now()) * 1000)::int8")
        .fetch_one(pool)
        .await
        .map_err(failed("read the clock"))?;
    Ok(at(ms))
}

/// Adds the rows of schedules new to the table, due at their next occurrence; a schedule whose
/// expression changed starts over from its next occurrence.
pub(super) async fn register(pool: &PgPool, service: &str, schedules: &[Compiled]) -> Result<()> {
    let now = db_now(pool).await?;
    for s in schedules {
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
        .bind(s.next_after(now).timestamp_millis())
        .execute(pool)
        .await
        .map_err(failed("register"))?;
    }
    Ok(())
}

/// Fires the due rows of `schedules` no other replica holds, one transaction each, then says
/// how long until the next is due. A failure stops the look; what it fired before stands.
pub(super) async fn tick<F, Fut>(
    pool: &PgPool,
    service: &str,
    schedules: &[Compiled],
    send: F,
) -> Looked
where
    F: Fn(&Compiled, DateTime<Utc>, u32) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut looked = Looked::default();
    loop {
        match fire_one(pool, service, schedules, &send).await {
            Ok(Some(fired)) => looked.done.push(fired),
            Ok(None) => break,
            Err(e) => {
                looked.failure = Some(e);
                return looked;
            }
        }
    }
    match until_next(pool, service, schedules).await {
        Ok(wait) => looked.wait = wait,
        Err(e) => looked.failure = Some(e),
    }
    looked
}

/// How long until the next occurrence of `schedules` is due, by the database's clock.
async fn until_next(
    pool: &PgPool,
    service: &str,
    schedules: &[Compiled],
) -> Result<Option<Duration>> {
    let (names, specs) = keys(schedules);
    let ms: Option<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM min(next_due) - now()) * 1000)::int8 FROM tchu_schedules \
         WHERE service = $1 AND (name, spec) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
    )
    .bind(service)
    .bind(names)
    .bind(specs)
    .fetch_one(pool)
    .await
    .map_err(failed("next due"))?;
    Ok(ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
}

/// Holds one due row of `schedules` no other replica holds, fires or skips it, and moves it
/// on; `None` when there is none.
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
    let (names, specs) = keys(schedules);
    // A row whose expression is not this release's belongs meanwhile to the replicas of the
    // release that registered it.
    let row: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT name, (extract(epoch FROM next_due) * 1000)::int8, \
                (extract(epoch FROM now()) * 1000)::int8 \
         FROM tchu_schedules \
         WHERE service = $1 AND next_due <= now() \
           AND (name, spec) IN (SELECT * FROM unnest($2::text[], $3::text[])) \
         ORDER BY next_due LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(service)
    .bind(names)
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
    let (next, fired, dropped, last) = match &p {
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
    .bind(dropped)
    .bind(last)
    .execute(&mut *tx)
    .await
    .map_err(failed("move on"))?;
    tx.commit().await.map_err(failed("commit"))?;
    Ok(Some((name, p)))
}

/// Takes over the rows another release registered (another expression) and left overdue.
pub(super) async fn adopt_abandoned(
    pool: &PgPool,
    service: &str,
    schedules: &[Compiled],
) -> Result<Vec<String>> {
    let now = db_now(pool).await?;
    let mut adopted = Vec::new();
    for s in schedules {
        let taken = sqlx::query(
            "UPDATE tchu_schedules SET spec = $3, missed = $4, \
               next_due = to_timestamp($5::float8 / 1000) \
             WHERE service = $1 AND name = $2 AND spec <> $3 \
               AND next_due < now() - make_interval(secs => $6)",
        )
        .bind(service)
        .bind(&s.name)
        .bind(&s.described)
        .bind(s.missed.as_str())
        .bind(s.next_after(now).timestamp_millis())
        .bind(ABANDONED_AFTER.as_secs_f64())
        .execute(pool)
        .await
        .map_err(failed("take over"))?;
        if taken.rows_affected() > 0 {
            adopted.push(s.name.clone());
        }
    }
    Ok(adopted)
}

/// Records how an occurrence went, unless a later one was sent since: a late retry of an
/// older occurrence does not hide the latest's outcome.
pub(super) async fn finished(
    pool: &PgPool,
    service: &str,
    schedule: &str,
    due_unix_ms: i64,
    outcome: Outcome,
    error: Option<&str>,
) -> Result<()> {
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
