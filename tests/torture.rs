//! The torture suite: SIGKILLs at random moments, object store faults, a full
//! disk, damaged spool records and clock jumps, all while HTTP clients and
//! rotating file writers keep sending lines with known markers. At the end
//! larch drains, and the archive is checked against what was acknowledged:
//! every acked line archived exactly once, in the object its timestamp names,
//! and no refused line archived. It prints one summary line.
//!
//! Quick mode is this test (in `scripts/test.sh`); `scripts/torture.sh
//! --cycles N` runs a long one. `LARCH_TORTURE_CYCLES` sets the cycles,
//! `LARCH_TORTURE_SEED` replays a run.
//!
//! The spool lives on a small tmpfs the suite mounts (it needs root, as CI
//! has); with `LARCH_TEST_NO_MOUNT=1` the disk-full episodes are skipped.

mod common;

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

/// About `bytes` of incompressible lines for the current hour, in 1 MiB
/// requests: one part big enough to go up as a multipart upload.
fn send_bulk(addr: &str, round: u32, bytes: usize, rng: &mut Rng, sent: &Shared) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let agent = common::agent();
    let mut line_no = 0u64;
    let mut total = 0;
    while total < bytes {
        let mut lines = Vec::new();
        let mut markers = Vec::new();
        let mut size = 0;
        while size < 1024 * 1024 {
            line_no += 1;
            let marker = format!("@b{round}.{line_no}");
            let noise: String = (0..2000)
                .map(|_| ALPHABET[rng.below(64) as usize] as char)
                .collect();
            size += noise.len();
            lines.push(json!({"line": format!("{marker} {noise}"), "app": "bulk"}));
            markers.push(marker);
        }
        total += size;
        let body = json!({ "lines": lines }).to_string();
        post(&agent, addr, "k-bulk", &body, markers, sent);
    }
}

/// What a damaged record should lead to.
enum Damage {
    /// A block of lines: larch sets it aside naming its part; its lines are gone.
    Block { part: String, markers: Vec<String> },
    /// A part record: set aside and rebuilt, so its lines are still archived.
    Record { part: String },
}

