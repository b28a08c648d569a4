//! The life of a part (docs/DESIGN.md), step by step, against a real sled spool and
//! a real archive directory, with time moved by a manual clock. Each test pins
//! one invariant and fails when it breaks.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use larch::account::AccountId;
use larch::clock::{ManualClock, SharedClock};
use larch::hour::{object_key, Hour};
use larch::line::{Line, Origin};
use larch::spool::SealRule;
use larch::spool::{Along, PartId, PartState, Spool, SpoolHandle};
use larch::store::Target;
use larch::sync::Board;
use larch::sync::{stage, Backoff, SyncSettings, Syncer};

/// 2026-03-10T14:00:00Z.
const HOUR_START: i64 = 1_773_151_200_000;

struct Rig {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    spool: Option<SpoolHandle>,
}

impl Rig {
    fn new() -> Self {
        let rig = Self {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(ManualClock::new(HOUR_START + 10 * 60_000)),
            spool: None,
        };
        rig.reopen()
    }

    /// Opens the spool again, as a restart does.
    fn reopen(mut self) -> Self {
        self.spool = None;
        let clock: SharedClock = self.clock.clone();
        let rule = SealRule {
            late_window_ms: 0,
            follow_up_after_ms: 60_000,
        };
        // sled's own threads may hold the database's file lock for a moment
        // after its last handle is dropped (a restart's new process never
        // meets that): a held lock is waited out, briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let spool = loop {
            match Spool::open(self.dir.path(), clock.clone(), rule, 8 << 20) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened.expect("spool opens"),
            }
        };
        self.spool = Some(SpoolHandle::new(spool));
        self
    }

    fn handle(&self) -> &SpoolHandle {
        self.spool.as_ref().unwrap()
    }

    fn spool(&self) -> &Arc<Spool> {
        self.handle().blocking()
    }

    fn archive(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    /// Appends one request's lines for `account` and makes them durable.
    fn ingest(&self, account: &str, texts: &[&str]) {
        let lines = texts
            .iter()
            .map(|t| Line::new(HOUR_START + 60_000, t.to_string(), test_origin()))
            .collect();
        let account = AccountId::parse(account).unwrap();
        self.spool()
            .append(vec![(account, lines, Along::default())])
            .unwrap();
        self.spool().make_durable().unwrap();
    }

    /// Moves past the hour's end and seals what is due.
    fn seal(&self) -> Vec<PartId> {
        self.clock.set(HOUR_START + 3_600_000 + 1);
        self.spool().seal_due().unwrap()
    }

    fn syncer(&self, target: &Path) -> (Arc<Syncer>, Arc<Board>) {
        let board = Arc::new(Board::default());
        let clock: SharedClock = self.clock.clone();
        let syncer = Syncer::new(
            self.handle().clone(),
            Arc::new(Target::parse(target.to_str().unwrap()).unwrap()),
            SyncSettings {
                staging_dir: self.dir.path().join("staging"),
                gzip_level: 6,
                key_prefix: String::new(),
                fleet_size: 1,
                backoff: Backoff::default(),
                ledger_keep: std::time::Duration::from_secs(30 * 86_400),
            },
            clock,
            board.clone(),
        )
        .unwrap();
        (Arc::new(syncer), board)
    }

    async fn sync(&self) -> Arc<Board> {
        std::fs::create_dir_all(self.archive()).unwrap();
        let (syncer, board) = self.syncer(&self.archive());
        syncer.pass().await;
        board
    }

    fn state(&self, account: &str, seq: u32) -> PartState {
        let id = part(account, seq);
        self.spool()
            .record(&id)
            .unwrap()
            .expect("part exists")
            .state
    }

    /// Every archived line text, per object file name.
    fn archived(&self) -> Vec<(String, Vec<String>)> {
        common::read_archive(&self.archive())
            .into_iter()
            .map(|(name, lines)| {
                let texts = lines
                    .iter()
                    .map(|l| l["_line"].as_str().unwrap().to_owned())
                    .collect();
                (name, texts)
            })
            .collect()
    }
}

fn test_origin() -> Arc<Origin> {
    Arc::new(Origin {
        ingester: "test",
        ..Origin::default()
    })
}

