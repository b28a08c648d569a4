//! Room in the spool: a size limit and a free-space floor refuse lines before
//! acknowledging them, file sources pause, one account flooding is throttled
//! while the others still get in, and larch recovers by itself once uploads
//! make room. Nothing acknowledged is lost, nothing refused is archived.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{hours_ago, read_archive, Daemon};
use serde_json::{json, Value};

/// Sends `n` lines of about 1 KiB for the hour two hours ago; returns the
/// status and the texts.
fn send(d: &Daemon, key: &str, tag: &str, n: usize) -> (u16, Value, Vec<String>) {
    let texts: Vec<String> = (0..n)
        .map(|i| format!("{tag} {i} {}", "x".repeat(1000)))
        .collect();
    let lines: Vec<Value> = texts
        .iter()
        .map(|t| json!({"line": t, "timestamp": hours_ago(2, 1000)}))
        .collect();
    let (status, body) = d.ingest_json(key, &json!({ "lines": lines }));
    (status, body, texts)
}

/// Sends rounds of 300 lines with `key`, `pause` apart, until one is refused
/// (at most 200 rounds); the acked texts go to `acked`. Returns the refusal.
fn send_until_refused(
    d: &Daemon,
    key: &str,
    tag: &str,
    pause: Duration,
    acked: &mut Vec<String>,
) -> Option<(u16, Value)> {
    for round in 0..200 {
        let (status, body, texts) = send(d, key, &format!("{tag}-{round}"), 300);
        if status != 200 {
            return Some((status, body));
        }
        acked.extend(texts);
        std::thread::sleep(pause);
    }
    None
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every archived `_line`, with how often it was archived.
fn archived_texts(archive: &Path) -> BTreeMap<String, usize> {
    let mut archived = BTreeMap::new();
    for (_, lines) in read_archive(archive) {
        for l in lines {
            *archived
                .entry(l["_line"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    archived
}

/// `larch drain` through the running daemon's admin API.
fn drain(d: &Daemon, archive: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_larch"))
        .args(["drain", "--timeout", "60s", "--data"])
        .arg(&d.data)
        .args(["--target", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

#[test]
fn a_full_spool_refuses_before_acking_throttles_the_flooder_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let tailed = logs.join("app.log");
    let cfg = config(
        dir.path(),
        &format!(
            "[spool]\nmax_size = \"8MiB\"\nmin_free_space = \"1MiB\"\n\
             [[sources.files]]\naccount = \"beta\"\ninclude = [\"{}/*.log\"]\n",
            logs.display()
        ),
    );
    // The archive directory does not exist yet: nothing can leave the spool.
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
    let mut acked: Vec<String> = Vec::new();

    // beta holds a little; acme floods, slowly enough for the room to be measured.
    let (status, body, texts) = send(&d, "kb", "beta-first", 5);
    assert_eq!(status, 200, "{body}");
    acked.extend(texts);
    let (status, body) =
        send_until_refused(&d, "ka", "acme", Duration::from_millis(150), &mut acked)
            .expect("acme was never refused");
    assert_eq!(status, 429, "the flooder is throttled first: {body}");
    assert!(body.to_string().contains("account acme holds"), "{body}");
    let s = d.status();
    assert_eq!(s["room"]["throttled_accounts"], json!(["acme"]), "{s}");

    // beta still gets in while acme waits.
    let (status, body, texts) = send(&d, "kb", "beta-while-acme-waits", 3);
    assert_eq!(status, 200, "{body}");
    acked.extend(texts);

    // Past the limit nobody gets in, and the file source stops reading.
    let (status, body) = send_until_refused(&d, "kb", "beta", Duration::ZERO, &mut acked)
        .expect("the spool never filled");
    assert_eq!(status, 507, "{body}");
    assert!(body.to_string().contains("spool.max_size"), "{body}");
    wait_for("status to say it refuses", Duration::from_secs(10), || {
        d.status()["room"]["refusing"].is_string()
    });
    let mut file = std::fs::File::create(&tailed).unwrap();
    let file_lines: Vec<String> = (0..50).map(|i| format!("from the file {i}")).collect();
    for l in &file_lines {
        writeln!(file, "{l}").unwrap();
    }
    file.sync_all().unwrap();
    wait_for("file reading to pause", Duration::from_secs(10), || {
        d.log().contains("file reading paused")
    });
    let (status, _, _) = send(&d, "ka", "acme-refused", 1);
    assert_eq!(status, 507);

    // The archive appears: uploads make room, and larch takes lines again by itself.
    std::fs::create_dir_all(&archive).unwrap();
    wait_for("room again", Duration::from_secs(90), || {
        d.status()["room"]["refusing"].is_null()
    });
    let (status, body, texts) = send(&d, "ka", "acme-after", 10);
    assert_eq!(status, 200, "{body}");
    acked.extend(texts);
    acked.extend(file_lines);
    wait_for("file reading to resume", Duration::from_secs(10), || {
        d.log().contains("file reading resumed")
    });
    // The file's lines are stamped when read, in an hour still open: drain
    // until they are read and archived.
    wait_for("the file's lines archived", Duration::from_secs(60), || {
        drain(&d, &archive);
        archived_texts(&archive).contains_key("from the file 49")
    });
    let archived = archived_texts(&archive);
    let want: BTreeMap<String, usize> = acked.iter().map(|t| (t.clone(), 1)).collect();
    let missing = want.keys().filter(|k| !archived.contains_key(*k)).count();
    let extra: Vec<&String> = archived.keys().filter(|k| !want.contains_key(*k)).collect();
    assert_eq!(missing, 0, "acknowledged lines missing from the archive");
    assert!(
        extra.is_empty(),
        "refused lines archived: {:?}",
        &extra[..extra.len().min(3)]
    );
    assert_eq!(archived, want, "a line archived twice");
}

#[test]
fn below_the_free_space_floor_every_line_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[spool]\nmin_free_space = \"1000000GiB\"");
    let d = Daemon::start(&dir.path().join("data"), &["--config", &cfg]);
    let (status, body, _) = send(&d, "ka", "refused", 1);
    assert_eq!(status, 507, "{body}");
    assert!(body.to_string().contains("min_free_space"), "{body}");
    let s = d.status();
    assert!(
        s["room"]["refusing"]
            .as_str()
            .unwrap()
            .contains("min_free_space"),
        "{s}"
    );
    assert_eq!(s["lines_waiting"], 0);
}

#[test]
fn a_full_spool_of_open_hours_seals_them_early_to_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let cfg = config(
        dir.path(),
        "[spool]\nmax_size = \"4MiB\"\nmin_free_space = \"1MiB\"",
    );
    // The default late window: without help these hours would stay open for hours.
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--config", &cfg, "--target", archive.to_str().unwrap()],
    );
    let mut acked = Vec::new();
    let mut refused = false;
    for round in 0..100 {
        let texts: Vec<String> = (0..300)
            .map(|i| format!("now {round} {i} {}", "y".repeat(1000)))
            .collect();
        let lines: Vec<Value> = texts.iter().map(|t| json!({ "line": t })).collect();
        let (status, body) = d.ingest_json("ka", &json!({ "lines": lines }));
        match status {
            200 => acked.extend(texts),
            507 => {
                refused = true;
                break;
            }
            _ => panic!("unexpected answer {status}: {body}"),
        }
    }
    assert!(refused, "the spool never filled");
    wait_for("parts sealed early", Duration::from_secs(30), || {
        d.log().contains("early to make room")
    });
    wait_for("room again", Duration::from_secs(60), || {
        d.status()["room"]["refusing"].is_null()
    });
    drain(&d, &archive);
    let archived = archived_texts(&archive);
    let want: BTreeMap<String, usize> = acked.iter().map(|t| (t.clone(), 1)).collect();
    assert_eq!(
        archived, want,
        "every acknowledged line archived once, nothing else"
    );
}

/// A larch whose spool is on a small filesystem of its own, holding lines it
/// cannot archive yet (its archive directory is missing), killed.
struct FullDiskSetup {
    d: Daemon,
    disk: common::SmallDisk,
    archive: std::path::PathBuf,
    acked: Vec<String>,
    _dir: tempfile::TempDir,
}

fn killed_with_held_lines() -> Option<FullDiskSetup> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = common::SmallDisk::mount_or_skip(&data, 96 << 20)?;
    let archive = dir.path().join("archive");
    let cfg = config(dir.path(), "[spool]\nmin_free_space = \"1MiB\"");
    let mut d = Daemon::start(
        &data,
        &[
            "--config",
            &cfg,
            "--target",
            archive.to_str().unwrap(),
            "--late-window",
            "0s",
        ],
    );
    wait_for("the reserve to be held", Duration::from_secs(10), || {
        d.status()["room"]["reserve_held"] == json!(true)
    });
    let mut acked = Vec::new();
    for round in 0..10 {
        let (status, body, texts) = send(&d, "ka", &format!("held-{round}"), 300);
        assert_eq!(status, 200, "{body}");
        acked.extend(texts);
    }
    d.kill9();
    Some(FullDiskSetup {
        d,
        disk,
        archive,
        acked,
        _dir: dir,
    })
}

impl FullDiskSetup {
    /// Lets uploads through and checks that every held line is archived once.
    fn archives_every_held_line(&self) {
        std::fs::create_dir_all(&self.archive).unwrap();
        self.d.wait_drained(Duration::from_secs(60));
        let want: BTreeMap<String, usize> = self.acked.iter().map(|t| (t.clone(), 1)).collect();
        assert_eq!(archived_texts(&self.archive), want);
    }
}

#[test]
fn a_disk_filled_by_another_program_does_not_stop_larch_starting_or_emptying_it() {
    let Some(mut setup) = killed_with_held_lines() else {
        return;
    };
    // Something else takes the disk to its last byte while larch is down.
    let filler = setup.disk.fill();
    // sled writes as it opens: this start needs the reserve.
    setup.d.start_again();
    let d = &setup.d;
    assert!(
        d.log().contains("released larch's 32 MiB reserve"),
        "{}",
        d.log_tail(5)
    );
    let (status, body, _) = send(d, "ka", "refused-while-full", 10);
    assert_eq!(status, 507, "{body}");

    // Compressing parts for upload also needs room: the reserve gave it.
    setup.archives_every_held_line();

    // Space comes back: the reserve is held again and lines are taken.
    let d = &setup.d;
    std::fs::remove_file(filler).unwrap();
    wait_for(
        "the reserve to be held again",
        Duration::from_secs(20),
        || d.status()["room"]["reserve_held"] == json!(true),
    );
    wait_for("room again", Duration::from_secs(20), || {
        d.status()["room"]["refusing"].is_null()
    });
    let (status, body, _) = send(d, "ka", "after", 10);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_start_on_a_full_disk_without_its_reserve_clears_staged_leftovers_to_open() {
    let Some(mut setup) = killed_with_held_lines() else {
        return;
    };
    // The reserve went earlier in this episode, and the crash left a staged
    // object behind: the only room left is in derived data.
    let data = setup.d.data.clone();
    std::fs::remove_file(data.join("reserve")).unwrap();
    std::fs::write(
        data.join("staging/leftover.json.gz.partial"),
        vec![1u8; 8 << 20],
    )
    .unwrap();
    let _filler = setup.disk.fill();
    setup.d.start_again();
    setup.archives_every_held_line();
}

/// Lines are admitted by what they take in the spool, every field counted:
/// lines of one byte each carrying 30 KB of `meta` cannot slip past the quota
/// because their text is short.
#[test]
fn admission_counts_every_stored_field_not_just_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[spool]\nmax_size = \"8MiB\"\nmin_free_space = \"1MiB\"",
    );
    let d = Daemon::start(&dir.path().join("data"), &["--config", &cfg]);
    let meta = json!({"k": "m".repeat(30_000)});
    let lines: Vec<Value> = (0..100)
        .map(|_| json!({"line": "x", "meta": meta, "timestamp": hours_ago(2, 1000)}))
        .collect();
    let body = json!({ "lines": lines });
    let mut acked = 0;
    let mut refused = None;
    for _ in 0..20 {
        match d.ingest_json("ka", &body) {
            (200, _) => acked += 1,
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    // Each request stores about 3 MB: the 8 MiB quota lets in three, and a
    // fourth only if the spool looked emptier than it was.
    let (status, body) = refused.expect("the quota never refused");
    println!("admission: {acked} requests of about 3 MB acked before {status}");
    assert_eq!(status, 507, "{body}");
    assert!(
        acked <= 4,
        "{acked} requests of about 3 MB each got into an 8 MiB spool"
    );
}
