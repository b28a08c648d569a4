//! The spool: lines on local disk, in sled, until the archive holds them.
//!
//! Lines are grouped into parts by (account, UTC hour, part number) and stored
//! in blocks of many lines. The blocks' bytes go into segment files (see
//! `segments`); sled holds a small reference per block, the part records and the
//! counters. [`Spool::append`] writes and fsyncs a group's blocks, then stages
//! their references in one atomic sled batch; [`Spool::make_durable`] flushes and
//! fsyncs sled, and only after that may anything be acknowledged (see `commit`).

pub(crate) mod block;
mod codec;
mod commit;
mod durable;
pub mod keys;
mod ledger;
pub mod part;
mod positions;
pub mod reserve;
pub mod room;
mod segments;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::account::AccountId;
use crate::clock::{EpochMs, SharedClock};
use crate::hour::Hour;
use crate::line::{Line, StoredLineRef};
use crate::seal::SealRule;

pub use commit::{Along, CommitError, Committer};
pub use keys::PartId;
pub use ledger::LedgerEntry;
pub use part::{PartRecord, PartState, Upload};
pub use positions::{FileKey, FilePosition, PositionUpdate};
pub use reserve::Reserve;
pub use room::{NoRoom, Room, RoomLimits, RoomStatus};

/// Bumped when the on-disk layout changes incompatibly: 3 writes blocks that
/// store each origin once, which a larch reading 2 would set aside as damaged.
const FORMAT_VERSION: u32 = 3;
/// Older layouts this larch still reads, and moves up to [`FORMAT_VERSION`].
const READS_FORMATS: &[u64] = &[2];
/// Lines per sled value are capped by size so values stay well inside sled's
/// inline limit and a block decodes in little memory.
const BLOCK_BYTES: usize = 60 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot open the spool in {path}: {source}. {}", open_advice(source))]
    Open { path: PathBuf, source: sled::Error },
    #[error("the spool in {path} has format version {found}, but this larch reads version {FORMAT_VERSION}. Run the larch version that wrote it until it has uploaded everything (`larch status` shows 0 lines waiting), then upgrade.")]
    Incompatible { path: PathBuf, found: u32 },
    #[error("the spool in {path} has lost part of itself: {what}. larch will not start on it, as it would archive nothing of what that part held. If the disk or its filesystem was repaired, copy back what it lost; to give up the spool's lines instead, move {path} aside and start larch again.")]
    Lost { path: PathBuf, what: String },
    #[error("spool storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("spool segment file error: {0}")]
    Segment(#[from] io::Error),
}

fn open_advice(source: &sled::Error) -> &'static str {
    match source {
        sled::Error::Io(e) if is_disk_full(e) => {
            "The disk is full, and larch's reserve (see README, \"When the disk fills\") is used up: free some space on it, and larch starts and uploads what it holds."
        }
        _ => "Check that the directory is writable and that no other larch process is using it.",
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28) | Some(122))
}

impl SpoolError {
    /// The disk (or its quota) is full: the client should retry later.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            SpoolError::Storage(sled::Error::Io(e)) | SpoolError::Segment(e) => e,
            SpoolError::Open {
                source: sled::Error::Io(e),
                ..
            } => e,
            _ => return false,
        };
        is_disk_full(io)
    }
}

/// sled writes a snapshot to `snap.<lsn>.generating` and renames it when it is
/// complete, but on open it reads the newest `snap.*` file, unfinished ones
/// included: a crash or a full disk during a snapshot write would stop the
/// spool from ever opening again. Such a file is only ever a partial copy of
/// what the log holds, so it goes. Called only after sled held the spool's lock
/// and failed, so no other process is writing one. Returns whether any went.
fn remove_unfinished_snapshots(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!(
                        "removed an unfinished sled snapshot left by a crash or a full disk: {}",
                        entry.path().display()
                    );
                    removed = true;
                }
                Err(e) => tracing::error!(
                    "cannot remove the unfinished sled snapshot {}: {e}",
                    entry.path().display()
                ),
            }
        }
    }
    removed
}

