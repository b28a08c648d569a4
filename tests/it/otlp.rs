//! OTLP/HTTP logs (`POST /v1/logs`) against the OpenTelemetry Python SDK's
//! log exporters, unchanged (tests/otlp/send.py drives them): protobuf and
//! JSON, gzipped; records archived with their fields; an exporter retrying
//! through a full spool loses nothing; keys keep accounts apart.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::metrics::{scrape, value};
use common::{read_archive, Daemon};
use serde_json::{json, Value};

/// The OTLP logs endpoint of `d`.
fn endpoint(d: &Daemon) -> String {
    format!("http://{}/v1/logs", d.addr)
}

fn sender_to(
    endpoint: &str,
    key: &str,
    encoding: &str,
    tag: &str,
    records: usize,
    timeout_s: u32,
) -> Command {
    let mut cmd = Command::new(common::installed("otel/bin/python"));
    cmd.arg(common::repo_file("tests/otlp/send.py"))
        .args(["--endpoint", endpoint])
        .args(["--key", key, "--encoding", encoding, "--tag", tag])
        .args(["--records", &records.to_string()])
        .args(["--timeout", &timeout_s.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the exporter to its end; returns whether every export succeeded, and its report.
fn send(d: &Daemon, key: &str, encoding: &str, tag: &str, records: usize) -> (bool, Value) {
    finish(
        sender_to(&endpoint(d), key, encoding, tag, records, 10)
            .spawn()
            .expect("run the OTLP sender"),
    )
}

fn finish(child: Child) -> (bool, Value) {
    let out = child.wait_with_output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "the sender printed no report: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn config(dir: &Path, extra: &str) -> String {
    let path = dir.join("larch.toml");
    std::fs::write(
        &path,
        format!(
            "[target]\nretry_max_delay = \"1s\"\n{extra}\n[keys]\nka = \"acme\"\nkb = \"beta\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Every archived line, by account.
fn archived(archive: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut by_account: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (_, lines) in read_archive(archive) {
        for l in lines {
            by_account
                .entry(l["_account"].as_str().unwrap().to_owned())
                .or_default()
                .push(l);
        }
    }
    by_account
}

fn texts(lines: &[Value]) -> Vec<String> {
    let mut t: Vec<String> = lines
        .iter()
        .map(|l| l["_line"].as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

#[test]
fn protobuf_and_json_exports_are_archived_with_their_fields_each_in_its_keys_account() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--config", &cfg, "--late-window", "0s"],
    );
    let (ok, report) = send(&d, "ka", "protobuf", "proto", 3);
    assert!(ok, "{report}");
    let (ok, report) = send(&d, "kb", "json", "json", 2);
    assert!(ok, "{report}");
    // An unknown key is refused, and not retried (401); so is a key of
    // another account than the one the endpoint names.
    let (ok, report) = send(&d, "no-such-key", "protobuf", "stranger", 1);
    assert!(!ok && report["retries"] == 0, "{report}");
    let for_beta = format!("http://{}/v1/logs?account=beta", d.addr);
    let (ok, report) = finish(
        sender_to(&for_beta, "ka", "json", "mixed-up", 1, 10)
            .spawn()
            .unwrap(),
    );
    assert!(!ok && report["retries"] == 0, "{report}");
    let samples = scrape(&d.addr);
    assert_eq!(
        value(&samples, "larch_http_requests_total", &[("status", "401")]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "larch_ingested_lines_total",
            &[("account", "acme"), ("source", "otlp")]
        ),
        Some(3.0)
    );

    common::drain(&d.data);
    let by_account = archived(&d.data.join("archive"));
    assert_eq!(by_account.keys().collect::<Vec<_>>(), ["acme", "beta"]);
    assert_eq!(
        texts(&by_account["acme"]),
        ["proto record 0", "proto record 1", "proto record 2"]
    );
    assert_eq!(
        texts(&by_account["beta"]),
        ["json record 0", "json record 1"]
    );
    for l in by_account.values().flatten() {
        assert_eq!(l["_app"], "checkout", "{l}");
        assert_eq!(l["_host"], "edge-4");
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["_ingester"], "otlp");
        let meta = &l["_meta"];
        assert_eq!(meta["attributes"]["ok"], true, "{l}");
        assert_eq!(meta["attributes"]["tags"], json!(["a", "b"]));
        assert_eq!(meta["attributes"]["empty"], json!([]));
        assert_eq!(meta["resource"]["service.name"], "checkout");
        assert_eq!(
            meta["scope"],
            json!({"name": "shop.cart", "version": "2.1"})
        );
        assert_eq!(meta["severity_number"], 13);
        let n = l["_line"]
            .as_str()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap();
        assert_eq!(meta["attributes"]["n"], n);
        let ts = l["_ts"].as_i64().unwrap();
        assert!((common::now_ms() - ts).abs() < 600_000, "{l}");
    }
}

#[test]
fn an_exporter_retrying_through_a_full_spool_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let cfg = config(
        dir.path(),
        "[spool]\nmax_size = \"8MiB\"\nmin_free_space = \"1MiB\"",
    );
    // The archive directory does not exist yet: nothing leaves the spool.
    let d = Daemon::start(
        &dir.path().join("data"),
        &[
            "--config",
            &cfg,
            "--target",
            archive.to_str().unwrap(),
            "--late-window",
            "0s",
            "--follow-up-after",
            "1s",
        ],
    );
    // Fill the spool through the Mezmo API until it refuses.
    let mut filled = 0;
    for round in 0..200 {
        let lines: Vec<Value> = (0..300)
            .map(|i| json!({"line": format!("filler {round} {i} {}", "x".repeat(1000)), "timestamp": common::hours_ago(2, 1000)}))
            .collect();
        let (status, _) = d.ingest_json("kb", &json!({ "lines": lines }));
        if status != 200 {
            break;
        }
        filled += 300;
    }
    assert!(d.status()["room"]["refusing"].is_string() || filled > 0);
    let refused_before = value(
        &scrape(&d.addr),
        "larch_http_requests_total",
        &[("status", "503")],
    )
    .unwrap_or(0.0)
        + value(
            &scrape(&d.addr),
            "larch_http_requests_total",
            &[("status", "429")],
        )
        .unwrap_or(0.0);
    // The exporter meets a full spool, is told to retry, and does.
    let exporter = sender_to(&endpoint(&d), "ka", "protobuf", "patient", 1, 60)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = scrape(&d.addr);
        let refused = value(&samples, "larch_http_requests_total", &[("status", "503")])
            .unwrap_or(0.0)
            + value(&samples, "larch_http_requests_total", &[("status", "429")]).unwrap_or(0.0);
        if refused > refused_before {
            break;
        }
        assert!(Instant::now() < deadline, "the exporter was never refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Room comes back once uploads can go; the exporter's retry gets in.
    std::fs::create_dir_all(&archive).unwrap();
    let (ok, report) = finish(exporter);
    assert!(ok && report["retries"].as_u64() > Some(0), "{report}");
    common::drain(&d.data);
    let by_account = archived(&archive);
    assert_eq!(texts(&by_account["acme"]), ["patient record 0"]);
    assert_eq!(by_account["beta"].len(), filled);
}
