//! Opening the spool: sled and the segment files, checked against each other
//! so that a spool that lost a part of itself is refused rather than started
//! empty, and an older on-disk format is read and moved up.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::part::PartState;
use super::seal::SealRule;
use super::{
    durable, keys, read_u64, segments, Index, OpenPart, Spool, SpoolError, FORMAT_VERSION,
    READS_FORMATS,
};
use crate::clock::SharedClock;

/// sled writes a snapshot to `snap.<lsn>.generating` and renames it when it is
/// complete, but on open it reads the newest `snap.*` file, unfinished ones
/// included: a crash or a full disk during a snapshot write would stop the
/// spool from ever opening again. Such a file is only ever a partial copy of
/// what the log holds, so it goes. Called only after sled held the spool's lock
/// and failed, so no other process is writing one. Returns whether any went.
fn remove_unfinished_snapshots(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!(
                        "removed an unfinished sled snapshot left by a crash or a full disk: {}",
                        entry.path().display()
                    );
                    removed = true;
                }
                Err(e) => tracing::error!(
                    "cannot remove the unfinished sled snapshot {}: {e}",
                    entry.path().display()
                ),
            }
        }
    }
    removed
}

impl Spool {
    /// Opens (or creates) the spool under `dir`.
    pub fn open(
        dir: &Path,
        clock: SharedClock,
        seal_rule: SealRule,
        cache_bytes: u64,
    ) -> Result<Self, SpoolError> {
        let path = dir.join("spool");
        let open_err = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        let segments_dir = dir.join("segments");
        // Looked at before anything is created, to tell a new spool from a lost one.
        let segments_before =
            segments::Segments::written(&segments_dir).map_err(|e| open_err(e.into()))?;
        durable::forget_cached(&path.join("db"));
        // sled makes its own files in here; the directory keeps them private.
        crate::files::own_dir(&path).map_err(|e| open_err(e.into()))?;
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Acks rely on our own flush + fsync, never on a background flush.
            .flush_every_ms(None);
        let db = match config.open() {
            Err(sled::Error::Corruption { .. }) if remove_unfinished_snapshots(&path) => {
                config.open()
            }
            opened => opened,
        }
        .map_err(open_err)?;
        let durability = durable::Durability::open(&path).map_err(|e| open_err(e.into()))?;
        let version = read_u64(&db, "version")?;
        // Before anything else, so an older layout is never called lost.
        if let Some(found) = version {
            if found != u64::from(FORMAT_VERSION) && !READS_FORMATS.contains(&found) {
                return Err(SpoolError::Incompatible {
                    path,
                    found: found as u32,
                });
            }
        }
        let lost = |what: String| SpoolError::Lost {
            path: dir.to_owned(),
            what,
        };
        match (&version, segments_before) {
            (None, Some(n)) if n > 0 => {
                return Err(lost(format!(
                    "its index (sled, in {}) is empty, but {} holds {n} segment file(s) of lines",
                    path.display(),
                    segments_dir.display()
                )))
            }
            (Some(_), None) if db.scan_prefix([keys::BLOCK]).next().transpose()?.is_some() => {
                return Err(lost(format!(
                    "{}, which holds the lines its index refers to, is gone",
                    segments_dir.display()
                )))
            }
            _ => {}
        }
        let segments = segments::Segments::open(&segments_dir).map_err(|e| open_err(e.into()))?;

        match version {
            None => {
                // A first start, or a spool removed by hand: either way, said.
                tracing::warn!(
                    "there was no spool in {}: starting a new, empty one",
                    dir.display()
                );
                db.insert(
                    keys::meta("version"),
                    &u64::from(FORMAT_VERSION).to_be_bytes(),
                )?;
            }
            Some(older) if READS_FORMATS.contains(&older) => {
                tracing::info!(
                    "the spool in {} moves from format version {older} to {FORMAT_VERSION}; \
                     the larch that wrote it can no longer open it",
                    path.display()
                );
                db.insert(
                    keys::meta("version"),
                    &u64::from(FORMAT_VERSION).to_be_bytes(),
                )?;
            }
            // Its own version: any other was refused above.
            Some(_) => {}
        }
        let instance = match read_u64(&db, "instance")? {
            Some(i) => i as u32,
            None => {
                let i: u32 = rand::random();
                db.insert(keys::meta("instance"), &u64::from(i).to_be_bytes())?;
                i
            }
        };
        let record_key = Self::record_key(&db)?;
        let opened_ms = clock.now_ms();
        let mut spool = Self {
            db,
            segments,
            durability,
            index: parking_lot::Mutex::new(Index {
                open: HashMap::new(),
                next_line: 0,
            }),
            clock,
            seal_rule,
            instance,
            record_key,
            quarantined: AtomicU64::new(0),
            claims: Default::default(),
            compacted: Default::default(),
            line_bytes_in: AtomicU64::new(0),
            uploads_waiting: Default::default(),
            opened_ms,
        };
        let replayed = spool.replay()?;
        if replayed > 0 {
            tracing::info!(
                "stored {replayed} group(s) of lines again from their records in {}: \
                 acknowledged before larch stopped, they had not reached its index",
                segments_dir.display()
            );
        }
        spool.index.get_mut().next_line = read_u64(&spool.db, "next_line")?.unwrap_or(0);
        let quarantined = spool.db.scan_prefix([keys::QUARANTINE]).count() as u64;
        spool.quarantined.store(quarantined, Ordering::Relaxed);
        let mut open: HashMap<_, OpenPart> = HashMap::new();
        // Parts found open beside a later open part of their hour: only the
        // last one of an hour takes lines, so the others are sealed, not
        // forgotten (seals are durable before a group can see them, so this
        // is a guard, not a path).
        let mut beside = Vec::new();
        for (id, record) in spool.part_records(|_| true)? {
            if record.state == PartState::Open {
                let part = OpenPart {
                    seq: id.seq,
                    first_line_ms: record.first_line_ms,
                    lines: record.lines,
                    bytes: record.bytes,
                };
                let slot = (id.account.clone(), id.hour);
                match open.get(&slot) {
                    Some(later) if later.seq > part.seq => beside.push((id, part)),
                    _ => {
                        if let Some(earlier) = open.insert(slot, part) {
                            beside.push((
                                super::PartId {
                                    seq: earlier.seq,
                                    ..id
                                },
                                earlier,
                            ));
                        }
                    }
                }
            }
        }
        for (id, part) in beside {
            tracing::warn!("part {id} was open beside a later part of its hour; sealing it");
            spool.db.insert(
                keys::part(&id),
                super::codec::encode(&part.record(PartState::Sealed)),
            )?;
        }
        spool.lock().open = open;
        spool.make_durable()?;
        Ok(spool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SharedClock;

    fn open_as_version(dir: &Path, version: u64) -> Result<Spool, SpoolError> {
        let clock: SharedClock =
            std::sync::Arc::new(crate::clock::ManualClock::new(3_600_000 * 100));
        let open = || Spool::open(dir, clock.clone(), SealRule::default(), 1 << 20);
        let spool = open()?;
        spool
            .db
            .insert(keys::meta("version"), &version.to_be_bytes())?;
        spool.make_durable()?;
        drop(spool);
        open()
    }

    #[test]
    fn a_spool_of_the_previous_format_opens_and_moves_up() {
        for older in READS_FORMATS {
            let dir = tempfile::tempdir().unwrap();
            let spool = open_as_version(dir.path(), *older)
                .expect("a larch reads the formats before its own");
            assert_eq!(
                read_u64(&spool.db, "version").unwrap(),
                Some(u64::from(FORMAT_VERSION)),
                "and marks it as its own, so an older larch refuses it"
            );
        }
    }

    #[test]
    fn a_spool_of_another_format_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = open_as_version(dir.path(), 99) else {
            panic!("a spool of format version 99 was opened")
        };
        assert!(
            matches!(err, SpoolError::Incompatible { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("version 99"), "{err}");
        // Refusing wrote nothing: the spool is still version 99.
        let clock: SharedClock =
            std::sync::Arc::new(crate::clock::ManualClock::new(3_600_000 * 100));
        assert!(matches!(
            Spool::open(dir.path(), clock, SealRule::default(), 1 << 20),
            Err(SpoolError::Incompatible { .. })
        ));
    }

    #[test]
    fn a_part_open_beside_a_later_part_of_its_hour_is_sealed_not_forgotten() {
        use crate::account::AccountId;
        use crate::spool::{Along, PartId, PartRecord};
        let dir = tempfile::tempdir().unwrap();
        let hour_ms = 3_600_000 * 100;
        let clock: SharedClock = std::sync::Arc::new(crate::clock::ManualClock::new(hour_ms));
        let open = || Spool::open(dir.path(), clock.clone(), SealRule::default(), 1 << 20);
        let account = AccountId::parse("acme").unwrap();
        let id = |seq| PartId {
            account: account.clone(),
            hour: crate::hour::Hour::of(hour_ms),
            seq,
        };
        {
            let spool = open().unwrap();
            let origin = std::sync::Arc::new(crate::line::Origin::default());
            let line = crate::line::Line::new(hour_ms, "kept", origin);
            spool
                .append(vec![(account.clone(), vec![line], Along::default())])
                .unwrap();
            // A later part of the same hour, open too.
            let later = PartRecord {
                state: PartState::Open,
                first_line_ms: hour_ms,
                lines: 0,
                bytes: 0,
            };
            spool
                .db
                .insert(keys::part(&id(1)), super::super::codec::encode(&later))
                .unwrap();
            spool.make_durable().unwrap();
        }
        let spool = open().unwrap();
        let state = |seq| {
            let value = spool.db.get(keys::part(&id(seq))).unwrap().unwrap();
            super::super::codec::decode::<PartRecord>(&value)
                .unwrap()
                .state
        };
        assert_eq!(state(0), PartState::Sealed, "the earlier part is sealed");
        assert_eq!(state(1), PartState::Open);
        assert_eq!(
            spool
                .lock()
                .open
                .values()
                .map(|p| p.seq)
                .collect::<Vec<_>>(),
            [1],
            "the later part takes the hour's lines"
        );
    }

    #[test]
    fn an_unfinished_sled_snapshot_does_not_stop_the_spool_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock =
            std::sync::Arc::new(crate::clock::ManualClock::new(3_600_000 * 100));
        let open = || Spool::open(dir.path(), clock.clone(), SealRule::default(), 1 << 20);
        let spool = open().unwrap();
        spool.seal_all().unwrap();
        drop(spool);
        // What a snapshot write cut short by a kill or a full disk leaves.
        let spool_dir = dir.path().join("spool");
        std::fs::write(spool_dir.join("snap.FFFFFFFFFFFFFFF0.generating"), b"").unwrap();
        std::fs::write(
            spool_dir.join("snap.FFFFFFFFFFFFFFF1.generating"),
            vec![7u8; 40],
        )
        .unwrap();
        open().expect("the spool opens");
        assert!(!spool_dir.join("snap.FFFFFFFFFFFFFFF0.generating").exists());
    }
}
