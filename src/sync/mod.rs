//! The sync loop: sealed parts become archive objects, and only then leave the spool.
//!
//! Each part walks `sealed → uploading(key) → uploaded → deleted`, and every
//! step is recorded durably before the next one starts, so a crash anywhere
//! resumes without losing a line or writing an object twice:
//!
//! - the key is recorded before the first byte goes out, its `.N` chosen from
//!   one listing of the hour's names (`number`);
//! - an object already at that key is checked (unless this process chose the
//!   key and had not tried it yet, so it cannot be ours): if it holds this
//!   part's exact bytes, the part is done; if it holds anything else, the hour
//!   is listed again and a free `.N` chosen;
//! - lines are deleted only after the target confirmed the object.

mod backoff;
mod board;
mod compress;
mod number;
pub mod stage;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use board::{Board, SyncReport};
use stage::{StageError, Staged};

use crate::clock::SharedClock;
use crate::hour::object_key;
use crate::spool::{PartId, PartRecord, PartState, Spool, SpoolError, SpoolHandle, Upload};
use crate::store::{Created, Ownership, Target, TargetError};

/// Parts compressed and uploaded at once.
const CONCURRENCY: usize = 2;
/// How often the loop looks for work when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Spool segment files are looked at for removal at most this often.
const COLLECT_EVERY: Duration = Duration::from_secs(5);
/// Ledger entries past their keeping time are looked for this often.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// A part waiting for an operator is retried this often (or at the backoff cap, if lower).
const OPERATOR_RETRY: Duration = Duration::from_secs(30);
/// While every part backs off from a cloud store that did not answer, it is
/// asked this often whether it answers again (one HEAD request)...
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// ...and given this long to.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The key the probe asks for; whether it exists does not matter.
const PROBE_KEY: &str = "larch-probe";

/// A part that failed: how often, and when it may go again.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempt: u32,
    at: Instant,
    /// The store did not answer it at all, so a store that answers again is
    /// worth trying at once. (A store that answered with an error, busy or
    /// refusing, keeps the part's own backoff.)
    unreachable: bool,
}

/// What the probe knows: which part it let go first, and how often a part
/// it let go found the store unreachable all the same (a store that answers
/// a HEAD but not an upload), which spaces its next release out.
#[derive(Default)]
struct Probe {
    last: Option<Instant>,
    /// The last probe had an answer.
    answered: bool,
    first_part: Option<PartId>,
    strikes: u32,
    not_before: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("upload to {key}: {source}")]
    Target { key: String, source: TargetError },
}

pub struct SyncSettings {
    pub staging_dir: PathBuf,
    pub gzip_level: u32,
    pub key_prefix: String,
    /// About how many hosts share the names of this target (`number`).
    pub fleet_size: u32,
    pub backoff: Backoff,
    /// How long the ledger remembers an uploaded object (`ledger_keep`).
    pub ledger_keep: Duration,
}

pub struct Syncer {
    spool: SpoolHandle,
    target: Arc<Target>,
    settings: SyncSettings,
    clock: SharedClock,
    board: Arc<Board>,
    /// Parts that failed, with their attempt count and when they may go again.
    retry_at: Mutex<HashMap<PartId, Retry>>,
    /// The probe of a store every part backs off from.
    probe: Mutex<Probe>,
    /// Parts were let go early (the store answers again): pass again now.
    released: Notify,
    /// Set when parts left the spool: their segment files may be free now.
    segments_to_collect: AtomicBool,
    last_collected: Mutex<Option<Instant>>,
    last_pruned: Mutex<Option<Instant>>,
    /// Keys this process chose from a listing and has not tried yet: an
    /// object found there is another writer's, with no HEAD to ask.
    untried_keys: Mutex<HashSet<String>>,
    /// Races for a name each part lost since this process started.
    lost_races: Mutex<HashMap<PartId, u32>>,
    /// The most names an hour held when this process listed it after losing
    /// a race: a fleet's size as this host has seen it (`number`).
    crowd_seen: AtomicU32,
}

