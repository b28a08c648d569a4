//! `forgetful`: a FUSE filesystem for tests that behaves like a disk whose power
//! can be cut (the LazyFS idea from "When Amnesia Strikes", PVLDB 2024).
//!
//! Mount it in-process, point a program at it, kill the program, call
//! [`Forgetful::power_cut`], and restart the program on whatever survived.
//!
//! # The POSIX model, at its strictest
//!
//! * Writes, size changes (truncate, fallocate) and all name changes (create,
//!   mkdir, rename, unlink, rmdir, link, symlink) live only in memory.
//! * `fsync`/`fdatasync` of a file makes that file's data and size durable, and
//!   nothing else: not its name.
//! * `fsync` of a directory (open it `O_RDONLY | O_DIRECTORY` and fsync) makes
//!   that directory's current entries (name -> inode) durable, not the data of
//!   the files they name.
//! * A power cut drops everything else: every directory reverts to its durable
//!   entries, every file to its durable data and size, and inodes no longer
//!   reachable from the root through durable entries vanish. A file named
//!   durably but never fsynced comes back empty; a directory never fsynced comes
//!   back empty; a rename whose source directory was not fsynced but whose
//!   destination was may leave both names.
//! * A failed fsync behaves like Linux ("fsyncgate"): the data it covered stays
//!   readable but is marked clean, so no later fsync makes it durable. Once
//!   every handle on the file is closed, those pages are evicted, as a kernel
//!   may do at any time (and does when asked with `posix_fadvise(DONTNEED)`,
//!   which FUSE does not pass on): the next program to open the file reads
//!   what the disk holds.
//! * Optionally the last unsynced write of each file is torn at a sector
//!   boundary ([`Tear::Sector`]).
//!
//! The durable image lives in a backing directory, one file per inode
//! (`<backing>/<ino>`) holding exactly the fsynced bytes; names are kept in
//! memory. POSIX locks and `flock` are left to the kernel.

mod data;
mod fs;
mod tree;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption};

use crate::fs::Fs;
use crate::tree::State;

/// Mount options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Size of the disk: statfs reports it, and writes or extensions that would
    /// take the total of all file sizes above it fail with `ENOSPC`.
    pub capacity_bytes: Option<u64>,
    /// Seed for the randomness of torn writes, so runs replay.
    pub seed: u64,
}

/// How the last unsynced write of each file fares in a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Unsynced writes are lost entirely.
    None,
    /// A random prefix of the last unsynced write of each file, ending on a
    /// multiple of this sector size (possibly empty, possibly whole), reaches
    /// the durable image.
    Sector(u32),
}

/// An operation a freeze can be triggered on (see [`Forgetful::freeze_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `fsync`/`fdatasync` of a file.
    Fsync,
    /// `fsync` of a directory.
    FsyncDir,
    /// `rename` (matches on either the source or the destination path).
    Rename,
    /// `write`.
    Write,
    /// Creation of a name: create, mknod, mkdir, symlink, link.
    Create,
}

/// Counters, for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// File fsync calls (including failed ones).
    pub fsyncs: u64,
    /// Directory fsync calls (including failed ones).
    pub fsyncdirs: u64,
    /// Bytes accepted by write calls.
    pub bytes_written: u64,
    /// Bytes of unsynced file data held in memory (whole 4 KiB pages).
    pub unsynced_bytes: u64,
    /// Power cuts so far.
    pub cuts: u64,
    /// Failures asked for (fsyncs and writes) that have not happened yet.
    pub failures_pending: u32,
}

/// What a power cut threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Surviving files whose data or size reverted to their last fsync.
    pub files_lost: u64,
    /// Directory entries that were added, removed or changed since their
    /// directory's last fsync and were reverted.
    pub names_reverted: u64,
    /// Files whose last unsynced write reached the durable image in part or whole.
    pub writes_torn: u64,
    /// Inodes removed because no durable name reaches them.
    pub inodes_dropped: u64,
}