/// What one group commit appended.
pub struct Appended {
    pub batch_ids: Vec<String>,
    /// Follow-up parts the group opens (for hours already sealed).
    pub follow_ups: usize,
}

/// Counts for `larch status`.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpoolSummary {
    pub parts_open: u64,
    pub parts_sealed: u64,
    pub parts_uploading: u64,
    /// Uploaded, lines not yet deleted from the spool (a moment's state).
    #[serde(default)]
    pub parts_uploaded: u64,
    pub lines_waiting: u64,
    pub bytes_waiting: u64,
    /// Oldest hour with lines not yet archived, e.g. `2026-11-26T07:00Z`.
    pub oldest_waiting_hour: Option<String>,
    /// When that hour ended, epoch ms (the backlog's age is measured from it).
    #[serde(default)]
    pub oldest_waiting_hour_end: Option<EpochMs>,
    pub records_quarantined: u64,
    /// Bytes of line text by part state.
    #[serde(default)]
    pub bytes_open: u64,
    #[serde(default)]
    pub bytes_sealed: u64,
    #[serde(default)]
    pub bytes_uploading: u64,
}

struct OpenPart {
    seq: u32,
    record: PartRecord,
}

/// Consecutive lines of one request that go to the same part: where they
/// are, not the lines, so a group's lines stay in place until written.
struct Run {
    request: usize,
    lines: std::ops::Range<usize>,
    /// The spool's line number of the run's first line.
    first_seq: u64,
}

/// Lines of a request as the spool takes them, with what goes with them.
struct Taken {
    lines: Vec<Line>,
    /// IDs the source chose, one per line.
    ids: Option<Vec<String>>,
}

struct Index {
    open: HashMap<(AccountId, Hour), OpenPart>,
    next_line: u64,
}

pub struct Spool {
    db: sled::Db,
    segments: segments::Segments,
    durability: durable::Durability,
    index: Mutex<Index>,
    clock: SharedClock,
    seal_rule: SealRule,
    instance: u32,
    quarantined: AtomicU64,
}

impl Spool {
    /// Opens (or creates) the spool under `dir`.
    pub fn open(
        dir: &Path,
        clock: SharedClock,
        seal_rule: SealRule,
        cache_bytes: u64,
    ) -> Result<Self, SpoolError> {
        let path = dir.join("spool");
        let open_err = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        let segments_dir = dir.join("segments");
        // Looked at before anything is created, to tell a new spool from a lost one.
        let segments_before =
            segments::Segments::written(&segments_dir).map_err(|e| open_err(e.into()))?;
        durable::forget_cached(&path.join("db"));
        // sled makes its own files in here; the directory keeps them private.
        crate::files::own_dir(&path).map_err(|e| open_err(e.into()))?;
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Acks rely on our own flush + fsync, never on a background flush.
            .flush_every_ms(None);
        let db = match config.open() {
            Err(sled::Error::Corruption { .. }) if remove_unfinished_snapshots(&path) => {
                config.open()
            }
            opened => opened,
        }
        .map_err(open_err)?;
        let durability = durable::Durability::open(&path).map_err(|e| open_err(e.into()))?;
        let version = read_u64(&db, "version")?;
        // Before anything else, so an older layout is never called lost.
        if let Some(found) = version {
            if found != u64::from(FORMAT_VERSION) && !READS_FORMATS.contains(&found) {
                return Err(SpoolError::Incompatible {
                    path,
                    found: found as u32,
                });
            }
        }
        let lost = |what: String| SpoolError::Lost {
            path: dir.to_owned(),
            what,
        };
        match (&version, segments_before) {
            (None, Some(n)) if n > 0 => {
                return Err(lost(format!(
                    "its index (sled, in {}) is empty, but {} holds {n} segment file(s) of lines",
                    path.display(),
                    segments_dir.display()
                )))
            }
            (Some(_), None) if db.scan_prefix([keys::BLOCK]).next().transpose()?.is_some() => {
                return Err(lost(format!(
                    "{}, which holds the lines its index refers to, is gone",
                    segments_dir.display()
                )))
            }
            _ => {}
        }
        let segments = segments::Segments::open(&segments_dir).map_err(|e| open_err(e.into()))?;

        match version {
            None => {
                // A first start, or a spool removed by hand: either way, said.
                tracing::warn!(
                    "there was no spool in {}: starting a new, empty one",
                    dir.display()
                );
                db.insert(
                    keys::meta("version"),
                    &u64::from(FORMAT_VERSION).to_be_bytes(),
                )?;
            }
            Some(older) if READS_FORMATS.contains(&older) => {
                tracing::info!(
                    "the spool in {} moves from format version {older} to {FORMAT_VERSION}; \
                     the larch that wrote it can no longer open it",
                    path.display()
                );
                db.insert(
                    keys::meta("version"),
                    &u64::from(FORMAT_VERSION).to_be_bytes(),
                )?;
            }
            // Its own version: any other was refused above.
            Some(_) => {}
        }
        let instance = match read_u64(&db, "instance")? {
            Some(i) => i as u32,
            None => {
                let i: u32 = rand::random();
                db.insert(keys::meta("instance"), &u64::from(i).to_be_bytes())?;
                i
            }
        };
        let next_line = read_u64(&db, "next_line")?.unwrap_or(0);
        let spool = Self {
            db,
            segments,
            durability,
            index: Mutex::new(Index {
                open: HashMap::new(),
                next_line,
            }),
            clock,
            seal_rule,
            instance,
            quarantined: AtomicU64::new(0),
        };
        let quarantined = spool.db.scan_prefix([keys::QUARANTINE]).count() as u64;
        spool.quarantined.store(quarantined, Ordering::Relaxed);
        let mut open = HashMap::new();
        for (id, record) in spool.part_records(|_| true)? {
            if record.state == PartState::Open {
                open.insert(
                    (id.account, id.hour),
                    OpenPart {
                        seq: id.seq,
                        record,
                    },
                );
            }
        }
        spool.lock().open = open;
        spool.make_durable()?;
        Ok(spool)
    }

