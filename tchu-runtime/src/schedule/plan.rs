//! What a schedule does when a replica looks at it: nothing yet, run an occurrence, or skip
//! the missed ones. Pure, and table-tested below.

use super::Compiled;
use crate::handler::Missed;
use chrono::{DateTime, TimeDelta, Utc};

/// How late an occurrence may run and still count as on time (Quartz's misfire threshold).
/// Later than this, or with another occurrence due after it, it was missed.
pub const MISFIRE_GRACE: TimeDelta = TimeDelta::seconds(60);

/// At most this many missed occurrences are counted (a per-second schedule down for hours);
/// the one run is the latest all the same.
const MAX_COUNTED: u32 = 10_000;

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
/// (every replica was down) come to one `Fire` or one `Skip`, never a burst; the latest of
/// them runs whatever the policy while it is within [`MISFIRE_GRACE`] (a replica that looked
/// a few seconds late has missed nothing).
pub(crate) fn plan(s: &Compiled, next_due: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
    if next_due > now {
        return Plan::Wait;
    }
    let latest = s
        .latest_until(now)
        .filter(|l| *l >= next_due)
        .unwrap_or(next_due);
    let due = 1 + s
        .after(next_due)
        .take_while(|t| *t <= latest)
        .take(MAX_COUNTED as usize)
        .count() as u32;
    let next = s.next_after(now);
    if now - latest <= MISFIRE_GRACE || s.missed == Missed::RunOnce {
        return Plan::Fire {
            due: latest,
            missed: due - 1,
            next,
        };
    }
    Plan::Skip { skipped: due, next }
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
        let hourly = ScheduleSpec::cron("h", "0 0 * * * *").missed(Missed::Skip);
        let s = Compiled::new(&hourly).unwrap();
        let (due, now) = (at("2026-01-01T06:00:00Z"), at("2026-01-01T09:30:00Z"));
        let next = at("2026-01-01T10:00:00Z");
        assert_eq!(plan(&s, due, now), Plan::Skip { skipped: 4, next });
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
    fn a_look_a_few_seconds_late_runs_the_latest_whatever_the_policy() {
        let due = at("2026-01-01T00:00:10Z");
        let now = at("2026-01-01T00:00:25Z");
        let fire = Plan::Fire {
            due: at("2026-01-01T00:00:20Z"),
            missed: 1,
            next: at("2026-01-01T00:00:30Z"),
        };
        assert_eq!(plan(&every_10s(Missed::Skip), due, now), fire);
        assert_eq!(plan(&every_10s(Missed::RunOnce), due, now), fire);
    }

    #[test]
    fn a_long_outage_runs_the_latest_and_counts_up_to_the_cap() {
        let every_second = ScheduleSpec::cron("s", "* * * * * *");
        let s = Compiled::new(&every_second).unwrap();
        let due = at("2026-01-01T00:00:00Z");
        let now = at("2026-01-02T06:00:00.500Z");
        let Plan::Fire {
            due: ran,
            missed,
            next,
        } = plan(&s, due, now)
        else {
            panic!("run once");
        };
        assert_eq!(
            ran,
            at("2026-01-02T06:00:00Z"),
            "the latest, not the capped one"
        );
        assert_eq!(missed, MAX_COUNTED);
        assert_eq!(next, at("2026-01-02T06:00:01Z"));
    }

    /// Pinned as documented: in the hour repeated when clocks go back, occurrences run at
    /// their first pass only; in the hour skipped when they go forward, times that do not
    /// exist do not run.
    #[test]
    fn daylight_saving_transitions() {
        let quarterly = ScheduleSpec::cron("q", "0 */15 * * * *").tz("Europe/Amsterdam");
        let s = Compiled::new(&quarterly).unwrap();
        // 02:45 CEST is 00:45 UTC; the clocks go back at 01:00 UTC (03:00 CEST to 02:00 CET).
        let next = s.next_after(at("2026-10-25T00:45:00Z"));
        assert_eq!(
            next,
            at("2026-10-25T02:00:00Z"),
            "03:00 CET: the second pass is not run"
        );
        let nightly = ScheduleSpec::cron("n", "0 30 2 * * *").tz("Europe/Amsterdam");
        let s = Compiled::new(&nightly).unwrap();
        // 02:30 does not exist on 2026-03-29: the next run is the day after.
        let next = s.next_after(at("2026-03-28T02:00:00Z"));
        assert_eq!(next, at("2026-03-30T00:30:00Z"));
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