fn part(account: &str, seq: u32) -> PartId {
    PartId {
        account: AccountId::parse(account).unwrap(),
        hour: Hour::of(HOUR_START),
        seq,
    }
}

fn key(account: &str, n: u32) -> String {
    object_key(
        "",
        &AccountId::parse(account).unwrap(),
        Hour::of(HOUR_START),
        n,
    )
}

#[test]
fn a_part_compresses_to_the_same_bytes_every_time() {
    let rig = Rig::new();
    rig.ingest("acme", &["one", "two"]);
    rig.ingest("acme", &["three"]);
    rig.seal();
    let id = part("acme", 0);
    let a = rig.dir.path().join("a");
    let b = rig.dir.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let first = stage::stage(rig.spool(), &id, 6, &a).unwrap();
    let second = stage::stage(rig.spool(), &id, 6, &b).unwrap();
    assert_eq!(first.lines, 3);
    assert_eq!(first.sha256, second.sha256);
    assert_eq!(
        std::fs::read(&first.path).unwrap(),
        std::fs::read(&second.path).unwrap()
    );
    // And after a restart, which gives the spool a fresh in-memory state.
    let rig = rig.reopen();
    let c = rig.dir.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    let third = stage::stage(rig.spool(), &id, 6, &c).unwrap();
    assert_eq!(first.sha256, third.sha256);
}

#[tokio::test]
async fn an_object_left_by_an_upload_before_a_crash_is_recognised_not_duplicated() {
    let rig = Rig::new();
    rig.ingest("acme", &["one", "two"]);
    rig.seal();
    let id = part("acme", 0);
    // The crash: the object reached the target, the record still says uploading.
    let staged_dir = rig.dir.path().join("before-crash");
    std::fs::create_dir_all(&staged_dir).unwrap();
    let staged = stage::stage(rig.spool(), &id, 6, &staged_dir).unwrap();
    let object = rig.archive().join(key("acme", 0));
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::copy(&staged.path, &object).unwrap();
    let mut record = rig.spool().record(&id).unwrap().unwrap();
    record.state = PartState::Uploading(larch::spool::Upload {
        key: key("acme", 0),
        n: 0,
        size: staged.size,
        sha256: staged.sha256,
        level: 6,
        lines: staged.lines,
        at: 0,
    });
    rig.spool().set_record(&id, &record).unwrap();

    let rig = rig.reopen();
    rig.sync().await;

    match rig.state("acme", 0) {
        PartState::Deleted(Some(upload)) => assert_eq!(upload.key, key("acme", 0)),
        other => panic!("part should be done, is {other:?}"),
    }
    let archived = rig.archived();
    assert_eq!(archived.len(), 1, "no second object: {archived:?}");
    assert_eq!(archived[0].1, ["one", "two"]);
}

#[tokio::test]
async fn another_writers_object_at_the_key_is_kept_and_the_part_takes_the_next_number() {
    let rig = Rig::new();
    rig.ingest("acme", &["ours"]);
    rig.seal();
    // Another host archiving the same account got there first.
    let theirs = rig.archive().join(key("acme", 0));
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    let foreign = common::gzip(b"{\"_id\":\"other\",\"_line\":\"theirs\"}\n");
    std::fs::write(&theirs, &foreign).unwrap();

    rig.sync().await;

    assert_eq!(
        std::fs::read(&theirs).unwrap(),
        foreign,
        "never overwritten"
    );
    match rig.state("acme", 0) {
        PartState::Deleted(Some(upload)) => {
            assert_eq!(upload.key, key("acme", 1));
            assert_eq!(upload.n, 1);
        }
        other => panic!("part should be done, is {other:?}"),
    }
    let ours = rig.archive().join(key("acme", 1));
    assert!(ours.exists(), "{} missing", ours.display());
}

