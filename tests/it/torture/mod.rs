//! The torture suites: SIGKILLs at random moments, object store faults, a
//! full disk, damaged spool records and clock jumps (`kills`), or power cuts
//! on a filesystem that forgets what was not fsynced (`cuts`), all while HTTP
//! clients and rotating file writers keep sending lines with known markers.
//! At the end larch drains, and the archive is checked against what was
//! acknowledged: every acked line archived exactly once, in the object its
//! timestamp names, and no refused line archived. Each prints one summary line.
//!
//! Quick modes run in `scripts/test.sh`; `scripts/torture.sh --cycles N` and
//! `--power-cuts N` run long ones. `LARCH_TORTURE_CYCLES` and `LARCH_POWER_CUTS`
//! set their lengths, `LARCH_TORTURE_SEED` replays a run.
//!
//! The spool lives on a small tmpfs the suite mounts (it needs root, as CI
//! has); with `LARCH_TEST_NO_MOUNT=1` the disk-full episodes are skipped.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::s3::{FaultProxy, Mode, Moto};
use common::{hours_ago, now_ms, Daemon, Rng, SmallDisk};
use serde_json::json;

const BUCKET: &str = "torture";
/// larch's target: the bucket on the S3 server.
const TARGET: &str = "s3://torture";
const ACCOUNTS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];
const HOUR_MS: i64 = 3_600_000;
/// The spool's filesystem: room for a long outage's backlog and a bulk part.
const SPOOL_FS_BYTES: u64 = 320 * 1024 * 1024;

/// What the clients sent and what larch answered, by line marker.
#[derive(Default)]
struct Sent {
    acked: HashSet<String>,
    refused: HashSet<String>,
    unanswered: HashSet<String>,
    statuses: HashMap<u16, u64>,
}

type Shared = Arc<Mutex<Sent>>;

fn lock(sent: &Shared) -> std::sync::MutexGuard<'_, Sent> {
    sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// POSTs one request and files its lines under the answer.
fn post(
    agent: &ureq::Agent,
    addr: &str,
    key: &str,
    body: &str,
    markers: Vec<String>,
    sent: &Shared,
) {
    let result = agent
        .post(format!("http://{addr}/logs/ingest"))
        .header("apikey", key)
        .header("Content-Type", "application/json")
        .send(body.as_bytes());
    let mut s = lock(sent);
    match result {
        Ok(r) => {
            let status = r.status().as_u16();
            *s.statuses.entry(status).or_default() += 1;
            if status == 200 {
                s.acked.extend(markers);
            } else {
                s.refused.extend(markers);
            }
        }
        Err(_) => s.unanswered.extend(markers),
    }
}

/// Sends batches for one account: most lines stamped one to three hours ago
/// (so hours seal and upload all the time), some unstamped (the current hour
/// by larch's clock), and now and then a request with a line over the `meta`
/// limit, which must be refused whole.
fn http_client(addr: String, client: usize, seed: u64, stop: Arc<AtomicBool>, sent: Shared) {
    let mut rng = Rng::new(seed);
    let agent = common::agent();
    let key = format!("k-{}", ACCOUNTS[client % ACCOUNTS.len()]);
    let mut request = 0u64;
    while !stop.load(Ordering::Relaxed) {
        request += 1;
        let n = 1 + rng.below(100) as usize;
        let invalid = rng.one_in(15);
        let mut markers = Vec::with_capacity(n);
        let mut lines = Vec::with_capacity(n);
        for i in 0..n {
            let marker = format!("@h{client}.{request}.{i}");
            let mut line = json!({
                "line": format!("{marker} {}", "p".repeat(rng.below(300) as usize)),
                "app": "torture",
            });
            if !rng.one_in(4) {
                line["timestamp"] = json!(hours_ago(
                    1 + rng.below(3) as i64,
                    rng.below(HOUR_MS as u64) as i64
                ));
            }
            if invalid && i == n - 1 {
                line["meta"] = json!({"too_big": "m".repeat(33 * 1024)});
            }
            lines.push(line);
            markers.push(marker);
        }
        let body = json!({ "lines": lines }).to_string();
        post(&agent, &addr, &key, &body, markers, &sent);
        std::thread::sleep(Duration::from_millis(20 + rng.below(80)));
    }
}

