//! A hostile client against a real `larch run`, while honest clients send
//! about 20,000 lines/s and check every answer: connections that send half a
//! request head, idle kept-alive connections, bodies with every field at its
//! limit and the most lines a body can hold, gzip bombs at once, bodies over
//! the limit, broken text and deep nesting, wrong keys in a loop. It prints a
//! summary line and fails if an acknowledged honest line is missing from the
//! archive, if larch's peak memory passes 256 MB, if a half-head connection
//! outlives the header timeout by far, or if `/health` stops answering.
//!
//! (Just over 500 lines: each attack is a few lines, run side by side with the
//! honest clients and the measurements they are judged by.)

use crate::common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{agent, gzip, Daemon};
use serde_json::json;

const KEY: &str = "honest-key";
const HOSTILE_KEY: &str = "hostile-key";
const HONEST_CLIENTS: usize = 4;
/// Lines per honest request; each client sends about five a second.
const HONEST_BATCH: usize = 1000;
const PEAK_RSS_LIMIT: u64 = 256 << 20;
const HEADER_TIMEOUT_S: u64 = 10;
const IDLE_TIMEOUT_S: u64 = 10;

#[derive(Default)]
struct Honest {
    acked: HashSet<String>,
    latencies: Vec<Duration>,
    refusals: u64,
}

