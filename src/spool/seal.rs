//! Sealing: a part closes to new lines once its time is up, and the task
//! that seals due parts every tick.
//!
//! An hour's first part seals once the hour's end plus the late window has
//! passed. A follow-up part (opened by a line for an hour already sealed) seals
//! a bounded time after its first line. Time comes from the spool's injectable
//! clock. The room watcher (`room`) seals early when the spool is short of
//! room, and `larch drain` seals everything at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::part::PartState;
use super::{codec, keys, OpenPart, PartId, Spool, SpoolError, SpoolHandle};
use crate::account::AccountId;
use crate::clock::EpochMs;
use crate::hour::Hour;

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
}

impl Spool {
    /// Seals every open part whose time is up, durably. Returns the parts sealed.
    pub fn seal_due(&self) -> Result<Vec<PartId>, SpoolError> {
        let now = self.clock.now_ms();
        self.seal_where(|hour, p| self.seal_rule.due_at(hour, p.seq, p.first_line_ms) <= now)
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
                    let record = p.record(PartState::Sealed);
                    batch.insert(keys::part(&id), codec::encode(&record));
                    sealed.push(id);
                }
            }
            self.db.apply_batch(batch)?;
            for slot in &due {
                index.open.remove(slot);
            }
            // Durable before the index lock goes: a group that comes next for
            // a sealed hour opens a follow-up part, acknowledged with one fsync
            // of its segment (`replay`), and the seal must not be lost in a
            // crash that keeps that part.
            self.make_durable()?;
            sealed
        };
        Ok(sealed)
    }
}

/// Seals due parts every `tick` until `stop`, waking `sealed` after each seal.
pub async fn run(spool: SpoolHandle, tick: Duration, sealed: Arc<Notify>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        match spool.run(Spool::seal_due).await {
            Ok(parts) if !parts.is_empty() => {
                for p in &parts {
                    tracing::info!(part = %p, "sealed");
                }
                sealed.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::error!("sealing failed, will try again: {e}"),
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
    }

    #[test]
    fn zero_late_window_seals_at_hour_end() {
        let rule = SealRule {
            late_window_ms: 0,
            ..SealRule::default()
        };
        assert_eq!(rule.due_at(H, 0, H.start_ms() + 10), H.end_ms());
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
