//! What each running source says of itself for `larch status`: what it
//! reads, for which account, how many lines it stored and when, and what
//! keeps it from working now. A source holds a [`SourceEntry`] while it runs;
//! dropping the entry takes the source off the list, so a reload that
//! replaces sources replaces their rows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::account::AccountId;

/// One source's row in the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceReport {
    /// `files`, `syslog` or `journald`.
    pub kind: String,
    /// What it reads: a file source's name, a listener's transport and
    /// address, a journal source's name.
    pub name: String,
    pub account: String,
    /// Lines it stored since it started.
    pub lines: u64,
    /// When it last stored lines, in ms since the epoch.
    pub last_stored_ms: Option<i64>,
    /// What keeps it from reading or storing now, if anything.
    pub problem: Option<String>,
}

static SOURCES: Mutex<BTreeMap<u64, SourceReport>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A running source's row; gone when dropped.
#[derive(Debug)]
pub struct SourceEntry {
    id: u64,
}

impl SourceEntry {
    pub fn register(kind: &str, name: String, account: &AccountId) -> Self {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        SOURCES.lock().insert(
            id,
            SourceReport {
                kind: kind.to_owned(),
                name,
                account: account.to_string(),
                ..SourceReport::default()
            },
        );
        Self { id }
    }

    /// `lines` were stored at `now_ms` (none when the rules dropped them
    /// all): whatever was wrong is over.
    pub fn stored(&self, lines: usize, now_ms: i64) {
        if let Some(row) = SOURCES.lock().get_mut(&self.id) {
            row.lines += lines as u64;
            if lines > 0 {
                row.last_stored_ms = Some(now_ms);
            }
            row.problem = None;
        }
    }

    /// What keeps the source from working, shown until it stores again.
    pub fn problem(&self, what: impl Into<String>) {
        if let Some(row) = SOURCES.lock().get_mut(&self.id) {
            row.problem = Some(what.into());
        }
    }
}

impl Drop for SourceEntry {
    fn drop(&mut self) {
        SOURCES.lock().remove(&self.id);
    }
}

/// Every running source's row, in the order they started.
pub fn sources() -> Vec<SourceReport> {
    SOURCES.lock().values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_counts_what_its_source_stored_and_leaves_with_it() {
        let account = AccountId::parse("ops").unwrap();
        let entry = SourceEntry::register("journald", "system-test-row".into(), &account);
        let row = |name: &str| sources().into_iter().find(|r| r.name == name);
        entry.problem("journalctl ended");
        assert_eq!(
            row("system-test-row").and_then(|r| r.problem),
            Some("journalctl ended".to_owned())
        );
        entry.stored(3, 1000);
        entry.stored(0, 2000);
        let r = row("system-test-row").unwrap();
        assert_eq!(
            (r.lines, r.last_stored_ms, r.problem, r.account.as_str()),
            (3, Some(1000), None, "ops")
        );
        drop(entry);
        assert_eq!(row("system-test-row"), None);
    }
}