/// Flips a byte in one stored record of a stopped larch: a block of lines in a
/// segment file (two times in three) or a part record in sled.
fn damage_spool(data: &Path, rng: &mut Rng) -> Option<Damage> {
    let db = sled::open(data.join("spool")).expect("open the stopped daemon's spool");
    let damage = if rng.one_in(3) {
        let (key, value, part) = pick(&db, larch::spool::keys::PART, rng)?;
        let mut value = value.to_vec();
        let at = rng.below(value.len() as u64) as usize;
        value[at] ^= 0x55;
        db.insert(key, value)
            .expect("write the damaged part record");
        Damage::Record { part }
    } else {
        let (_, value, part) = pick(&db, larch::spool::keys::BLOCK, rng)?;
        // A block reference: segment, offset, length (big-endian).
        let at: &[u8; 20] = value.as_ref().try_into().ok()?;
        let segment = u64::from_be_bytes(at[..8].try_into().ok()?);
        let offset = u64::from_be_bytes(at[8..16].try_into().ok()?);
        let len = u32::from_be_bytes(at[16..].try_into().ok()?) as usize;
        let path = data.join("segments").join(format!("{segment:016x}.seg"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open a segment file");
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, offset)
            .expect("read a stored block");
        let markers = markers_in(&bytes);
        let flip = len / 2;
        file.write_all_at(&[bytes[flip] ^ 0x55], offset + flip as u64)
            .expect("damage a stored block");
        file.sync_all().expect("fsync the segment file");
        Damage::Block { part, markers }
    };
    db.flush().expect("flush the spool");
    Some(damage)
}

/// A random record under `tag` (part records or blocks), with the part it belongs to.
fn pick(db: &sled::Db, tag: u8, rng: &mut Rng) -> Option<(sled::IVec, sled::IVec, String)> {
    let records: Vec<_> = db.scan_prefix([tag]).filter_map(Result::ok).collect();
    if records.is_empty() {
        return None;
    }
    let (key, value) = records[rng.below(records.len() as u64) as usize].clone();
    let part = larch::spool::keys::parse_part(&key)?.to_string();
    Some((key, value, part))
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

/// Whether `key` is the name FORMAT.md gives a line of `account` at `ts`.
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Kill,
    Store(Mode),
    LongOutage,
    DiskFull,
    Damage,
    ClockJump,
    Multipart,
}

const STORE_MODES: [Mode; 5] = [
    Mode::Refuse,
    Mode::Reset,
    Mode::Stall,
    Mode::Status(500),
    Mode::Status(503),
];

/// Every kind of fault once, then a random mix.
fn fault_for(cycle: usize, rng: &mut Rng) -> Fault {
    let tour = [
        Fault::Store(Mode::Reset),
        Fault::ClockJump,
        Fault::DiskFull,
        Fault::Store(Mode::Stall),
        Fault::Damage,
        Fault::Store(Mode::Status(503)),
        Fault::Multipart,
        Fault::Store(Mode::Refuse),
        Fault::LongOutage,
        Fault::Store(Mode::Status(500)),
        Fault::Damage,
        Fault::Kill,
    ];
    if let Some(f) = tour.get(cycle) {
        return *f;
    }
    match rng.below(100) {
        0..=39 => Fault::Kill,
        40..=59 => Fault::Store(STORE_MODES[rng.below(5) as usize]),
        60..=71 => Fault::ClockJump,
        72..=81 => Fault::DiskFull,
        82..=89 => Fault::Damage,
        90..=94 => Fault::Multipart,
        _ => Fault::LongOutage,
    }
}

#[derive(Default)]
struct Tally {
    kills: u32,
    store_faults: u32,
    outages: u32,
    disk_full: u32,
    disk_full_refusals: u64,
    /// Kills while the disk was full, each followed by a start on the full disk.
    full_disk_restarts: u32,
    /// Episodes after which larch took lines again without being restarted.
    disk_full_recoveries: u32,
    damages: Vec<Damage>,
    clock_jumps: u32,
    bulk_rounds: u32,
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Steps larch's clock: it reads this file again within 100 ms.
fn set_clock(file: &Path, offset_ms: i64) {
    let text = if offset_ms < 0 {
        format!("-{}ms", -offset_ms)
    } else {
        format!("{offset_ms}ms")
    };
    std::fs::write(file, text).expect("write the clock offset");
}

#[test]
fn torture() {
    let cycles = env_number("LARCH_TORTURE_CYCLES").unwrap_or(20) as usize;
    let seed = env_number("LARCH_TORTURE_SEED").unwrap_or_else(|| now_ms() as u64);
    let long_outage = Duration::from_secs(env_number("LARCH_TORTURE_OUTAGE_S").unwrap_or(12));
    println!("torture: seed {seed}, {cycles} cycles (LARCH_TORTURE_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("spool");
    let disk = SmallDisk::mount_or_skip(&data, SPOOL_FS_BYTES);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let clock_file = dir.path().join("clock-offset");
    std::fs::write(&clock_file, "0s").unwrap();
    let mut clock_offset_ms = 0i64;

    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let proxy = FaultProxy::start(&moto.endpoint, Mode::Pass);

    let config = dir.path().join("larch.toml");
    let mut keys: String = ACCOUNTS
        .iter()
        .map(|a| format!("k-{a} = \"{a}\"\n"))
        .collect();
    keys.push_str("k-bulk = \"acct-bulk\"\n");
    std::fs::write(
        &config,
        format!(
            "[target]\nretry_max_delay = \"1s\"\n[spool]\nmin_free_space = \"8MiB\"\n\
             [keys]\n{keys}\
             [s3]\ntimeout = \"2s\"\n\
             [[sources.files]]\naccount = \"files\"\ninclude = [\"{}/*.log*\"]\n",
            logs.display()
        ),
    )
    .unwrap();
    let mut env = Moto::env(&proxy.endpoint);
    env.push((
        "LARCH_CLOCK_OFFSET_FILE".into(),
        clock_file.display().to_string(),
    ));
    let mut d = Daemon::start_with_env(&data, &larch_args(&config), &env);

    let stop = Arc::new(AtomicBool::new(false));
    let sent: Shared = Arc::default();
    let workers = start_load(&d.addr, &logs, &mut rng, &stop, &sent);

    let mut tally = Tally::default();
    let pause = |rng: &mut Rng, max_ms: u64| {
        std::thread::sleep(Duration::from_millis(20 + rng.below(max_ms)));
    };
    for cycle in 0..cycles {
        let fault = fault_for(cycle, &mut rng);
        match fault {
            Fault::Kill => {}
            Fault::Store(mode) => {
                tally.store_faults += 1;
                proxy.set(mode);
                pause(&mut rng, 3000);
                if rng.one_in(2) {
                    d.restart();
                    tally.kills += 1;
                    pause(&mut rng, 1500);
                }
                proxy.set(Mode::Pass);
            }
            Fault::LongOutage => {
                tally.store_faults += 1;
                tally.outages += 1;
                proxy.set(Mode::Refuse);
                std::thread::sleep(long_outage / 2);
                d.restart();
                tally.kills += 1;
                std::thread::sleep(long_outage / 2);
                proxy.set(Mode::Pass);
            }
            Fault::DiskFull => {
                let Some(disk) = &disk else { continue };
                tally.disk_full += 1;
                let refused_before = lock(&sent).statuses.get(&507).copied().unwrap_or(0);
                let filler = disk.fill();
                pause(&mut rng, 2500);
                if rng.one_in(2) {
                    // A crash while the disk is full: larch must start again on it.
                    d.restart();
                    tally.kills += 1;
                    tally.full_disk_restarts += 1;
                    pause(&mut rng, 1500);
                }
                // Clients must have been told to come back later, before any ack.
                let deadline = Instant::now() + Duration::from_secs(10);
                while lock(&sent).statuses.get(&507).copied().unwrap_or(0) == refused_before {
                    assert!(
                        Instant::now() < deadline,
                        "the spool's disk is full, yet no request was refused with 507"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                tally.disk_full_refusals +=
                    lock(&sent).statuses.get(&507).copied().unwrap_or(0) - refused_before;
                std::fs::remove_file(filler).expect("remove the filler file");
                // The same process takes lines again by itself, without a restart.
                let starts = d.starts();
                let acked_before = lock(&sent).statuses.get(&200).copied().unwrap_or(0);
                let deadline = Instant::now() + Duration::from_secs(30);
                while lock(&sent).statuses.get(&200).copied().unwrap_or(0) == acked_before {
                    assert!(
                        Instant::now() < deadline,
                        "space came back, but larch took no line for 30 s (seed {seed}); its log ends:\n{}",
                        d.log_tail(10)
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                assert_eq!(d.starts(), starts);
                tally.disk_full_recoveries += 1;
            }
            Fault::Damage => {
                d.kill9();
                tally.kills += 1;
                if let Some(damage) = damage_spool(&data, &mut rng) {
                    tally.damages.push(damage);
                }
                d.start_again();
            }
            Fault::ClockJump => {
                tally.clock_jumps += 1;
                // Anywhere from two hours back to two hours ahead of the wall clock.
                clock_offset_ms = (rng.below(241) as i64 - 120) * 60_000;
                set_clock(&clock_file, clock_offset_ms);
            }
            Fault::Multipart => {
                tally.bulk_rounds += 1;
                send_bulk(
                    &d.addr,
                    tally.bulk_rounds,
                    13 * 1024 * 1024,
                    &mut rng,
                    &sent,
                );
                // Step the clock past the end of the bulk lines' hour: the part
                // seals at once and goes up in pieces.
                let larch_now = now_ms() + clock_offset_ms;
                let hour_end = (larch_now / HOUR_MS + 1) * HOUR_MS;
                clock_offset_ms += hour_end - larch_now + 60_000 + rng.below(600_000) as i64;
                set_clock(&clock_file, clock_offset_ms);
                tally.clock_jumps += 1;
                pause(&mut rng, 3000);
            }
        }
        // Every cycle ends in a kill at a random moment.
        pause(&mut rng, 1200);
        d.restart();
        tally.kills += 1;
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a workload thread panicked");
    }
    proxy.set(Mode::Pass);

    let damaged: HashSet<&String> = tally
        .damages
        .iter()
        .flat_map(|d| match d {
            Damage::Block { markers, .. } => markers.iter().collect(),
            Damage::Record { .. } => Vec::new(),
        })
        .collect();
    let (archive, sent) = drain_and_read(&d, &moto, &sent, &damaged);
    let status = d.status();
    assert!(d.terminate().success(), "larch did not exit 0 on SIGTERM");
    let log = d.log();
    let verdict = Verdict::of(&archive, &sent, &damaged);
    let set_aside = sent
        .acked
        .iter()
        .filter(|m| !archive.markers.contains_key(*m) && damaged.contains(m))
        .count();
    let refused_absent = sent.refused.len() - verdict.refused_archived.len();
    let unanswered_archived = sent
        .unanswered
        .iter()
        .filter(|m| archive.markers.contains_key(*m))
        .count();

    println!(
        "torture: cycles {cycles}, kills {}, store faults {}, disk-full episodes {}, lines acked {}, archived {}, lost {}, duplicated {}, rejected-and-absent {}",
        tally.kills,
        tally.store_faults,
        tally.disk_full,
        sent.acked.len(),
        archive.markers.len(),
        verdict.lost.len(),
        verdict.duplicated(),
        refused_absent,
    );
    println!(
        "torture: seed {seed}, {:.0} s, {} objects, {} long outages, {} refused with 507 while the disk was full ({} starts on a full disk, {} recoveries without one), {} clock jumps, {} bulk parts ({} objects went up in parts), {} records damaged ({} lines set aside with them), {} lines unanswered ({} of them archived), answers {:?}",
        started.elapsed().as_secs_f64(),
        archive.objects.len(),
        tally.outages,
        tally.disk_full_refusals,
        tally.full_disk_restarts,
        tally.disk_full_recoveries,
        tally.clock_jumps,
        tally.bulk_rounds,
        multipart_objects(&log),
        tally.damages.len(),
        set_aside,
        sent.unanswered.len(),
        unanswered_archived,
        sent.statuses,
    );

    verdict.check(&archive, &sent, seed, &status);
    for damage in &tally.damages {
        let (part, why) = match damage {
            Damage::Block { part, markers } => {
                if markers.iter().all(|m| archive.markers.contains_key(m)) {
                    continue; // archived before the damage was done
                }
                (part, "block of")
            }
            Damage::Record { part } => (part, "part record of"),
        };
        assert!(
            log.contains(&format!("{why} {part}")),
            "a damaged record of {part} was not reported as set aside (seed {seed})"
        );
    }
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

/// How many objects larch logged as archived that were too big for one PUT
/// (over 8 MiB) and so went up as multipart uploads.
fn multipart_objects(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("archived"))
        .filter_map(|l| {
            let plain = strip_ansi(l);
            plain
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bytes="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .filter(|bytes| *bytes > 8 * 1024 * 1024)
        .count()
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

/// Where a power cut lands: at a random moment, or inside a chosen operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum CutAt {
    /// Anywhere: whatever larch was doing.
    Random,
    /// At a group commit's fsync of its segment file.
    SegmentFsync,
    /// At an fsync of sled's log: a commit's, a seal's or an upload's state.
    SledFsync,
    /// While a part is being staged (compressed for upload).
    Staging,
    /// While parts' objects are on their way to the store.
    Upload,
    /// At segment collection's removal of unreferenced segments.
    Collection,
}

const CUT_PLACES: [CutAt; 6] = [
    CutAt::Random,
    CutAt::SegmentFsync,
    CutAt::SledFsync,
    CutAt::Staging,
    CutAt::Upload,
    CutAt::Collection,
];

/// Arms the filesystem for a cut at `place` and waits until the power is
/// off there, or (if larch never got there in time) cuts it anyway. Returns
/// whether the cut landed where it was aimed.
fn power_off(
    fs: &forgetful::Forgetful,
    proxy: &FaultProxy,
    data: &Path,
    place: CutAt,
    rng: &mut Rng,
) -> bool {
    use forgetful::Op;
    // Segments hold the open parts of the current hour until it ends; a
    // drain seals those, so that after the uploads whole segments go.
    let mut drain = (place == CutAt::Collection).then(|| {
        Command::new(env!("CARGO_BIN_EXE_larch"))
            .args(["drain", "--timeout", "20s", "--data"])
            .arg(data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run larch drain")
    });
    let armed = match place {
        CutAt::Random => None,
        CutAt::SegmentFsync => Some((Op::Fsync, "segments/")),
        CutAt::SledFsync => Some((Op::Fsync, "spool/db")),
        CutAt::Staging => Some((Op::Write, "staging/")),
        // Removing old segments (those of earlier starts) ends in this.
        CutAt::Collection => Some((Op::FsyncDir, "segments")),
        CutAt::Upload => {
            // The store stalls every request (past larch's 2 s timeout), so
            // the uploads that parts sealing all the time start stay in flight.
            proxy.set(Mode::Stall);
            std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
            fs.freeze();
            proxy.set(Mode::Pass);
            return true;
        }
    };
    match armed {
        None => {
            std::thread::sleep(Duration::from_millis(50 + rng.below(2500)));
            fs.freeze();
            true
        }
        Some((op, path)) => {
            fs.freeze_on(op, Some(path), rng.below(4) as u32);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !fs.frozen() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let hit = fs.frozen();
            fs.freeze();
            if let Some(mut drain) = drain.take() {
                let _ = drain.kill();
                let _ = drain.wait();
            }
            hit
        }
    }
}

/// Power cuts under load: larch's data directory on a filesystem that keeps
/// only what was fsynced, the power cut at random moments and inside group
/// commits (at the segment's fsync and at sled's, which seals and uploads
/// also pass through), stagings, uploads and segment collections (sometimes tearing the last unsynced write of each file at a sector), and
/// larch started again on what survived. Checked at the end as above.
/// `LARCH_POWER_CUTS` sets the number of cuts (`scripts/torture.sh --power-cuts N`).
#[test]
fn power_cut_torture() {
    let cuts = env_number("LARCH_POWER_CUTS").unwrap_or(12) as usize;
    let seed = env_number("LARCH_TORTURE_SEED").unwrap_or_else(|| now_ms() as u64);
    println!(
        "torture: power cuts, seed {seed}, {cuts} cuts (LARCH_TORTURE_SEED={seed} replays it)"
    );
    let mut rng = Rng::new(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut fs = forgetful::Forgetful::mount(
        &mnt,
        &dir.path().join("backing"),
        forgetful::Options {
            capacity_bytes: None,
            seed,
        },
    )
    .expect("mount the forgetful filesystem (needs root and /dev/fuse)");
    // Made by larch, as on a host where nothing made it beforehand.
    let data = mnt.join("larch");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let proxy = FaultProxy::start(&moto.endpoint, Mode::Pass);
    let config = dir.path().join("larch.toml");
    let keys: String = ACCOUNTS
        .iter()
        .map(|a| format!("k-{a} = \"{a}\"\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "[target]\nretry_max_delay = \"1s\"\n[keys]\n{keys}[s3]\ntimeout = \"2s\"\n\
             [[sources.files]]\naccount = \"files\"\ninclude = [\"{}/*.log*\"]\n",
            logs.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start_logging_to(
        &format!("127.0.0.1:{}", common::free_port()),
        &data,
        &dir.path().join("larch.log"),
        &larch_args(&config),
        &Moto::env(&proxy.endpoint),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sent: Shared = Arc::default();
    let workers = start_load(&d.addr, &logs, &mut rng, &stop, &sent);

    let mut places: std::collections::BTreeMap<CutAt, u32> = Default::default();
    let (mut torn, mut lost_files, mut reverted) = (0u64, 0u64, 0u64);
    for cut in 0..cuts {
        // Some load first, so there is something to lose.
        std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
        let place = CUT_PLACES[cut % CUT_PLACES.len()];
        let hit = power_off(&fs, &proxy, &data, place, &mut rng);
        *places
            .entry(if hit { place } else { CutAt::Random })
            .or_default() += 1;
        d.kill9();
        let tear = match rng.below(3) {
            0 => forgetful::Tear::None,
            1 => forgetful::Tear::Sector(512),
            _ => forgetful::Tear::Sector(4096),
        };
        let report = fs.power_cut(tear).unwrap_or_else(|e| {
            panic!("cut {cut} of {cuts} (seed {seed}): cannot cut the power: {e}")
        });
        torn += report.writes_torn;
        lost_files += report.files_lost;
        reverted += report.names_reverted;
        // Starts on what survived, every time (start_again fails the test if not).
        d.start_again();
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a workload thread panicked");
    }
    let (archive, sent) = drain_and_read(&d, &moto, &sent, &HashSet::new());
    let status = d.status();
    assert!(d.terminate().success(), "larch did not exit 0 on SIGTERM");
    let verdict = Verdict::of(&archive, &sent, &HashSet::new());
    let inside: Vec<String> = places.iter().map(|(p, n)| format!("{p:?} {n}")).collect();
    println!(
        "torture: power cuts {cuts}, lines acked {}, archived {}, lost {}, duplicated {}, refused-and-archived {}",
        sent.acked.len(),
        archive.markers.len(),
        verdict.lost.len(),
        verdict.duplicated(),
        verdict.refused_archived.len(),
    );
    println!(
        "torture: seed {seed}, {:.0} s, {} objects, cuts at: {}; {torn} writes torn, {lost_files} files lost unsynced data, {reverted} names reverted; {} lines unanswered, answers {:?}",
        started.elapsed().as_secs_f64(),
        archive.objects.len(),
        inside.join(", "),
        sent.unanswered.len(),
        sent.statuses,
    );
    verdict.check(&archive, &sent, seed, &status);
    if cuts >= 2 * CUT_PLACES.len() {
        // Collection needs a whole segment to go, which a cut does not always find.
        for place in &CUT_PLACES[1..CUT_PLACES.len() - 1] {
            assert!(
                places.contains_key(place),
                "no cut landed at {place:?} (seed {seed}): the test no longer reaches it"
            );
        }
    }
    drop(fs);
}
