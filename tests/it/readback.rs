//! Reading archives back: `larch restore` against each kind of target used in
//! tests, its filters, the older wrapped form, corrupt objects; `larch verify`
//! against the ledger; `larch drain` with the daemon running and stopped.
//!
//! (Over 500 lines: eleven tests of the three readers, which share one archive
//! of several accounts, hours and `.N` parts and its helpers.)

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::azure::Azurite;
use common::objects::{archive_only, name_of};
use common::s3::Moto;
use common::{gzip, hours_ago, read_archive, Daemon};
use serde_json::{json, Value};

/// What a `larch` command printed and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn larch(args: &[&str], env: &[(String, String)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_larch"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("cannot run larch");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn restore(
    target: &str,
    account: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> (Run, Vec<Value>) {
    let mut args = vec!["restore", "--target", target, "--account", account];
    args.extend(extra);
    let run = larch(&args, env);
    let lines = run
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("restore printed a bad line ({e}): {l}"))
        })
        .collect();
    (run, lines)
}

/// Restored lines by ID; fails on an ID printed twice.
fn by_id(lines: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for l in lines {
        let id = l["_id"]
            .as_str()
            .expect("restored line without _id")
            .to_owned();
        assert!(
            out.insert(id.clone(), l.clone()).is_none(),
            "{id} restored twice"
        );
    }
    out
}

fn assert_time_ordered(lines: &[Value]) {
    let ts: Vec<i64> = lines.iter().map(|l| l["_ts"].as_i64().unwrap()).collect();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "not in time order: {ts:?}"
    );
}

// ---- round trip through a running larch, for each target kind ----

const HOSTS: [&str; 2] = ["edge-1", "edge-2"];
const APPS: [&str; 3] = ["nginx", "api", "cron"];
const LEVELS: [&str; 3] = ["INFO", "warn", "error"];

/// Sends lines for two accounts over three hours, then late lines that make `.1`
/// parts; returns the texts sent per account.
fn send_round_trip_lines(d: &Daemon) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut sent: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut batch = |key: &str, account: &'static str, hours: i64, tag: &str, n: usize| {
        let lines: Vec<Value> = (0..n)
            .map(|i| {
                let text = format!("{account} {tag} h{hours} line {i}");
                sent.entry(account).or_default().insert(text.clone());
                // Out of time order on purpose: restore sorts within the hour.
                json!({"timestamp": hours_ago(hours, 60_000 * ((i as i64 * 7) % 50)), "line": text,
                       "hostname": HOSTS[i % 2], "app": APPS[i % 3], "level": LEVELS[i % 3]})
            })
            .collect();
        let (status, body) = d.ingest_json(key, &json!({ "lines": lines }));
        assert_eq!(status, 200, "{body}");
    };
    for hours in 1..=3 {
        batch("ka", "acme", hours, "first", 30);
        batch("kb", "beta", hours, "first", 10);
    }
    d.wait_drained(Duration::from_secs(60));
    batch("ka", "acme", 2, "late", 12);
    d.wait_drained(Duration::from_secs(60));
    sent
}

/// A larch archiving to `target` with hours sealing at once and follow-up parts after 1 s.
fn round_trip_daemon(data: &Path, target: &str, env: &[(String, String)]) -> Daemon {
    let args = [
        "--target",
        target,
        "--late-window",
        "0s",
        "--follow-up-after",
        "1s",
        "--key",
        "ka=acme",
        "--key",
        "kb=beta",
    ];
    Daemon::start_with_env(data, &args, env)
}

