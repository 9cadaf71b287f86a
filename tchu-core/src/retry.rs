//! Retry policies and the delay arithmetic, with no I/O and no dependencies.
//!
//! Entry points: [`RetryPolicy`] (built in `const` context by `#[tchu::subscribe(retry(...))]`),
//! [`RetryPolicy::delay_for`] (exponential with cap and full jitter, Celery's formula), and
//! [`plan_hops`], which splits a delay into the broker-held delay tiers ([`DELAY_TIERS_MS`]).
//!
//! The macros parse durations with [`parse_duration`] at compile time, so `"100ms"`, `"2s"`,
//! `"10m"`, `"1h"` and `"1s..10m"` (exponential base..cap) are checked before the program runs.

use core::time::Duration;

/// How a handler's failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total runs of the handler for one message, the first included (Celery `max_retries + 1`).
    /// 1 means no retry.
    pub max_attempts: u32,
    /// Delay before each retry.
    pub backoff: Backoff,
    /// Full jitter: each delay is uniformly random between zero and the computed delay
    /// (Celery `retry_jitter`).
    pub jitter: bool,
}

/// The delay schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The same delay before every retry (Celery `default_retry_delay`).
    Fixed(Duration),
    /// `base × 2^(attempt − 1)`, capped (Celery `retry_backoff` and `retry_backoff_max`).
    Exponential {
        /// The first delay.
        base: Duration,
        /// The longest delay.
        cap: Duration,
    },
}

/// When a delivery is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckPolicy {
    /// After the handler finished (Celery `acks_late = True`): a crash mid-handler leaves the
    /// message on the broker, which delivers it again. The default.
    #[default]
    Late,
    /// On receipt, before the handler runs (Celery's default `acks_late = False`): a crash
    /// mid-handler loses the message. Failures are still retried and dead-lettered.
    Early,
}

impl RetryPolicy {
    /// No retry: one attempt, then the dead-letter queue.
    pub const NONE: Self = Self {
        max_attempts: 1,
        backoff: Backoff::Fixed(Duration::ZERO),
        jitter: false,
    };

    /// `max_attempts` runs in all, the same `delay` before each retry, no jitter.
    pub const fn fixed(max_attempts: u32, delay: Duration) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::Fixed(delay),
            jitter: false,
        }
    }

    /// `max_attempts` runs in all, delays doubling from `base` up to `cap`, no jitter.
    pub const fn exponential(max_attempts: u32, base: Duration, cap: Duration) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::Exponential { base, cap },
            jitter: false,
        }
    }

    /// What makes a policy built at run time unusable (what the macros refuse at compile
    /// time): no attempt at all, a zero exponential base, a cap below the base.
    pub fn problem(&self) -> Option<String> {
        if self.max_attempts == 0 {
            return Some("`max_attempts` counts the first run too: at least 1".into());
        }
        match self.backoff {
            Backoff::Exponential { base, .. } if base.is_zero() => {
                Some("an exponential backoff needs a base above zero".into())
            }
            Backoff::Exponential { base, cap } if cap < base => Some(format!(
                "the backoff's cap {cap:?} is below its base {base:?}"
            )),
            _ => None,
        }
    }

    /// The same policy with full jitter on each delay.
    pub const fn jittered(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// Whether a failed `attempt` (1-based) is followed by another.
    pub const fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay before the retry that follows failed attempt `attempt` (1-based). `random` is a
    /// uniform sample in `[0, 1)`, used only with jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tchu_core::retry::{Backoff, RetryPolicy};
    /// let p = RetryPolicy {
    ///     max_attempts: 5,
    ///     backoff: Backoff::Exponential { base: Duration::from_millis(100), cap: Duration::from_millis(350) },
    ///     ..RetryPolicy::NONE
    /// };
    /// assert_eq!(p.delay_for(1, 0.0), Duration::from_millis(100));
    /// assert_eq!(p.delay_for(2, 0.0), Duration::from_millis(200));
    /// assert_eq!(p.delay_for(3, 0.0), Duration::from_millis(350)); // capped
    /// ```
    pub fn delay_for(&self, attempt: u32, random: f64) -> Duration {
        let full = match self.backoff {
            Backoff::Fixed(d) => d,
            Backoff::Exponential { base, cap } => {
                let shift = attempt.saturating_sub(1).min(62);
                let factor = 1u64 << shift;
                let nanos = base.as_nanos().saturating_mul(u128::from(factor));
                let cap_nanos = cap.as_nanos();
                Duration::from_nanos(nanos.min(cap_nanos).min(u128::from(u64::MAX)) as u64)
            }
        };
        if self.jitter {
            let r = if random.is_finite() {
                random.clamp(0.0, 1.0)
            } else {
                0.0
            };
            full.mul_f64(r)
        } else {
            full
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::NONE
    }
}

/// The broker-held delay tiers, in milliseconds: one queue per tier, whose message TTL sends
/// messages back to the service queue. Consecutive tiers differ by about √10, so any delay is
/// reached in a few hops.
pub const DELAY_TIERS_MS: [u64; 13] = [
    10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000,
    10_000_000,
];

/// Achieved delays are within this of the policy's delay, plus the broker's own latency per hop
/// (about a millisecond on a local broker).
pub const DELAY_TOLERANCE: Duration = Duration::from_millis(5);

/// The next hop for a remaining delay: the tier to park in and what remains after it, or `None`
/// when the remaining delay is under [`DELAY_TOLERANCE`] (deliver now).
///
/// ```
/// use tchu_core::retry::plan_hops;
/// assert_eq!(plan_hops(3), None);
/// assert_eq!(plan_hops(130), Some((100, 30)));
/// assert_eq!(plan_hops(7), Some((10, 0)));    // rounded up: within 5 ms
/// ```
pub const fn plan_hops(remaining_ms: u64) -> Option<(u64, u64)> {
    if remaining_ms < DELAY_TOLERANCE.as_millis() as u64 {
        return None;
    }
    let mut i = DELAY_TIERS_MS.len();
    while i > 0 {
        i -= 1;
        let tier = DELAY_TIERS_MS[i];
        if tier <= remaining_ms {
            let left = remaining_ms - tier;
            // A leftover under the tolerance is dropped rather than costing another hop.
            return Some((
                tier,
                if left < DELAY_TOLERANCE.as_millis() as u64 {
                    0
                } else {
                    left
                },
            ));
        }
    }
    // Between the tolerance and the smallest tier: round up to the smallest tier.
    Some((DELAY_TIERS_MS[0], 0))
}

/// What is wrong with a duration string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    /// No digits before the unit.
    NoNumber,
    /// A unit other than `ms`, `s`, `m`, `h`.
    BadUnit,
    /// More than about 24 days, RabbitMQ's TTL limit (2^31 − 1 ms).
    TooLong,
}

