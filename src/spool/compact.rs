//! The compactor: a part's lines compressed while the part is open, so the
//! spool holds them at about the archive's size and a drain only uploads.
//!
//! It runs behind the ack path, on a thread of its own at low priority, and
//! writes members to segments of their own: it holds up a group commit at
//! most for one sled flush (they take turns at flushing). Each pass walks
//! the parts that take or wait for lines (closed ones first, oldest hour
//! first) and cuts each one's raw blocks into the pieces staging would cut:
//! [`PIECE_BYTES`] of NDJSON, cut at the first block boundary past it, counted
//! from the end of the last member; a part closed to new lines (sealed, or
//! waiting for its upload after a failed attempt) also gets its last,
//! shorter piece. So a member is exactly the bytes staging
//! would make of those blocks, and an object is the same bytes whether its
//! lines were compressed here or at staging.
//!
//! A member is appended to the current segment and fsynced; then one sled
//! batch puts its reference under the key of the first block it covers and
//! removes the other blocks' references, and is made durable. A crash before
//! the batch is durable leaves the blocks and an unreferenced member
//! (collected with its segment); after it, only the member. Members are always a prefix of a part's records:
//! the compactor cuts only after the last one. The blocks' bytes go with their
//! segment once nothing refers to it (`collect`), which each pass that made
//! members asks for.
//!
//! Staging and the compactor take turns on a part through its claim
//! (`claim`): staging waits, the compactor skips a part that is being staged.

use std::collections::HashMap;
use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::member::{self, Member};
use super::part::PartState;
use super::segments::{BlockRef, Holds};
use super::{keys, PartId, Spool, SpoolError, Stored, BLOCK_BYTES};
use crate::gzip::{gzip_member, lower_priority, PIECE_BYTES};

/// Segments the compactor emptied are looked for at most this often.
const COLLECT_EVERY: Duration = Duration::from_secs(5);

/// How often the compactor looks for pieces to compress in open parts (their
/// sizes are in memory)...
const PASS_EVERY: Duration = Duration::from_secs(1);
/// ...and every how many passes in closed ones too (their records are read
/// from sled, the ledger's among them).
const CLOSED_EVERY: u64 = 10;

/// Which parts a pass looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Open parts only: those that grow.
    Open,
    /// Open, sealed and waiting for their upload.
    All,
}

/// An open part's raw blocks are read once their encoded size reaches this:
/// NDJSON is larger than the blocks it comes from (field names, and the
/// origin each block stores once), so a piece is then nearly always there.
const READ_AT: u64 = (PIECE_BYTES as u64) * 3 / 4;

/// What the compactor did since the spool opened, for status and metrics.
#[derive(Default)]
pub struct Compacted {
    pub members: AtomicU64,
    pub lines: AtomicU64,
    /// Bytes of the lines' text, as part records count them.
    pub line_bytes: AtomicU64,
    pub ndjson_bytes: AtomicU64,
    pub gzip_bytes: AtomicU64,
}

