//! A part's record: where it is in its life (docs/DESIGN.md, "The life of a part").
//!
//! ```text
//! open ──seal──▶ sealed ──pick key──▶ uploading(key) ──confirmed──▶ uploaded ──▶ deleted
//! ```
//!
//! Each state is written durably before the step after it starts, so a restart
//! resumes from the last state that reached the disk.

use serde::{Deserialize, Serialize};

use crate::clock::EpochMs;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub state: PartState,
    /// When the part's first line was made durable; follow-up parts seal relative to it.
    pub first_line_ms: EpochMs,
    pub lines: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartState {
    Open,
    Sealed,
    /// The object key is chosen; the object may or may not exist yet.
    Uploading(Upload),
    /// The target confirmed the object; the lines may now leave the spool.
    Uploaded(Upload),
    /// The lines are gone from the spool. `None` when nothing readable was left
    /// to upload (every block was corrupt and set aside).
    Deleted(Option<Upload>),
}

/// The object a part goes to, and what it must contain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub key: String,
    /// The `.N` of the key (0 for the first object of the hour).
    pub n: u32,
    pub size: u64,
    pub sha256: [u8; 32],
    /// gzip level the bytes were made with, so a retry makes the same bytes.
    pub level: u32,
    /// Lines in the object.
    pub lines: u64,
    /// When the state was entered.
    pub at: EpochMs,
}

impl PartState {
    pub fn name(&self) -> &'static str {
        match self {
            PartState::Open => "open",
            PartState::Sealed => "sealed",
            PartState::Uploading(_) => "uploading",
            PartState::Uploaded(_) => "uploaded",
            PartState::Deleted(_) => "deleted",
        }
    }

    /// Lines in this state still wait to reach the archive.
    pub fn is_waiting(&self) -> bool {
        matches!(
            self,
            PartState::Open | PartState::Sealed | PartState::Uploading(_)
        )
    }

    /// The sync loop has work to do for a part in this state.
    pub fn needs_sync(&self) -> bool {
        matches!(
            self,
            PartState::Sealed | PartState::Uploading(_) | PartState::Uploaded(_)
        )
    }
}
