//! Rules: which lines are archived at all. Every source passes its lines
//! through here on their way to the spool, so a dropped line is never stored.
//!
//! A line that matches any `[[rules.exclude]]` is dropped. When at least one
//! `[[rules.include]]` is given, a line must also match one of those to be kept.
//! A rule matches when every key it gives matches: `account`, `host` and `app`
//! exactly, `level` without regard to case, `file` as a glob (`*` stays within
//! one directory, `**` crosses them) and `regex` anywhere in the line's text.
//! Every drop is counted under the rule that caused it, for status.
//!
//! ```toml
//! [[rules.exclude]]
//! name = "health checks"          # optional; status counts under this name
//! app = "nginx"
//! regex = "GET /health"
//!
//! [[rules.include]]
//! level = "error"
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;
use serde::Deserialize;

use crate::account::{AccountId, InvalidAccountId};
use crate::line::Line;

/// The `[rules]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    #[serde(default)]
    pub exclude: Vec<RuleConfig>,
    #[serde(default)]
    pub include: Vec<RuleConfig>,
}

/// One `[[rules.exclude]]` or `[[rules.include]]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Option<String>,
    pub account: Option<String>,
    pub host: Option<String>,
    pub app: Option<String>,
    pub level: Option<String>,
    pub file: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("[[rules.{kind}]] number {number}: give at least one of account, host, app, level, file or regex (a rule without them would match every line)")]
    Empty { kind: &'static str, number: usize },
    #[error("[[rules.{kind}]] number {number}: regex {pattern:?} is not valid: {message}")]
    Regex {
        kind: &'static str,
        number: usize,
        pattern: String,
        message: String,
    },
    #[error("[[rules.{kind}]] number {number}: file glob {pattern:?} is not valid: {message}")]
    Glob {
        kind: &'static str,
        number: usize,
        pattern: String,
        message: String,
    },
    #[error("[[rules.{kind}]] number {number}: {source}")]
    Account {
        kind: &'static str,
        number: usize,
        source: InvalidAccountId,
    },
    #[error("rule name {0:?} is used twice; give each rule its own name")]
    DuplicateName(String),
}

#[derive(Debug)]
struct Rule {
    name: String,
    account: Option<AccountId>,
    host: Option<String>,
    app: Option<String>,
    level: Option<String>,
    file: Option<GlobMatcher>,
    regex: Option<Regex>,
    dropped: AtomicU64,
}

impl Rule {
    fn new(kind: &'static str, number: usize, c: RuleConfig) -> Result<Self, RuleError> {
        if c.account.is_none()
            && c.host.is_none()
            && c.app.is_none()
            && c.level.is_none()
            && c.file.is_none()
            && c.regex.is_none()
        {
            return Err(RuleError::Empty { kind, number });
        }
        let account = c
            .account
            .map(|a| AccountId::parse(&a))
            .transpose()
            .map_err(|source| RuleError::Account {
                kind,
                number,
                source,
            })?;
        let regex = c
            .regex
            .map(|pattern| {
                Regex::new(&pattern).map_err(|e| RuleError::Regex {
                    kind,
                    number,
                    message: e.to_string(),
                    pattern,
                })
            })
            .transpose()?;
        let file = c
            .file
            .map(|pattern| {
                path_glob(&pattern).map_err(|e| RuleError::Glob {
                    kind,
                    number,
                    message: e.kind().to_string(),
                    pattern,
                })
            })
            .transpose()?;
        Ok(Self {
            name: c.name.unwrap_or_else(|| format!("{kind} #{number}")),
            account,
            host: c.host,
            app: c.app,
            level: c.level,
            file,
            regex,
            dropped: AtomicU64::new(0),
        })
    }

    fn matches(&self, account: &AccountId, line: &Line) -> bool {
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        self.account.as_ref().is_none_or(|a| a == account)
            && same(&self.host, line.host())
            && same(&self.app, line.app())
            && self
                .level
                .as_ref()
                .is_none_or(|w| line.level().is_some_and(|l| l.eq_ignore_ascii_case(w)))
            && self
                .file
                .as_ref()
                .is_none_or(|g| line.file().is_some_and(|f| g.is_match(f)))
            && self.regex.as_ref().is_none_or(|r| r.is_match(&line.line))
    }
}

/// A glob over paths in which `*` stays within a directory and `**` crosses them.
pub fn path_glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
}

/// The rules in force, replaced whole when the config is reloaded.
pub type LiveRules = std::sync::Arc<arc_swap::ArcSwap<Rules>>;

/// What status calls lines that no include rule matched.
pub const NOT_INCLUDED: &str = "no include rule matched";

/// The checked rules, shared by every source.
#[derive(Debug, Default)]
pub struct Rules {
    /// The configuration they were built from, to tell whether a reload changes them.
    written: String,
    exclude: Vec<Rule>,
    include: Vec<Rule>,
    not_included: AtomicU64,
}

impl Rules {
    pub fn new(config: RulesConfig) -> Result<Self, RuleError> {
        let build = |kind, list: Vec<RuleConfig>| {
            list.into_iter()
                .enumerate()
                .map(|(i, c)| Rule::new(kind, i + 1, c))
                .collect::<Result<Vec<_>, _>>()
        };
        let rules = Self {
            written: format!("{config:?}"),
            exclude: build("exclude", config.exclude)?,
            include: build("include", config.include)?,
            not_included: AtomicU64::new(0),
        };
        let mut names = std::collections::HashSet::new();
        for rule in rules.exclude.iter().chain(&rules.include) {
            if !names.insert(rule.name.as_str()) {
                return Err(RuleError::DuplicateName(rule.name.clone()));
            }
        }
        Ok(rules)
    }

