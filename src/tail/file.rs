//! One tailed file: how it is recognised, where it was read up to, and how
//! its bytes become lines.
//!
//! A file is known by device and inode plus a fingerprint (SHA-256 of its
//! first bytes), so an inode the filesystem hands to a new file is not taken
//! for the old one. Only whole lines are read: a last line without its newline
//! waits for it, unless the file stays idle (or larch stops), and then it is
//! stored marked as partial. A line longer than the line limit is cut there
//! and the rest of it skipped, as HTTP lines are.
//!
//! Files are opened so that what is read is what was checked: without
//! `follow_symlinks`, no symbolic link below the glob's leading directory is
//! followed (each step is opened with `O_NOFOLLOW`, relative to the one
//! before, so a link swapped in after the listing is refused too), nothing
//! but a regular file is read, and the device and inode the listing saw are
//! always checked against the opened descriptor.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::ingest::body::MAX_LINE;
use crate::spool::FilePosition;

/// Bytes of a file's start that identify it.
pub const FINGERPRINT_BYTES: u64 = 256;
/// Bytes read from one file in one go.
pub const CHUNK: usize = 1024 * 1024;

/// The fingerprint of the first `len` bytes of `file`.
pub fn fingerprint(file: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut head = vec![0u8; len as usize];
    file.read_exact_at(&mut head, 0)?;
    Ok(Sha256::digest(&head).into())
}

pub struct Tailed {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub position: FilePosition,
    /// Open while the file is active; closed when idle, to bound descriptors.
    pub file: Option<File>,
    /// When bytes last arrived (or the file was opened).
    pub last_growth: Instant,
    /// The size the file had when it last grew.
    pub seen_size: u64,
    /// The path no longer leads to this file (rotated away or deleted).
    pub orphaned_since: Option<Instant>,
    /// The glob's leading directory the path was found under, and whether
    /// links below it may be followed: how the file is opened again.
    pub root: PathBuf,
    pub follow_symlinks: bool,
}

/// A line read from a file, with the offset it starts at.
pub struct ReadLine {
    pub offset: u64,
    pub text: String,
    pub truncated: bool,
    pub partial: bool,
}

/// Lines read in one go and the position after them.
pub struct Chunk {
    pub lines: Vec<ReadLine>,
    pub position: FilePosition,
}

impl Tailed {
    /// The open file, reopened by path if it was closed while idle. The path
    /// must still lead to this very file.
    pub fn open(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            let file = open_regular(&self.path, &self.root, self.follow_symlinks)?;
            if identity_of(&file)? != (self.dev, self.ino) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the path now leads to another file",
                ));
            }
            self.file = Some(file);
        }
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("file not open"))
    }

    /// The file's size now, and whether its first bytes are still the recorded ones.
    pub fn size_and_sameness(&mut self) -> io::Result<(u64, bool)> {
        self.open()?;
        let Some(file) = &self.file else {
            return Err(io::Error::other("file not open"));
        };
        Ok((
            file.metadata()?.len(),
            Self::same_content(&self.position, file)?,
        ))
    }

    /// Starts over from the first byte of a file that was truncated (or
    /// rewritten) in place, `size` bytes long now. Its lines get new IDs.
    pub fn restart(&mut self, size: u64) -> io::Result<()> {
        let fp_len = size.min(FINGERPRINT_BYTES);
        let fp = fingerprint(self.open()?, fp_len)?;
        let p = &mut self.position;
        p.fingerprint = fp;
        p.fingerprint_len = fp_len as u32;
        p.offset = 0;
        p.generation += 1;
        p.in_long_line = false;
        Ok(())
    }

    /// Reads whole lines after the stored position and before `size`, at most
    /// [`CHUNK`] bytes. With `flush_partial`, a last line without a newline is
    /// taken too.
    pub fn read_chunk(&mut self, size: u64, flush_partial: bool) -> io::Result<Option<Chunk>> {
        let mut position = self.position.clone();
        let start = position.offset;
        let file = self.open()?;
        if size <= position.offset {
            return Ok(None);
        }
        let want = ((size - position.offset) as usize).min(CHUNK);
        let mut buf = vec![0u8; want];
        let got = read_at_most(file, &mut buf, position.offset)?;
        buf.truncate(got);
        let mut lines = Vec::new();
        let mut at = 0usize;
        while at < buf.len() {
            let rest = &buf[at..];
            let newline = rest.iter().position(|b| *b == b'\n');
            let line_start = position.offset + at as u64;
            match newline {
                Some(end) => {
                    let consumed = end + 1;
                    if position.in_long_line {
                        // The rest of a line already stored cut.
                        position.in_long_line = false;
                    } else {
                        lines.push(line_of(&rest[..end], line_start, false));
                    }
                    at += consumed;
                }
                None if rest.len() >= MAX_LINE || (position.in_long_line && !rest.is_empty()) => {
                    // A line past the limit: store its head now, skip the rest.
                    if !position.in_long_line {
                        let mut head = line_of(rest, line_start, false);
                        head.truncated = true;
                        lines.push(head);
                        position.in_long_line = true;
                    }
                    at = buf.len();
                }
                None if flush_partial => {
                    lines.push(line_of(rest, line_start, true));
                    at = buf.len();
                }
                None => break,
            }
        }
        position.offset += at as u64;
        if position.offset == start {
            return Ok(None);
        }
        // The fingerprint grows with the file until it covers its full length.
        if position.fingerprint_len < FINGERPRINT_BYTES as u32
            && size > u64::from(position.fingerprint_len)
        {
            let len = size.min(FINGERPRINT_BYTES);
            position.fingerprint = fingerprint(file, len)?;
            position.fingerprint_len = len as u32;
        }
        Ok(Some(Chunk { lines, position }))
    }

    /// Whether `file` still starts with the bytes `position` recorded.
    pub fn same_content(position: &FilePosition, file: &File) -> io::Result<bool> {
        let len = u64::from(position.fingerprint_len);
        if file.metadata()?.len() < len {
            return Ok(false);
        }
        Ok(len == 0 || fingerprint(file, len)? == position.fingerprint)
    }
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A line's text: a trailing `\r` dropped, cut to the line limit at a UTF-8
/// boundary, bytes that are not UTF-8 replaced.
fn line_of(bytes: &[u8], offset: u64, partial: bool) -> ReadLine {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let truncated = bytes.len() > MAX_LINE;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LINE)]).into_owned();
    if text.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    ReadLine {
        offset,
        text,
        truncated,
        partial,
    }
}

