//! File modes of what larch keeps on disk. Spooled and staged lines, the admin
//! token and local archive objects hold every archived line (or the way to
//! drive the daemon), so they are readable by larch's own user only: files
//! 0600 in directories 0700. A local archive can be opened to a group of
//! readers with `target.local_group_read` (files 0640, directories 0750); the
//! spool never is.
//!
//! Modes are set explicitly after creating (not left to the umask, which can
//! only take bits away and differs from host to host). sled creates its own
//! files, so its directory is 0700, and `larch run`, `drain` and `verify` set
//! the umask to 0o077 ([`private_umask`]) so that those files are 0600 too.
//!
//! A directory larch did not make (the data directory or archive directory a
//! user made) keeps its mode; larch's own directories inside the data
//! directory (`spool/`, `segments/`, `staging/`) are set to 0700 at every
//! start, also when an earlier version made them with the umask's mode.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Modes of the files and directories larch creates somewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    pub file: u32,
    pub dir: u32,
}

impl Modes {
    /// For larch's user alone: the spool, staging, the admin file.
    pub const PRIVATE: Self = Self {
        file: 0o600,
        dir: 0o700,
    };
    /// Readable by the group too, for archive readers.
    pub const GROUP_READ: Self = Self {
        file: 0o640,
        dir: 0o750,
    };

    /// The modes of a local archive's objects and directories.
    pub fn archive(group_read: bool) -> Self {
        if group_read {
            Self::GROUP_READ
        } else {
            Self::PRIVATE
        }
    }
}

/// Sets the process umask so that files created by code larch does not
/// control (sled's) are private too. Call it before anything opens the spool.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Sets `path`'s permission bits to `mode`, whatever the umask.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(mode))
}

/// Creates `dir` and whichever of its parents are missing, each with `mode`.
/// Directories that exist keep their mode. Returns those it created, deepest
/// first. Safe against another thread creating the same directories at once.
pub fn create_dirs(dir: &Path, mode: u32) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_owned());
        next = d.parent();
    }
    let mut created = Vec::new();
    for d in missing.iter().rev() {
        match DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {
                set_mode(d, mode)?;
                created.push(d.clone());
            }
            // Made by another thread (two objects of the same day, say), with the same mode.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    created.reverse();
    Ok(created)
}

/// Like [`create_dirs`], and makes the names of `dir` and of each directory
/// it made durable in their parents. A filesystem may keep a new name only
/// once its directory is fsynced (POSIX promises no more), so without this a
/// power cut can take a directory larch made, with every file written into it
/// since. `dir`'s own name is made durable every time, not only when this call
/// made it: a crash, or another thread that made it a moment before, may have
/// left it unsynced.
pub fn create_dirs_durable(dir: &Path, mode: u32) -> io::Result<Vec<PathBuf>> {
    let created = create_dirs(dir, mode)?;
    let mut parents = vec![parent_of(dir)];
    parents.extend(created.iter().map(|d| parent_of(d)));
    parents.dedup();
    for parent in parents {
        sync_dir(parent)?;
    }
    Ok(created)
}

/// The directory that holds `path`'s name: `.` for a bare relative name.
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates one of larch's own directories inside the data directory, durably,
/// or sets it to 0700 if it exists: its content is larch's alone, whoever made it.
pub fn own_dir(dir: &Path) -> io::Result<()> {
    if create_dirs_durable(dir, Modes::PRIVATE.dir)?.is_empty() {
        set_mode(dir, Modes::PRIVATE.dir)?;
    }
    Ok(())
}

/// Makes the names in `dir` durable (files created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` and makes the new name durable. `from` must be
/// durable already (fsynced) for the file to survive a power cut under its new name.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(parent_of(to))
}

/// Options that create a file readable by larch's user only. A file that
/// already exists keeps its mode: use [`create_private`], or set it after.
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(Modes::PRIVATE.file);
    options
}

/// Creates (or truncates) `path` for writing, readable by larch's user only,
/// also when a file was there already.
pub fn create_private(path: &Path) -> io::Result<File> {
    let file = private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(Modes::PRIVATE.file))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_bare_relative_name_is_held_by_the_working_directory() {
        // `larch run` without --data makes `data` where it runs.
        assert_eq!(parent_of(Path::new("data")), Path::new("."));
        assert_eq!(parent_of(Path::new("a/data")), Path::new("a"));
        assert_eq!(parent_of(Path::new("/")), Path::new("."));
        let dir = tempfile::tempdir().unwrap();
        let made = create_dirs_durable(&dir.path().join("a/b"), 0o700).unwrap();
        assert_eq!(made, [dir.path().join("a/b"), dir.path().join("a")]);
        assert!(create_dirs_durable(&dir.path().join("a/b"), 0o700)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn only_the_directories_it_makes_get_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("user");
        std::fs::create_dir(&existing).unwrap();
        set_mode(&existing, 0o755).unwrap();
        let deepest = existing.join("a/b");
        let created = create_dirs(&deepest, 0o750).unwrap();
        assert_eq!(created, [deepest.clone(), existing.join("a")]);
        assert_eq!(mode(&existing), 0o755);
        assert_eq!(mode(&existing.join("a")), 0o750);
        assert_eq!(mode(&deepest), 0o750);
        assert!(create_dirs(&deepest, 0o700).unwrap().is_empty());
        assert_eq!(
            mode(&deepest),
            0o750,
            "an existing directory keeps its mode"
        );

        own_dir(&existing).unwrap();
        assert_eq!(
            mode(&existing),
            0o700,
            "larch's own directories are tightened"
        );
        let file = existing.join("f");
        std::fs::write(&file, "x").unwrap();
        set_mode(&file, 0o644).unwrap();
        drop(create_private(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
    }
}
