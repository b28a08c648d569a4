//! `[[sources.journald]]`: which journal a journal source follows, which of
//! its entries and fields it takes, checked before anything starts.

use std::path::PathBuf;

use serde::Deserialize;

use crate::account::{AccountId, InvalidAccountId};
use crate::tail::config::is_source_name;
use crate::tail::StartAt;

/// The fields put into `_meta` when a source names none: what tells one
/// process's entries from another's and where they came from.
pub const DEFAULT_FIELDS: &[&str] = &[
    "_SYSTEMD_UNIT",
    "_PID",
    "_UID",
    "_COMM",
    "_TRANSPORT",
    "_BOOT_ID",
    "SYSLOG_FACILITY",
];
/// Fields named in `fields`, at most.
const MAX_FIELDS: usize = 64;

/// One `[[sources.journald]]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournaldSourceConfig {
    /// Names the source's stored cursor (default: the directory, or
    /// `system`); keep it when editing units or matches.
    pub name: Option<String>,
    pub account: String,
    /// A directory of journal files (`journalctl --directory`); the system
    /// journal when absent.
    pub directory: Option<PathBuf>,
    /// Only entries of these systemd units (`journalctl --unit`).
    #[serde(default)]
    pub units: Vec<String>,
    /// Only entries matching these `FIELD=value` terms, as journalctl reads
    /// them: terms on one field are alternatives, on different fields all
    /// must hold, and `+` separates alternatives of whole groups.
    #[serde(default)]
    pub matches: Vec<String>,
    /// Journal fields put into `_meta`; `["*"]` for every field.
    pub fields: Option<Vec<String>>,
    /// `start` or `end`: where a journal larch has not read before begins.
    pub start: Option<String>,
    /// The journalctl to run (default: `journalctl` on the PATH).
    pub journalctl: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournaldConfigError {
    #[error("[[sources.journald]] number {number}: {source}")]
    Account {
        number: usize,
        source: InvalidAccountId,
    },
    #[error("[[sources.journald]] number {number}: {what} {given:?}: {why}")]
    Value {
        number: usize,
        what: &'static str,
        given: String,
        why: String,
    },
    #[error("two journal sources are both named {0:?}; give each its own name")]
    DuplicateName(String),
}

/// Which fields of an entry go into `_meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaFields {
    /// Every field the mapping does not take, except journald's own `__` ones.
    All,
    Named(Vec<String>),
}

/// A checked journal source.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalSource {
    pub name: String,
    pub account: AccountId,
    pub directory: Option<PathBuf>,
    pub units: Vec<String>,
    pub matches: Vec<String>,
    pub fields: MetaFields,
    pub start: StartAt,
    pub journalctl: PathBuf,
    /// Entry times further ahead than this are not believed.
    pub max_skew_ms: i64,
}

