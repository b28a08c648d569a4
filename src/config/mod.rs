//! Settings: the embedded defaults, overridden by a TOML file, by
//! `LARCH_<SECTION>_<KEY>` environment variables, then by flags ([`layers`]).
//! Everything is checked here, before anything starts; `larch validate` runs
//! exactly this. [`DEFAULT_CONFIG`] (`larch config --default`) documents every
//! setting. Secrets (ingestion keys, store credentials) are never shown, in
//! output or in errors ([`redact`]).
//!
//! `target.single_writer = true` lets larch use a store that cannot refuse to
//! overwrite an object: it then checks for an object before each write, which
//! is safe only if no other writer uses the same prefix.
//!
//! (Over 500 lines with its tests, which take half of it.)

pub mod file;
pub mod layers;
pub mod redact;
pub mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::account::{AccountId, InvalidAccountId};
use crate::ingest::auth::{KeyError, Keys};
use crate::ingest::listen::ListenLimits;
use crate::ingest::tls::TlsFiles;
use crate::journald::{JournalSource, JournaldConfigError};
use crate::rules::{RuleError, Rules};
use crate::spool::RoomLimits;
use crate::spool::SealRule;
use crate::store::TargetConfig;
use crate::syslog::{SyslogConfigError, SyslogListener};
use crate::tail::{FileSource, SourceError};

pub use file::FileConfig;
pub use layers::{Loaded, Override, SEARCH_PATH};
pub use values::LogFormat;

/// The fully commented default configuration: every setting, its default and what it does.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The key `larch run` accepts when no key is configured, for trying it out.
pub const DEMO_KEY: &str = "larch-demo-key";
pub const DEMO_ACCOUNT: &str = "demo";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7280";
/// Memory all ingest requests may hold at once: room for the largest request
/// and many ordinary ones beside it.
pub const DEFAULT_MAX_REQUEST_MEMORY: u64 = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Override { origin: String, message: String },
    #[error("[{table}] {key}: give a string, a number or true/false")]
    StoreOption { table: &'static str, key: String },
    #[error(
        "ingest.max_connections is 0: no client could connect. Give at least 1 (default 1024)."
    )]
    NoConnections,
    #[error("ingest.tls_cert and ingest.tls_key go together; give both or neither")]
    HalfTls,
    #[error("refusing to listen on {0} without TLS: ingestion keys would cross the network in clear text. Set ingest.tls_cert and ingest.tls_key, listen on a loopback address, or pass --insecure-listen (ingest.insecure_listen = true) if something else encrypts the link.")]
    InsecureListen(SocketAddr),
    #[error("refusing to listen on {0} with no ingestion keys configured: the demo key {DEMO_KEY:?} is public, so anyone who reaches {0} could write lines with it. Configure keys in [keys] (\"a-long-random-key\" = \"account\"), LARCH_KEYS=\"KEY=ACCOUNT\" or --key KEY=ACCOUNT; the demo key is only for a loopback listener.")]
    DemoKeyOffLoopback(SocketAddr),
    #[error("target.key_prefix has {{host}}, but {name:?} cannot stand in an object key: set target.host_name to 1 to 128 of A-Z, a-z, 0-9, '_', '-', '.' and '=', unique in the fleet")]
    HostName { name: String },
    #[error("{0}")]
    Account(#[from] InvalidAccountId),
    #[error("[keys] entry #{0} (counting in key order): invalid account ID: use 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'; entries are \"KEY\" = \"ACCOUNT\" (the value is not shown: it may be a key)")]
    KeyAccount(usize),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("{0}")]
    Rules(#[from] RuleError),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Syslog(#[from] SyslogConfigError),
    #[error("{0}")]
    Journald(#[from] JournaldConfigError),
}

/// Everything the daemon needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// TLS on the ingest listener, if configured.
    pub tls: Option<TlsFiles>,
    /// Connection cap and timeouts of every listener.
    pub listen_limits: ListenLimits,
    /// Memory all ingest requests together may hold (a request past it waits, then gets 503).
    pub max_request_memory: u64,
    /// A second address serving only `/metrics`, `/health` and `/ready`.
    pub metrics_listen: Option<SocketAddr>,
    pub target: TargetConfig,
    pub seal: SealRule,
    pub max_skew_ms: i64,
    pub gzip_level: u32,
    /// This host's key prefix, `{host}` replaced by its name.
    pub key_prefix: String,
    /// The key prefix as configured: restore reads every host's prefix when it
    /// has a `{host}` segment.
    pub key_prefix_pattern: String,
    /// About how many hosts archive the same accounts under this target and
    /// prefix at once (`sync::number` spreads their first picks of `.N`).
    pub fleet_size: u32,
    pub cache_bytes: u64,
    /// Cap of the upload backoff; also how often a paused upload is re-checked (at most 30 s).
    pub retry_max_delay: Duration,
    /// How long the spool's ledger remembers an uploaded object.
    pub ledger_keep: Duration,
    /// When the spool refuses new lines.
    pub room: RoomLimits,
    pub keys: Keys,
    /// Whether the demo key is in use because none was configured (only ever
    /// with a loopback listener).
    pub demo_key: bool,
    /// Which lines are archived at all, shared by every source.
    pub rules: Arc<Rules>,
    /// `[[sources.files]]`: files to tail.
    pub file_sources: Vec<FileSource>,
    /// `[[sources.syslog]]`: syslog listeners.
    pub syslog_sources: Vec<SyslogListener>,
    /// `[[sources.journald]]`: journals followed.
    pub journal_sources: Vec<JournalSource>,
    /// `RUST_LOG`-style filter, when `RUST_LOG` itself is not set.
    pub log_level: String,
    pub log_format: LogFormat,
}

