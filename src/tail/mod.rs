//! File sources: files matching globs are tailed, and every line written to
//! them is archived exactly once, across crashes, restarts and rotation.
//!
//! Each `[[sources.files]]` runs on its own thread. Filesystem events (through
//! `notify`) wake it, and it looks again every [`RESCAN`] anyway, for events
//! that were missed and filesystems that have none. A pass:
//!
//! 1. expands the include globs (minus the excludes) and follows every known
//!    file by device and inode, so a file renamed away by log rotation is read
//!    to its end from the descriptor still open on it, and a file truncated in
//!    place (copytruncate) is read again from its start;
//! 2. reads the whole lines added since the stored position;
//! 3. commits them with the file's new position in one spool batch, so the
//!    position is durable exactly when the lines are. After a crash reading
//!    resumes where the durable lines end: nothing skipped, nothing read twice.
//!
//! A line's ID is derived from its file and offset, so it is the same however
//! often the line is read. Idle files are closed (and reopened on change) to
//! bound open descriptors.
//!
//! Symbolic links are not followed unless a source says `follow_symlinks =
//! true`: larch may read files that whoever writes into a tailed directory
//! may not (it may run as root, or in a group that reads other services'
//! logs), and a link named like a log would hand them over. The listing then
//! walks the directories itself without entering linked ones, a link it
//! meets is skipped and named in the log, and files are opened without
//! following links (see [`file::open_regular`]). With links followed, an
//! exclude glob is matched against the path a link resolves to as well.

pub mod config;
mod file;
mod watch;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::intake::Intake;
use crate::line::{Line, Origin};
use crate::spool::{Along, FileKey, FilePosition, PositionUpdate};
use crate::telemetry::Source;
use config::leading_dir;
pub use config::{FileSource, FileSourceConfig, SourceError, SourcesConfig, StartAt};
use file::{fingerprint, identity, open_regular, Tailed, FINGERPRINT_BYTES};

/// How often a source looks at its files when no event woke it.
const RESCAN: Duration = Duration::from_secs(1);
/// How long a source waits after its lines could not be stored.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// A file renamed away or deleted is kept open this long after its last
/// growth, for a writer that has not reopened its log yet.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);
/// A file (or a stored position's file) missing from the listings this long
/// is gone; one listing that misses it proves nothing.
const VANISHED_AFTER: Duration = Duration::from_secs(5);
/// A file that has not grown for this long is closed until it changes.
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// Files kept open at most, per source; past it a file is closed again after
/// each read, and reopened (by path, checked by inode) the next time.
const MAX_OPEN: usize = 256;
/// Chunks read from one file in one pass, so one busy file cannot starve the others.
const CHUNKS_PER_PASS: usize = 8;
/// What a line stored without its newline carries in `_meta`.
const PARTIAL_META: &str = r#"{"partial_line":true}"#;

/// The running file sources.
pub struct Tails {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    wakers: Vec<std::sync::mpsc::Sender<()>>,
}

/// Starts one thread per file source; called inside the async runtime,
/// which the threads commit through.
pub fn start(sources: Vec<FileSource>, intake: Intake) -> std::io::Result<Tails> {
    let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tails = Tails {
        threads: Vec::new(),
        stop: stop.clone(),
        wakers: Vec::new(),
    };
    for source in sources {
        let (wake, woken) = std::sync::mpsc::channel();
        let watcher = watch::Watcher::new(&source, wake.clone());
        let run = SourceRun::new(source, intake.clone(), runtime.clone(), stop.clone());
        let name = format!("larch-tail-{}", tails.threads.len());
        tails.threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || run.run(watcher, woken))?,
        );
        tails.wakers.push(wake);
    }
    Ok(tails)
}

impl Tails {
    /// Stops every source after a last pass that also stores partial lines.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for wake in &self.wakers {
            let _ = wake.send(());
        }
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a file source thread panicked while stopping");
            }
        }
    }
}

struct SourceRun {
    source: FileSource,
    intake: Intake,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    files: HashMap<(u64, u64), Tailed>,
    /// Positions from the spool whose file has not been seen yet in this run.
    stored: HashMap<(u64, u64), FilePosition>,
    /// No position was stored for this source: it runs for the first time, and
    /// the files already there start where `start` says.
    first_run: bool,
    first_pass: bool,
    started: Instant,
    default_host: Option<String>,
    instance: String,
    /// Reading stopped because the spool has no room; offsets stay where they are.
    paused: bool,
    /// A commit failed (a full disk, say): no file is read again before this.
    store_retry_at: Cell<Option<Instant>>,
    /// Links the last listing skipped, each reported once while it stays.
    skipped_links: HashSet<PathBuf>,
}

/// A file a listing found: its path, and the glob's leading directory it was found under.
struct Found {
    path: PathBuf,
    root: PathBuf,
}

