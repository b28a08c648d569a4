//! Following one journal: `journalctl --follow --output=json` runs as a
//! child, a reader thread turns what it prints into lines, and the source's
//! thread commits them in batches, each with the cursor of its last entry.
//!
//! The cursor goes into the same spool commit as the lines it covers, so it
//! is durable exactly when they are. After a kill or a power cut journalctl
//! starts again `--after-cursor` of the last durable batch: what was read but
//! not committed is read again, nothing committed is. Entries the rules drop
//! move the cursor on all the same. A batch the spool refuses is not held in
//! memory: journalctl is stopped and started again from the last durable
//! cursor every [`RETRY_AFTER`], the journal keeping the entries meanwhile.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::JournalSource;
use super::entry::{Entry, Mapper};
use crate::intake::Intake;
use crate::spool::{Along, CommitError, PositionUpdate};
use crate::telemetry::sources::SourceEntry;
use crate::telemetry::Source;

/// Entries committed at once, at most.
const BATCH_ENTRIES: usize = 1000;
/// How long the first entry of a batch waits for others.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// Entries a reader hands over at once, at most: whatever journalctl's
/// output already holds, so a busy journal costs a wake-up per chunk, not
/// per entry.
const CHUNK: usize = 256;
/// Chunks read and waiting for the batch being committed, at most.
const WAITING: usize = 4;
/// The most larch reads of one entry's JSON; past it the entry is archived
/// empty and marked (see [`Mapper::oversized`]). journald's own stream and
/// syslog limits keep real entries far below it.
const MAX_ENTRY: usize = 1 << 20;
/// A journalctl run that prints one thing and ends is given this long.
const QUICK_RUN: Duration = Duration::from_secs(10);
/// How often a waiting thread looks whether it should stop.
const TICK: Duration = Duration::from_millis(100);
/// A refused batch is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// journalctl started again after it ended: first after this long, then
/// doubling up to [`MAX_RESTART`].
const MIN_RESTART: Duration = Duration::from_secs(1);
const MAX_RESTART: Duration = Duration::from_secs(30);

/// The running journal sources.
pub struct Journals {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Journals {
    /// Starts one thread per source, once each source's journalctl has run:
    /// a journalctl that cannot be started stops start-up with what to do.
    /// Called inside the async runtime, which the threads commit through.
    pub fn start(sources: &[JournalSource], intake: &Intake) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        for source in sources {
            let mut version = Command::new(&source.journalctl);
            version.arg("--version").stdin(Stdio::null());
            if let Err(e) = output_within(version, QUICK_RUN) {
                return Err(format!(
                    "journal source {:?}: cannot run {}: {e}. Install journalctl (Debian: the systemd package) or set journalctl = \"/path/to/journalctl\" in [[sources.journald]]",
                    source.name,
                    source.journalctl.display()
                ));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(sources.len());
        for (n, source) in sources.iter().enumerate() {
            let follower = Follower {
                source: Arc::new(source.clone()),
                intake: intake.clone(),
                runtime: runtime.clone(),
                stop: stop.clone(),
                row: SourceEntry::register("journald", source.name.clone(), &source.account),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("larch-journal-{n}"))
                .spawn(move || follower.run());
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    Self { threads, stop }.stop();
                    return Err(format!("cannot start a journal source's thread: {e}"));
                }
            }
        }
        Ok(Self { threads, stop })
    }

    /// Stops every source: journalctl is ended, what was committed stays,
    /// what was read and not committed is read again next time.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a journal source thread panicked while stopping");
            }
        }
    }
}

struct Follower {
    source: Arc<JournalSource>,
    intake: Intake,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    /// Its row in `larch status`.
    row: SourceEntry,
}

/// What a reader thread hands over: entries, or lines that were not one.
type Got = Vec<Result<Entry, String>>;