impl JournalSource {
    /// Every configured source, checked; `max_skew_ms` is the ingest API's.
    pub fn all(
        configs: Vec<JournaldSourceConfig>,
        max_skew_ms: i64,
    ) -> Result<Vec<Self>, JournaldConfigError> {
        let sources: Vec<Self> = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| Self::new(i + 1, c, max_skew_ms))
            .collect::<Result<_, _>>()?;
        let mut names = std::collections::HashSet::new();
        for s in &sources {
            if !names.insert(s.name.as_str()) {
                return Err(JournaldConfigError::DuplicateName(s.name.clone()));
            }
        }
        Ok(sources)
    }

    fn new(
        number: usize,
        c: JournaldSourceConfig,
        max_skew_ms: i64,
    ) -> Result<Self, JournaldConfigError> {
        let bad = |what, given: &str, why: &str| JournaldConfigError::Value {
            number,
            what,
            given: given.to_owned(),
            why: why.to_owned(),
        };
        let account = AccountId::parse(&c.account)
            .map_err(|source| JournaldConfigError::Account { number, source })?;
        if let Some(dir) = &c.directory {
            if !dir.is_absolute() {
                return Err(bad(
                    "directory",
                    &dir.display().to_string(),
                    "give an absolute path, like /var/log/journal/remote",
                ));
            }
        }
        for unit in &c.units {
            if unit.is_empty() || unit.starts_with('-') || unit.contains(['\n', '\0']) {
                return Err(bad("units", unit, "give unit names, like nginx.service"));
            }
        }
        for term in &c.matches {
            if term != "+" && !is_match_term(term) {
                return Err(bad(
                    "matches",
                    term,
                    "give FIELD=value terms (a field is capital letters, digits and '_'), or \"+\"",
                ));
            }
        }
        let fields = match c.fields {
            Some(list) if list.len() == 1 && list[0] == "*" => MetaFields::All,
            Some(list) => {
                if list.len() > MAX_FIELDS {
                    return Err(bad(
                        "fields",
                        &format!("{} fields", list.len()),
                        &format!("name at most {MAX_FIELDS}, or [\"*\"] for all"),
                    ));
                }
                for field in &list {
                    if !is_field_name(field) {
                        return Err(bad(
                            "fields",
                            field,
                            "a journal field is capital letters, digits and '_', like _SYSTEMD_UNIT; [\"*\"] alone takes all",
                        ));
                    }
                }
                // A field named twice is put in once.
                let mut unique: Vec<String> = Vec::with_capacity(list.len());
                for field in list {
                    if !unique.contains(&field) {
                        unique.push(field);
                    }
                }
                MetaFields::Named(unique)
            }
            None => MetaFields::Named(DEFAULT_FIELDS.iter().map(|f| f.to_string()).collect()),
        };
        let start = match c.start.as_deref().unwrap_or("start") {
            "start" => StartAt::Beginning,
            "end" => StartAt::End,
            other => return Err(bad("start", other, "give \"start\" or \"end\"")),
        };
        // The cursor belongs to the journal, not to the filters: editing
        // units or matches keeps the name and so the place reached.
        let name = match c.name {
            Some(name) => {
                if !is_source_name(&name) {
                    return Err(bad("name", &name, "use letters, digits, '_', '-' and '.'"));
                }
                name
            }
            None => c
                .directory
                .as_ref()
                .map_or_else(|| "system".to_owned(), |d| d.display().to_string()),
        };
        Ok(Self {
            name,
            account,
            directory: c.directory,
            units: c.units,
            matches: c.matches,
            fields,
            start,
            journalctl: c.journalctl.unwrap_or_else(|| PathBuf::from("journalctl")),
            max_skew_ms,
        })
    }
}

/// A journal field name as journald allows it: capital letters, digits and
/// `_`, not starting with a digit, at most 64 bytes.
pub fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn is_match_term(term: &str) -> bool {
    term.split_once('=')
        .is_some_and(|(field, value)| is_field_name(field) && !value.contains(['\n', '\0']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(extra: &str) -> Result<JournalSource, JournaldConfigError> {
        let text = format!("account = \"ops\"\n{extra}");
        let config: JournaldSourceConfig = toml::from_str(&text).unwrap();
        JournalSource::all(vec![config], 1000).map(|mut v| v.remove(0))
    }

    #[test]
    fn a_source_is_checked_and_each_bad_value_named() {
        let s = one("").unwrap();
        assert_eq!(
            (s.name.as_str(), s.start, s.journalctl.to_str()),
            ("system", StartAt::Beginning, Some("journalctl"))
        );
        assert_eq!(
            s.fields,
            MetaFields::Named(DEFAULT_FIELDS.iter().map(|f| f.to_string()).collect())
        );
        let s = one("directory = \"/j\"\nfields = [\"*\"]\nstart = \"end\"\nmatches = [\"_TRANSPORT=kernel\", \"+\", \"PRIORITY=3\"]").unwrap();
        assert_eq!(
            (s.name.as_str(), s.fields, s.start),
            ("/j", MetaFields::All, StartAt::End)
        );
        for (extra, named) in [
            ("directory = \"journal\"", "directory"),
            ("units = [\"--since=yesterday\"]", "units"),
            ("matches = [\"--output=cat\"]", "matches"),
            ("matches = [\"lower=case\"]", "matches"),
            ("fields = [\"MESSAGE\", \"*\"]", "fields"),
            ("start = \"middle\"", "start"),
            ("name = \"a/b\"", "name"),
        ] {
            let err = one(extra).unwrap_err().to_string();
            assert!(err.contains(named) && err.contains("number 1"), "{err}");
        }
        let twice: Vec<JournaldSourceConfig> = (0..2)
            .map(|_| toml::from_str("account = \"a\"").unwrap())
            .collect();
        let err = JournalSource::all(twice, 0).unwrap_err().to_string();
        assert!(err.contains("\"system\""), "{err}");
    }
}