/// Appends lines to `w<N>.log` and rotates it by rename-and-create every few
/// thousand lines. A line counts as acknowledged once it is in the file.
fn file_writer(dir: PathBuf, writer: usize, seed: u64, stop: Arc<AtomicBool>, sent: Shared) {
    let mut rng = Rng::new(seed);
    let path = dir.join(format!("w{writer}.log"));
    let open = |p: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("open the writer's log file")
    };
    let mut file = open(&path);
    let (mut seq, mut generation, mut in_file) = (0u64, 0u32, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let n = 1 + rng.below(20);
        let mut text = String::new();
        let mut markers = Vec::new();
        for _ in 0..n {
            seq += 1;
            let marker = format!("@f{writer}.{seq}");
            text.push_str(&format!(
                "{marker} {}\n",
                "q".repeat(rng.below(200) as usize)
            ));
            markers.push(marker);
        }
        file.write_all(text.as_bytes())
            .expect("write the writer's log file");
        lock(&sent).acked.extend(markers);
        in_file += n;
        if in_file >= 3000 {
            generation += 1;
            std::fs::rename(&path, dir.join(format!("w{writer}.log.{generation}")))
                .expect("rotate the writer's log file");
            file = open(&path);
            in_file = 0;
        }
        std::thread::sleep(Duration::from_millis(10 + rng.below(30)));
    }
}

/// How the torture suites run larch: archiving to the S3 server, sealing
/// hours as soon as they end and follow-ups a second after their first line.
fn larch_args(config: &Path) -> Vec<&str> {
    vec![
        "--config",
        config.to_str().unwrap(),
        "--target",
        TARGET,
        "--late-window",
        "0s",
        "--follow-up-after",
        "1s",
    ]
}

/// Three HTTP clients (one per account) and two rotating file writers in `logs`.
fn start_load(
    addr: &str,
    logs: &Path,
    rng: &mut Rng,
    stop: &Arc<AtomicBool>,
    sent: &Shared,
) -> Vec<JoinHandle<()>> {
    let mut workers = Vec::new();
    for client in 0..3 {
        let (addr, stop, sent, seed) = (addr.to_owned(), stop.clone(), sent.clone(), rng.next());
        workers.push(std::thread::spawn(move || {
            http_client(addr, client, seed, stop, sent)
        }));
    }
    for writer in 0..2 {
        let (logs, stop, sent, seed) = (logs.to_owned(), stop.clone(), sent.clone(), rng.next());
        workers.push(std::thread::spawn(move || {
            file_writer(logs, writer, seed, stop, sent)
        }));
    }
    workers
}

