//! The current UTC time as ISO 8601, without pulling a date crate in for two headers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `2026-11-28T16:03:53.042477Z` (`zulu`) or `...+00:00` (Celery's `date_done` style).
pub fn now_iso8601(zulu: bool) -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_unix(d.as_secs() as i64, d.subsec_micros(), zulu)
}

/// Formats seconds and microseconds since the Unix epoch (UTC).
pub fn format_unix(secs: i64, micros: u32, zulu: bool) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        if zulu { "Z" } else { "+00:00" }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(
            super::format_unix(0, 0, true),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            super::format_unix(1_795_881_833, 42_477, false),
            "2026-11-28T16:03:53.042477+00:00"
        );
        assert_eq!(
            super::format_unix(951_782_400, 1, true),
            "2000-02-29T00:00:00.000001Z"
        );
    }
}
