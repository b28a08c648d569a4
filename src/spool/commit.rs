//! Group commit: many concurrent requests share one write and one fsync.
//!
//! Sources hand their lines to [`Committer::commit`] and wait. One thread takes
//! every request that is waiting, writes them as one group (blocks and a group
//! record, fsynced), stages them in one sled batch, and only then answers them
//! all. A request is in exactly one group, so it is stored whole or not at all.
//!
//! sled is flushed behind the answers by a thread of its own, as soon as a
//! group is waiting for it: under load one flush covers the groups that came
//! while the last one ran, and a restart has little to replay (`replay`).
//! Flushing once a second instead took no CPU off a line, and made resident
//! memory grow (about 0.65 MB a second at 100,000 lines a second in 100-line
//! requests): a flush that seals sled's write buffer leaves the free of its
//! 512 KiB block deferred on the flushing thread's epoch bag, which is handed
//! on only once 64 wait there. Flushed after every group, the bag turns over
//! within a fraction of a second.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{NoRoom, PositionUpdate, Room, Spool, SpoolError};
use crate::account::AccountId;
use crate::line::Line;
use crate::telemetry::Source;

/// At most this many line bytes go into one group, so one fsync never waits
/// behind an unbounded amount of work.
const GROUP_BYTES: usize = 8 * 1024 * 1024;
/// Requests waiting for a group; more than this and senders wait their turn.
const QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("larch is shutting down and takes no more lines")]
    ShuttingDown,
    #[error("the spool could not store the lines: {message}")]
    Store { message: String, disk_full: bool },
    #[error("{0}")]
    NoRoom(#[from] NoRoom),
}

impl From<&SpoolError> for CommitError {
    fn from(e: &SpoolError) -> Self {
        CommitError::Store {
            message: e.to_string(),
            disk_full: e.is_disk_full(),
        }
    }
}

/// What a source commits along with its lines, in the same atomic batch.
#[derive(Debug, Default)]
pub struct Along {
    /// Line IDs the source chose, one per line, so that a line read again (a
    /// file re-read after a crash) gets the same ID. Otherwise the spool assigns them.
    pub ids: Option<Vec<String>>,
    /// Read positions that become durable exactly when the lines do.
    pub positions: Vec<PositionUpdate>,
}

struct Request {
    account: AccountId,
    lines: Vec<Line>,
    along: Along,
    bytes: usize,
    done: oneshot::Sender<Result<String, CommitError>>,
}

/// The handle sources commit through. Cloning is cheap; the committer thread
/// ends once every clone is dropped and the queue is drained.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Request>,
    room: Arc<Room>,
}

impl Committer {
    pub fn start(spool: Arc<Spool>, room: Arc<Room>) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (committed, groups) = std::sync::mpsc::channel();
        let flusher = {
            let spool = spool.clone();
            std::thread::Builder::new()
                .name("larch-flush".into())
                .spawn(move || flush_behind(&spool, &groups))?
        };
        let handle = std::thread::Builder::new()
            .name("larch-commit".into())
            .spawn(move || run(spool, rx, committed, flusher))?;
        Ok((Self { queue, room }, handle))
    }

    /// Whether the spool has room; file sources look before they read.
    pub fn room(&self) -> &Room {
        &self.room
    }

    /// Makes `lines` of an HTTP request durable for `account`. Returns the batch ID once they are.
    pub async fn commit(
        &self,
        account: AccountId,
        lines: Vec<Line>,
    ) -> Result<String, CommitError> {
        self.commit_along(account, lines, Along::default(), Source::Http)
            .await
    }

    /// Like [`Self::commit`], for any source, with its state stored in the same batch.
    pub async fn commit_along(
        &self,
        account: AccountId,
        lines: Vec<Line>,
        along: Along,
        source: Source,
    ) -> Result<String, CommitError> {
        let count = lines.len();
        let text_bytes: usize = lines.iter().map(|l| l.line.len()).sum();
        // Admitted by what the lines take in the spool, every field counted as
        // stored, so fields a request shares cannot overrun the quota.
        let bytes = super::stored_bytes(&lines);
        // Refused before anything is stored; a position alone always goes through.
        if count > 0 {
            self.room.admit(&account, bytes as u64)?;
        }
        let counted = (count > 0).then(|| account.clone());
        let (done, answer) = oneshot::channel();
        let request = Request {
            account,
            lines,
            along,
            bytes,
            done,
        };
        self.queue
            .send(request)
            .await
            .map_err(|_| CommitError::ShuttingDown)?;
        let answer = answer.await.unwrap_or(Err(CommitError::ShuttingDown));
        if let (Ok(_), Some(account)) = (&answer, counted) {
            crate::telemetry::ingested(&account, source, count, text_bytes);
        }
        answer
    }
}

/// The group commit thread; `committed` tells the flusher of each group.
fn run(
    spool: Arc<Spool>,
    mut rx: mpsc::Receiver<Request>,
    committed: std::sync::mpsc::Sender<()>,
    flusher: JoinHandle<()>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut group_bytes = first.bytes;
        let mut group = vec![first];
        while group_bytes < GROUP_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    group_bytes += r.bytes;
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        let (requests, answers): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|r| ((r.account, r.lines, r.along), r.done))
            .unzip();
        let lines: usize = requests.iter().map(|(_, lines, _)| lines.len()).sum();
        let started = std::time::Instant::now();
        match commit_group(&spool, requests) {
            Ok(batch_ids) => {
                crate::telemetry::committed(lines, started.elapsed());
                let _ = committed.send(());
                for (done, id) in answers.into_iter().zip(batch_ids) {
                    let _ = done.send(Ok(id));
                }
            }
            Err(e) => {
                tracing::error!(
                    "could not store {} request(s); they were refused: {e}",
                    answers.len()
                );
                for done in answers {
                    let _ = done.send(Err(CommitError::from(&e)));
                }
            }
        }
    }
    // The last flush, once every group is answered.
    drop(committed);
    let _ = flusher.join();
}

/// Flushes sled behind the group commits, as the module doc says. A flush
/// that fails stops the daemon through the spool's failure hook.
fn flush_behind(spool: &Spool, groups: &std::sync::mpsc::Receiver<()>) {
    // Ends once the committer is gone, after a last flush of what it left.
    while groups.recv().is_ok() {
        // Every group that came meanwhile is covered by this one flush.
        while groups.try_recv().is_ok() {}
        if let Err(e) = spool.make_durable() {
            tracing::error!("the spool's index could not be made durable: {e}");
        }
    }
}

/// Appends a group and makes it durable: its segment fsynced (`replay`). A group whose blocks cannot be
/// written is refused with nothing of it stored. A group that cannot be made
/// durable is never answered in the daemon: the spool's failure hook exits
/// first (see `durable`), so its senders learn nothing, as after a crash.
fn commit_group(
    spool: &Spool,
    requests: Vec<(AccountId, Vec<Line>, Along)>,
) -> Result<Vec<String>, SpoolError> {
    let appended = spool.append(requests)?;
    crate::telemetry::follow_ups_opened(appended.follow_ups);
    Ok(appended.batch_ids)
}
