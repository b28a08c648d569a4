//! The append: a group of requests' lines become blocks in a segment file,
//! fsynced, and then their references, part records and counters go into sled
//! in one atomic batch. Nothing is durable (or answered) before
//! [`Spool::make_durable`].

use std::collections::HashMap;

use super::part::PartState;
use super::replay::{self, GroupRecord, PartGrowth};
use super::{block, codec, keys, Along, OpenPart, PartId, Spool, SpoolError, BLOCK_BYTES};
use crate::account::AccountId;
use crate::clock::EpochMs;
use crate::hour::Hour;
use crate::line::Line;

/// What one group commit appended.
pub struct Appended {
    pub batch_ids: Vec<String>,
    /// Follow-up parts the group opens (for hours already sealed).
    pub follow_ups: usize,
}

/// Consecutive lines of one request that go to the same part: where they
/// are, not the lines, so a group's lines stay in place until written.
struct Run {
    request: usize,
    lines: std::ops::Range<usize>,
    /// The spool's line number of the run's first line.
    first_seq: u64,
}

/// Lines of a request as the spool takes them, with what goes with them.
struct Taken {
    lines: Vec<Line>,
    /// IDs the source chose, one per line.
    ids: Option<Vec<String>>,
}

impl Spool {
    /// Stages every request of a group in one atomic batch: lines get their IDs
    /// and parts, counters move on. Nothing is durable until [`Self::make_durable`].
    pub fn append(
        &self,
        requests: Vec<(AccountId, Vec<Line>, Along)>,
    ) -> Result<Appended, SpoolError> {
        let now = self.clock.now_ms();
        let mut index = self.lock();
        let mut next_line = index.next_line;
        let mut follow_ups = 0;
        let mut line_bytes = 0;
        let mut touched: HashMap<(AccountId, Hour), OpenPart> = HashMap::new();
        let mut runs_by_part: HashMap<PartId, Vec<Run>> = HashMap::new();
        let mut batch_ids = Vec::with_capacity(requests.len());
        let mut positions = Vec::new();
        let mut taken = Vec::with_capacity(requests.len());

        for (request, (account, lines, along)) in requests.into_iter().enumerate() {
            positions.extend(along.positions);
            let request_seq = next_line;
            // Lines of a request mostly share an hour: look the part up once per run of them.
            for run in runs(&lines, |a, b| Hour::of(a.ts) == Hour::of(b.ts)) {
                let hour = Hour::of(lines[run.start].ts);
                let slot = (account.clone(), hour);
                let part = match touched.entry(slot) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let part = match index.open.get(e.key()) {
                            Some(p) => *p,
                            None => {
                                let part = self.new_part(&account, hour, now)?;
                                follow_ups += usize::from(part.seq > 0);
                                part
                            }
                        };
                        e.insert(part)
                    }
                };
                part.lines += run.len() as u64;
                let run_bytes = lines[run.clone()]
                    .iter()
                    .map(|l| l.line.len() as u64)
                    .sum::<u64>();
                part.bytes += run_bytes;
                line_bytes += run_bytes;
                let id = PartId {
                    account: account.clone(),
                    hour,
                    seq: part.seq,
                };
                runs_by_part.entry(id).or_default().push(Run {
                    request,
                    first_seq: request_seq + run.start as u64,
                    lines: run,
                });
            }
            next_line += lines.len() as u64;
            let first_id = match along.ids.as_ref().and_then(|ids| ids.first()) {
                Some(id) => id.clone(),
                None => line_id(now, self.instance, request_seq).to_string(),
            };
            batch_ids.push(first_id);
            taken.push(Taken {
                lines,
                ids: along.ids,
            });
        }

        // The blocks, and after them the group's record of what it gives
        // sled, are on disk before sled learns of them (`replay`). If they
        // cannot be written or fsynced, sled never learns of them: the group
        // is refused whole and none of it can reach the archive.
        let mut record = GroupRecord::new(self.record_key);
        let mut writer = self.segments.lock();
        for (part_id, runs) in runs_by_part {
            for (first_seq, block) in self.blocks(&taken, &runs, now) {
                let at = writer.append_with(|out| block::encode_into(&block, out))?;
                record
                    .blocks
                    .push((keys::block(&part_id, first_seq), at.encode().to_vec()));
            }
        }
        let mut batch = sled::Batch::default();
        for ((account, hour), part) in &touched {
            let id = PartId {
                account: account.clone(),
                hour: *hour,
                seq: part.seq,
            };
            let key = keys::part(&id);
            batch.insert(&key[..], codec::encode(&part.record(PartState::Open)));
            let before = index.open.get(&(account.clone(), *hour));
            record.parts.push(PartGrowth {
                key,
                first_line_ms: part.first_line_ms,
                lines: part.lines - before.map_or(0, |p| p.lines),
                bytes: part.bytes - before.map_or(0, |p| p.bytes),
            });
        }
        record.next_line = next_line;
        record.positions = positions
            .iter()
            .map(|update| (update.key_bytes(), update.value_bytes()))
            .collect();
        let (segment, end) = writer.append_group(&codec::encode(&record))?;
        if let Err(e) = writer.sync() {
            if writer.failed_after_writing() {
                self.replay_past(&writer);
            }
            return Err(e.into());
        }
        record.stage(&mut batch, segment, end);
        // sled applies a batch atomically for recovery, but not in memory: on
        // an error some of it may be visible and could become durable with
        // the next flush. So that is final, as a failed flush is.
        if let Err(e) = self.db.apply_batch(batch) {
            self.durability
                .fail(&format!("sled could not take a group's references: {e}"));
            return Err(e.into());
        }
        drop(writer);

        index.next_line = next_line;
        self.line_bytes_in
            .fetch_add(line_bytes, std::sync::atomic::Ordering::Relaxed);
        index.open.extend(touched);
        Ok(Appended {
            batch_ids,
            follow_ups,
        })
    }

    /// Moves the mark past a segment whose fsync failed, and makes that
    /// durable before the failed group is refused: its record may reach the
    /// disk after all, and a refused group must never be replayed. Earlier
    /// groups of that segment are in sled's memory and become durable with
    /// it. If sled cannot be made durable either, the spool's failure hook
    /// stops the daemon first and the group is never answered.
    fn replay_past(&self, writer: &super::segments::SegmentWriter<'_>) {
        let next = writer.position().0 + 1;
        let moved = self
            .db
            .insert(replay::mark_key(), &replay::mark(next, 0)[..])
            .map_err(SpoolError::from)
            .and_then(|_| self.make_durable());
        if let Err(e) = moved {
            self.durability.fail(&format!(
                "the spool could not record that a segment whose fsync failed is not to be read again: {e}"
            ));
        }
    }

    /// A part's lines of one group, gathered as blocks of about [`BLOCK_BYTES`],
    /// each with the spool's line number of its first line. Lines stay where
    /// they lie; only one block's IDs are held at a time.
    fn blocks<'a>(
        &'a self,
        taken: &'a [Taken],
        runs: &'a [Run],
        now: EpochMs,
    ) -> impl Iterator<Item = (u64, Vec<block::ToWrite<'a>>)> + 'a {
        let mut lines = runs.iter().flat_map(move |run| {
            let request = &taken[run.request];
            run.lines.clone().map(move |i| {
                let seq = run.first_seq + (i - run.lines.start) as u64;
                let given = request.ids.as_ref().and_then(|ids| ids.get(i));
                (seq, &request.lines[i], given)
            })
        });
        let mut left: usize = runs.iter().map(|run| run.lines.len()).sum();
        let mut pending = lines.next();
        std::iter::from_fn(move || {
            let (first_seq, ..) = pending?;
            // Room for as many lines as the block can take, made once.
            let mut block = Vec::with_capacity(left.min(BLOCK_BYTES / LINE_WEIGHT_MIN));
            let mut size = 0;
            while let Some((seq, line, given)) = pending {
                let line_size = block_weight(line);
                if !block.is_empty() && size + line_size > BLOCK_BYTES {
                    break;
                }
                size += line_size;
                block.push(block::ToWrite {
                    id: match given {
                        Some(id) => block::IdText::Given(id),
                        None => block::IdText::made(line_id(now, self.instance, seq)),
                    },
                    received: now,
                    line,
                });
                pending = lines.next();
            }
            left -= block.len();
            Some((first_seq, block))
        })
    }

    /// A part for an (account, hour) that has none open: the first part of the
    /// hour, or the next follow-up part after the ones already known.
    fn new_part(
        &self,
        account: &AccountId,
        hour: Hour,
        now: EpochMs,
    ) -> Result<OpenPart, SpoolError> {
        let last = self
            .db
            .scan_prefix(keys::parts_of_hour(account, hour))
            .keys()
            .next_back()
            .transpose()?;
        let seq = match last.as_deref().and_then(keys::parse_part) {
            Some(p) => p.seq + 1,
            None => 0,
        };
        Ok(OpenPart {
            seq,
            first_line_ms: now,
            lines: 0,
            bytes: 0,
        })
    }
}

