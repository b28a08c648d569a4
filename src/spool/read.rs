//! Reading the spool back: part records, a part's blocks in order, and
//! setting aside (quarantining) a record that does not decode, so a damaged
//! record never stops the spool or takes healthy ones with it.

use std::io;
use std::sync::atomic::Ordering;

use super::part::{PartRecord, PartState};
use super::{block, codec, keys, segments, PartId, Spool, SpoolError};
use crate::line::StoredLineRef;

impl Spool {
    /// The part records `keep` accepts, in key order. A record that does not
    /// decode is set aside and replaced by a sealed record of the same part, so
    /// its lines are still archived (its own key says which part it was).
    pub(super) fn part_records(
        &self,
        keep: impl Fn(&PartRecord) -> bool,
    ) -> Result<Vec<(PartId, PartRecord)>, SpoolError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([keys::PART]) {
            let (key, value) = item?;
            let Some(id) = keys::parse_part(&key) else {
                self.quarantine(&key, &value, "part key does not parse")?;
                continue;
            };
            match codec::decode::<PartRecord>(&value) {
                Ok(record) if keep(&record) => out.push((id, record)),
                Ok(_) => {}
                Err(e) => {
                    self.quarantine(&key, &value, &format!("part record of {id}: {e}"))?;
                    let record = PartRecord {
                        state: PartState::Sealed,
                        first_line_ms: self.clock.now_ms(),
                        lines: 0,
                        bytes: 0,
                    };
                    self.db.insert(&key, codec::encode(&record))?;
                    if keep(&record) {
                        out.push((id, record));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Parts the sync loop has work for, oldest hour first.
    pub fn parts_to_sync(&self) -> Result<Vec<(PartId, PartRecord)>, SpoolError> {
        // Open parts, however many, are not collected: only what has work.
        let mut parts = self.part_records(|r| r.state.needs_sync())?;
        parts.sort_by(|(a, _), (b, _)| {
            (a.hour, &a.account, a.seq).cmp(&(b.hour, &b.account, b.seq))
        });
        Ok(parts)
    }

    pub fn record(&self, id: &PartId) -> Result<Option<PartRecord>, SpoolError> {
        match self.db.get(keys::part(id))? {
            None => Ok(None),
            Some(v) => Ok(codec::decode(&v).ok()),
        }
    }

    /// Moves a part to its next state, durably.
    pub fn set_record(&self, id: &PartId, record: &PartRecord) -> Result<(), SpoolError> {
        self.db.insert(keys::part(id), codec::encode(record))?;
        self.make_durable()
    }

    /// Calls `each` with every block of a part's lines, in the order they were
    /// made durable. A block that fails its checksum is set aside and skipped.
    pub fn for_each_block<E: From<SpoolError>>(
        &self,
        id: &PartId,
        mut each: impl FnMut(&[StoredLineRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut reader = self.segments.reader();
        for item in self.db.scan_prefix(keys::blocks_of(id)) {
            let (key, value) = item.map_err(SpoolError::from)?;
            let Some(at) = segments::BlockRef::decode(&value) else {
                self.quarantine(&key, &value, &format!("block reference of {id} is damaged"))?;
                continue;
            };
            let bytes = match reader.read(&at) {
                Ok(bytes) => bytes,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    self.quarantine(
                        &key,
                        &value,
                        &format!(
                            "block of {id} is missing from segment {:016x}: {e}",
                            at.segment
                        ),
                    )?;
                    continue;
                }
                Err(e) => return Err(SpoolError::from(e).into()),
            };
            match block::decode(bytes) {
                Ok(block) => each(&block.lines())?,
                Err(e) => self.quarantine(&key, bytes, &format!("block of {id}: {e}"))?,
            }
        }
        Ok(())
    }

    pub(super) fn quarantine(&self, key: &[u8], value: &[u8], why: &str) -> Result<(), SpoolError> {
        tracing::error!("corrupt spool record set aside: {why}. Its raw bytes are kept in the spool's quarantine; the other records are unaffected.");
        let mut batch = sled::Batch::default();
        batch.insert(keys::quarantine(key), value);
        batch.remove(key);
        self.db.apply_batch(batch)?;
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every part record that reads back, without setting any aside (for counts).
    pub(super) fn readable_parts(
        &self,
    ) -> impl Iterator<Item = Result<(PartId, PartRecord), SpoolError>> {
        self.db
            .scan_prefix([keys::PART])
            .filter_map(|item| match item {
                Err(e) => Some(Err(e.into())),
                Ok((key, value)) => Some(Ok((
                    keys::parse_part(&key)?,
                    codec::decode::<PartRecord>(&value).ok()?,
                ))),
            })
    }
}