/// The mounted filesystem. Unmounts on drop.
pub struct Forgetful {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for Forgetful {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forgetful")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl Forgetful {
    /// Mount an empty filesystem at `mountpoint`, keeping its durable image in
    /// `backing`, which must be empty or absent (it is then created).
    pub fn mount(mountpoint: &Path, backing: &Path, options: Options) -> io::Result<Forgetful> {
        std::fs::create_dir_all(backing)?;
        if std::fs::read_dir(backing)?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("backing directory {} is not empty", backing.display()),
            ));
        }
        let mountpoint = mountpoint.canonicalize()?;
        let state = State::new(
            &backing.canonicalize()?,
            options.capacity_bytes,
            options.seed,
        );
        let mut fs = Forgetful {
            mountpoint,
            state: Arc::new(Mutex::new(state)),
            session: None,
        };
        fs.attach()?;
        Ok(fs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start a FUSE session serving the current generation.
    fn attach(&mut self) -> io::Result<()> {
        let generation = self.lock().generation;
        let fs = Fs {
            state: self.state.clone(),
            generation,
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("forgetful".into()),
            MountOption::Subtype("forgetful".into()),
            MountOption::DefaultPermissions,
        ];
        config.n_threads = Some(2);
        self.session = Some(fuser::spawn_mount(fs, &self.mountpoint, &config)?);
        Ok(())
    }

    /// Unmount, waiting for busy mounts a little before detaching lazily.
    fn detach(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let path = CString::new(self.mountpoint.as_os_str().as_bytes())?;
        let mut lazy = false;
        for attempt in 0.. {
            // SAFETY: `path` is a valid NUL-terminated string.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EBUSY) if attempt < 50 => std::thread::sleep(Duration::from_millis(20)),
                Some(libc::EBUSY) => {
                    // SAFETY: as above.
                    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    lazy = true;
                    break;
                }
                Some(libc::EINVAL) => break, // not mounted any more
                _ => return Err(err),
            }
        }
        if lazy {
            // Files are still open on the detached mount: its session thread lives
            // on until they close, answering EIO (its generation is stale). Do not
            // let fuser unmount by path, which would hit the next mount.
            self.lock().generation += 1;
            std::mem::forget(session);
            return Ok(());
        }
        // Already unmounted: dropping fuser's mount guard only finds nothing to do.
        let BackgroundSession { guard, .. } = session;
        for _ in 0..500 {
            if guard.is_finished() {
                return match guard.join() {
                    // The kernel ends a session it unmounted with ENODEV, or
                    // with ECONNABORTED when a request was still in flight.
                    Ok(Err(e))
                        if e.kind() == io::ErrorKind::ConnectionAborted
                            || e.raw_os_error() == Some(libc::ENODEV) =>
                    {
                        Ok(())
                    }
                    Ok(res) => res,
                    Err(_) => Err(io::Error::other("FUSE session thread panicked")),
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The session thread did not stop in time; leave it behind, answering EIO.
        self.lock().generation += 1;
        Ok(())
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Cut the power: unmount (the caller has already killed every process using
    /// the mount), drop every unsynced change (tearing the last write of each
    /// file per `tear`), and mount again at the same place.
    pub fn power_cut(&mut self, tear: Tear) -> io::Result<CutReport> {
        self.detach()?;
        let report = self.lock().cut(tear)?;
        self.attach()?;
        Ok(report)
    }

    /// The power goes off now: every request fails with EIO and nothing more
    /// becomes durable until the next [`power_cut`](Self::power_cut).
    pub fn freeze(&self) {
        self.lock().frozen = true;
    }

    /// Freeze when the matching operation arrives, after `after` earlier
    /// matches. The matching operation itself fails with EIO and does not take
    /// effect. `path_contains` filters on the operation's path within the mount
    /// (starting with `/`); renames match on either path. Replaces any earlier
    /// trigger; a cut disarms it.
    pub fn freeze_on(&self, op: Op, path_contains: Option<&str>, after: u32) {
        self.lock().set_trigger(op, path_contains, after);
    }

    /// Whether the filesystem is frozen (by [`freeze`](Self::freeze) or a trigger).
    pub fn frozen(&self) -> bool {
        self.lock().frozen
    }

    /// Make the next `n` fsync calls (files and directories) fail with EIO.
    pub fn fail_next_fsyncs(&self, n: u32) {
        self.lock().fail_fsyncs = tree::Failing {
            left: n,
            path: None,
        };
    }

    /// Make the next `n` fsync calls of a file or directory whose path
    /// contains `path` fail with EIO (paths as `/dir/file` from the mount).
    pub fn fail_next_fsyncs_of(&self, path: &str, n: u32) {
        self.lock().fail_fsyncs = tree::Failing {
            left: n,
            path: Some(path.to_owned()),
        };
    }

    /// Make the next `n` write calls fail with EIO.
    pub fn fail_next_writes(&self, n: u32) {
        self.lock().fail_writes = tree::Failing {
            left: n,
            path: None,
        };
    }

    /// Make the next `n` writes to a file whose path contains `path` fail with EIO.
    pub fn fail_next_writes_of(&self, path: &str, n: u32) {
        self.lock().fail_writes = tree::Failing {
            left: n,
            path: Some(path.to_owned()),
        };
    }

    /// While full, writes, creates and extensions fail with ENOSPC and statfs
    /// reports no free space. Survives cuts.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    /// Unmount cleanly. The backing directory keeps the durable image.
    pub fn unmount(mut self) -> io::Result<()> {
        self.detach()
    }
}

impl Drop for Forgetful {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}
