//! What a schedule is: its name, its cron expression and time zone, and what happens to the
//! occurrences nobody was up to run (the rest of schedules lives in `crate::schedule`).

use std::borrow::Cow;

/// The topic an occurrence of a schedule is dispatched under: this prefix, then its name.
/// Occurrences are sent to the service's own queue (by its name), never broadcast.
pub const SCHEDULE_TOPIC_PREFIX: &str = "tchu.schedule.";

/// What happens when a schedule's occurrences were missed: every replica was down (or the
/// broker unreachable) when they were due, or the one due was more than a minute late.
/// Never a burst: several missed occurrences come to one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    /// Runs the latest missed occurrence once, as soon as a replica can (the default, as
    /// Quartz's "fire once now" and Celery beat do); [`Occurrence::missed`] says how many
    /// before it were dropped.
    ///
    /// [`Occurrence::missed`]: crate::schedule::Occurrence::missed
    #[default]
    RunOnce,
    /// Runs none of them: the next one runs when it is due.
    Skip,
}

impl Missed {
    /// The name `missed = "..."` and the tools use.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::RunOnce => "run_once",
            Missed::Skip => "skip",
        }
    }
}

/// A schedule: `#[tchu::schedule(cron = "...")]`, or [`Handler::every`](crate::Handler::every)
/// at run time (schedules read from configuration).
///
/// ```
/// use tchu_runtime::{Missed, ScheduleSpec};
///
/// let spec = ScheduleSpec::cron("nightly_report", "0 30 2 * * *")
///     .tz("Europe/Amsterdam")
///     .missed(Missed::Skip);
/// assert_eq!(spec.topic(), "tchu.schedule.nightly_report");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// Unique in its service: its occurrences, its row and its metrics are named by it
    /// (letters, digits, `_` and `-`).
    pub name: Cow<'static, str>,
    /// The cron expression, with seconds: `sec min hour day-of-month month day-of-week
    /// [year]`, as the `cron` crate reads it (`"0 */15 * * * *"`: every quarter hour).
    pub cron: Cow<'static, str>,
    /// The IANA time zone the expression is read in (`"Europe/Amsterdam"`); `"UTC"` by default.
    pub tz: Cow<'static, str>,
    /// What happens to missed occurrences.
    pub missed: Missed,
}

impl ScheduleSpec {
    /// A schedule named `name` on the cron expression `expr`, in UTC, running a missed
    /// occurrence once. Checked when the service starts.
    pub fn cron(name: impl Into<Cow<'static, str>>, expr: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            cron: expr.into(),
            tz: Cow::Borrowed("UTC"),
            missed: Missed::RunOnce,
        }
    }

    /// Reads the expression in the IANA time zone `tz`.
    #[must_use]
    pub fn tz(mut self, tz: impl Into<Cow<'static, str>>) -> Self {
        self.tz = tz.into();
        self
    }

    /// What happens to missed occurrences.
    #[must_use]
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// The topic its occurrences are dispatched under.
    pub fn topic(&self) -> String {
        format!("{SCHEDULE_TOPIC_PREFIX}{}", self.name)
    }

    /// The expression and time zone as one text: what the store keeps, to see a change.
    pub fn describe(&self) -> String {
        format!("{} @ {}", self.cron, self.tz)
    }
}
