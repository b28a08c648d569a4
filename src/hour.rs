//! UTC hours and the object names they map to (docs/FORMAT.md §1).
//!
//! An hour is counted from the Unix epoch, so it orders and compares as an
//! integer and turns into a calendar date only when a name is printed.

use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::account::AccountId;
use crate::clock::EpochMs;

pub const HOUR_MS: i64 = 3_600_000;

/// A UTC hour: `floor(epoch_ms / 1h)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hour(pub i64);

impl Hour {
    pub fn of(ts: EpochMs) -> Self {
        Self(ts.div_euclid(HOUR_MS))
    }

    pub fn start_ms(self) -> EpochMs {
        self.0 * HOUR_MS
    }

    pub fn end_ms(self) -> EpochMs {
        self.start_ms() + HOUR_MS
    }

    fn datetime(self) -> DateTime<Utc> {
        // Hours outside chrono's range cannot come from a validated timestamp.
        DateTime::from_timestamp(self.0 * 3600, 0).unwrap_or(DateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Hour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.datetime().format("%Y-%m-%dT%H:00Z"))
    }
}

/// The key prefix segment that stands for a host's name (`edge/{host}/`): each
/// host writes under its own, and restore reads them all.
pub const HOST_SEGMENT: &str = "{host}";

/// The object key of part `n` of an account's hour: `n == 0` is the first object,
/// later ones carry `.n` (docs/FORMAT.md §1). `prefix` is the optional user key prefix.
pub fn object_key(prefix: &str, account: &AccountId, hour: Hour, n: u32) -> String {
    let t = hour.datetime();
    let (y, m, d, h) = (t.year(), t.month(), t.day(), t.hour());
    let part = if n == 0 {
        String::new()
    } else {
        format!(".{n}")
    };
    format!("{prefix}year={y:04}/month={m:02}/day={d:02}/{account}.{y:04}-{m:02}-{d:02}.{h:02}00{part}.json.gz")
}

/// What an archive object's name says: whose lines, which hour, which part.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectName {
    pub hour: Hour,
    pub n: u32,
    pub account: AccountId,
}

impl ObjectName {
    /// Reads the last segment of a key, `<account>.<YYYY>-<MM>-<DD>.<HH>00[.<N>].json.gz`;
    /// `None` for anything else (other files, temporary uploads).
    pub fn parse(key: &str) -> Option<Self> {
        let name = key.rsplit('/').next()?.strip_suffix(".json.gz")?;
        let mut fields = name.split('.');
        let account = AccountId::parse(fields.next()?).ok()?;
        let date = chrono::NaiveDate::parse_from_str(fields.next()?, "%Y-%m-%d").ok()?;
        let hh: u32 = fields.next()?.strip_suffix("00")?.parse().ok()?;
        let n = match fields.next() {
            None => 0,
            Some(n) if !n.starts_with('0') => n.parse().ok()?,
            Some(_) => return None,
        };
        if fields.next().is_some() || hh > 23 {
            return None;
        }
        let start = date.and_hms_opt(hh, 0, 0)?.and_utc().timestamp_millis();
        Some(Self {
            hour: Hour::of(start),
            n,
            account,
        })
    }
}

