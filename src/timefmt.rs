//! Local times: point names, `at/<TIME>`, `--as-of`. All comparisons use naive local time,
//! because that is what virtnbdbackup writes (no zone) and what users type.

use chrono::{DateTime, Datelike, Local, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike};

use crate::error::{Error, Result};

/// Formats a time to the second, as point names use it: `2026-11-20T10:00:01`.
pub fn to_name(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Formats a time with its fraction, for `ls` and `info.json`.
pub fn to_iso(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()
}

/// Local time of a Unix timestamp.
pub fn from_unix(secs: i64) -> Option<NaiveDateTime> {
    Local
        .timestamp_opt(secs, 0)
        .earliest()
        .map(|t| t.naive_local())
}

/// Parses an ISO 8601 time as written by Python's `isoformat()` (no zone, optional fraction).
pub fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

/// Parses a time the user typed: `2026-11-20`, `2026-11-20T10:00`, `…T10:00:01[.5]`, with an
/// optional `Z` or `+01:00` (converted to local time), or `@<unix seconds>`. A time covers its
/// whole last unit, so `at/2026-11-20` means "as of the end of that day" and a point's own name
/// (to the second) finds that point.
pub fn parse_user(s: &str) -> Result<NaiveDateTime> {
    parse_any(s)
        .filter(|t| (1..=9999).contains(&t.year()))
        .ok_or_else(|| bad_time(s))
}

fn parse_any(s: &str) -> Option<NaiveDateTime> {
    let t = s.trim();
    let whole = |unit_secs: i64, naive: NaiveDateTime| {
        naive
            .checked_add_signed(TimeDelta::seconds(unit_secs) - TimeDelta::nanoseconds(1))
            .unwrap_or(naive)
    };
    let exact = t.contains('.');
    if let Some(secs) = t.strip_prefix('@') {
        return secs
            .parse::<i64>()
            .ok()
            .and_then(from_unix)
            .map(|n| whole(1, n));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        let local = from_unix(dt.timestamp())?.with_nanosecond(dt.timestamp_subsec_nanos())?;
        return Some(if exact { local } else { whole(1, local) });
    }
    if let Some(naive) = parse_naive(t) {
        return Some(if exact { naive } else { whole(1, naive) });
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, f) {
            return Some(whole(60, naive));
        }
    }
    let day = NaiveDate::parse_from_str(t, "%Y-%m-%d").ok()?;
    day.and_hms_opt(0, 0, 0).map(|n| whole(86_400, n))
}

fn bad_time(s: &str) -> Error {
    Error::usage(format!(
        "cannot read '{s}' as a time: use ISO 8601 like 2026-11-20T10:00:01, 2026-11-20, or @<unix seconds>"
    ))
}

/// Unix seconds of a local naive time (the earliest, if ambiguous), for file timestamps.
pub fn to_system_time(t: &NaiveDateTime) -> std::time::SystemTime {
    let secs = Local
        .from_local_datetime(t)
        .earliest()
        .map_or_else(|| t.and_utc().timestamp(), |d| d.timestamp());
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_isoformat_parses() {
        let t = parse_naive("2026-11-22T02:06:13.483121").unwrap();
        assert_eq!(to_name(&t), "2026-11-22T02:06:13");
        assert_eq!(to_iso(&t), "2026-11-22T02:06:13.483121");
        assert!(parse_naive("yesterday").is_none());
    }

    #[test]
    fn user_times() {
        let day = parse_user("2026-11-20").unwrap();
        assert_eq!(to_name(&day), "2026-11-20T23:59:59");
        assert_eq!(
            to_name(&parse_user("2026-11-20T10:00").unwrap()),
            "2026-11-20T10:00:59"
        );
        let second = parse_user("2026-11-20 10:00:01").unwrap();
        assert_eq!(to_iso(&second), "2026-11-20T10:00:01.999999999");
        let exact = parse_user("2026-11-20T10:00:01.5").unwrap();
        assert_eq!(to_iso(&exact), "2026-11-20T10:00:01.500");
        assert!(parse_user("tuesday").is_err());
        assert!(parse_user("+262143-12-31").is_err());
        assert!(parse_user("@8210266876799").is_err());
        assert!(parse_user("@-99999999999999").is_err());
        let unix = parse_user("@0").unwrap();
        assert_eq!(to_name(&unix), to_name(&from_unix(0).unwrap()));
    }
}
