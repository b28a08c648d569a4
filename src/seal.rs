//! The seal watcher: closes parts to new lines once their time is up.
//!
//! An hour's first part seals once the hour's end plus the late window has
//! passed. A follow-up part (opened by a line for an hour already sealed) seals
//! a bounded time after its first line. Time comes from the injectable clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::clock::EpochMs;
use crate::hour::Hour;
use crate::spool::Spool;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealRule {
    pub late_window_ms: i64,
    pub follow_up_after_ms: i64,
}

impl Default for SealRule {
    fn default() -> Self {
        Self {
            late_window_ms: 6 * 3_600_000,
            follow_up_after_ms: 3_600_000,
        }
    }
}

impl SealRule {
    /// When part `seq` of `hour`, whose first line arrived at `first_line_ms`, seals.
    pub fn due_at(&self, hour: Hour, seq: u32, first_line_ms: EpochMs) -> EpochMs {
        let hour_due = hour.end_ms().saturating_add(self.late_window_ms);
        if seq == 0 {
            hour_due
        } else {
            hour_due.max(first_line_ms.saturating_add(self.follow_up_after_ms))
        }
    }

    /// Whether a line for `hour` arriving at `now` finds the hour already sealed.
    pub fn hour_is_sealed(&self, hour: Hour, now: EpochMs) -> bool {
        self.due_at(hour, 0, now) <= now
    }
}

/// Seals due parts every `tick` until `shutdown` flips, waking `synced` after each seal.
pub async fn run(
    spool: Arc<Spool>,
    tick: Duration,
    sealed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let spool = spool.clone();
        match tokio::task::spawn_blocking(move || spool.seal_due()).await {
            Ok(Ok(parts)) if !parts.is_empty() => {
                for p in &parts {
                    tracing::info!(part = %p, "sealed");
                }
                sealed.notify_one();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("sealing failed, will try again: {e}"),
            Err(e) => tracing::error!("seal task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hour::HOUR_MS;

    const H: Hour = Hour(493_000);

    #[test]
    fn first_part_seals_at_hour_end_plus_late_window() {
        let rule = SealRule::default();
        let due = rule.due_at(H, 0, H.start_ms());
        assert_eq!(due, H.end_ms() + 6 * HOUR_MS);
        assert!(!rule.hour_is_sealed(H, due - 1));
        assert!(rule.hour_is_sealed(H, due));
    }

    #[test]
    fn zero_late_window_seals_at_hour_end() {
        let rule = SealRule {
            late_window_ms: 0,
            ..SealRule::default()
        };
        assert_eq!(rule.due_at(H, 0, H.start_ms() + 10), H.end_ms());
        assert!(!rule.hour_is_sealed(H, H.end_ms() - 1));
        assert!(rule.hour_is_sealed(H, H.end_ms()));
    }

    #[test]
    fn follow_up_parts_seal_a_bounded_time_after_their_first_line() {
        let rule = SealRule {
            late_window_ms: 0,
            follow_up_after_ms: 60_000,
        };
        let first = H.end_ms() + 5 * HOUR_MS;
        assert_eq!(rule.due_at(H, 1, first), first + 60_000);
        assert_eq!(rule.due_at(H, 7, first), first + 60_000);
        // Never before the hour itself is due, even if the clock stepped back.
        assert_eq!(rule.due_at(H, 1, H.start_ms()), H.end_ms());
    }
}