/// The key prefix of a UTC day's objects: `<prefix>year=YYYY/month=MM/day=DD/`.
pub fn day_prefix(prefix: &str, hour: Hour) -> String {
    let t = hour.datetime();
    format!(
        "{prefix}year={:04}/month={:02}/day={:02}/",
        t.year(),
        t.month(),
        t.day()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> EpochMs {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn key_at(ts: &str, n: u32) -> String {
        object_key("", &AccountId::parse("acme").unwrap(), Hour::of(ms(ts)), n)
    }

    #[test]
    fn object_names_parse_back() {
        let acme = AccountId::parse("acme").unwrap();
        for (ts, n) in [("2026-11-26T07:59:59Z", 0), ("2027-01-01T00:00:00Z", 12)] {
            let hour = Hour::of(ms(ts));
            let key = object_key("edge/", &acme, hour, n);
            assert_eq!(
                ObjectName::parse(&key),
                Some(ObjectName {
                    hour,
                    n,
                    account: acme.clone()
                }),
                "{key}"
            );
            assert!(key.starts_with(&day_prefix("edge/", hour)));
        }
        for bad in [
            "year=2026/month=11/day=26/acme.2026-11-26.0700.json",
            "acme.2026-11-26.2400.json.gz",
            "acme.2026-11-26.0730.json.gz",
            "acme.2026-11-26.0700.01.json.gz",
            "acme.2026-11-26.0700.1.2.json.gz",
            "ac me.2026-11-26.0700.json.gz",
            "acme.2026-13-26.0700.json.gz",
            ".larch-upload/acme.2026-11-26.0700.json.gz.00ff",
        ] {
            assert_eq!(ObjectName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn hour_boundaries_belong_to_the_hour_they_start() {
        assert_eq!(
            key_at("2026-11-26T07:59:59.999Z", 0),
            "year=2026/month=11/day=26/acme.2026-11-26.0700.json.gz"
        );
        assert_eq!(
            key_at("2026-11-26T08:00:00.000Z", 0),
            "year=2026/month=11/day=26/acme.2026-11-26.0800.json.gz"
        );
    }

    #[test]
    fn day_month_and_year_roll_over() {
        assert_eq!(
            key_at("2026-12-31T23:30:00Z", 0),
            "year=2026/month=12/day=31/acme.2026-12-31.2300.json.gz"
        );
        assert_eq!(
            key_at("2027-01-01T00:00:00Z", 0),
            "year=2027/month=01/day=01/acme.2027-01-01.0000.json.gz"
        );
        assert_eq!(
            key_at("2026-04-30T23:59:59Z", 0),
            "year=2026/month=04/day=30/acme.2026-04-30.2300.json.gz"
        );
        assert_eq!(
            key_at("2026-05-01T00:00:00Z", 0),
            "year=2026/month=05/day=01/acme.2026-05-01.0000.json.gz"
        );
    }

    #[test]
    fn leap_day_exists_only_in_leap_years() {
        assert_eq!(
            key_at("2028-02-29T12:00:00Z", 0),
            "year=2028/month=02/day=29/acme.2028-02-29.1200.json.gz"
        );
        assert_eq!(
            key_at("2027-02-28T23:00:00Z", 0),
            "year=2027/month=02/day=28/acme.2027-02-28.2300.json.gz"
        );
        assert_eq!(
            object_key(
                "",
                &AccountId::parse("acme").unwrap(),
                Hour(Hour::of(ms("2027-02-28T23:00:00Z")).0 + 1),
                0
            ),
            "year=2027/month=03/day=01/acme.2027-03-01.0000.json.gz"
        );
    }

    #[test]
    fn later_parts_are_numbered_from_one() {
        assert_eq!(
            key_at("2026-11-26T08:15:00Z", 1),
            "year=2026/month=11/day=26/acme.2026-11-26.0800.1.json.gz"
        );
        assert_eq!(
            key_at("2026-11-26T08:15:00Z", 12),
            "year=2026/month=11/day=26/acme.2026-11-26.0800.12.json.gz"
        );
    }

    #[test]
    fn prefix_stands_before_year() {
        let k = object_key(
            "logs/edge/",
            &AccountId::parse("a").unwrap(),
            Hour::of(0),
            0,
        );
        assert_eq!(
            k,
            "logs/edge/year=1970/month=01/day=01/a.1970-01-01.0000.json.gz"
        );
    }

    #[test]
    fn hours_before_the_epoch_round_down() {
        assert_eq!(Hour::of(-1), Hour(-1));
        assert_eq!(Hour::of(HOUR_MS - 1), Hour(0));
    }
}
