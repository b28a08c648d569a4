//! The spool: lines on local disk until the archive holds them, and the
//! state changes of their parts (open, sealed, uploading, uploaded).
//!
//! Lines are grouped into parts by (account, UTC hour, part number) and stored
//! in blocks of many lines. The blocks' bytes go into segment files
//! (`segments`); sled holds a small reference per block, the part records and
//! the counters. Each job has its file:
//!
//! - `open`: opening, and refusing a spool that lost part of itself;
//! - `append`: a group's blocks and its record written and fsynced, then
//!   their references staged in one atomic sled batch; only after that is
//!   anything acknowledged (`commit`, the group commit thread, which flushes
//!   sled in the background);
//! - `replay`: the group records, applied again at open to what sled lost;
//! - `durable`: [`Spool::make_durable`], sled flushed and fsynced;
//! - `seal`: parts closing once their time is up, and the task that does it;
//! - `room`: whether the spool may take more lines, and the task that
//!   measures it and seals early when it may not;
//! - `read`, `collect`, `summary`: reading parts back, giving disk back, counting;
//! - `handle`: the spool as async code holds it, every blocking call off the runtime.

mod append;
pub(crate) mod block;
mod claim;
mod codec;
mod collect;
mod commit;
pub mod compact;
mod durable;
mod error;
mod handle;
pub mod keys;
mod ledger;
mod member;
mod open;
pub mod part;
mod positions;
mod read;
mod replay;
pub mod reserve;
pub mod room;
pub mod seal;
mod segments;
pub mod summary;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use crate::account::AccountId;
use crate::clock::SharedClock;
use crate::hour::Hour;

pub(crate) use append::stored_bytes;
pub use append::Appended;
pub use commit::{Along, CommitError, Committer};
pub use error::SpoolError;
pub use handle::SpoolHandle;
pub use keys::PartId;
pub use ledger::LedgerEntry;
pub use part::{PartRecord, PartState, Upload};
pub use positions::{FileKey, FilePosition, PositionUpdate};
pub use read::Stored;
pub use reserve::Reserve;
pub use room::{NoRoom, Room, RoomLimits, RoomStatus};
pub use seal::SealRule;
pub use summary::SpoolSummary;

/// Bumped when the on-disk layout changes incompatibly: 3 writes blocks that
/// store each origin once, which a larch reading 2 would set aside as damaged;
/// 4 stores runs of lines compressed as members, which a larch reading 3
/// would set aside the same way; 5 leaves groups to be replayed from their
/// records (`replay`), which a larch reading 4 would not do.
const FORMAT_VERSION: u32 = 5;
/// Older layouts this larch still reads, and moves up to [`FORMAT_VERSION`].
const READS_FORMATS: &[u64] = &[2, 3, 4];
/// Lines per block are capped by size so a block decodes in little memory
/// and damage to one sets few lines aside. Each block costs a segment record
/// and a sled key of its own, so a request's lines go in few of them (a
/// 1,000-line request of 340 KB took six at 60 KiB, one sled key and one
/// node copy each).
pub(crate) const BLOCK_BYTES: usize = 256 * 1024;

/// An open part as the index holds it: its record's numbers without the
/// state, which is `Open` for every part here (a state, with room for an
/// upload, made the index take twice the memory per part).
#[derive(Clone, Copy)]
struct OpenPart {
    seq: u32,
    first_line_ms: crate::clock::EpochMs,
    lines: u64,
    bytes: u64,
}

impl OpenPart {
    /// The part's record, in `state`.
    fn record(&self, state: PartState) -> PartRecord {
        PartRecord {
            state,
            first_line_ms: self.first_line_ms,
            lines: self.lines,
            bytes: self.bytes,
        }
    }
}

/// What appends and seals change together, under one lock.
struct Index {
    open: HashMap<(AccountId, Hour), OpenPart>,
    next_line: u64,
}

pub struct Spool {
    db: sled::Db,
    segments: segments::Segments,
    durability: durable::Durability,
    index: parking_lot::Mutex<Index>,
    clock: SharedClock,
    seal_rule: SealRule,
    instance: u32,
    /// In every group record (`replay`).
    record_key: u64,
    quarantined: AtomicU64,
    /// Who walks or rewrites which part's records now (staging, the compactor).
    claims: claim::Claims,
    compacted: compact::Compacted,
    /// Bytes of line text appended since the spool opened (the intake rate).
    line_bytes_in: AtomicU64,
    /// Parts whose upload failed since the spool opened: they wait, and the
    /// compactor compresses them (`compact`).
    uploads_waiting: parking_lot::Mutex<std::collections::HashSet<PartId>>,
    /// When the spool opened: a part whose upload began before had to wait.
    opened_ms: crate::clock::EpochMs,
}

impl Spool {
    /// This spool's random ID, chosen when it was created, as status and
    /// object metadata show it.
    pub fn instance_hex(&self) -> String {
        format!("{:08x}", self.instance)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Index> {
        self.index.lock()
    }

    /// Sets what happens when the spool can no longer be made durable (see
    /// `durable`): the daemon exits, without answering what was waiting.
    pub fn on_durability_lost(&self, hook: durable::FailureHook) {
        self.durability.on_failure(hook);
    }

    /// Bytes of line text appended since the spool opened.
    pub fn line_bytes_in(&self) -> u64 {
        self.line_bytes_in
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Flushes and fsyncs everything staged so far.
    pub fn make_durable(&self) -> Result<(), SpoolError> {
        Ok(self.durability.flush(&self.db)?)
    }
}

fn read_u64(db: &sled::Db, name: &str) -> Result<Option<u64>, SpoolError> {
    Ok(db
        .get(keys::meta(name))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}
