//! `fleet`: many larch writers in one process archive the same account-hour
//! into one bucket at the same moment, through larch's own spool and sync loop.
//!
//! Each writer is what a host's larch is, without the listeners: a sled spool
//! of its own (its own instance ID), its lines for the hour, and a `Syncer`
//! with its own store client. Time is a manual clock: every writer's hour
//! seals at the same instant, as a fleet's hours do when their clocks agree,
//! and every writer then uploads at once. The requests and bytes come from the
//! counting proxy in front of the store (`scripts/count_proxy.py`), the names
//! and sizes from the writers' own records. The same writers archive several
//! hours in turn, so what a host learned of the fleet in one hour shows in the
//! next.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use larch::account::AccountId;
use larch::clock::{ManualClock, SharedClock};
use larch::line::{Line, Origin};
use larch::spool::{Along, PartId, PartState, SealRule, Spool, SpoolHandle};
use larch::store::{Target, TargetConfig};
use larch::sync::{Backoff, Board, SyncSettings, Syncer};

/// 2026-03-10T14:00:00Z: the hour every writer archives.
const HOUR_START: i64 = 1_773_151_200_000;

#[derive(clap::Args)]
pub struct FleetPlan {
    #[arg(long)]
    writers: usize,
    /// The target, through the counting proxy (s3://BUCKET[/PREFIX]; the
    /// endpoint and keys from the AWS_* environment).
    #[arg(long)]
    target: String,
    /// The `target.fleet_size` each writer is given.
    #[arg(long, default_value_t = 1)]
    fleet_size: u32,
    /// Hours the same writers archive one after another.
    #[arg(long, default_value_t = 1)]
    hours: u32,
    /// Lines each writer archives an hour.
    #[arg(long, default_value_t = 2000)]
    lines: u64,
    #[arg(long, default_value_t = 300)]
    line_bytes: usize,
    /// The counting proxy's address (http://127.0.0.1:PORT).
    #[arg(long)]
    counter: String,
    #[arg(long, default_value = "10m")]
    timeout: humantime::Duration,
}

struct Writer {
    host: String,
    target: Arc<Target>,
    spool: SpoolHandle,
    syncer: Arc<Syncer>,
    _dir: tempfile::TempDir,
}

pub fn fleet(plan: &FleetPlan) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(plan))
}

async fn run(plan: &FleetPlan) -> anyhow::Result<()> {
    let clock = Arc::new(ManualClock::new(HOUR_START + 30 * 60_000));
    let mut writers = Vec::with_capacity(plan.writers);
    for w in 0..plan.writers {
        let dir = tempfile::Builder::new().prefix("larch-fleet").tempdir()?;
        let shared: SharedClock = clock.clone();
        let rule = SealRule {
            late_window_ms: 0,
            follow_up_after_ms: 60_000,
        };
        let spool = SpoolHandle::new(Spool::open(dir.path(), shared, rule, 1 << 20)?);
        let target = Arc::new(Target::new(TargetConfig {
            url: plan.target.clone(),
            ..TargetConfig::default()
        })?);
        let shared: SharedClock = clock.clone();
        let syncer = Syncer::new(
            spool.clone(),
            target.clone(),
            SyncSettings {
                staging_dir: dir.path().join("staging"),
                gzip_level: 6,
                key_prefix: String::new(),
                fleet_size: plan.fleet_size,
                backoff: Backoff {
                    cap: Duration::from_secs(2),
                    ..Backoff::default()
                },
                ledger_keep: Duration::from_secs(86_400),
            },
            shared,
            Arc::new(Board::default()),
        )?;
        writers.push(Writer {
            host: format!("edge-{w:04}"),
            target,
            spool,
            syncer: Arc::new(syncer),
            _dir: dir,
        });
    }
    // Each host checks the store when it starts, as the daemon does; that is
    // a cost per start, not per object.
    let checks = writers.iter().map(|w| {
        let target = w.target.clone();
        async move { target.probe().await?.problem() }
    });
    for check in futures::future::join_all(checks).await {
        check.context("the store failed the start-up check")?;
    }
    // The same writers archive one hour after another: what a host learned
    // of the fleet in one hour counts in the next.
    for hour in 0..plan.hours {
        archive_hour(plan, &clock, &writers, hour).await?;
    }
    Ok(())
}

