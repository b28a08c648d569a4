//! Lines in, objects out: names, fields and follow-up parts, through the real binary.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{hours_ago, read_archive, Daemon};
use serde_json::json;

fn hour_name(ts: i64) -> (String, String) {
    let t = chrono::DateTime::from_timestamp_millis(ts).unwrap();
    (
        t.format("year=%Y/month=%m/day=%d").to_string(),
        t.format("%Y-%m-%d.%H00").to_string(),
    )
}

#[test]
fn lines_of_an_earlier_hour_become_one_object_then_numbered_follow_ups() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("data"),
        &[
            "--late-window",
            "0s",
            "--follow-up-after",
            "1s",
            "--key",
            "k=acme",
            "--key",
            "k2=other",
        ],
    );
    let ts = hours_ago(3, 1234);
    let first = json!({"lines":[
        {"timestamp": ts, "line":"GET /health 200 3ms", "app":"nginx", "level":"info",
         "file":"/var/log/nginx/access.log", "meta":{"status":200}, "label":{"team":"edge"}},
        {"timestamp": ts + 1, "line":"second", "meta":"{\"as\":\"string\"}"}
    ]});
    let (s, body) = d.ingest_json("k", &first);
    assert_eq!(s, 200, "{body}");
    let (s, _) = d.ingest_json(
        "k2",
        &json!({"lines":[{"timestamp": ts, "line":"other account"}]}),
    );
    assert_eq!(s, 200);
    d.wait_drained(Duration::from_secs(30));

    let (day_dir, stamp) = hour_name(ts);
    let archive = d.data.join("archive");
    let objects = read_archive(&archive);
    let names: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        vec![
            format!("{day_dir}/acme.{stamp}.json.gz"),
            format!("{day_dir}/other.{stamp}.json.gz")
        ]
    );
    let lines = &objects[0].1;
    assert_eq!(lines.len(), 2);
    let l = &lines[0];
    assert_eq!(l["_account"], "acme");
    assert_eq!(l["_ts"], ts);
    assert_eq!(l["_line"], "GET /health 200 3ms");
    assert_eq!(l["_app"], "nginx");
    assert_eq!(l["level"], "info");
    assert_eq!(l["_file"], "/var/log/nginx/access.log");
    assert_eq!(l["_meta"], json!({"status": 200}));
    assert_eq!(l["_label"], json!({"team": "edge"}));
    assert_eq!(l["_ingester"], "http");
    assert_eq!(l["_id"].as_str().unwrap().len(), 26);
    assert!(l["_received"].as_i64().unwrap() >= ts);
    assert_eq!(lines[1]["_meta"], json!({"as": "string"}));
    assert_ne!(lines[0]["_id"], lines[1]["_id"]);

    // The hour is sealed: later lines make .1, then .2.
    for (n, text) in [(1, "late one"), (2, "late two")] {
        let (s, _) = d.ingest_json(
            "k",
            &json!({"lines":[{"timestamp": ts + 10, "line": text}]}),
        );
        assert_eq!(s, 200);
        d.wait_drained(Duration::from_secs(30));
        let key = format!("{day_dir}/acme.{stamp}.{n}.json.gz");
        let objects = read_archive(&archive);
        let (_, lines) = objects
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no {key} in {objects:?}"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["_line"], text);
    }
    assert_eq!(read_archive(&archive).len(), 4);
}

