//! `larch-bench`: the load generator and machine baselines behind `scripts/bench.sh`.
//!
//! - `load`: concurrent clients POST Mezmo bodies to a running larch and report
//!   lines/s, MB/s and request latency percentiles (as JSON on stdout);
//! - `fsync`: sequential write + fsync throughput of a directory's disk;
//! - `deflate`: each deflate implementation larch could use (zlib-rs, today's,
//!   and libdeflate), at several levels, on NDJSON in staging's 1 MiB pieces;
//! - `gzip`: single-core gzip throughput on log lines like the ones `load` sends,
//!   or on the NDJSON inside archive objects larch wrote;
//! - `drain`: waits for a running larch to upload everything and reports how
//!   fast it went, when the first object landed, and what it cost (polling
//!   cheaply, so the waiting itself takes no CPU from larch).
//!
//! - `rate`: uploads objects of known size to a target, several at once, under
//!   `target.upload_rate_limit`, and reports the rate they achieved together.
//!
//! - `fleet`: many writers in one process, each with its own spool and sync
//!   loop, archive one account-hour into one bucket at once (`fleet.rs`).
//!
//! - `syslog`, `journal-export` and `load --otlp`: the other sources' load
//!   (`sources.rs`).
//!
//! Every figure is printed as JSON so the script can put them in one table.
//!
//! (Over 500 lines: one command per subcommand, each a page that shares only the
//! argument parsing; none of it is part of larch itself.)

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;

mod fleet;
mod sources;

#[derive(Parser)]
#[command(name = "larch-bench", about = "Load generator and baselines for larch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send lines to a running larch and measure throughput and latency.
    Load(LoadPlan),
    /// Send syslog over TCP to a larch listener as fast as it goes.
    Syslog(sources::SyslogPlan),
    /// Journal entries in export format, for systemd-journal-remote.
    JournalExport(sources::JournalPlan),
    /// Sequential write + fsync throughput in a directory.
    Fsync {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 256)]
        mib: usize,
    },
    /// fdatasync latency on a directory's disk while something else runs:
    /// a small append and an fdatasync every `--every`, for `--duration`.
    /// An ack waits for at least one such fsync, so its percentiles are
    /// the floor under larch's own on the same disk at the same time.
    FsyncProbe {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "30s")]
        duration: humantime::Duration,
        #[arg(long, default_value = "20ms")]
        every: humantime::Duration,
    },
    /// Single-core speed and ratio of each deflate implementation larch
    /// could use, on the NDJSON cut into pieces as staging cuts it.
    Deflate {
        #[arg(long, default_value_t = 64)]
        mib: usize,
        /// Levels to try, comma-separated.
        #[arg(long, default_value = "1,6,9", value_delimiter = ',')]
        levels: Vec<u32>,
        /// Bytes of NDJSON per gzip member (staging's pieces are 1 MiB).
        #[arg(long, default_value_t = 1 << 20)]
        piece: usize,
        #[arg(long, default_value_t = 300)]
        line_bytes: usize,
        /// Compress the NDJSON in these archive objects instead of generated lines.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Single-core gzip throughput on generated log lines.
    Gzip {
        #[arg(long, default_value_t = 200)]
        mib: usize,
        #[arg(long, default_value_t = 6)]
        level: u32,
        #[arg(long, default_value_t = 300)]
        line_bytes: usize,
        /// Compress the NDJSON in these archive objects (`*.json.gz` under the
        /// directory) instead of generated lines: the very bytes larch compressed.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Upload objects to a target concurrently under an upload rate limit and
    /// report the rate achieved (the cloud store's settings come from AWS_* etc.).
    Rate {
        /// Target URL, e.g. s3://bucket/prefix.
        #[arg(long)]
        target: String,
        /// The limit, e.g. 1MiB/s.
        #[arg(long, default_value = "1MiB/s")]
        rate: String,
        /// How long the uploads should take at that rate.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Uploads running at once, sharing the limit.
        #[arg(long, default_value_t = 3)]
        uploads: u64,
    },
    /// Many writers (larch's spool and sync loop each) archive one account-hour
    /// into one bucket at once; requests and bytes from the counting proxy.
    Fleet(fleet::FleetPlan),
    /// Wait until a running larch has nothing left to upload; report drain speed.
    Drain {
        #[arg(long)]
        addr: String,
        /// larch's process ID, for its CPU time and peak memory.
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value = "30m")]
        timeout: humantime::Duration,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(plan) => load(plan),
        Command::Syslog(plan) => sources::syslog(plan),
        Command::JournalExport(plan) => sources::journal_export(plan),
        Command::Fsync { dir, mib } => fsync(&dir, mib),
        Command::FsyncProbe {
            dir,
            duration,
            every,
        } => fsync_probe(&dir, *duration, *every),
        Command::Deflate {
            mib,
            levels,
            piece,
            line_bytes,
            archive,
        } => deflate(mib, &levels, piece, line_bytes, archive.as_deref()),
        Command::Gzip {
            mib,
            level,
            line_bytes,
            archive,
        } => gzip(mib, level, line_bytes, archive.as_deref()),
        Command::Drain { addr, pid, timeout } => drain(&addr, pid, *timeout),
        Command::Fleet(plan) => fleet::fleet(&plan),
        Command::Rate {
            target,
            rate,
            seconds,
            uploads,
        } => upload_rate(&target, &rate, seconds, uploads),
    }
}