impl Follower {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `pause`, or less if the source is stopped meanwhile; returns
    /// whether it is.
    fn pause(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if self.stopping() {
                return true;
            }
            std::thread::sleep(TICK.min(until - Instant::now()));
        }
        self.stopping()
    }

    fn run(self) {
        let name = self.source.name.clone();
        let spool = self.intake.spool.blocking().clone();
        let mapper = Arc::new(Mapper::new(self.source.clone(), spool.instance_hex()));
        let mut restart = MIN_RESTART;
        // Without the stored cursor the journal would be read again from
        // wherever `start` says: better to wait for the spool.
        let mut cursor = loop {
            match spool.journal_cursor(&name) {
                Ok(cursor) => break cursor,
                Err(e) => {
                    if self.wait_out(format!("cannot read the journal cursor: {e}"), &mut restart) {
                        return;
                    }
                }
            }
        };
        restart = MIN_RESTART;
        let mut first_run = cursor.is_none();
        // Whether the spool refused the last batch (said once, not every retry).
        let mut refused = false;
        while !self.stopping() {
            if first_run && self.source.start == crate::tail::StartAt::End {
                match self.journal_end() {
                    Ok(end) => {
                        cursor = end;
                        first_run = false;
                    }
                    Err(e) => {
                        if self
                            .wait_out(format!("cannot find the journal's end: {e}"), &mut restart)
                        {
                            return;
                        }
                        continue;
                    }
                }
            }
            let started = Instant::now();
            let problem = match self.follow(&mapper, &mut cursor, &mut refused) {
                Ok(Ended::Stopped) => return,
                Ok(Ended::Refused(e)) => {
                    self.row
                        .problem(format!("not stored, waiting in the journal: {e}"));
                    if !refused {
                        tracing::warn!(source = %name, "{e}; reading the journal again from the last stored entry once there is room");
                    }
                    refused = true;
                    if self.pause(RETRY_AFTER) {
                        return;
                    }
                    continue;
                }
                // Stopping with the rest of a service (its whole group signalled).
                Ok(Ended::Exited(_)) if self.stopping() => return,
                Ok(Ended::Exited(why)) => format!("journalctl ended ({why})"),
                Err(e) => format!("cannot run journalctl: {e}"),
            };
            // A journalctl that ran a while earns a prompt restart.
            if started.elapsed() > MAX_RESTART * 2 {
                restart = MIN_RESTART;
            }
            if self.wait_out(problem, &mut restart) {
                return;
            }
        }
    }

    /// Says what went wrong (in the log and the status row), waits `delay`,
    /// and doubles it for next time, up to [`MAX_RESTART`]. Returns whether
    /// the source was stopped meanwhile.
    fn wait_out(&self, problem: String, delay: &mut Duration) -> bool {
        tracing::warn!(source = %self.source.name, "{problem}; trying again in {}s", delay.as_secs());
        self.row.problem(problem);
        let stopped = self.pause(*delay);
        *delay = (*delay * 2).min(MAX_RESTART);
        stopped
    }

    /// A journalctl with the source's journal and filters.
    fn journalctl(&self) -> Command {
        let mut cmd = Command::new(&self.source.journalctl);
        cmd.args(["--merge", "--all", "--quiet", "--no-pager", "--output=json"]);
        if let Some(dir) = &self.source.directory {
            let mut arg = OsString::from("--directory=");
            arg.push(dir);
            cmd.arg(arg);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // A larch that is killed takes its journalctl with it.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// On a first run with `start = "end"`: the cursor of the journal's last
    /// entry, committed before anything is read, so that a larch killed
    /// before its first batch still starts after what was there. `None` for
    /// an empty journal: then everything in it came later.
    fn journal_end(&self) -> Result<Option<String>, String> {
        let mut last = self.journalctl();
        last.args(["--lines=1", "--output-fields=__CURSOR"]);
        let output = output_within(last, QUICK_RUN).map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(stderr_text(&output.stderr));
        }
        let now = self.intake.clock.now_ms();
        let mapper = Mapper::new(self.source.clone(), String::new());
        let Some(end) = output
            .stdout
            .split(|&b| b == b'\n')
            .rev()
            .find_map(|json| mapper.entry(json, now).ok())
        else {
            return Ok(None);
        };
        self.commit(Vec::new(), &end.cursor)?;
        tracing::info!(source = %self.source.name, "first run: reading the journal from its end (start = \"end\")");
        Ok(Some(end.cursor))
    }

    /// Runs journalctl from `cursor` on and commits what it prints until it
    /// ends or the source stops; `cursor` follows what is durable.
    fn follow(
        &self,
        mapper: &Arc<Mapper>,
        cursor: &mut Option<String>,
        refused: &mut bool,
    ) -> std::io::Result<Ended> {
        let mut cmd = self.journalctl();
        cmd.args(["--follow", "--no-tail"]);
        if let Some(fields) = mapper.output_fields() {
            cmd.arg(format!("--output-fields={}", fields.join(",")));
        }
        if let Some(c) = cursor.as_deref() {
            cmd.arg(format!("--after-cursor={c}"));
        }
        for unit in &self.source.units {
            cmd.arg(format!("--unit={unit}"));
        }
        cmd.args(&self.source.matches);
        let mut child = cmd.spawn()?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (tx, rx) = sync_channel::<Got>(WAITING);
        let (mapper, clock) = (mapper.clone(), self.intake.clock.clone());
        let name = self.source.name.clone();
        let threads = (|| -> std::io::Result<_> {
            let reader = match stdout {
                Some(out) => Some(
                    std::thread::Builder::new()
                        .name("larch-journal-read".into())
                        .spawn(move || read_entries(out, &mapper, &*clock, tx))?,
                ),
                None => None,
            };
            let errors = match stderr {
                Some(err) => Some(
                    std::thread::Builder::new()
                        .name("larch-journal-err".into())
                        .spawn(move || log_stderr(err, &name))?,
                ),
                None => None,
            };
            Ok((reader, errors))
        })();
        let (reader, errors) = match threads {
            Ok(threads) => threads,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let ended = self.commit_from(&rx, cursor, refused);
        let status = end_child(&mut child, !matches!(ended, Ended::Exited(_)));
        drop(rx);
        for t in [reader, errors].into_iter().flatten() {
            let _ = t.join();
        }
        Ok(match ended {
            Ended::Exited(_) => Ended::Exited(status),
            other => other,
        })
    }

    /// Commits what the reader hands over, in batches, until it ends or the
    /// source stops.
    fn commit_from(
        &self,
        rx: &Receiver<Got>,
        cursor: &mut Option<String>,
        refused: &mut bool,
    ) -> Ended {
        loop {
            // A busy journal never lets the wait below time out.
            if self.stopping() {
                return Ended::Stopped;
            }
            let first = match rx.recv_timeout(TICK) {
                Ok(chunk) => chunk,
                Err(RecvTimeoutError::Timeout) if self.stopping() => return Ended::Stopped,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ended::Exited(String::new()),
            };
            let mut batch = Vec::with_capacity(first.len());
            let mut ended = false;
            let deadline = Instant::now() + BATCH_WAIT;
            let mut next = Some(first);
            while let Some(chunk) = next.take() {
                for got in chunk {
                    match got {
                        Ok(entry) => batch.push(entry),
                        Err(e) => tracing::warn!(source = %self.source.name, "{e}; skipped"),
                    }
                }
                if batch.len() >= BATCH_ENTRIES {
                    break;
                }
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(chunk) => next = Some(chunk),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => ended = true,
                }
            }
            if let Some(last) = batch.last() {
                let last_cursor = last.cursor.clone();
                let rules = self.intake.rules.load();
                let kept = batch
                    .into_iter()
                    .filter(|e| rules.keeps(&self.source.account, &e.line))
                    .map(|e| (e.line, e.id))
                    .collect();
                if let Err(e) = self.commit(kept, &last_cursor) {
                    return if self.stopping() {
                        Ended::Stopped
                    } else {
                        Ended::Refused(e)
                    };
                }
                *cursor = Some(last_cursor);
                if std::mem::take(refused) {
                    tracing::info!(source = %self.source.name, "journal entries are stored again");
                }
            }
            if ended {
                return Ended::Exited(String::new());
            }
        }
    }

    /// Commits `entries` (possibly none) with `cursor`, in one spool batch.
    fn commit(
        &self,
        entries: Vec<(crate::line::Line, String)>,
        cursor: &str,
    ) -> Result<(), String> {
        let (lines, ids): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let count = lines.len();
        let along = Along {
            ids: Some(ids),
            positions: vec![PositionUpdate::Cursor {
                source: self.source.name.clone(),
                cursor: cursor.to_owned(),
            }],
        };
        let committed = self.runtime.block_on(self.intake.committer.commit_along(
            self.source.account.clone(),
            lines,
            along,
            Source::Journald,
        ));
        match committed {
            Ok(_) => {
                self.row.stored(count, self.intake.clock.now_ms());
                Ok(())
            }
            Err(CommitError::ShuttingDown) => Err("larch is shutting down".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// How following ended.
enum Ended {
    /// The source was stopped.
    Stopped,
    /// journalctl ended, with its exit status.
    Exited(String),
    /// The spool refused a batch: it is read again from the journal once
    /// there may be room, rather than held in memory meanwhile.
    Refused(String),
}

/// Ends journalctl and says how it ended: one whose output ended is given a
/// moment to exit by itself, one the source stopped is killed.
fn end_child(child: &mut Child, kill: bool) -> String {
    if !kill {
        for _ in 0..10 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.to_string();
            }
            std::thread::sleep(TICK);
        }
    }
    let _ = child.kill();
    match child.wait() {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot learn its status: {e}"),
    }
}

/// Runs `cmd` to its end with its output collected (a few MiB at most),
/// killing it if it has not ended within `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> std::io::Result<std::process::Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::Builder::new()
            .name("larch-journal-run".into())
            .spawn(move || {
                let mut bytes = Vec::new();
                if let Some(pipe) = pipe {
                    let _ = pipe.take(4 * MAX_ENTRY as u64).read_to_end(&mut bytes);
                }
                bytes
            })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                break Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("it did not end within {} s", limit.as_secs()),
                ))
            }
            Err(e) => break Err(e),
        }
    };
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let joined = |t: std::io::Result<JoinHandle<Vec<u8>>>| {
        t.ok().and_then(|t| t.join().ok()).unwrap_or_default()
    };
    let (stdout, stderr) = (joined(out), joined(err));
    Ok(std::process::Output {
        status: status?,
        stdout,
        stderr,
    })
}

