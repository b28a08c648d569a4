//! Power cuts and failing disks, on a filesystem that forgets (the `forgetful`
//! crate): it keeps a write only once its file is fsynced and a name only once
//! its directory is, drops the rest on a cut, and fails fsyncs and writes on
//! command. A SIGKILL leaves the page cache in place, so only this can tell
//! a line that was made durable from one that only reached the cache.
//!
//! Each test mounts its own filesystem (FUSE, which needs root, as CI has).

use crate::common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{hours_ago, read_archive, Daemon};
use forgetful::{Forgetful, Options, Tear};
use serde_json::json;

const KEY: &str = "k-power";

struct Rig {
    _dir: tempfile::TempDir,
    fs: Forgetful,
    /// The data directory, on the forgetful filesystem.
    data: PathBuf,
    config: PathBuf,
}

/// A forgetful filesystem mounted in a new temporary directory; `data` is
/// made on it (durably) only if `data_made_beforehand`, as systemd's
/// `StateDirectory` would.
fn rig(data_made_beforehand: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fs = Forgetful::mount(
        &mnt,
        &dir.path().join("backing"),
        Options {
            capacity_bytes: None,
            seed: 7,
        },
    )
    .expect("mount the forgetful filesystem (needs root and /dev/fuse)");
    let data = mnt.join("larch");
    if data_made_beforehand {
        std::fs::create_dir(&data).unwrap();
        std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    }
    let config = dir.path().join("larch.toml");
    std::fs::write(&config, format!("[keys]\n{KEY} = \"power\"\n")).unwrap();
    Rig {
        _dir: dir,
        fs,
        data,
        config,
    }
}

impl Rig {
    /// Starts larch with parts that seal at once and short follow-ups.
    fn start(&self) -> Daemon {
        self.start_with(&["--late-window", "0s", "--follow-up-after", "300ms"])
    }

    /// Starts larch with a late window of 6 h: parts stay open (no seal or
    /// collection rotates segments behind a test's back, and the compactor
    /// makes members of them as lines come in).
    fn start_with_open_parts(&self) -> Daemon {
        self.start_with(&["--late-window", "6h"])
    }

    fn start_with(&self, flags: &[&str]) -> Daemon {
        let mut args = vec!["--config", self.config.to_str().unwrap()];
        args.extend_from_slice(flags);
        Daemon::start_logging_to(
            &format!("127.0.0.1:{}", common::free_port()),
            &self.data,
            &self.config.with_extension("log"),
            &args,
            &[],
        )
    }

    /// Kills larch, cuts the power and starts larch again on what survived.
    fn cut(&mut self, d: &mut Daemon) {
        d.kill9();
        self.fs.power_cut(Tear::None).expect("power cut");
        d.start_again();
    }
}

fn batch(tag: &str, n: usize) -> (serde_json::Value, Vec<String>) {
    let markers: Vec<String> = (0..n).map(|i| format!("@{tag}.{i}")).collect();
    let lines: Vec<_> = markers
        .iter()
        .map(|m| json!({"line": format!("{m} power"), "timestamp": hours_ago(1, 0)}))
        .collect();
    (json!({ "lines": lines }), markers)
}

/// Markers of every archived line under `archive`, with how often each is there.
fn archived(archive: &Path) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for (_, lines) in read_archive(archive) {
        for line in lines {
            let text = line["_line"].as_str().unwrap_or_default();
            let marker = text.split(' ').next().unwrap_or_default().to_owned();
            *out.entry(marker).or_default() += 1;
        }
    }
    out
}

#[test]
fn a_spool_survives_a_power_cut_right_after_it_was_made() {
    for made_beforehand in [false, true] {
        let mut rig = rig(made_beforehand);
        let mut d = rig.start();
        let (body, markers) = batch("first", 50);
        assert_eq!(d.ingest_json(KEY, &body).0, 200);
        rig.cut(&mut d);
        let (body, more) = batch("second", 50);
        assert_eq!(d.ingest_json(KEY, &body).0, 200);
        rig.cut(&mut d);
        common::drain(&rig.data);
        // The archive is on the same disk: what was archived stays archived.
        rig.cut(&mut d);
        let archive = archived(&rig.data.join("archive"));
        for m in markers.iter().chain(&more) {
            assert_eq!(
                archive.get(m),
                Some(&1),
                "{m} was acknowledged before the cut (data directory made beforehand: {made_beforehand}); the log:\n{}",
                d.log_tail(15)
            );
        }
        d.terminate();
    }
}