/// The staging directory's name under the data directory.
pub const STAGING_DIR: &str = "staging";

impl Syncer {
    pub fn new(
        spool: SpoolHandle,
        target: Arc<Target>,
        settings: SyncSettings,
        clock: SharedClock,
        board: Arc<Board>,
    ) -> std::io::Result<Self> {
        // Staged files are derived data; a crash may leave partial ones behind.
        if settings.staging_dir.exists() {
            std::fs::remove_dir_all(&settings.staging_dir)?;
        }
        crate::files::own_dir(&settings.staging_dir)?;
        Ok(Self {
            spool,
            target,
            settings,
            clock,
            board,
            retry_at: Mutex::new(HashMap::new()),
            probe: Mutex::new(Probe::default()),
            released: Notify::new(),
            // A previous run may have deleted parts without freeing their segments.
            segments_to_collect: AtomicBool::new(true),
            last_collected: Mutex::new(None),
            last_pruned: Mutex::new(None),
            untried_keys: Mutex::new(HashSet::new()),
            lost_races: Mutex::new(HashMap::new()),
            crowd_seen: AtomicU32::new(0),
        })
    }

    /// Runs until `stop`. Work in flight is abandoned safely: its recorded
    /// state lets the next start pick it up where it stood.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.clone().pass() => {}
                _ = stop.cancelled() => return,
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = self.released.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One pass over every part that has sync work and is not backing off,
    /// oldest hours first.
    pub async fn pass(self: Arc<Self>) {
        let parts = match self.spool.run(Spool::parts_to_sync).await {
            Ok(parts) => parts,
            Err(e) => {
                tracing::error!("cannot list parts to upload, will try again: {e}");
                return;
            }
        };
        let now = Instant::now();
        let mut ready: Vec<_> = {
            let retry_at = self.retry_at.lock();
            // While parts back off from a store that does not answer (and
            // the probe had no answer either), a part sealed meanwhile waits
            // with them rather than be staged only to fail: the compactor
            // compresses it in the spool, and the release lets it go with the
            // others.
            let store_down = retry_at.values().any(|r| r.unreachable && r.at > now)
                && !self.probe.lock().answered;
            parts
                .iter()
                .filter(|(id, record)| match retry_at.get(id) {
                    Some(retry) => retry.at <= now,
                    None => !(store_down && record.state == PartState::Sealed),
                })
                .cloned()
                .collect()
        };
        if ready.is_empty() && self.store_answers_again().await {
            // One part goes first; when it lands, [`Self::release`] lets the rest go.
            let oldest = {
                let retry_at = self.retry_at.lock();
                parts
                    .into_iter()
                    .filter(|(id, _)| retry_at.get(id).is_some_and(|r| r.unreachable))
                    .min_by(|(a, _), (b, _)| PartId::oldest_first(a, b))
            };
            self.probe.lock().first_part = oldest.as_ref().map(|(id, _)| id.clone());
            ready.extend(oldest);
        }
        ready.sort_by(|(a, _), (b, _)| PartId::oldest_first(a, b));
        futures::stream::iter(ready)
            .for_each_concurrent(CONCURRENCY, |(id, record)| {
                let this = self.clone();
                async move { this.sync_one(id, record).await }
            })
            .await;
        self.collect_segments().await;
        self.prune_ledger().await;
    }

