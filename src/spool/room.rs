//! Room in the spool: whether it may take more lines.
//!
//! The spool's size (its sled files and segment files) is held under
//! `spool.max_size`, and the disk under it keeps `spool.min_free_space` free for the
//! rest of the host. Past either, new lines are refused *before* anything is
//! stored (507), file sources stop reading (their offsets stay), open parts are
//! sealed at once ([`watch`]), and what is held keeps being archived, which
//! makes room again by itself.
//!
//! Close to the limit (the last tenth of `spool.max_size`, or less than twice
//! `spool.min_free_space` free), an account holding more than an equal share of the
//! waiting bytes is refused (429) while the others still get in: one account
//! flooding cannot lock out the small ones.
//!
//! The measurement also keeps the [`Reserve`]: released when the disk is
//! nearly full, held again when there is room, and while it is missing its
//! size counts as used, so lines are not taken into the space it freed.
//!
//! The measurement is refreshed every second; in between, each admitted
//! request's bytes are counted against it. A request is let in while the spool
//! is under its limit, so the last one may cross it by its own size (a body
//! is at most 10 MB); the next is refused.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::reserve::{Reserve, RELEASE_BELOW, RESERVE_BYTES};
use super::{Spool, SpoolError, SpoolHandle};
use crate::account::AccountId;
use crate::units::mib;

/// The limits, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// Largest the spool may grow, in bytes; `None` for no limit.
    pub max_bytes: Option<u64>,
    /// Bytes that must stay free on the spool's disk.
    pub min_free_bytes: u64,
}

impl Default for RoomLimits {
    fn default() -> Self {
        Self {
            max_bytes: None,
            min_free_bytes: 256 << 20,
        }
    }
}

/// Why lines are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    /// Nobody's lines fit: 507.
    #[error("{0}")]
    Full(String),
    /// This account holds more than its share while space is short: 429.
    #[error("{0}")]
    OverShare(String),
}

/// What `/status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RoomStatus {
    pub spool_bytes: u64,
    pub spool_max_bytes: Option<u64>,
    pub disk_free_bytes: u64,
    pub min_free_bytes: u64,
    /// Set while every new line is refused.
    pub refusing: Option<String>,
    /// Accounts refused for holding more than their share, while space is short.
    pub throttled_accounts: Vec<String>,
    /// Whether larch holds its disk-full reserve (see `reserve`).
    #[serde(default)]
    pub reserve_held: bool,
    /// Bytes the spool may still grow by before it refuses lines: the
    /// nearer of `spool.max_size` and `spool.min_free_space`.
    #[serde(default)]
    pub room_left_bytes: u64,
    /// Bytes of line text taken per second, over the last ten minutes.
    #[serde(default)]
    pub intake_line_bytes_per_s: f64,
}

#[derive(Debug, Default)]
struct Measured {
    spool_bytes: u64,
    disk_free_bytes: u64,
    /// Waiting bytes per account.
    waiting_by_account: HashMap<AccountId, u64>,
    reserve_held: bool,
}

pub struct Room {
    limits: RoomLimits,
    dir: PathBuf,
    measured: Mutex<Measured>,
    reserve: Reserve,
    /// Bytes admitted since the last measurement.
    admitted: AtomicU64,
    /// (when, line bytes the spool had taken by then), over [`INTAKE_WINDOW`].
    intake: Mutex<VecDeque<(Instant, u64)>>,
}

/// The intake rate is the average over this long: long enough that a burst
/// does not swing the outage outlook, short enough to follow the day.
const INTAKE_WINDOW: Duration = Duration::from_secs(600);

impl Room {
    /// Room for the spool under `data` (its `spool/` and `segments/`).
    pub fn new(data: &Path, limits: RoomLimits) -> Self {
        Self {
            limits,
            dir: data.to_owned(),
            measured: Mutex::new(Measured::default()),
            reserve: Reserve::new(data),
            admitted: AtomicU64::new(0),
            intake: Mutex::new(VecDeque::new()),
        }
    }

