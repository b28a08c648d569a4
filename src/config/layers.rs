//! Where settings come from, weakest first: the embedded defaults, the TOML
//! file, `LARCH_<SECTION>_<KEY>` environment variables, then flags. Each layer
//! is checked on its own, so an error names the line, variable or flag that
//! holds the bad value; the layers are then merged as TOML tables.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::file::{FileConfig, ENV_SECTIONS};
use super::ConfigError;

/// Where `larch` looks for its config when `--config` is not given, in order.
pub const SEARCH_PATH: &[&str] = &["larch.toml", "/etc/larch/larch.toml"];

/// One setting given outside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// What set it, for messages: `LARCH_SPOOL_DIR` or `--data`.
    pub origin: String,
    pub section: String,
    /// `None` for `[keys]` as a whole (`KEY=ACCOUNT` pairs separated by spaces).
    pub key: Option<String>,
    pub value: String,
}

impl Override {
    /// A flag's setting, `section.key`.
    pub fn flag(origin: &str, path: &str, value: impl Into<String>) -> Self {
        let (section, key) = match path.split_once('.') {
            Some((section, key)) => (section, Some(key.to_owned())),
            None => (path, None),
        };
        Self {
            origin: origin.to_owned(),
            section: section.to_owned(),
            key,
            value: value.into(),
        }
    }

    /// The flags that were given, from `(flag, section.key, value if given)`.
    pub fn flags<'a>(
        given: impl IntoIterator<Item = (&'a str, &'a str, Option<String>)>,
    ) -> Vec<Self> {
        given
            .into_iter()
            .filter_map(|(flag, path, value)| Some(Self::flag(flag, path, value?)))
            .collect()
    }

    /// `--set SECTION.KEY=VALUE`.
    pub fn parse_set(text: &str) -> Result<Self, ConfigError> {
        // A path is quoted back only when it reads like one: a secret given
        // with the wrong separator (or a base64 key's `=`) must not be.
        let refused = |shown: String| ConfigError::Override {
            origin: "--set".into(),
            message: format!(
                "{shown} is not of the form SECTION.KEY=VALUE (e.g. spool.late_window=2h)"
            ),
        };
        let reads_like_a_path = |path: &str| {
            !path.is_empty()
                && path.len() <= 80
                && path
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b"0123456789_.".contains(&b))
        };
        let Some((path, value)) = text.split_once('=') else {
            return Err(refused(if reads_like_a_path(text) {
                format!("{text:?}")
            } else {
                "a --set".to_owned()
            }));
        };
        let path = path.trim();
        if !reads_like_a_path(path) {
            return Err(refused("a --set".to_owned()));
        }
        Ok(Self::flag(&format!("--set {path}"), path, value))
    }

    /// The `LARCH_<SECTION>_<KEY>` variables among `vars` that name a config section.
    /// Other `LARCH_` variables (`LARCH_KEY` of `larch send`, for one) are not settings.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Self> {
        let mut found: Vec<Self> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix("LARCH_")?;
                let (section, key) = match rest.split_once('_') {
                    Some((section, key)) => (section.to_ascii_lowercase(), Some(key)),
                    None => (rest.to_ascii_lowercase(), None),
                };
                let key = match key {
                    None if section == "keys" => None,
                    Some(key) if ENV_SECTIONS.contains(&section.as_str()) && !key.is_empty() => {
                        Some(key.to_ascii_lowercase())
                    }
                    _ => return None,
                };
                Some(Self {
                    origin: name,
                    section,
                    key,
                    value,
                })
            })
            .collect();
        found.sort_by(|a, b| a.origin.cmp(&b.origin));
        found
    }
}

/// The merged configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// File, environment and flags merged, as TOML.
    pub table: toml::Table,
    pub config: FileConfig,
    /// Environment variables that set something, by name.
    pub env_applied: Vec<String>,
}

