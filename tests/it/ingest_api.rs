//! The ingest API against the real binary: docs/FORMAT.md §4's statuses, error
//! bodies and limits, and that nothing of a rejected request is stored.

use crate::common;

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use common::{hours_ago, read_archive, Daemon};
use serde_json::{json, Value};

const KEY: &str = "test-key-1";

fn start(dir: &tempfile::TempDir) -> Daemon {
    Daemon::start(
        &dir.path().join("data"),
        &[
            "--late-window",
            "0s",
            "--follow-up-after",
            "1s",
            "--key",
            &format!("{KEY}=acme"),
        ],
    )
}

fn expect_error(result: Result<(u16, String), String>, status: u16, needle: &str) {
    let (got, body) = result.expect("request failed");
    assert_eq!(got, status, "body: {body}");
    let body: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("error body is not JSON: {body}"));
    assert_eq!(body["status"], "not ok", "{body}");
    let errors = body["errors"].as_array().expect("errors array");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap_or("").contains(needle)),
        "no error mentions {needle:?}: {body}"
    );
}

#[test]
fn bad_requests_get_format_errors_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir);
    let ts = hours_ago(2, 0);
    let line = |text: &str| json!({"timestamp": ts, "line": text});
    let key = [("apikey", KEY)];

    // Malformed JSON.
    expect_error(
        d.ingest("", &key, b"{\"lines\":[".to_vec()),
        400,
        "not valid JSON",
    );
    // Says gzip, is not.
    expect_error(
        d.ingest(
            "",
            &[("apikey", KEY), ("Content-Encoding", "gzip")],
            json!({"lines":[line("bad-gzip")]}).to_string().into_bytes(),
        ),
        400,
        "gzip",
    );
    // Missing `line`, even with good lines around it: the whole request is refused.
    expect_error(
        d.ingest(
            "",
            &key,
            json!({"lines":[line("bad-missing-1"), {"timestamp": ts, "app": "x"}]})
                .to_string()
                .into_bytes(),
        ),
        400,
        "\"line\" is missing",
    );
    // Missing and unknown keys.
    expect_error(
        d.ingest(
            "",
            &[],
            json!({"lines":[line("bad-nokey")]})
                .to_string()
                .into_bytes(),
        ),
        401,
        "no ingestion key",
    );
    expect_error(
        d.ingest(
            "",
            &[("apikey", "nope")],
            json!({"lines":[line("bad-unknown")]})
                .to_string()
                .into_bytes(),
        ),
        401,
        "unknown ingestion key",
    );
    // A 12 MB body.
    let big_line = "b".repeat(1000);
    let many: Vec<Value> = (0..12_000)
        .map(|i| json!({"line": format!("bad-big-{i} {big_line}"), "timestamp": ts}))
        .collect();
    expect_error(
        d.ingest("", &key, json!({"lines": many}).to_string().into_bytes()),
        413,
        "limit",
    );
    // A 40 KB meta.
    expect_error(
        d.ingest("", &key, json!({"lines":[line("bad-meta-0"), {"line":"bad-meta-1","timestamp":ts,"meta":{"k":"m".repeat(40*1024)}}]}).to_string().into_bytes()),
        400,
        "meta",
    );
    // Over-long hostname in the query.
    expect_error(
        d.ingest(
            &format!("?hostname={}", "h".repeat(300)),
            &key,
            json!({"lines":[line("bad-host")]}).to_string().into_bytes(),
        ),
        400,
        "hostname",
    );

    // The daemon still serves, and every auth form works.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"));
    let (s, _) = d
        .ingest(
            "",
            &[("Authorization", &format!("Basic {basic}"))],
            json!({"lines":[line("good-basic")]})
                .to_string()
                .into_bytes(),
        )
        .unwrap();
    assert_eq!(s, 200);
    let (s, _) = d
        .ingest(
            &format!("?apikey={KEY}"),
            &[],
            json!({"lines":[line("good-query")]})
                .to_string()
                .into_bytes(),
        )
        .unwrap();
    assert_eq!(s, 200);
    let (s, body) = d.ingest_json(KEY, &json!({"e":"ls","ls":[line("good-ls")]}));
    assert_eq!(s, 200);
    assert_eq!(body["status"], "ok");
    assert!(
        body["batchID"].as_str().is_some_and(|b| !b.is_empty()),
        "{body}"
    );
    // A gzip body that is gzip.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json!({"lines":[line("good-gzip")]}).to_string().as_bytes())
        .unwrap();
    let (s, _) = d
        .ingest(
            "",
            &[("apikey", KEY), ("Content-Encoding", "gzip")],
            gz.finish().unwrap(),
        )
        .unwrap();
    assert_eq!(s, 200);
    // A 20 KB line is kept, cut to 16 KB.
    let (s, _) = d.ingest_json(KEY, &json!({"lines":[{"line": format!("good-long {}", "x".repeat(20 * 1024)), "timestamp": ts}]}));
    assert_eq!(s, 200);

    // Many short lines in a body under a MiB: their lines want more of the
    // budget than a small body is first given, so the body is read again
    // where it may wait for room, and every line is stored.
    let seconds = ts / 1000;
    let many: Vec<String> = (0..20_000)
        .map(|_| format!(r#"{{"line":"good-many","timestamp":{seconds}}}"#))
        .collect();
    let body = format!(r#"{{"lines":[{}]}}"#, many.join(","));
    assert!(body.len() < 1 << 20);
    let (s, answer) = d.ingest("", &key, body.into_bytes()).unwrap();
    assert_eq!(s, 200, "{answer}");

    d.wait_drained(Duration::from_secs(30));
    let lines: Vec<Value> = read_archive(&d.data.join("archive"))
        .into_iter()
        .flat_map(|(_, l)| l)
        .collect();
    let texts: Vec<&str> = lines.iter().map(|l| l["_line"].as_str().unwrap()).collect();
    assert!(
        texts.iter().all(|t| !t.starts_with("bad-")),
        "a rejected line was stored: {texts:?}"
    );
    assert_eq!(texts.iter().filter(|t| **t == "good-many").count(), 20_000);
    for good in ["good-basic", "good-query", "good-ls", "good-gzip"] {
        assert_eq!(
            texts.iter().filter(|t| **t == good).count(),
            1,
            "{good} missing or doubled in {texts:?}"
        );
    }
    let long = lines
        .iter()
        .find(|l| l["_line"].as_str().unwrap().starts_with("good-long"))
        .unwrap();
    assert_eq!(long["_line"].as_str().unwrap().len(), 16 * 1024);
    assert_eq!(long["_truncated"], true);
    assert!(lines
        .iter()
        .filter(|l| l != &long)
        .all(|l| l.get("_truncated").is_none()));
}

#[test]
fn invalid_account_ids_stop_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["k=../etc", "k=a.b", "k=", &format!("k={}", "a".repeat(65))] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_larch"))
            .args(["run", "--data"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--key", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid account ID"), "{bad}: {err}");
    }
    let toml = dir.path().join("larch.toml");
    std::fs::write(&toml, "[keys]\n\"k\" = \"has space\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_larch"))
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[keys] entry #1") && err.contains("invalid account ID"),
        "{err}"
    );
    assert!(!err.contains("has space"), "the value may be a key: {err}");
}
