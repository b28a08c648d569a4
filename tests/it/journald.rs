//! Journal sources against a real journal: the test writes journal files with
//! `systemd-journal-remote` (Debian's tool that turns journal export format
//! into journal files) and larch reads them with `journalctl --directory`,
//! unchanged. Fields are mapped as docs/FORMAT.md §2b says, every entry is
//! archived exactly once across kill -9, and `start = "end"` skips exactly
//! what was there.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{read_archive, Daemon};
use serde_json::Value;

/// Where Debian puts systemd-journal-remote (scripts/test-servers.sh installs it).
fn journal_remote() -> PathBuf {
    ["/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("systemd-journal-remote is missing: run scripts/test-servers.sh (it installs Debian's systemd-journal-remote)")
}

/// A journal the test writes: one journal file, appended to in batches.
struct Journal {
    dir: PathBuf,
    boot: String,
    next_us: i64,
    monotonic_us: u64,
}

/// One field of an entry: text, or bytes (written in export format's binary form).
enum Field {
    Text(&'static str, String),
    Bytes(&'static str, Vec<u8>),
}

impl Journal {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        Self {
            dir: dir.to_owned(),
            boot: "0123456789abcdef0123456789abcdef".into(),
            // Ten minutes ago, a millisecond apart: within the hour larch is
            // told to archive, never ahead of its clock.
            next_us: (common::now_ms() - 600_000) * 1000,
            monotonic_us: 1_000_000,
        }
    }

    /// Appends entries, each with a time after the last one's.
    fn append(&mut self, entries: &[Vec<Field>]) {
        let mut export = Vec::new();
        for fields in entries {
            self.next_us += 1000;
            self.monotonic_us += 1000;
            write!(
                export,
                "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={}\n",
                self.next_us, self.monotonic_us, self.boot
            )
            .unwrap();
            for field in fields {
                match field {
                    Field::Text(name, value) => writeln!(export, "{name}={value}").unwrap(),
                    Field::Bytes(name, value) => {
                        writeln!(export, "{name}").unwrap();
                        export.extend_from_slice(&(value.len() as u64).to_le_bytes());
                        export.extend_from_slice(value);
                        export.push(b'\n');
                    }
                }
            }
            export.push(b'\n');
        }
        let mut child = Command::new(journal_remote())
            .arg("--split-mode=none")
            .arg(format!(
                "--output={}",
                self.dir.join("test.journal").display()
            ))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run systemd-journal-remote");
        child.stdin.take().unwrap().write_all(&export).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "systemd-journal-remote failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A plain entry numbered `i`.
fn numbered(tag: &str, i: usize) -> Vec<Field> {
    vec![
        Field::Text("MESSAGE", format!("{tag} entry {i}")),
        Field::Text("PRIORITY", "6".into()),
        Field::Text("SYSLOG_IDENTIFIER", "writer".into()),
        Field::Text("_HOSTNAME", "edge-9".into()),
    ]
}

struct Rig {
    dir: tempfile::TempDir,
    journal: Journal,
    config: PathBuf,
    daemon: Option<Daemon>,
}

impl Rig {
    /// A journal with `before` in it, then larch following it with `extra` settings.
    fn start(extra: &str, before: &[Vec<Field>]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::new(&dir.path().join("journal"));
        if !before.is_empty() {
            journal.append(before);
        }
        let config = dir.path().join("larch.toml");
        std::fs::write(
            &config,
            format!(
                "[[sources.journald]]\naccount = \"ops\"\ndirectory = \"{}\"\n{extra}\n",
                journal.dir.display()
            ),
        )
        .unwrap();
        let mut rig = Self {
            dir,
            journal,
            config,
            daemon: None,
        };
        rig.daemon = Some(rig.launch(&[]));
        rig
    }

    fn launch(&self, env: &[(String, String)]) -> Daemon {
        Daemon::start_with_env(
            &self.dir.path().join("data"),
            // Nothing seals while the test runs, whatever the hour: the
            // spool's count is then every line stored.
            &[
                "--late-window",
                "1h",
                "--config",
                self.config.to_str().unwrap(),
            ],
            env,
        )
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    /// Waits until the spool holds `n` lines.
    fn wait_stored(&self, n: u64) {
        self.daemon().wait_lines_waiting(n);
    }

    /// Stops larch, starts it three hours ahead (past the late window) and
    /// returns every archived line.
    fn finish(mut self) -> Vec<Value> {
        let mut d = self.daemon.take().unwrap();
        assert!(d.terminate().success());
        drop(d);
        let d = self.launch(&[("LARCH_CLOCK_OFFSET".into(), "3h".into())]);
        d.wait_drained(Duration::from_secs(30));
        let lines = read_archive(&d.data.join("archive"))
            .into_iter()
            .flat_map(|(_, lines)| lines)
            .collect();
        drop(d);
        lines
    }
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["_line"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn journal_entries_are_archived_with_their_fields_mapped() {
    let colour = b"\x1b[31mred alert\x1b[0m \xff".to_vec();
    // The time the process logged, before journald received it.
    let logged_ms = common::now_ms() - 700_000;
    let entries = vec![
        vec![
            Field::Text("MESSAGE", "disk almost full".into()),
            Field::Text("PRIORITY", "4".into()),
            Field::Text("_HOSTNAME", "edge-7".into()),
            Field::Text("SYSLOG_IDENTIFIER", "diskwatch".into()),
            Field::Text("_SYSTEMD_UNIT", "diskwatch.service".into()),
            Field::Text("_PID", "4242".into()),
            Field::Text("_SOURCE_REALTIME_TIMESTAMP", format!("{}123", logged_ms)),
            Field::Text("CUSTOM_ORDER", "A-17".into()),
        ],
        vec![
            Field::Bytes("MESSAGE", colour.clone()),
            Field::Text("PRIORITY", "2".into()),
            Field::Text("_SYSTEMD_UNIT", "painter.service".into()),
        ],
        // No identifier: the command names the app.
        vec![
            Field::Text("MESSAGE", "from a plain process".into()),
            Field::Text("_COMM", "worker".into()),
            Field::Text("TAG", "one".into()),
            Field::Text("TAG", "two".into()),
        ],
    ];
    let rig = Rig::start(
        "fields = [\"_PID\", \"_SYSTEMD_UNIT\", \"CUSTOM_ORDER\", \"TAG\"]",
        &entries,
    );
    rig.wait_stored(3);
    // The source shows in the status with what it stored.
    let status = rig.daemon().status();
    let row = &status["sources"][0];
    assert_eq!(
        (&row["kind"], &row["lines"], &row["account"]),
        (
            &Value::from("journald"),
            &Value::from(3),
            &Value::from("ops")
        ),
        "{status}"
    );
    let lines = rig.finish();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let l = &lines[0];
    assert_eq!(l["_line"], "disk almost full");
    assert_eq!(l["level"], "warning");
    assert_eq!(l["_host"], "edge-7");
    assert_eq!(l["_app"], "diskwatch");
    assert_eq!(l["_ingester"], "journald");
    assert_eq!(l["_account"], "ops");
    assert_eq!(l["_ts"], logged_ms);
    assert_eq!(
        l["_meta"],
        serde_json::json!({"_PID": "4242", "_SYSTEMD_UNIT": "diskwatch.service", "CUSTOM_ORDER": "A-17"})
    );
    let l = &lines[1];
    assert_eq!(l["_line"], String::from_utf8_lossy(&colour).as_ref());
    assert_eq!(
        (&l["level"], &l["_app"]),
        (&Value::from("crit"), &Value::from("painter.service"))
    );
    let l = &lines[2];
    assert_eq!(l["_app"], "worker");
    assert_eq!(l["_meta"]["TAG"], serde_json::json!(["one", "two"]));
    assert!(l.get("level").is_none(), "{l}");
}

#[test]
fn start_at_end_skips_exactly_what_was_there_before_the_first_run() {
    let history: Vec<_> = (0..10).map(|i| numbered("history", i)).collect();
    let mut rig = Rig::start("start = \"end\"", &history);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rig
        .daemon()
        .log()
        .contains("reading the journal from its end")
    {
        assert!(Instant::now() < deadline, "{}", rig.daemon().log_tail(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Killed before it read anything: the end it found still holds.
    rig.daemon.as_mut().unwrap().restart();
    let fresh: Vec<_> = (0..5).map(|i| numbered("fresh", i)).collect();
    rig.journal.append(&fresh);
    rig.wait_stored(5);
    let lines = rig.finish();
    let expected: Vec<String> = (0..5).map(|i| format!("fresh entry {i}")).collect();
    assert_eq!(texts(&lines), expected);
}

#[test]
fn journal_entries_are_archived_exactly_once_across_kill_9() {
    use rand::Rng;
    let mut rig = Rig::start("", &[]);
    let (batches, per_batch) = (60, 50);
    // The journal is appended to from another thread while larch is killed.
    let mut journal = std::mem::replace(
        &mut rig.journal,
        Journal::new(&rig.dir.path().join("unused")),
    );
    let writer = std::thread::spawn(move || {
        let mut rng = rand::rng();
        for b in 0..batches {
            let entries: Vec<_> = (0..per_batch)
                .map(|i| numbered("w", b * per_batch + i))
                .collect();
            journal.append(&entries);
            std::thread::sleep(Duration::from_millis(rng.random_range(20..120)));
        }
    });
    let mut rng = rand::rng();
    let mut kills = 0;
    let started = Instant::now();
    while !writer.is_finished() || kills < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the writer did not finish"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(100..400)));
        let d = rig.daemon.as_mut().unwrap();
        d.kill9();
        kills += 1;
        d.start_again();
    }
    writer.join().unwrap();
    let total = batches * per_batch;
    rig.wait_stored(total as u64);
    let lines = rig.finish();

    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for l in &lines {
        *counts
            .entry(l["_line"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let lost = (0..total)
        .filter(|i| !counts.contains_key(&format!("w entry {i}")))
        .count();
    let duplicated: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "journald kill -9: {kills} kills, entries written {total}, archived {}, lost {lost}, duplicated {duplicated}",
        lines.len()
    );
    assert_eq!((lost, duplicated, lines.len()), (0, 0, total));
    // Every line kept the fields it was written with.
    assert!(lines
        .iter()
        .all(|l| l["_app"] == "writer" && l["level"] == "info" && l["_host"] == "edge-9"));
}
