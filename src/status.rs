//! What larch reports about itself: counts from the spool plus what the sync
//! loop last saw. Served on `/status` and printed by `larch status`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::clock::EpochMs;
use crate::rules::Rules;
use crate::spool::{RoomStatus, SpoolSummary};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub target: String,
    #[serde(flatten)]
    pub spool: SpoolSummary,
    pub objects_uploaded: u64,
    /// Compressed bytes written to the target since start.
    pub bytes_uploaded: u64,
    /// NDJSON bytes those objects hold, before compression.
    pub input_bytes_uploaded: u64,
    pub upload_failures: u64,
    /// Set while uploads wait for an operator (permissions, missing directory).
    pub sync_paused: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<EpochMs>,
    /// Lines the rules kept out of the spool since start, by rule.
    #[serde(default)]
    pub lines_dropped_by_rule: BTreeMap<String, u64>,
    /// The spool's size and free disk against their limits.
    #[serde(default)]
    pub room: RoomStatus,
}

/// The parts of [`Status`] that the running stages update.
#[derive(Debug, Default)]
pub struct Board {
    inner: Mutex<Status>,
}

impl Board {
    fn with<R>(&self, f: impl FnOnce(&mut Status) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn uploaded(&self) {
        self.with(|s| {
            s.objects_uploaded += 1;
            s.sync_paused = None;
        });
    }

    pub fn wrote(&self, bytes: u64, input_bytes: u64) {
        self.with(|s| {
            s.bytes_uploaded += bytes;
            s.input_bytes_uploaded += input_bytes;
        });
    }

    pub fn upload_failed(&self, message: String, now: EpochMs, needs_operator: bool) {
        self.with(|s| {
            s.upload_failures += 1;
            if needs_operator {
                s.sync_paused = Some(message.clone());
            }
            s.last_error = Some(message);
            s.last_error_at = Some(now);
        });
    }

    /// The current status, with the spool's counts filled in by the caller.
    pub fn snapshot(&self, spool: SpoolSummary) -> Status {
        self.with(|s| Status { spool, ..s.clone() })
    }

    /// The status of a running daemon: also what its rules dropped and its room.
    pub fn running(&self, spool: SpoolSummary, rules: &Rules, room: RoomStatus) -> Status {
        Status {
            lines_dropped_by_rule: rules.dropped(),
            room,
            ..self.snapshot(spool)
        }
    }

    pub fn set_identity(&self, instance: String, target: String) {
        self.with(|s| {
            s.instance = instance;
            s.target = target;
        });
    }
}