/// Reads journalctl's output, an entry per line, into `tx` until it ends.
fn read_entries(
    out: impl Read,
    mapper: &Mapper,
    clock: &dyn crate::clock::Clock,
    tx: std::sync::mpsc::SyncSender<Got>,
) {
    let mut reader = BufReader::with_capacity(256 * 1024, out);
    let mut buf = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        // Before waiting for more output, hand over what was read.
        if !chunk.is_empty() && (reader.buffer().is_empty() || chunk.len() >= CHUNK) {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if tx.send(full).is_err() {
                return;
            }
        }
        let read = match bounded_line(&mut reader, &mut buf, MAX_ENTRY) {
            Ok(Some(read)) => read,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("cannot read journalctl's output: {e}");
                break;
            }
        };
        if buf.is_empty() {
            continue;
        }
        let now = clock.now_ms();
        let entry = match read {
            Kept::Whole => mapper.entry(&buf, now),
            Kept::Cut(bytes) => mapper.oversized(&buf, bytes, now),
        };
        chunk.push(entry.map_err(|e| e.to_string()));
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk);
    }
}

/// What [`bounded_line`] read into its buffer.
#[derive(Debug, PartialEq)]
enum Kept {
    Whole,
    /// Only the start was kept; the line had this many bytes.
    Cut(usize),
}