/// This machine's host name (`uname -n`), for a `{host}` in `target.key_prefix`.
fn system_host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
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

/// Ingestion keys from `[keys]`, or the demo key when there are none.
fn keys_of(keys: Option<BTreeMap<String, String>>) -> Result<(Keys, bool), ConfigError> {
    let mut pairs = Vec::new();
    for (n, (key, account)) in keys.unwrap_or_default().into_iter().enumerate() {
        // A key and its account written the wrong way round would put the
        // key in this message: the entry is named by its place instead.
        let account = AccountId::parse(&account).map_err(|_| ConfigError::KeyAccount(n + 1))?;
        pairs.push((key, account));
    }
    let demo_key = pairs.is_empty();
    if demo_key {
        pairs.push((DEMO_KEY.to_owned(), AccountId::parse(DEMO_ACCOUNT)?));
    }
    Ok((Keys::new(pairs)?, demo_key))
}

impl Settings {
    pub fn resolve(file: FileConfig) -> Result<Self, ConfigError> {
        let (spool, ingest, target, log) = (file.spool, file.ingest, file.target, file.log);
        let data_dir = spool.dir.unwrap_or_else(|| PathBuf::from("data"));
        let listen = match ingest.listen {
            Some(addr) => addr.0,
            None => SocketAddr::from(([127, 0, 0, 1], 7280)),
        };
        let tls = match (ingest.tls_cert, ingest.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(ConfigError::HalfTls),
        };
        if tls.is_none() && !listen.ip().is_loopback() && !ingest.insecure_listen.unwrap_or(false) {
            return Err(ConfigError::InsecureListen(listen));
        }
        let limit_default = ListenLimits::default();
        let timeout = |d: Option<values::HumanDuration>, default: Duration| {
            d.map_or(default, |d| d.0.max(Duration::from_millis(100)))
        };
        let listen_limits = ListenLimits {
            max_connections: match ingest.max_connections {
                Some(0) => return Err(ConfigError::NoConnections),
                Some(n) => n,
                None => limit_default.max_connections,
            },
            header_timeout: timeout(ingest.header_timeout, limit_default.header_timeout),
            idle_timeout: timeout(ingest.idle_timeout, limit_default.idle_timeout),
            body_timeout: timeout(ingest.body_timeout, limit_default.body_timeout),
        };
        let max_request_memory = ingest
            .max_request_memory
            .map_or(DEFAULT_MAX_REQUEST_MEMORY, |s| s.0)
            .max(crate::ingest::budget::LARGEST_REQUEST);
        let target_config = TargetConfig {
            url: target
                .url
                .unwrap_or_else(|| data_dir.join("archive").to_string_lossy().into_owned()),
            s3: store_options("s3", file.s3)?,
            gcs: store_options("gcs", file.gcs)?,
            azure: store_options("azure", file.azure)?,
            single_writer: target.single_writer.unwrap_or(false),
            upload_rate_limit: target.upload_rate_limit.map(|r| r.0),
            local_group_read: target.local_group_read.unwrap_or(false),
        };
        let millis =
            |d: Option<values::HumanDuration>, default: i64| d.map_or(default, |d| d.millis());
        let room = RoomLimits {
            max_bytes: spool.max_size.map(|s| s.0),
            min_free_bytes: spool
                .min_free_space
                .map_or(RoomLimits::default().min_free_bytes, |s| s.0),
        };
        let key_prefix_pattern = target.key_prefix.unwrap_or_default();
        let key_prefix = if key_prefix_pattern.has_host() {
            let name = target.host_name.clone().unwrap_or_else(system_host_name);
            if name.len() > 128 || !values::is_key_segment(&name) {
                return Err(ConfigError::HostName { name });
            }
            key_prefix_pattern.for_host(&name)
        } else {
            key_prefix_pattern.0.clone()
        };
        let (keys, demo_key) = keys_of(file.keys)?;
        let max_skew_ms = millis(ingest.max_clock_skew, 5 * 60_000);
        let sources = file.sources.unwrap_or_default();
        // The demo key is printed in every README: fine for trying larch on
        // this machine, an open door on any other address.
        if demo_key && !listen.ip().is_loopback() {
            return Err(ConfigError::DemoKeyOffLoopback(listen));
        }
        Ok(Self {
            data_dir,
            listen,
            tls,
            listen_limits,
            max_request_memory,
            metrics_listen: file.metrics.listen.map(|a| a.0),
            target: target_config,
            seal: SealRule {
                late_window_ms: millis(spool.late_window, SealRule::default().late_window_ms),
                follow_up_after_ms: millis(
                    spool.follow_up_after,
                    SealRule::default().follow_up_after_ms,
                ),
            },
            max_skew_ms,
            gzip_level: target.gzip_level.map_or(6, |l| l.0),
            key_prefix,
            key_prefix_pattern: key_prefix_pattern.0,
            fleet_size: target.fleet_size.unwrap_or(1).max(1),
            cache_bytes: spool.cache_size.map_or(8 << 20, |s| s.0),
            retry_max_delay: Duration::from_millis(
                millis(target.retry_max_delay, 5 * 60_000).max(1000) as u64,
            ),
            ledger_keep: Duration::from_millis(millis(target.ledger_keep, 30 * 86_400_000) as u64),
            room,
            keys,
            demo_key,
            rules: Arc::new(Rules::new(file.rules.unwrap_or_default())?),
            file_sources: FileSource::all(sources.files)?,
            syslog_sources: SyslogListener::all(sources.syslog, max_skew_ms)?,
            journal_sources: JournalSource::all(sources.journald, max_skew_ms)?,
            log_level: log.level.unwrap_or_else(|| "info".into()),
            log_format: log.format.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(
        text: &str,
        env: &[(&str, &str)],
        flags: Vec<Override>,
    ) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("larch.toml");
        std::fs::write(&path, text).unwrap();
        let env = Override::from_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::resolve(Loaded::load(Some(&path), env, flags)?.config)
    }

    fn defaults() -> Settings {
        Settings::resolve(FileConfig::default()).unwrap()
    }

    #[test]
    fn defaults_run_out_of_the_box() {
        let s = defaults();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.seal, SealRule::default());
        assert!(s.demo_key);
        assert_eq!(s.keys.account(DEMO_KEY).unwrap().as_str(), DEMO_ACCOUNT);
        assert_eq!(PathBuf::from(&s.target.url), PathBuf::from("data/archive"));
        assert!(!s.target.single_writer);
        assert_eq!(s.target.upload_rate_limit, None);
        assert!(!s.target.local_group_read);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn the_commented_default_config_is_the_defaults() {
        let file: FileConfig = toml::from_str(DEFAULT_CONFIG).unwrap();
        let (a, b) = (Settings::resolve(file).unwrap(), defaults());
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        // Every setting the schema knows is documented, set or commented out.
        for key in [
            "dir",
            "late_window",
            "follow_up_after",
            "cache_size",
            "max_size",
            "min_free_space",
            "listen",
            "max_clock_skew",
            "tls_cert",
            "tls_key",
            "insecure_listen",
            "max_connections",
            "header_timeout",
            "idle_timeout",
            "body_timeout",
            "max_request_memory",
            "url",
            "key_prefix",
            "host_name",
            "single_writer",
            "fleet_size",
            "gzip_level",
            "retry_max_delay",
            "upload_rate_limit",
            "ledger_keep",
            "local_group_read",
            "level",
            "format",
            "[keys]",
            "[s3]",
            "[[rules.exclude]]",
            "[[sources.files]]",
            "[[sources.syslog]]",
            "[[sources.journald]]",
            "matches",
            "idle_timeout",
            "max_message",
            "follow_symlinks",
        ] {
            assert!(DEFAULT_CONFIG.contains(key), "{key} is not documented");
        }
    }

    #[test]
    fn the_file_loses_to_the_environment_which_loses_to_flags() {
        let file = "[spool]\nlate_window = \"2h\"\nfollow_up_after = \"30m\"\n\
                    [target]\ngzip_level = 3\nretry_max_delay = \"10s\"\n[keys]\nk1 = \"acme\"\n";
        let s = with_file(file, &[], vec![]).unwrap();
        assert_eq!(s.seal.late_window_ms, 2 * 3_600_000);
        assert_eq!(s.gzip_level, 3);
        assert_eq!(s.keys.account("k1").unwrap().as_str(), "acme");

        let env = [
            ("LARCH_SPOOL_LATE_WINDOW", "1h"),
            ("LARCH_TARGET_GZIP_LEVEL", "9"),
            ("LARCH_KEYS", "k2=beta k3==gamma"),
            ("LARCH_KEY", "not-a-setting"),
            ("LARCH_CLOCK_OFFSET_FILE", "not-a-setting"),
        ];
        let s = with_file(file, &env, vec![]).unwrap();
        assert_eq!(s.seal.late_window_ms, 3_600_000);
        assert_eq!(
            s.seal.follow_up_after_ms,
            30 * 60_000,
            "the file's value stays"
        );
        assert_eq!(s.gzip_level, 9);
        assert!(s.keys.account("k1").is_none());
        assert_eq!(s.keys.account("k2").unwrap().as_str(), "beta");
        assert_eq!(s.keys.account("k3=").unwrap().as_str(), "gamma");

        let flags = vec![
            Override::flag("--late-window", "spool.late_window", "0s"),
            Override::parse_set("target.gzip_level=1").unwrap(),
            Override::flag("--key", "keys", "k4=delta"),
        ];
        let s = with_file(file, &env, flags).unwrap();
        assert_eq!(s.seal.late_window_ms, 0);
        assert_eq!(s.gzip_level, 1);
        assert_eq!(s.retry_max_delay, Duration::from_secs(10));
        assert_eq!(s.keys.account("k4").unwrap().as_str(), "delta");
        assert!(s.keys.account("k2").is_none());
    }

    #[test]
    fn a_host_segment_in_the_key_prefix_becomes_the_host_name() {
        let s = with_file(
            "[target]\nkey_prefix = \"edge/{host}/\"\nhost_name = \"shop-17\"\n",
            &[],
            vec![],
        )
        .unwrap();
        assert_eq!(s.key_prefix, "edge/shop-17/");
        assert_eq!(s.key_prefix_pattern, "edge/{host}/");
        let s = with_file("[target]\nkey_prefix = \"{host}/\"\n", &[], vec![]).unwrap();
        assert_eq!(s.key_prefix, format!("{}/", system_host_name()));
        let err = with_file(
            "[target]\nkey_prefix = \"{host}/\"\nhost_name = \"../up\"\n",
            &[],
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"../up\"") && err.contains("host_name"),
            "{err}"
        );
        // Without {host}, host_name changes nothing.
        let s = with_file(
            "[target]\nkey_prefix = \"edge/\"\nhost_name = \"x\"\n",
            &[],
            vec![],
        )
        .unwrap();
        assert_eq!(s.key_prefix, s.key_prefix_pattern);
    }

    #[test]
    fn bad_values_name_their_line_variable_or_flag() {
        let err = with_file("[spool]\n\nlate_windw = \"1h\"\n", &[], vec![]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("line 3") && text.contains("late_windw"),
            "{text}"
        );
        let err = with_file(
            "[target]\ngzip_level = 4\nretry_max_delay = \"soon\"\n",
            &[],
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 3") && err.contains("\"soon\" is not a duration"),
            "{err}"
        );
        let err = with_file("", &[("LARCH_SPOOL_MIN_FREE_SPACE", "lots")], vec![])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("LARCH_SPOOL_MIN_FREE_SPACE: spool.min_free_space"),
            "{err}"
        );
        let err = with_file("", &[("LARCH_SPOOL_LATE_WINDW", "1h")], vec![])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("LARCH_SPOOL_LATE_WINDW") && err.contains("late_windw"),
            "{err}"
        );
        let err = with_file(
            "",
            &[],
            vec![Override::parse_set("target.gzip_level=11").unwrap()],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--set target.gzip_level") && err.contains("not 0 to 9"),
            "{err}"
        );
        let err = with_file("[target]\nkey_prefix = \"../x/\"\n", &[], vec![]).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn bad_accounts_stop_start_up() {
        let err = with_file("[keys]\nk = \"../etc\"\n", &[], vec![]).unwrap_err();
        assert!(
            err.to_string().contains("[keys] entry #1")
                && err.to_string().contains("invalid account ID")
                && !err.to_string().contains("../etc"),
            "{err}"
        );
        let err = with_file("", &[], vec![Override::flag("--key", "keys", "k=a.b")]).unwrap_err();
        assert!(matches!(err, ConfigError::KeyAccount(1)), "{err}");
    }

    #[test]
    fn a_network_listener_needs_tls_or_an_explicit_opt_out() {
        let open = "[keys]\nk = \"acme\"\n[ingest]\nlisten = \"0.0.0.0:7280\"\n";
        let err = with_file(open, &[], vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::InsecureListen(_)), "{err}");
        assert!(with_file(
            open,
            &[],
            vec![Override::flag(
                "--insecure-listen",
                "ingest.insecure_listen",
                "true"
            )]
        )
        .is_ok());
        let tls = format!("{open}tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
        assert!(with_file(&tls, &[], vec![]).unwrap().tls.is_some());
        let half = format!("{open}tls_cert = \"c.pem\"\n");
        assert!(matches!(
            with_file(&half, &[], vec![]).unwrap_err(),
            ConfigError::HalfTls
        ));
    }

    #[test]
    fn listener_limits_are_read_and_checked() {
        let s = with_file(
            "[ingest]\nmax_connections = 10\nheader_timeout = \"3s\"\nidle_timeout = \"0s\"\n\
             body_timeout = \"2m\"\nmax_request_memory = \"1MiB\"\n",
            &[],
            vec![],
        )
        .unwrap();
        assert_eq!(s.listen_limits.max_connections, 10);
        assert_eq!(s.listen_limits.header_timeout, Duration::from_secs(3));
        // A zero timeout would close every connection at once: the floor is 100 ms.
        assert_eq!(s.listen_limits.idle_timeout, Duration::from_millis(100));
        assert_eq!(s.listen_limits.body_timeout, Duration::from_secs(120));
        // Never less than the largest request needs.
        assert_eq!(s.max_request_memory, crate::ingest::budget::LARGEST_REQUEST);
        let err = with_file("[ingest]\nmax_connections = 0\n", &[], vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::NoConnections), "{err}");
    }

    #[test]
    fn a_set_whose_path_is_not_a_setting_is_not_quoted() {
        for given in ["SECRETKEY", "SECRETKEY==", "Abc+/xyz=value"] {
            let err = Override::parse_set(given).unwrap_err().to_string();
            assert!(!err.contains("SECRET") && !err.contains("Abc"), "{err}");
        }
        let err = Override::parse_set("spool.late_windw")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spool.late_windw"),
            "a setting's name is shown: {err}"
        );
    }

    #[test]
    fn a_key_written_where_its_account_goes_is_not_printed() {
        let err = with_file("[keys]\nacme = \"a secret key with spaces\"\n", &[], vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[keys] entry #1"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn the_demo_key_is_for_a_loopback_listener_only() {
        let keyless = "[ingest]\nlisten = \"0.0.0.0:7280\"\ninsecure_listen = true\n";
        let err = with_file(keyless, &[], vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::DemoKeyOffLoopback(_)), "{err}");
        assert!(err.to_string().contains("[keys]"), "{err}");
        let tls = "[ingest]\nlisten = \"[::]:7280\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        assert!(matches!(
            with_file(tls, &[], vec![]).unwrap_err(),
            ConfigError::DemoKeyOffLoopback(_)
        ));
        let keyed = with_file(keyless, &[("LARCH_KEYS", "k=acme")], vec![]).unwrap();
        assert!(!keyed.demo_key);
        assert!(keyed.keys.account(DEMO_KEY).is_none());
        let local = with_file("[ingest]\nlisten = \"[::1]:7280\"\n", &[], vec![]).unwrap();
        assert!(local.demo_key);
    }
}
