//! Settings: the embedded defaults, overridden by a TOML file, overridden by
//! command-line flags. Everything is checked here, before anything starts.
//!
//! ```toml
//! data = "data"                    # spool and (by default) archive live here
//! listen = "127.0.0.1:7280"        # ingest listener
//! target = "data/archive"          # archive directory (default: <data>/archive)
//! late_window = "6h"               # how long an hour stays open after it ends
//! follow_up_after = "1h"           # how long a follow-up part stays open
//! max_clock_skew = "5m"            # timestamps further ahead are not believed
//! gzip_level = 6
//! key_prefix = ""                  # optional, stands before year=, ends in '/'
//! cache_size = "8MiB"              # sled page cache (block references, part records)
//! retry_max_delay = "5m"           # longest wait between upload attempts
//! ledger_keep = "30d"              # how long `larch verify` can check an upload
//! spool_max_size = "10GiB"         # optional: refuse lines (507) past this spool size
//! min_free_space = "256MiB"        # refuse lines before the disk has less free
//! single_writer = false            # see below
//!
//! [keys]                           # ingestion key = account
//! "my-secret-key" = "acme"
//!
//! [s3]                             # options of an s3:// target (also [gcs], [azure])
//! region = "eu-west-1"
//!
//! [[rules.exclude]]                # lines never archived; see `rules`
//! app = "nginx"
//! regex = "GET /health"
//!
//! [[sources.files]]                # files to tail; see `tail`
//! account = "acme"
//! include = ["/var/log/app/*.log"]
//! ```
//!
//! `single_writer = true` lets larch use a store that cannot refuse to overwrite
//! an object: it then checks for an object before each write, which is safe only
//! if no other writer uses the same prefix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::account::{AccountId, InvalidAccountId};
use crate::ingest::auth::{KeyError, Keys};
use crate::rules::{RuleError, Rules, RulesConfig};
use crate::seal::SealRule;
use crate::spool::RoomLimits;
use crate::tail::{FileSource, SourceError, SourcesConfig};
use crate::target::TargetConfig;

