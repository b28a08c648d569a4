//! Archiving to a real S3-compatible server (moto) over HTTP on 127.0.0.1, with a
//! fault proxy in front of it when the test needs the store to misbehave.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::metrics::{scrape, value};
use common::objects::{archive_only, archived_lines, assert_exactly_once, keys, send};
use common::s3::{CountProxy, FaultProxy, Mode, Moto, S3sFs};
use common::{hours_ago, Daemon};
use serde_json::{json, Value};

const BUCKET: &str = "archive";

fn moto_with_bucket() -> Moto {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    moto
}

fn config(dir: &Path, extra: &str) -> String {
    let path = dir.join("larch.toml");
    std::fs::write(
        &path,
        format!(
            "[target]\nretry_max_delay = \"1s\"\n{extra}\n[keys]\nk = \"acme\"\nk2 = \"beta\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn name_of_edge(account: &str, hours: i64) -> String {
    common::objects::name_of("edge/", account, hours)
}

fn start(dir: &Path, name: &str, endpoint: &str, config_path: &str) -> Daemon {
    Daemon::start_with_env(
        &dir.join(name),
        &[
            "--config",
            config_path,
            "--target",
            &format!("s3://{BUCKET}/edge"),
            "--late-window",
            "0s",
            "--follow-up-after",
            "1s",
        ],
        &Moto::env(endpoint),
    )
}

fn archive_objects(moto: &Moto) -> Vec<Value> {
    archive_only(moto.inspect(BUCKET))
}

#[test]
fn objects_are_named_encrypted_and_carry_their_owner() {
    let moto = moto_with_bucket();
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "a", &moto.endpoint, &config(dir.path(), ""));
    let mut sent = send(&d, "k", 3, "acme-3h", 5);
    sent.extend(send(&d, "k", 2, "acme-2h", 3));
    sent.extend(send(&d, "k2", 2, "beta-2h", 4));
    d.wait_drained(Duration::from_secs(60));

    let objects = archive_objects(&moto);
    let mut expected = vec![
        format!("{}.json.gz", name_of_edge("acme", 3)),
        format!("{}.json.gz", name_of_edge("acme", 2)),
        format!("{}.json.gz", name_of_edge("beta", 2)),
    ];
    expected.sort();
    assert_eq!(keys(&objects), expected);
    let instance = d.status()["instance"].as_str().unwrap().to_owned();
    for o in &objects {
        assert_eq!(o["sse"], "AES256", "{}", o["key"]);
        // A gzip file, not gzip transfer encoding: downloads must keep the bytes.
        assert_eq!(o["content_type"], "application/gzip");
        assert!(o["content_encoding"].is_null(), "{o}");
        let meta = &o["metadata"];
        assert_eq!(meta["larch_sha256"], o["sha256"], "{}", o["key"]);
        assert_eq!(meta["larch_instance"], instance.as_str());
        let lines = o["lines"].as_array().unwrap();
        assert_eq!(meta["larch_lines"], lines.len().to_string());
        let account = lines[0]["_account"].as_str().unwrap();
        assert!(
            meta["larch_part"].as_str().unwrap().starts_with(account),
            "{meta}"
        );
    }
    assert_exactly_once(&objects, &sent);
    // Each object went up once, in one put: the bytes sent are theirs.
    let size: u64 = objects.iter().map(|o| o["size"].as_u64().unwrap()).sum();
    assert_eq!(sent_to_store(&d), size);
}

#[test]
fn kms_encryption_is_asked_for_when_configured() {
    let moto = moto_with_bucket();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[s3]\nserver_side_encryption = \"aws:kms\"\nsse_kms_key_id = \"alias/larch-test\"\n",
    );
    let d = start(dir.path(), "a", &moto.endpoint, &cfg);
    send(&d, "k", 2, "kms", 2);
    d.wait_drained(Duration::from_secs(60));
    let objects = archive_objects(&moto);
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["sse"], "aws:kms");
}