/// The compactor's thread; it stops when this is stopped or dropped.
pub struct Compactor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    /// Starts compressing `spool`'s parts at gzip `level`, the level their
    /// objects are made at.
    pub fn start(spool: Arc<Spool>, level: u32) -> io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("larch-compact".into())
            .spawn(move || run(&spool, level, &stopped))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops after the member in hand, and waits for that.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the spool's compactor thread panicked");
            }
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn run(spool: &Spool, level: u32, stopped: &mpsc::Receiver<()>) {
    lower_priority();
    let keep_going = || matches!(stopped.try_recv(), Err(TryRecvError::Empty));
    let mut seen = HashMap::new();
    let mut to_collect = false;
    let mut collected = Instant::now();
    for pass in 0u64.. {
        match stopped.recv_timeout(PASS_EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let parts = if pass % CLOSED_EVERY == 0 {
            Parts::All
        } else {
            Parts::Open
        };
        match spool.compact_pass(level, &mut seen, parts, &keep_going) {
            Ok(made) => to_collect |= made > 0,
            Err(e) => tracing::warn!(
                "cannot list the spool's parts to compress their lines: {e}. Their lines stay as they are, and are compressed when staged."
            ),
        }
        // Collection reads every reference: at most every few seconds.
        if to_collect && collected.elapsed() >= COLLECT_EVERY {
            collected = Instant::now();
            to_collect = false;
            if let Err(e) = spool.collect_segments() {
                tracing::warn!("cannot remove segments the compactor emptied: {e}. They go with the next collection.");
                to_collect = true;
            }
        }
    }
}

/// Whether a part in `state` is compressed, and how: whether it is closed to
/// new lines, and at which gzip level. A part being uploaded is compressed
/// only once an attempt failed (`waiting`): it then waits, and each attempt
/// stages it again. Its object's bytes are recorded, made at the level it
/// records, so its members are made at that level and the object stays the
/// same bytes.
fn compactable(state: &PartState, level: u32, waiting: bool) -> Option<(bool, u32)> {
    match state {
        PartState::Open => Some((false, level)),
        PartState::Sealed => Some((true, level)),
        PartState::Uploading(upload) if waiting => Some((true, upload.level)),
        PartState::Uploading(_) | PartState::Uploaded(_) | PartState::Deleted(_) => None,
    }
}

/// Where the compactor left a part.
#[derive(Clone, Default)]
pub struct Seen {
    /// The part's line bytes and state when it last had nothing to compress:
    /// until they change, it still has nothing.
    idle_at: Option<(u64, bool)>,
    /// The first line number of the part's last member (the end of its block
    /// key, kept as a number rather than a key of its own for each part):
    /// its raw blocks start after it.
    last_member: Option<u64>,
    /// An open part whose raw blocks fell short of a piece is read again
    /// once its line bytes reach this (long lines make little more NDJSON
    /// than their blocks' size).
    read_again_at: u64,
}

impl Spool {
    /// Notes that an upload of part `id` failed: it waits now, and the
    /// compactor compresses what staging would otherwise compress at each
    /// attempt.
    pub fn note_upload_waiting(&self, id: &PartId) {
        self.uploads_waiting.lock().insert(id.clone());
    }

    fn upload_is_waiting(&self, id: &PartId, state: &PartState) -> bool {
        // One recorded before this start has waited through a restart.
        matches!(state, PartState::Uploading(u) if u.at < self.opened_ms)
            || self.uploads_waiting.lock().contains(id)
    }

    /// One pass over the parts that take or wait for lines; returns the
    /// members made. `keep_going` is asked between members. A part that
    /// cannot be compressed now is said so and left to staging.
    pub fn compact_pass(
        &self,
        level: u32,
        seen: &mut HashMap<PartId, Seen>,
        which: Parts,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<usize, SpoolError> {
        let mut parts: Vec<(PartId, u64, bool)> = self
            .lock()
            .open
            .iter()
            .map(|((account, hour), part)| {
                let id = PartId {
                    account: account.clone(),
                    hour: *hour,
                    seq: part.seq,
                };
                (id, part.bytes, false)
            })
            .collect();
        if which == Parts::All {
            for item in self.readable_parts() {
                let (id, record) = item?;
                let waiting = self.upload_is_waiting(&id, &record.state);
                if let Some((true, _)) = compactable(&record.state, level, waiting) {
                    parts.push((id, record.bytes, true));
                }
            }
            let live: std::collections::HashSet<&PartId> =
                parts.iter().map(|(id, ..)| id).collect();
            seen.retain(|id, _| live.contains(id));
        }
        // Closed parts are staged next: their members are wanted first.
        parts.sort_by(|(a, _, a_sealed), (b, _, b_sealed)| {
            b_sealed
                .cmp(a_sealed)
                .then_with(|| PartId::oldest_first(a, b))
        });
        let mut made = 0;
        for (id, bytes, sealed) in parts {
            if !keep_going() {
                break;
            }
            let at = seen.entry(id.clone()).or_default();
            if at.idle_at == Some((bytes, sealed)) || (!sealed && bytes < at.read_again_at) {
                continue;
            }
            match self.compact_part(&id, level, at, keep_going) {
                Ok(Some(0)) => at.idle_at = Some((bytes, sealed)),
                Ok(Some(n)) => made += n,
                // Being staged: nothing to do here any more.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(part = %id, "cannot compress lines of this part now: {e}. They stay as they are, and are compressed when it is staged.");
                    at.idle_at = Some((bytes, sealed));
                }
            }
        }
        Ok(made)
    }

    /// Compresses every full piece of a part (and, for a closed part, the
    /// last one). `None` if someone else held the part before any was made.
    fn compact_part(
        &self,
        id: &PartId,
        level: u32,
        at: &mut Seen,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Option<usize>, SpoolError> {
        let prefix = keys::blocks_of(id);
        let mut made = 0;
        while keep_going() {
            // Claimed for one member at a time: staging waits for one at most.
            let Some(_claim) = self.claims.try_take(id) else {
                return Ok((made > 0).then_some(made));
            };
            // Checked under the claim: staging, which moves a part on from
            // sealed, waits for it.
            let Some(record) = self.record(id)? else {
                break;
            };
            let waiting = self.upload_is_waiting(id, &record.state);
            let Some((sealed, level)) = compactable(&record.state, level, waiting) else {
                break;
            };
            let Some(raw_from) = self.raw_blocks(id, &prefix, &mut at.last_member, sealed)? else {
                break;
            };
            let mut piece = Vec::with_capacity(PIECE_BYTES + 2 * BLOCK_BYTES);
            let mut covered: Vec<sled::IVec> = Vec::new();
            let mut lines = 0u64;
            let mut line_bytes = 0u64;
            let blocks = self
                .db
                .range(raw_from..)
                .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)));
            self.walk_records(id, blocks, |key, record| -> Result<_, SpoolError> {
                let Stored::Lines(block) = record else {
                    // Members come first: one here means the walk started wrong.
                    return Ok(ControlFlow::Break(()));
                };
                for line in block {
                    line.write_ndjson(id.account.as_str(), &mut piece);
                    line_bytes += line.line.line.len() as u64;
                }
                lines += block.len() as u64;
                covered.push(key.into());
                Ok(if piece.len() >= PIECE_BYTES {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })?;
            if covered.is_empty() {
                break;
            }
            if piece.len() < PIECE_BYTES && !sealed {
                // An open part's short last piece may still grow: it is read
                // again once about enough text for the rest has come.
                let short = (PIECE_BYTES - piece.len()) as u64;
                let text_per_ndjson = line_bytes as f64 / piece.len().max(1) as f64;
                at.read_again_at = record.bytes + (short as f64 * text_per_ndjson) as u64;
                break;
            }
            let gzip = gzip_member(&piece, level)?;
            let member = Member {
                lines,
                ndjson_bytes: piece.len() as u64,
                gzip: &gzip,
            };
            self.swap_in(&covered, &member)?;
            self.compacted
                .line_bytes
                .fetch_add(line_bytes, Ordering::Relaxed);
            at.last_member = keys::block_first_line(id, &covered[0]);
            made += 1;
        }
        Ok(Some(made))
    }

    /// The key of a part's first raw block after its last member, if its raw
    /// blocks are worth reading now: for an open part, once they hold about a
    /// piece; for a closed one, whatever they hold. Reads references only as
    /// far as it needs to.
    fn raw_blocks(
        &self,
        id: &PartId,
        prefix: &[u8],
        last_member: &mut Option<u64>,
        sealed: bool,
    ) -> Result<Option<sled::IVec>, SpoolError> {
        let from = match last_member {
            Some(first_line) => keys::block(id, *first_line),
            None => prefix.to_vec(),
        };
        let mut first_raw = None;
        let mut raw_bytes = 0u64;
        for item in self.db.range(from..) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            match BlockRef::decode(&value) {
                Some((_, Holds::Member)) => {
                    *last_member = keys::block_first_line(id, &key);
                    first_raw = None;
                    raw_bytes = 0;
                }
                Some((at, Holds::Lines)) => {
                    raw_bytes += u64::from(at.len);
                    let first = first_raw.get_or_insert(key);
                    if sealed || raw_bytes >= READ_AT {
                        return Ok(Some(first.clone()));
                    }
                }
                // Damaged: the walk sets it aside.
                None => {
                    let first = first_raw.get_or_insert(key);
                    if sealed {
                        return Ok(Some(first.clone()));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Puts `member` in place of the blocks under `covered`, durably.
    fn swap_in(&self, covered: &[sled::IVec], member: &Member<'_>) -> Result<(), SpoolError> {
        let Some((first, rest)) = covered.split_first() else {
            return Ok(());
        };
        // As for a group: the member is on disk before sled learns of it, and
        // sled learns of it under its writer's lock, which segment collection
        // counts on (see `collect`). Members have segments of their own, so
        // the blocks' segments empty as their blocks are compressed.
        let mut writer = self.segments.lock_members()?;
        let at = writer.append_with(|out| member::encode_into(member, out))?;
        writer.sync()?;
        let mut batch = sled::Batch::default();
        for key in rest {
            batch.remove(key.clone());
        }
        batch.insert(first.clone(), &at.encode_member()[..]);
        if let Err(e) = self.db.apply_batch(batch) {
            self.durability
                .fail(&format!("sled could not take a member's reference: {e}"));
            return Err(e.into());
        }
        drop(writer);
        self.make_durable()?;
        let counts = &self.compacted;
        counts.members.fetch_add(1, Ordering::Relaxed);
        counts.lines.fetch_add(member.lines, Ordering::Relaxed);
        counts
            .ndjson_bytes
            .fetch_add(member.ndjson_bytes, Ordering::Relaxed);
        counts
            .gzip_bytes
            .fetch_add(member.gzip.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