impl Loaded {
    /// Reads `explicit` (or the first file of [`SEARCH_PATH`] that exists; none is
    /// fine) and applies environment overrides, then flags.
    pub fn load(
        explicit: Option<&Path>,
        env: Vec<Override>,
        flags: Vec<Override>,
    ) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(path) => Some(path.to_owned()),
            None => SEARCH_PATH.iter().map(PathBuf::from).find(|p| p.is_file()),
        };
        let mut table = match &path {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        let env_applied = env.iter().map(|o| o.origin.clone()).collect();
        for o in env.iter().chain(flags.iter()) {
            apply(&mut table, o)?;
        }
        let config = FileConfig::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            ConfigError::Parse {
                path: path.clone().unwrap_or_default(),
                message: super::redact::safe_message(e.message(), false),
            }
        })?;
        Ok(Self {
            path,
            table,
            config,
            env_applied,
        })
    }

    /// Where the settings came from, for the start-up log and `larch validate`.
    pub fn describe(&self) -> String {
        let file = match &self.path {
            Some(p) => format!("config {}", p.display()),
            None => format!(
                "no config file (looked for {}), embedded defaults",
                SEARCH_PATH.join(", ")
            ),
        };
        if self.env_applied.is_empty() {
            file
        } else {
            format!("{file}, overridden by {}", self.env_applied.join(", "))
        }
    }
}

/// The file as a table, checked against the schema first so that errors carry
/// line numbers. Errors never quote the file: its lines can hold secrets.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        path: path.to_owned(),
        message: super::redact::parse_error(&text, &e),
    };
    toml::from_str::<FileConfig>(&text).map_err(parse_error)?;
    toml::from_str::<toml::Table>(&text).map_err(parse_error)
}

/// Sets one override into `table`, after checking it alone against the schema.
fn apply(table: &mut toml::Table, o: &Override) -> Result<(), ConfigError> {
    let error = |message: String| ConfigError::Override {
        origin: o.origin.clone(),
        message,
    };
    let Some(key) = &o.key else {
        if o.section != "keys" {
            return Err(error(format!(
                "{:?} names no setting; write SECTION.KEY, e.g. spool.late_window",
                o.section
            )));
        }
        let mut keys = toml::Table::new();
        for pair in o.value.split_whitespace() {
            // Account IDs hold no '=', keys may (base64 padding).
            let (key, account) = pair.rsplit_once('=').ok_or_else(|| {
                error("give ingestion keys as KEY=ACCOUNT pairs separated by spaces".into())
            })?;
            keys.insert(key.to_owned(), toml::Value::String(account.to_owned()));
        }
        table.insert("keys".into(), toml::Value::Table(keys));
        return Ok(());
    };
    // An environment variable or flag is text: try it as the number or boolean
    // it may spell first, then as a string, and keep what the schema takes.
    let mut candidates = Vec::new();
    if let Ok(n) = o.value.trim().parse::<i64>() {
        candidates.push(toml::Value::Integer(n));
    }
    if let Ok(b) = o.value.trim().parse::<bool>() {
        candidates.push(toml::Value::Boolean(b));
    }
    candidates.push(toml::Value::String(o.value.clone()));
    let mut first_error = None;
    for value in candidates {
        let mut trial = toml::Table::new();
        let mut section = toml::Table::new();
        section.insert(key.clone(), value.clone());
        trial.insert(o.section.clone(), toml::Value::Table(section));
        match FileConfig::deserialize(toml::Value::Table(trial)) {
            Ok(_) => {
                let entry = table
                    .entry(o.section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(section) = entry else {
                    return Err(error(format!("the config's {} is not a table", o.section)));
                };
                section.insert(key.clone(), value);
                return Ok(());
            }
            Err(e) => {
                // The first candidate is what the text spells most closely.
                let text = e.to_string();
                first_error.get_or_insert_with(|| text.lines().next().unwrap_or("").to_owned());
            }
        }
    }
    Err(error(format!(
        "{}.{key}: {}",
        o.section,
        first_error.unwrap_or_default()
    )))
}