    /// Whether a cloud store that every waiting part is backing off from
    /// answers again: asked at most every [`PROBE_EVERY`], with one HEAD
    /// request. Any answer but a busy one counts, even a refusal: the link is
    /// back. (A local directory is not asked: what fails there is the disk,
    /// not a link.)
    async fn store_answers_again(&self) -> bool {
        if self.target.local_dir().is_some() {
            return false;
        }
        if !self.retry_at.lock().values().any(|r| r.unreachable) {
            return false;
        }
        {
            let mut probe = self.probe.lock();
            let now = Instant::now();
            if probe.last.is_some_and(|at| at + PROBE_EVERY > now)
                || probe.not_before.is_some_and(|at| at > now)
            {
                return false;
            }
            probe.last = Some(now);
        }
        let answered = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.target.head(PROBE_KEY)).await,
            Ok(Ok(_) | Err(TargetError::NeedsOperator(_)))
        );
        self.probe.lock().answered = answered;
        if answered {
            tracing::info!("the store answers again; the oldest waiting part goes first");
        }
        answered
    }

    /// A part reached the store: every part that backs off because the store
    /// did not answer may go now (keeping its count of attempts).
    fn release(&self, retry_at: &mut HashMap<PartId, Retry>) {
        *self.probe.lock() = Probe::default();
        let now = Instant::now();
        let mut released = 0;
        for retry in retry_at
            .values_mut()
            .filter(|r| r.unreachable && r.at > now)
        {
            retry.at = now;
            released += 1;
        }
        if released > 0 {
            tracing::info!("{released} waiting part(s) go now: the store took an upload");
            self.released.notify_one();
        }
    }

    /// The part the probe let go found no store all the same: the next
    /// release waits as a part's next retry would.
    fn probe_missed(&self, id: &PartId) {
        let mut probe = self.probe.lock();
        if probe.first_part.as_ref() == Some(id) {
            probe.first_part = None;
            probe.strikes += 1;
            probe.not_before = Some(Instant::now() + self.settings.backoff.delay(probe.strikes));
        }
    }

    /// Forgets ledger entries older than `ledger_keep`, at most every `PRUNE_EVERY`.
    async fn prune_ledger(&self) {
        {
            let mut last = self.last_pruned.lock();
            if last.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let keep_ms = self.settings.ledger_keep.as_millis().min(i64::MAX as u128) as i64;
        let before = self.clock.now_ms().saturating_sub(keep_ms);
        match self.spool.run(move |s| s.prune_ledger(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("ledger: forgot {n} uploaded part(s) older than ledger_keep"),
            Err(e) => tracing::warn!("could not prune the ledger, will try again: {e}"),
        }
    }

    /// Frees segment files whose parts have all left the spool, at most every
    /// `COLLECT_EVERY`: it reads every block reference.
    async fn collect_segments(&self) {
        {
            let mut last = self.last_collected.lock();
            if last.is_some_and(|at| at.elapsed() < COLLECT_EVERY)
                || !self.segments_to_collect.swap(false, Ordering::Relaxed)
            {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.spool.run(Spool::collect_segments).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!("removed {n} spool segment file(s) no part needs"),
            Err(e) => {
                tracing::warn!("could not remove unused spool segments, will try again: {e}");
                self.segments_to_collect.store(true, Ordering::Relaxed);
            }
        }
    }

    async fn sync_one(&self, id: PartId, record: PartRecord) {
        let result = self.advance(&id, record).await;
        let mut retry_at = self.retry_at.lock();
        match result {
            Ok(reached_store) => {
                if retry_at.remove(&id).is_some() && retry_at.is_empty() {
                    crate::telemetry::backoff_over();
                }
                if reached_store {
                    self.release(&mut retry_at);
                }
            }
            Err(e) => {
                self.spool.note_upload_waiting(&id);
                let needs_operator = matches!(
                    e,
                    SyncError::Target {
                        source: TargetError::NeedsOperator(_),
                        ..
                    }
                );
                let attempt = retry_at.get(&id).map_or(1, |r| r.attempt + 1);
                let unreachable = matches!(
                    e,
                    SyncError::Target {
                        source: TargetError::Unreachable(_),
                        ..
                    }
                );
                if unreachable {
                    self.probe_missed(&id);
                }
                let delay = if needs_operator {
                    OPERATOR_RETRY.min(self.settings.backoff.cap)
                } else {
                    self.settings.backoff.delay(attempt)
                };
                let key = match &e {
                    SyncError::Target { key, .. } => key.as_str(),
                    _ => "-",
                };
                if needs_operator {
                    tracing::error!(part = %id, key, "upload paused until this is fixed: {e}. Nothing is dropped; larch retries every {}s.", delay.as_secs());
                } else {
                    tracing::warn!(part = %id, key, attempt, "upload failed: {e}. Lines stay in the spool; retrying in {:.1}s.", delay.as_secs_f64());
                }
                crate::telemetry::backing_off(delay);
                self.board
                    .upload_failed(format!("{id}: {e}"), self.clock.now_ms(), needs_operator);
                retry_at.insert(
                    id,
                    Retry {
                        attempt,
                        at: Instant::now() + delay,
                        unreachable,
                    },
                );
            }
        }
    }

    /// Walks one part through its states until it is deleted or a step fails;
    /// says whether the store took (or already held) its object on the way.
    async fn advance(&self, id: &PartId, record: PartRecord) -> Result<bool, SyncError> {
        let mut staged: Option<Staged> = None;
        let advanced = self.walk(id, record, &mut staged).await;
        // A staged object left after a failed step goes: through an outage it
        // would hold the part's bytes on disk a second time, and the next
        // attempt rebuilds it from the spool, where the part's lines are
        // compressed already (`spool::compact`).
        if let Some(s) = staged.take() {
            self.discard_staged(&s);
        }
        advanced
    }

    async fn walk(
        &self,
        id: &PartId,
        mut record: PartRecord,
        staged: &mut Option<Staged>,
    ) -> Result<bool, SyncError> {
        let mut reached_store = false;
        loop {
            let next = match &record.state {
                PartState::Open | PartState::Deleted(_) => return Ok(reached_store),
                PartState::Sealed => {
                    let s = self.stage(id, self.settings.gzip_level).await?;
                    if s.lines == 0 {
                        self.discard_staged(&s);
                        PartState::Deleted(None)
                    } else {
                        let s = staged.insert(s);
                        let level = self.settings.gzip_level;
                        PartState::Uploading(
                            self.upload_at_free_number(id, id.seq, s, level).await?,
                        )
                    }
                }
                PartState::Uploading(upload) => {
                    let s = match staged {
                        Some(s) => s,
                        None => staged.insert(self.stage(id, upload.level).await?),
                    };
                    let next = self.upload(id, upload, s).await?;
                    reached_store |= matches!(next, PartState::Uploaded(_));
                    next
                }
                PartState::Uploaded(upload) => {
                    let part = id.clone();
                    self.spool.run(move |s| s.delete_blocks(&part)).await?;
                    self.segments_to_collect.store(true, Ordering::Relaxed);
                    if let Some(s) = staged.take() {
                        self.discard_staged(&s);
                    }
                    self.lost_races.lock().remove(id);
                    tracing::info!(part = %id, key = %upload.key, lines = upload.lines, bytes = upload.size, "archived");
                    self.board.uploaded();
                    PartState::Deleted(Some(upload.clone()))
                }
            };
            record.state = next;
            let (part, rec) = (id.clone(), record.clone());
            self.spool.run(move |s| s.set_record(&part, &rec)).await?;
        }
    }

    /// One attempt to put the part's object under its recorded key.
    async fn upload(
        &self,
        id: &PartId,
        upload: &Upload,
        staged: &Staged,
    ) -> Result<PartState, SyncError> {
        let target_err = |key: &str| {
            let key = key.to_owned();
            move |source| SyncError::Target { key, source }
        };
        if staged.sha256 != upload.sha256 {
            // The part no longer compresses to what was recorded (a block was set
            // aside since). The recorded object may already be there: then it is done.
            if self
                .target
                .holds(&upload.key, upload.size, &upload.sha256)
                .await
                .map_err(target_err(&upload.key))?
            {
                return Ok(PartState::Uploaded(upload.clone()));
            }
            return Ok(PartState::Uploading(self.upload_for(
                id,
                upload.n,
                staged,
                upload.level,
            )));
        }
        let owner = Ownership {
            instance: self.spool.instance_hex(),
            part: id.to_string(),
            sha256: staged.sha256,
            lines: staged.lines,
        };
        // Taken out before the attempt: one that fails midway may have
        // created the object all the same, and a retry must ask.
        let untried = self.untried_keys.lock().remove(&upload.key);
        let created = self
            .target
            .create(&upload.key, &staged.path, staged.size, &owner, untried)
            .await
            .map_err(target_err(&upload.key))?;
        let done = Upload {
            at: self.clock.now_ms(),
            ..upload.clone()
        };
        match created {
            Created::Created => {
                self.board.wrote(staged.size, staged.input_bytes);
                crate::fault::point("after-put");
                Ok(PartState::Uploaded(done))
            }
            Created::AlreadyExists => {
                let ours = !untried
                    && self
                        .target
                        .holds(&upload.key, staged.size, &staged.sha256)
                        .await
                        .map_err(target_err(&upload.key))?;
                if ours {
                    tracing::info!(part = %id, key = %upload.key, "object already holds this part (upload finished before a restart)");
                    Ok(PartState::Uploaded(done))
                } else {
                    let lost = {
                        let mut lost_races = self.lost_races.lock();
                        let lost = lost_races.entry(id.clone()).or_insert(0);
                        *lost += 1;
                        *lost
                    };
                    tracing::info!(part = %id, key = %upload.key, lost, "key taken by another object; choosing a free part number from a new listing");
                    let next = self
                        .upload_at_free_number(id, upload.n + 1, staged, upload.level)
                        .await?;
                    Ok(PartState::Uploading(next))
                }
            }
        }
    }

    /// The upload of `id`'s object under a part number from one listing of
    /// its hour's names: the first free one from `from`, or after lost races
    /// one of the first few at random (`number`). Its key is marked untried.
    async fn upload_at_free_number(
        &self,
        id: &PartId,
        from: u32,
        staged: &Staged,
        level: u32,
    ) -> Result<Upload, SyncError> {
        let first = object_key(&self.settings.key_prefix, &id.account, id.hour, 0);
        let taken =
            self.target
                .numbers_taken(&first)
                .await
                .map_err(|source| SyncError::Target {
                    key: first.clone(),
                    source,
                })?;
        let lost = self.lost_races.lock().get(id).copied().unwrap_or(0);
        if lost > 0 {
            let names = u32::try_from(taken.len()).unwrap_or(u32::MAX);
            self.crowd_seen.fetch_max(names, Ordering::Relaxed);
        }
        let fleet = self
            .settings
            .fleet_size
            .max(self.crowd_seen.load(Ordering::Relaxed));
        let window = number::window(number::first_window(fleet), lost);
        let n = number::choose(&taken, from, window, number::at_random);
        let upload = self.upload_for(id, n, staged, level);
        self.untried_keys.lock().insert(upload.key.clone());
        Ok(upload)
    }

    fn upload_for(&self, id: &PartId, n: u32, staged: &Staged, level: u32) -> Upload {
        Upload {
            key: object_key(&self.settings.key_prefix, &id.account, id.hour, n),
            n,
            size: staged.size,
            sha256: staged.sha256,
            level,
            lines: staged.lines,
            at: self.clock.now_ms(),
        }
    }

    async fn stage(&self, id: &PartId, level: u32) -> Result<Staged, SyncError> {
        let (part, dir) = (id.clone(), self.settings.staging_dir.clone());
        Ok(self
            .spool
            .run(move |s| stage::stage(s, &part, level, &dir))
            .await?)
    }

    fn discard_staged(&self, staged: &Staged) {
        if let Err(e) = std::fs::remove_file(&staged.path) {
            tracing::warn!(
                "could not remove staged file {}: {e}",
                staged.path.display()
            );
        }
    }
}