/// What a line fills of a block beyond its text and `meta`.
const LINE_WEIGHT_MIN: usize = 128;

/// How much of a block a line fills: blocks close at [`BLOCK_BYTES`] of this.
fn block_weight(line: &Line) -> usize {
    line.line.len() + line.meta_json().map_or(0, str::len) + LINE_WEIGHT_MIN
}

/// What lines take in the spool: their own fields, and each origin once per
/// block it is stored in. Blocks are per part, so a run of lines for one hour
/// fills its own blocks, each holding the run's origins once; runs that come
/// back to an hour are counted again, which can only count more than is
/// stored. Admission counts this, so fields a request shares are never
/// counted less than they take.
pub(crate) fn stored_bytes(lines: &[Line]) -> usize {
    let own: usize = lines.iter().map(Line::stored_size).sum();
    let origins: usize = runs(lines, |a, b| Hour::of(a.ts) == Hour::of(b.ts))
        .map(|run| {
            let run = &lines[run];
            let weight: usize = run.iter().map(block_weight).sum();
            // Past a few distinct origins each line's is counted, so
            // counting stays linear in the lines.
            let mut distinct: Vec<&std::sync::Arc<crate::line::Origin>> = Vec::new();
            let mut per_block = 0;
            for line in run {
                if distinct
                    .iter()
                    .any(|o| std::sync::Arc::ptr_eq(o, &line.origin))
                {
                    continue;
                }
                per_block += line.origin.stored_size();
                if distinct.len() < 64 {
                    distinct.push(&line.origin);
                }
            }
            per_block * (weight / BLOCK_BYTES + 1)
        })
        .sum();
    own + origins
}

/// The ranges of consecutive lines that `together` keeps with the first of each.
fn runs<'a>(
    lines: &'a [Line],
    together: impl Fn(&Line, &Line) -> bool + 'a,
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = lines.get(start)?;
        let end = lines[start..]
            .iter()
            .position(|l| !together(first, l))
            .map_or(lines.len(), |n| start + n);
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// A ULID-shaped line ID: receive time (ms), this spool's instance, and the
/// spool's line counter, which never repeats even if the clock steps back.
fn line_id(now: EpochMs, instance: u32, seq: u64) -> ulid::Ulid {
    let ms = (now.max(0) as u128) & ((1 << 48) - 1);
    let value = (ms << 80) | (u128::from(instance) << 48) | u128::from(seq & ((1 << 48) - 1));
    ulid::Ulid(value)
}