/// A deterministic stream of pseudo-random numbers (splitmix64), so runs compare.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A log line of about `len` bytes, like an application's access log: fixed
/// words, and ids, addresses and numbers that vary, so it compresses about as
/// well as real logs (4 to 5 times with gzip -6).
pub(crate) fn log_line(n: u64, len: usize) -> String {
    const PATHS: [&str; 6] = [
        "/api/v1/orders",
        "/api/v1/users",
        "/health",
        "/static/app.js",
        "/api/v2/search",
        "/login",
    ];
    const AGENTS: [&str; 4] = [
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0",
        "curl/8.5.0",
        "okhttp/4.12.0",
        "Go-http-client/1.1",
    ];
    const WORDS: [&str; 16] = [
        "cache", "miss", "retry", "upstream", "timeout", "user", "session", "token", "queue",
        "shard", "replica", "lag", "commit", "batch", "flush", "index",
    ];
    let r = |k: u64| mix(n.wrapping_mul(31).wrapping_add(k));
    let mut line = format!(
        "10.{}.{}.{} - - \"{} {}/{}?page={} HTTP/1.1\" {} {} \"{}\" rt={}ms trace={:016x}{:08x}",
        r(1) % 256,
        r(2) % 256,
        r(3) % 256,
        ["GET", "POST", "GET", "PUT"][(r(4) % 4) as usize],
        PATHS[(r(5) % 6) as usize],
        r(6) % 100_000,
        r(7) % 50,
        [200, 200, 200, 201, 304, 404, 500][(r(8) % 7) as usize],
        r(9) % 200_000,
        AGENTS[(r(10) % 4) as usize],
        r(11) % 2_000,
        r(12),
        r(13) as u32,
    );
    let mut k = 14;
    while line.len() < len {
        line.push(' ');
        line.push_str(WORDS[(r(k) % 16) as usize]);
        line.push_str(&format!("={}", r(k + 1) % 10_000));
        k += 2;
    }
    line.truncate(len);
    line
}

#[derive(clap::Args)]
struct LoadPlan {
    #[arg(long, default_value = "127.0.0.1:7280")]
    addr: String,
    #[arg(long, default_value = "larch-demo-key")]
    key: String,
    /// Spread requests over this many accounts, using keys KEY0, KEY1, ...
    /// (1: the key as given).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    lines_per_request: usize,
    /// Approximate length of each line's text.
    #[arg(long, default_value_t = 300)]
    line_bytes: usize,
    #[arg(long, default_value = "20s")]
    duration: humantime::Duration,
    /// Lines per second for all clients together; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Stamp lines this many hours back (spread over that many hours), so
    /// they seal at once with `--late-window 0s`; 0 stamps them now.
    #[arg(long, default_value_t = 0)]
    hours_back: i64,
    /// Send OTLP/HTTP logs (protobuf, to /v1/logs) instead of Mezmo bodies.
    #[arg(long)]
    otlp: bool,
}

