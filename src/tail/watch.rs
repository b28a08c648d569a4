//! Filesystem events that wake a file source. They only say "look now": the
//! pass that follows finds what changed, so a missed or merged event costs
//! at most one rescan interval, never a line.
//!
//! Each include glob is watched at its fixed leading directory (recursively
//! when the glob has `**`). A directory that does not exist yet is fine: its
//! nearest existing parent is watched until it appears.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::Sender;

use notify::{RecursiveMode, Watcher as _};

use super::config::leading_dir;
use super::FileSource;

pub struct Watcher {
    inner: notify::RecommendedWatcher,
    /// Each glob's leading directory, and whether to watch below it.
    wanted: Vec<(PathBuf, RecursiveMode)>,
    watching: HashSet<PathBuf>,
}

impl Watcher {
    /// `None` when the platform gives no events; the periodic rescan still runs.
    pub fn new(source: &FileSource, wake: Sender<()>) -> Option<Self> {
        let inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = wake.send(());
            }
        });
        let inner = match inner {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(source = %source.name, "no filesystem events ({e}); looking for changes every second instead");
                return None;
            }
        };
        let wanted = source
            .include
            .iter()
            .map(|pattern| {
                let mode = if pattern.contains("**") {
                    RecursiveMode::Recursive
                } else {
                    RecursiveMode::NonRecursive
                };
                (leading_dir(pattern), mode)
            })
            .collect();
        let mut w = Self {
            inner,
            wanted,
            watching: HashSet::new(),
        };
        w.refresh();
        Some(w)
    }

    /// Watches every glob directory that exists now, or else its nearest
    /// existing parent (to see the directory appear).
    pub fn refresh(&mut self) {
        for (dir, mode) in self.wanted.clone() {
            let (target, mode) = if dir.is_dir() {
                (dir, mode)
            } else {
                match dir.ancestors().skip(1).find(|a| a.is_dir()) {
                    Some(parent) => (parent.to_owned(), RecursiveMode::NonRecursive),
                    None => continue,
                }
            };
            if self.watching.contains(&target) {
                continue;
            }
            match self.inner.watch(&target, mode) {
                Ok(()) => {
                    self.watching.insert(target);
                }
                Err(e) => tracing::debug!("cannot watch {}: {e}", target.display()),
            }
        }
    }
}