/// Checks a restore of each account against the store's own copy of its objects.
fn check_round_trip(
    target: &str,
    env: &[(String, String)],
    objects: &[(String, Vec<Value>)],
    sent: &BTreeMap<&str, BTreeSet<String>>,
) {
    for account in ["acme", "beta"] {
        let mut stored = BTreeMap::new();
        for (key, lines) in objects {
            if key
                .rsplit('/')
                .next()
                .unwrap()
                .starts_with(&format!("{account}."))
            {
                for l in lines {
                    stored.insert(l["_id"].as_str().unwrap().to_owned(), l.clone());
                }
            }
        }
        let (run, lines) = restore(target, account, &["--since", "4h"], env);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_time_ordered(&lines);
        let restored = by_id(&lines);
        assert_eq!(
            restored, stored,
            "{account}: restored lines differ from the archive's"
        );
        let texts: BTreeSet<String> = lines
            .iter()
            .map(|l| l["_line"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            &texts, &sent[account],
            "{account}: restored texts differ from those sent"
        );
        assert_eq!(lines.len(), sent[account].len());
    }
}

#[test]
fn a_directory_archive_restores_exactly_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let target = archive.to_str().unwrap();
    let d = round_trip_daemon(&dir.path().join("data"), target, &[]);
    let sent = send_round_trip_lines(&d);
    let follow_up = format!("{}.1.json.gz", name_of("", "acme", 2));
    assert!(
        archive.join(&follow_up).exists(),
        "no follow-up part {follow_up}"
    );
    // A second copy of a whole part, as a confused writer might leave behind.
    std::fs::copy(
        archive.join(&follow_up),
        archive.join(format!("{}.9.json.gz", name_of("", "acme", 2))),
    )
    .unwrap();
    check_round_trip(target, &[], &read_archive(&archive), &sent);
}

/// Archives through a larch on `target`; `copy(from, to)` plants a copy of an
/// object, `inspect()` lists the objects as the store's own client sees them.
fn cloud_round_trip(
    target: &str,
    env: &[(String, String)],
    copy: impl Fn(&str, &str),
    inspect: impl Fn() -> Vec<Value>,
) {
    let dir = tempfile::tempdir().unwrap();
    let d = round_trip_daemon(&dir.path().join("data"), target, env);
    let sent = send_round_trip_lines(&d);
    let follow_up = format!("{}.1.json.gz", name_of("edge/", "acme", 2));
    copy(
        &follow_up,
        &format!("{}.9.json.gz", name_of("edge/", "acme", 2)),
    );
    let objects: Vec<(String, Vec<Value>)> = archive_only(inspect())
        .into_iter()
        .map(|o| {
            let lines = serde_json::from_value(o["lines"].clone()).unwrap();
            (o["key"].as_str().unwrap().to_owned(), lines)
        })
        .collect();
    assert!(
        objects.iter().any(|(k, _)| *k == follow_up),
        "no follow-up part {follow_up}"
    );
    check_round_trip(target, env, &objects, &sent);
}

#[test]
fn an_s3_archive_restores_exactly_what_was_sent() {
    let moto = Moto::start();
    moto.create_bucket("archive");
    cloud_round_trip(
        "s3://archive/edge",
        &Moto::env(&moto.endpoint),
        |from, to| moto.copy("archive", from, to),
        || moto.inspect("archive"),
    );
}

#[test]
fn an_azure_archive_restores_exactly_what_was_sent() {
    let azurite = Azurite::start();
    azurite.create_container("archive");
    cloud_round_trip(
        "az://archive/edge",
        &azurite.env(),
        |from, to| azurite.copy("archive", from, to),
        || azurite.inspect("archive"),
    );
}

// ---- filters, on an archive written by the test ----

/// Writes `lines` as the object `key` under `root`.
fn plant(root: &Path, key: &str, lines: &[Value]) -> PathBuf {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, gzip(text.as_bytes())).unwrap();
    path
}

/// An archive of account `acme` over three hours (with a `.1` part holding
/// duplicates), plus another account's object.
fn filter_archive(root: &Path) -> Vec<Value> {
    let mut all = Vec::new();
    let mut n = 0;
    for hours in [30, 5, 4] {
        let mut part0 = Vec::new();
        for i in 0..24 {
            n += 1;
            part0.push(json!({
                "_id": format!("id{n:04}"), "_account": "acme", "_ts": hours_ago(hours, 3_500_000 - i * 100_000),
                "_line": format!("request {n} {}", if i % 4 == 0 { "status=500" } else { "status=200" }),
                "_host": HOSTS[(i % 2) as usize], "_app": APPS[(i % 3) as usize], "level": LEVELS[(i % 3) as usize],
                "_ingester": "http", "_received": 1,
            }));
        }
        plant(
            root,
            &format!("{}.json.gz", name_of("", "acme", hours)),
            &part0,
        );
        // The follow-up part repeats five lines of part 0 and adds one.
        let mut part1: Vec<Value> = part0[..5].to_vec();
        n += 1;
        let extra = json!({"_id": format!("id{n:04}"), "_account": "acme", "_ts": hours_ago(hours, 10),
                           "_line": "late status=500", "_host": "edge-3", "_app": "api", "level": "ERROR",
                           "_ingester": "http", "_received": 2});
        part1.push(extra.clone());
        plant(
            root,
            &format!("{}.1.json.gz", name_of("", "acme", hours)),
            &part1,
        );
        all.extend(part0);
        all.push(extra);
    }
    plant(
        root,
        &format!("{}.json.gz", name_of("", "other", 5)),
        &[json!({"_id": "x", "_ts": hours_ago(5, 0), "_line": "not acme"})],
    );
    all
}