fn body(plan: &LoadPlan, seq: u64) -> Vec<u8> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    if plan.otlp {
        let first = seq * plan.lines_per_request as u64;
        return sources::otlp_body(first, plan.lines_per_request, plan.line_bytes, now_ms);
    }
    let mut out = Vec::with_capacity(plan.lines_per_request * (plan.line_bytes + 64));
    out.extend_from_slice(b"{\"lines\":[");
    for i in 0..plan.lines_per_request as u64 {
        let n = seq * plan.lines_per_request as u64 + i;
        if i > 0 {
            out.push(b',');
        }
        let ts = if plan.hours_back > 0 {
            now_ms - 3_600_000 * (1 + (n as i64 % plan.hours_back))
        } else {
            now_ms
        };
        let entry = json!({"timestamp": ts, "line": log_line(n, plan.line_bytes), "app": "bench"});
        out.extend_from_slice(entry.to_string().as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// Posts one body and reads the answer to its end, which gives the
/// connection back to the agent: shippers keep their connections open, and
/// a new connection for every request would be measured as larch's cost.
fn post(
    agent: &ureq::Agent,
    url: &str,
    key: &str,
    content_type: &str,
    body: &[u8],
) -> Result<u16, ureq::Error> {
    let mut answer = agent
        .post(url)
        .header("apikey", key)
        .header("Content-Type", content_type)
        .send(body)?;
    answer.body_mut().read_to_vec()?;
    Ok(answer.status().as_u16())
}

/// Distinct bodies each client cycles through.
const BODIES_PER_CLIENT: u64 = 8;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn load(plan: LoadPlan) -> anyhow::Result<()> {
    let plan = Arc::new(plan);
    let (url, content_type) = if plan.otlp {
        (
            format!("http://{}/v1/logs", plan.addr),
            "application/x-protobuf",
        )
    } else {
        (
            format!("http://{}/logs/ingest?hostname=bench", plan.addr),
            "application/json",
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let lines_ok = Arc::new(AtomicU64::new(0));
    let bytes_ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let seq = Arc::new(AtomicU64::new(0));
    let per_request = if plan.rate > 0 {
        Some(Duration::from_secs_f64(
            plan.lines_per_request as f64 * plan.clients as f64 / plan.rate as f64,
        ))
    } else {
        None
    };
    let ready = Arc::new(std::sync::Barrier::new(plan.clients + 1));
    let mut threads = Vec::new();
    for client in 0..plan.clients {
        let (plan, url, stop) = (plan.clone(), url.clone(), stop.clone());
        let (lines_ok, bytes_ok, failures) = (lines_ok.clone(), bytes_ok.clone(), failures.clone());
        let (latencies, seq, ready) = (latencies.clone(), seq.clone(), ready.clone());
        threads.push(std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into();
            // Bodies are built before the clock starts, so the generator's own
            // CPU does not compete with larch's on a small machine.
            let pool: Vec<Vec<u8>> = (0..BODIES_PER_CLIENT)
                .map(|_| body(&plan, seq.fetch_add(1, Ordering::Relaxed)))
                .collect();
            let mut sent_count = 0usize;
            let mut mine = Vec::new();
            ready.wait();
            // Stagger paced clients so their requests spread over the interval.
            let mut next = Instant::now()
                + per_request.map_or(Duration::ZERO, |p| {
                    p.mul_f64(client as f64 / plan.clients as f64)
                });
            while !stop.load(Ordering::Relaxed) {
                if per_request.is_some() {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                }
                let body = &pool[sent_count % pool.len()];
                let key = if plan.accounts > 1 {
                    format!(
                        "{}{}",
                        plan.key,
                        (sent_count * plan.clients + client) % plan.accounts
                    )
                } else {
                    plan.key.clone()
                };
                sent_count += 1;
                let sent = Instant::now();
                let result = post(&agent, &url, &key, content_type, body);
                let took = sent.elapsed();
                match result {
                    Ok(200) => {
                        lines_ok.fetch_add(plan.lines_per_request as u64, Ordering::Relaxed);
                        bytes_ok.fetch_add(body.len() as u64, Ordering::Relaxed);
                        mine.push(took.as_secs_f64() * 1000.0);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(p) = per_request {
                    next += p;
                }
            }
            if let Ok(mut all) = latencies.lock() {
                all.extend(mine);
            }
        }));
    }
    ready.wait();
    let start = Instant::now();
    std::thread::sleep(*plan.duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let lines = lines_ok.load(Ordering::Relaxed);
    let report = json!({
        "lines": lines,
        "seconds": elapsed,
        "lines_per_s": lines as f64 / elapsed,
        "mb_per_s": bytes_ok.load(Ordering::Relaxed) as f64 / elapsed / 1e6,
        "requests": lat.len(),
        "failed_requests": failures.load(Ordering::Relaxed),
        "p50_ms": percentile(&lat, 0.50),
        "p99_ms": percentile(&lat, 0.99),
        "max_ms": lat.last().copied().unwrap_or(0.0),
    });
    println!("{report}");
    if lines == 0 {
        bail!("no request succeeded: is larch running on {}?", plan.addr);
    }
    Ok(())
}

fn fsync(dir: &std::path::Path, mib: usize) -> anyhow::Result<()> {
    let path = dir.join(format!("larch-bench-fsync.{}", std::process::id()));
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        for i in 0..mib {
            f.write_all(&chunk)?;
            // An fsync every 8 MiB, like a busy group commit.
            if i % 8 == 7 {
                f.sync_data()?;
            }
        }
        f.sync_all()
    })();
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{}",
        json!({"mb_per_s": (mib << 20) as f64 / secs / 1e6, "mib": mib, "seconds": secs})
    );
    Ok(())
}

fn fsync_probe(
    dir: &std::path::Path,
    duration: std::time::Duration,
    every: std::time::Duration,
) -> anyhow::Result<()> {
    let path = dir.join(format!("larch-bench-probe.{}", std::process::id()));
    let block = [0x5au8; 4096];
    let mut waits = Vec::new();
    let start = Instant::now();
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        while start.elapsed() < duration {
            let tick = Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            waits.push(tick.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(every.saturating_sub(tick.elapsed()));
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("writing {}", path.display()))?;
    waits.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "fsyncs": waits.len(),
            "p50_ms": percentile(&waits, 0.5),
            "p99_ms": percentile(&waits, 0.99),
            "max_ms": waits.last().copied().unwrap_or(0.0),
        })
    );
    Ok(())
}

