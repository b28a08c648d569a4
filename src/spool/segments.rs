//! Segment files: where the spool's line blocks live, beside sled.
//!
//! sled keeps every value it was given in memory until its cache evicts it, and
//! with blocks of tens of KiB that grew larch to hundreds of MB under load. So
//! the blocks go into append-only files here, and sled holds only a small
//! [`BlockRef`] per block (segment, offset, length) next to the part records.
//!
//! A group commit appends its blocks to the current segment, fsyncs it, and only
//! then gives sled the references, so a reference never points at bytes that
//! are not on disk. A segment is deleted once no reference points into it.
//!
//! A group's blocks are gathered in memory and written in one go. Where the
//! file system allows it they are written with direct I/O, past the page
//! cache: copying every byte of every line into the cache cost more CPU than
//! anything else on the ingest path, and the cache only kept the host's own
//! files out. Direct writes cover whole pages, so the last page's bytes are
//! kept and written again with the next group, and the file may end in zeros
//! past the last block (no reference points there); writes through the page
//! cache do the same on disk, since the cache writes its last page back whole.
//! File systems without direct I/O (some FUSE) get ordinary writes.
//!
//! Every record in a segment is framed: a kind byte and its length. A
//! reference points past the frame, so reading a block needs no frame; the
//! frames let a segment be walked from a known point to find the group
//! records (`replay`) that follow the blocks of each group commit.

use aligned_vec::{AVec, ConstAlign};
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::files::sync_dir;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// What direct I/O aligns to: memory, file offsets and lengths. 4 KiB covers
/// every logical block size disks have.
const PAGE: usize = 4096;

/// A group's bytes as direct I/O takes them: in page-aligned memory.
type PageAligned = AVec<u8, ConstAlign<PAGE>>;

/// A group's bytes are written out once this many are pending, so a large
/// group holds no more than this (and a block) in memory.
const WRITE_AT: usize = 1 << 20;

/// The pending buffer is kept between groups up to this size.
const KEEP_BUFFER: usize = 2 * WRITE_AT;

/// A frame's kind byte: a block of lines (or a member).
const FRAME_BLOCK: u8 = b'b';
/// A frame's kind byte: a group record, written after the group's blocks.
const FRAME_GROUP: u8 = b'g';
/// A frame: its kind, then its record's length (u32, little-endian).
const FRAME: usize = 5;
/// No group record comes near this (a group holds at most 8 MiB of lines in
/// blocks of 256 KiB): a damaged length past it ends the walk rather than
/// asking for that much memory.
const MAX_GROUP_RECORD: u64 = 16 * 1024 * 1024;

/// Where one block's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// What a reference's bytes point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// A block of lines.
    Lines,
    /// A member: lines already compressed (`member`).
    Member,
}

/// Marks a member's reference, after the 20 bytes every reference has.
const MEMBER_MARK: u8 = b'M';

