//! Writes to a local-directory target: the staged object is hard-linked into
//! place instead of copied, and made durable before larch calls it uploaded.
//!
//! Linking halves the disk writes of a backlog drain and refuses an existing
//! name by itself (create-only, like the cloud stores' conditional put). The
//! object and every directory entry leading to it are fsynced, so a power cut
//! right after the spool let go of a part's lines cannot take its object too.
//! A staging directory on another filesystem falls back to a copy, which is
//! linked into place the same way.
//!
//! Objects hold every archived line, so they and the directories made for them
//! get the archive's [`Modes`]: larch's user alone by default, its group too
//! with `target.local_group_read`. The mode is set on the staged file (inside
//! the private staging directory) before it is linked, so an object never
//! appears with a wider mode, not even for a moment.

use std::fs::File;
use std::io;
use std::path::Path;

use super::{Created, TargetError, UPLOAD_AREA};
use crate::files::{create_dirs, set_mode, sync_dir, Modes};

/// Creates `root/key` holding the bytes of `staged`, unless `key` exists.
pub fn create(root: &Path, key: &str, staged: &Path, modes: Modes) -> Result<Created, TargetError> {
    let dest = root.join(key);
    let fail = |what: &str, path: &Path, e: io::Error| error(what, path, e);
    if let Some(parent) = dest.parent() {
        create_dirs(parent, modes.dir).map_err(|e| fail("create a directory for", &dest, e))?;
    }
    set_mode(staged, modes.file).map_err(|e| fail("set the mode of", staged, e))?;
    File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail("fsync the staged object", staged, e))?;
    let linked = match std::fs::hard_link(staged, &dest) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            copy_then_link(root, staged, &dest, modes)
        }
        other => other,
    };
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Created::AlreadyExists),
        Err(e) => return Err(fail("create", &dest, e)),
    }
    // The new name, then the name of every directory on the way from the
    // root, deepest first: also those this call did not make, since another
    // upload (or a run that crashed) may have made them and not synced them yet.
    for dir in dest.ancestors().skip(1).take_while(|d| d.starts_with(root)) {
        sync_dir(dir).map_err(|e| fail("fsync the directory", dir, e))?;
    }
    Ok(Created::Created)
}

/// Copies `staged` into the target's upload area (on the target's own
/// filesystem), fsyncs it and links it to `dest`.
fn copy_then_link(root: &Path, staged: &Path, dest: &Path, modes: Modes) -> io::Result<()> {
    let area = root.join(UPLOAD_AREA);
    create_dirs(&area, modes.dir)?;
    let name = staged
        .file_name()
        .map_or_else(|| "object".into(), |n| n.to_string_lossy().into_owned());
    let temp = area.join(format!("{name}.{:016x}", rand::random::<u64>()));
    // The copy takes the staged file's mode, set above.
    let result = std::fs::copy(staged, &temp)
        .and_then(|_| File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::hard_link(&temp, dest));
    let _ = std::fs::remove_file(&temp);
    result
}

/// A full disk is worth retrying; a permission or a read-only filesystem needs a person.
fn error(what: &str, path: &Path, e: io::Error) -> TargetError {
    let message = format!("cannot {what} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            TargetError::NeedsOperator(format!(
                "{message} (give larch's user write access to the archive directory)"
            ))
        }
        _ => TargetError::Transient(message),
    }
}