/// Every writer archives its lines of hour `hour` (counted from `HOUR_START`),
/// all sealing at once; prints the hour's figures as one JSON line.
async fn archive_hour(
    plan: &FleetPlan,
    clock: &ManualClock,
    writers: &[Writer],
    hour: u32,
) -> anyhow::Result<()> {
    let account = AccountId::parse("acme").context("account")?;
    let start = HOUR_START + i64::from(hour) * 3_600_000;
    clock.set(start + 30 * 60_000);
    for (w, writer) in writers.iter().enumerate() {
        let origin = Arc::new(Origin {
            host: Some(writer.host.clone()),
            ingester: "bench",
            ..Origin::default()
        });
        let lines = (0..plan.lines)
            .map(|i| {
                let n = u64::from(hour) << 48 | (w as u64) << 32 | i;
                Line::new(
                    start + 60_000 + i as i64,
                    crate::log_line(n, plan.line_bytes),
                    origin.clone(),
                )
            })
            .collect();
        writer
            .spool
            .blocking()
            .append(vec![(account.clone(), lines, Along::default())])?;
        writer.spool.blocking().make_durable()?;
    }
    // The hour ends for every writer at once.
    clock.set(start + 3_600_000 + 1);
    let mut parts = Vec::with_capacity(writers.len());
    for w in writers {
        parts.push(w.spool.blocking().seal_due()?);
    }
    // Compressing is each host's own work, done before its upload; the
    // measured phase is the fleet meeting at the store.
    let agent = ureq::Agent::new_with_defaults();
    agent
        .post(format!("{}/_counts/reset", plan.counter))
        .send_empty()
        .context("resetting the counting proxy")?;
    let started = Instant::now();
    let tasks: Vec<_> = writers
        .iter()
        .zip(&parts)
        .map(|(w, parts)| tokio::spawn(archive(w.syncer.clone(), w.spool.clone(), parts.clone())))
        .collect();
    let deadline = started + *plan.timeout;
    for task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(done) => done??,
            Err(_) => bail!("the fleet did not archive its hour within {}", plan.timeout),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let counts: Value = serde_json::from_str(
        &agent
            .get(format!("{}/_counts", plan.counter))
            .call()?
            .body_mut()
            .read_to_string()?,
    )?;

    let mut keys = BTreeSet::new();
    let (mut archived_bytes, mut archived_lines) = (0u64, 0u64);
    for (w, parts) in writers.iter().zip(&parts) {
        for id in parts {
            match w.spool.blocking().record(id)?.map(|r| r.state) {
                Some(PartState::Deleted(Some(upload))) => {
                    if !keys.insert(upload.key.clone()) {
                        bail!("two writers recorded {} as theirs", upload.key);
                    }
                    archived_bytes += upload.size;
                    archived_lines += upload.lines;
                }
                other => bail!("part {id} ended as {other:?}, not uploaded"),
            }
        }
    }
    let sent_lines = plan.lines * writers.len() as u64;
    if archived_lines != sent_lines {
        bail!("{archived_lines} lines archived of {sent_lines}");
    }
    let objects = keys.len() as u64;
    let mut per_object = serde_json::Map::new();
    let mut requests = 0u64;
    if let Some(by_kind) = counts["requests"].as_object() {
        for (kind, n) in by_kind {
            let n = n.as_u64().unwrap_or(0);
            requests += n;
            per_object.insert(kind.clone(), json!(n as f64 / objects as f64));
        }
    }
    let sent: u64 = counts["bytes"].as_object().map_or(0, |by_kind| {
        by_kind.values().filter_map(Value::as_u64).sum()
    });
    let largest_n = keys
        .iter()
        .filter_map(|k| larch::hour::ObjectName::parse(k).map(|n| n.n))
        .max()
        .unwrap_or(0);
    println!(
        "{}",
        json!({
            "writers": plan.writers,
            "fleet_size": plan.fleet_size,
            "hour": hour + 1,
            "objects": objects,
            "lines": archived_lines,
            "archived_bytes": archived_bytes,
            "requests": requests,
            "requests_per_object": requests as f64 / objects as f64,
            "by_kind_per_object": per_object,
            "sent_bytes": sent,
            "sent_per_archived_byte": sent as f64 / archived_bytes as f64,
            "largest_n": largest_n,
            "seconds": seconds,
        })
    );
    Ok(())
}

/// One writer's sync loop until its parts are archived: passes as the daemon's
/// loop makes them, a part that failed waiting out its backoff.
async fn archive(
    syncer: Arc<Syncer>,
    spool: SpoolHandle,
    parts: Vec<PartId>,
) -> anyhow::Result<()> {
    loop {
        syncer.clone().pass().await;
        let mut done = true;
        for id in &parts {
            let part = id.clone();
            let record = spool.run(move |s| s.record(&part)).await?;
            done &= matches!(record.map(|r| r.state), Some(PartState::Deleted(_)));
        }
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