impl BlockRef {
    const ENCODED: usize = 20;

    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut out = [0u8; Self::ENCODED];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// A member's reference: marked, so where a part's compressed runs end is
    /// found from the references alone, without reading a segment.
    pub fn encode_member(&self) -> [u8; Self::ENCODED + 1] {
        let mut out = [MEMBER_MARK; Self::ENCODED + 1];
        out[..Self::ENCODED].copy_from_slice(&self.encode());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<(Self, Holds)> {
        let (bytes, holds) = match bytes.split_last() {
            Some((&MEMBER_MARK, rest)) if rest.len() == Self::ENCODED => (rest, Holds::Member),
            _ => (bytes, Holds::Lines),
        };
        let bytes: &[u8; Self::ENCODED] = bytes.try_into().ok()?;
        let (segment, rest) = bytes.split_at(8);
        let (offset, len) = rest.split_at(8);
        Some((
            Self {
                segment: u64::from_be_bytes(segment.try_into().ok()?),
                offset: u64::from_be_bytes(offset.try_into().ok()?),
                len: u32::from_be_bytes(len.try_into().ok()?),
            },
            holds,
        ))
    }
}

struct Writer {
    id: u64,
    file: File,
    /// The file takes direct I/O.
    direct: bool,
    /// Bytes of the segment, appended whether written yet or not.
    len: u64,
    /// Bytes written to the file so far.
    written: u64,
    /// Bytes from `pending_at` to `len`: appended and not yet written, after
    /// (with direct I/O) the written bytes of the last page, written again.
    pending: PageAligned,
    pending_at: u64,
    /// Earlier segments written since the last sync.
    unsynced: Vec<File>,
    /// The current segment failed a write or an fsync: nothing in it is
    /// synced again, and the next append starts a new one.
    given_up: bool,
    /// A segment file was created since the last sync: the directory needs one too.
    new_file: bool,
    /// A sync failed after its bytes were written: they may reach the disk
    /// even so, a group record with them (see [`SegmentWriter::failed_after_writing`]).
    failed_after_writing: bool,
}

/// A group record found by [`Segments::group_records`].
pub struct FoundGroup {
    pub segment: u64,
    /// Where the record's frame ends: where the next group's bytes begin.
    pub end: u64,
    pub record: Vec<u8>,
}

/// Members (`member`) go to segments of their own, whose IDs have this bit
/// set: a segment of blocks then holds nothing once its blocks were
/// compressed, and goes, instead of being kept for the members beside them.
pub const MEMBER_SEGMENTS: u64 = 1 << 63;

pub struct Segments {
    dir: PathBuf,
    writer: Mutex<Writer>,
    members: Mutex<MemberWriter>,
}

/// The members' writer, whose first segment is made only when the first
/// member comes: a spool that never compresses (or a restart that does not
/// yet) leaves no empty file.
struct MemberWriter {
    first_id: u64,
    writer: Option<Writer>,
}

fn file_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

fn parse_name(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
}

/// Creates a segment file, for direct I/O where its file system takes it
/// (tells whether it does).
fn create(dir: &Path, id: u64) -> io::Result<(File, bool)> {
    let file = crate::files::private_options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(dir.join(file_name(id)))?;
    Ok(direct(file))
}

/// The file switched to direct I/O, if its file system takes it.
fn direct(file: File) -> (File, bool) {
    use rustix::fs::OFlags;
    let direct = rustix::fs::fcntl_getfl(&file)
        .and_then(|flags| rustix::fs::fcntl_setfl(&file, flags | OFlags::DIRECT))
        .is_ok();
    (file, direct)
}

/// The file back to writes through the page cache.
fn buffered(file: &File) -> io::Result<()> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
    Ok(())
}

fn round_down(n: u64) -> u64 {
    n - n % PAGE as u64
}