/// The key `larch run` accepts when no key is configured, for trying it out.
pub const DEMO_KEY: &str = "larch-demo-key";
pub const DEMO_ACCOUNT: &str = "demo";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7280";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what}: {value:?} is not a duration; write it like 6h, 90m, 30s or 0s")]
    Duration { what: &'static str, value: String },
    #[error("{what}: {value:?} is not a size; write it like 32MiB or 1GiB")]
    Size { what: &'static str, value: String },
    #[error("listen: {0:?} is not an address; write it like 127.0.0.1:7280")]
    Listen(String),
    #[error("gzip_level must be 0 to 9, not {0}")]
    GzipLevel(u32),
    #[error("key_prefix {0:?}: use letters, digits, '_', '-', '.', '=' and '/', end it with '/', and no '.' or '..' segments")]
    KeyPrefix(String),
    #[error("[{table}] {key}: give a string, a number or true/false")]
    StoreOption { table: &'static str, key: String },
    #[error("--key #{0} is not of the form KEY=ACCOUNT")]
    KeyFlag(usize),
    #[error("{0}")]
    Account(#[from] InvalidAccountId),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("{0}")]
    Rules(#[from] RuleError),
    #[error("{0}")]
    Source(#[from] SourceError),
}

/// The TOML file, as written. Unknown keys are errors, so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub target: Option<String>,
    pub late_window: Option<String>,
    pub follow_up_after: Option<String>,
    pub max_clock_skew: Option<String>,
    pub gzip_level: Option<u32>,
    pub key_prefix: Option<String>,
    pub cache_size: Option<String>,
    pub retry_max_delay: Option<String>,
    pub ledger_keep: Option<String>,
    pub spool_max_size: Option<String>,
    pub min_free_space: Option<String>,
    pub single_writer: Option<bool>,
    pub keys: Option<BTreeMap<String, String>>,
    pub s3: Option<BTreeMap<String, toml::Value>>,
    pub gcs: Option<BTreeMap<String, toml::Value>>,
    pub azure: Option<BTreeMap<String, toml::Value>>,
    pub rules: Option<RulesConfig>,
    pub sources: Option<SourcesConfig>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Flags that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub target: Option<String>,
    pub late_window: Option<String>,
    pub follow_up_after: Option<String>,
    /// `KEY=ACCOUNT` pairs; given at all, they replace the file's keys.
    pub keys: Vec<String>,
}

/// Everything the daemon needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub target: TargetConfig,
    pub seal: SealRule,
    pub max_skew_ms: i64,
    pub gzip_level: u32,
    pub key_prefix: String,
    pub cache_bytes: u64,
    /// Cap of the upload backoff; also how often a paused upload is re-checked (at most 30 s).
    pub retry_max_delay: Duration,
    /// How long the spool's ledger remembers an uploaded object.
    pub ledger_keep: Duration,
    /// When the spool refuses new lines.
    pub room: RoomLimits,
    pub keys: Keys,
    /// Whether the demo key is in use because none was configured.
    pub demo_key: bool,
    /// Which lines are archived at all, shared by every source.
    pub rules: Arc<Rules>,
    /// `[[sources.files]]`: files to tail.
    pub file_sources: Vec<FileSource>,
}

fn duration_ms(what: &'static str, value: &str) -> Result<i64, ConfigError> {
    humantime::parse_duration(value.trim())
        .map(|d: Duration| d.as_millis().min(i64::MAX as u128) as i64)
        .map_err(|_| ConfigError::Duration {
            what,
            value: value.to_owned(),
        })
}

fn size_bytes(what: &'static str, value: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::Size {
        what,
        value: value.to_owned(),
    };
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

fn valid_prefix(p: &str) -> bool {
    p.is_empty()
        || (p.ends_with('/')
            && p[..p.len() - 1].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.=".contains(&b))
            }))
}

/// A store's option table as strings, the form `object_store` takes them in.
fn store_options(
    table: &'static str,
    options: Option<BTreeMap<String, toml::Value>>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    options
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return Err(ConfigError::StoreOption { table, key }),
            };
            Ok((key, text))
        })
        .collect()
}

