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
mod list;
mod read;
mod watch;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::intake::Intake;
use crate::spool::{FilePosition, PositionUpdate};
use crate::telemetry::sources::SourceEntry;
pub use config::{FileSource, FileSourceConfig, SourceError, StartAt};
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
    /// Its row in `larch status`.
    row: SourceEntry,
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
        let row = SourceEntry::register("files", source.name.clone(), &source.account);
        Self {
            row,
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
            .map(|key| PositionUpdate::File {
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

/// This machine's host name, stamped on tailed lines unless the source names one.
fn host_name() -> Option<String> {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    (!name.is_empty()).then_some(name)
}