impl Segments {
    /// Opens the segment directory. Writing always starts a new segment: the
    /// tail of the last one may hold bytes of a commit that never finished.
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::files::own_dir(dir)?;
        let ids = Self::ids(dir)?;
        let newest = |members: bool| {
            ids.iter()
                .copied()
                .filter(|id| (id & MEMBER_SEGMENTS != 0) == members)
                .max()
        };
        let blocks = Writer::create(dir, newest(false).unwrap_or(0) + 1)?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            writer: Mutex::new(blocks),
            members: Mutex::new(MemberWriter {
                first_id: newest(true).unwrap_or(MEMBER_SEGMENTS) + 1,
                writer: None,
            }),
        })
    }

    /// How many segment files in `dir` hold any bytes; `None` if there is no `dir`.
    pub fn written(dir: &Path) -> io::Result<Option<usize>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut written = 0;
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_str().and_then(parse_name).is_some()
                && entry.metadata()?.len() > 0
            {
                written += 1;
            }
        }
        Ok(Some(written))
    }

    fn ids(dir: &Path) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(id) = entry?.file_name().to_str().and_then(parse_name) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Holds off other appends (and segment collection) while a group is written
    /// and its references handed to sled.
    pub fn lock(&self) -> SegmentWriter<'_> {
        SegmentWriter {
            dir: &self.dir,
            writer: MutexGuard::map(self.writer.lock(), |w| w),
        }
    }

    /// The writer of members' segments, held as [`Self::lock`] is for blocks
    /// (its first segment is made now if it was not yet).
    pub fn lock_members(&self) -> io::Result<SegmentWriter<'_>> {
        let mut members = self.members.lock();
        if members.writer.is_none() {
            let mut writer = Writer::create(&self.dir, members.first_id)?;
            writer.new_file = true;
            members.writer = Some(writer);
        }
        let writer = MutexGuard::try_map(members, |m| m.writer.as_mut())
            .map_err(|_| io::Error::other("the members' segment writer is missing"))?;
        Ok(SegmentWriter {
            dir: &self.dir,
            writer,
        })
    }

    /// Where the members' writer is: like [`SegmentWriter::position`], held
    /// as long as the writer lock would be (see `collect`). Taken after the
    /// blocks' writer where both are.
    pub fn members_position(&self) -> (u64, u64) {
        let members = self.members.lock();
        match &members.writer {
            Some(w) => (w.id, w.len),
            None => (members.first_id, 0),
        }
    }

    /// The group records in segments of blocks from `segment` (at `offset`)
    /// on, in the order they were written. A segment is walked frame by frame
    /// until its bytes end or stop being frames (zeros past the last page
    /// written, or a group cut short by a crash), then the next is.
    pub fn group_records(&self, segment: u64, offset: u64) -> io::Result<Vec<FoundGroup>> {
        let mut ids: Vec<u64> = Self::ids(&self.dir)?
            .into_iter()
            .filter(|id| id & MEMBER_SEGMENTS == 0 && *id >= segment)
            .collect();
        ids.sort_unstable();
        let mut found = Vec::new();
        for id in ids {
            let path = self.dir.join(file_name(id));
            let named = |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("reading {} for group records: {e}", path.display()),
                )
            };
            let file = match File::open(&path) {
                Ok(file) => file,
                // Collected meanwhile: nothing in it is owed (see `collect`).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(named(e)),
            };
            let size = file.metadata().map_err(named)?.len();
            let mut at = if id == segment { offset } else { 0 };
            let mut header = [0u8; FRAME];
            while at + FRAME as u64 <= size {
                file.read_exact_at(&mut header, at).map_err(named)?;
                let len = u64::from(u32::from_le_bytes([
                    header[1], header[2], header[3], header[4],
                ]));
                let body = at + FRAME as u64;
                if len == 0 || body + len > size {
                    break;
                }
                match header[0] {
                    FRAME_BLOCK => {}
                    FRAME_GROUP if len <= MAX_GROUP_RECORD => {
                        let mut record = vec![0u8; len as usize];
                        file.read_exact_at(&mut record, body).map_err(named)?;
                        found.push(FoundGroup {
                            segment: id,
                            end: body + len,
                            record,
                        });
                    }
                    _ => break,
                }
                at = body + len;
            }
        }
        Ok(found)
    }

    /// Reads one block's bytes.
    #[cfg(test)]
    pub fn read(&self, r: &BlockRef) -> io::Result<Vec<u8>> {
        Ok(self.reader().read(r)?.to_vec())
    }

    /// A reader for many blocks in a row.
    pub fn reader(&self) -> BlockReader<'_> {
        BlockReader {
            dir: &self.dir,
            open: None,
            buf: Vec::new(),
        }
    }

    /// The segment being written now; older ones get no new blocks.
    #[cfg(test)]
    pub fn current(&self) -> u64 {
        self.lock().writer.id
    }

    /// Deletes every segment that no reference in `live` names and that is
    /// older than its writer's segment at `before` (blocks' and members').
    pub fn remove_unreferenced(
        &self,
        before: (u64, u64),
        live: &HashSet<u64>,
    ) -> io::Result<usize> {
        let mut removed = 0;
        for id in Self::ids(&self.dir)? {
            let bound = if id & MEMBER_SEGMENTS == 0 {
                before.0
            } else {
                before.1
            };
            if id < bound && !live.contains(&id) {
                match std::fs::remove_file(self.dir.join(file_name(id))) {
                    Ok(()) => removed += 1,
                    // Another collection (the sync loop's, the compactor's) was first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

/// Reads blocks one after another. A part's blocks mostly sit side by side in
/// a few segments, so the last segment stays open and one buffer is reused.
pub struct BlockReader<'a> {
    dir: &'a Path,
    open: Option<(u64, File)>,
    buf: Vec<u8>,
}

impl BlockReader<'_> {
    pub fn read(&mut self, r: &BlockRef) -> io::Result<&[u8]> {
        let file = match &mut self.open {
            Some((id, file)) if *id == r.segment => file,
            slot => {
                &slot
                    .insert((r.segment, File::open(self.dir.join(file_name(r.segment)))?))
                    .1
            }
        };
        let len = r.len as usize;
        if self.buf.len() < len {
            // A damaged reference must not make the buffer grow past the data.
            let end = r.offset.saturating_add(u64::from(r.len));
            if end > file.metadata()?.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the block ends at byte {end}, past the end of its segment"),
                ));
            }
            self.buf.resize(len, 0);
        }
        file.read_exact_at(&mut self.buf[..len], r.offset)?;
        Ok(&self.buf[..len])
    }
}