fn ids(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| l["_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn each_filter_alone_and_combined_gives_exactly_the_expected_lines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let all = filter_archive(root);
    let target = root.to_str().unwrap();
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let field = |l: &Value, f: &str| l[f].as_str().unwrap_or_default().to_owned();
    type Keep = Box<dyn Fn(&Value) -> bool>;
    let ts = |l: &Value| l["_ts"].as_i64().unwrap();
    let since6 = hours_ago(6, 0);
    let until4 = hours_ago(4, 0);
    let cases: Vec<(Vec<String>, Keep)> = vec![
        (vec![], Box::new(|_| true)),
        (
            vec!["--since".into(), "6h".into()],
            Box::new(move |l| ts(l) >= since6),
        ),
        (
            vec!["--since".into(), at(since6)],
            Box::new(move |l| ts(l) >= since6),
        ),
        (
            vec!["--until".into(), at(until4)],
            Box::new(move |l| ts(l) < until4),
        ),
        (
            vec!["--since".into(), at(since6), "--until".into(), at(until4)],
            Box::new(move |l| ts(l) >= since6 && ts(l) < until4),
        ),
        (
            vec!["--host".into(), "edge-1".into()],
            Box::new(move |l| field(l, "_host") == "edge-1"),
        ),
        (
            vec![
                "--host".into(),
                "edge-1".into(),
                "--host".into(),
                "edge-3".into(),
            ],
            Box::new(move |l| ["edge-1", "edge-3"].contains(&field(l, "_host").as_str())),
        ),
        (
            vec!["--app".into(), "api".into()],
            Box::new(move |l| field(l, "_app") == "api"),
        ),
        (
            vec!["--level".into(), "error".into()],
            Box::new(move |l| field(l, "level").eq_ignore_ascii_case("error")),
        ),
        (
            vec!["--grep".into(), "status=5\\d\\d".into()],
            Box::new(move |l| field(l, "_line").contains("status=500")),
        ),
        (
            vec![
                "--since".into(),
                at(since6),
                "--app".into(),
                "api".into(),
                "--level".into(),
                "ERROR".into(),
                "--grep".into(),
                "500$".into(),
            ],
            Box::new(move |l| {
                ts(l) >= since6
                    && field(l, "_app") == "api"
                    && field(l, "level").eq_ignore_ascii_case("error")
                    && field(l, "_line").ends_with("500")
            }),
        ),
    ];
    for (args, keep) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (run, lines) = restore(target, "acme", &args, &[]);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        let want: BTreeSet<String> = all
            .iter()
            .filter(|l| keep(l))
            .map(|l| l["_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            !want.is_empty(),
            "{args:?} selects nothing; the case proves nothing"
        );
        assert_eq!(by_id(&lines).len(), lines.len());
        assert_eq!(ids(&lines), want, "{args:?}");
        assert_time_ordered(&lines);
    }
    let (run, _) = restore(target, "acme", &["--grep", "("], &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("--grep \"(\" is not a valid regex"),
        "{}",
        run.stderr
    );
    let missing = root.join("no-such-archive");
    let (run, _) = restore(missing.to_str().unwrap(), "acme", &[], &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("archive directory") && run.stderr.contains("does not exist"),
        "{}",
        run.stderr
    );
    let (run, _) = restore(target, "../acme", &[], &[]);
    assert!(run.stderr.contains("invalid account ID"), "{}", run.stderr);
    let (run, _) = restore(target, "acme", &["--since", "soon"], &[]);
    assert!(
        run.stderr.contains("--since \"soon\" is not a time"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_corrupt_object_is_named_and_skipped_and_the_rest_restored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let all = filter_archive(root);
    // Cut part 0 of the hour 30 hours ago (id0001 to id0024) in half. Its
    // follow-up part still holds id0001 to id0005 and id0025.
    let cut = root.join(format!("{}.json.gz", name_of("", "acme", 30)));
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let cut_key = cut.strip_prefix(root).unwrap().to_str().unwrap().to_owned();

    let (run, lines) = restore(root.to_str().unwrap(), "acme", &[], &[]);
    assert_eq!(
        run.code, 3,
        "exit status must say something was skipped: {}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("skipped {cut_key}: not a whole gzip stream")),
        "{}",
        run.stderr
    );
    let lost: BTreeSet<String> = (6..=24).map(|n| format!("id{n:04}")).collect();
    let want: BTreeSet<String> = ids(&all).difference(&lost).cloned().collect();
    assert_eq!(ids(&lines), want);

    // A range that leaves that hour out never reads it.
    let (run, lines) = restore(root.to_str().unwrap(), "acme", &["--since", "6h"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(lines.len(), 50);
}

/// Runs `larch` to its end with its output in files; its exit code, output
/// and peak resident memory in bytes. A child's `ru_maxrss` starts from the
/// resident size of the process that spawned it (Linux records the old
/// address space's peak at exec), and this test binary holds every suite, so
/// larch is started by a small Python process whose children's peak is larch's.
fn larch_measured(args: &[&str], dir: &Path) -> (Run, u64) {
    let (out_path, err_path, peak_path) =
        (dir.join("stdout"), dir.join("stderr"), dir.join("peak"));
    const MEASURE: &str = "import resource, subprocess, sys\n\
        code = subprocess.run(sys.argv[2:]).returncode\n\
        open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n\
        sys.exit(code if code >= 0 else 128 - code)\n";
    let status = Command::new("python3")
        .arg("-c")
        .arg(MEASURE)
        .arg(&peak_path)
        .arg(env!("CARGO_BIN_EXE_larch"))
        .args(args)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .expect("cannot run python3 to measure larch");
    let peak_kib: u64 = std::fs::read_to_string(&peak_path)
        .expect("the measuring script wrote no peak")
        .trim()
        .parse()
        .unwrap();
    let run = Run {
        code: status.code().expect("larch did not exit by itself"),
        stdout: std::fs::read_to_string(out_path).unwrap(),
        stderr: std::fs::read_to_string(err_path).unwrap(),
    };
    (run, peak_kib * 1024)
}

#[test]
fn restore_skips_an_object_whose_line_has_no_end_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let good: Vec<Value> = (0..3)
        .map(|i| json!({"_id": format!("good{i}"), "_account": "acme", "_ts": hours_ago(3, i), "_line": "kept"}))
        .collect();
    plant(&root, &format!("{}.json.gz", name_of("", "acme", 3)), &good);
    // 200 MiB of 'a' and no newline, from a few hundred KiB: one gzip member
    // of 1 MiB repeated (gzip readers read consecutive members as one stream).
    let member = gzip(&vec![b'a'; 1 << 20]);
    let bomb_key = format!("{}.json.gz", name_of("", "acme", 2));
    std::fs::create_dir_all(root.join(&bomb_key).parent().unwrap()).unwrap();
    std::fs::write(root.join(&bomb_key), member.repeat(200)).unwrap();

    let target = root.display().to_string();
    let (run, peak) = larch_measured(
        &["restore", "--target", &target, "--account", "acme"],
        dir.path(),
    );
    assert!(peak < 100 << 20, "restore peaked at {} MiB", peak >> 20);
    assert_eq!(run.code, 3, "a skipped object exits 3: {}", run.stderr);
    let printed: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&printed), ids(&good));
    assert!(
        run.stderr
            .contains(&format!("skipped {bomb_key}: line 1 is longer than")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_mezmo_wrapped_archive_restores_as_flat_lines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ts = hours_ago(2, 5_000);
    let wrapped = [
        json!({"_source": {"_account": "acme", "_ts": ts + 2, "_line": "second", "_host": "m1", "_app": "web", "level": "INFO", "_lid": "L2", "_meta": {"k": 1}}}),
        json!({"_source": {"_account": "acme", "_ts": ts + 1, "_line": "first", "_host": "m1", "_app": "web", "level": "ERROR", "_lid": "L1"}}),
        json!({"_id": "L3", "_source": {"_account": "acme", "_ts": ts + 3, "_line": "third", "_host": "m2"}}),
        json!({"_source": {"_account": "acme", "_ts": ts + 1, "_line": "first", "_host": "m1", "_app": "web", "level": "ERROR", "_lid": "L1"}}),
    ];
    plant(
        root,
        &format!("{}.json.gz", name_of("", "acme", 2)),
        &wrapped,
    );
    let (run, lines) = restore(root.to_str().unwrap(), "acme", &[], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        lines,
        vec![
            json!({"_id": "L1", "_account": "acme", "_ts": ts + 1, "_line": "first", "_host": "m1", "_app": "web", "level": "ERROR", "_lid": "L1"}),
            json!({"_id": "L2", "_account": "acme", "_ts": ts + 2, "_line": "second", "_host": "m1", "_app": "web", "level": "INFO", "_lid": "L2", "_meta": {"k": 1}}),
            json!({"_id": "L3", "_account": "acme", "_ts": ts + 3, "_line": "third", "_host": "m2"}),
        ]
    );
    let out = dir.path().join("restored.ndjson");
    let (run, printed) = restore(
        root.to_str().unwrap(),
        "acme",
        &["-o", out.to_str().unwrap()],
        &[],
    );
    assert_eq!((run.code, printed.len()), (0, 0), "{}", run.stderr);
    let written: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written, lines, "--output writes what standard output shows");
    let (run, lines) = restore(
        root.to_str().unwrap(),
        "acme",
        &["--level", "error", "--host", "m1"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(ids(&lines), BTreeSet::from(["L1".to_owned()]));
}

// ---- verify ----

fn verify(data: &Path, target: &str, env: &[(String, String)]) -> Run {
    larch(
        &[
            "verify",
            "--data",
            data.to_str().unwrap(),
            "--target",
            target,
        ],
        env,
    )
}

/// The verify table's row for `key`.
fn row<'a>(run: &'a Run, key: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(key))
        .unwrap_or_else(|| panic!("no row for {key}:\n{}", run.stdout))
}

#[test]
fn verify_passes_on_a_clean_archive_and_names_each_damaged_object() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let target = archive.to_str().unwrap();
    let data = dir.path().join("data");
    let mut d = round_trip_daemon(&data, target, &[]);
    send_round_trip_lines(&d);
    let objects = read_archive(&archive);
    assert_eq!(objects.len(), 7);

    // With the daemon running, the ledger comes through its admin API.
    let run = verify(&data, target, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("all 7 objects match the ledger"),
        "{}",
        run.stdout
    );
    d.terminate();
    assert!(
        !data.join("admin.json").exists(),
        "a clean stop removes the admin file"
    );
    // Stopped, verify opens the spool itself.
    let run = verify(&data, target, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    let key = |i: usize| objects[i].0.clone();
    type Spoil = Box<dyn Fn(&Path)>;
    let damage: Vec<(&str, Spoil, &str)> = vec![
        (
            "deleted",
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()),
            "MISSING",
        ),
        (
            "truncated",
            Box::new(|p: &Path| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() - 9]).unwrap();
            }),
            "size",
        ),
        (
            "altered",
            Box::new(|p: &Path| {
                let mut b = std::fs::read(p).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0x5a;
                std::fs::write(p, &b).unwrap();
            }),
            "checksum differs",
        ),
    ];
    for (i, (what, spoil, says)) in damage.into_iter().enumerate() {
        let path = archive.join(key(i));
        let original = std::fs::read(&path).unwrap();
        spoil(&path);
        let run = verify(&data, target, &[]);
        assert_ne!(run.code, 0, "verify passed with an object {what}");
        let line = row(&run, &key(i));
        assert!(line.contains(says), "{what}: {line}");
        assert!(
            run.stderr.contains("1 of 7 objects do not match"),
            "{what}: {}",
            run.stderr
        );
        std::fs::write(&path, original).unwrap();
    }
    // An object the ledger does not know, in an hour it has uploads of.
    let stray = format!("{}.5.json.gz", name_of("", "acme", 2));
    std::fs::copy(archive.join(key(0)), archive.join(&stray)).unwrap();
    let run = verify(&data, target, &[]);
    assert_ne!(run.code, 0);
    assert!(row(&run, &stray).starts_with("UNKNOWN"), "{}", run.stdout);
    std::fs::remove_file(archive.join(&stray)).unwrap();
    assert_eq!(verify(&data, target, &[]).code, 0);
}