    /// This spool's random ID, chosen when it was created, as status and
    /// object metadata show it.
    pub fn instance_hex(&self) -> String {
        format!("{:08x}", self.instance)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stages every request of a group in one atomic batch: lines get their IDs
    /// and parts, counters move on. Nothing is durable until [`Self::make_durable`].
    pub fn append(
        &self,
        requests: Vec<(AccountId, Vec<Line>, Along)>,
    ) -> Result<Appended, SpoolError> {
        let now = self.clock.now_ms();
        let mut index = self.lock();
        let mut next_line = index.next_line;
        let mut follow_ups = 0;
        let mut touched: HashMap<(AccountId, Hour), OpenPart> = HashMap::new();
        let mut runs_by_part: HashMap<PartId, Vec<Run>> = HashMap::new();
        let mut batch_ids = Vec::with_capacity(requests.len());
        let mut positions = Vec::new();
        let mut taken = Vec::with_capacity(requests.len());

        for (request, (account, lines, along)) in requests.into_iter().enumerate() {
            positions.extend(along.positions);
            let request_seq = next_line;
            // Lines of a request mostly share an hour: look the part up once per run of them.
            for run in runs(&lines, |a, b| Hour::of(a.ts) == Hour::of(b.ts)) {
                let hour = Hour::of(lines[run.start].ts);
                let slot = (account.clone(), hour);
                let part = match touched.entry(slot) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let part = match index.open.get(e.key()) {
                            Some(p) => OpenPart {
                                seq: p.seq,
                                record: p.record.clone(),
                            },
                            None => {
                                let part = self.new_part(&account, hour, now)?;
                                follow_ups += usize::from(part.seq > 0);
                                part
                            }
                        };
                        e.insert(part)
                    }
                };
                part.record.lines += run.len() as u64;
                part.record.bytes += lines[run.clone()]
                    .iter()
                    .map(|l| l.line.len() as u64)
                    .sum::<u64>();
                let id = PartId {
                    account: account.clone(),
                    hour,
                    seq: part.seq,
                };
                runs_by_part.entry(id).or_default().push(Run {
                    request,
                    first_seq: request_seq + run.start as u64,
                    lines: run,
                });
            }
            next_line += lines.len() as u64;
            let first_id = match along.ids.as_ref().and_then(|ids| ids.first()) {
                Some(id) => id.clone(),
                None => line_id(now, self.instance, request_seq),
            };
            batch_ids.push(first_id);
            taken.push(Taken {
                lines,
                ids: along.ids,
            });
        }

