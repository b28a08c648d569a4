//! What the spool holds, counted: for `larch status`, `/metrics` and the
//! room's fair shares.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::part::PartState;
use super::{Spool, SpoolError};
use crate::account::AccountId;
use crate::clock::EpochMs;
use crate::hour::Hour;

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
    /// What the compactor compressed since start: lines, their text bytes,
    /// their NDJSON bytes and the gzip bytes it made of them.
    #[serde(default)]
    pub compressed: Compressed,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Compressed {
    pub members: u64,
    pub lines: u64,
    pub line_bytes: u64,
    pub ndjson_bytes: u64,
    pub gzip_bytes: u64,
}

impl Compressed {
    /// NDJSON bytes per byte of line text, as the lines compressed so far had it.
    pub fn ndjson_per_line_byte(&self) -> Option<f64> {
        (self.line_bytes > 0).then(|| self.ndjson_bytes as f64 / self.line_bytes as f64)
    }

    /// Disk bytes per byte of line text, once compressed.
    pub fn gzip_per_line_byte(&self) -> Option<f64> {
        (self.line_bytes > 0).then(|| self.gzip_bytes as f64 / self.line_bytes as f64)
    }
}

impl Spool {
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
        let c = &self.compacted;
        let mut s = SpoolSummary {
            records_quarantined: self.quarantined.load(Ordering::Relaxed),
            compressed: Compressed {
                members: c.members.load(Ordering::Relaxed),
                lines: c.lines.load(Ordering::Relaxed),
                line_bytes: c.line_bytes.load(Ordering::Relaxed),
                ndjson_bytes: c.ndjson_bytes.load(Ordering::Relaxed),
                gzip_bytes: c.gzip_bytes.load(Ordering::Relaxed),
            },
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
