//! Group records: what makes a group durable with one fsync.
//!
//! A group commit writes its blocks and then a record of everything it gives
//! sled (block references, how much each part grew, the line counter, file
//! positions and journal cursors) into the same segment, and fsyncs that
//! segment once. The acknowledgement waits for that fsync only; sled takes the
//! same changes in memory and is flushed in the background (`commit`), since
//! a second fsync per group, of sled's log, cost the ack path more CPU than
//! anything but parsing and receiving.
//!
//! Every group's sled batch also moves a mark: the segment and offset where
//! its record ends. sled recovers a prefix of what it was given, so after a
//! crash or a power cut the mark it holds names the last group it has, and
//! the groups after it are exactly the ones it lost. Opening the spool walks
//! the segments from the mark and applies their records again.
//!
//! What may never be replayed is a group that was refused: one whose segment
//! failed its fsync after the bytes were written, which the disk may still
//! hold. Before such a group is answered, the mark moves past its segment and
//! sled is flushed (`append`), so the walk never reaches it. A group cut
//! short by a crash was never answered: its record is incomplete (the walk
//! stops there) or, when only its blocks are, it is the last record found
//! and its blocks are checked before it is applied.

use serde::{Deserialize, Serialize};

use super::part::{PartRecord, PartState};
use super::segments::{BlockRef, FoundGroup};
use super::{codec, keys, read_u64, Spool, SpoolError};

/// Where the mark lives in sled: segment and offset, big-endian.
const MARK: &str = "replay_from";
/// A random number of this spool's, in every record: only its own records
/// are applied, never bytes that merely look like one.
const RECORD_KEY: &str = "record_key";

/// One group's changes to sled, as its segment holds them.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct GroupRecord {
    record_key: u64,
    /// Block keys and their encoded references.
    pub blocks: Vec<(Vec<u8>, Vec<u8>)>,
    pub parts: Vec<PartGrowth>,
    /// The spool's line counter after the group.
    pub next_line: u64,
    /// Position and cursor keys, with their new value or none (removed).
    pub positions: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// How much a part grew in a group. Growth, not the part's new totals: a
/// record replayed onto a part record that was damaged meanwhile leaves the
/// damage to be found and set aside, rather than hiding it.
#[derive(Serialize, Deserialize)]
pub(super) struct PartGrowth {
    pub key: Vec<u8>,
    pub first_line_ms: crate::clock::EpochMs,
    pub lines: u64,
    pub bytes: u64,
}

/// The mark's value: where the next group's bytes begin.
pub(super) fn mark(segment: u64, offset: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&segment.to_be_bytes());
    out[8..].copy_from_slice(&offset.to_be_bytes());
    out
}

pub(super) fn mark_key() -> Vec<u8> {
    keys::meta(MARK)
}

impl GroupRecord {
    pub fn new(record_key: u64) -> Self {
        Self {
            record_key,
            ..Self::default()
        }
    }

    /// Stages what the record gives sled besides its parts (block
    /// references, the line counter, positions) and the mark of where it
    /// ends: the same at the commit and at replay.
    pub fn stage(self, batch: &mut sled::Batch, segment: u64, end: u64) {
        for (key, at) in self.blocks {
            batch.insert(key, at);
        }
        batch.insert(keys::meta("next_line"), &self.next_line.to_be_bytes());
        for (key, value) in self.positions {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch.insert(mark_key(), &mark(segment, end)[..]);
    }
}

impl Spool {
    /// This spool's record key, made when it is first needed.
    pub(super) fn record_key(db: &sled::Db) -> Result<u64, SpoolError> {
        match read_u64(db, RECORD_KEY)? {
            Some(key) => Ok(key),
            None => {
                let key: u64 = rand::random();
                db.insert(keys::meta(RECORD_KEY), &key.to_be_bytes())?;
                Ok(key)
            }
        }
    }