        let mut batch = sled::Batch::default();
        // The blocks are on disk before sled learns where they are. If they
        // cannot be written or fsynced, sled never learns of them: the group
        // is refused whole and none of it can reach the archive.
        let mut writer = self.segments.lock();
        for (part_id, runs) in runs_by_part {
            for (first_seq, block) in self.blocks(&taken, &runs, now) {
                let at = writer.append(&block)?;
                batch.insert(keys::block(&part_id, first_seq), &at.encode()[..]);
            }
        }
        writer.sync()?;
        for ((account, hour), part) in &touched {
            let id = PartId {
                account: account.clone(),
                hour: *hour,
                seq: part.seq,
            };
            batch.insert(keys::part(&id), codec::encode(&part.record));
        }
        batch.insert(keys::meta("next_line"), &next_line.to_be_bytes());
        for update in &positions {
            match update.value_bytes() {
                Some(value) => batch.insert(update.key_bytes(), value),
                None => batch.remove(update.key_bytes()),
            }
        }
        // sled applies a batch atomically for recovery, but not in memory: on
        // an error some of it may be visible and could become durable with
        // the next flush. So that is final, as a failed flush is.
        if let Err(e) = self.db.apply_batch(batch) {
            self.durability
                .fail(&format!("sled could not take a group's references: {e}"));
            return Err(e.into());
        }
        drop(writer);