fn gzip(
    mib: usize,
    level: u32,
    line_bytes: usize,
    archive: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let data = ndjson(archive, mib, line_bytes)?;
    let (secs, out) = best_of_three(|| zlib_rs_member(&data, level))?;
    println!(
        "{}",
        json!({"mb_per_s": data.len() as f64 / secs / 1e6, "ratio": data.len() as f64 / out.len() as f64, "seconds": secs, "mb": data.len() as f64 / 1e6})
    );
    Ok(())
}

/// Each deflate implementation at each level, one JSON line per pair: the
/// NDJSON cut at line ends into pieces of about `piece` bytes, each
/// compressed on its own into a whole gzip member (as staging does), on one
/// core, best of three.
fn deflate(
    mib: usize,
    levels: &[u32],
    piece: usize,
    line_bytes: usize,
    archive: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let data = ndjson(archive, mib, line_bytes)?;
    let mut pieces = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let cut = rest[..piece.min(rest.len())]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(piece.min(rest.len()), |at| at + 1);
        let (this, next) = rest.split_at(cut);
        pieces.push(this);
        rest = next;
    }
    type Member = fn(&[u8], u32) -> anyhow::Result<Vec<u8>>;
    let implementations: [(&str, Member); 2] = [
        ("zlib-rs (flate2)", zlib_rs_member),
        ("libdeflate", libdeflate_member),
    ];
    for &level in levels {
        for (name, member) in implementations {
            let (secs, bytes) = best_of_three(|| {
                pieces
                    .iter()
                    .map(|p| member(p, level).map(|m| m.len()))
                    .sum::<anyhow::Result<usize>>()
            })?;
            println!(
                "{}",
                json!({"implementation": name, "level": level, "mb_per_s": data.len() as f64 / secs / 1e6,
                       "ratio": data.len() as f64 / bytes as f64, "mb": data.len() as f64 / 1e6, "pieces": pieces.len()})
            );
        }
    }
    Ok(())
}