#[tokio::test]
async fn corrupt_records_are_set_aside_without_stopping_start_up_or_taking_others() {
    let rig = Rig::new();
    rig.ingest("acme", &["lost-1", "lost-2"]);
    rig.ingest("acme", &["kept-1"]);
    rig.ingest("beta", &["beta-1", "beta-2"]);
    let rig = rig.reopen();
    let spool_dir = rig.dir.path().join("spool");
    drop(rig.spool);

    // Damage that no filesystem check sees: one byte in the middle of acme's
    // first block in its segment file, and one byte of beta's part record in
    // sled, as bit rot would.
    {
        let db = sled::open(&spool_dir).unwrap();
        let block_ref = db.scan_prefix(b"Bacme\0").values().next().unwrap().unwrap();
        // segment (u64), offset (u64), length (u32), big-endian.
        let segment = u64::from_be_bytes(block_ref[..8].try_into().unwrap());
        let offset = u64::from_be_bytes(block_ref[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(block_ref[16..20].try_into().unwrap());
        let path = rig.dir.path().join(format!("segments/{segment:016x}.seg"));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(offset + u64::from(len) / 2) as usize] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let record_key = db.scan_prefix(b"Pbeta\0").keys().next().unwrap().unwrap();
        flip_a_byte(&db, &record_key);
        db.flush().unwrap();
    }

    let rig = Rig { spool: None, ..rig }.reopen();
    assert_eq!(rig.spool().summary().unwrap().records_quarantined, 1);
    rig.seal();
    rig.sync().await;

    let mut archived = rig.archived();
    archived.sort();
    let texts: Vec<Vec<String>> = archived.into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts, [vec!["kept-1"], vec!["beta-1", "beta-2"]]);
    assert_eq!(rig.spool().summary().unwrap().records_quarantined, 2);
    // The damaged bytes are kept for an operator to look at, not thrown away.
    drop(rig.spool);
    let db = sled::open(&spool_dir).unwrap();
    assert_eq!(db.scan_prefix(b"Q").count(), 2);
}

fn flip_a_byte(db: &sled::Db, key: &[u8]) {
    let mut value = db.get(key).unwrap().unwrap().to_vec();
    let middle = value.len() / 2;
    value[middle] ^= 0x20;
    db.insert(key, value).unwrap();
}

#[tokio::test]
async fn an_error_retrying_cannot_fix_pauses_the_part_and_drops_nothing() {
    let rig = Rig::new();
    rig.ingest("acme", &["waits"]);
    rig.seal();
    let missing = rig.dir.path().join("not-created-yet");
    let (syncer, board) = rig.syncer(&missing);
    syncer.pass().await;

    // No name is chosen without a listing of the hour's names, which the
    // missing directory refuses; the lines stay in the spool.
    assert!(matches!(rig.state("acme", 0), PartState::Sealed));
    let paused = board
        .report()
        .sync_paused
        .expect("status says sync is paused");
    assert!(paused.contains("does not exist"), "{paused}");
    assert_eq!(rig.spool().summary().unwrap().lines_waiting, 1);

    // The operator creates the directory; the next attempt goes through.
    std::fs::create_dir_all(&missing).unwrap();
    let (syncer, board) = rig.syncer(&missing);
    syncer.pass().await;
    assert!(matches!(rig.state("acme", 0), PartState::Deleted(Some(_))));
    assert_eq!(board.report().objects_uploaded, 1);
    assert_eq!(board.report().sync_paused, None);
    assert_eq!(rig.spool().summary().unwrap().lines_waiting, 0);
    assert!(missing.join(key("acme", 0)).exists());
}

#[test]
fn a_backlog_drains_oldest_hour_first() {
    let rig = Rig::new();
    let at = |hours_before: i64, account: &str, text: &str| {
        let line = Line::new(HOUR_START - hours_before * 3_600_000, text, test_origin());
        let account = AccountId::parse(account).unwrap();
        rig.spool()
            .append(vec![(account, vec![line], Along::default())])
            .unwrap();
        rig.spool().make_durable().unwrap();
    };
    at(1, "zeta", "newer");
    at(5, "beta", "oldest");
    at(0, "acme", "newest");
    at(3, "acme", "older");
    rig.seal();
    let order: Vec<(String, i64)> = rig
        .spool()
        .parts_to_sync()
        .unwrap()
        .into_iter()
        .map(|(id, _)| (id.account.to_string(), id.hour.0))
        .collect();
    let hour = Hour::of(HOUR_START).0;
    assert_eq!(
        order,
        [
            ("beta".to_owned(), hour - 5),
            ("acme".to_owned(), hour - 3),
            ("zeta".to_owned(), hour - 1),
            ("acme".to_owned(), hour),
        ]
    );
}