        index.next_line = next_line;
        index.open.extend(touched);
        Ok(Appended {
            batch_ids,
            follow_ups,
        })
    }

    /// Sets what happens when the spool can no longer be made durable (see
    /// `durable`): the daemon exits, without answering what was waiting.
    pub fn on_durability_lost(&self, hook: durable::FailureHook) {
        self.durability.on_failure(hook);
    }

    /// Flushes and fsyncs everything staged so far.
    pub fn make_durable(&self) -> Result<(), SpoolError> {
        Ok(self.durability.flush(&self.db)?)
    }

    /// A part's lines of one group, encoded as blocks of about [`BLOCK_BYTES`],
    /// each with the spool's line number of its first line. Lines are encoded
    /// from where they lie; only one block's IDs are held at a time.
    fn blocks<'a>(
        &'a self,
        taken: &'a [Taken],
        runs: &'a [Run],
        now: EpochMs,
    ) -> impl Iterator<Item = (u64, Vec<u8>)> + 'a {
        let mut lines = runs.iter().flat_map(move |run| {
            let request = &taken[run.request];
            run.lines.clone().map(move |i| {
                let seq = run.first_seq + (i - run.lines.start) as u64;
                let given = request.ids.as_ref().and_then(|ids| ids.get(i));
                (seq, &request.lines[i], given)
            })
        });
        let mut pending = lines.next();
        std::iter::from_fn(move || {
            let (first_seq, ..) = pending?;
            let mut block = Vec::new();
            let mut size = 0;
            while let Some((seq, line, given)) = pending {
                let line_size = block_weight(line);
                if !block.is_empty() && size + line_size > BLOCK_BYTES {
                    break;
                }
                size += line_size;
                block.push(block::ToWrite {
                    id: given
                        .cloned()
                        .unwrap_or_else(|| line_id(now, self.instance, seq)),
                    received: now,
                    line,
                });
                pending = lines.next();
            }
            Some((first_seq, block::encode(&block)))
        })
    }

    /// A part for an (account, hour) that has none open: the first part of the
    /// hour, or the next follow-up part after the ones already known.
    fn new_part(
        &self,
        account: &AccountId,
        hour: Hour,
        now: EpochMs,
    ) -> Result<OpenPart, SpoolError> {
        let last = self
            .db
            .scan_prefix(keys::parts_of_hour(account, hour))
            .keys()
            .next_back()
            .transpose()?;
        let seq = match last.as_deref().and_then(keys::parse_part) {
            Some(p) => p.seq + 1,
            None => 0,
        };
        Ok(OpenPart {
            seq,
            record: PartRecord {
                state: PartState::Open,
                first_line_ms: now,
                lines: 0,
                bytes: 0,
            },
        })
    }

    /// Seals every open part whose time is up, durably. Returns the parts sealed.
    pub fn seal_due(&self) -> Result<Vec<PartId>, SpoolError> {
        let now = self.clock.now_ms();
        self.seal_where(|hour, p| self.seal_rule.due_at(hour, p.seq, p.record.first_line_ms) <= now)
    }

    /// Seals every open part now, whatever its time (`larch drain`). Lines that
    /// arrive later for the same hours go to follow-up parts.
    pub fn seal_all(&self) -> Result<Vec<PartId>, SpoolError> {
        self.seal_where(|_, _| true)
    }

    fn seal_where(&self, due: impl Fn(Hour, &OpenPart) -> bool) -> Result<Vec<PartId>, SpoolError> {
        let sealed = {
            let mut index = self.lock();
            let due: Vec<(AccountId, Hour)> = index
                .open
                .iter()
                .filter(|((_, hour), p)| due(*hour, p))
                .map(|(slot, _)| slot.clone())
                .collect();
            if due.is_empty() {
                return Ok(Vec::new());
            }
            let mut batch = sled::Batch::default();
            let mut sealed = Vec::with_capacity(due.len());
            for slot in &due {
                if let Some(p) = index.open.get(slot) {
                    let id = PartId {
                        account: slot.0.clone(),
                        hour: slot.1,
                        seq: p.seq,
                    };
                    let record = PartRecord {
                        state: PartState::Sealed,
                        ..p.record.clone()
                    };
                    batch.insert(keys::part(&id), codec::encode(&record));
                    sealed.push(id);
                }
            }
            self.db.apply_batch(batch)?;
            for slot in &due {
                index.open.remove(slot);
            }
            sealed
        };
        self.make_durable()?;
        Ok(sealed)
    }

    /// The part records `keep` accepts, in key order. A record that does not
    /// decode is set aside and replaced by a sealed record of the same part, so
    /// its lines are still archived (its own key says which part it was).
    fn part_records(
        &self,
        keep: impl Fn(&PartRecord) -> bool,
    ) -> Result<Vec<(PartId, PartRecord)>, SpoolError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([keys::PART]) {
            let (key, value) = item?;
            let Some(id) = keys::parse_part(&key) else {
                self.quarantine(&key, &value, "part key does not parse")?;
                continue;
            };
            match codec::decode::<PartRecord>(&value) {
                Ok(record) if keep(&record) => out.push((id, record)),
                Ok(_) => {}
                Err(e) => {
                    self.quarantine(&key, &value, &format!("part record of {id}: {e}"))?;
                    let record = PartRecord {
                        state: PartState::Sealed,
                        first_line_ms: self.clock.now_ms(),
                        lines: 0,
                        bytes: 0,
                    };
                    self.db.insert(&key, codec::encode(&record))?;
                    if keep(&record) {
                        out.push((id, record));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Parts the sync loop has work for, oldest hour first.
    pub fn parts_to_sync(&self) -> Result<Vec<(PartId, PartRecord)>, SpoolError> {
        // Open parts, however many, are not collected: only what has work.
        let mut parts = self.part_records(|r| r.state.needs_sync())?;
        parts.sort_by(|(a, _), (b, _)| {
            (a.hour, &a.account, a.seq).cmp(&(b.hour, &b.account, b.seq))
        });
        Ok(parts)
    }

    pub fn record(&self, id: &PartId) -> Result<Option<PartRecord>, SpoolError> {
        match self.db.get(keys::part(id))? {
            None => Ok(None),
            Some(v) => Ok(codec::decode(&v).ok()),
        }
    }

    /// Moves a part to its next state, durably.
    pub fn set_record(&self, id: &PartId, record: &PartRecord) -> Result<(), SpoolError> {
        self.db.insert(keys::part(id), codec::encode(record))?;
        self.make_durable()
    }

    /// Calls `each` with every block of a part's lines, in the order they were
    /// made durable. A block that fails its checksum is set aside and skipped.
    pub fn for_each_block<E: From<SpoolError>>(
        &self,
        id: &PartId,
        mut each: impl FnMut(&[StoredLineRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut reader = self.segments.reader();
        for item in self.db.scan_prefix(keys::blocks_of(id)) {
            let (key, value) = item.map_err(SpoolError::from)?;
            let Some(at) = segments::BlockRef::decode(&value) else {
                self.quarantine(&key, &value, &format!("block reference of {id} is damaged"))?;
                continue;
            };
            let bytes = match reader.read(&at) {
                Ok(bytes) => bytes,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    self.quarantine(
                        &key,
                        &value,
                        &format!(
                            "block of {id} is missing from segment {:016x}: {e}",
                            at.segment
                        ),
                    )?;
                    continue;
                }
                Err(e) => return Err(SpoolError::from(e).into()),
            };
            match block::decode(bytes) {
                Ok(block) => each(&block.lines())?,
                Err(e) => self.quarantine(&key, bytes, &format!("block of {id}: {e}"))?,
            }
        }
        Ok(())
    }

    /// Deletes segment files that no block refers to any more. Cheap enough to
    /// run after uploads: it reads only the small block references.
    pub fn collect_segments(&self) -> Result<usize, SpoolError> {
        self.collect_segments_then(|| {})
    }

    /// [`Self::collect_segments`], calling `after_scan` between the scan of the
    /// references and the removal (where tests make appends happen).
    fn collect_segments_then(&self, after_scan: impl FnOnce()) -> Result<usize, SpoolError> {
        // Taken under the writer lock, which a group holds from its first
        // append until sled has its references: every reference into a segment
        // older than this one is in sled by now, and no new one can come.
        let start = self.segments.lock().position();
        let mut live = std::collections::HashSet::new();
        for value in self.db.scan_prefix([keys::BLOCK]).values() {
            if let Some(at) = segments::BlockRef::decode(&value?) {
                live.insert(at.segment);
            }
        }
        after_scan();
        let before = {
            let mut writer = self.segments.lock();
            // Nothing was appended since the scan and nothing refers to the
            // current segment: start a new one so this one can go too.
            if writer.position() == start && start.1 > 0 && !live.contains(&start.0) {
                writer.rotate()?;
                writer.sync()?;
                start.0 + 1
            } else {
                // Not the writer's segment now: appends during the scan may
                // have filled the one it started in, with references the scan
                // did not see.
                start.0
            }
        };
        Ok(self.segments.remove_unreferenced(before, &live)?)
    }

    /// Removes an uploaded part's lines from the spool.
    pub fn delete_blocks(&self, id: &PartId) -> Result<(), SpoolError> {
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for key in self.db.scan_prefix(keys::blocks_of(id)).keys() {
            batch.remove(key?);
            pending += 1;
            if pending == 1024 {
                self.db.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    fn quarantine(&self, key: &[u8], value: &[u8], why: &str) -> Result<(), SpoolError> {
        tracing::error!("corrupt spool record set aside: {why}. Its raw bytes are kept in the spool's quarantine; the other records are unaffected.");
        let mut batch = sled::Batch::default();
        batch.insert(keys::quarantine(key), value);
        batch.remove(key);
        self.db.apply_batch(batch)?;
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every part record that reads back, without setting any aside (for counts).
    fn readable_parts(&self) -> impl Iterator<Item = Result<(PartId, PartRecord), SpoolError>> {
        self.db
            .scan_prefix([keys::PART])
            .filter_map(|item| match item {
                Err(e) => Some(Err(e.into())),
                Ok((key, value)) => Some(Ok((
                    keys::parse_part(&key)?,
                    codec::decode::<PartRecord>(&value).ok()?,
                ))),
            })
    }

    /// Bytes of lines waiting for the archive, per account (for fair shares of room).
    pub fn waiting_by_account(&self) -> Result<HashMap<AccountId, u64>, SpoolError> {
        let mut out = HashMap::new();
        for item in self.readable_parts() {
            let (id, record) = item?;
            if record.state.is_waiting() {
                *out.entry(id.account).or_insert(0) += record.bytes;
            }
        }
        Ok(out)
    }

    pub fn summary(&self) -> Result<SpoolSummary, SpoolError> {
        let mut s = SpoolSummary {
            records_quarantined: self.quarantined.load(Ordering::Relaxed),
            ..SpoolSummary::default()
        };
        let mut oldest: Option<Hour> = None;
        for item in self.readable_parts() {
            let (id, record) = item?;
            match record.state {
                PartState::Open => {
                    s.parts_open += 1;
                    s.bytes_open += record.bytes;
                }
                PartState::Sealed => {
                    s.parts_sealed += 1;
                    s.bytes_sealed += record.bytes;
                }
                PartState::Uploading(_) => {
                    s.parts_uploading += 1;
                    s.bytes_uploading += record.bytes;
                }
                PartState::Uploaded(_) => s.parts_uploaded += 1,
                PartState::Deleted(_) => {}
            }
            if record.state.is_waiting() {
                s.lines_waiting += record.lines;
                s.bytes_waiting += record.bytes;
                oldest = Some(oldest.map_or(id.hour, |o| o.min(id.hour)));
            }
        }
        s.oldest_waiting_hour = oldest.map(|h| h.to_string());
        s.oldest_waiting_hour_end = oldest.map(|h| h.end_ms());
        Ok(s)
    }
}

fn read_u64(db: &sled::Db, name: &str) -> Result<Option<u64>, SpoolError> {
    Ok(db
        .get(keys::meta(name))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

/// How much of a block a line fills: blocks close at [`BLOCK_BYTES`] of this.
fn block_weight(line: &Line) -> usize {
    line.line.len() + line.meta_json().map_or(0, str::len) + 128
}

/// What lines take in the spool: their own fields, and each origin once per
/// block it is stored in. Blocks are per part, so a run of lines for one hour
/// fills its own blocks; runs that come back to an hour are counted again,
/// which can only count more than is stored. Admission counts this, so fields
/// a request shares are never counted less than they take.
pub(crate) fn stored_bytes(lines: &[Line]) -> usize {
    let own: usize = lines.iter().map(Line::stored_size).sum();
    let same_block = |a: &Line, b: &Line| {
        Hour::of(a.ts) == Hour::of(b.ts) && std::sync::Arc::ptr_eq(&a.origin, &b.origin)
    };
    let origins: usize = runs(lines, same_block)
        .map(|run| {
            let weight: usize = lines[run.clone()].iter().map(block_weight).sum();
            lines[run.start].origin.stored_size() * (weight / BLOCK_BYTES + 1)
        })
        .sum();
    own + origins
}

/// The ranges of consecutive lines that `together` keeps with the first of each.
fn runs<'a>(
    lines: &'a [Line],
    together: impl Fn(&Line, &Line) -> bool + 'a,
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = lines.get(start)?;
        let end = lines[start..]
            .iter()
            .position(|l| !together(first, l))
            .map_or(lines.len(), |n| start + n);
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// A ULID-shaped line ID: receive time (ms), this spool's instance, and the
/// spool's line counter, which never repeats even if the clock steps back.
fn line_id(now: EpochMs, instance: u32, seq: u64) -> String {
    let ms = (now.max(0) as u128) & ((1 << 48) - 1);
    let value = (ms << 80) | (u128::from(instance) << 48) | u128::from(seq & ((1 << 48) - 1));
    ulid::Ulid(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a spool in `dir`, after marking its format as `version`.
    fn open_as_version(dir: &Path, version: u64) -> Result<Spool, SpoolError> {
        let clock: SharedClock =
            std::sync::Arc::new(crate::clock::ManualClock::new(3_600_000 * 100));
        let open = || Spool::open(dir, clock.clone(), SealRule::default(), 1 << 20);
        let spool = open()?;
        spool
            .db
            .insert(keys::meta("version"), &version.to_be_bytes())?;
        spool.make_durable()?;
        drop(spool);
        open()
    }

    #[test]
    fn a_spool_of_the_previous_format_opens_and_moves_up() {
        let dir = tempfile::tempdir().unwrap();
        let spool =
            open_as_version(dir.path(), 2).expect("a larch reads the format before its own");
        assert_eq!(
            read_u64(&spool.db, "version").unwrap(),
            Some(u64::from(FORMAT_VERSION)),
            "and marks it as its own, so an older larch refuses it"
        );
    }

    #[test]
    fn a_spool_of_another_format_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = open_as_version(dir.path(), 99) else {
            panic!("a spool of format version 99 was opened")
        };
        assert!(
            matches!(err, SpoolError::Incompatible { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("version 99"), "{err}");
        // Refusing wrote nothing: the spool is still version 99.
        let clock: SharedClock =
            std::sync::Arc::new(crate::clock::ManualClock::new(3_600_000 * 100));
        assert!(matches!(
            Spool::open(dir.path(), clock, SealRule::default(), 1 << 20),
            Err(SpoolError::Incompatible { .. })
        ));
    }

    #[test]
    fn an_unfinished_sled_snapshot_does_not_stop_the_spool_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock =
            std::sync::Arc::new(crate::clock::ManualClock::new(3_600_000 * 100));
        let open = || Spool::open(dir.path(), clock.clone(), SealRule::default(), 1 << 20);
        let spool = open().unwrap();
        spool.seal_all().unwrap();
        drop(spool);
        // What a snapshot write cut short by a kill or a full disk leaves.
        let spool_dir = dir.path().join("spool");
        std::fs::write(spool_dir.join("snap.FFFFFFFFFFFFFFF0.generating"), b"").unwrap();
        std::fs::write(
            spool_dir.join("snap.FFFFFFFFFFFFFFF1.generating"),
            vec![7u8; 40],
        )
        .unwrap();
        open().expect("the spool opens");
        assert!(!spool_dir.join("snap.FFFFFFFFFFFFFFF0.generating").exists());
    }

    fn lines(n: usize, hour_ms: i64) -> Vec<Line> {
        let origin = std::sync::Arc::new(crate::line::Origin {
            ingester: "http",
            ..Default::default()
        });
        (0..n)
            .map(|i| Line::new(hour_ms, format!("line {i}"), origin.clone()))
            .collect()
    }

    fn texts_of(spool: &Spool, id: &PartId) -> Vec<String> {
        let mut out = Vec::new();
        spool
            .for_each_block(id, |block| -> Result<(), SpoolError> {
                out.extend(block.iter().map(|l| l.line.line.to_string()));
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn segment_collection_keeps_a_segment_filled_while_it_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let hour_ms = 3_600_000 * 100;
        let clock: SharedClock = std::sync::Arc::new(crate::clock::ManualClock::new(hour_ms));
        let spool = Spool::open(dir.path(), clock, SealRule::default(), 1 << 20).unwrap();
        let account = AccountId::parse("acme").unwrap();
        let commit = |n| {
            spool
                .append(vec![(account.clone(), lines(n, hour_ms), Along::default())])
                .unwrap();
            spool.make_durable().unwrap();
        };
        commit(10);
        spool.segments.lock().rotate().unwrap();
        // Empty when collection starts, so the scan finds no reference into it.
        let filled = spool.segments.current();
        // While collection scans the references, a group lands in the current
        // segment and the writer moves on to a new one (a full segment, or a
        // failed write), so the segment the scan started in is no longer the
        // writer's and the group's references were not seen.
        let removed = spool
            .collect_segments_then(|| {
                commit(5);
                spool.segments.lock().rotate().unwrap();
            })
            .unwrap();
        assert!(spool.segments.current() > filled);
        assert_eq!(removed, 0, "segment {filled:016x} holds acknowledged lines");
        let part = PartId {
            account,
            hour: Hour::of(hour_ms),
            seq: 0,
        };
        assert_eq!(texts_of(&spool, &part).len(), 15);
        assert_eq!(spool.quarantined.load(Ordering::Relaxed), 0);
    }
}
