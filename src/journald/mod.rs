//! Journal sources (`[[sources.journald]]`): the systemd journal, or a
//! directory of journal files, archived entry by entry exactly once.
//!
//! larch runs `journalctl --follow --output=json` rather than linking
//! libsystemd: journalctl is on every host that has a journal, reads every
//! journal file format and compression its systemd writes, and keeps larch a
//! static binary without a C library whose version must match the host's.
//! What it costs is a child process and JSON parsing per entry.
//!
//! - `config`: the checked settings of a source;
//! - `entry`: one JSON entry as an archived line, its ID from its cursor;
//! - `follow`: the child, the reader and the commits that carry the cursor.

pub mod config;
pub mod entry;
pub mod follow;

pub use config::{JournalSource, JournaldConfigError, JournaldSourceConfig};
pub use follow::Journals;
