//! Setting values written the way people write them (`6h`, `512MiB`,
//! `127.0.0.1:7280`), checked as the file is read so that an error points at
//! the line that holds the value.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements `Deserialize` (from a string, errors carry the value's position)
/// and `Serialize` (back to the string) through `FromStr` and `Display`.
macro_rules! text_value {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// A duration such as `6h`, `90m`, `30s`, `1h 30m` or `0s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn millis(self) -> i64 {
        self.0.as_millis().min(i64::MAX as u128) as i64
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(Self)
            .map_err(|_| format!("{text:?} is not a duration; write it like 6h, 90m, 30s or 0s"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}
text_value!(HumanDuration);

/// A size in bytes such as `512MiB`, `1GiB`, `64KiB` or `4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let err = || format!("{text:?} is not a size; write it like 32MiB, 1GiB or 4096");
        let v = text.trim();
        let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
        let (digits, unit) = v.split_at(split);
        let n: u64 = digits.parse().map_err(|_| err())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            "TiB" | "T" | "TB" => 1 << 40,
            _ => return Err(err()),
        };
        n.checked_mul(mult).map(Self).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (1u64 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in units {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}
text_value!(ByteSize);

/// A rate in bytes per second: a size, optionally followed by `/s` (`1MiB/s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate(pub u64);

impl FromStr for ByteRate {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let size = text.trim().strip_suffix("/s").unwrap_or(text);
        match size.parse::<ByteSize>() {
            Ok(ByteSize(0)) | Err(_) => Err(format!(
                "{text:?} is not a rate; write it like 1MiB/s or 256KiB/s (more than zero)"
            )),
            Ok(ByteSize(n)) => Ok(Self(n)),
        }
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", ByteSize(self.0))
    }
}
text_value!(ByteRate);

/// An address to listen on, `IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.trim().parse().map(Self).map_err(|_| {
            format!("{text:?} is not an address to listen on; write it like 127.0.0.1:7280 or [::1]:7280")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
text_value!(ListenAddr);

/// A gzip level, 0 (store) to 9 (smallest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GzipLevel(pub u32);

impl<'de> Deserialize<'de> for GzipLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let level = i64::deserialize(d)?;
        u32::try_from(level)
            .ok()
            .filter(|l| *l <= 9)
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom(format!("gzip level {level} is not 0 to 9")))
    }
}

/// Where object keys start: empty, or segments of `[A-Za-z0-9_.=-]` each
/// followed by `/`, none of them `.` or `..`; one segment may be `{host}`,
/// which stands for the host's name (`target.host_name`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPrefix(pub String);

pub use crate::hour::HOST_SEGMENT;

/// A segment of an object key: `[A-Za-z0-9_.=-]`, not empty, `.` or `..`.
pub fn is_key_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.=".contains(&b))
}

impl KeyPrefix {
    /// Whether the prefix has a `{host}` segment.
    pub fn has_host(&self) -> bool {
        self.0.contains(HOST_SEGMENT)
    }

    /// The prefix with its `{host}` segment (if any) replaced by `host`.
    pub fn for_host(&self, host: &str) -> String {
        self.0.replace(HOST_SEGMENT, host)
    }
}

impl FromStr for KeyPrefix {
    type Err = String;
    fn from_str(p: &str) -> Result<Self, String> {
        let valid = p.is_empty()
            || (p.ends_with('/')
                && p[..p.len() - 1]
                    .split('/')
                    .all(|seg| seg == HOST_SEGMENT || is_key_segment(seg))
                && p.matches(HOST_SEGMENT).count() <= 1);
        if valid {
            Ok(Self(p.to_owned()))
        } else {
            Err(format!("key prefix {p:?}: use letters, digits, '_', '-', '.', '=' and '/', end it with '/', no '.' or '..' segments, and {HOST_SEGMENT} at most once, as a whole segment"))
        }
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
text_value!(KeyPrefix);

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human text, with colours on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_values_parse_and_print_back() {
        assert_eq!(
            "6h".parse::<HumanDuration>().unwrap().millis(),
            6 * 3_600_000
        );
        assert!("soon".parse::<HumanDuration>().is_err());
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
        assert_eq!("1MiB/s".parse::<ByteRate>().unwrap().0, 1 << 20);
        assert_eq!("4096".parse::<ByteRate>().unwrap().0, 4096);
        assert!("0/s".parse::<ByteRate>().is_err());
        assert!("edge/eu-1/".parse::<KeyPrefix>().is_ok());
        assert!("../x/".parse::<KeyPrefix>().is_err());
        assert!("edge".parse::<KeyPrefix>().is_err());
        let per_host: KeyPrefix = "edge/{host}/".parse().unwrap();
        assert!(per_host.has_host());
        assert_eq!(per_host.for_host("shop-17"), "edge/shop-17/");
        assert!("{host}/".parse::<KeyPrefix>().is_ok());
        assert!("edge/{host}x/".parse::<KeyPrefix>().is_err());
        assert!("{host}/{host}/".parse::<KeyPrefix>().is_err());
        assert!(!"edge/".parse::<KeyPrefix>().unwrap().has_host());
        assert!("localhost:80".parse::<ListenAddr>().is_err());
    }
}