/// The markers (`@...`) of the lines held in a stored block's bytes.
fn markers_in(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'@' {
            let end = bytes[i + 1..]
                .iter()
                .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.'))
                .map_or(bytes.len(), |p| i + 1 + p);
            if end > i + 2 {
                out.push(String::from_utf8_lossy(&bytes[i..end]).into_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The archive as the store holds it, by marker and by line ID.
#[derive(Default)]
struct Archive {
    markers: HashMap<String, u32>,
    ids: HashMap<String, u32>,
    objects: HashSet<String>,
    misnamed: Vec<String>,
    unreadable: Vec<String>,
}

fn read_archive(moto: &Moto) -> Archive {
    let mut archive = Archive::default();
    for row in moto.lines(BUCKET).lines() {
        let cols: Vec<&str> = row.split('\t').collect();
        // Larch's own temporary objects (probes, uploads in progress) are not archive.
        if row.contains(".larch-") {
            continue;
        }
        if cols[0] == "BAD" {
            archive.unreadable.push(row.to_owned());
            continue;
        }
        let [key, id, ts, account, marker] = cols[..] else {
            panic!("unexpected row from s3_inspect.py: {row}");
        };
        archive.objects.insert(key.to_owned());
        *archive.markers.entry(marker.to_owned()).or_default() += 1;
        *archive.ids.entry(id.to_owned()).or_default() += 1;
        let ts: i64 = ts.parse().expect("_ts is an integer");
        if !named_for(key, account, ts) {
            archive
                .misnamed
                .push(format!("{key} holds {marker} of {account} at {ts}"));
        }
    }
    archive
}

/// Whether `key` is the name docs/FORMAT.md gives a line of `account` at `ts`.
fn named_for(key: &str, account: &str, ts: i64) -> bool {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ts) else {
        return false;
    };
    let stem = t
        .format(&format!("year=%Y/month=%m/day=%d/{account}.%Y-%m-%d.%H00"))
        .to_string();
    let Some(rest) = key.strip_prefix(&stem) else {
        return false;
    };
    rest == ".json.gz"
        || rest
            .strip_prefix('.')
            .and_then(|r| r.strip_suffix(".json.gz"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Drains until every acknowledged line but the `damaged` is archived (file
/// lines may still be on their way from the tail), or until 90 s make clear
/// some never will be. Returns the archive and what the clients were told.
fn drain_and_read(
    d: &Daemon,
    moto: &Moto,
    sent: &Shared,
    damaged: &HashSet<&String>,
) -> (Archive, Sent) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        common::drain(&d.data);
        let archive = read_archive(moto);
        let missing = lock(sent)
            .acked
            .iter()
            .any(|m| !archive.markers.contains_key(m) && !damaged.contains(m));
        if !missing || Instant::now() > deadline {
            return (archive, std::mem::take(&mut *lock(sent)));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The archive held against the answers.
struct Verdict<'a> {
    /// Acknowledged, not archived, and not in a record the suite damaged.
    lost: Vec<&'a String>,
    /// Markers archived more than once.
    twice: Vec<&'a String>,
    /// Line IDs archived more than once.
    twice_ids: usize,
    refused_archived: Vec<&'a String>,
    /// Archived, but no client sent it.
    stray: Vec<&'a String>,
}

impl<'a> Verdict<'a> {
    fn of(archive: &'a Archive, sent: &'a Sent, damaged: &HashSet<&String>) -> Self {
        let archived = |m: &&String| archive.markers.contains_key(*m);
        Self {
            lost: sent
                .acked
                .iter()
                .filter(|m| !archived(m) && !damaged.contains(m))
                .collect(),
            twice: archive
                .markers
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(m, _)| m)
                .collect(),
            twice_ids: archive.ids.values().filter(|n| **n > 1).count(),
            refused_archived: sent.refused.iter().filter(archived).collect(),
            stray: archive
                .markers
                .keys()
                .filter(|m| {
                    !sent.acked.contains(*m)
                        && !sent.unanswered.contains(*m)
                        && !sent.refused.contains(*m)
                })
                .collect(),
        }
    }

    fn duplicated(&self) -> usize {
        self.twice.len() + self.twice_ids
    }

    /// Every acknowledged line archived once, in the object its account and
    /// hour name, no refused line and nothing nobody sent.
    fn check(&self, archive: &Archive, sent: &Sent, seed: u64, status: &serde_json::Value) {
        assert!(
            archive.unreadable.is_empty(),
            "unreadable objects: {:?}",
            archive.unreadable
        );
        assert!(
            self.lost.is_empty(),
            "{} acked lines lost (seed {seed}), e.g. {:?}; final status {status}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(5)]
        );
        assert!(
            self.duplicated() == 0,
            "lines archived twice (seed {seed}): {} markers, {} IDs, e.g. {:?}",
            self.twice.len(),
            self.twice_ids,
            &self.twice[..self.twice.len().min(5)]
        );
        assert!(
            self.refused_archived.is_empty(),
            "refused lines archived (seed {seed}), e.g. {:?}",
            &self.refused_archived[..self.refused_archived.len().min(5)]
        );
        assert!(
            self.stray.is_empty(),
            "archived lines nobody sent: {:?}",
            self.stray
        );
        assert!(
            archive.misnamed.is_empty(),
            "objects hold lines of another account or hour (seed {seed}): {:?}",
            &archive.misnamed[..archive.misnamed.len().min(5)]
        );
        assert!(
            sent.acked.len() > 1000,
            "too few lines acknowledged to mean anything"
        );
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

mod cuts;
mod kills;