impl SourceRun {
    fn new(
        source: FileSource,
        intake: Intake,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let spool = intake.spool.blocking();
        let stored: HashMap<_, _> = match spool.file_positions(&source.name) {
            Ok(list) => list.into_iter().map(|(k, p)| ((k.dev, k.ino), p)).collect(),
            Err(e) => {
                tracing::error!(source = %source.name, "cannot read stored file positions: {e}; files are read as new");
                HashMap::new()
            }
        };
        let instance = spool.instance_hex();
        Self {
            first_run: stored.is_empty(),
            stored,
            files: HashMap::new(),
            first_pass: true,
            started: Instant::now(),
            default_host: host_name(),
            instance,
            source,
            intake,
            runtime,
            stop,
            paused: false,
            store_retry_at: Cell::new(None),
            skipped_links: HashSet::new(),
        }
    }

    fn run(mut self, mut watcher: Option<watch::Watcher>, woken: Receiver<()>) {
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if let Some(w) = watcher.as_mut() {
                w.refresh();
            }
            let more = if self.room_to_read(stopping) && !self.waiting_for_store() {
                self.pass(stopping)
            } else {
                false
            };
            if stopping {
                return;
            }
            let wait = if more { Duration::ZERO } else { RESCAN };
            match woken.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while woken.try_recv().is_ok() {}
        }
    }

    /// Whether a failed commit is being waited out: a full disk or a broken
    /// spool is not helped by trying again at once, for every file.
    fn waiting_for_store(&self) -> bool {
        self.store_retry_at
            .get()
            .is_some_and(|at| Instant::now() < at)
    }

    /// Whether the spool takes lines; files wait unread (offsets kept) while it does not.
    fn room_to_read(&mut self, stopping: bool) -> bool {
        match self.intake.committer.room().refusing() {
            Some(why) if !stopping => {
                if !self.paused {
                    tracing::warn!(source = %self.source.name, "file reading paused: {why}");
                    self.paused = true;
                }
                false
            }
            _ => {
                if std::mem::take(&mut self.paused) {
                    tracing::info!(source = %self.source.name, "file reading resumed");
                }
                true
            }
        }
    }

    /// One look at every file. Returns whether some file has more to read now.
    fn pass(&mut self, stopping: bool) -> bool {
        let now = Instant::now();
        let mut seen = HashSet::new();
        let mut open = self.files.values().filter(|t| t.file.is_some()).count();
        let (found, mut skipped) = self.matching_paths();
        for found in found {
            let Some(((dev, ino), names)) = identity(&found.path, self.source.follow_symlinks)
            else {
                continue;
            };
            // A hard link is a second name for any file its maker could link
            // (with fs.protected_hardlinks off, any file at all): a new one is
            // skipped as a symbolic link is. A file already read goes on being
            // read when it gains one, so its place is never lost.
            if !self.source.follow_symlinks && names > 1 && !self.files.contains_key(&(dev, ino)) {
                skipped.insert(found.path);
                continue;
            }
            if !seen.insert((dev, ino)) {
                continue;
            }
            self.track(found, dev, ino, &mut open);
        }
        self.name_skipped(skipped);
        // A directory listing can miss a file being renamed while it is read,
        // so a stored position goes only once its file has been missing from
        // every listing for a while: forgetting it too early would read the
        // file again from its start, with new IDs.
        if self.started.elapsed() >= VANISHED_AFTER {
            self.forget_vanished();
        }
        self.first_pass = false;
        let mut more = false;
        let keys: Vec<(u64, u64)> = self.files.keys().copied().collect();
        let mut forget = Vec::new();
        for key in keys {
            if self.waiting_for_store() {
                break;
            }
            let Some(t) = self.files.get_mut(&key) else {
                continue;
            };
            if !seen.contains(&key) && t.orphaned_since.is_none() {
                tracing::info!(source = %self.source.name, path = %t.path.display(), "file renamed away or deleted; reading it to its end");
                t.orphaned_since = Some(now);
            }
            let was_open = t.file.is_some();
            match self.read_file(key, stopping) {
                Ok(has_more) => more |= has_more,
                Err(e) => {
                    if let Some(t) = self.files.get_mut(&key) {
                        tracing::warn!(source = %self.source.name, path = %t.path.display(), "cannot read file, will try again: {e}");
                        t.file = None;
                    }
                }
            }
            let Some(t) = self.files.get_mut(&key) else {
                continue;
            };
            if !was_open && t.file.is_some() {
                open += 1;
            }
            let missing_long = t
                .orphaned_since
                .is_some_and(|since| now.duration_since(since) >= VANISHED_AFTER);
            if missing_long && (t.file.is_none() || t.last_growth.elapsed() >= ORPHAN_GRACE) {
                forget.push(key);
            } else if t.file.is_some() && (t.last_growth.elapsed() >= IDLE_CLOSE || open > MAX_OPEN)
            {
                // Reading reopens a closed file; past the limit it closes again.
                t.file = None;
                open -= 1;
            }
        }
        for key in forget {
            self.forget(key);
        }
        more
    }

    /// The files the include globs match, minus the excluded ones, and the
    /// symbolic links the listing skipped.
    fn matching_paths(&self) -> (Vec<Found>, HashSet<PathBuf>) {
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
    fn name_skipped(&mut self, links: HashSet<PathBuf>) {
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

    /// Takes note of the file a listing found as (`dev`, `ino`): a known one
    /// (perhaps truncated), one with a stored position, or a new one.
    fn track(&mut self, found: Found, dev: u64, ino: u64, open: &mut usize) {
        let Found { path, root } = found;
        if let Some(t) = self.files.get_mut(&(dev, ino)) {
            t.path = path;
            t.root = root;
            t.orphaned_since = None;
            return;
        }
        let name = &self.source.name;
        let file = match open_regular(&path, &root, self.source.follow_symlinks) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(source = %name, path = %path.display(), "cannot open file, will try again: {e}");
                return;
            }
        };
        // What was opened is what counts: a path swapped between the listing
        // and the open (for another file, or for a second name of one) is
        // looked at again in the next pass.
        let Ok(meta) = file.metadata() else {
            return;
        };
        use std::os::unix::fs::MetadataExt;
        if (meta.dev(), meta.ino()) != (dev, ino)
            || (!self.source.follow_symlinks && meta.nlink() > 1)
        {
            return;
        }
        let size = meta.len();
        let now_ms = self.intake.clock.now_ms();
        let resumed = self
            .stored
            .remove(&(dev, ino))
            .filter(|p| Tailed::same_content(p, &file).unwrap_or(false));
        let start_at_end = resumed.is_none()
            && self.first_run
            && self.first_pass
            && self.source.start == StartAt::End;
        let position = match resumed {
            Some(mut p) => {
                p.path = path.to_string_lossy().into_owned();
                p
            }
            None => {
                let fp_len = size.min(FINGERPRINT_BYTES);
                let Ok(fp) = fingerprint(&file, fp_len) else {
                    return;
                };
                tracing::info!(source = %name, path = %path.display(), "tailing new file from its {}", if start_at_end { "end" } else { "start" });
                FilePosition {
                    path: path.to_string_lossy().into_owned(),
                    fingerprint: fp,
                    fingerprint_len: fp_len as u32,
                    offset: if start_at_end { size } else { 0 },
                    first_seen_ms: now_ms,
                    generation: 0,
                    in_long_line: false,
                }
            }
        };
        let keep_open = *open < MAX_OPEN;
        if keep_open {
            *open += 1;
        }
        self.files.insert(
            (dev, ino),
            Tailed {
                path,
                dev,
                ino,
                position,
                // Past the limit a new file is read by reopening it, like an idle one.
                file: keep_open.then_some(file),
                last_growth: Instant::now(),
                seen_size: size,
                orphaned_since: None,
                root,
                follow_symlinks: self.source.follow_symlinks,
            },
        );
        if start_at_end && size > 0 {
            // Remember the starting point, so a restart does not decide again.
            if let Some(t) = self.files.get(&(dev, ino)) {
                let update = self.update(t, Some(t.position.clone()));
                let _ = self.commit(Vec::new(), None, vec![update]);
            }
        }
    }

    /// Reads and commits what was added to one file. Returns whether more is waiting.
    fn read_file(&mut self, key: (u64, u64), stopping: bool) -> std::io::Result<bool> {
        let Some(mut t) = self.files.remove(&key) else {
            return Ok(false);
        };
        let result = self.read_tailed(&mut t, stopping);
        self.files.insert(key, t);
        result
    }

    fn read_tailed(&self, t: &mut Tailed, stopping: bool) -> std::io::Result<bool> {
        // A file that left its path can only be read through a descriptor still open on it.
        if t.orphaned_since.is_some() && t.file.is_none() {
            return Ok(false);
        }
        let (size, same) = t.size_and_sameness()?;
        if size < t.position.offset || !same {
            tracing::info!(source = %self.source.name, path = %t.path.display(), "file was truncated or rewritten; reading it again from its start");
            t.restart(size)?;
        }
        if size != t.seen_size {
            t.seen_size = size;
            t.last_growth = Instant::now();
        }
        let flush_partial = stopping || t.last_growth.elapsed() >= self.source.partial_line_after;
        for _ in 0..CHUNKS_PER_PASS {
            let Some(chunk) = t.read_chunk(size, flush_partial)? else {
                return Ok(false);
            };
            let full = chunk.position.offset < size;
            let (lines, ids) = self.lines_of(t, &chunk.lines);
            let update = self.update(t, Some(chunk.position.clone()));
            if let Err(e) = self.commit(lines, Some(ids), vec![update]) {
                if self.store_retry_at.get().is_none() {
                    tracing::warn!(source = %self.source.name, "lines could not be stored; reading them again in {}s: {e}", STORE_RETRY.as_secs());
                }
                self.store_retry_at.set(Some(Instant::now() + STORE_RETRY));
                return Ok(false);
            }
            if self.store_retry_at.take().is_some() {
                tracing::info!(source = %self.source.name, "lines are stored again");
            }
            t.position = chunk.position;
            if !full {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn lines_of(&self, t: &Tailed, read: &[file::ReadLine]) -> (Vec<Line>, Vec<String>) {
        let now = self.intake.clock.now_ms();
        let origin = Arc::new(Origin {
            host: self
                .source
                .host
                .clone()
                .or_else(|| self.default_host.clone()),
            app: self.source.app.clone(),
            file: Some(t.path.to_string_lossy().into_owned()),
            level: self.source.level.clone(),
            tags: self.source.tags.clone(),
            ingester: "tail",
            ..Origin::default()
        });
        let mut lines = Vec::with_capacity(read.len());
        let mut ids = Vec::with_capacity(read.len());
        for r in read {
            let mut line = Line::new(now, r.text.clone(), origin.clone());
            line.truncated = r.truncated;
            if r.partial {
                line.own_mut().meta_json = Some(PARTIAL_META.to_owned());
            }
            if !self.intake.rules.load().keeps(&self.source.account, &line) {
                continue;
            }
            ids.push(self.line_id(t, r.offset));
            lines.push(line);
        }
        (lines, ids)
    }

    /// The same file, generation and offset always give the same ID.
    fn line_id(&self, t: &Tailed, offset: u64) -> String {
        let mut h = Sha256::new();
        h.update(self.instance.as_bytes());
        h.update(self.source.name.as_bytes());
        h.update(t.dev.to_be_bytes());
        h.update(t.ino.to_be_bytes());
        h.update(t.position.fingerprint);
        h.update(t.position.generation.to_be_bytes());
        h.update(offset.to_be_bytes());
        let digest = h.finalize();
        let mut low = [0u8; 16];
        low[6..].copy_from_slice(&digest[..10]);
        let ms = (t.position.first_seen_ms.max(0) as u128) & ((1 << 48) - 1);
        ulid::Ulid((ms << 80) | u128::from_be_bytes(low)).to_string()
    }

    fn key(&self, (dev, ino): (u64, u64)) -> FileKey {
        FileKey {
            source: self.source.name.clone(),
            dev,
            ino,
        }
    }

    fn update(&self, t: &Tailed, position: Option<FilePosition>) -> PositionUpdate {
        PositionUpdate {
            key: self.key((t.dev, t.ino)),
            position,
        }
    }

    fn commit(
        &self,
        lines: Vec<Line>,
        ids: Option<Vec<String>>,
        positions: Vec<PositionUpdate>,
    ) -> Result<String, crate::spool::CommitError> {
        let along = Along { ids, positions };
        let committer = self.intake.committer.clone();
        let account = self.source.account.clone();
        self.runtime
            .block_on(committer.commit_along(account, lines, along, Source::File))
    }

    /// Drops a file that was renamed away or deleted and has been read to its end.
    fn forget(&mut self, key: (u64, u64)) {
        let Some(t) = self.files.get(&key) else {
            return;
        };
        let update = self.update(t, None);
        match self.commit(Vec::new(), None, vec![update]) {
            Ok(_) => {
                tracing::info!(source = %self.source.name, path = %t.path.display(), "finished a rotated or deleted file");
                self.files.remove(&key);
            }
            Err(e) => tracing::warn!("cannot forget a finished file yet: {e}"),
        }
    }

    /// Positions of files that are nowhere to be found at start-up (rotated
    /// away or deleted while larch was down) are dropped.
    fn forget_vanished(&mut self) {
        let gone: Vec<(u64, u64)> = self.stored.drain().map(|(key, _)| key).collect();
        let updates: Vec<PositionUpdate> = gone
            .into_iter()
            .map(|key| PositionUpdate {
                key: self.key(key),
                position: None,
            })
            .collect();
        if updates.is_empty() {
            return;
        }
        let n = updates.len();
        match self.commit(Vec::new(), None, updates) {
            Ok(_) => tracing::info!(source = %self.source.name, "forgot {n} file(s) that are gone"),
            Err(e) => tracing::warn!("cannot forget files that are gone: {e}"),
        }
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

/// This machine's host name, stamped on tailed lines unless the source names one.
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}
