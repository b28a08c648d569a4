//! `[[sources.files]]`: which files a file source tails and what it stamps on
//! their lines, checked before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use globset::GlobMatcher;
use serde::Deserialize;

use crate::account::{AccountId, InvalidAccountId};
use crate::rules::path_glob;

/// One `[[sources.files]]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Names the source's read positions; keep it when editing the globs.
    pub name: Option<String>,
    pub account: String,
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub app: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub level: Option<String>,
    /// `start` or `end`: where to begin a file that already existed when larch
    /// first saw it. Files that appear later are always read from their start.
    pub start: Option<String>,
    /// A last line without its newline is stored after the file was idle this long.
    pub partial_line_after: Option<String>,
    /// Tail files reached through symbolic links. Off by default: whoever may
    /// write into a tailed directory could otherwise link any file larch may read.
    pub follow_symlinks: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("[[sources.files]] number {number}: {source}")]
    Account {
        number: usize,
        source: InvalidAccountId,
    },
    #[error("[[sources.files]] number {number}: give at least one include glob, like include = [\"/var/log/app/*.log\"]")]
    NoInclude { number: usize },
    #[error("[[sources.files]] number {number}: {what} {pattern:?} must be an absolute path glob, like /var/log/app/*.log")]
    Relative {
        number: usize,
        what: &'static str,
        pattern: String,
    },
    #[error("[[sources.files]] number {number}: glob {pattern:?} is not valid: {message}")]
    Glob {
        number: usize,
        pattern: String,
        message: String,
    },
    #[error(
        "[[sources.files]] number {number}: start must be \"start\" or \"end\", not {value:?}"
    )]
    Start { number: usize, value: String },
    #[error(
        "[[sources.files]] number {number}: partial_line_after {value:?} is not a duration like 5s"
    )]
    Duration { number: usize, value: String },
    #[error(
        "[[sources.files]] number {number}: name {name:?}: use letters, digits, '_', '-' and '.'"
    )]
    Name { number: usize, name: String },
    #[error("two file sources are both named {0:?}; give each its own name")]
    DuplicateName(String),
}

/// Where to begin a file that already existed when first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

/// A checked file source.
#[derive(Debug, Clone)]
pub struct FileSource {
    pub name: String,
    pub account: AccountId,
    pub include: Vec<String>,
    pub exclude: Vec<GlobMatcher>,
    pub app: Option<String>,
    pub host: Option<String>,
    pub tags: Vec<String>,
    pub level: Option<String>,
    pub start: StartAt,
    pub partial_line_after: Duration,
    pub follow_symlinks: bool,
}

/// Equal when a reload would leave the source as it runs (its exclusions compared
/// by their patterns, as compiled matchers have no equality of their own).
impl PartialEq for FileSource {
    fn eq(&self, other: &Self) -> bool {
        let patterns = |s: &Self| {
            s.exclude
                .iter()
                .map(|g| g.glob().clone())
                .collect::<Vec<_>>()
        };
        self.name == other.name
            && self.account == other.account
            && self.include == other.include
            && patterns(self) == patterns(other)
            && self.app == other.app
            && self.host == other.host
            && self.tags == other.tags
            && self.level == other.level
            && self.start == other.start
            && self.partial_line_after == other.partial_line_after
            && self.follow_symlinks == other.follow_symlinks
    }
}

impl FileSource {
    pub fn new(number: usize, c: FileSourceConfig) -> Result<Self, SourceError> {
        let account = AccountId::parse(&c.account)
            .map_err(|source| SourceError::Account { number, source })?;
        if c.include.is_empty() {
            return Err(SourceError::NoInclude { number });
        }
        for (what, list) in [("include", &c.include), ("exclude", &c.exclude)] {
            for pattern in list {
                if !pattern.starts_with('/') {
                    return Err(SourceError::Relative {
                        number,
                        what,
                        pattern: pattern.clone(),
                    });
                }
            }
        }
        let matcher = |pattern: &String| {
            path_glob(pattern).map_err(|e| SourceError::Glob {
                number,
                pattern: pattern.clone(),
                message: e.kind().to_string(),
            })
        };
        for pattern in &c.include {
            matcher(pattern)?;
            glob::Pattern::new(pattern).map_err(|e| SourceError::Glob {
                number,
                pattern: pattern.clone(),
                message: e.msg.to_owned(),
            })?;
        }
        let exclude = c.exclude.iter().map(matcher).collect::<Result<_, _>>()?;
        let start = match c.start.as_deref().unwrap_or("start") {
            "start" => StartAt::Beginning,
            "end" => StartAt::End,
            other => {
                return Err(SourceError::Start {
                    number,
                    value: other.to_owned(),
                })
            }
        };
        let partial_text = c.partial_line_after.as_deref().unwrap_or("5s");
        let partial_line_after =
            humantime::parse_duration(partial_text).map_err(|_| SourceError::Duration {
                number,
                value: partial_text.to_owned(),
            })?;
        // The name keys the stored read positions: by default the globs, so
        // that reordering sources in the file keeps every position.
        let name = match c.name {
            Some(name) => {
                if !is_source_name(&name) {
                    return Err(SourceError::Name { number, name });
                }
                name
            }
            None => c.include.join(","),
        };
        Ok(Self {
            name,
            account,
            include: c.include,
            exclude,
            app: c.app,
            host: c.host,
            tags: c.tags,
            level: c.level,
            start,
            partial_line_after,
            follow_symlinks: c.follow_symlinks.unwrap_or(false),
        })
    }

    pub fn all(files: Vec<FileSourceConfig>) -> Result<Vec<Self>, SourceError> {
        let sources: Vec<Self> = files
            .into_iter()
            .enumerate()
            .map(|(i, c)| Self::new(i + 1, c))
            .collect::<Result<_, _>>()?;
        let mut names = std::collections::HashSet::new();
        for s in &sources {
            if !names.insert(s.name.as_str()) {
                return Err(SourceError::DuplicateName(s.name.clone()));
            }
        }
        Ok(sources)
    }

    pub fn excluded(&self, path: &str) -> bool {
        self.exclude.iter().any(|g| g.is_match(path))
    }
}

/// A name a source's stored positions are kept under: 1 to 64 letters,
/// digits, `_`, `-` and `.`.
pub fn is_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// The directory part of a glob before its first wildcard (or its file name):
/// the part the operator wrote out, which larch trusts as it is. What lies
/// below it was named by whoever writes there.
pub fn leading_dir(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::from("/");
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last || part.contains(['*', '?', '[', '{']) {
            break;
        }
        dir.push(part);
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_leading_directory_stops_at_the_first_wildcard_or_the_file_name() {
        assert_eq!(leading_dir("/var/log/app/*.log"), Path::new("/var/log/app"));
        assert_eq!(leading_dir("/var/log/app.log"), Path::new("/var/log"));
        assert_eq!(leading_dir("/var/*/x/*.log"), Path::new("/var"));
        assert_eq!(leading_dir("/var/log/**/*.log"), Path::new("/var/log"));
    }
}