#[tokio::test]
async fn segment_files_go_once_every_part_in_them_is_archived() {
    let rig = Rig::new();
    rig.ingest("acme", &["one", "two"]);
    rig.ingest("beta", &["three"]);
    let segments = |rig: &Rig| {
        let mut names: Vec<String> = std::fs::read_dir(rig.dir.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    // A restart starts a new segment; the old one still holds both parts.
    let rig = rig.reopen();
    let before = segments(&rig);
    assert_eq!(before.len(), 2, "{before:?}");
    rig.seal();
    rig.sync().await;
    assert_eq!(rig.archived().len(), 2);
    let after = segments(&rig);
    assert_eq!(after, before[1..], "the archived parts' segment is gone");
}

#[test]
fn a_large_part_compresses_on_all_cores_to_one_gzip_file_in_order() {
    use std::io::Read;
    let rig = Rig::new();
    // About 4 MiB of NDJSON: several pieces, compressed in parallel.
    let texts: Vec<String> = (0..12_000)
        .map(|i| format!("line {i:05} {}", "x".repeat(250 + i % 50)))
        .collect();
    for chunk in texts.chunks(1000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        rig.ingest("acme", &refs);
    }
    rig.seal();
    let id = part("acme", 0);
    let (a, b) = (rig.dir.path().join("a"), rig.dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let first = stage::stage(rig.spool(), &id, 6, &a).unwrap();
    let second = stage::stage(rig.spool(), &id, 6, &b).unwrap();
    assert_eq!(
        first.sha256, second.sha256,
        "parallel compression is deterministic"
    );
    assert_eq!(first.lines, texts.len() as u64);
    let bytes = std::fs::read(&first.path).unwrap();
    let members = bytes
        .windows(3)
        .filter(|w| *w == [0x1f, 0x8b, 0x08])
        .count();
    assert!(members >= 3, "{members} gzip members");
    let mut ndjson = String::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_string(&mut ndjson)
        .unwrap();
    assert_eq!(ndjson.len() as u64, first.input_bytes);
    let archived: Vec<String> = ndjson
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["_line"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(archived, texts, "every line, in the order it was stored");
}

#[tokio::test]
async fn the_ledger_remembers_each_upload_until_pruned_and_a_freed_part_number_takes_a_free_key() {
    use sha2::Digest;
    let rig = Rig::new();
    rig.ingest("acme", &["one", "two"]);
    rig.seal();
    rig.sync().await;
    let ledger = rig.spool().ledger().unwrap();
    assert_eq!(ledger.len(), 1);
    let entry = &ledger[0];
    let object = std::fs::read(rig.archive().join(&entry.key)).unwrap();
    assert_eq!(entry.key, key("acme", 0));
    assert_eq!(entry.part, "acme/2026-03-10T14:00Z/part 0");
    assert_eq!((entry.lines, entry.size), (2, object.len() as u64));
    assert_eq!(entry.sha256, hex::encode(sha2::Sha256::digest(&object)));

    // Kept until its time is up, then forgotten.
    assert_eq!(rig.spool().prune_ledger(entry.uploaded_at).unwrap(), 0);
    assert_eq!(rig.spool().prune_ledger(entry.uploaded_at + 1).unwrap(), 1);
    assert!(rig.spool().ledger().unwrap().is_empty());

    // A late line for that hour starts at part 0 again; its object must not
    // replace the one already archived, so it takes the next free key.
    rig.ingest("acme", &["late"]);
    rig.seal();
    rig.sync().await;
    assert_eq!(
        rig.archived(),
        vec![
            (key("acme", 1), vec!["late".to_owned()]),
            (key("acme", 0), vec!["one".to_owned(), "two".to_owned()]),
        ]
    );
    assert_eq!(rig.spool().ledger().unwrap()[0].key, key("acme", 1));
}