#[test]
fn acked_lines_survive_restarts_and_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A long late window: the hour stays open across the restarts.
    let mut d = Daemon::start(&data, &["--late-window", "48h", "--key", "k=acme"]);
    let ts = hours_ago(1, 0);
    let (s, _) = d.ingest_json(
        "k",
        &json!({"lines":[{"timestamp": ts, "line":"before kill"}]}),
    );
    assert_eq!(s, 200);
    d.kill9();
    drop(d);
    let mut d = Daemon::start(&data, &["--late-window", "48h", "--key", "k=acme"]);
    let (s, _) = d.ingest_json(
        "k",
        &json!({"lines":[{"timestamp": ts, "line":"before term"}]}),
    );
    assert_eq!(s, 200);
    let status = d.status();
    assert_eq!(status["lines_waiting"], 2, "{status}");
    assert_eq!(status["parts_open"], 1, "{status}");
    assert!(d.terminate().success(), "SIGTERM should exit 0");
    drop(d);

    // Restart with no late window: the open hour seals and both lines come out in one object.
    let d = Daemon::start(&data, &["--late-window", "0s", "--key", "k=acme"]);
    d.wait_drained(Duration::from_secs(30));
    let objects = read_archive(&data.join("archive"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    let texts: Vec<_> = objects[0]
        .1
        .iter()
        .map(|l| l["_line"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, vec!["before kill", "before term"]);
}

#[test]
fn an_archive_directory_on_another_filesystem_gets_whole_objects() {
    use std::os::unix::fs::MetadataExt;
    // Objects are hard-linked from the staging directory when they can be; on
    // another filesystem they are copied, then linked into place.
    let shm = std::path::Path::new("/dev/shm");
    let dir = tempfile::tempdir().unwrap();
    let Ok(archive) = tempfile::tempdir_in(shm) else {
        eprintln!("skipped: no /dev/shm to put the archive on");
        return;
    };
    if std::fs::metadata(shm).unwrap().dev() == std::fs::metadata(dir.path()).unwrap().dev() {
        eprintln!("skipped: /dev/shm is on the same filesystem as the spool");
        return;
    }
    let target = archive.path().display().to_string();
    let d = Daemon::start(
        &dir.path().join("data"),
        &[
            "--late-window",
            "0s",
            "--key",
            "k=acme",
            "--target",
            &target,
        ],
    );
    let ts = hours_ago(2, 0);
    let lines: Vec<_> = (0..500)
        .map(|i| json!({"timestamp": ts + i, "line": format!("line {i}")}))
        .collect();
    let (s, body) = d.ingest_json("k", &json!({ "lines": lines }));
    assert_eq!(s, 200, "{body}");
    d.wait_drained(Duration::from_secs(30));
    let objects = read_archive(archive.path());
    assert_eq!(objects.len(), 1, "{objects:?}");
    let texts: Vec<&str> = objects[0]
        .1
        .iter()
        .map(|l| l["_line"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..500).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected);
    // Nothing is left in the upload area.
    let area = archive.path().join(".larch-upload");
    let left = std::fs::read_dir(&area).map_or(0, |e| e.count());
    assert_eq!(left, 0, "temporary copies left in {}", area.display());
    // A copy is as private as a link (the archive directory itself is the user's).
    for (path, mode, is_dir) in modes_under(archive.path()).into_iter().skip(1) {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
}

/// Every file and directory under `root` with its permission bits, `root` included.
fn modes_under(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((
            path.clone(),
            meta.permissions().mode() & 0o7777,
            meta.is_dir(),
        ));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Sends one line into the hour before last and waits until it is archived.
fn archive_one_line(d: &Daemon) {
    let (s, body) = d.ingest_json(
        "k",
        &json!({"lines":[{"timestamp": hours_ago(1, 0), "line":"private line"}]}),
    );
    assert_eq!(s, 200, "{body}");
    d.wait_drained(Duration::from_secs(30));
}

#[test]
fn spool_staging_admin_and_archive_files_are_readable_by_larch_user_only() {
    // The umask most hosts have: without explicit modes every file is world-readable.
    unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = Daemon::start(&data, &["--late-window", "0s", "--key", "k=acme"]);
    archive_one_line(&d);
    let (day, name) = hour_name(hours_ago(1, 0));
    let object = data
        .join("archive")
        .join(&day)
        .join(format!("acme.{name}.json.gz"));
    let segment = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("no segment file");
    let named = [
        data.join("spool"),
        data.join("spool/db"),
        data.join("segments"),
        segment,
        data.join("staging"),
        data.join("admin.json"),
        data.join("archive"),
        object,
    ];
    for path in &named {
        assert!(path.exists(), "{} is missing", path.display());
    }
    // sled's own files included: everything larch keeps is its user's alone.
    for (path, mode, is_dir) in modes_under(&data) {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
    assert!(d.terminate().success());
}

#[test]
fn archive_readers_get_group_read_when_asked_and_directories_larch_did_not_make_stay_as_they_are() {
    unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let archive = dir.path().join("archive");
    let open = std::fs::Permissions::from_mode(0o755);
    // The user's own directories, and the spool directories as an earlier larch left them.
    for made in [&data, &archive, &data.join("spool"), &data.join("segments")] {
        std::fs::create_dir_all(made).unwrap();
        std::fs::set_permissions(made, open.clone()).unwrap();
    }
    let target = archive.display().to_string();
    let mut d = Daemon::start(
        &data,
        &[
            "--late-window",
            "0s",
            "--key",
            "k=acme",
            "--target",
            &target,
            "--set",
            "target.local_group_read=true",
        ],
    );
    archive_one_line(&d);
    assert_eq!(mode_of(&data), 0o755, "the user's data directory");
    assert_eq!(mode_of(&archive), 0o755, "the user's archive directory");
    let (day, name) = hour_name(hours_ago(1, 0));
    let mut dir_made = archive.clone();
    for part in day.split('/') {
        dir_made.push(part);
        assert_eq!(mode_of(&dir_made), 0o750, "{}", dir_made.display());
    }
    assert_eq!(
        mode_of(&dir_made.join(format!("acme.{name}.json.gz"))),
        0o640
    );
    // The spool is never opened to the group; larch's own directories are tightened.
    for (path, mode, is_dir) in modes_under(&data.join("spool"))
        .into_iter()
        .chain(modes_under(&data.join("segments")))
        .chain(modes_under(&data.join("staging")))
    {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
    assert_eq!(mode_of(&data.join("admin.json")), 0o600);
    assert!(d.terminate().success());
}
