//! Where schedules are kept: a row per schedule of a service, holding when its next occurrence
//! is due and how its last one went. In PostgreSQL (`tchu_schedules`, beside the service's
//! inbox) every replica of the service shares the rows; in memory, every service on one
//! in-memory broker does.
//!
//! A replica fires a due occurrence while it holds the row: `FOR UPDATE SKIP LOCKED` in
//! PostgreSQL (another replica skips the row, and then finds it moved on), the store's lock in
//! memory. The occurrence is sent, confirmed, and the row moved on, in one transaction: a
//! failed send leaves the row due, for the next try.

use super::plan::{Plan, plan};
use super::{Compiled, Looked, Outcome};
use crate::error::Result;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// One schedule's row, in memory.
#[derive(Debug, Clone)]
struct Row {
    described: String,
    next_due: DateTime<Utc>,
}

/// The rows of every service on one in-memory broker, by service and schedule.
#[derive(Debug, Default)]
pub(crate) struct MemoryRows(tokio::sync::Mutex<BTreeMap<(String, String), Row>>);

impl MemoryRows {
    async fn tick<F, Fut>(&self, service: &str, schedules: &[Compiled], send: F) -> Looked
    where
        F: Fn(&Compiled, DateTime<Utc>, u32) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut rows = self.0.lock().await;
        let (mut looked, now) = (Looked::default(), Utc::now());
        for s in schedules {
            let Some(row) = rows.get_mut(&(service.to_owned(), s.name.clone())) else {
                continue;
            };
            let p = plan(s, row.next_due, now);
            if let Plan::Fire { due, missed, .. } = &p
                && let Err(e) = send(s, *due, *missed).await
            {
                looked.failure = Some(e);
                continue;
            }
            if let Plan::Fire { next, .. } | Plan::Skip { next, .. } = &p {
                row.next_due = *next;
                looked.done.push((s.name.clone(), p));
            }
        }
        let next = (schedules.iter())
            .filter_map(|s| rows.get(&(service.to_owned(), s.name.clone())))
            .map(|r| r.next_due)
            .min();
        looked.wait = next.map(|n| (n - now).to_std().unwrap_or_default());
        looked
    }
}

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
            Store::Postgres(pool) => super::postgres::register(pool, service, schedules).await,
        }
    }

    /// Fires every due schedule of `schedules` this replica can hold, through `send` (which
    /// sends one occurrence: the schedule, its due time, how many were missed before it).
    pub(crate) async fn tick<F, Fut>(
        &self,
        service: &str,
        schedules: &[Compiled],
        send: F,
    ) -> Looked
    where
        F: Fn(&Compiled, DateTime<Utc>, u32) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        match self {
            Store::Memory(rows) => rows.tick(service, schedules, send).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => super::postgres::tick(pool, service, schedules, send).await,
        }
    }

    /// Takes over the rows of `schedules` that a replica of another release (another
    /// expression) registered and left overdue by `ABANDONED_AFTER`: that release is gone.
    /// Returns the names taken over.
    pub(crate) async fn adopt_abandoned(
        &self,
        service: &str,
        schedules: &[Compiled],
    ) -> Result<Vec<String>> {
        match self {
            // One process: no other release.
            Store::Memory(_) => {
                let _ = (service, schedules);
                Ok(Vec::new())
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                super::postgres::adopt_abandoned(pool, service, schedules).await
            }
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
                super::postgres::finished(pool, service, schedule, due_unix_ms, outcome, error)
                    .await
            }
        }
    }
}
