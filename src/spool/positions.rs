//! Read positions of sources that can be read again (tailed files, the
//! journal), kept in the spool beside the lines read from them.
//!
//! A position is written in the same sled batch, and made durable by the same
//! flush, as the lines read up to it, so after a crash reading resumes exactly
//! where the durable lines end: nothing is skipped and nothing is read twice.

use serde::{Deserialize, Serialize};

use super::{codec, keys, Spool, SpoolError};

/// Which file a position belongs to: its file-source name, device and inode.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub source: String,
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    fn encode(&self) -> Vec<u8> {
        let mut k = keys::positions_of(&self.source);
        k.extend_from_slice(&self.dev.to_be_bytes());
        k.extend_from_slice(&self.ino.to_be_bytes());
        k
    }
}

/// How far a file has been read, and how to know it is still the same file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// The path it was last seen under.
    pub path: String,
    /// SHA-256 of the file's first `fingerprint_len` bytes: an inode that is
    /// reused for a new file does not match.
    pub fingerprint: [u8; 32],
    pub fingerprint_len: u32,
    /// Every byte before this is in the spool (or was excluded by the rules).
    pub offset: u64,
    /// When larch first saw the file; the time part of its lines' IDs.
    pub first_seen_ms: i64,
    /// How often the file was truncated and read again from its start, so
    /// lines at the same offset before and after get different IDs.
    pub generation: u32,
    /// The bytes up to `offset` end inside a line that was stored cut at the
    /// line limit; the rest of it, up to its newline, is skipped.
    pub in_long_line: bool,
}

/// A position to store (or forget) with a commit.
#[derive(Clone, Debug)]
pub enum PositionUpdate {
    /// How far a tailed file was read; `None` forgets a file that is gone.
    File {
        key: FileKey,
        position: Option<FilePosition>,
    },
    /// The journal cursor of the last entry a journal source read.
    Cursor { source: String, cursor: String },
}

impl PositionUpdate {
    pub(super) fn key_bytes(&self) -> Vec<u8> {
        match self {
            PositionUpdate::File { key, .. } => key.encode(),
            PositionUpdate::Cursor { source, .. } => keys::cursor_of(source),
        }
    }

    pub(super) fn value_bytes(&self) -> Option<Vec<u8>> {
        match self {
            PositionUpdate::File { position, .. } => position.as_ref().map(codec::encode),
            PositionUpdate::Cursor { cursor, .. } => Some(cursor.as_bytes().to_vec()),
        }
    }
}

impl Spool {
    /// Every stored position of the file source `source`. A position that
    /// does not decode is set aside: that file is then read as a new one.
    pub fn file_positions(&self, source: &str) -> Result<Vec<(FileKey, FilePosition)>, SpoolError> {
        let prefix = keys::positions_of(source);
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&prefix) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            let (Some(dev), Some(ino)) = (
                rest.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                rest.get(8..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
            ) else {
                self.quarantine(&key, &value, "file position key does not parse")?;
                continue;
            };
            match codec::decode::<FilePosition>(&value) {
                Ok(position) => out.push((
                    FileKey {
                        source: source.to_owned(),
                        dev,
                        ino,
                    },
                    position,
                )),
                Err(e) => self.quarantine(&key, &value, &format!("file position: {e}"))?,
            }
        }
        Ok(out)
    }

    /// The stored cursor of the journal source `source`, if it read anything.
    /// A damaged cursor is an error, not a first run: starting over would
    /// archive the journal a second time.
    pub fn journal_cursor(&self, source: &str) -> Result<Option<String>, SpoolError> {
        let Some(value) = self.db.get(keys::cursor_of(source))? else {
            return Ok(None);
        };
        match std::str::from_utf8(&value) {
            Ok(cursor) if !cursor.is_empty() => Ok(Some(cursor.to_owned())),
            _ => Err(SpoolError::DamagedCursor {
                journal_source: source.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountId;
    use crate::clock::{ManualClock, SharedClock};
    use crate::spool::{Along, SealRule};

    #[test]
    fn a_journal_cursor_is_stored_with_its_lines_and_a_damaged_one_is_an_error_not_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = std::sync::Arc::new(ManualClock::new(3_600_000 * 100));
        let spool = Spool::open(dir.path(), clock, SealRule::default(), 1 << 20).unwrap();
        assert_eq!(spool.journal_cursor("system").unwrap(), None);
        let along = Along {
            ids: None,
            positions: vec![PositionUpdate::Cursor {
                source: "system".into(),
                cursor: "s=ab;i=1f".into(),
            }],
        };
        let account = AccountId::parse("ops").unwrap();
        spool.append(vec![(account, Vec::new(), along)]).unwrap();
        spool.make_durable().unwrap();
        assert_eq!(
            spool.journal_cursor("system").unwrap().as_deref(),
            Some("s=ab;i=1f")
        );
        // Another source's cursor is its own.
        assert_eq!(spool.journal_cursor("system2").unwrap(), None);
        spool
            .db
            .insert(keys::cursor_of("system"), &[0xff, 0xfe][..])
            .unwrap();
        let err = spool.journal_cursor("system").unwrap_err().to_string();
        assert!(err.contains("give the source another name"), "{err}");
    }
}