#[test]
fn two_hosts_archiving_one_account_never_overwrite_each_other() {
    let moto = moto_with_bucket();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let a = start(dir.path(), "a", &moto.endpoint, &cfg);
    let b = start(dir.path(), "b", &moto.endpoint, &cfg);
    let mut sent = Vec::new();
    for round in 0..3 {
        for (d, host) in [(&a, "a"), (&b, "b")] {
            sent.extend(send(d, "k", 2, &format!("{host} round {round}"), 20));
            sent.extend(send(d, "k", 3, &format!("{host} round {round} older"), 10));
        }
    }
    a.wait_drained(Duration::from_secs(60));
    b.wait_drained(Duration::from_secs(60));

    let objects = archive_objects(&moto);
    assert_exactly_once(&objects, &sent);
    // Every object still holds what its writer put there: nothing was overwritten.
    for o in &objects {
        assert_eq!(o["metadata"]["larch_sha256"], o["sha256"], "{}", o["key"]);
    }
    // Each host's parts of an hour took their own names: the hour's first
    // object and numbered ones after it.
    for hours in [2, 3] {
        let base = name_of_edge("acme", hours);
        let of_hour: Vec<_> = keys(&objects)
            .into_iter()
            .filter(|k| k.starts_with(&base))
            .collect();
        assert!(of_hour.contains(&format!("{base}.json.gz")), "{of_hour:?}");
        assert!(of_hour.len() >= 2, "{of_hour:?}");
        for k in &of_hour {
            let rest = &k[base.len()..];
            let ok = rest == ".json.gz"
                || rest
                    .strip_prefix('.')
                    .and_then(|r| r.strip_suffix(".json.gz"))
                    .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 1));
            assert!(ok, "bad name {k}");
        }
    }
}

/// What `/metrics` says uploads asked of the store, by kind.
fn upload_requests(d: &Daemon, kind: &str) -> u64 {
    value(
        &scrape(&d.addr),
        "larch_upload_requests_total",
        &[("request", kind)],
    )
    .unwrap_or(0.0) as u64
}

#[test]
fn a_host_late_to_an_hour_others_archived_finds_its_name_from_one_listing() {
    let moto = moto_with_bucket();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let mut sent = Vec::new();
    let mut hosts = Vec::new();
    // One after another, so each finds the names of the ones before it.
    for host in ["a", "b", "c", "d"] {
        let d = start(dir.path(), host, &moto.endpoint, &cfg);
        sent.extend(send(&d, "k", 2, &format!("host {host}"), 10));
        d.wait_drained(Duration::from_secs(60));
        hosts.push(d);
    }
    let objects = archive_objects(&moto);
    assert_exactly_once(&objects, &sent);
    let base = name_of_edge("acme", 2);
    let mut names = keys(&objects);
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("{base}.1.json.gz"),
            format!("{base}.2.json.gz"),
            format!("{base}.3.json.gz"),
            format!("{base}.json.gz"),
        ]
    );
    // The fourth host listed the hour once and put its object once: no
    // attempts at names already taken, no HEAD to ask whose they are.
    let last = &hosts[3];
    let asked = ["list", "put", "head"].map(|kind| upload_requests(last, kind));
    assert_eq!(asked, [1, 1, 0], "list, put and head requests");
    assert_eq!(
        sent_to_store(last),
        objects
            .iter()
            .find(|o| o["key"] == format!("{base}.3.json.gz"))
            .and_then(|o| o["size"].as_u64())
            .unwrap(),
        "its object's bytes went to the store once"
    );
}