/// The NDJSON a baseline compresses: from archive objects, or generated.
fn ndjson(
    archive: Option<&std::path::Path>,
    mib: usize,
    line_bytes: usize,
) -> anyhow::Result<Vec<u8>> {
    match archive {
        Some(dir) => archived_ndjson(dir, mib << 20),
        None => Ok(generated_ndjson(mib << 20, line_bytes)),
    }
}

/// The fastest of three runs, with what the last one made: the machine is
/// shared, and a baseline is the single-core speed it can reach, not what
/// was left over at one moment.
fn best_of_three<T>(mut run: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)> {
    let mut secs = f64::INFINITY;
    let mut made = None;
    for _ in 0..3 {
        let start = Instant::now();
        made = Some(run()?);
        secs = secs.min(start.elapsed().as_secs_f64());
    }
    Ok((secs, made.context("no run")?))
}

/// One gzip member through flate2 (zlib-rs), as larch compresses today.
fn zlib_rs_member(data: &[u8], level: u32) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

/// One gzip member through libdeflate, whole buffer at once.
fn libdeflate_member(data: &[u8], level: u32) -> anyhow::Result<Vec<u8>> {
    let lvl = libdeflater::CompressionLvl::new(level as i32)
        .map_err(|e| anyhow::anyhow!("libdeflate level {level}: {e:?}"))?;
    let mut compressor = libdeflater::Compressor::new(lvl);
    let mut out = vec![0; compressor.gzip_compress_bound(data.len())];
    let n = compressor
        .gzip_compress(data, &mut out)
        .map_err(|e| anyhow::anyhow!("libdeflate: {e:?}"))?;
    out.truncate(n);
    Ok(out)
}

/// Up to `limit` bytes of NDJSON from the archive objects under `dir`.
fn archived_ndjson(dir: &std::path::Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut objects = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().ends_with(".json.gz") {
                objects.push(path);
            }
        }
    }
    objects.sort();
    let mut data = Vec::with_capacity(limit);
    for path in objects {
        if data.len() >= limit {
            break;
        }
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(file), &mut data)
            .with_context(|| format!("decompressing {}", path.display()))?;
    }
    if data.is_empty() {
        bail!("no archive objects under {}", dir.display());
    }
    data.truncate(limit);
    Ok(data)
}

/// NDJSON like larch writes: archived lines with their fields.
fn generated_ndjson(limit: usize, line_bytes: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(limit);
    let mut n = 0u64;
    while data.len() < limit {
        let line = json!({"_id": format!("{:026}", n), "_account": "bench", "_ts": 1_764_140_245_123i64 + n as i64,
            "_line": log_line(n, line_bytes), "_host": "bench", "_app": "bench", "_ingester": "http",
            "_received": 1_764_140_245_123i64 + n as i64});
        data.extend_from_slice(line.to_string().as_bytes());
        data.push(b'\n');
        n += 1;
    }
    data
}

/// CPU seconds (user + system) of a process so far, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf takes no pointers.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    Ok((ticks(11) + ticks(12)) / per_s)
}

