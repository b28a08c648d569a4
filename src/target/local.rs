//! Writes to a local-directory target: the staged object is hard-linked into
//! place instead of copied, and made durable before larch calls it uploaded.
//!
//! Linking halves the disk writes of a backlog drain and refuses an existing
//! name by itself (create-only, like the cloud stores' conditional put). The
//! object and every directory entry leading to it are fsynced, so a power cut
//! right after the spool let go of a part's lines cannot take its object too.
//! A staging directory on another filesystem falls back to a copy, which is
//! linked into place the same way.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::{Created, TargetError, UPLOAD_AREA};
use crate::spool::sync_dir;

/// Creates `root/key` holding the bytes of `staged`, unless `key` exists.
pub fn create(root: &Path, key: &str, staged: &Path) -> Result<Created, TargetError> {
    let dest = root.join(key);
    let fail = |what: &str, path: &Path, e: io::Error| error(what, path, e);
    let created_dirs =
        create_parents(root, &dest).map_err(|e| fail("create a directory for", &dest, e))?;
    File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail("fsync the staged object", staged, e))?;
    let linked = match std::fs::hard_link(staged, &dest) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => copy_then_link(root, staged, &dest),
        other => other,
    };
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Created::AlreadyExists),
        Err(e) => return Err(fail("create", &dest, e)),
    }
    // The new name, then every directory made for it, deepest first.
    for dir in dest
        .parent()
        .into_iter()
        .chain(created_dirs.iter().filter_map(|d| d.parent()))
    {
        sync_dir(dir).map_err(|e| fail("fsync the directory", dir, e))?;
    }
    Ok(Created::Created)
}

/// Creates the directories between `root` and `dest`, returning those it made,
/// deepest first.
fn create_parents(root: &Path, dest: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut dir = dest.parent();
    while let Some(d) = dir {
        if d == root || d.is_dir() {
            break;
        }
        missing.push(d.to_owned());
        dir = d.parent();
    }
    if let Some(deepest) = missing.first() {
        std::fs::create_dir_all(deepest)?;
    }
    Ok(missing)
}

/// Copies `staged` into the target's upload area (on the target's own
/// filesystem), fsyncs it and links it to `dest`.
fn copy_then_link(root: &Path, staged: &Path, dest: &Path) -> io::Result<()> {
    let area = root.join(UPLOAD_AREA);
    std::fs::create_dir_all(&area)?;
    let name = staged
        .file_name()
        .map_or_else(|| "object".into(), |n| n.to_string_lossy().into_owned());
    let temp = area.join(format!("{name}.{:016x}", rand::random::<u64>()));
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