impl core::fmt::Display for DurationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NoNumber => {
                "expected a number followed by a unit, like `100ms`, `2s`, `10m` or `1h`"
            }
            Self::BadUnit => "unknown unit: use `ms`, `s`, `m` or `h`",
            Self::TooLong => "longer than 24 days, the broker's limit for a held message",
        })
    }
}

/// Parses `100ms`, `2s`, `10m`, `1h` (whole numbers).
///
/// # Errors
/// [`DurationError`] for anything else.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(DurationError::NoNumber);
    }
    let n: u64 = s[..digits].parse().map_err(|_| DurationError::TooLong)?;
    let ms = match &s[digits..] {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(DurationError::BadUnit),
    };
    match ms {
        Some(ms) if ms <= i32::MAX as u64 => Ok(Duration::from_millis(ms)),
        _ => Err(DurationError::TooLong),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            backoff: Backoff::Exponential {
                base: ms(1000),
                cap: ms(600_000),
            },
            ..RetryPolicy::NONE
        };
        let got: Vec<u64> = (1..=11)
            .map(|a| p.delay_for(a, 0.5).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            [
                1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 512000, 600000
            ]
        );
        assert_eq!(
            p.delay_for(200, 0.0),
            ms(600_000),
            "no overflow on huge attempt numbers"
        );
    }

    #[test]
    fn fixed_and_jitter() {
        let p = RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Fixed(ms(400)),
            jitter: true,
        };
        assert_eq!(p.delay_for(1, 0.0), Duration::ZERO);
        assert_eq!(p.delay_for(2, 0.5), ms(200));
        assert!(p.delay_for(2, 0.999) < ms(400));
        assert_eq!(p.delay_for(2, f64::NAN), Duration::ZERO);
        assert!(p.retries_after(2) && !p.retries_after(3));
        assert!(!RetryPolicy::NONE.retries_after(1));
    }

    #[test]
    fn hops_sum_to_the_delay_within_tolerance() {
        for d in [
            0u64, 4, 5, 9, 10, 11, 29, 31, 99, 150, 999, 1234, 59_999, 3_600_000, 86_400_000,
        ] {
            let (mut left, mut total, mut hops) = (d, 0u64, 0);
            while let Some((tier, rest)) = plan_hops(left) {
                assert!(DELAY_TIERS_MS.contains(&tier));
                total += tier;
                left = rest;
                hops += 1;
                assert!(hops < 40, "too many hops for {d}");
            }
            assert!(total.abs_diff(d) <= 5, "{d} ms became {total} ms");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(ms(100)));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("10m"), Ok(ms(600_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1.5s"), Err(DurationError::BadUnit));
        assert_eq!(parse_duration("s"), Err(DurationError::NoNumber));
        assert_eq!(parse_duration("5d"), Err(DurationError::BadUnit));
        assert_eq!(parse_duration("1000h"), Err(DurationError::TooLong));
    }
}