    /// Applies the group records sled lost (see the module doc), then marks
    /// the writer's new segment as where the next group begins. Returns how
    /// many groups were applied. Made durable by the caller.
    pub(super) fn replay(&self) -> Result<usize, SpoolError> {
        let writer_at = self.segments.lock().position();
        let from = match self.db.get(mark_key())? {
            None => None,
            Some(value) => match <[u8; 16]>::try_from(value.as_ref()) {
                Ok(from) => Some(from),
                // Walking every segment instead would apply groups sled holds
                // a second time; a mark that does not read is said, not guessed.
                Err(_) => {
                    tracing::error!(
                        "the spool's replay mark is damaged ({} bytes, not 16): groups \
                         acknowledged since sled's last flush before the stop are not \
                         stored again",
                        value.len()
                    );
                    None
                }
            },
        };
        let mut applied = 0;
        // No mark: a new spool, or one of an earlier format, whose groups
        // were each flushed to sled before they were answered.
        if let Some(from) = from {
            let segment = u64::from_be_bytes(from[..8].try_into().unwrap_or_default());
            let offset = u64::from_be_bytes(from[8..].try_into().unwrap_or_default());
            let found = self.segments.group_records(segment, offset)?;
            let mut records: Vec<(FoundGroup, GroupRecord)> = found
                .into_iter()
                .filter_map(|group| match codec::decode::<GroupRecord>(&group.record) {
                    Ok(record) if record.record_key == self.record_key => Some((group, record)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::error!(
                            "a group record in segment {:016x} ending at byte {} is damaged \
                             ({e}); the lines of that group are not stored",
                            group.segment,
                            group.end
                        );
                        None
                    }
                })
                .collect();
            // Only the last group can have been cut short with its record
            // whole: every earlier one was fsynced before the next was written.
            if let Some((_, last)) = records.last() {
                if !self.blocks_whole(last) {
                    tracing::warn!(
                        "the last group written before larch stopped was cut short: \
                         it was never acknowledged, and is not stored"
                    );
                    records.pop();
                }
            }
            for (group, record) in records {
                self.apply_record(&group, record)?;
                applied += 1;
            }
        }
        self.db
            .insert(mark_key(), &mark(writer_at.0, writer_at.1)[..])?;
        Ok(applied)
    }

    /// Every block `record` refers to reads back with its checksum whole.
    fn blocks_whole(&self, record: &GroupRecord) -> bool {
        let mut reader = self.segments.reader();
        record.blocks.iter().all(|(_, at)| {
            BlockRef::decode(at)
                .and_then(|(at, _)| reader.read(&at).ok())
                .is_some_and(|bytes| codec::check(bytes).is_ok())
        })
    }

