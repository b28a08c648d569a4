//! Which lines a restore keeps: a time range, hosts, apps, levels and a regex
//! on the line. Each given filter must match; several values of one filter
//! are alternatives.

use regex::Regex;

use super::record::Record;
use crate::clock::EpochMs;
use crate::hour::Hour;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{flag} {value:?} is not a time: give RFC 3339 (2026-11-26T07:00:00Z), a date (2026-11-26) or a time ago (2h, 3d)")]
    Time { flag: &'static str, value: String },
    #[error("--since {since} is not before --until {until}")]
    EmptyRange { since: String, until: String },
    #[error("--grep {pattern:?} is not a valid regex: {why}")]
    Grep { pattern: String, why: String },
}

/// A moment given on the command line, as epoch ms.
pub fn parse_time(flag: &'static str, value: &str, now: EpochMs) -> Result<EpochMs, FilterError> {
    let value = value.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        if let Some(t) = day.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    if let Ok(ago) = humantime::parse_duration(value) {
        let ago = ago.as_millis().min(i64::MAX as u128) as i64;
        return Ok(now.saturating_sub(ago));
    }
    Err(FilterError::Time {
        flag,
        value: value.to_owned(),
    })
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Lines at or after this moment.
    pub since: Option<EpochMs>,
    /// Lines before this moment.
    pub until: Option<EpochMs>,
    pub hosts: Vec<String>,
    pub apps: Vec<String>,
    /// Compared without regard to case.
    pub levels: Vec<String>,
    pub grep: Option<Regex>,
}

impl Filter {
    pub fn grep(pattern: &str) -> Result<Regex, FilterError> {
        Regex::new(pattern).map_err(|e| FilterError::Grep {
            pattern: pattern.to_owned(),
            why: e.to_string(),
        })
    }

    pub fn check_range(&self) -> Result<(), FilterError> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if since >= until => Err(FilterError::EmptyRange {
                since: crate::clock::rfc3339(since),
                until: crate::clock::rfc3339(until),
            }),
            _ => Ok(()),
        }
    }

    /// Whether an hour's objects may hold lines in the time range.
    pub fn wants_hour(&self, hour: Hour) -> bool {
        self.since.is_none_or(|s| hour.end_ms() > s)
            && self.until.is_none_or(|u| hour.start_ms() < u)
    }

    /// Whether a line is kept. A line without a timestamp is judged by its
    /// object's hour, which `wants_hour` already did.
    pub fn keeps(&self, r: &Record) -> bool {
        let one_of = |wanted: &[String], got: &Option<String>| {
            wanted.is_empty() || got.as_ref().is_some_and(|g| wanted.iter().any(|w| w == g))
        };
        r.ts.is_none_or(|ts| {
            self.since.is_none_or(|s| ts >= s) && self.until.is_none_or(|u| ts < u)
        }) && one_of(&self.hosts, &r.host)
            && one_of(&self.apps, &r.app)
            && (self.levels.is_empty()
                || r.level
                    .as_ref()
                    .is_some_and(|l| self.levels.iter().any(|w| w.eq_ignore_ascii_case(l))))
            && self
                .grep
                .as_ref()
                .is_none_or(|g| r.line.as_deref().is_some_and(|l| g.is_match(l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: EpochMs = 1_764_140_400_000; // 2025-11-26T07:00:00Z

    #[test]
    fn times_are_rfc3339_dates_or_durations_ago() {
        assert_eq!(
            parse_time("--since", "2025-11-26T07:00:00Z", 0).unwrap(),
            NOW
        );
        assert_eq!(
            parse_time("--since", "2025-11-26", 0).unwrap(),
            NOW - 7 * 3_600_000
        );
        assert_eq!(
            parse_time("--since", "2h", NOW).unwrap(),
            NOW - 2 * 3_600_000
        );
        let err = parse_time("--until", "yesterday", NOW).unwrap_err();
        assert!(err.to_string().contains("--until \"yesterday\""), "{err}");
    }

    #[test]
    fn every_given_filter_must_match() {
        let line = Record::parse(
            r#"{"_id":"a","_ts":1764140245123,"_host":"h1","_app":"nginx","level":"ERROR","_line":"GET /x 500"}"#,
        )
        .unwrap();
        let f = |edit: &dyn Fn(&mut Filter)| {
            let mut filter = Filter::default();
            edit(&mut filter);
            filter.keeps(&line)
        };
        assert!(f(&|_| {}));
        assert!(f(&|x| x.levels = vec!["error".into()]));
        assert!(!f(&|x| x.levels = vec!["info".into()]));
        assert!(f(&|x| x.hosts = vec!["h2".into(), "h1".into()]));
        assert!(!f(&|x| x.apps = vec!["api".into()]));
        assert!(f(&|x| x.grep = Some(Regex::new(" 5\\d\\d$").unwrap())));
        assert!(!f(&|x| x.since = Some(1_764_140_245_124)));
        assert!(f(&|x| x.since = Some(1_764_140_245_123)));
        assert!(!f(&|x| x.until = Some(1_764_140_245_123)));
        assert!(!f(&|x| {
            x.hosts = vec!["h1".into()];
            x.apps = vec!["api".into()];
        }));
    }
}
