//! What a schedule does when a replica looks at it: nothing yet, run an occurrence, or skip
//! the missed ones. Pure, and table-tested below.

use super::Compiled;
use crate::handler::Missed;
use chrono::{DateTime, TimeDelta, Utc};

/// How late an occurrence may run and still count as on time (Quartz's misfire threshold).
/// Later than this, or with another occurrence due after it, it was missed.
pub const MISFIRE_GRACE: TimeDelta = TimeDelta::seconds(60);

/// At most this many missed occurrences are counted; the next due is found from now.
const MAX_COUNTED: u32 = 100_000;

/// What to do with a schedule whose next occurrence was due at `next_due`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Not due yet.
    Wait,
    /// Run the occurrence due at `due`; `missed` earlier ones were dropped. The one after is
    /// due at `next`.
    Fire {
        due: DateTime<Utc>,
        missed: u32,
        next: DateTime<Utc>,
    },
    /// Run none of the `skipped` missed occurrences; the next is due at `next`.
    Skip { skipped: u32, next: DateTime<Utc> },
}

/// Plans a schedule at `now`, its next occurrence due at `next_due`. Several due together
/// (every replica was down) come to one `Fire` or one `Skip`, never a burst.
pub(crate) fn plan(s: &Compiled, next_due: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
    if next_due > now {
        return Plan::Wait;
    }
    let (mut latest, mut due) = (next_due, 1u32);
    for t in s.after(next_due) {
        if t > now || due >= MAX_COUNTED {
            break;
        }
        (latest, due) = (t, due + 1);
    }
    let next = s
        .after(now.max(latest))
        .next()
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if due == 1 && now - next_due <= MISFIRE_GRACE {
        return Plan::Fire {
            due: next_due,
            missed: 0,
            next,
        };
    }
    match s.missed {
        Missed::RunOnce => Plan::Fire {
            due: latest,
            missed: due - 1,
            next,
        },
        Missed::Skip => Plan::Skip { skipped: due, next },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::ScheduleSpec;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn every_10s(missed: Missed) -> Compiled {
        Compiled::new(&ScheduleSpec::cron("t", "*/10 * * * * *").missed(missed)).unwrap()
    }

    #[test]
    fn an_occurrence_runs_when_due_and_not_before() {
        let s = every_10s(Missed::Skip);
        let due = at("2026-01-01T00:00:10Z");
        assert_eq!(plan(&s, due, at("2026-01-01T00:00:09.999Z")), Plan::Wait);
        let fire = Plan::Fire {
            due,
            missed: 0,
            next: at("2026-01-01T00:00:20Z"),
        };
        assert_eq!(plan(&s, due, due), fire);
        assert_eq!(
            plan(&s, due, at("2026-01-01T00:00:19Z")),
            fire,
            "late, on time"
        );
    }

    #[test]
    fn several_missed_come_to_one_run_or_one_skip() {
        let due = at("2026-01-01T00:00:10Z");
        let now = at("2026-01-01T01:00:05Z");
        let next = at("2026-01-01T01:00:10Z");
        assert_eq!(
            plan(&every_10s(Missed::RunOnce), due, now),
            Plan::Fire {
                due: at("2026-01-01T01:00:00Z"),
                missed: 359,
                next
            }
        );
        assert_eq!(
            plan(&every_10s(Missed::Skip), due, now),
            Plan::Skip { skipped: 360, next }
        );
    }

    #[test]
    fn one_occurrence_later_than_the_grace_was_missed() {
        let hourly = ScheduleSpec::cron("h", "0 0 * * * *").missed(Missed::Skip);
        let s = Compiled::new(&hourly).unwrap();
        let due = at("2026-01-01T10:00:00Z");
        let next = at("2026-01-01T11:00:00Z");
        let on_time = plan(&s, due, at("2026-01-01T10:00:59Z"));
        assert!(matches!(on_time, Plan::Fire { missed: 0, .. }));
        let late = plan(&s, due, at("2026-01-01T10:05:00Z"));
        assert_eq!(late, Plan::Skip { skipped: 1, next });
    }

    #[test]
    fn the_time_zone_places_the_occurrences() {
        let spec = ScheduleSpec::cron("n", "0 30 2 * * *").tz("Europe/Amsterdam");
        let s = Compiled::new(&spec).unwrap();
        let first = s.after(at("2026-07-01T00:00:00Z")).next().unwrap();
        assert_eq!(first, at("2026-07-01T00:30:00Z"), "CEST is UTC+2");
        let winter = s.after(at("2026-12-01T00:00:00Z")).next().unwrap();
        assert_eq!(winter, at("2026-12-01T01:30:00Z"), "CET is UTC+1");
    }
}