/// A larch whose requests to moto go through a counting proxy.
fn host_behind_a_counting_proxy() -> (Moto, CountProxy, tempfile::TempDir, Daemon) {
    let moto = moto_with_bucket();
    let proxy = CountProxy::start(&moto.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let d = start(dir.path(), "a", &proxy.endpoint, &cfg);
    (moto, proxy, dir, d)
}

#[test]
fn the_store_is_probed_once_per_start_and_an_object_costs_a_listing_and_a_put() {
    let (moto, proxy, _dir, d) = host_behind_a_counting_proxy();
    let sent = send(&d, "k", 2, "counted", 5);
    d.wait_drained(Duration::from_secs(60));
    assert_exactly_once(&archive_objects(&moto), &sent);
    // The start-up check (a create, the same create refused, the delete of
    // its object), then the hour's listing and the object's put: the first
    // upload relies on the check instead of probing again.
    let expected: std::collections::BTreeMap<String, u64> =
        [("put", 2), ("put-refused", 1), ("post", 1), ("list", 1)]
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect();
    assert_eq!(proxy.requests(), expected);
}

/// Writers in the fleet test: each a larch process of its own.
const FLEET: usize = 8;

#[test]
fn a_fleet_archiving_one_hour_at_once_keeps_every_line_once_and_overwrites_nothing() {
    // moto's own check of a create-only write is not atomic; S3's is.
    let moto = Moto::start_atomic();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    // Half the hosts are told the fleet's size and spread their first picks;
    // the others race for the hour's first free name and spread after losing.
    let told = dir.path().join("told");
    std::fs::create_dir(&told).unwrap();
    let configs = [
        config(&told, &format!("fleet_size = {FLEET}")),
        config(dir.path(), ""),
    ];
    let hosts: Vec<Daemon> = (0..FLEET)
        .map(|i| {
            let cfg = &configs[i % 2];
            start(dir.path(), &format!("host{i}"), &moto.endpoint, cfg)
        })
        .collect();
    // Every host's part of the hour seals at once and races for its name.
    let mut sent = Vec::new();
    for (i, d) in hosts.iter().enumerate() {
        sent.extend(send(d, "k", 2, &format!("host {i}"), 40));
    }
    for d in &hosts {
        d.wait_drained(Duration::from_secs(120));
    }

    let objects = archive_objects(&moto);
    assert_exactly_once(&objects, &sent);
    assert_eq!(
        objects.len(),
        FLEET,
        "one object per host: {:?}",
        keys(&objects)
    );
    // Each object still holds what its writer put there.
    for o in &objects {
        assert_eq!(o["metadata"]["larch_sha256"], o["sha256"], "{}", o["key"]);
    }
    // Named as docs/FORMAT.md says: the hour's name, and numbers from 1.
    let base = name_of_edge("acme", 2);
    for k in keys(&objects) {
        let rest = &k[base.len()..];
        let named = rest == ".json.gz"
            || rest
                .strip_prefix('.')
                .and_then(|r| r.strip_suffix(".json.gz"))
                .is_some_and(|n| !n.starts_with('0') && n.parse::<u32>().is_ok());
        assert!(k.starts_with(&base) && named, "bad name {k}");
    }
    // Every host's ledger matches the store.
    for d in &hosts {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_larch"))
            .args(["verify", "--data", d.data.to_str().unwrap()])
            .args(["--target", &format!("s3://{BUCKET}/edge")])
            .envs(Moto::env(&moto.endpoint))
            .env_remove("LARCH_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("all 1 objects match the ledger"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_crash_between_the_put_and_the_bookkeeping_makes_no_second_object() {
    let moto = moto_with_bucket();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let mut d = start(dir.path(), "a", &moto.endpoint, &cfg);
    d.arm_fault("after-put");
    let sent = send(&d, "k", 2, "crash", 7);
    d.died_at_fault();
    assert_eq!(archive_objects(&moto).len(), 1, "the put happened");
    d.start_without_fault();
    d.wait_drained(Duration::from_secs(60));
    let objects = archive_objects(&moto);
    assert_eq!(
        keys(&objects),
        vec![format!("{}.json.gz", name_of_edge("acme", 2))]
    );
    assert_exactly_once(&objects, &sent);
    assert!(
        d.log().contains("object already holds this part"),
        "the restart should recognise its own object"
    );
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_outage_of_any_kind_loses_nothing_and_uploads_resume_by_themselves() {
    let moto = moto_with_bucket();
    let proxy = FaultProxy::start(&moto.endpoint, Mode::Refuse);
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "a", &proxy.endpoint, &config(dir.path(), ""));
    let mut sent = Vec::new();

    // The link is down: ingest goes on, lines wait, status says why.
    sent.extend(send(&d, "k", 4, "during refuse", 10));
    wait_for("a failed upload", Duration::from_secs(30), || {
        d.status()["upload_failures"].as_u64().unwrap_or(0) > 0
    });
    sent.extend(send(&d, "k", 3, "during refuse, later", 10));

    // The store answers, but with 500 and 503 SlowDown.
    for code in [500, 503] {
        proxy.set(Mode::Status(code));
        let failures = d.status()["upload_failures"].as_u64().unwrap();
        sent.extend(send(&d, "k2", 3, &format!("during {code}"), 5));
        wait_for(
            &format!("a failure under {code}"),
            Duration::from_secs(30),
            || d.status()["upload_failures"].as_u64().unwrap() > failures,
        );
        let s = d.status();
        assert!(
            s["last_error"]
                .as_str()
                .unwrap()
                .contains(&code.to_string()),
            "{s}"
        );
        assert!(
            s["sync_paused"].is_null(),
            "a {code} is worth retrying: {s}"
        );
    }

    // A 403 needs a person: uploads pause and say so.
    proxy.set(Mode::Status(403));
    wait_for("sync paused", Duration::from_secs(30), || {
        !d.status()["sync_paused"].is_null()
    });
    let s = d.status();
    assert!(s["sync_paused"].as_str().unwrap().contains("403"), "{s}");
    sent.extend(send(&d, "k", 2, "during 403", 10));
    assert!(archive_objects(&moto).is_empty(), "nothing got through yet");
    assert_eq!(
        d.status()["lines_waiting"].as_u64().unwrap(),
        sent.len() as u64
    );

    // Fixed: everything goes out by itself, exactly once.
    proxy.set(Mode::Pass);
    let s = d.wait_drained(Duration::from_secs(90));
    assert!(s["sync_paused"].is_null(), "{s}");
    let objects = archive_objects(&moto);
    assert_exactly_once(&objects, &sent);
}

/// After an outage long enough that every part backs off for many seconds,
/// the store answering again ends every part's wait at once: the probe finds
/// it, the oldest part goes first, and its success lets the rest go.
#[test]
fn every_waiting_part_goes_up_within_seconds_of_the_link_returning() {
    let moto = moto_with_bucket();
    let proxy = FaultProxy::start(&moto.endpoint, Mode::Refuse);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("larch.toml");
    std::fs::write(
        &config,
        "[target]\nretry_max_delay = \"60s\"\n[keys]\nk = \"acme\"\nk2 = \"beta\"\n",
    )
    .unwrap();
    let d = start(
        dir.path(),
        "a",
        &proxy.endpoint,
        &config.display().to_string(),
    );
    let mut sent = Vec::new();
    for hours in 2..5 {
        sent.extend(send(&d, "k", hours, &format!("acme {hours}h"), 10));
    }
    for hours in 2..4 {
        sent.extend(send(&d, "k2", hours, &format!("beta {hours}h"), 10));
    }
    // Six failures each: every part now waits 16 to 32 s for its next try.
    wait_for(
        "six failed attempts per part",
        Duration::from_secs(120),
        || d.status()["upload_failures"].as_u64().unwrap_or(0) >= 30,
    );
    proxy.set(Mode::Pass);
    let back = Instant::now();
    let s = d.wait_drained(Duration::from_secs(60));
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the last part landed {took:?} after the link returned: {s}"
    );
    assert_exactly_once(&archive_objects(&moto), &sent);
}

#[test]
fn check_target_reports_each_point_and_a_refused_encryption_header() {
    let moto = moto_with_bucket();
    let run = |endpoint: &str, bucket: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_larch"))
            .args(["check-target", "--target", &format!("s3://{bucket}/edge")])
            .envs(Moto::env(endpoint))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = run(&moto.endpoint, BUCKET);
    assert!(ok, "{text}");
    for point in ["reachable", "writable", "encryption", "conditional create"] {
        let line = text.lines().find(|l| l.starts_with(point)).unwrap();
        assert!(line.contains("ok"), "{line}");
    }
    assert!(text.contains("AES256"), "{text}");
    assert!(
        !text.contains("test\n") && !text.contains("AWS_SECRET"),
        "{text}"
    );

    let (ok, text) = run(&moto.endpoint, "no-such-bucket");
    assert!(!ok);
    assert!(text.contains("does not exist"), "{text}");

    // A store that rejects the encryption header is a configuration error.
    let proxy = FaultProxy::start(&moto.endpoint, Mode::Status(400));
    let (ok, text) = run(&proxy.endpoint, BUCKET);
    assert!(!ok);
    let line = text.lines().find(|l| l.starts_with("encryption")).unwrap();
    assert!(
        line.contains("FAILED") && line.contains("server_side_encryption"),
        "{line}"
    );

    // A dead link is reported as unreachable.
    proxy.set(Mode::Refuse);
    let (ok, text) = run(&proxy.endpoint, BUCKET);
    assert!(!ok);
    let line = text.lines().find(|l| l.starts_with("reachable")).unwrap();
    assert!(line.contains("FAILED"), "{line}");
}

/// 500 lines of random text, stamped two hours ago: about 3 MiB of gzip,
/// since random text barely compresses.
fn incompressible_lines(request: usize) -> Vec<Value> {
    use base64::Engine;
    (0..500)
        .map(|i| {
            let noise: Vec<u8> = (0..6000).map(|_| rand::random::<u8>()).collect();
            let text = format!(
                "big {request} {i} {}",
                base64::engine::general_purpose::STANDARD.encode(noise)
            );
            json!({"timestamp": hours_ago(2, i), "line": text})
        })
        .collect()
}

/// Sends lines of random text that make one part of about 12 MiB of gzip,
/// over the 8 MiB of one put; returns how many lines.
fn send_a_large_part(d: &Daemon) -> usize {
    let mut sent = 0;
    for request in 0..4 {
        let lines = incompressible_lines(request);
        sent += lines.len();
        let (status, body) = d.ingest_json("k", &json!({ "lines": lines }));
        assert_eq!(status, 200, "{body}");
    }
    sent
}

/// Nothing is left under `.larch-upload/`, where large objects go up first.
fn assert_no_temporary_uploads(moto: &Moto) {
    let leftovers: Vec<String> = moto
        .inspect(BUCKET)
        .iter()
        .filter_map(|o| o["key"].as_str())
        .filter(|k| k.contains(".larch-upload"))
        .map(str::to_owned)
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary uploads left: {leftovers:?}"
    );
}

/// What `/metrics` says was sent to the store.
fn sent_to_store(d: &Daemon) -> u64 {
    value(&scrape(&d.addr), "larch_upload_sent_bytes_total", &[]).unwrap_or(0.0) as u64
}

#[test]
fn a_large_object_that_loses_the_race_for_its_name_is_copied_to_the_next_not_sent_again() {
    let (moto, proxy, _dir, d) = host_behind_a_counting_proxy();
    // Another writer takes the hour's first name just after this host listed
    // the hour and found it free.
    let first = format!("{}.json.gz", name_of_edge("acme", 2));
    let other = common::gzip(b"{\"_id\":\"other\",\"_line\":\"another writer\"}\n");
    proxy.plant_after_next_listing(BUCKET, &first, &other);
    let sent = send_a_large_part(&d);
    d.wait_drained(Duration::from_secs(120));
    let objects = archive_objects(&moto);
    let names = keys(&objects);
    assert_eq!(names.len(), 2, "{names:?}");
    let ours = objects.iter().find(|o| o["key"] != first.as_str()).unwrap();
    let size = ours["size"].as_u64().unwrap();
    assert!(size > 8 << 20);
    assert_eq!(archived_lines(std::slice::from_ref(ours)).len(), sent);
    // Its bytes went to the store once; the second name got a copy.
    assert_eq!(sent_to_store(&d), size);
    assert_eq!(
        (upload_requests(&d, "put"), upload_requests(&d, "copy")),
        (1, 1)
    );
    assert_no_temporary_uploads(&moto);
}

#[test]
fn bytes_sent_to_the_store_are_counted_as_they_go() {
    let moto = moto_with_bucket();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "upload_rate_limit = \"4MiB/s\"");
    let d = start(dir.path(), "a", &moto.endpoint, &cfg);
    for request in 0..4 {
        let (status, body) = d.ingest_json("k", &json!({ "lines": incompressible_lines(request) }));
        assert_eq!(status, 200, "{body}");
    }
    // About 12 MiB at 4 MiB/s, in parts: the count moves while no object is done.
    wait_for(
        "bytes sent before the object is done",
        Duration::from_secs(60),
        || sent_to_store(&d) > 0,
    );
    assert_eq!(d.status()["bytes_uploaded"], 0, "{}", d.status());
    d.wait_drained(Duration::from_secs(120));
    let objects = archive_objects(&moto);
    assert_eq!(objects.len(), 1);
    assert!(objects[0]["size"].as_u64().unwrap() > 8 << 20);
    assert_eq!(sent_to_store(&d), objects[0]["size"].as_u64().unwrap());
}

