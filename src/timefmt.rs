//! Times: point names, `at/<TIME>`, `--as-of`. Points carry the naive local time of the machine
//! that made the backup (virtnbdbackup writes no zone). A time the user types without a zone is
//! compared as such; one with a zone (or `@unix`) is an instant, turned into the set's own local
//! time when the set knows its zone, else into this machine's.

use chrono::{
    DateTime, Datelike, FixedOffset, Local, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc,
};

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

/// A time the user typed: a wall-clock time, or an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserTime {
    /// No zone given: compared with point times as they are.
    Wall(NaiveDateTime),
    /// A zone or `@unix` given: one instant everywhere.
    Instant(DateTime<Utc>),
}

impl UserTime {
    /// This time as the naive local time of a set whose times are in `zone` (`None`: this
    /// machine's zone).
    pub fn in_zone(&self, zone: Option<FixedOffset>) -> NaiveDateTime {
        match (self, zone) {
            (UserTime::Wall(t), _) => *t,
            (UserTime::Instant(t), Some(z)) => t.with_timezone(&z).naive_local(),
            (UserTime::Instant(t), None) => t.with_timezone(&Local).naive_local(),
        }
    }
}

/// Parses a time the user typed: `2026-11-20`, `2026-11-20T10:00`, `…T10:00:01[.5]`, with an
/// optional `Z` or `+01:00` (an instant), or `@<unix seconds>`. A time covers its whole last
/// unit, so `at/2026-11-20` means "as of the end of that day" and a point's own name (to the
/// second) finds that point.
pub fn parse_user(s: &str) -> Result<UserTime> {
    parse_any(s)
        .filter(|t| {
            let year = match t {
                UserTime::Wall(w) => w.year(),
                UserTime::Instant(i) => i.year(),
            };
            (1..=9999).contains(&year)
        })
        .ok_or_else(|| bad_time(s))
}

fn parse_any(s: &str) -> Option<UserTime> {
    let t = s.trim();
    let whole = |unit_secs: i64, naive: NaiveDateTime| {
        naive
            .checked_add_signed(TimeDelta::seconds(unit_secs) - TimeDelta::nanoseconds(1))
            .unwrap_or(naive)
    };
    let exact = t.contains('.');
    if let Some(secs) = t.strip_prefix('@') {
        let at = DateTime::from_timestamp(secs.parse::<i64>().ok()?, 0)?;
        return Some(UserTime::Instant(whole(1, at.naive_utc()).and_utc()));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        let utc = dt.naive_utc();
        return Some(UserTime::Instant(
            if exact { utc } else { whole(1, utc) }.and_utc(),
        ));
    }
    if let Some(naive) = parse_naive(t) {
        return Some(UserTime::Wall(if exact { naive } else { whole(1, naive) }));
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, f) {
            return Some(UserTime::Wall(whole(60, naive)));
        }
    }
    let day = NaiveDate::parse_from_str(t, "%Y-%m-%d").ok()?;
    day.and_hms_opt(0, 0, 0)
        .map(|n| UserTime::Wall(whole(86_400, n)))
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

    fn local(s: &str) -> NaiveDateTime {
        parse_user(s).unwrap().in_zone(None)
    }

    #[test]
    fn user_times() {
        let day = local("2026-11-20");
        assert_eq!(to_name(&day), "2026-11-20T23:59:59");
        assert_eq!(to_name(&local("2026-11-20T10:00")), "2026-11-20T10:00:59");
        let second = local("2026-11-20 10:00:01");
        assert_eq!(to_iso(&second), "2026-11-20T10:00:01.999999999");
        let exact = local("2026-11-20T10:00:01.5");
        assert_eq!(to_iso(&exact), "2026-11-20T10:00:01.500");
        assert!(parse_user("tuesday").is_err());
        assert!(parse_user("+262143-12-31").is_err());
        assert!(parse_user("@8210266876799").is_err());
        assert!(parse_user("@-99999999999999").is_err());
        let unix = local("@0");
        assert_eq!(to_name(&unix), to_name(&from_unix(0).unwrap()));
    }

    #[test]
    fn instants_land_in_the_sets_zone_and_wall_times_stay() {
        let utc = FixedOffset::east_opt(0);
        let tokyo = FixedOffset::east_opt(9 * 3600);
        let z = parse_user("2026-11-22T02:58:40Z").unwrap();
        assert_eq!(to_iso(&z.in_zone(utc)), "2026-11-22T02:58:40.999999999");
        assert_eq!(to_name(&z.in_zone(tokyo)), "2026-11-22T11:58:40");
        let plus = parse_user("2026-11-22T03:58:40+01:00").unwrap();
        assert_eq!(plus, z);
        let at = parse_user("@1795316320").unwrap();
        assert_eq!(to_name(&at.in_zone(utc)), "2026-11-22T02:58:40");
        let wall = parse_user("2026-11-22T02:58:40").unwrap();
        assert_eq!(wall.in_zone(tokyo), wall.in_zone(utc));
    }
}
