//! The in-memory state: inodes, the current and durable name trees, faults,
//! and the power cut itself.
//!
//! (Over 500 lines: every operation changes the current tree and the durable
//! one under one lock, and a power cut is their difference; split, each half
//! would need the other's invariants.)

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::data::FileData;
use crate::{CutReport, Op, Stats, Tear};

/// The root directory's inode number.
pub(crate) const ROOT: u64 = 1;

/// What an inode is.
pub(crate) enum Kind {
    File(FileData),
    Dir {
        /// Current entries.
        entries: BTreeMap<OsString, u64>,
        /// Entries as of the last successful fsyncdir.
        durable: BTreeMap<OsString, u64>,
    },
    Symlink(PathBuf),
}

/// One inode. Metadata other than data, size and names is kept in memory only
/// and is not reverted by a cut.
pub(crate) struct Inode {
    pub(crate) kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    nlink: u32,
    /// Parent and name of the most recent link, for path matching.
    parent: u64,
    name: OsString,
    /// Open file handles.
    open: u32,
    /// Number of durable directory entries naming this inode.
    durable_links: u32,
}

/// Fires a freeze when the matching operation arrives.
struct Trigger {
    op: Op,
    path_contains: Option<String>,
    remaining: u32,
}

/// An open file handle.
struct Handle {
    ino: u64,
    append: bool,
}

/// Calls of one kind that are to fail with EIO: the next `left` of them whose
/// path contains `path` (any path if `None`).
#[derive(Debug, Default)]
pub(crate) struct Failing {
    pub(crate) left: u32,
    pub(crate) path: Option<String>,
}

impl Failing {
    /// Whether a call on `path` fails; counts it if so.
    fn take(&mut self, path: &str) -> bool {
        let matches = self.path.as_deref().is_none_or(|p| path.contains(p));
        if self.left > 0 && matches {
            self.left -= 1;
            return true;
        }
        false
    }
}

/// The whole filesystem state, shared between the FUSE threads and the handle.
pub(crate) struct State {
    backing: PathBuf,
    inodes: HashMap<u64, Inode>,
    handles: HashMap<u64, Handle>,
    next_ino: u64,
    next_fh: u64,
    /// Mount generation; requests from an older mount get EIO.
    pub(crate) generation: u64,
    pub(crate) frozen: bool,
    trigger: Option<Trigger>,
    pub(crate) fail_fsyncs: Failing,
    pub(crate) fail_writes: Failing,
    pub(crate) full: bool,
    capacity: Option<u64>,
    /// Sum of the current sizes of all live files.
    total_size: u64,
    rng: u64,
    fsyncs: u64,
    fsyncdirs: u64,
    bytes_written: u64,
    cuts: u64,
}

type R<T> = Result<T, Errno>;

fn eio(e: io::Error) -> Errno {
    Errno::from(e)
}

impl Inode {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32, parent: u64, name: &OsStr) -> Inode {
        let now = SystemTime::now();
        let nlink = if matches!(kind, Kind::Dir { .. }) {
            2
        } else {
            1
        };
        Inode {
            kind,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            nlink,
            parent,
            name: name.to_owned(),
            open: 0,
            durable_links: 0,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }

    fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(d) => d.size,
            Kind::Dir { entries, .. } => entries.len() as u64,
            Kind::Symlink(t) => t.as_os_str().len() as u64,
        }
    }

    fn file_size(&self) -> u64 {
        match &self.kind {
            Kind::File(d) => d.size,
            _ => 0,
        }
    }

    pub(crate) fn attr(&self, ino: u64) -> FileAttr {
        let kind = match self.kind {
            Kind::File(_) => FileType::RegularFile,
            Kind::Dir { .. } => FileType::Directory,
            Kind::Symlink(_) => FileType::Symlink,
        };
        let size = self.size();
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl State {
    /// A fresh, empty filesystem whose backing files live in `backing`.
    pub(crate) fn new(backing: &Path, capacity: Option<u64>, seed: u64) -> State {
        let mut inodes = HashMap::new();
        let root = Kind::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        inodes.insert(ROOT, Inode::new(root, 0o755, 0, 0, ROOT, OsStr::new("")));
        State {
            backing: backing.to_owned(),
            inodes,
            handles: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            generation: 0,
            frozen: false,
            trigger: None,
            fail_fsyncs: Failing::default(),
            fail_writes: Failing::default(),
            full: false,
            capacity,
            total_size: 0,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            fsyncs: 0,
            fsyncdirs: 0,
            bytes_written: 0,
            cuts: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn path_of(&self, ino: u64) -> PathBuf {
        self.backing.join(ino.to_string())
    }

    fn node(&self, ino: u64) -> R<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> R<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: u64) -> R<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> R<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(dir)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn child(&self, dir: u64, name: &OsStr) -> R<Option<u64>> {
        Ok(self.entries(dir)?.get(name).copied())
    }

    /// The current path of an inode, e.g. `/staging/seg-1`.
    pub(crate) fn path(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..1024 {
            if cur == ROOT {
                break;
            }
            let Some(node) = self.inodes.get(&cur) else {
                break;
            };
            parts.push(node.name.to_string_lossy().into_owned());
            cur = node.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    fn child_path(&self, dir: u64, name: &OsStr) -> String {
        let p = self.path(dir);
        let sep = if p.ends_with('/') { "" } else { "/" };
        format!("{p}{sep}{}", name.to_string_lossy())
    }

    /// Arm a freeze trigger.
    pub(crate) fn set_trigger(&mut self, op: Op, path_contains: Option<&str>, after: u32) {
        self.trigger = Some(Trigger {
            op,
            path_contains: path_contains.map(str::to_owned),
            remaining: after,
        });
    }

    /// Check the freeze trigger for `op` on `paths`; freezes and fails if it fires.
    fn trip(&mut self, op: Op, paths: &[String]) -> R<()> {
        let Some(t) = &mut self.trigger else {
            return Ok(());
        };
        let matches = t.op == op
            && match &t.path_contains {
                None => true,
                Some(s) => paths.iter().any(|p| p.contains(s.as_str())),
            };
        if matches {
            if t.remaining == 0 {
                self.trigger = None;
                self.frozen = true;
                return Err(Errno::EIO);
            }
            t.remaining -= 1;
        }
        Ok(())
    }

    /// Whether the sizes may grow from `old` to `new` (capacity and fullness).
    fn space_for(&self, old: u64, new: u64) -> R<()> {
        if new <= old {
            return Ok(());
        }
        if self.full {
            return Err(Errno::ENOSPC);
        }
        match self.capacity {
            Some(cap) if self.total_size - old + new > cap => Err(Errno::ENOSPC),
            _ => Ok(()),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let unsynced_bytes = self
            .inodes
            .values()
            .map(|n| match &n.kind {
                Kind::File(d) => d.unsynced_bytes(),
                _ => 0,
            })
            .sum();
        Stats {
            failures_pending: self.fail_fsyncs.left + self.fail_writes.left,
            fsyncs: self.fsyncs,
            fsyncdirs: self.fsyncdirs,
            bytes_written: self.bytes_written,
            unsynced_bytes,
            cuts: self.cuts,
        }
    }

    /// statfs numbers: (total blocks, free blocks), in 4 KiB blocks.
    pub(crate) fn statfs(&self) -> (u64, u64) {
        let cap = self.capacity.unwrap_or(1 << 40);
        let free = if self.full {
            0
        } else {
            cap.saturating_sub(self.total_size)
        };
        (cap / 4096, free / 4096)
    }

    // ----- name operations -----

    pub(crate) fn lookup(&self, dir: u64, name: &OsStr) -> R<FileAttr> {
        let ino = self.child(dir, name)?.ok_or(Errno::ENOENT)?;
        Ok(self.node(ino)?.attr(ino))
    }

    pub(crate) fn getattr(&self, ino: u64) -> R<FileAttr> {
        Ok(self.node(ino)?.attr(ino))
    }

    /// Create a new inode named `name` in `dir`.
    pub(crate) fn create(
        &mut self,
        dir: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> R<FileAttr> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let path = self.child_path(dir, name);
        self.trip(Op::Create, &[path])?;
        if self.child(dir, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        if self.full {
            return Err(Errno::ENOSPC);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let is_dir = matches!(kind, Kind::Dir { .. });
        if matches!(kind, Kind::File(_)) {
            File::create(self.path_of(ino)).map_err(eio)?;
        }
        self.inodes
            .insert(ino, Inode::new(kind, perm, uid, gid, dir, name));
        self.entries_mut(dir)?.insert(name.to_owned(), ino);
        let parent = self.node_mut(dir)?;
        parent.mtime = SystemTime::now();
        parent.ctime = parent.mtime;
        if is_dir {
            parent.nlink += 1;
        }
        self.getattr(ino)
    }

    pub(crate) fn link(&mut self, ino: u64, dir: u64, name: &OsStr) -> R<FileAttr> {
        if self.node(ino)?.is_dir() {
            return Err(Errno::EPERM);
        }
        let path = self.child_path(dir, name);
        self.trip(Op::Create, &[path])?;
        if self.child(dir, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.entries_mut(dir)?.insert(name.to_owned(), ino);
        let node = self.node_mut(ino)?;
        node.nlink += 1;
        node.parent = dir;
        node.name = name.to_owned();
        node.ctime = SystemTime::now();
        self.getattr(ino)
    }

    /// Drop the link count of `ino` after its name in `dir` went away.
    fn unlinked(&mut self, dir: u64, ino: u64) -> R<()> {
        let is_dir = self.node(ino)?.is_dir();
        if is_dir {
            self.node_mut(dir)?.nlink -= 1;
            self.node_mut(ino)?.nlink = 0;
        } else {
            let node = self.node_mut(ino)?;
            node.nlink = node.nlink.saturating_sub(1);
            node.ctime = SystemTime::now();
        }
        self.maybe_gc(ino);
        Ok(())
    }

    pub(crate) fn unlink(&mut self, dir: u64, name: &OsStr, want_dir: bool) -> R<()> {
        let ino = self.child(dir, name)?.ok_or(Errno::ENOENT)?;
        removable(&self.node(ino)?.kind, want_dir)?;
        self.entries_mut(dir)?.remove(name);
        self.unlinked(dir, ino)
    }

    pub(crate) fn rename(
        &mut self,
        dir: u64,
        name: &OsStr,
        ndir: u64,
        nname: &OsStr,
        flags: u32,
    ) -> R<()> {
        let paths = [self.child_path(dir, name), self.child_path(ndir, nname)];
        self.trip(Op::Rename, &paths)?;
        let src = self.child(dir, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.child(ndir, nname)?;
        self.entries(ndir)?;
        let src_dir = self.node(src)?.is_dir();
        // A directory may not move below itself.
        let mut cur = ndir;
        for _ in 0..1024 {
            if cur == src {
                return Err(Errno::EINVAL);
            }
            if cur == ROOT {
                break;
            }
            cur = self.node(cur)?.parent;
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(Errno::ENOENT)?;
            let dst_dir = self.node(dst)?.is_dir();
            self.entries_mut(dir)?.insert(name.to_owned(), dst);
            self.entries_mut(ndir)?.insert(nname.to_owned(), src);
            if src_dir != dst_dir && dir != ndir {
                let (from, to) = if src_dir { (dir, ndir) } else { (ndir, dir) };
                self.node_mut(from)?.nlink -= 1;
                self.node_mut(to)?.nlink += 1;
            }
            let n = self.node_mut(dst)?;
            n.parent = dir;
            n.name = name.to_owned();
        } else {
            if let Some(dst) = dst {
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(Errno::EEXIST);
                }
                if dst == src {
                    return Ok(());
                }
                removable(&self.node(dst)?.kind, src_dir)?;
            }
            self.entries_mut(dir)?.remove(name);
            self.entries_mut(ndir)?.insert(nname.to_owned(), src);
            if src_dir {
                self.node_mut(dir)?.nlink -= 1;
                self.node_mut(ndir)?.nlink += 1;
            }
            if let Some(dst) = dst {
                self.unlinked(ndir, dst)?;
            }
        }
        let n = self.node_mut(src)?;
        n.parent = ndir;
        n.name = nname.to_owned();
        n.ctime = SystemTime::now();
        Ok(())
    }

    pub(crate) fn readdir(&self, dir: u64) -> R<Vec<(u64, FileType, OsString)>> {
        let parent = self.node(dir)?.parent;
        let mut out = vec![
            (dir, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, &ino) in self.entries(dir)? {
            out.push((ino, self.node(ino)?.attr(ino).kind, name.clone()));
        }
        Ok(out)
    }

    pub(crate) fn readlink(&self, ino: u64) -> R<PathBuf> {
        match &self.node(ino)?.kind {
            Kind::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Remove an inode nobody can reach any more (no names, no handles, no
    /// durable names).
    fn maybe_gc(&mut self, ino: u64) {
        let Some(node) = self.inodes.get(&ino) else {
            return;
        };
        if ino == ROOT || node.nlink > 0 || node.open > 0 || node.durable_links > 0 {
            return;
        }
        let Some(node) = self.inodes.remove(&ino) else {
            return;
        };
        match node.kind {
            Kind::File(d) => {
                self.total_size -= d.size;
                let _ = std::fs::remove_file(self.path_of(ino));
            }
            Kind::Dir { durable, .. } => {
                for child in durable.values() {
                    if let Some(c) = self.inodes.get_mut(child) {
                        c.durable_links = c.durable_links.saturating_sub(1);
                    }
                    self.maybe_gc(*child);
                }
            }
            Kind::Symlink(_) => {}
        }
    }

    // ----- handles and data -----

    pub(crate) fn open(&mut self, ino: u64, flags: i32) -> R<u64> {
        let node = self.node(ino)?;
        if !matches!(node.kind, Kind::File(_)) {
            return Err(if node.is_dir() {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            });
        }
        if flags & libc::O_TRUNC != 0 {
            self.set_size(ino, 0)?;
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        let append = flags & libc::O_APPEND != 0;
        self.handles.insert(fh, Handle { ino, append });
        self.node_mut(ino)?.open += 1;
        Ok(fh)
    }

    pub(crate) fn release(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            if let Some(n) = self.inodes.get_mut(&h.ino) {
                n.open = n.open.saturating_sub(1);
                // Closed by everyone: what a failed fsync left in the cache
                // goes, so the next program to open it reads the disk.
                if let (0, Kind::File(data)) = (n.open, &mut n.kind) {
                    data.evict_clean();
                }
            }
            self.maybe_gc(h.ino);
        }
    }

    fn file(&mut self, ino: u64) -> R<&mut FileData> {
        match &mut self.node_mut(ino)?.kind {
            Kind::File(d) => Ok(d),
            Kind::Dir { .. } => Err(Errno::EISDIR),
            Kind::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    pub(crate) fn read(&mut self, ino: u64, off: u64, len: u32) -> R<Vec<u8>> {
        let path = self.path_of(ino);
        let data = self.file(ino)?;
        data.read(&path, off, u64::from(len)).map_err(eio)
    }

    /// Write; returns how many bytes were taken (short when capacity runs out).
    pub(crate) fn write(&mut self, ino: u64, fh: u64, off: u64, data: &[u8]) -> R<u32> {
        let p = self.path(ino);
        self.trip(Op::Write, std::slice::from_ref(&p))?;
        if self.fail_writes.take(&p) {
            return Err(Errno::EIO);
        }
        if self.full && !data.is_empty() {
            return Err(Errno::ENOSPC);
        }
        let old = self.node(ino)?.file_size();
        let off = match self.handles.get(&fh) {
            Some(h) if h.append && h.ino == ino => old,
            _ => off,
        };
        let mut len = data.len() as u64;
        if let Some(cap) = self.capacity {
            let room = cap.saturating_sub(self.total_size - old);
            if off + len > old.max(room) {
                len = old.max(room).saturating_sub(off);
                if len == 0 {
                    return Err(Errno::ENOSPC);
                }
            }
        }
        let path = self.path_of(ino);
        let file = self.file(ino)?;
        file.write(&path, off, &data[..len as usize]).map_err(eio)?;
        let new = file.size;
        self.total_size = self.total_size - old + new;
        self.bytes_written += len;
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        node.ctime = node.mtime;
        Ok(len as u32)
    }

    /// Truncate or extend a file.
    pub(crate) fn set_size(&mut self, ino: u64, size: u64) -> R<()> {
        let old = self.node(ino)?.file_size();
        self.space_for(old, size)?;
        self.file(ino)?.truncate(size);
        self.total_size = self.total_size - old + size;
        Ok(())
    }

    pub(crate) fn fallocate(&mut self, ino: u64, off: u64, len: u64, mode: i32) -> R<()> {
        let size = self.node(ino)?.file_size();
        let end = off.checked_add(len).ok_or(Errno::EINVAL)?;
        match mode {
            0 => self.set_size(ino, size.max(end)),
            libc::FALLOC_FL_KEEP_SIZE => self.space_for(size, size.max(end)),
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                let end = end.min(size);
                if end > off {
                    let path = self.path_of(ino);
                    let zeros = vec![0u8; (end - off) as usize];
                    self.file(ino)?.write(&path, off, &zeros).map_err(eio)?;
                }
                Ok(())
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> R<FileAttr> {
        if let Some(size) = size {
            self.set_size(ino, size)?;
        }
        let node = self.node_mut(ino)?;
        if let Some(m) = mode {
            node.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            node.uid = u;
        }
        if let Some(g) = gid {
            node.gid = g;
        }
        if let Some(t) = atime {
            node.atime = t;
        }
        if let Some(t) = mtime {
            node.mtime = t;
        }
        node.ctime = SystemTime::now();
        Ok(node.attr(ino))
    }

    /// fsync of a file: its data and size become durable (not its names).
    pub(crate) fn fsync(&mut self, ino: u64) -> R<()> {
        let p = self.path(ino);
        self.trip(Op::Fsync, std::slice::from_ref(&p))?;
        self.fsyncs += 1;
        let fail = self.fail_fsyncs.take(&p);
        let path = self.path_of(ino);
        match &mut self.node_mut(ino)?.kind {
            Kind::File(d) if fail => {
                d.fail_fsync();
                Err(Errno::EIO)
            }
            Kind::File(d) => d.fsync(&path).map_err(eio),
            _ if fail => Err(Errno::EIO),
            _ => Ok(()),
        }
    }

    /// fsync of a directory: its current entries become durable.
    pub(crate) fn fsyncdir(&mut self, ino: u64) -> R<()> {
        let p = self.path(ino);
        self.trip(Op::FsyncDir, std::slice::from_ref(&p))?;
        self.fsyncdirs += 1;
        if self.fail_fsyncs.take(&p) {
            return Err(Errno::EIO);
        }
        let (old, new) = match &mut self.node_mut(ino)?.kind {
            Kind::Dir { entries, durable } => {
                let old = std::mem::replace(durable, entries.clone());
                (old, entries.clone())
            }
            _ => return Err(Errno::ENOTDIR),
        };
        for i in new.values() {
            if let Some(n) = self.inodes.get_mut(i) {
                n.durable_links += 1;
            }
        }
        for i in old.values() {
            if let Some(n) = self.inodes.get_mut(i) {
                n.durable_links = n.durable_links.saturating_sub(1);
            }
            self.maybe_gc(*i);
        }
        Ok(())
    }

    // ----- power cut -----

    /// Drop everything not durable; see [`crate::Forgetful::power_cut`].
    pub(crate) fn cut(&mut self, tear: Tear) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        // Walk the durable tree from the root; a directory reached twice keeps its first name.
        let mut reach: HashSet<u64> = HashSet::from([ROOT]);
        let mut links: HashMap<u64, (u32, u64, OsString)> = HashMap::new();
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let Some(Inode {
                kind: Kind::Dir { durable, .. },
                ..
            }) = self.inodes.get(&dir)
            else {
                continue;
            };
            let mut keep = BTreeMap::new();
            for (name, &ino) in durable {
                let Some(child) = self.inodes.get(&ino) else {
                    continue;
                };
                if child.is_dir() && reach.contains(&ino) {
                    continue;
                }
                keep.insert(name.clone(), ino);
                let e = links.entry(ino).or_insert((0, dir, name.clone()));
                e.0 += 1;
                if reach.insert(ino) && child.is_dir() {
                    queue.push_back(ino);
                }
            }
            if let Some(Inode {
                kind: Kind::Dir { entries, durable },
                ..
            }) = self.inodes.get_mut(&dir)
            {
                *durable = keep;
                let changed = entries
                    .iter()
                    .filter(|(n, i)| durable.get(*n) != Some(i))
                    .count()
                    + durable.keys().filter(|n| !entries.contains_key(*n)).count();
                report.names_reverted += changed as u64;
                *entries = durable.clone();
            }
        }
        let dead: Vec<u64> = self
            .inodes
            .keys()
            .filter(|i| !reach.contains(i))
            .copied()
            .collect();
        for ino in dead {
            if let Some(Inode {
                kind: Kind::File(_),
                ..
            }) = self.inodes.remove(&ino)
            {
                match std::fs::remove_file(self.path_of(ino)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            report.inodes_dropped += 1;
        }
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let r = self.rand();
            let path = self.path_of(ino);
            let Some(node) = self.inodes.get_mut(&ino) else {
                continue;
            };
            if let Kind::File(d) = &mut node.kind {
                if let Tear::Sector(s) = tear {
                    if d.tear(&path, u64::from(s), r)? {
                        report.writes_torn += 1;
                    }
                }
                if d.is_dirty() {
                    report.files_lost += 1;
                }
                d.revert();
            }
            let (count, parent, name) = links.remove(&ino).unwrap_or((0, ROOT, OsString::new()));
            node.nlink = if node.is_dir() { 2 } else { count };
            node.durable_links = count;
            node.parent = parent;
            node.name = name;
            node.open = 0;
        }
        // Directory link counts: 2 plus one per subdirectory.
        let subdirs: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(&i, n)| n.is_dir() && i != ROOT)
            .map(|(_, n)| n.parent)
            .collect();
        for p in subdirs {
            if let Some(n) = self.inodes.get_mut(&p) {
                n.nlink += 1;
            }
        }
        self.total_size = self.inodes.values().map(Inode::file_size).sum();
        self.handles.clear();
        self.frozen = false;
        self.trigger = None;
        self.fail_fsyncs = Failing::default();
        self.fail_writes = Failing::default();
        self.generation += 1;
        self.cuts += 1;
        Ok(report)
    }
}

/// Whether a name of `kind` may go (unlink, rmdir, or a rename over it) by a
/// call that expects a directory (`want_dir`) or not.
fn removable(kind: &Kind, want_dir: bool) -> R<()> {
    match (kind, want_dir) {
        (Kind::Dir { entries, .. }, true) if !entries.is_empty() => Err(Errno::ENOTEMPTY),
        (Kind::Dir { .. }, false) => Err(Errno::EISDIR),
        (Kind::File(_) | Kind::Symlink(_), true) => Err(Errno::ENOTDIR),
        _ => Ok(()),
    }
}
