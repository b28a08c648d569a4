//! The one source of time. Every decision that depends on "now" (which hour a
//! line without a timestamp belongs to, when an hour seals, when a line was made
//! durable) asks a [`Clock`], so tests move time instead of waiting for it.

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

/// The wall clock, moved by [`OFFSET_ENV`] when that is set.
pub fn from_env() -> Result<SharedClock, String> {
    let Ok(text) = std::env::var(OFFSET_ENV) else {
        return Ok(Arc::new(SystemClock));
    };
    let (sign, magnitude) = match text.trim().strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.trim().trim_start_matches('+')),
    };
    let offset = humantime::parse_duration(magnitude)
        .map_err(|e| format!("{OFFSET_ENV}={text:?} is not a duration like 2h or -30m: {e}"))?;
    let offset_ms = sign * i64::try_from(offset.as_millis()).unwrap_or(i64::MAX);
    Ok(Arc::new(OffsetClock { offset_ms }))
}

/// A moment as RFC 3339 in UTC, to the millisecond, for messages and reports.
pub fn rfc3339(ms: EpochMs) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}