    /// Whether `other` was built from the same configuration.
    pub fn same_as(&self, other: &Rules) -> bool {
        self.written == other.written
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.exclude.len() + self.include.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the lines of `account` that the rules retain; counts the others.
    pub fn retain(&self, account: &AccountId, lines: &mut Vec<Line>) {
        if self.exclude.is_empty() && self.include.is_empty() {
            return;
        }
        lines.retain(|line| self.keeps(account, line));
    }

    /// Whether a line of `account` is archived; a line that is not is counted.
    pub fn keeps(&self, account: &AccountId, line: &Line) -> bool {
        if !self.include.is_empty() && !self.include.iter().any(|r| r.matches(account, line)) {
            self.not_included.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.exclude.iter().find(|r| r.matches(account, line)) {
            Some(rule) => {
                rule.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            None => true,
        }
    }

    /// Takes over the counts of `old`'s rules of the same name, so a reload does
    /// not set the dropped-line counters back to zero.
    pub fn carry_counts_from(&self, old: &Rules) {
        for rule in self.exclude.iter().chain(&self.include) {
            if let Some(o) = old
                .exclude
                .iter()
                .chain(&old.include)
                .find(|o| o.name == rule.name)
            {
                rule.dropped
                    .store(o.dropped.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        self.not_included
            .store(old.not_included.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Lines dropped so far, by rule name; every configured rule is listed.
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<String, u64> = self
            .exclude
            .iter()
            .map(|r| (r.name.clone(), r.dropped.load(Ordering::Relaxed)))
            .collect();
        if !self.include.is_empty() {
            counts.insert(
                NOT_INCLUDED.to_owned(),
                self.not_included.load(Ordering::Relaxed),
            );
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        let origin = crate::line::Origin {
            host: Some("edge-1".into()),
            app: Some("nginx".into()),
            level: Some("INFO".into()),
            file: Some("/var/log/nginx/access.log".into()),
            ingester: "http",
            ..Default::default()
        };
        Line::new(0, text, std::sync::Arc::new(origin))
    }

    fn rules(toml_text: &str) -> Result<Rules, RuleError> {
        Rules::new(toml::from_str(toml_text).unwrap())
    }

    fn kept(r: &Rules, account: &str, lines: Vec<Line>) -> Vec<String> {
        let mut lines = lines;
        r.retain(&AccountId::parse(account).unwrap(), &mut lines);
        lines.into_iter().map(|l| l.line.to_string()).collect()
    }

    #[test]
    fn every_given_key_must_match_for_a_rule_to_drop() {
        let r = rules(
            "[[exclude]]\napp = \"nginx\"\nregex = \"GET /health\"\n\
             [[exclude]]\nname = \"debug\"\nlevel = \"debug\"\n\
             [[exclude]]\naccount = \"noisy\"\nfile = \"/var/log/**/*.log\"\n",
        )
        .unwrap();
        let mut debug = line("details");
        debug.own_mut().level = Some("DEBUG".into());
        let mut other_app = line("GET /health 200");
        other_app.own_mut().app = Some("api".into());
        assert_eq!(
            kept(
                &r,
                "acme",
                vec![
                    line("GET /health 200"),
                    line("GET /x 200"),
                    debug,
                    other_app
                ]
            ),
            vec!["GET /x 200", "GET /health 200"]
        );
        assert_eq!(
            kept(&r, "noisy", vec![line("anything")]),
            Vec::<String>::new()
        );
        let counts = r.dropped();
        assert_eq!(counts["exclude #1"], 1);
        assert_eq!(counts["debug"], 1);
        assert_eq!(counts["exclude #3"], 1);
    }

    #[test]
    fn include_rules_keep_only_what_they_match() {
        let r = rules("[[include]]\nregex = \"ERROR\"\n[[include]]\nhost = \"edge-9\"\n").unwrap();
        let mut from_nine = line("fine");
        from_nine.own_mut().host = Some("edge-9".into());
        assert_eq!(
            kept(&r, "acme", vec![line("ERROR: x"), line("fine"), from_nine]),
            vec!["ERROR: x", "fine"]
        );
        assert_eq!(r.dropped()[NOT_INCLUDED], 1);
    }

    #[test]
    fn a_line_without_the_field_does_not_match_a_rule_on_it() {
        let r = rules("[[exclude]]\nfile = \"*.log\"\n").unwrap();
        let mut no_file = line("x");
        std::sync::Arc::make_mut(&mut no_file.origin).file = None;
        assert_eq!(kept(&r, "acme", vec![no_file]), vec!["x"]);
    }

    #[test]
    fn bad_rules_are_refused_with_their_number() {
        let e = rules("[[exclude]]\napp = \"a\"\n[[exclude]]\nregex = \"(unclosed\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[[rules.exclude]] number 2") && e.contains("(unclosed"),
            "{e}"
        );
        let e = rules("[[include]]\nname = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one of"), "{e}");
        let e = rules("[[exclude]]\nfile = \"[a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("file glob"), "{e}");
        let e = rules("[[exclude]]\naccount = \"../etc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("number 1"), "{e}");
        let e = rules(
            "[[exclude]]\nname = \"a\"\napp = \"x\"\n[[exclude]]\nname = \"a\"\napp = \"y\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("used twice"), "{e}");
        assert!(toml::from_str::<RulesConfig>("[[exclude]]\npath = \"x\"\n").is_err());
    }
}