    fn apply_record(&self, group: &FoundGroup, mut record: GroupRecord) -> Result<(), SpoolError> {
        let mut batch = sled::Batch::default();
        for growth in std::mem::take(&mut record.parts) {
            let grown = match self.db.get(&growth.key)? {
                None => Some(PartRecord {
                    state: PartState::Open,
                    first_line_ms: growth.first_line_ms,
                    lines: growth.lines,
                    bytes: growth.bytes,
                }),
                Some(value) => codec::decode::<PartRecord>(&value).ok().map(|mut part| {
                    part.lines += growth.lines;
                    part.bytes += growth.bytes;
                    part
                }),
            };
            // A record that does not decode stays as it is, to be set aside
            // when the parts are read.
            if let Some(part) = grown {
                batch.insert(growth.key, codec::encode(&part));
            }
        }
        record.stage(&mut batch, group.segment, group.end);
        self.db.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::account::AccountId;
    use crate::clock::{ManualClock, SharedClock};
    use crate::hour::Hour;
    use crate::line::{Line, Origin};
    use crate::spool::{Along, PartId, PositionUpdate, SealRule, Stored};

    const HOUR_MS: i64 = 3_600_000 * 100;

    fn open(dir: &Path) -> Spool {
        let clock: SharedClock = std::sync::Arc::new(ManualClock::new(HOUR_MS));
        Spool::open(dir, clock, SealRule::default(), 1 << 20).unwrap()
    }

    fn lines(tag: &str, n: usize, ts: i64) -> Vec<Line> {
        let origin = std::sync::Arc::new(Origin {
            ingester: "http",
            ..Default::default()
        });
        (0..n)
            .map(|i| Line::new(ts, format!("{tag} {i}"), origin.clone()))
            .collect()
    }

    fn commit(spool: &Spool, tag: &str, n: usize, ts: i64, cursor: &str) {
        let along = Along {
            ids: None,
            positions: vec![PositionUpdate::Cursor {
                source: "system".into(),
                cursor: cursor.into(),
            }],
        };
        let account = AccountId::parse("acme").unwrap();
        spool
            .append(vec![(account, lines(tag, n, ts), along)])
            .unwrap();
    }

    /// Every line of a part, with its ID, and the part's record.
    fn part(spool: &Spool, hour_ms: i64) -> (Vec<(String, String)>, Option<PartRecord>) {
        let id = PartId {
            account: AccountId::parse("acme").unwrap(),
            hour: Hour::of(hour_ms),
            seq: 0,
        };
        let mut out = Vec::new();
        spool
            .for_each_record(&id, |record| -> Result<(), SpoolError> {
                if let Stored::Lines(block) = record {
                    out.extend(
                        block
                            .iter()
                            .map(|l| (l.id.to_string(), l.line.line.to_string())),
                    );
                }
                Ok(())
            })
            .unwrap();
        let record = spool
            .db
            .get(keys::part(&id))
            .unwrap()
            .map(|v| codec::decode::<PartRecord>(&v).unwrap());
        (out, record)
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// sled as a crash leaves it: what it held at its last flush, while the
    /// segments hold every group acknowledged since.
    fn lose_sled_since(kept: &Path, dir: &Path) {
        std::fs::remove_dir_all(dir.join("spool")).unwrap();
        copy_dir(kept, &dir.join("spool"));
    }

    #[test]
    fn groups_sled_had_not_flushed_are_stored_again_from_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let kept = tempfile::tempdir().unwrap();
        let next_hour = HOUR_MS + 3_600_000;
        let expected = {
            let spool = open(dir.path());
            commit(&spool, "flushed", 3, HOUR_MS, "c1");
            spool.make_durable().unwrap();
            copy_dir(&dir.path().join("spool"), kept.path());
            // Acknowledged after the flush: in the segments, not in sled's files.
            commit(&spool, "replayed", 4, HOUR_MS, "c2");
            commit(&spool, "new part", 2, next_hour, "c3");
            let expected = (part(&spool, HOUR_MS), part(&spool, next_hour));
            assert_eq!(expected.0 .0.len(), 7);
            assert_eq!(expected.1 .0.len(), 2);
            expected
        };
        lose_sled_since(kept.path(), dir.path());
        {
            let spool = open(dir.path());
            assert_eq!(
                (part(&spool, HOUR_MS), part(&spool, next_hour)),
                expected,
                "every line, ID and part count back"
            );
            assert_eq!(
                spool.journal_cursor("system").unwrap().as_deref(),
                Some("c3")
            );
            // The line counter went on too: new lines get new IDs.
            commit(&spool, "after", 1, HOUR_MS, "c4");
            let (after, record) = part(&spool, HOUR_MS);
            let ids: std::collections::HashSet<_> = after.iter().map(|(id, _)| id).collect();
            assert_eq!(ids.len(), 8, "an ID was given twice: {after:?}");
            assert_eq!(record.unwrap().lines, 8);
            spool.make_durable().unwrap();
        }
        // Replayed once: opening again changes nothing.
        let spool = open(dir.path());
        assert_eq!(part(&spool, HOUR_MS).0.len(), 8);
        assert_eq!(part(&spool, HOUR_MS).1.unwrap().lines, 8);
    }

    /// A spool in `dir` with three lines sled flushed, a copy of sled's
    /// files as that flush left them in `kept`, and then `after` done.
    fn flushed_then(dir: &Path, kept: &Path, after: impl FnOnce(&Spool)) {
        let spool = open(dir);
        commit(&spool, "flushed", 3, HOUR_MS, "c1");
        spool.make_durable().unwrap();
        copy_dir(&dir.join("spool"), kept);
        after(&spool);
    }

    #[test]
    fn a_last_group_whose_blocks_did_not_all_reach_the_disk_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let kept = tempfile::tempdir().unwrap();
        flushed_then(dir.path(), kept.path(), |spool| {
            commit(spool, "acked", 2, HOUR_MS, "c2");
            commit(spool, "cut short", 2, HOUR_MS, "c3");
        });
        // The last group's record reached the disk, a page of its block did not.
        let segment = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = find(&bytes, b"cut short 1").expect("the block is in the newest segment");
        bytes[at] ^= 0x20;
        std::fs::write(&segment, bytes).unwrap();
        lose_sled_since(kept.path(), dir.path());

        let spool = open(dir.path());
        let (stored, record) = part(&spool, HOUR_MS);
        let texts: Vec<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            ["flushed 0", "flushed 1", "flushed 2", "acked 0", "acked 1"]
        );
        assert_eq!(record.unwrap().lines, 5);
        assert_eq!(
            spool.journal_cursor("system").unwrap().as_deref(),
            Some("c2")
        );
    }

    #[test]
    fn a_part_record_damaged_meanwhile_is_left_to_be_set_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let kept = tempfile::tempdir().unwrap();
        flushed_then(dir.path(), kept.path(), |spool| {
            commit(spool, "acked", 2, HOUR_MS, "c2");
        });
        lose_sled_since(kept.path(), dir.path());
        {
            let db = sled::open(dir.path().join("spool")).unwrap();
            let (key, value) = db.scan_prefix([keys::PART]).next().unwrap().unwrap();
            let mut value = value.to_vec();
            let middle = value.len() / 2;
            value[middle] ^= 0x55;
            db.insert(key, value).unwrap();
            db.flush().unwrap();
        }
        let spool = open(dir.path());
        assert_eq!(
            spool.summary().unwrap().records_quarantined,
            1,
            "the damaged record was set aside"
        );
        // The lines themselves are all there.
        assert_eq!(part(&spool, HOUR_MS).0.len(), 5);
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }
}
