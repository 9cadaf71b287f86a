//! A point to read the event log from, as operators and `run!(replay_from = "...")` write it:
//! a duration back from now (`90s`, `15m`, `1h`, `2d`), a time (`2026-12-06T10:00:00Z`),
//! `first` or an offset (`offset:1234`). The grammar only: the runtime resolves a duration
//! against the clock, and both it and the macros check a time with a date parser.

use std::time::Duration;

/// A replay point, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// The oldest event the log keeps.
    First,
    /// An offset of the log.
    Offset(u64),
    /// This long before now.
    Back(Duration),
    /// A time, as written: what is left once the other forms did not match, to be read as
    /// RFC 3339.
    At(String),
}

/// What a replay point may look like, for error messages.
pub const EXPECTED: &str = "expected `1h`, `2d`, `2026-12-06T10:00:00Z`, `first` or `offset:N`";

/// Reads a replay point.
///
/// ```
/// use tchu_core::since::{Since, parse};
/// use std::time::Duration;
/// assert_eq!(parse("2d"), Ok(Since::Back(Duration::from_secs(2 * 86_400))));
/// assert_eq!(parse("offset:7"), Ok(Since::Offset(7)));
/// assert!(parse("offset:x").is_err());
/// ```
///
/// # Errors
/// What is wrong, in a sentence, for an offset that is not a number or an empty string.
pub fn parse(s: &str) -> Result<Since, String> {
    if s == "first" {
        return Ok(Since::First);
    }
    if let Some(n) = s.strip_prefix("offset:") {
        return n
            .parse()
            .map(Since::Offset)
            .map_err(|e| format!("`{s}`: the offset is not a number ({e})"));
    }
    if let Some(days) = s.strip_suffix('d').and_then(|d| d.parse::<u64>().ok()) {
        return Ok(Since::Back(Duration::from_secs(
            days.saturating_mul(86_400),
        )));
    }
    if let Ok(back) = crate::retry::parse_duration(s) {
        return Ok(Since::Back(back));
    }
    if s.is_empty() {
        return Err(format!("an empty replay point: {EXPECTED}"));
    }
    Ok(Since::At(s.to_owned()))
}