#[test]
fn a_part_too_large_for_one_put_goes_up_in_parts_and_survives_a_crash() {
    let moto = moto_with_bucket();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let mut d = start(dir.path(), "a", &moto.endpoint, &cfg);
    d.arm_fault("after-put");
    let sent = send_a_large_part(&d);
    d.died_at_fault();
    d.start_without_fault();
    d.wait_drained(Duration::from_secs(120));
    assert_no_temporary_uploads(&moto);
    let objects = archive_objects(&moto);
    assert_eq!(
        keys(&objects),
        vec![format!("{}.json.gz", name_of_edge("acme", 2))]
    );
    assert!(objects[0]["size"].as_u64().unwrap() > 8 << 20);
    assert_eq!(objects[0]["sse"], "AES256");
    let archived = archived_lines(&objects);
    assert_eq!(archived.len(), sent);
    assert!(archived.values().all(|n| *n == 1));
    assert!(d.log().contains("object already holds this part"));
}

#[test]
fn a_store_that_cannot_refuse_overwrites_is_used_only_in_single_writer_mode() {
    let moto = moto_with_bucket();
    let dir = tempfile::tempdir().unwrap();
    let no_conditional = "[s3]\nconditional_put = \"disabled\"\n";

    // Without single-writer mode, larch refuses to run.
    let cfg = config(dir.path(), no_conditional);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_larch"))
        .args([
            "run",
            "--config",
            &cfg,
            "--target",
            &format!("s3://{BUCKET}/edge"),
        ])
        .args(["--data", dir.path().join("refused").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .envs(Moto::env(&moto.endpoint))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "larch kept running");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("target.single_writer = true"), "{stderr}");

    // With it, larch runs, says so, and still never overwrites what it finds.
    let cfg = config(
        dir.path(),
        &format!("single_writer = true\n{no_conditional}"),
    );
    let d = start(dir.path(), "single", &moto.endpoint, &cfg);
    assert!(
        d.status()["target"]
            .as_str()
            .unwrap()
            .contains("single-writer mode"),
        "{}",
        d.status()
    );
    let taken = format!("{}.json.gz", name_of_edge("acme", 2));
    let r = common::agent()
        .put(format!("{}/{BUCKET}/{taken}", moto.endpoint))
        .send(&b"someone else's"[..])
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = send(&d, "k", 2, "single", 3);
    d.wait_drained(Duration::from_secs(60));
    let all = moto.inspect(BUCKET);
    let theirs = all.iter().find(|o| o["key"] == taken.as_str()).unwrap();
    assert_eq!(theirs["size"], 14, "the other object was overwritten");
    let ours: Vec<Value> = archive_objects(&moto)
        .into_iter()
        .filter(|o| o["key"] != taken.as_str())
        .collect();
    assert_eq!(
        keys(&ours),
        vec![format!("{}.1.json.gz", name_of_edge("acme", 2))]
    );
    assert_eq!(archived_lines(&ours).len(), sent.len());
}

