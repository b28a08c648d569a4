//! Reading a file's new lines and committing them with the file's position,
//! so the position is durable exactly when the lines are.

use std::sync::Arc;
use std::time::Instant;

use super::file::{self, Tailed};
use super::{SourceRun, CHUNKS_PER_PASS, PARTIAL_META, STORE_RETRY};
use crate::line::{Line, Origin};
use crate::spool::{Along, FileKey, FilePosition, PositionUpdate};
use crate::telemetry::Source;
use sha2::{Digest, Sha256};

impl SourceRun {
    /// Reads and commits what was added to one file. Returns whether more is waiting.
    pub(super) fn read_file(&mut self, key: (u64, u64), stopping: bool) -> std::io::Result<bool> {
        let Some(mut t) = self.files.remove(&key) else {
            return Ok(false);
        };
        let result = self.read_tailed(&mut t, stopping);
        self.files.insert(key, t);
        result
    }

    fn read_tailed(&self, t: &mut Tailed, stopping: bool) -> std::io::Result<bool> {
        // A file that left its path can only be read through a descriptor still open on it.
        if t.orphaned_since.is_some() && t.file.is_none() {
            return Ok(false);
        }
        let (size, same) = t.size_and_sameness()?;
        if size < t.position.offset || !same {
            tracing::info!(source = %self.source.name, path = %t.path.display(), "file was truncated or rewritten; reading it again from its start");
            t.restart(size)?;
        }
        if size != t.seen_size {
            t.seen_size = size;
            t.last_growth = Instant::now();
        }
        let flush_partial = stopping || t.last_growth.elapsed() >= self.source.partial_line_after;
        for _ in 0..CHUNKS_PER_PASS {
            let Some(chunk) = t.read_chunk(size, flush_partial)? else {
                return Ok(false);
            };
            let full = chunk.position.offset < size;
            let (lines, ids) = self.lines_of(t, &chunk.lines);
            let update = self.update(t, Some(chunk.position.clone()));
            if let Err(e) = self.commit(lines, Some(ids), vec![update]) {
                if self.store_retry_at.get().is_none() {
                    tracing::warn!(source = %self.source.name, "lines could not be stored; reading them again in {}s: {e}", STORE_RETRY.as_secs());
                }
                self.store_retry_at.set(Some(Instant::now() + STORE_RETRY));
                return Ok(false);
            }
            if self.store_retry_at.take().is_some() {
                tracing::info!(source = %self.source.name, "lines are stored again");
            }
            t.position = chunk.position;
            if !full {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn lines_of(&self, t: &Tailed, read: &[file::ReadLine]) -> (Vec<Line>, Vec<String>) {
        let now = self.intake.clock.now_ms();
        let origin = Arc::new(Origin {
            host: self
                .source
                .host
                .clone()
                .or_else(|| self.default_host.clone()),
            app: self.source.app.clone(),
            file: Some(t.path.to_string_lossy().into_owned()),
            level: self.source.level.clone(),
            tags: self.source.tags.clone(),
            ingester: "tail",
            ..Origin::default()
        });
        let mut lines = Vec::with_capacity(read.len());
        let mut ids = Vec::with_capacity(read.len());
        for r in read {
            let mut line = Line::new(now, r.text.clone(), origin.clone());
            line.truncated = r.truncated;
            if r.partial {
                line.own_mut().meta_json = Some(PARTIAL_META.to_owned());
            }
            if !self.intake.rules.load().keeps(&self.source.account, &line) {
                continue;
            }
            ids.push(self.line_id(t, r.offset));
            lines.push(line);
        }
        (lines, ids)
    }

    /// The same file, generation and offset always give the same ID.
    fn line_id(&self, t: &Tailed, offset: u64) -> String {
        let mut h = Sha256::new();
        h.update(self.instance.as_bytes());
        h.update(self.source.name.as_bytes());
        h.update(t.dev.to_be_bytes());
        h.update(t.ino.to_be_bytes());
        h.update(t.position.fingerprint);
        h.update(t.position.generation.to_be_bytes());
        h.update(offset.to_be_bytes());
        let digest = h.finalize();
        let mut low = [0u8; 16];
        low[6..].copy_from_slice(&digest[..10]);
        let ms = (t.position.first_seen_ms.max(0) as u128) & ((1 << 48) - 1);
        ulid::Ulid((ms << 80) | u128::from_be_bytes(low)).to_string()
    }

    pub(super) fn key(&self, (dev, ino): (u64, u64)) -> FileKey {
        FileKey {
            source: self.source.name.clone(),
            dev,
            ino,
        }
    }

    pub(super) fn update(&self, t: &Tailed, position: Option<FilePosition>) -> PositionUpdate {
        PositionUpdate::File {
            key: self.key((t.dev, t.ino)),
            position,
        }
    }

    pub(super) fn commit(
        &self,
        lines: Vec<Line>,
        ids: Option<Vec<String>>,
        positions: Vec<PositionUpdate>,
    ) -> Result<String, crate::spool::CommitError> {
        let along = Along { ids, positions };
        let committer = self.intake.committer.clone();
        let account = self.source.account.clone();
        let count = lines.len();
        let committed =
            self.runtime
                .block_on(committer.commit_along(account, lines, along, Source::File));
        match &committed {
            Ok(_) => self.row.stored(count, self.intake.clock.now_ms()),
            Err(e) => self
                .row
                .problem(format!("not stored, read again later: {e}")),
        }
        committed
    }
}
