//! Schedules: periodic work inside the service, what Celery beat does for tchu-tchu services,
//! with no extra process and each occurrence run once however many replicas run.
//!
//! A schedule is a handler marked `#[tchu::schedule(cron = "...", tz = "...")]`, taking an
//! [`Occurrence`] (and any other extractor). Every replica keeps a row per schedule in the
//! store (PostgreSQL with the service's inbox; memory on the in-memory broker) holding when
//! the next occurrence is due. When it is, the first replica to lock the row sends the
//! occurrence to the service's own queue and moves the row on, in one transaction; another
//! replica finds the row moved on, or locked, and sends nothing. The occurrence is then a
//! message like any other: one replica runs it, a failure retries by the handler's policy, a
//! replica killed mid-run leaves it to the broker to hand on, and with the inbox its id
//! (derived from the schedule and the due time) makes a second copy a duplicate.
//!
//! ```no_run
//! use tchu_runtime::Occurrence;
//!
//! // #[tchu::schedule(cron = "0 */15 * * * *", tz = "Europe/Amsterdam")]
//! async fn expire_carts(run: Occurrence) -> tchu_runtime::Result<()> {
//!     tracing::info!(due = ?run.due(), missed = run.missed(), "expiring carts");
//!     Ok(())
//! }
//! ```

#[cfg(feature = "service")]
mod driver;
#[cfg(feature = "service")]
mod occurrence;
#[cfg(feature = "service")]
mod plan;
#[cfg(all(feature = "service", feature = "postgres"))]
mod postgres;
#[cfg(feature = "service")]
mod store;

pub use crate::handler::{Missed, SCHEDULE_TOPIC_PREFIX, ScheduleSpec};
#[cfg(feature = "service")]
pub(crate) use driver::{Schedules, finished, spec_problem};
#[cfg(feature = "service")]
pub use occurrence::Occurrence;
#[cfg(feature = "service")]
pub use plan::MISFIRE_GRACE;

#[cfg(feature = "service")]
use chrono::{DateTime, Utc};

/// A schedule ready to run: its expression parsed, its time zone found.
#[cfg(feature = "service")]
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) name: String,
    pub(crate) cron: cron::Schedule,
    pub(crate) tz: chrono_tz::Tz,
    pub(crate) missed: Missed,
    /// The expression and time zone as the store keeps them.
    pub(crate) described: String,
}

#[cfg(feature = "service")]
impl Compiled {
    /// Parses a spec, or says why it cannot run.
    pub(crate) fn new(spec: &ScheduleSpec) -> Result<Self, String> {
        if let Some(why) = name_problem(&spec.name) {
            return Err(why);
        }
        let cron = spec.cron.parse::<cron::Schedule>().map_err(|e| {
            format!(
                "schedule `{}`: cron expression `{}`: {}",
                spec.name,
                spec.cron,
                cron_reason(&e)
            )
        })?;
        let tz = spec.tz.parse::<chrono_tz::Tz>().map_err(|_| {
            format!(
                "schedule `{}`: `{}` is not an IANA time zone (like `Europe/Amsterdam` or `UTC`)",
                spec.name, spec.tz
            )
        })?;
        Ok(Self {
            name: spec.name.to_string(),
            cron,
            tz,
            missed: spec.missed,
            described: spec.describe(),
        })
    }

    /// The occurrences after `t`, in UTC.
    pub(crate) fn after(&self, t: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .map(|d| d.to_utc())
    }

    /// The first occurrence after `t`; the end of time when there is none.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        self.after(t).next().unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The last occurrence at or before `t`, if any.
    pub(crate) fn latest_until(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let just_after = (t + chrono::TimeDelta::milliseconds(1)).with_timezone(&self.tz);
        self.cron.after(&just_after).next_back().map(|d| d.to_utc())
    }

    /// Whether it has an occurrence to come (`0 0 9 1 1 * 2026` no longer has in 2027).
    pub(crate) fn has_future(&self) -> bool {
        self.next_after(Utc::now()) < DateTime::<Utc>::MAX_UTC
    }
}

/// The next `n` occurrences of a schedule from now, in UTC; none when it cannot run.
#[cfg(feature = "service")]
pub(crate) fn upcoming(spec: &ScheduleSpec, n: usize) -> Vec<DateTime<Utc>> {
    Compiled::new(spec)
        .map(|s| s.after(Utc::now()).take(n).collect())
        .unwrap_or_default()
}

/// Why `name` cannot name a schedule, if it cannot: it is a word of a topic.
#[cfg(feature = "service")]
fn name_problem(name: &str) -> Option<String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 100 || !name.chars().all(fits) {
        Some(format!(
            "schedule name `{name}` must be 1 to 100 letters, digits, `_` or `-`"
        ))
    } else {
        None
    }
}

/// What the cron parser says is wrong, without its echo of the expression and caret line; the
/// macro words it the same way.
#[cfg(feature = "service")]
fn cron_reason(e: &cron::error::Error) -> String {
    let text = e.to_string();
    let reason: Vec<&str> = (text.lines().skip(2))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if reason.is_empty() {
        "it needs 6 or 7 fields, seconds first".to_owned()
    } else {
        reason.join(" ")
    }
}

/// How a schedule's last occurrence went, as its handler finished it.
#[cfg(feature = "service")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
}

#[cfg(feature = "service")]
impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

/// What one look at the store did.
#[cfg(feature = "service")]
#[derive(Debug, Default)]
pub(crate) struct Looked {
    /// Each schedule fired or skipped, with its plan.
    pub(crate) done: Vec<(String, plan::Plan)>,
    /// How long until the next occurrence is due, by the store's clock.
    pub(crate) wait: Option<std::time::Duration>,
    /// Why the look stopped short, if it did (what it did before stands).
    pub(crate) failure: Option<crate::Error>,
}

/// How long a row registered by another release may stay overdue before this release takes it
/// over: that release is gone (a failed roll-out), and no replica would fire it.
#[cfg(all(feature = "service", feature = "postgres"))]
pub(crate) const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);
