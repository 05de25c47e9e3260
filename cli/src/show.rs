//! How the CLI shows what the API answers to a person: times as a date in UTC and
//! how long ago (`2026-12-07 03:50 UTC (5 min ago)`). `--json` prints the API's
//! views as they are (times as Unix seconds).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-12-07 03:50 UTC (5 min ago)`, for `at` seen at `now` (Unix seconds).
pub fn when(at: i64, now: i64) -> String {
    format!("{} ({})", utc(at), ago(now.saturating_sub(at)))
}

/// `2026-12-07 03:50 UTC`.
pub fn utc(at: i64) -> String {
    let (days, seconds) = (at.div_euclid(86_400), at.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        seconds / 3600,
        seconds % 3600 / 60
    )
}

/// `just now`, `42 s ago`, `5 min ago`, `3 h ago`, `2 days ago` (`in …` ahead).
pub fn ago(seconds: i64) -> String {
    let span = seconds.unsigned_abs();
    let text = match span {
        0..10 => return "just now".to_owned(),
        10..60 => format!("{span} s"),
        60..3600 => format!("{} min", span / 60),
        3600..86_400 => format!("{} h", span / 3600),
        86_400..172_800 => "1 day".to_owned(),
        _ => format!("{} days", span / 86_400),
    };
    if seconds < 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A size in bytes as `512 B`, `12.3 KiB`, `12.3 MiB`, `1.2 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A span in milliseconds as `120 ms` or `1.4 s`.
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// Text a sandbox or its owner chose, safe for a terminal: control characters
/// as `\u001b`.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // In range by construction (1..=12, 1..=31).
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_a_calendar_does() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_796_599_628), "2026-12-06 23:27 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(-86_400), "1969-12-31 00:00 UTC");
    }

    #[test]
    fn sizes_spans_and_names_read_plainly() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(12 << 20), "12.0 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(millis(120), "120 ms");
        assert_eq!(millis(1450), "1.4 s");
        assert_eq!(printable("a\u{1b}[31mb\n"), "a\\u001b[31mb\\u000a");
    }

    #[test]
    fn spans_read_as_a_person_says_them() {
        assert_eq!(ago(3), "just now");
        assert_eq!(ago(42), "42 s ago");
        assert_eq!(ago(300), "5 min ago");
        assert_eq!(ago(3 * 3600 + 59), "3 h ago");
        assert_eq!(ago(86_400 + 5), "1 day ago");
        assert_eq!(ago(9 * 86_400), "9 days ago");
        assert_eq!(ago(-120), "in 2 min");
        assert_eq!(
            when(1_796_599_628, 1_796_599_628 + 300),
            "2026-12-06 23:27 UTC (5 min ago)"
        );
    }
}
