//! The TOML file's shape: one table per section, every setting optional (the
//! defaults fill in). Unknown keys are errors, so a typo never passes silently.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::values::{
    ByteRate, ByteSize, GzipLevel, HumanDuration, KeyPrefix, ListenAddr, LogFormat,
};
use crate::journald::JournaldSourceConfig;
use crate::rules::RulesConfig;
use crate::syslog::SyslogSourceConfig;
use crate::tail::FileSourceConfig;

/// The option tables of the stores, passed to `object_store` as given.
pub const STORE_SECTIONS: &[&str] = &["s3", "gcs", "azure"];

/// The sections whose settings environment variables (`LARCH_<SECTION>_<KEY>`) can set.
pub const ENV_SECTIONS: &[&str] = &[
    "spool", "ingest", "target", "metrics", "log", "s3", "gcs", "azure",
];

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub spool: SpoolSection,
    #[serde(default)]
    pub ingest: IngestSection,
    #[serde(default)]
    pub target: TargetSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
    /// Ingestion key = account.
    pub keys: Option<BTreeMap<String, String>>,
    pub s3: Option<BTreeMap<String, toml::Value>>,
    pub gcs: Option<BTreeMap<String, toml::Value>>,
    pub azure: Option<BTreeMap<String, toml::Value>>,
    pub rules: Option<RulesConfig>,
    pub sources: Option<SourcesConfig>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    pub dir: Option<PathBuf>,
    pub late_window: Option<HumanDuration>,
    pub follow_up_after: Option<HumanDuration>,
    pub cache_size: Option<ByteSize>,
    pub max_size: Option<ByteSize>,
    pub min_free_space: Option<ByteSize>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    pub listen: Option<ListenAddr>,
    pub max_clock_skew: Option<HumanDuration>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_listen: Option<bool>,
    pub max_connections: Option<usize>,
    pub header_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub body_timeout: Option<HumanDuration>,
    pub max_request_memory: Option<ByteSize>,
}

/// The `[sources]` table as written: every source besides HTTP.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    #[serde(default)]
    pub files: Vec<FileSourceConfig>,
    #[serde(default)]
    pub syslog: Vec<SyslogSourceConfig>,
    #[serde(default)]
    pub journald: Vec<JournaldSourceConfig>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub url: Option<String>,
    pub key_prefix: Option<KeyPrefix>,
    pub host_name: Option<String>,
    pub single_writer: Option<bool>,
    pub fleet_size: Option<u32>,
    pub gzip_level: Option<GzipLevel>,
    pub retry_max_delay: Option<HumanDuration>,
    pub upload_rate_limit: Option<ByteRate>,
    pub ledger_keep: Option<HumanDuration>,
    pub local_group_read: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<ListenAddr>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub level: Option<String>,
    pub format: Option<LogFormat>,
}