/// The segment writer, held for one group commit.
pub struct SegmentWriter<'a> {
    dir: &'a Path,
    writer: MappedMutexGuard<'a, Writer>,
}

impl SegmentWriter<'_> {
    /// The segment being written and how far: it changes with every append.
    pub fn position(&self) -> (u64, u64) {
        (self.writer.id, self.writer.len)
    }

    /// Starts a new segment now, so the current one can be removed once
    /// nothing refers to it (a small spool would otherwise keep its bytes).
    pub fn rotate(&mut self) -> io::Result<()> {
        let w = &mut *self.writer;
        // What a given-up segment holds was refused with its group; an fsync
        // of it now could only fail again and refuse a group it owes nothing.
        if !w.given_up {
            w.write_pending()?;
        }
        let id = w.id + 1;
        let (file, direct) = create(self.dir, id)?;
        let old = std::mem::replace(&mut w.file, file);
        if !std::mem::take(&mut w.given_up) {
            w.unsynced.push(old);
        }
        w.id = id;
        w.direct = direct;
        w.len = 0;
        w.written = 0;
        w.pending.clear();
        w.pending_at = 0;
        w.new_file = true;
        w.failed_after_writing = false;
        Ok(())
    }

    /// Takes a block into the group; it is durable after [`Self::sync`].
    #[cfg(test)]
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<BlockRef> {
        self.append_with(|out| out.buf.extend_from_slice(bytes))
    }

    /// Takes a block that `encode` writes in place into the group; it is
    /// durable after [`Self::sync`].
    pub fn append_with(&mut self, encode: impl FnOnce(&mut Pending<'_>)) -> io::Result<BlockRef> {
        self.append_frame(FRAME_BLOCK, encode)
    }

    /// Takes a group's record, after its blocks; durable with them after
    /// [`Self::sync`]. Returns where the record ends.
    pub fn append_group(&mut self, record: &[u8]) -> io::Result<(u64, u64)> {
        let r = self.append_frame(FRAME_GROUP, |out| out.buf.extend_from_slice(record))?;
        Ok((r.segment, r.offset + u64::from(r.len)))
    }

    fn append_frame(
        &mut self,
        kind: u8,
        encode: impl FnOnce(&mut Pending<'_>),
    ) -> io::Result<BlockRef> {
        if self.writer.len >= SEGMENT_BYTES || self.writer.given_up {
            self.rotate()?;
        }
        let w = &mut *self.writer;
        let frame = w.pending.len();
        w.pending.extend_from_slice(&[kind, 0, 0, 0, 0]);
        let start = w.pending.len();
        encode(&mut Pending {
            buf: &mut w.pending,
        });
        let len = match u32::try_from(w.pending.len() - start) {
            Ok(len) if len > 0 => len,
            _ => {
                w.pending.truncate(frame);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a record is empty or too large for a segment",
                ));
            }
        };
        w.pending.as_mut_slice()[frame + 1..start].copy_from_slice(&len.to_le_bytes());
        let r = BlockRef {
            segment: w.id,
            offset: w.len + FRAME as u64,
            len,
        };
        w.len += (FRAME as u64) + u64::from(len);
        if w.pending.len() >= WRITE_AT {
            w.write_pending()?;
        }
        Ok(r)
    }

    /// Writes and makes durable every appended byte. After a failure the
    /// segment is given up: the next append starts a new one, since a later
    /// fsync of this one could report success for pages the kernel dropped.
    pub fn sync(&mut self) -> io::Result<()> {
        // A group with no blocks (file positions only) after a failure: what
        // the given-up segment holds is not this group's to make durable.
        if self.writer.given_up {
            self.rotate()?;
        }
        let w = &mut *self.writer;
        let synced = (|| {
            w.write_pending()?;
            let fsynced = (|| {
                for file in w.unsynced.drain(..) {
                    file.sync_data()?;
                }
                w.file.sync_data()?;
                if w.new_file {
                    sync_dir(self.dir)?;
                    w.new_file = false;
                }
                Ok(())
            })();
            if fsynced.is_err() {
                w.failed_after_writing = true;
            }
            fsynced
        })();
        if synced.is_err() {
            w.given_up = true;
        }
        synced
    }

    /// The last [`Self::sync`] failed in an fsync (of a file or of the
    /// directory), after its writes went through: the group's bytes, its
    /// record with them, may still reach the disk. Its segment must then never
    /// be replayed past where it failed.
    pub fn failed_after_writing(&self) -> bool {
        self.writer.failed_after_writing
    }
}