/// Peak resident memory of a process, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn drain(addr: &str, pid: u32, timeout: Duration) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}/status");
    let status = || -> anyhow::Result<serde_json::Value> {
        let text = agent.get(&url).call()?.body_mut().read_to_string()?;
        Ok(serde_json::from_str(&text)?)
    };
    let start = Instant::now();
    let cpu_start = cpu_seconds(pid)?;
    let first = status()?;
    let uploaded_start = first["input_bytes_uploaded"].as_f64().unwrap_or(0.0);
    let objects_start = first["objects_uploaded"].as_u64().unwrap_or(0);
    let mut first_upload_s = None;
    loop {
        let s = status()?;
        if first_upload_s.is_none() && s["objects_uploaded"].as_u64().unwrap_or(0) > objects_start {
            first_upload_s = Some(start.elapsed().as_secs_f64());
        }
        let waiting = ["lines_waiting", "parts_sealed", "parts_uploading"]
            .iter()
            .any(|k| s[k].as_u64() != Some(0));
        if !waiting {
            let secs = start.elapsed().as_secs_f64();
            let input = s["input_bytes_uploaded"].as_f64().unwrap_or(0.0) - uploaded_start;
            let objects = s["objects_uploaded"].as_u64().unwrap_or(0) - objects_start;
            println!(
                "{}",
                json!({"drain_s": secs, "first_upload_s": first_upload_s.unwrap_or(secs),
                    "objects": objects, "cpu_s": cpu_seconds(pid)? - cpu_start,
                    "input_mb": input / 1e6, "peak_rss_mb": peak_rss_mb(pid)})
            );
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("larch on {addr} still had uploads waiting after {timeout:?}: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Uploads `uploads` objects at once, `rate × seconds` bytes in all, and reports
/// how close the achieved rate came to the limit.
fn upload_rate(url: &str, rate: &str, seconds: u64, uploads: u64) -> anyhow::Result<()> {
    use larch::store::{Ownership, Target, TargetConfig};
    let limit = rate
        .parse::<larch::config::values::ByteRate>()
        .map_err(anyhow::Error::msg)?
        .0;
    let target = Arc::new(Target::new(TargetConfig {
        url: url.to_owned(),
        upload_rate_limit: Some(limit),
        ..TargetConfig::default()
    })?);
    let dir = tempfile::tempdir()?;
    let each = limit * seconds / uploads.max(1);
    let mut files = Vec::new();
    for i in 0..uploads {
        let path = dir.path().join(format!("object-{i}"));
        // Random bytes, so nothing on the way can compress them.
        let mut bytes = vec![0u8; each as usize];
        rand::Rng::fill(&mut rand::rng(), bytes.as_mut_slice());
        std::fs::write(&path, &bytes)?;
        files.push(path);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let run = format!("{:016x}", rand::random::<u64>());
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for (i, path) in files.into_iter().enumerate() {
            let (target, key) = (target.clone(), format!("bench-rate/{run}/object-{i}"));
            tasks.push(tokio::spawn(async move {
                let owner = Ownership {
                    instance: "bench".into(),
                    part: key.clone(),
                    sha256: [0; 32],
                    lines: 0,
                };
                target.create(&key, &path, each, &owner, false).await
            }));
        }
        for task in tasks {
            task.await??;
        }
        anyhow::Ok(())
    })?;
    let took = started.elapsed().as_secs_f64();
    let achieved = (each * uploads) as f64 / took;
    println!(
        "{}",
        json!({
            "bench": "upload-rate",
            "limit_bytes_per_s": limit,
            "uploads": uploads,
            "bytes": each * uploads,
            "seconds": (took * 100.0).round() / 100.0,
            "achieved_bytes_per_s": achieved.round(),
            "off_by_percent": ((achieved / limit as f64 - 1.0) * 1000.0).round() / 10.0,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A client posts every request over the connection it already has:
    /// a server that answers on one connection and then accepts no other
    /// sees all of them.
    #[test]
    fn requests_share_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            // A client that stops mid-request ends the test, not hangs it.
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut answered = 0;
            for _ in 0..3 {
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap() == 0 {
                        return answered;
                    }
                    if header == "\r\n" {
                        break;
                    }
                    let lower = header.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let answer = b"{\"status\":\"ok\"}";
                write!(
                    writer,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    answer.len()
                )
                .unwrap();
                writer.write_all(answer).unwrap();
                answered += 1;
            }
            answered
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .build()
            .into();
        let url = format!("http://{addr}/logs/ingest");
        for _ in 0..3 {
            let status = super::post(&agent, &url, "k", "application/json", b"{\"lines\":[]}");
            assert_eq!(status.ok(), Some(200));
        }
        assert_eq!(server.join().unwrap(), 3);
    }
}