#[test]
fn verify_checks_an_s3_archive_and_finds_this_instance_objects_by_their_metadata() {
    let moto = Moto::start();
    moto.create_bucket("archive");
    let dir = tempfile::tempdir().unwrap();
    let env = Moto::env(&moto.endpoint);
    let data = dir.path().join("data");
    let d = round_trip_daemon(&data, "s3://archive/edge", &env);
    send_round_trip_lines(&d);
    let run = verify(&data, "s3://archive/edge", &env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("all 7 objects match the ledger"),
        "{}",
        run.stdout
    );

    // Objects in an hour the ledger has no upload of, on a day it has: only the
    // one whose metadata names this instance is reported.
    let instance = d.status()["instance"].as_str().unwrap().to_owned();
    let day = |hours: i64| name_of("", "acme", hours)[..26].to_owned();
    let hours = if day(0) == day(1) { 0 } else { 4 };
    let source = format!("{}.json.gz", name_of("edge/", "acme", 1));
    let ours = format!("{}.json.gz", name_of("edge/", "acme", hours));
    moto.copy_as("archive", &source, &ours, &instance);
    moto.copy_as(
        "archive",
        &source,
        &format!("{}.1.json.gz", name_of("edge/", "acme", hours)),
        "0badcafe",
    );
    moto.copy(
        "archive",
        &source,
        &format!("{}.2.json.gz", name_of("edge/", "acme", hours)),
    );
    let run = verify(&data, "s3://archive/edge", &env);
    assert_ne!(run.code, 0);
    let ours = ours.strip_prefix("edge/").unwrap();
    assert!(
        row(&run, ours).contains("written by this instance"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("1 of 8 objects do not match"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    moto.delete("archive", &format!("edge/{ours}"));

    let gone = format!("{}.json.gz", name_of("edge/", "beta", 1));
    moto.delete("archive", &gone);
    let run = verify(&data, "s3://archive/edge", &env);
    assert_ne!(run.code, 0);
    let relative = gone.strip_prefix("edge/").unwrap();
    assert!(row(&run, relative).starts_with("MISSING"), "{}", run.stdout);
}

// ---- drain ----

fn drain(data: &Path, target: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "drain",
        "--data",
        data.to_str().unwrap(),
        "--target",
        target,
    ];
    args.extend(extra);
    larch(&args, &[])
}

fn archived_texts(archive: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for (_, lines) in read_archive(archive) {
        for l in lines {
            *seen
                .entry(l["_line"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    seen
}

fn send_now(d: &Daemon, tag: &str, n: usize) -> Vec<String> {
    let texts: Vec<String> = (0..n).map(|i| format!("{tag} {i}")).collect();
    let lines: Vec<Value> = texts.iter().map(|t| json!({"line": t})).collect();
    let (status, body) = d.ingest_json("ka", &json!({ "lines": lines }));
    assert_eq!(status, 200, "{body}");
    texts
}

fn assert_spool_empty(d: &Daemon) {
    let s = d.status();
    for k in [
        "parts_open",
        "parts_sealed",
        "parts_uploading",
        "parts_uploaded",
        "lines_waiting",
    ] {
        assert_eq!(s[k], 0, "{k} after a drain: {s}");
    }
}

fn assert_exactly(archive: &Path, sent: &[String]) {
    let archived = archived_texts(archive);
    let want: BTreeMap<String, usize> = sent.iter().map(|t| (t.clone(), 1)).collect();
    assert_eq!(archived, want);
}

#[test]
fn drain_empties_a_running_daemon_now_and_late_lines_go_to_a_follow_up() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let target = archive.to_str().unwrap();
    let data = dir.path().join("data");
    // The default late window: without a drain nothing would be archived for hours.
    let d = Daemon::start(&data, &["--target", target, "--key", "ka=acme"]);
    let mut sent = send_now(&d, "before", 40);
    // The admin API wants the token from the data directory, readable by its owner only.
    let admin = data.join("admin.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token: Value = serde_json::from_slice(&std::fs::read(&admin).unwrap()).unwrap();
    assert_eq!(token["addr"], d.addr.as_str());
    for auth in [None, Some("Bearer not-the-token")] {
        let mut request = common::agent().post(format!("http://{}/admin/drain", d.addr));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let r = request.send_empty().unwrap();
        assert_eq!(r.status(), 401, "admin request with {auth:?}");
    }
    assert_eq!(
        d.status()["parts_open"],
        1,
        "a refused drain sealed nothing"
    );
    let run = drain(&data, target, &["--timeout", "60s"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("drained through the larch running at"),
        "{}",
        run.stdout
    );
    assert_exactly(&archive, &sent);
    assert_spool_empty(&d);
    // The daemon goes on; lines of the same hour now make a follow-up part.
    sent.extend(send_now(&d, "after", 5));
    assert_eq!(drain(&data, target, &[]).code, 0);
    assert_exactly(&archive, &sent);
    let keys: Vec<String> = read_archive(&archive).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with("00.1.json.gz")), "{keys:?}");
}

#[test]
fn drain_empties_a_stopped_daemon_and_gives_up_cleanly_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let target = archive.to_str().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&archive).unwrap();
    let mut d = Daemon::start(&data, &["--target", target, "--key", "ka=acme"]);
    let sent = send_now(&d, "killed", 25);
    // Killed: its admin file stays behind, pointing at an address nobody answers.
    d.kill9();
    assert!(data.join("admin.json").exists());

    // The archive directory is gone: the drain cannot finish, and says what is left.
    std::fs::remove_dir(&archive).unwrap();
    let run = drain(&data, target, &["--timeout", "3s"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("drain gave up after 3s: 25 lines"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);

    std::fs::create_dir_all(&archive).unwrap();
    let run = drain(&data, target, &["--timeout", "60s"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("drained with larch stopped"),
        "{}",
        run.stdout
    );
    assert_exactly(&archive, &sent);
    // Nothing is left for the daemon when it starts again, and the ledger knows the object.
    d.start_again();
    assert_spool_empty(&d);
    let run = verify(&data, target, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("all 1 objects match the ledger"),
        "{}",
        run.stdout
    );
}

#[test]
fn restore_reads_every_host_prefix_of_a_host_key_prefix_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let target = archive.to_str().unwrap();
    let config = dir.path().join("larch.toml");
    std::fs::write(&config, "[target]\nkey_prefix = \"edge/{host}/\"\n").unwrap();
    let config = config.to_str().unwrap();
    let mut sent = BTreeSet::new();
    for host in ["shop-1", "shop-2"] {
        let d = Daemon::start_with_env(
            &dir.path().join(host),
            &[
                "--config",
                config,
                "--target",
                target,
                "--late-window",
                "0s",
            ],
            &[
                ("LARCH_TARGET_HOST_NAME".to_owned(), host.to_owned()),
                ("LARCH_KEYS".to_owned(), "k=acme k2=beta".to_owned()),
            ],
        );
        sent.extend(common::objects::send(&d, "k", 2, host, 5));
        common::objects::send(&d, "k2", 2, &format!("beta {host}"), 3);
        d.wait_drained(Duration::from_secs(30));
        // Each host wrote under its own prefix, under its hour's usual name.
        let own = archive.join(format!("edge/{host}/{}.json.gz", name_of("", "acme", 2)));
        assert!(own.exists(), "{} missing", own.display());
    }
    // Objects beside or below the hosts' prefixes are not part of the archive.
    let stray = [json!({"_id": "stray", "_ts": hours_ago(2, 0), "_line": "stray"})];
    plant(
        &archive,
        &format!("{}.json.gz", name_of("edge/", "acme", 2)),
        &stray,
    );
    plant(
        &archive,
        &format!("{}.json.gz", name_of("edge/shop-1/x/", "acme", 2)),
        &stray,
    );

    let (run, lines) = restore(target, "acme", &["--config", config], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let restored: BTreeSet<String> = by_id(&lines)
        .values()
        .map(|l| l["_line"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(restored, sent);
    assert_eq!(lines.len(), 10);
}
