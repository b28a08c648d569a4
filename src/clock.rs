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
