//! The one source of time. Every decision that depends on "now" (which hour a
//! line without a timestamp belongs to, when an hour seals, when a line was made
//! durable) asks a [`Clock`], so tests move time instead of waiting for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, UTC.
pub type EpochMs = i64;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> EpochMs;
}

pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> EpochMs {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: EpochMs) -> Self {
        Self(AtomicI64::new(start))
    }

    pub fn set(&self, now: EpochMs) {
        self.0.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, by_ms: i64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> EpochMs {
        self.0.load(Ordering::SeqCst)
    }
}

/// The wall clock moved by a fixed amount: `LARCH_CLOCK_OFFSET=2h` (or `-30m`)
/// runs larch as if it were that much later (earlier). For tests and drills
/// that need an hour to end without waiting for it.
#[derive(Debug)]
pub struct OffsetClock {
    offset_ms: i64,
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> EpochMs {
        SystemClock.now_ms().saturating_add(self.offset_ms)
    }
}

pub const OFFSET_ENV: &str = "LARCH_CLOCK_OFFSET";
pub const OFFSET_FILE_ENV: &str = "LARCH_CLOCK_OFFSET_FILE";

/// The wall clock moved by the offset written in a file (`2h`, `-30m`), read
/// again at most every [`OffsetFileClock::RECHECK_MS`]: drills step larch's
/// clock back and forth while it runs, as a host's clock does when NTP
/// corrects it. A file that cannot be read or parsed later keeps the last offset.
#[derive(Debug)]
pub struct OffsetFileClock {
    path: PathBuf,
    offset_ms: AtomicI64,
    checked_at: AtomicI64,
}

impl OffsetFileClock {
    const RECHECK_MS: i64 = 100;

    pub fn open(path: &Path) -> Result<Self, String> {
        let offset_ms = read_offset_file(path)?;
        Ok(Self {
            path: path.to_owned(),
            offset_ms: AtomicI64::new(offset_ms),
            checked_at: AtomicI64::new(SystemClock.now_ms()),
        })
    }
}

impl Clock for OffsetFileClock {
    fn now_ms(&self) -> EpochMs {
        let wall = SystemClock.now_ms();
        let checked = self.checked_at.load(Ordering::Relaxed);
        let due = wall.saturating_sub(checked) >= Self::RECHECK_MS || wall < checked;
        // One caller re-reads; the others go on with the offset they have.
        if due
            && self
                .checked_at
                .compare_exchange(checked, wall, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if let Ok(offset) = read_offset_file(&self.path) {
                self.offset_ms.store(offset, Ordering::SeqCst);
            }
        }
        wall.saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }
}

fn read_offset_file(path: &Path) -> Result<i64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{OFFSET_FILE_ENV}: cannot read {}: {e}. Write an offset such as 2h or -30m into it",
            path.display()
        )
    })?;
    parse_offset(&text).map_err(|e| format!("{OFFSET_FILE_ENV}: {}: {e}", path.display()))
}

/// `2h`, `+15m`, `-30m` or `0s` as signed milliseconds.
fn parse_offset(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (sign, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.trim_start_matches('+')),
    };
    let offset = humantime::parse_duration(magnitude)
        .map_err(|e| format!("{text:?} is not a duration like 2h or -30m: {e}"))?;
    Ok(sign * i64::try_from(offset.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock, moved by [`OFFSET_ENV`] or by the file [`OFFSET_FILE_ENV`]
/// names when one is set.
pub fn from_env() -> Result<SharedClock, String> {
    if let Some(path) = std::env::var_os(OFFSET_FILE_ENV) {
        return Ok(Arc::new(OffsetFileClock::open(Path::new(&path))?));
    }
    let Ok(text) = std::env::var(OFFSET_ENV) else {
        return Ok(Arc::new(SystemClock));
    };
    let offset_ms = parse_offset(&text).map_err(|e| format!("{OFFSET_ENV}: {e}"))?;
    Ok(Arc::new(OffsetClock { offset_ms }))
}

/// A moment as RFC 3339 in UTC, to the millisecond, for messages and reports.
pub fn rfc3339(ms: EpochMs) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_with_a_sign() {
        assert_eq!(parse_offset("2h"), Ok(7_200_000));
        assert_eq!(parse_offset(" -30m\n"), Ok(-1_800_000));
        assert_eq!(parse_offset("+1s"), Ok(1000));
        assert!(parse_offset("soon").unwrap_err().contains("2h or -30m"));
    }

    #[test]
    fn the_offset_file_moves_a_running_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        std::fs::write(&path, "0s").unwrap();
        let clock = OffsetFileClock::open(&path).unwrap();
        let wall = SystemClock.now_ms();
        assert!((clock.now_ms() - wall).abs() < 1000);
        std::fs::write(&path, "-3h").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while clock.now_ms() > SystemClock.now_ms() - 2 * 3_600_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock never stepped back"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // An unreadable file keeps the last offset.
        std::fs::write(&path, "garbage").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(clock.now_ms() < SystemClock.now_ms() - 2 * 3_600_000);
        assert!(OffsetFileClock::open(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot read"));
    }
}