impl Settings {
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let data_dir = flags
            .data
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from("data"));
        let listen_text = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text
            .parse()
            .map_err(|_| ConfigError::Listen(listen_text.clone()))?;
        let target = TargetConfig {
            url: flags
                .target
                .or(file.target)
                .unwrap_or_else(|| data_dir.join("archive").to_string_lossy().into_owned()),
            s3: store_options("s3", file.s3)?,
            gcs: store_options("gcs", file.gcs)?,
            azure: store_options("azure", file.azure)?,
            single_writer: file.single_writer.unwrap_or(false),
        };
        let late_window_ms = duration_ms(
            "late_window",
            flags
                .late_window
                .or(file.late_window)
                .as_deref()
                .unwrap_or("6h"),
        )?;
        let follow_up_after_ms = duration_ms(
            "follow_up_after",
            flags
                .follow_up_after
                .or(file.follow_up_after)
                .as_deref()
                .unwrap_or("1h"),
        )?;
        let max_skew_ms = duration_ms(
            "max_clock_skew",
            file.max_clock_skew.as_deref().unwrap_or("5m"),
        )?;
        let gzip_level = file.gzip_level.unwrap_or(6);
        if gzip_level > 9 {
            return Err(ConfigError::GzipLevel(gzip_level));
        }
        let key_prefix = file.key_prefix.unwrap_or_default();
        if !valid_prefix(&key_prefix) {
            return Err(ConfigError::KeyPrefix(key_prefix));
        }
        let cache_bytes = size_bytes("cache_size", file.cache_size.as_deref().unwrap_or("8MiB"))?;
        let retry_max_ms = duration_ms(
            "retry_max_delay",
            file.retry_max_delay.as_deref().unwrap_or("5m"),
        )?;
        let retry_max_delay = Duration::from_millis(retry_max_ms.max(1000) as u64);
        let room = RoomLimits {
            max_bytes: file
                .spool_max_size
                .as_deref()
                .map(|v| size_bytes("spool_max_size", v))
                .transpose()?,
            min_free_bytes: match file.min_free_space.as_deref() {
                Some(v) => size_bytes("min_free_space", v)?,
                None => RoomLimits::default().min_free_bytes,
            },
        };
        let ledger_keep = Duration::from_millis(duration_ms(
            "ledger_keep",
            file.ledger_keep.as_deref().unwrap_or("30d"),
        )? as u64);

        let mut pairs = Vec::new();
        if flags.keys.is_empty() {
            for (key, account) in file.keys.unwrap_or_default() {
                pairs.push((key, AccountId::parse(&account)?));
            }
        } else {
            for (i, flag) in flags.keys.iter().enumerate() {
                let (key, account) = flag.split_once('=').ok_or(ConfigError::KeyFlag(i + 1))?;
                pairs.push((key.to_owned(), AccountId::parse(account)?));
            }
        }
        let demo_key = pairs.is_empty();
        if demo_key {
            pairs.push((DEMO_KEY.to_owned(), AccountId::parse(DEMO_ACCOUNT)?));
        }
        Ok(Self {
            data_dir,
            listen,
            target,
            seal: SealRule {
                late_window_ms,
                follow_up_after_ms,
            },
            max_skew_ms,
            gzip_level,
            key_prefix,
            cache_bytes,
            retry_max_delay,
            ledger_keep,
            room,
            keys: Keys::new(pairs)?,
            demo_key,
            rules: Arc::new(Rules::new(file.rules.unwrap_or_default())?),
            file_sources: FileSource::all(file.sources.unwrap_or_default())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(toml_text: &str) -> FileConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_run_out_of_the_box() {
        let s = Settings::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.seal, SealRule::default());
        assert!(s.demo_key);
        assert_eq!(s.keys.account(DEMO_KEY).unwrap().as_str(), DEMO_ACCOUNT);
        assert_eq!(PathBuf::from(&s.target.url), PathBuf::from("data/archive"));
        assert!(!s.target.single_writer);
    }

    #[test]
    fn flags_override_the_file() {
        let f = file("late_window = \"2h\"\nlisten = \"127.0.0.1:9\"\n[keys]\nk1 = \"acme\"\n");
        let s = Settings::resolve(
            f,
            Overrides {
                late_window: Some("0s".into()),
                keys: vec!["k2=other".into()],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.seal.late_window_ms, 0);
        assert_eq!(s.listen.port(), 9);
        assert!(s.keys.account("k1").is_none());
        assert_eq!(s.keys.account("k2").unwrap().as_str(), "other");
        assert!(!s.demo_key);
    }

    #[test]
    fn bad_accounts_stop_start_up() {
        let err =
            Settings::resolve(file("[keys]\nk = \"../etc\"\n"), Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("invalid account ID \"../etc\""),
            "{err}"
        );
        let err = Settings::resolve(
            FileConfig::default(),
            Overrides {
                keys: vec!["k=a.b".into()],
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Account(_)));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        assert!(toml::from_str::<FileConfig>("late_windw = \"1h\"")
            .unwrap_err()
            .to_string()
            .contains("late_windw"));
        let err =
            Settings::resolve(file("late_window = \"soon\""), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("late_window"));
        let err =
            Settings::resolve(file("key_prefix = \"../x/\""), Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::KeyPrefix(_)));
        assert!(
            Settings::resolve(file("key_prefix = \"edge/eu-1/\""), Overrides::default()).is_ok()
        );
        assert_eq!(size_bytes("x", "32MiB").unwrap(), 32 << 20);
    }
}