/// The end of a group's pending bytes, where a block is encoded in place.
pub struct Pending<'a> {
    buf: &'a mut PageAligned,
}

impl io::Write for Pending<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl super::codec::RecordBuf for Pending<'_> {
    fn len(&self) -> usize {
        self.buf.len()
    }

    fn bytes_from(&mut self, start: usize) -> &mut [u8] {
        &mut self.buf.as_mut_slice()[start..]
    }
}

impl Writer {
    /// A writer of a new segment `id`. Writing always starts a new segment:
    /// the tail of the last one may hold bytes of a commit that never finished.
    fn create(dir: &Path, id: u64) -> io::Result<Self> {
        let (file, direct) = create(dir, id)?;
        Ok(Self {
            id,
            file,
            direct,
            len: 0,
            written: 0,
            pending: PageAligned::new(PAGE),
            pending_at: 0,
            unsynced: Vec::new(),
            given_up: false,
            new_file: false,
            failed_after_writing: false,
        })
    }

    /// Writes the pending bytes: with direct I/O, from the start of their
    /// first page to the end of their last, the rest of which is zeros.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.given_up {
            return Err(io::Error::other(
                "the segment was given up after a failed write; its bytes are not written again",
            ));
        }
        if self.written == self.len {
            return Ok(());
        }
        let end = self.pending.len();
        let written = if self.direct {
            self.pending.resize(end.next_multiple_of(PAGE), 0);
            match self.file.write_all_at(&self.pending, self.pending_at) {
                // Some file systems take the flag and refuse the write.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.pending.truncate(end);
                    self.direct = false;
                    buffered(&self.file)
                        .and_then(|()| self.file.write_all_at(&self.pending, self.pending_at))
                }
                other => other,
            }
        } else {
            self.file.write_all_at(&self.pending, self.pending_at)
        };
        if let Err(e) = written {
            // A short write leaves the file holding what we do not know: start afresh.
            self.given_up = true;
            self.pending.clear();
            return Err(e);
        }
        self.written = self.len;
        // With direct I/O the last page's bytes are written again next time.
        let keep_from = if self.direct {
            round_down(self.len)
        } else {
            self.len
        };
        let tail = (keep_from - self.pending_at) as usize;
        self.pending.truncate(end);
        let kept = end - tail;
        self.pending.as_mut_slice().copy_within(tail.., 0);
        self.pending.truncate(kept);
        if self.pending.capacity() > KEEP_BUFFER {
            self.pending.shrink_to(PAGE);
        }
        self.pending_at = keep_from;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_back_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 2 + 1) as usize];
        let refs: Vec<BlockRef> = {
            let mut w = segments.lock();
            let refs = (0..3).map(|_| w.append(&big).unwrap()).collect();
            w.sync().unwrap();
            refs
        };
        assert_eq!(refs[0].segment, refs[1].segment);
        assert_ne!(refs[1].segment, refs[2].segment, "rotated past the limit");
        for r in &refs {
            assert_eq!(BlockRef::decode(&r.encode()), Some((*r, Holds::Lines)));
            assert_eq!(
                BlockRef::decode(&r.encode_member()),
                Some((*r, Holds::Member))
            );
            assert_eq!(segments.read(r).unwrap(), big);
        }
        drop(segments);
        let reopened = Segments::open(dir.path()).unwrap();
        assert!(
            reopened.current() > refs[2].segment,
            "never appends to an old segment"
        );
        assert_eq!(reopened.read(&refs[0]).unwrap(), big);

        let live: HashSet<u64> = [refs[2].segment].into();
        let removed = reopened
            .remove_unreferenced((reopened.current(), MEMBER_SEGMENTS), &live)
            .unwrap();
        assert_eq!(removed, 1);
        assert!(reopened.read(&refs[0]).is_err());
        assert_eq!(reopened.read(&refs[2]).unwrap(), big);
    }

    /// Groups of blocks of every size, some across page boundaries, read back
    /// whole after each group and after reopening; `dir` decides whether the
    /// writes are direct.
    fn groups_read_back(dir: &Path) -> bool {
        let segments = Segments::open(dir).unwrap();
        let direct = segments.lock().writer.direct;
        let mut refs = Vec::new();
        let mut seed = 7u64;
        for group in 0..40u8 {
            let mut w = segments.lock();
            for _ in 0..(group % 5) + 1 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Every tenth group is larger than what is held before writing.
                let most = if group % 10 == 9 {
                    WRITE_AT / 2
                } else {
                    3 * PAGE
                };
                let len = 1 + (seed >> 33) as usize % most;
                let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(group)).collect();
                refs.push((w.append(&bytes).unwrap(), bytes));
            }
            w.sync().unwrap();
            drop(w);
            let mut reader = segments.reader();
            for (r, bytes) in &refs {
                assert_eq!(
                    reader.read(r).unwrap(),
                    &bytes[..],
                    "{r:?} after group {group}"
                );
            }
        }
        drop(segments);
        let reopened = Segments::open(dir).unwrap();
        let mut reader = reopened.reader();
        for (r, bytes) in &refs {
            assert_eq!(reader.read(r).unwrap(), &bytes[..], "{r:?} after reopening");
        }
        direct
    }

    #[test]
    fn direct_writes_keep_every_byte_of_the_last_page() {
        let dir = tempfile::tempdir().unwrap();
        let direct = groups_read_back(dir.path());
        let file = dir.path().join(file_name(1));
        if direct {
            assert_eq!(std::fs::metadata(file).unwrap().len() % PAGE as u64, 0);
        }
    }

    #[test]
    fn a_group_without_blocks_after_a_failed_write_goes_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        let mut w = segments.lock();
        let kept = w.append(b"kept").unwrap();
        w.sync().unwrap();
        // The file can no longer be written: the next group fails.
        let name = dir.path().join(file_name(w.writer.id));
        w.writer.file = File::open(&name).unwrap();
        w.append(&[1; 3 * PAGE]).unwrap();
        assert!(w.sync().is_err());
        // A group of file positions only: no panic, nothing of the failed one.
        w.sync().unwrap();
        assert_ne!(w.writer.id, kept.segment, "a new segment");
        let next = w.append(b"next").unwrap();
        w.sync().unwrap();
        drop(w);
        assert_eq!(segments.read(&kept).unwrap(), b"kept");
        assert_eq!(segments.read(&next).unwrap(), b"next");
    }

    #[test]
    fn ordinary_writes_keep_every_byte_too() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        {
            let mut w = segments.lock();
            buffered(&w.writer.file).unwrap();
            w.writer.direct = false;
            let first = w.append(b"first").unwrap();
            w.sync().unwrap();
            let second = w.append(b"second").unwrap();
            w.sync().unwrap();
            drop(w);
            assert_eq!(segments.read(&first).unwrap(), b"first");
            assert_eq!(segments.read(&second).unwrap(), b"second");
        }
        let file = dir.path().join(file_name(segments.current()));
        assert_eq!(
            std::fs::metadata(file).unwrap().len(),
            11 + 2 * FRAME as u64,
            "no padding"
        );
    }

    #[test]
    fn a_damaged_reference_past_the_segment_is_an_error_without_a_huge_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        let good = {
            let mut w = segments.lock();
            let r = w.append(b"a block").unwrap();
            w.sync().unwrap();
            r
        };
        let mut reader = segments.reader();
        for bad in [
            BlockRef {
                len: u32::MAX,
                ..good
            },
            BlockRef {
                offset: u64::MAX - 3,
                ..good
            },
            BlockRef {
                offset: 1 << 40,
                ..good
            },
        ] {
            let err = reader.read(&bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{bad:?}");
            assert!(
                reader.buf.len() < 1 << 20,
                "buffer grew to {}",
                reader.buf.len()
            );
        }
        assert_eq!(reader.read(&good).unwrap(), b"a block");
    }
}
