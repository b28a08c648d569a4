//! `cargo bench`: the pieces every line goes through, one at a time.
//!
//! - parse: a Mezmo body of 1000 lines into larch's lines;
//! - append: those lines into the spool as one group commit (segment write,
//!   fsync, sled batch, sled flush and fsync) on the disk under `data/`;
//! - archive: a stored line into its NDJSON archive form;
//! - stage: a sealed part of 20,000 lines into its gzip object (all cores).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;

use larch::account::AccountId;
use larch::clock::{ManualClock, SharedClock};
use larch::hour::Hour;
use larch::ingest::body::{parse, RequestContext};
use larch::line::StoredLine;
use larch::spool::SealRule;
use larch::spool::{Along, PartId, Spool};
use larch::sync::stage;

const NOW: i64 = 1_773_151_200_000 + 600_000;

fn body(lines: usize) -> Vec<u8> {
    let lines: Vec<_> = (0..lines)
        .map(|i| {
            json!({"timestamp": NOW - 1000 + i as i64, "app": "nginx", "level": "info",
                   "line": format!("10.0.{}.{} - - \"GET /api/v1/orders/{i} HTTP/1.1\" 200 {} \"curl/8.5.0\" rt={}ms trace={:016x}",
                                   i % 256, i / 256 % 256, i * 7, i % 900, i * 0x9E37_79B9)})
        })
        .collect();
    json!({ "lines": lines }).to_string().into_bytes()
}

fn ctx() -> RequestContext {
    RequestContext {
        hostname: Some("edge-1".into()),
        mac: None,
        ip: None,
        client_now: None,
        tags: vec![],
        received: NOW,
        max_skew_ms: 300_000,
    }
}

fn open_spool(dir: &std::path::Path) -> Spool {
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    Spool::open(dir, clock, SealRule::default(), 8 << 20).expect("spool opens")
}

fn hot_paths(c: &mut Criterion) {
    let raw = bytes::Bytes::from(body(1000));
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("parse 1000 lines", |b| {
        b.iter(|| parse(&raw, &ctx(), &mut |_| Ok(())).expect("valid body"))
    });

    std::fs::create_dir_all("data").expect("data dir");
    let dir = tempfile::tempdir_in("data").expect("temp dir");
    let spool = open_spool(dir.path());
    let account = AccountId::parse("bench").expect("valid account");
    let lines = parse(&raw, &ctx(), &mut |_| Ok(()))
        .expect("valid body")
        .lines;
    g.bench_function("append 1000 lines durably", |b| {
        b.iter_batched(
            || vec![(account.clone(), lines.clone(), Along::default())],
            |requests| {
                spool.append(requests).expect("append");
                spool.make_durable().expect("durable");
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let stored = StoredLine {
        id: "01M8BZQM05Q8Y9NM8000000000".into(),
        received: NOW,
        line: lines[0].clone(),
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function("archive one line as NDJSON", |b| {
        b.iter(|| {
            out.clear();
            stored.write_ndjson("bench", &mut out);
        })
    });

    let dir = tempfile::tempdir_in("data").expect("temp dir");
    let spool = open_spool(dir.path());
    for _ in 0..20 {
        spool
            .append(vec![(account.clone(), lines.clone(), Along::default())])
            .expect("append");
    }
    spool.make_durable().expect("durable");
    let part = PartId {
        account: account.clone(),
        hour: Hour::of(NOW - 1000),
        seq: 0,
    };
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging dir");
    let input = stage::stage(&spool, &part, 6, &staging)
        .expect("stage")
        .input_bytes;
    let mut g = c.benchmark_group("sync");
    g.throughput(Throughput::Bytes(input));
    g.sample_size(10);
    g.bench_function("stage 20000 lines, gzip -6", |b| {
        b.iter(|| stage::stage(&spool, &part, 6, &staging).expect("stage"))
    });
    g.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
