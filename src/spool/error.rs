//! What can go wrong with the spool, each error saying what to do about it.

use std::io;
use std::path::PathBuf;

use super::FORMAT_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot open the spool in {path}: {source}. {}", open_advice(source))]
    Open { path: PathBuf, source: sled::Error },
    #[error("the spool in {path} has format version {found}, but this larch reads version {FORMAT_VERSION}. Run the larch version that wrote it until it has uploaded everything (`larch status` shows 0 lines waiting), then upgrade.")]
    Incompatible { path: PathBuf, found: u32 },
    #[error("the spool in {path} has lost part of itself: {what}. larch will not start on it, as it would archive nothing of what that part held. If the disk or its filesystem was repaired, copy back what it lost; to give up the spool's lines instead, move {path} aside and start larch again.")]
    Lost { path: PathBuf, what: String },
    #[error("spool storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("spool segment file error: {0}")]
    Segment(#[from] io::Error),
    #[error("a spool task failed: {0}")]
    Task(String),
    #[error("the stored journal cursor of journal source {journal_source:?} is damaged. larch does not guess where that journal was read up to: to read it again from where `start` says, give the source another name (name = \"...\" in its [[sources.journald]])")]
    DamagedCursor { journal_source: String },
}

fn open_advice(source: &sled::Error) -> &'static str {
    match source {
        sled::Error::Io(e) if is_disk_full(e) => {
            "The disk is full, and larch's reserve (see README, \"When the disk fills\") is used up: free some space on it, and larch starts and uploads what it holds."
        }
        _ => "Check that the directory is writable and that no other larch process is using it.",
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28) | Some(122))
}

impl SpoolError {
    /// The disk (or its quota) is full: the client should retry later.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            SpoolError::Storage(sled::Error::Io(e)) | SpoolError::Segment(e) => e,
            SpoolError::Open {
                source: sled::Error::Io(e),
                ..
            } => e,
            _ => return false,
        };
        is_disk_full(io)
    }
}