/// Reads one line (without its newline) into `buf`, keeping at most `max`
/// bytes of it and skipping the rest. `None` at the end of the output; an
/// unfinished last line (journalctl killed mid-write) is not a line.
fn bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<Kept>> {
    buf.clear();
    let mut total = 0usize;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(None);
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        let keep = chunk.len().min(max.saturating_sub(buf.len()));
        buf.extend_from_slice(&chunk[..keep]);
        total += chunk.len();
        let used = chunk.len() + usize::from(found);
        reader.consume(used);
        if found {
            return Ok(Some(if total > max {
                Kept::Cut(total)
            } else {
                Kept::Whole
            }));
        }
    }
}

/// Logs what journalctl says on its standard error, a line at a time.
fn log_stderr(err: impl Read, source: &str) {
    let mut reader = BufReader::new(err);
    let mut buf = Vec::new();
    while let Ok(Some(_)) = bounded_line(&mut reader, &mut buf, 1024) {
        if !buf.is_empty() {
            tracing::warn!(source, "journalctl: {}", String::from_utf8_lossy(&buf));
        }
    }
}

fn stderr_text(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = crate::line::cut_to(text.trim(), 1024);
    if text.is_empty() {
        "journalctl failed and said nothing".into()
    } else {
        format!("journalctl: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_or_cut_and_an_unfinished_one_is_not_a_line() {
        let text = b"short\n0123456789abc\n\nlast without newline";
        // A small buffer, so lines span several reads.
        let mut reader = BufReader::with_capacity(4, &text[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(line) = bounded_line(&mut reader, &mut buf, 8).unwrap() {
            got.push((String::from_utf8(buf.clone()).unwrap(), line));
        }
        assert_eq!(
            got,
            vec![
                ("short".to_owned(), Kept::Whole),
                ("01234567".to_owned(), Kept::Cut(13)),
                (String::new(), Kept::Whole),
            ]
        );
    }
}
