//! What the sync loop reports about its work: objects and bytes uploaded,
//! failures, and whether uploads wait for an operator. The daemon's status
//! shows it beside the spool's counts.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::EpochMs;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncReport {
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
}

/// The sync loop's [`SyncReport`], updated as it works.
#[derive(Debug, Default)]
pub struct Board {
    report: Mutex<SyncReport>,
}

impl Board {
    pub fn uploaded(&self) {
        let mut r = self.report.lock();
        r.objects_uploaded += 1;
        r.sync_paused = None;
    }

    pub fn wrote(&self, bytes: u64, input_bytes: u64) {
        let mut r = self.report.lock();
        r.bytes_uploaded += bytes;
        r.input_bytes_uploaded += input_bytes;
    }

    pub fn upload_failed(&self, message: String, now: EpochMs, needs_operator: bool) {
        let mut r = self.report.lock();
        r.upload_failures += 1;
        if needs_operator {
            r.sync_paused = Some(message.clone());
        }
        r.last_error = Some(message);
        r.last_error_at = Some(now);
    }

    pub fn report(&self) -> SyncReport {
        self.report.lock().clone()
    }
}
