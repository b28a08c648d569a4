//! Exclusion and inclusion rules, through the real binary: each rule kind drops
//! exactly the lines it matches, nothing dropped reaches the archive, and the
//! counts in status add up.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{hours_ago, read_archive, Daemon};
use serde_json::{json, Value};

fn start_with_rules(dir: &std::path::Path, rules: &str) -> Daemon {
    let config = dir.join("larch.toml");
    std::fs::write(
        &config,
        format!("[keys]\nk = \"acme\"\nk2 = \"noisy\"\n{rules}"),
    )
    .unwrap();
    Daemon::start(
        &dir.join("data"),
        &["--late-window", "0s", "--config", config.to_str().unwrap()],
    )
}

/// Sends one line per (key, host, app, level, file, text) and returns nothing:
/// the test compares the archive with what it expects.
fn send(d: &Daemon, key: &str, host: &str, lines: &[(&str, &str, &str, &str)]) {
    let ts = hours_ago(2, 0);
    let body: Vec<Value> = lines
        .iter()
        .map(|(app, level, file, text)| {
            json!({"timestamp": ts, "line": text, "app": app, "level": level, "file": file})
        })
        .collect();
    let (status, answer) = d
        .ingest(
            &format!("?hostname={host}"),
            &[("apikey", key)],
            json!({ "lines": body }).to_string().into_bytes(),
        )
        .unwrap();
    assert_eq!(status, 200, "{answer}");
}

fn archived_texts(d: &Daemon) -> BTreeSet<String> {
    read_archive(&d.data.join("archive"))
        .into_iter()
        .flat_map(|(_, lines)| lines)
        .map(|l| l["_line"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn each_rule_kind_drops_exactly_the_lines_it_matches() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_with_rules(
        dir.path(),
        r#"
[[rules.exclude]]
name = "noisy account"
account = "noisy"
[[rules.exclude]]
name = "lab host"
host = "lab-1"
[[rules.exclude]]
name = "chatty app"
app = "chatty"
[[rules.exclude]]
name = "debug"
level = "debug"
[[rules.exclude]]
name = "tmp files"
file = "/tmp/**"
[[rules.exclude]]
name = "health checks"
app = "nginx"
regex = "GET /health"
"#,
    );
    send(
        &d,
        "k",
        "edge-1",
        &[
            ("nginx", "info", "/var/log/a.log", "GET /health 200"),
            ("nginx", "info", "/var/log/a.log", "GET /orders 200"),
            ("api", "info", "/var/log/b.log", "GET /health from api"),
            ("chatty", "info", "/var/log/c.log", "chatter"),
            ("api", "DEBUG", "/var/log/b.log", "debug detail"),
            ("api", "info", "/tmp/x/scratch.log", "scratch"),
            ("api", "error", "/var/log/b.log", "kept error"),
        ],
    );
    send(
        &d,
        "k",
        "lab-1",
        &[("api", "error", "/var/log/b.log", "from the lab")],
    );
    send(
        &d,
        "k2",
        "edge-1",
        &[("api", "error", "/var/log/b.log", "noise")],
    );
    d.wait_drained(Duration::from_secs(30));

    let expected: BTreeSet<String> = ["GET /orders 200", "GET /health from api", "kept error"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(archived_texts(&d), expected);
    let dropped = &d.status()["lines_dropped_by_rule"];
    assert_eq!(
        dropped,
        &json!({"noisy account": 1, "lab host": 1, "chatty app": 1, "debug": 1,
                "tmp files": 1, "health checks": 1}),
        "{dropped}"
    );
}

#[test]
fn include_rules_keep_only_matching_lines_and_excludes_still_apply() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_with_rules(
        dir.path(),
        r#"
[[rules.include]]
regex = "ERROR|WARN"
[[rules.exclude]]
regex = "WARN: disk"
"#,
    );
    send(
        &d,
        "k",
        "edge-1",
        &[
            ("api", "info", "/var/log/a.log", "ERROR: payment failed"),
            ("api", "info", "/var/log/a.log", "WARN: slow upstream"),
            ("api", "info", "/var/log/a.log", "WARN: disk 91%"),
            ("api", "info", "/var/log/a.log", "all fine"),
            ("api", "info", "/var/log/a.log", "still fine"),
        ],
    );
    d.wait_drained(Duration::from_secs(30));
    let expected: BTreeSet<String> = ["ERROR: payment failed", "WARN: slow upstream"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(archived_texts(&d), expected);
    assert_eq!(
        d.status()["lines_dropped_by_rule"],
        json!({"exclude #1": 1, "no include rule matched": 2})
    );
}

#[test]
fn a_bad_rule_stops_start_up_with_its_number_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("larch.toml");
    std::fs::write(
        &config,
        "[[rules.exclude]]\napp = \"a\"\n[[rules.exclude]]\nregex = \"(unclosed\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_larch"))
        .args(["run", "--data"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[[rules.exclude]] number 2") && stderr.contains("(unclosed"),
        "{stderr}"
    );
}
