//! Kills and faults: SIGKILLs, store faults, a full disk, damaged records,
//! clock jumps and multipart uploads, cycle after cycle.

use super::*;
use std::io::Read;

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
    /// A block of lines, or a member (lines the spool compressed): larch
    /// sets it aside naming it (`record`) and its part; its lines are gone.
    Block {
        part: String,
        markers: Vec<String>,
        record: &'static str,
    },
    /// A part record: set aside and rebuilt, so its lines are still archived.
    Record { part: String },
}

/// Flips a byte in one stored record of a stopped larch: a block of lines or
/// a member in a segment file (two times in three) or a part record in sled.
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
        // Members are few beside blocks (one replaces about twenty): one
        // time in two, one of them if there is any.
        let pick_member = rng.one_in(2);
        let (_, value, part) = pick_where(&db, larch::spool::keys::BLOCK, rng, |v| {
            !pick_member || v.len() == 21
        })
        .or_else(|| pick(&db, larch::spool::keys::BLOCK, rng))?;
        // A block reference: segment, offset, length (big-endian); a
        // member's has an 'M' after them.
        let member = value.len() == 21 && value[20] == b'M';
        let at: &[u8; 20] = value.get(..20)?.try_into().ok()?;
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
        let markers = if member {
            // Record header (5 bytes), lines and NDJSON bytes (8 each), gzip.
            let mut ndjson = Vec::new();
            flate2::read::GzDecoder::new(bytes.get(21..)?)
                .read_to_end(&mut ndjson)
                .expect("a stored member decompresses");
            markers_in(&ndjson)
        } else {
            markers_in(&bytes)
        };
        let flip = len / 2;
        file.write_all_at(&[bytes[flip] ^ 0x55], offset + flip as u64)
            .expect("damage a stored block");
        file.sync_all().expect("fsync the segment file");
        Damage::Block {
            part,
            markers,
            record: if member { "member of" } else { "block of" },
        }
    };
    db.flush().expect("flush the spool");
    Some(damage)
}

/// A random record under `tag` (part records or blocks), with the part it belongs to.
fn pick(db: &sled::Db, tag: u8, rng: &mut Rng) -> Option<(sled::IVec, sled::IVec, String)> {
    pick_where(db, tag, rng, |_| true)
}

/// [`pick`] among the records whose value `keep` takes.
fn pick_where(
    db: &sled::Db,
    tag: u8,
    rng: &mut Rng,
    keep: impl Fn(&[u8]) -> bool,
) -> Option<(sled::IVec, sled::IVec, String)> {
    let records: Vec<_> = db
        .scan_prefix([tag])
        .filter_map(Result::ok)
        .filter(|(_, v)| keep(v))
        .collect();
    if records.is_empty() {
        return None;
    }
    let (key, value) = records[rng.below(records.len() as u64) as usize].clone();
    let part = larch::spool::keys::parse_part(&key)?.to_string();
    Some((key, value, part))
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
        "torture: seed {seed}, {:.0} s, {} objects, {} long outages, {} refused with 507 while the disk was full ({} starts on a full disk, {} recoveries without one), {} clock jumps, {} bulk parts ({} objects went up in parts), {} records damaged ({} of them members; {} lines set aside with them), {} lines unanswered ({} of them archived), answers {:?}",
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
        tally
            .damages
            .iter()
            .filter(|d| matches!(d, Damage::Block { record: "member of", .. }))
            .count(),
        set_aside,
        sent.unanswered.len(),
        unanswered_archived,
        sent.statuses,
    );

    verdict.check(&archive, &sent, seed, &status);
    for damage in &tally.damages {
        let (part, why) = match damage {
            Damage::Block {
                part,
                markers,
                record,
            } => {
                if markers.iter().all(|m| archive.markers.contains_key(m)) {
                    continue; // archived before the damage was done
                }
                (part, *record)
            }
            Damage::Record { part } => (part, "part record of"),
        };
        assert!(
            log.contains(&format!("{why} {part}")),
            "a damaged record of {part} was not reported as set aside (seed {seed})"
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