#[test]
fn a_spool_that_lost_its_segments_or_its_index_does_not_start_as_new() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("larch.toml");
    std::fs::write(&config, format!("[keys]\n{KEY} = \"power\"\n")).unwrap();
    let args = ["--config", config.to_str().unwrap(), "--late-window", "6h"];
    let mut d = Daemon::start(&data, &args);
    let first = d.log();
    assert!(
        first.contains("there was no spool in"),
        "a new spool is said in the log:\n{first}"
    );
    let (body, _) = batch("kept", 20);
    assert_eq!(d.ingest_json(KEY, &body).0, 200);
    d.terminate();

    for lose in ["segments", "spool"] {
        let aside = dir.path().join(format!("aside-{lose}"));
        std::fs::rename(data.join(lose), &aside).unwrap();
        let err_path = dir.path().join(format!("refused-{lose}.log"));
        let mut larch = Command::new(env!("CARGO_BIN_EXE_larch"))
            .args(["run", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(args)
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("run larch");
        // A larch that starts anyway runs until stopped: that is the failure.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = larch.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = larch.kill();
                let _ = larch.wait();
                panic!("larch started without its {lose} and kept running");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(&err_path).unwrap();
        assert!(!status.success(), "larch started without its {lose}");
        assert!(
            stderr.contains("has lost part of itself") && stderr.contains("move"),
            "the refusal says what is gone and what to do:\n{stderr}"
        );
        // Put back, it starts and still holds the lines.
        if lose == "spool" {
            std::fs::remove_dir_all(data.join(lose)).unwrap();
        }
        std::fs::rename(&aside, data.join(lose)).unwrap();
        let d = Daemon::start(&data, &args);
        assert_eq!(d.status()["lines_waiting"], 20, "{lose} put back");
        drop(d);
    }
}

/// What concurrent clients sent and were told.
#[derive(Default)]
struct Answers {
    acked: HashSet<String>,
    refused: HashSet<String>,
    unanswered: HashSet<String>,
}

/// Clients posting batches one after another, each batch's markers filed
/// under its answer, until they are stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Answers>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(addr: &str, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Answers::default()));
        let sequence = Arc::new(AtomicU64::new(0));
        let workers = (0..n)
            .map(|_| {
                let (addr, stop, answers, sequence) = (
                    addr.to_owned(),
                    stop.clone(),
                    answers.clone(),
                    sequence.clone(),
                );
                std::thread::spawn(move || {
                    let agent = common::agent();
                    while !stop.load(Ordering::Relaxed) {
                        let (body, markers) = batch(
                            &format!("c{}", sequence.fetch_add(1, Ordering::Relaxed)),
                            20,
                        );
                        let result = agent
                            .post(format!("http://{addr}/logs/ingest"))
                            .header("apikey", KEY)
                            .header("Content-Type", "application/json")
                            .send(body.to_string().as_bytes());
                        let mut a = answers.lock().unwrap();
                        match result {
                            Ok(r) if r.status() == 200 => a.acked.extend(markers),
                            Ok(_) => a.refused.extend(markers),
                            Err(_) => a.unanswered.extend(markers),
                        }
                        drop(a);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Self {
            stop,
            answers,
            workers,
        }
    }

    /// Waits until the clients have had `more` more answers of any kind.
    fn wait_for_answers(&self, more: usize) {
        let count = |a: &Answers| a.acked.len() + a.refused.len() + a.unanswered.len();
        let target = count(&self.answers.lock().unwrap()) + more * 20;
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&self.answers.lock().unwrap()) < target {
            assert!(Instant::now() < deadline, "the clients got no answers");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients; what they were told.
    fn stop(self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.join().unwrap();
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// Checks the archive against the answers: every acknowledged line once, no
/// refused line at all, no line twice.
fn check(archive: &std::collections::HashMap<String, usize>, answers: &Answers, what: &str) {
    let lost: Vec<_> = answers
        .acked
        .iter()
        .filter(|m| !archive.contains_key(*m))
        .collect();
    assert!(lost.is_empty(), "{what}: acknowledged lines lost: {lost:?}");
    let refused: Vec<_> = answers
        .refused
        .iter()
        .filter(|m| archive.contains_key(*m))
        .collect();
    assert!(
        refused.is_empty(),
        "{what}: refused lines archived: {refused:?}"
    );
    let twice: Vec<_> = archive.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{what}: lines archived twice: {twice:?}");
}

#[test]
fn a_failed_segment_write_or_fsync_refuses_its_group_and_larch_goes_on() {
    let mut rig = rig(false);
    let mut d = rig.start();
    let clients = Clients::start(&d.addr, 4);
    clients.wait_for_answers(20);
    // Collection removes old segments meanwhile: the newest is the one written.
    let newest = |rig: &Rig| newest_segment(&rig.data);
    for (failures, writes) in [(1, false), (2, false), (3, false), (1, true), (2, true)] {
        let before = newest(&rig);
        if writes {
            // Segments of blocks, where groups go (members' start with 8).
            rig.fs.fail_next_writes_of("segments/0", failures);
        } else {
            rig.fs.fail_next_fsyncs_of("segments/0", failures);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while rig.fs.stats().failures_pending > 0 {
            assert!(
                Instant::now() < deadline,
                "no segment was written or fsynced"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        clients.wait_for_answers(10);
        assert!(
            newest(&rig) > before,
            "a segment that failed a {} is given up for a new one",
            if writes { "write" } else { "fsync" }
        );
    }
    let answers = clients.stop();
    assert!(
        answers.refused.len() >= 9 * 20,
        "each failure refused a group: {} lines refused",
        answers.refused.len()
    );
    assert!(answers.unanswered.is_empty(), "larch kept running");
    // What the failed fsyncs did not make durable is gone now.
    rig.cut(&mut d);
    d.wait_drained(Duration::from_secs(60));
    check(
        &archived(&rig.data.join("archive")),
        &answers,
        "failing segments",
    );
}

/// The number of the newest segment file under `data`.
/// The newest segment of blocks (members' segments have the top bit set).
fn newest_segment(data: &Path) -> u64 {
    std::fs::read_dir(data.join("segments"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
        })
        .filter(|id| id >> 63 == 0)
        .max()
        .unwrap()
}

#[test]
fn a_segment_given_up_is_not_fsynced_again() {
    let rig = rig(false);
    let d = rig.start_with_open_parts();
    assert_eq!(d.ingest_json(KEY, &batch("before", 10).0).0, 200);
    // A disk that keeps failing on one file: its next two fsyncs fail.
    let given_up = format!("segments/{:016x}.seg", newest_segment(&rig.data));
    rig.fs.fail_next_fsyncs_of(&given_up, 2);
    let (code, _) = d.ingest_json(KEY, &batch("refused", 10).0);
    assert_ne!(code, 200, "a group whose segment fsync failed is refused");
    let (code, body) = d.ingest_json(KEY, &batch("after", 10).0);
    assert_eq!(
        code, 200,
        "the next group goes to a new segment and owes nothing to {given_up}: {body}"
    );
    assert_eq!(
        rig.fs.stats().failures_pending,
        1,
        "{given_up} was fsynced again after it was given up"
    );
}

#[test]
fn a_failed_sled_fsync_stops_larch_without_answering_and_it_recovers() {
    let mut rig = rig(false);
    let mut d = rig.start();
    let clients = Clients::start(&d.addr, 4);
    for round in 0..3 {
        clients.wait_for_answers(20);
        // sled's log, fsynced after every group's flush (and by seals and
        // uploads, which run all the time at a late window of 0 s).
        rig.fs.fail_next_fsyncs_of("spool/db", 1);
        let exit = d.wait_exit(Duration::from_secs(30));
        assert!(
            !exit.success(),
            "round {round}: larch went on after a failed fsync"
        );
        let log = d.log_tail(5);
        assert!(
            log.contains("larch stops") && log.contains("sled"),
            "round {round}: the log says what failed:\n{log}"
        );
        d.start_again();
    }
    let answers = clients.stop();
    assert!(
        answers.refused.is_empty(),
        "a group whose flush failed was answered with an error, though it may be durable: {} lines",
        answers.refused.len()
    );
    // What the failed fsyncs did not make durable is gone now.
    rig.cut(&mut d);
    d.wait_drained(Duration::from_secs(60));
    // Lines without an answer may be archived or not, but once at most.
    check(
        &archived(&rig.data.join("archive")),
        &answers,
        "failing sled",
    );
    d.terminate();
}

#[test]
fn a_failed_member_write_or_fsync_loses_nothing_and_compression_goes_on() {
    let rig = rig(false);
    let mut d = rig.start_with_open_parts();
    let members = |d: &Daemon| d.status()["compressed"]["members"].as_u64().unwrap_or(0);
    let mut sent = Vec::new();
    for (round, writes) in [(0, false), (1, true)] {
        // The members' segments (their IDs start with 8; blocks' with 0).
        if writes {
            rig.fs.fail_next_writes_of("segments/8", 1);
        } else {
            rig.fs.fail_next_fsyncs_of("segments/8", 1);
        }
        let before = members(&d);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        while rig.fs.stats().failures_pending > 0 || members(&d) <= before {
            assert!(
                Instant::now() < deadline,
                "round {round}: no member was made after the failed one"
            );
            // About 1.5 MiB of NDJSON a batch: a piece and more.
            let (body, markers) = batch(&format!("m{round}-{n}"), 4000);
            n += 1;
            let (code, answer) = d.ingest_json(KEY, &body);
            assert_eq!(code, 200, "round {round}: a group was refused: {answer}");
            sent.extend(markers);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        d.log().contains("cannot compress lines of this part now"),
        "the failed member was said in the log"
    );
    // Sealed and drained: every acknowledged line once, none set aside.
    common::drain(&rig.data);
    assert_eq!(d.status()["records_quarantined"], 0);
    assert!(d.terminate().success());
    let archive = archived(&rig.data.join("archive"));
    for marker in &sent {
        assert_eq!(archive.get(marker), Some(&1), "{marker}");
    }
    assert_eq!(archive.len(), sent.len());
}
