//! Giving disk back: an uploaded part's block references go, then segment
//! files that no reference points into (blocks the compactor replaced by a
//! member included).

use super::{keys, segments, PartId, Spool, SpoolError};

impl Spool {
    /// Deletes segment files that no block refers to any more. Cheap enough to
    /// run after uploads: it reads only the small block references.
    pub fn collect_segments(&self) -> Result<usize, SpoolError> {
        self.collect_segments_then(|| {})
    }

    /// [`Self::collect_segments`], calling `after_scan` between the scan of the
    /// references and the removal (where tests make appends happen).
    fn collect_segments_then(&self, after_scan: impl FnOnce()) -> Result<usize, SpoolError> {
        // Taken under the writers' locks, which a group (and a member's swap)
        // holds from its first append until sled has its references: every
        // reference into a segment older than these is in sled by now, and no
        // new one can come.
        let start = self.segments.lock().position();
        let members_start = self.segments.members_position();
        let mut live = std::collections::HashSet::new();
        for value in self.db.scan_prefix([keys::BLOCK]).values() {
            if let Some((at, _)) = segments::BlockRef::decode(&value?) {
                live.insert(at.segment);
            }
        }
        // The scan saw references as sled holds them in memory. The compactor
        // swaps blocks for members there first and makes it durable after; a
        // segment whose blocks it replaced goes only once sled on disk no
        // longer names them either, or a power cut would bring the
        // references back without their bytes.
        self.make_durable()?;
        after_scan();
        let before = {
            let mut writer = self.segments.lock();
            // Nothing was appended since the scan and nothing refers to the
            // current segment: start a new one so this one can go too.
            if writer.position() == start && start.1 > 0 && !live.contains(&start.0) {
                writer.rotate()?;
                writer.sync()?;
                start.0 + 1
            } else {
                // Not the writer's segment now: appends during the scan may
                // have filled the one it started in, with references the scan
                // did not see.
                start.0
            }
        };
        Ok(self
            .segments
            .remove_unreferenced((before, members_start.0), &live)?)
    }

    /// Removes an uploaded part's lines from the spool.
    pub fn delete_blocks(&self, id: &PartId) -> Result<(), SpoolError> {
        // After the compactor's member, if it is making one: a member put
        // back after this would hold its segment for ever.
        let _claim = self.claims.wait_for(id);
        self.uploads_waiting.lock().remove(id);
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for key in self.db.scan_prefix(keys::blocks_of(id)).keys() {
            batch.remove(key?);
            pending += 1;
            if pending == 1024 {
                self.db.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::account::AccountId;
    use crate::clock::SharedClock;
    use crate::hour::Hour;
    use crate::line::Line;
    use crate::spool::{Along, SealRule};

    fn lines(n: usize, hour_ms: i64) -> Vec<Line> {
        let origin = std::sync::Arc::new(crate::line::Origin {
            ingester: "http",
            ..Default::default()
        });
        (0..n)
            .map(|i| Line::new(hour_ms, format!("line {i}"), origin.clone()))
            .collect()
    }

    fn texts_of(spool: &Spool, id: &PartId) -> Vec<String> {
        let mut out = Vec::new();
        spool
            .for_each_record(id, |record| -> Result<(), SpoolError> {
                if let crate::spool::Stored::Lines(block) = record {
                    out.extend(block.iter().map(|l| l.line.line.to_string()));
                }
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn segments_of_blocks_the_compactor_replaced_go_and_the_lines_stay() {
        let dir = tempfile::tempdir().unwrap();
        let hour_ms = 3_600_000 * 100;
        let clock: SharedClock = std::sync::Arc::new(crate::clock::ManualClock::new(hour_ms));
        let spool = Spool::open(dir.path(), clock, SealRule::default(), 1 << 20).unwrap();
        let account = AccountId::parse("acme").unwrap();
        let mut seen = std::collections::HashMap::new();
        let mut made = 0;
        for group in 0..6 {
            let lines = (0..2000)
                .map(|i| {
                    let origin = std::sync::Arc::new(crate::line::Origin {
                        ingester: "http",
                        ..Default::default()
                    });
                    Line::new(hour_ms, format!("{group} {i} {}", "y".repeat(300)), origin)
                })
                .collect();
            spool
                .append(vec![(account.clone(), lines, Along::default())])
                .unwrap();
            spool.make_durable().unwrap();
            // The compactor works while lines come in: its members are
            // written while the segment of blocks still fills.
            made += spool
                .compact_pass(6, &mut seen, crate::spool::compact::Parts::All, &|| true)
                .unwrap();
        }
        spool.segments.lock().rotate().unwrap();
        let block_segments = || {
            std::fs::read_dir(dir.path().join("segments"))
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    let id =
                        u64::from_str_radix(name.to_str().unwrap().trim_end_matches(".seg"), 16);
                    id.unwrap() & segments::MEMBER_SEGMENTS == 0
                })
                .count()
        };
        assert_eq!(block_segments(), 2);
        assert!(made >= 2, "{made} members made while the part was open");
        spool.seal_all().unwrap();
        made += spool
            .compact_pass(6, &mut seen, crate::spool::compact::Parts::All, &|| true)
            .unwrap();
        assert!(made >= 3, "{made}");
        spool.collect_segments().unwrap();
        // Only the writer's own segment is left of the blocks' segments.
        assert_eq!(block_segments(), 1);
        let part = PartId {
            account,
            hour: Hour::of(hour_ms),
            seq: 0,
        };
        let mut lines = 0;
        spool
            .for_each_record(&part, |record| -> Result<(), SpoolError> {
                match record {
                    crate::spool::Stored::Member(m) => lines += m.lines,
                    crate::spool::Stored::Lines(_) => panic!("a block left after compaction"),
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(lines, 12_000);
        assert_eq!(spool.quarantined.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn segment_collection_keeps_a_segment_filled_while_it_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let hour_ms = 3_600_000 * 100;
        let clock: SharedClock = std::sync::Arc::new(crate::clock::ManualClock::new(hour_ms));
        let spool = Spool::open(dir.path(), clock, SealRule::default(), 1 << 20).unwrap();
        let account = AccountId::parse("acme").unwrap();
        let commit = |n| {
            spool
                .append(vec![(account.clone(), lines(n, hour_ms), Along::default())])
                .unwrap();
            spool.make_durable().unwrap();
        };
        commit(10);
        spool.segments.lock().rotate().unwrap();
        // Empty when collection starts, so the scan finds no reference into it.
        let filled = spool.segments.current();
        // While collection scans the references, a group lands in the current
        // segment and the writer moves on to a new one (a full segment, or a
        // failed write), so the segment the scan started in is no longer the
        // writer's and the group's references were not seen.
        let removed = spool
            .collect_segments_then(|| {
                commit(5);
                spool.segments.lock().rotate().unwrap();
            })
            .unwrap();
        assert!(spool.segments.current() > filled);
        assert_eq!(removed, 0, "segment {filled:016x} holds acknowledged lines");
        let part = PartId {
            account,
            hour: Hour::of(hour_ms),
            seq: 0,
        };
        assert_eq!(texts_of(&spool, &part).len(), 15);
        assert_eq!(spool.quarantined.load(Ordering::Relaxed), 0);
    }
}