/// Device and inode of what a listing found at `path`, if it is a regular
/// file (the link's target with `follow_symlinks`, else the entry itself, so
/// a link is not a file), and how many names it has. Only for recognising
/// files already known; a file is read only through [`open_regular`], whose
/// descriptor has the last word.
pub fn identity(path: &Path, follow_symlinks: bool) -> Option<((u64, u64), u64)> {
    let meta = if follow_symlinks {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
    .ok()?;
    meta.is_file()
        .then(|| ((meta.dev(), meta.ino()), meta.nlink()))
}

/// Device and inode of an open file, from the descriptor itself.
pub fn identity_of(file: &File) -> io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Opens the regular file at `path` (found under `root`) for reading.
///
/// With `follow_symlinks` the path is opened as the system resolves it.
/// Without, `root` (written out by the operator) is opened as it is, and each
/// component below it with `O_NOFOLLOW`, relative to the directory opened
/// before: a link anywhere below `root` fails the open, even one planted
/// after the listing. Either way the open does not block (a FIFO named like a
/// log would hang it) and anything but a regular file is refused.
pub fn open_regular(path: &Path, root: &Path, follow_symlinks: bool) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, CWD};
    let read = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = if follow_symlinks {
        rustix::fs::openat(CWD, path, read, Mode::empty())?
    } else {
        let below = path.strip_prefix(root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not under {}", path.display(), root.display()),
            )
        })?;
        let mut names = Vec::new();
        for part in below.components() {
            match part {
                std::path::Component::Normal(name) => names.push(name),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} holds '.' or '..' below {}",
                            path.display(),
                            root.display()
                        ),
                    ))
                }
            }
        }
        let Some((file_name, dirs)) = names.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            ));
        };
        let refused_link = |e: rustix::io::Errno| {
            if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is, or lies under, a symbolic link (or something else that is not a directory); file sources follow links only with follow_symlinks = true",
                        path.display()
                    ),
                )
            } else {
                io::Error::from(e)
            }
        };
        let mut dir = rustix::fs::openat(CWD, root, DIR_STEP, Mode::empty())?;
        for name in dirs {
            dir = rustix::fs::openat(&dir, *name, DIR_STEP | OFlags::NOFOLLOW, Mode::empty())
                .map_err(refused_link)?;
        }
        rustix::fs::openat(&dir, *file_name, read | OFlags::NOFOLLOW, Mode::empty())
            .map_err(refused_link)?
    };
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// How a directory on the way to a file is opened: only to look up the next
/// name in it (`O_PATH` where there is one, which needs no read permission).
#[cfg(any(target_os = "linux", target_os = "android"))]
const DIR_STEP: rustix::fs::OFlags = rustix::fs::OFlags::PATH
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::CLOEXEC);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const DIR_STEP: rustix::fs::OFlags = rustix::fs::OFlags::RDONLY
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::CLOEXEC);
