//! Reading the spool back: part records, a part's records (blocks and
//! members) in order, and
//! setting aside (quarantining) a record that does not decode, so a damaged
//! record never stops the spool or takes healthy ones with it.

use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use super::member::{self, Member};
use super::part::{PartRecord, PartState};
use super::{block, codec, keys, segments, PartId, Spool, SpoolError};
use crate::line::StoredLineRef;

/// What a reference says its record is, as the log names it.
fn record_name(holds: segments::Holds) -> &'static str {
    match holds {
        segments::Holds::Lines => "block",
        segments::Holds::Member => "member",
    }
}

/// One record of a part's lines as read back.
pub enum Stored<'a, 'b> {
    /// A block's lines, not yet compressed.
    Lines(&'b [StoredLineRef<'a>]),
    /// Lines compressed while their part was open: one gzip member.
    Member(Member<'a>),
}

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
        parts.sort_by(|(a, _), (b, _)| PartId::oldest_first(a, b));
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

    /// Calls `each` with every record of a part's lines (blocks and
    /// members), in the order they were made durable. A record that fails its
    /// checksum is set aside and skipped. Holds the part's claim meanwhile.
    pub fn for_each_record<E: From<SpoolError>>(
        &self,
        id: &PartId,
        mut each: impl FnMut(Stored<'_, '_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let _claim = self.claims.wait_for(id);
        self.walk_records(id, self.db.scan_prefix(keys::blocks_of(id)), |_, record| {
            each(record).map(|()| ControlFlow::Continue(()))
        })
    }

    /// Reads the records `refs` lists, for a caller that holds the part's
    /// claim, until `each` breaks. `each` gets each record's key too.
    pub(super) fn walk_records<E: From<SpoolError>>(
        &self,
        id: &PartId,
        refs: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        mut each: impl FnMut(&[u8], Stored<'_, '_>) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        let mut reader = self.segments.reader();
        for item in refs {
            let (key, value) = item.map_err(SpoolError::from)?;
            let Some((at, holds)) = segments::BlockRef::decode(&value) else {
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
                            "{} of {id} is missing from segment {:016x}: {e}",
                            record_name(holds),
                            at.segment
                        ),
                    )?;
                    continue;
                }
                Err(e) => return Err(SpoolError::from(e).into()),
            };
            let flow = match codec::check(bytes) {
                Ok((member::VERSION, payload)) => match member::decode_payload(payload) {
                    Ok(m) => each(&key, Stored::Member(m))?,
                    Err(e) => {
                        self.quarantine(&key, bytes, &format!("member of {id}: {e}"))?;
                        continue;
                    }
                },
                Ok((version, payload)) => match block::decode_payload(version, payload) {
                    Ok(block) => each(&key, Stored::Lines(&block.lines()))?,
                    Err(e) => {
                        self.quarantine(&key, bytes, &format!("block of {id}: {e}"))?;
                        continue;
                    }
                },
                // A damaged record is named as its reference calls it.
                Err(e) => {
                    let what = record_name(holds);
                    self.quarantine(&key, bytes, &format!("{what} of {id}: {e}"))?;
                    continue;
                }
            };
            if flow.is_break() {
                break;
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
