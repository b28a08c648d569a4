//! Kill -9 at random moments while clients send lines: every line that got a
//! 200 is archived exactly once, and no line that got an error is archived.
//!
//! `LARCH_CRASH_KILLS` sets the number of kills (default 24), `LARCH_CRASH_SEED`
//! replays a run.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{hours_ago, read_archive, Daemon, Rng};
use serde_json::{json, Value};

#[derive(Default)]
struct Outcomes {
    acked: HashSet<String>,
    rejected: HashSet<String>,
    unknown: HashSet<String>,
    requests: u64,
}

fn client(
    d_addr: String,
    key: String,
    client: u32,
    seed: u64,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Outcomes>>,
) {
    let mut rng = Rng::new(seed);
    let agent = common::agent();
    let mut request = 0u64;
    while !stop.load(Ordering::Relaxed) {
        request += 1;
        let n = 1 + rng.below(300) as usize;
        let invalid = rng.below(10) == 0;
        let mut markers = Vec::with_capacity(n);
        let mut lines = Vec::with_capacity(n);
        for i in 0..n {
            let marker = format!("c{client}-r{request}-l{i}");
            // Spread over three earlier hours so parts seal, compress and upload all the time.
            let ts = hours_ago(1 + rng.below(3) as i64, rng.below(3_600_000) as i64);
            let pad = "p".repeat(rng.below(400) as usize);
            let mut line =
                json!({"timestamp": ts, "line": format!("{marker} {pad}"), "app": "crash"});
            if invalid && i == n - 1 {
                line["meta"] = json!({"too_big": "m".repeat(33 * 1024)});
            }
            lines.push(line);
            markers.push(marker);
        }
        let body = json!({"lines": lines}).to_string();
        let result = agent
            .post(format!("http://{d_addr}/logs/ingest"))
            .header("apikey", &key)
            .header("Content-Type", "application/json")
            .send(body.as_bytes());
        let mut o = out.lock().unwrap();
        o.requests += 1;
        let bucket = match result {
            Ok(r) if r.status() == 200 => {
                assert!(!invalid, "an invalid request was acknowledged");
                &mut o.acked
            }
            Ok(_) => &mut o.rejected,
            Err(_) => &mut o.unknown,
        };
        bucket.extend(markers);
        drop(o);
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(30)));
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let kills: u32 = std::env::var("LARCH_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(24);
    let seed: u64 = std::env::var("LARCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| common::now_ms() as u64);
    println!("crash test: seed {seed}, {kills} kills");
    let mut rng = Rng::new(seed);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let accounts = ["acct-a", "acct-b", "acct-c"];
    let key_args: Vec<String> = accounts.iter().map(|a| format!("k-{a}={a}")).collect();
    let mut args = vec!["--late-window", "0s", "--follow-up-after", "300ms"];
    for k in &key_args {
        args.push("--key");
        args.push(k);
    }
    let mut d = Daemon::start(&data, &args);

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let clients: Vec<_> = (0..4u32)
        .map(|c| {
            let (addr, stop, out) = (d.addr.clone(), stop.clone(), outcomes.clone());
            let key = format!("k-{}", accounts[c as usize % accounts.len()]);
            let client_seed = rng.next();
            std::thread::spawn(move || client(addr, key, c, client_seed, stop, out))
        })
        .collect();

    let started = Instant::now();
    for _ in 0..kills {
        // Random moments: some right after a start (recovery, resumed uploads),
        // most while commits, seals, compression and uploads are in flight.
        std::thread::sleep(Duration::from_millis(20 + rng.below(700)));
        d.restart();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread panicked");
    }
    let status = d.wait_drained(Duration::from_secs(120));
    assert!(d.terminate().success(), "larch did not exit 0 on SIGTERM");

    let o = outcomes.lock().unwrap();
    let mut seen_markers: HashMap<String, u32> = HashMap::new();
    let mut seen_ids: HashMap<String, u32> = HashMap::new();
    let objects = read_archive(&data.join("archive"));
    for (key, lines) in &objects {
        for l in lines {
            let text = l["_line"].as_str().unwrap();
            let marker = text.split(' ').next().unwrap().to_owned();
            *seen_markers.entry(marker).or_default() += 1;
            *seen_ids
                .entry(l["_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
            assert!(
                key.contains(l["_account"].as_str().unwrap()),
                "{key} holds a line of {}",
                l["_account"]
            );
            let ts = l["_ts"].as_i64().unwrap();
            let stamp = chrono::DateTime::from_timestamp_millis(ts)
                .unwrap()
                .format(".%Y-%m-%d.%H00")
                .to_string();
            assert!(key.contains(&stamp), "{key} holds a line stamped {ts}");
        }
    }
    let lost: Vec<_> = o
        .acked
        .iter()
        .filter(|m| !seen_markers.contains_key(*m))
        .collect();
    let duplicated: Vec<_> = seen_markers
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, _)| m)
        .collect();
    let rejected_present: Vec<_> = o
        .rejected
        .iter()
        .filter(|m| seen_markers.contains_key(*m))
        .collect();
    let duplicate_ids = seen_ids.values().filter(|n| **n > 1).count();
    let unknown_archived = o
        .unknown
        .iter()
        .filter(|m| seen_markers.contains_key(*m))
        .count();
    let stray: Vec<_> = seen_markers
        .keys()
        .filter(|m| !o.acked.contains(*m) && !o.unknown.contains(*m) && !o.rejected.contains(*m))
        .collect();
    println!(
        "crash test: {kills} kills in {:.1}s, {} starts, {} requests, {} objects; lines acked {}, archived {}, lost {}, duplicated {}, rejected {} (archived {}), unanswered {} (archived {})",
        started.elapsed().as_secs_f64(),
        d.starts(),
        o.requests,
        objects.len(),
        o.acked.len(),
        seen_markers.len(),
        lost.len(),
        duplicated.len(),
        o.rejected.len(),
        rejected_present.len(),
        o.unknown.len(),
        unknown_archived,
    );
    println!("final status: {status}");
    assert!(
        o.acked.len() > 1000,
        "too few lines acknowledged to mean anything"
    );
    assert!(
        !o.rejected.is_empty(),
        "no request was rejected; the test lost its negative case"
    );
    assert!(
        lost.is_empty(),
        "{} acked lines lost, e.g. {:?} (seed {seed})",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "lines archived twice, e.g. {:?} (seed {seed})",
        &duplicated[..duplicated.len().min(5)]
    );
    assert_eq!(duplicate_ids, 0, "line IDs repeated (seed {seed})");
    assert!(
        rejected_present.is_empty(),
        "rejected lines archived, e.g. {:?} (seed {seed})",
        &rejected_present[..rejected_present.len().min(5)]
    );
    assert!(stray.is_empty(), "archived lines no client sent: {stray:?}");
    let _: &Value = &status;
}