#[test]
fn a_wrong_secret_pauses_uploads_until_the_right_one_is_given() {
    let s3s = S3sFs::start(&[BUCKET]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let mut d = start(dir.path(), "a", &s3s.endpoint, &cfg);
    d.env = s3s.env("a-wrong-secret");
    d.restart();
    let sent = send(&d, "k", 2, "signed", 6);
    wait_for("sync paused", Duration::from_secs(30), || {
        !d.status()["sync_paused"].is_null()
    });
    let s = d.status();
    let paused = s["sync_paused"].as_str().unwrap();
    assert!(
        paused.contains("403") && paused.contains("SignatureDoesNotMatch"),
        "{s}"
    );
    assert!(
        !paused.contains("a-wrong-secret"),
        "a secret was printed: {paused}"
    );
    assert!(!d.log().contains("a-wrong-secret"), "a secret was logged");
    assert_eq!(s["lines_waiting"].as_u64().unwrap(), sent.len() as u64);

    d.env = s3s.env(S3sFs::SECRET_KEY);
    d.restart();
    d.wait_drained(Duration::from_secs(60));
    let objects: Vec<Value> = common::read_archive(&s3s.root.path().join(BUCKET))
        .into_iter()
        .filter(|(name, _)| name.ends_with(".json.gz"))
        .map(|(name, lines)| json!({"key": name, "lines": lines}))
        .collect();
    assert_eq!(
        keys(&objects),
        vec![format!("{}.json.gz", name_of_edge("acme", 2))]
    );
    assert_exactly_once(&objects, &sent);
}