    /// Notes that the spool has taken `line_bytes` of line text since it opened.
    pub fn count_intake(&self, line_bytes: u64) {
        let now = Instant::now();
        let mut samples = self.intake.lock();
        samples.push_back((now, line_bytes));
        while samples.len() > 2
            && samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > INTAKE_WINDOW)
        {
            samples.pop_front();
        }
    }

    fn intake_rate(&self) -> f64 {
        let samples = self.intake.lock();
        match (samples.front(), samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Measured> {
        self.measured.lock()
    }

    /// Measures the spool and the disk again; `waiting` gives the bytes each
    /// account has waiting (one pass over the part records).
    pub fn measure(
        &self,
        waiting: impl FnOnce() -> HashMap<AccountId, u64>,
    ) -> std::io::Result<()> {
        let spool_bytes =
            dir_bytes(&self.dir.join("spool"))? + dir_bytes(&self.dir.join("segments"))?;
        let mut disk_free_bytes = free_bytes(&self.dir)?;
        let mut reserve_held = self.reserve.is_held();
        if reserve_held && disk_free_bytes < RELEASE_BELOW && self.reserve.release() {
            reserve_held = false;
            disk_free_bytes = free_bytes(&self.dir)?;
        } else if !reserve_held
            && disk_free_bytes >= self.limits.min_free_bytes + RESERVE_BYTES + 2 * RELEASE_BELOW
        {
            match self.reserve.hold() {
                Ok(()) => {
                    reserve_held = true;
                    disk_free_bytes = free_bytes(&self.dir)?;
                }
                Err(e) => {
                    tracing::warn!("cannot create the disk-full reserve, will try again: {e}")
                }
            }
        }
        if !reserve_held {
            disk_free_bytes = disk_free_bytes.saturating_sub(RESERVE_BYTES);
        }
        let waiting_by_account = waiting();
        let mut m = self.lock();
        self.admitted.store(0, Ordering::Relaxed);
        *m = Measured {
            spool_bytes,
            disk_free_bytes,
            waiting_by_account,
            reserve_held,
        };
        Ok(())
    }

    fn is_short(&self, spool_bytes: u64, free: u64) -> bool {
        self.limits
            .max_bytes
            .is_some_and(|max| spool_bytes >= max - max / 10)
            || free < self.limits.min_free_bytes.saturating_mul(2)
    }

    /// Why nothing may come in now, if nothing may.
    fn full(&self, m: &Measured, admitted: u64) -> Option<String> {
        let used = m.spool_bytes + admitted;
        if let Some(max) = self.limits.max_bytes {
            if used >= max {
                return Some(format!(
                    "the spool holds {} of its {} limit (spool.max_size); lines are refused until uploads make room",
                    mib(used),
                    mib(max)
                ));
            }
        }
        let free = m.disk_free_bytes.saturating_sub(admitted);
        if free < self.limits.min_free_bytes {
            return Some(format!(
                "the spool's disk has {} free, less than spool.min_free_space ({}); lines are refused until uploads make room",
                mib(free),
                mib(self.limits.min_free_bytes)
            ));
        }
        None
    }

    /// Accounts holding more than an equal share of the waiting bytes.
    fn over_share(m: &Measured) -> impl Iterator<Item = (&AccountId, u64, u64)> {
        let total: u64 = m.waiting_by_account.values().sum();
        let share = total / (m.waiting_by_account.len().max(1) as u64);
        m.waiting_by_account
            .iter()
            .filter(move |(_, &held)| held > share)
            .map(move |(account, &held)| (account, held, total))
    }

    /// Lets `bytes` of `account`'s lines in, or says why not.
    pub fn admit(&self, account: &AccountId, bytes: u64) -> Result<(), NoRoom> {
        let m = self.lock();
        let admitted = self.admitted.load(Ordering::Relaxed);
        if let Some(why) = self.full(&m, admitted) {
            return Err(NoRoom::Full(why));
        }
        if self.is_short(
            m.spool_bytes + admitted,
            m.disk_free_bytes.saturating_sub(admitted),
        ) {
            if let Some((_, held, total)) = Self::over_share(&m).find(|(a, _, _)| *a == account) {
                return Err(NoRoom::OverShare(format!(
                    "space is short and account {account} holds {} of the {} waiting; its lines wait while other accounts' get in",
                    mib(held),
                    mib(total)
                )));
            }
        }
        self.admitted.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Set while every new line is refused: file sources stop reading.
    pub fn refusing(&self) -> Option<String> {
        let m = self.lock();
        self.full(&m, self.admitted.load(Ordering::Relaxed))
    }

    pub fn status(&self) -> RoomStatus {
        let m = self.lock();
        let admitted = self.admitted.load(Ordering::Relaxed);
        let spool_bytes = m.spool_bytes + admitted;
        let free = m.disk_free_bytes.saturating_sub(admitted);
        let short = self.is_short(spool_bytes, free);
        let mut throttled: Vec<String> = if short {
            Self::over_share(&m)
                .map(|(a, _, _)| a.to_string())
                .collect()
        } else {
            Vec::new()
        };
        throttled.sort();
        let below_max = self
            .limits
            .max_bytes
            .map_or(u64::MAX, |max| max.saturating_sub(spool_bytes));
        RoomStatus {
            room_left_bytes: below_max.min(free.saturating_sub(self.limits.min_free_bytes)),
            intake_line_bytes_per_s: self.intake_rate(),
            spool_bytes,
            spool_max_bytes: self.limits.max_bytes,
            disk_free_bytes: free,
            min_free_bytes: self.limits.min_free_bytes,
            refusing: self.full(&m, admitted),
            throttled_accounts: throttled,
            reserve_held: m.reserve_held,
        }
    }
}

/// Bytes of the files directly in `dir` and its subdirectories (sled keeps a `blobs/`).
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Removed since it was listed (a collected segment).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Bytes an unprivileged writer may still use on the disk holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// How often the spool's size and the free disk are measured.
const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// Measures the room once: the spool's files, the disk, each account's waiting bytes.
pub async fn measure(room: &Arc<Room>, spool: &SpoolHandle) {
    let room = room.clone();
    let measured = spool
        .run(move |spool| {
            room.count_intake(spool.line_bytes_in());
            Ok::<_, SpoolError>(room.measure(|| spool.waiting_by_account().unwrap_or_default()))
        })
        .await;
    match measured {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot measure the spool's size and free disk: {e}"),
        Err(e) => tracing::warn!("spool measuring task failed: {e}"),
    }
}

/// Measures the room every second and says when refusing starts and ends.
/// While it refuses, open parts are sealed at once: their lines can only make
/// room by being archived, and waiting for their hour to end could take hours.
pub async fn watch(
    room: Arc<Room>,
    spool: SpoolHandle,
    sealed: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut refusing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MEASURE_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        measure(&room, &spool).await;
        let why = room.refusing();
        if why.is_some() {
            match spool.run(Spool::seal_all).await {
                Ok(parts) if !parts.is_empty() => {
                    tracing::warn!("sealed {} open part(s) early to make room; later lines of their hours go to follow-up parts", parts.len());
                    sealed.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("cannot seal parts to make room, will try again: {e}")
                }
            }
        }
        match (why, refusing) {
            (Some(why), false) => {
                tracing::error!(
                    "refusing new lines: {why}. Held lines are still archived; file sources pause."
                );
                refusing = true;
            }
            (None, true) => {
                tracing::info!("the spool has room again; taking lines");
                refusing = false;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(a: &str) -> AccountId {
        AccountId::parse(a).unwrap()
    }

    fn room(max: u64) -> (tempfile::TempDir, Room) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("segments")).unwrap();
        let room = Room::new(
            dir.path(),
            RoomLimits {
                max_bytes: Some(max),
                min_free_bytes: 0,
            },
        );
        (dir, room)
    }

    #[test]
    fn past_the_limit_everyone_is_refused_until_space_returns() {
        let (dir, room) = room(1000);
        room.measure(HashMap::new).unwrap();
        room.admit(&account("a"), 600).unwrap();
        // Under the limit, a request may cross it; then nothing more gets in.
        room.admit(&account("b"), 500).unwrap();
        assert!(matches!(room.admit(&account("b"), 1), Err(NoRoom::Full(_))));
        // A measurement shows what is on disk: 2000 bytes of segments.
        std::fs::write(dir.path().join("segments/1.seg"), vec![0u8; 2000]).unwrap();
        room.measure(HashMap::new).unwrap();
        let why = room.refusing().expect("refusing");
        assert!(why.contains("spool.max_size"), "{why}");
        std::fs::remove_file(dir.path().join("segments/1.seg")).unwrap();
        room.measure(HashMap::new).unwrap();
        assert_eq!(room.refusing(), None);
        room.admit(&account("b"), 500).unwrap();
    }

    #[test]
    fn when_space_is_short_the_account_over_its_share_waits_and_others_get_in() {
        let (dir, room) = room(10_000);
        std::fs::write(dir.path().join("segments/1.seg"), vec![0u8; 9_200]).unwrap();
        let waiting = || HashMap::from([(account("flood"), 9_000), (account("small"), 200)]);
        room.measure(waiting).unwrap();
        assert!(matches!(
            room.admit(&account("flood"), 10),
            Err(NoRoom::OverShare(_))
        ));
        room.admit(&account("small"), 10).unwrap();
        room.admit(&account("new"), 10).unwrap();
        assert_eq!(room.status().throttled_accounts, ["flood"]);
        assert!(room.status().refusing.is_none());
    }
}