/// One honest client: a kept-alive connection, batches of marked lines, and
/// every refused or failed request sent again until it is acknowledged.
fn honest_client(addr: String, client: usize, stop: Arc<AtomicBool>, seen: Arc<Mutex<Honest>>) {
    let http = agent();
    let url = format!("http://{addr}/logs/ingest?hostname=honest-{client}");
    let mut batch = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let markers: Vec<String> = (0..HONEST_BATCH)
            .map(|i| format!("honest-{client}-{batch}-{i}"))
            .collect();
        let body = json!({"lines": markers.iter().map(|m| json!({"line": m, "app": "honest"})).collect::<Vec<_>>()})
            .to_string();
        loop {
            let started = Instant::now();
            let answer = http
                .post(&url)
                .header("apikey", KEY)
                .header("Content-Type", "application/json")
                .send(body.as_bytes());
            match answer {
                Ok(r) if r.status() == 200 => {
                    let mut seen = seen.lock().unwrap();
                    seen.latencies.push(started.elapsed());
                    seen.acked.extend(markers.iter().cloned());
                    break;
                }
                Ok(r) => {
                    assert!(
                        [429, 503, 507].contains(&r.status().as_u16()),
                        "an honest request got {}",
                        r.status()
                    );
                    seen.lock().unwrap().refusals += 1;
                }
                Err(_) => seen.lock().unwrap().refusals += 1,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        batch += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// Asks `/health` every 200 ms on one kept-alive connection; counts misses.
fn health_watch(addr: String, stop: Arc<AtomicBool>, misses: Arc<AtomicU64>) {
    let http = agent();
    while !stop.load(Ordering::Relaxed) {
        let ok = http
            .get(format!("http://{addr}/health"))
            .call()
            .is_ok_and(|r| r.status() == 200);
        if !ok {
            misses.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Peak resident memory of a process, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn connect(addr: &str) -> Option<TcpStream> {
    let stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .ok()?;
    Some(stream)
}

/// Whether larch has closed its end: a read sees the end of the stream (or an
/// error), not a timeout.
fn closed_by_larch(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // An answer (a 503 for a refused connection, say), then the close.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Opens `n` connections with `send` and returns how long until larch had
/// closed every one (or `None` if some were still open after `limit`).
fn hold_connections(addr: &str, n: usize, send: &[u8], limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut open: Vec<TcpStream> = (0..n)
        .filter_map(|_| {
            let mut s = connect(addr)?;
            let _ = s.write_all(send);
            Some(s)
        })
        .collect();
    while started.elapsed() < limit {
        open.retain_mut(|s| !closed_by_larch(s));
        if open.is_empty() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// `{"lines":[{"line":"x"},...]}` with as many lines as fit in `size` bytes.
fn tiny_lines(size: usize) -> Vec<u8> {
    let mut body = br#"{"lines":["#.to_vec();
    while body.len() + 16 < size {
        body.extend_from_slice(br#"{"line":"x"},"#);
    }
    body.pop();
    body.extend_from_slice(b"]}");
    body
}

fn post(addr: &str, query: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let http = agent();
    let mut req = http
        .post(format!("http://{addr}/logs/ingest{query}"))
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send(body) {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[test]
fn hostile_clients_cannot_hurt_the_host_or_the_honest_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = Daemon::start(
        &data,
        &[
            "--key",
            &format!("{KEY}=acme"),
            "--key",
            &format!("{HOSTILE_KEY}=mallory"),
            "--late-window",
            "6h",
            "--set",
            &format!("ingest.header_timeout={HEADER_TIMEOUT_S}s"),
            "--set",
            &format!("ingest.idle_timeout={IDLE_TIMEOUT_S}s"),
        ],
    );
    let addr = d.addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Honest::default()));
    let misses = Arc::new(AtomicU64::new(0));
    let health = {
        let (addr, stop, misses) = (addr.clone(), stop.clone(), misses.clone());
        std::thread::spawn(move || health_watch(addr, stop, misses))
    };
    let honest: Vec<_> = (0..HONEST_CLIENTS)
        .map(|c| {
            let (addr, stop, seen) = (addr.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || honest_client(addr, c, stop, seen))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let mut report = Vec::new();

    // Half a request head, then nothing.
    let half_head = hold_connections(
        &addr,
        2000,
        b"POST /logs/ingest HTTP/1.1\r\nHost: larch\r\nContent-Ty",
        Duration::from_secs(30),
    );
    report.push(format!(
        "half-head connections closed after {half_head:?} (/health misses {})",
        misses.load(Ordering::Relaxed)
    ));

    // One whole request each, then idle on the kept-alive connection.
    let idle = hold_connections(
        &addr,
        2000,
        b"GET /health HTTP/1.1\r\nHost: larch\r\n\r\n",
        Duration::from_secs(IDLE_TIMEOUT_S + 20),
    );
    report.push(format!(
        "idle connections closed after {idle:?} (/health misses {})",
        misses.load(Ordering::Relaxed)
    ));

    // Every request field at its limit, and as many one-byte lines as a body holds.
    let tags: Vec<String> = (0..32).map(|i| format!("{i:0>80}")).collect();
    let query = format!(
        "?hostname={}&ip=2001:db8:ffff:ffff:ffff:ffff:ffff:ffff&mac=00:1a:2b:3c:4d:5e&tags={}",
        "h".repeat(256),
        tags.join(",")
    );
    let widest = post(
        &addr,
        &query,
        &[("apikey", HOSTILE_KEY)],
        &tiny_lines(10_000_000),
    );
    let too_many_tags = format!("?tags={}", vec!["t"; 2000].join(","));
    let over_tags = post(
        &addr,
        &too_many_tags,
        &[("apikey", HOSTILE_KEY)],
        &tiny_lines(1_000_000),
    );
    let long_ip = post(
        &addr,
        &format!("?ip={}", "1".repeat(4096)),
        &[("apikey", HOSTILE_KEY)],
        &tiny_lines(1_000_000),
    );
    report.push(format!(
        "widest body {widest}, 2000 tags {over_tags}, 4 KB ip {long_ip}"
    ));
    assert_eq!(widest, 200, "a body at every limit is valid");
    assert_eq!((over_tags, long_ip), (400, 400));

    // Twenty gzip bombs at once: 10 MB of one-byte lines each after gunzip.
    let bomb = Arc::new(gzip(&tiny_lines(10_000_000)));
    let bombs: Vec<_> = (0..20)
        .map(|_| {
            let (addr, bomb) = (addr.clone(), bomb.clone());
            std::thread::spawn(move || {
                post(
                    &addr,
                    "",
                    &[("apikey", HOSTILE_KEY), ("Content-Encoding", "gzip")],
                    &bomb,
                )
            })
        })
        .collect();
    let mut bomb_answers: Vec<u16> = bombs.into_iter().map(|b| b.join().unwrap()).collect();
    bomb_answers.sort();
    report.push(format!(
        "gzip bombs answered {bomb_answers:?} (/health misses {})",
        misses.load(Ordering::Relaxed)
    ));
    assert!(
        bomb_answers.iter().all(|s| [200, 503].contains(s)),
        "{bomb_answers:?}"
    );

    // Over the limit, said up front and not.
    let over = post(
        &addr,
        "",
        &[("apikey", HOSTILE_KEY)],
        &tiny_lines(11_000_000),
    );
    let over_gzip = post(
        &addr,
        "",
        &[("apikey", HOSTILE_KEY), ("Content-Encoding", "gzip")],
        &gzip(&tiny_lines(11_000_000)),
    );
    assert_eq!((over, over_gzip), (413, 413));

    // Text that is not UTF-8, and meta nested far too deep.
    let mut broken = br#"{"lines":[{"line":"x"#.to_vec();
    broken.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    broken.extend_from_slice(br#""}]}"#);
    let deep = format!(
        r#"{{"lines":[{{"line":"x","meta":{}{}}}]}}"#,
        "{\"a\":".repeat(100_000),
        "}".repeat(100_000)
    );
    assert_eq!(post(&addr, "", &[("apikey", HOSTILE_KEY)], &broken), 400);
    assert_eq!(
        post(&addr, "", &[("apikey", HOSTILE_KEY)], deep.as_bytes()),
        400
    );

    // Wrong keys in a loop.
    let wrong_started = Instant::now();
    let mut wrong = 0;
    while wrong_started.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            post(&addr, "", &[("apikey", &format!("guess-{wrong}"))], b"{}"),
            401
        );
        wrong += 1;
    }
    report.push(format!("{wrong} wrong keys refused"));

    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for h in honest {
        h.join().unwrap();
    }
    health.join().unwrap();
    let peak = peak_rss(d.pid());

    // Every acknowledged honest line reaches the archive.
    let drained = std::process::Command::new(env!("CARGO_BIN_EXE_larch"))
        .args([
            "drain",
            "--data",
            &data.display().to_string(),
            "--timeout",
            "300s",
        ])
        .output()
        .unwrap();
    assert!(
        drained.status.success(),
        "drain failed: {}",
        String::from_utf8_lossy(&drained.stderr)
    );
    d.terminate();
    let archived = archived_lines(&data.join("archive"), "acme");
    let seen = seen.lock().unwrap();
    let lost = seen.acked.difference(&archived).count();
    let mut latencies = seen.latencies.clone();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "hostile: peak RSS {} MB, honest lines acked {}, lost {lost}, p99 {:.0} ms, refusals {}, /health misses {}; {}",
        peak >> 20,
        seen.acked.len(),
        p99.as_secs_f64() * 1000.0,
        seen.refusals,
        misses.load(Ordering::Relaxed),
        report.join("; ")
    );
    assert!(
        !seen.acked.is_empty(),
        "the honest clients got nothing through"
    );
    assert_eq!(
        lost, 0,
        "acknowledged honest lines are missing from the archive"
    );
    assert!(
        peak > 0 && peak < PEAK_RSS_LIMIT,
        "peak RSS {} MB",
        peak >> 20
    );
    assert!(
        half_head.is_some_and(|t| t < Duration::from_secs(30)),
        "half-head connections stayed open: {half_head:?}"
    );
    assert!(
        idle.is_some(),
        "idle connections stayed open past the idle timeout"
    );
    assert_eq!(
        misses.load(Ordering::Relaxed),
        0,
        "/health stopped answering"
    );
}

/// The `_line` of every archived line of `account` (other accounts' objects
/// are not read: the hostile ones hold millions of lines).
fn archived_lines(dir: &std::path::Path, account: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name.starts_with(&format!("{account}.")) && name.ends_with(".json.gz") {
                let mut text = String::new();
                flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap())
                    .read_to_string(&mut text)
                    .unwrap();
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    found.insert(v["_line"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
    }
    found
}

/// Reads one answer on `stream`: until its body is complete, larch closes the
/// connection, or `limit` passes.
fn answer_of(stream: &mut TcpStream, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        let answer = String::from_utf8_lossy(&text);
        if let Some((head, body)) = answer.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn a_body_that_trickles_past_the_body_timeout_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("data"),
        &[
            "--key",
            &format!("{KEY}=acme"),
            "--set",
            "ingest.body_timeout=2s",
        ],
    );
    let mut slow = TcpStream::connect(&d.addr).unwrap();
    let started = Instant::now();
    slow.write_all(
        format!(
            "POST /logs/ingest HTTP/1.1\r\nHost: larch\r\napikey: {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"lines\":["
        )
        .as_bytes(),
    )
    .unwrap();
    let answer = answer_of(&mut slow, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn at_the_cap_the_connection_waiting_longest_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--set", "ingest.max_connections=3"],
    );
    // Three connections that say nothing hold every slot.
    let mut silent: Vec<TcpStream> = (0..3)
        .map(|_| {
            let s = TcpStream::connect(&d.addr).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A new one is served, and the oldest silent one is gone.
    let mut fresh = TcpStream::connect(&d.addr).unwrap();
    fresh
        .write_all(b"GET /health HTTP/1.1\r\nHost: larch\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = answer_of(&mut fresh, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        answer_of(&mut silent[0], Duration::from_secs(2)),
        "",
        "closed, unanswered"
    );
    silent[2]
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(silent[2].read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the newest silent connection stays"
    );
}
