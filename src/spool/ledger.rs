//! The ledger: what this spool uploaded, for `larch verify`.
//!
//! A part whose object the target confirmed keeps its record after its lines
//! are deleted (`deleted(upload)`): key, size, SHA-256, line count and time.
//! Those records are the ledger. They are pruned after a configurable time; a
//! part number freed that way is safe to reuse, because objects are only ever
//! created, and a taken key sends the part on to the next free `.N`.

use serde::{Deserialize, Serialize};

use super::{codec, keys, PartState, Spool, SpoolError};
use crate::clock::EpochMs;

/// One uploaded object, as the spool recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `account/hour/part N`.
    pub part: String,
    pub account: String,
    /// The UTC hour, counted from the epoch.
    pub hour: i64,
    pub key: String,
    pub size: u64,
    /// SHA-256 of the object's bytes, hex.
    pub sha256: String,
    pub lines: u64,
    /// When the target confirmed the object, epoch ms.
    pub uploaded_at: EpochMs,
}

impl Spool {
    /// Every object this spool uploaded and still remembers, in key order.
    pub fn ledger(&self) -> Result<Vec<LedgerEntry>, SpoolError> {
        let records = self.part_records(|r| {
            matches!(
                r.state,
                PartState::Uploaded(_) | PartState::Deleted(Some(_))
            )
        })?;
        Ok(records
            .into_iter()
            .filter_map(|(id, record)| match record.state {
                PartState::Uploaded(u) | PartState::Deleted(Some(u)) => Some(LedgerEntry {
                    part: id.to_string(),
                    account: id.account.to_string(),
                    hour: id.hour.0,
                    key: u.key,
                    size: u.size,
                    sha256: hex::encode(u.sha256),
                    lines: u.lines,
                    uploaded_at: u.at,
                }),
                _ => None,
            })
            .collect())
    }

    /// Forgets parts that left the spool before `before` (epoch ms): ledger
    /// entries past their keeping time, and parts that had nothing to upload.
    /// Returns how many were forgotten.
    pub fn prune_ledger(&self, before: EpochMs) -> Result<usize, SpoolError> {
        let mut batch = sled::Batch::default();
        let mut pruned = 0;
        for item in self.db.scan_prefix([keys::PART]) {
            let (key, value) = item?;
            let Ok(record) = codec::decode::<super::PartRecord>(&value) else {
                continue;
            };
            let done_at = match &record.state {
                PartState::Deleted(Some(u)) => u.at,
                PartState::Deleted(None) => record.first_line_ms,
                _ => continue,
            };
            if done_at < before {
                batch.remove(key);
                pruned += 1;
            }
        }
        if pruned > 0 {
            // Under the index lock, and durable before it goes: a group that
            // comes next may take a part number freed here, acknowledged with
            // one fsync of its segment (`replay`).
            let _index = self.lock();
            self.db.apply_batch(batch)?;
            self.make_durable()?;
        }
        Ok(pruned)
    }
}
