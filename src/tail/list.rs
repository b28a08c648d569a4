//! Listing a source's files: its include globs minus its excludes, walked
//! without following symbolic links unless the source says so.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::config::leading_dir;
use super::{Found, SourceRun};

impl SourceRun {
    /// The files the include globs match, minus the excluded ones, and the
    /// symbolic links the listing skipped.
    pub(super) fn matching_paths(&self) -> (Vec<Found>, HashSet<PathBuf>) {
        let mut found = Vec::new();
        let mut links = HashSet::new();
        for pattern in &self.source.include {
            let root = leading_dir(pattern);
            if self.source.follow_symlinks {
                let Ok(paths) = glob::glob(pattern) else {
                    continue;
                };
                for path in paths.flatten() {
                    found.push(Found {
                        path,
                        root: root.clone(),
                    });
                }
            } else {
                list_without_links(pattern, root, &mut found, &mut links);
            }
        }
        found.retain(|f| !self.excluded(&f.path));
        (found, links)
    }

    /// Names each skipped link once, while it stays.
    pub(super) fn name_skipped(&mut self, links: HashSet<PathBuf>) {
        for link in &links {
            if !self.skipped_links.contains(link) && !self.excluded(link) {
                tracing::warn!(source = %self.source.name, path = %link.display(), "skipping a symbolic link (or a file with several names, a hard link): file sources do not follow links, since one planted in a tailed directory could hand over any file larch may read; set follow_symlinks = true on this [[sources.files]] to tail files through links");
            }
        }
        self.skipped_links = links;
    }

    /// Whether an exclude glob matches the path, or (when links are followed)
    /// the path it resolves to: a link must not get around an exclude.
    fn excluded(&self, path: &Path) -> bool {
        if self.source.excluded(&path.to_string_lossy()) {
            return true;
        }
        self.source.follow_symlinks
            && !self.source.exclude.is_empty()
            && std::fs::canonicalize(path)
                .is_ok_and(|real| real != path && self.source.excluded(&real.to_string_lossy()))
    }
}

/// Adds the regular files below `root` that `pattern` matches to `found`, and
/// the links met on the way to `links`: those that match, and those the glob
/// would have entered as directories. Linked directories are not entered, so
/// a link loop cannot make the listing endless either.
fn list_without_links(
    pattern: &str,
    root: PathBuf,
    found: &mut Vec<Found>,
    links: &mut HashSet<PathBuf>,
) {
    let Ok(matcher) = glob::Pattern::new(pattern) else {
        return;
    };
    if glob::Pattern::escape(pattern) == pattern {
        // One file named outright: no directory to list.
        let path = PathBuf::from(pattern);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links.insert(path);
            }
            Ok(meta) if meta.is_file() => found.push(Found { path, root }),
            _ => {}
        }
        return;
    }
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    let depth = if pattern.contains("**") {
        usize::MAX
    } else {
        let named = pattern.split('/').filter(|p| !p.is_empty()).count();
        named.saturating_sub(root.components().count().saturating_sub(1))
    };
    let walk = walkdir::WalkDir::new(&root)
        .min_depth(1)
        .max_depth(depth)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walk.into_iter().flatten() {
        let kind = entry.file_type();
        if kind.is_symlink() {
            let matches = matcher.matches_path_with(entry.path(), options);
            let entered = entry.depth() < depth && entry.path().is_dir();
            if matches || entered {
                links.insert(entry.into_path());
            }
        } else if kind.is_file() && matcher.matches_path_with(entry.path(), options) {
            found.push(Found {
                path: entry.into_path(),
                root: root.clone(),
            });
        }
    }
}
