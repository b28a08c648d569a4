//! larch as an agent on a host: configuration layers and `validate`, the
//! Prometheus endpoint, reload on SIGHUP, TLS on the ingest listener.
//!
//! (Over 500 lines: nine tests of what an operator configures, each short,
//! sharing the config files and clients they build.)

use crate::common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::metrics::{scrape, value};
use common::{agent, free_port, hours_ago, read_archive, Daemon};
use serde_json::json;

fn larch(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_larch"))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("cannot run larch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

#[test]
fn settings_come_from_the_file_then_the_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir.path().join("larch.toml"),
        "[spool]\nlate_window = \"2h\"\nfollow_up_after = \"45m\"\n\
         [target]\ngzip_level = 3\nretry_max_delay = \"10s\"\n[keys]\nsecret-1 = \"acme\"\n",
    );
    let env = [
        ("LARCH_SPOOL_LATE_WINDOW", "1h"),
        ("LARCH_TARGET_GZIP_LEVEL", "9"),
        ("LARCH_INGEST_MAX_CLOCK_SKEW", "1m"),
    ];
    let (ok, out, err) = larch(
        &[
            "config",
            "--config",
            &cfg,
            "--set",
            "spool.late_window=30m",
            "--set",
            "ingest.max_clock_skew=2m",
        ],
        &env,
    );
    assert!(ok, "{err}");
    let table: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let expected = [
        ("spool", "late_window", "\"30m\"", "flag over env over file"),
        ("spool", "follow_up_after", "\"45m\"", "file alone"),
        ("target", "gzip_level", "9", "env over file"),
        ("target", "retry_max_delay", "\"10s\"", "file alone"),
        ("ingest", "max_clock_skew", "\"2m\"", "flag over env"),
    ];
    for (section, key, value, why) in expected {
        assert_eq!(
            table[section][key].to_string(),
            value,
            "{section}.{key}: {why}"
        );
    }
    assert!(
        out.contains("overridden by LARCH_INGEST_MAX_CLOCK_SKEW"),
        "{out}"
    );
    assert!(!out.contains("secret-1"), "keys are never printed: {out}");
    assert!(out.contains("1 key(s) for acme"), "{out}");

    // The default config is the defaults, documented: it validates as a file.
    let (ok, default, _) = larch(&["config", "--default"], &[]);
    assert!(ok);
    let file = write(&dir.path().join("default.toml"), &default);
    let (ok, out, err) = larch(&["validate", "--config", &file], &[]);
    assert!(ok && out.contains("valid"), "{out}{err}");
}

/// Runs `larch validate` on `config` with `extra` arguments and `env`; asserts it
/// fails with every one of `needles` in its message.
fn refused(config: &str, extra: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let mut args = vec!["validate", "--config", config];
    args.extend_from_slice(extra);
    let (ok, _, err) = larch(&args, env);
    assert!(!ok, "larch validate {args:?} passed");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

#[test]
fn validate_names_the_line_of_an_unknown_key_and_of_a_bad_duration() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write(
        &dir.path().join("typo.toml"),
        "[keys]\nk = \"acme\"\n\n[spool]\nlate_windw = \"2h\"\n",
    );
    refused(&typo, &[], &[], &["line 5", "unknown field `late_windw`"]);
    // The file's error stands whatever the environment says.
    refused(&typo, &[], &[("LARCH_SPOOL_DIR", "x")], &["line 5"]);

    let bad = write(
        &dir.path().join("bad.toml"),
        "[target]\ngzip_level = 6\nretry_max_delay = \"soon\"\n",
    );
    refused(&bad, &[], &[], &["line 3", "\"soon\" is not a duration"]);

    let good = write(&dir.path().join("good.toml"), "[keys]\nk = \"acme\"\n");
    let env = [("LARCH_SPOOL_MIN_FREE_SPACE", "lots")];
    refused(
        &good,
        &[],
        &env,
        &["LARCH_SPOOL_MIN_FREE_SPACE", "\"lots\" is not a size"],
    );
    let open = ["--set", "ingest.listen=0.0.0.0:7280"];
    refused(&good, &open, &[], &["--insecure-listen"]);
}

/// Secrets of the tests below: none of them may ever be printed.
const SECRETS: [&str; 7] = [
    "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY",
    "FwoGZXIvYXdzEXAMPLESESSIONTOKEN",
    "sv=2024-01-01&sig=EXAMPLESASSIGNATURE",
    "QUNDT1VOVEtFWUVYQU1QTEVYWFg=",
    "clientSECRETexample42",
    "MIIEvQIBADANBgkqhkiGEXAMPLEPRIVATEKEY",
    "bearerTOKENexample99",
];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} printed {secret:?}: {text}");
    }
}

#[test]
fn larch_config_shows_store_secrets_as_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let [s3_secret, s3_token, sas, account_key, client_secret, sa_key, bearer] = SECRETS;
    let cfg = write(
        &dir.path().join("larch.toml"),
        &format!(
            "[s3]\nregion = \"eu-west-1\"\naccess_key_id = \"AKIAEXAMPLEID\"\n\
             secret_access_key = \"{s3_secret}\"\nsession_token = \"{s3_token}\"\n\
             [azure]\naccount_name = \"acct\"\naccess_key = \"{account_key}\"\n\
             sas_token = \"{sas}\"\nclient_secret = \"{client_secret}\"\n\
             [gcs]\nservice_account_key = '{{\"private_key\":\"{sa_key}\"}}'\n"
        ),
    );
    let env = [("LARCH_AZURE_BEARER_TOKEN", bearer)];
    let (ok, out, err) = larch(&["config", "--config", &cfg], &env);
    assert!(ok, "{err}");
    assert_no_secret("larch config", &out);
    let table: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let shown = |section: &str, key: &str| table[section][key].as_str().unwrap().to_owned();
    for (section, key) in [
        ("s3", "secret_access_key"),
        ("s3", "session_token"),
        ("azure", "access_key"),
        ("azure", "sas_token"),
        ("azure", "client_secret"),
        ("azure", "bearer_token"),
        ("gcs", "service_account_key"),
    ] {
        assert_eq!(shown(section, key), "<redacted>", "{section}.{key}");
    }
    // What is not secret stays readable.
    assert_eq!(shown("s3", "region"), "eu-west-1");
    assert_eq!(shown("s3", "access_key_id"), "AKIAEXAMPLEID");
    assert_eq!(shown("azure", "account_name"), "acct");
}

#[test]
fn config_errors_name_the_line_but_never_echo_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let [s3_secret, _, _, _, _, _, key] = SECRETS;
    let cases = [
        (
            "a line that does not parse, in [s3]",
            format!("[s3]\nregion = \"eu-west-1\"\nsecret_access_key = {s3_secret}\n"),
            "line 3",
        ),
        (
            "an inline store table that does not parse",
            format!("s3 = {{ secret_access_key = \"{s3_secret}\" region = \"x\" }}\n"),
            "line 1",
        ),
        (
            "a bad value in [keys], whose keys are the secrets",
            format!("[keys]\n\"{key}\" = 42\n"),
            "line 2",
        ),
        (
            "a key given twice",
            format!("[keys]\n\"{key}\" = \"acme\"\n\"{key}\" = \"beta\"\n"),
            "line 3",
        ),
        (
            "a key in the wrong section",
            format!("[spool]\ndir = \"data\"\n\"{key}\" = \"acme\"\n"),
            "line 3",
        ),
    ];
    for (what, text, line) in cases {
        let cfg = write(&dir.path().join("bad.toml"), &text);
        for command in ["validate", "config", "run"] {
            let (ok, out, err) = larch(&[command, "--config", &cfg], &[]);
            assert!(!ok, "{what}: larch {command} passed");
            assert!(
                err.contains(line),
                "{what}: larch {command} does not say {line}: {err}"
            );
            assert_no_secret(&format!("{what}: larch {command}"), &format!("{out}{err}"));
        }
    }
}

/// The demo key is printed in the README: on a network address, with no keys
/// configured, it would let anyone write lines. larch refuses to start instead.
#[test]
fn a_network_listener_without_keys_refuses_to_start_rather_than_take_the_demo_key() {
    let dir = tempfile::tempdir().unwrap();
    let keyless = write(&dir.path().join("keyless.toml"), "");
    let listen = format!("0.0.0.0:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_larch"))
        .args([
            "run",
            "--config",
            &keyless,
            "--insecure-listen",
            "--listen",
            &listen,
        ])
        .arg("--data")
        .arg(dir.path().join("data"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let local = listen.replace("0.0.0.0", "127.0.0.1");
            let demo = agent()
                .post(format!("http://{local}/logs/ingest"))
                .header("apikey", "larch-demo-key")
                .header("Content-Type", "application/json")
                .send(r#"{"lines":[{"line":"anyone"}]}"#)
                .map(|r| r.status().as_u16());
            let _ = child.kill();
            let _ = child.wait();
            panic!("larch runs on {listen} with no keys; the demo key got {demo:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!exit.success());
    for needle in ["with no ingestion keys configured", "[keys]", "--key"] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    // validate says the same, and keys from anywhere put it right.
    let flags = [
        "--set",
        &format!("ingest.listen={listen}"),
        "--set",
        "ingest.insecure_listen=true",
    ];
    refused(&keyless, &flags, &[], &["demo key"]);
    let mut args = vec!["validate", "--config", &keyless];
    args.extend_from_slice(&flags);
    let (ok, out, err) = larch(&args, &[("LARCH_KEYS", "k=acme")]);
    assert!(ok, "{out}{err}");
}

/// A reload whose configuration lost its keys (an edit gone wrong, a secret
/// not mounted) must not fall back to the public demo key.
#[test]
fn a_reload_that_would_leave_no_keys_is_refused_and_the_running_keys_stay() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("larch.toml");
    let cfg = write(&cfg_path, "[keys]\nk1 = \"acme\"\n");
    let d = Daemon::start(&dir.path().join("data"), &["--config", &cfg]);
    let line = json!({"lines": [{"line": "hello"}]});
    assert_eq!(d.ingest_json("k1", &line).0, 200);
    assert_eq!(d.ingest_json("larch-demo-key", &line).0, 401);

    write(&cfg_path, "[spool]\nlate_window = \"6h\"\n");
    d.hangup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("configuration reloaded") && !d.log().contains("not reloaded") {
        assert!(Instant::now() < deadline, "no reload: {}", d.log_tail(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.log().contains("not reloaded") && d.log().contains("demo key"),
        "{}",
        d.log_tail(10)
    );
    assert_eq!(
        d.ingest_json("k1", &line).0,
        200,
        "the running key stays: {}",
        d.log_tail(10)
    );
    assert_eq!(d.ingest_json("larch-demo-key", &line).0, 401);
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_happens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir.path().join("larch.toml"), "[keys]\nk = \"acme\"\n");
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let d = Daemon::start(
        &dir.path().join("data"),
        &[
            "--config",
            &cfg,
            "--late-window",
            "0s",
            "--follow-up-after",
            "0s",
            "--metrics-listen",
            &metrics_addr,
        ],
    );
    for path in ["health", "ready"] {
        let r = agent()
            .get(format!("http://{}/{path}", d.addr))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "/{path}");
    }

    common::objects::send(&d, "k", 2, "first", 5);
    let samples = scrape(&d.addr);
    let ingested = [("account", "acme"), ("source", "http")];
    assert_eq!(
        value(&samples, "larch_ingested_lines_total", &ingested),
        Some(5.0)
    );
    assert_eq!(
        value(&samples, "larch_http_requests_total", &[("status", "200")]),
        Some(1.0)
    );
    assert!(
        value(&samples, "larch_commit_seconds_count", &[]).unwrap_or(0.0) >= 1.0,
        "{samples:?}"
    );
    assert!(value(&samples, "larch_spool_parts", &[("state", "open")]).is_some());

    // The hour is sealed and archived: more of its lines open a follow-up part.
    d.wait_drained(Duration::from_secs(60));
    common::objects::send(&d, "k", 2, "second", 7);
    let (status, _) = d.ingest_json("wrong", &json!({"lines": [{"line": "x"}]}));
    assert_eq!(status, 401);
    d.wait_drained(Duration::from_secs(60));
    // The separate metrics address serves the same registry.
    let samples = scrape(&metrics_addr);
    assert_eq!(
        value(&samples, "larch_ingested_lines_total", &ingested),
        Some(12.0)
    );
    assert!(value(&samples, "larch_ingested_bytes_total", &ingested).unwrap() >= 12.0 * 12.0);
    assert_eq!(
        value(&samples, "larch_http_requests_total", &[("status", "200")]),
        Some(2.0)
    );
    assert_eq!(
        value(&samples, "larch_http_requests_total", &[("status", "401")]),
        Some(1.0)
    );
    assert!(
        value(&samples, "larch_uploads_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0,
        "{samples:?}"
    );
    assert!(value(&samples, "larch_upload_bytes_total", &[]).unwrap_or(0.0) > 0.0);
    assert_eq!(
        value(&samples, "larch_follow_up_parts_total", &[]),
        Some(1.0)
    );
    assert_eq!(value(&samples, "larch_spool_lines_waiting", &[]), Some(0.0));
    assert_eq!(
        value(&samples, "larch_oldest_unsynced_hour_age_seconds", &[]),
        Some(0.0)
    );
    let r = agent()
        .get(format!("http://{metrics_addr}/ready"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn sighup_adds_an_ingestion_key_without_a_restart_or_a_lost_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("larch.toml");
    let cfg = write(&cfg_path, "[keys]\nk1 = \"acme\"\n");
    let d = Arc::new(Daemon::start(
        &dir.path().join("data"),
        &[
            "--config",
            &cfg,
            "--late-window",
            "0s",
            "--follow-up-after",
            "0s",
        ],
    ));
    let (status, _) = d.ingest_json("k2", &json!({"lines": [{"line": "too early"}]}));
    assert_eq!(status, 401);

    // One client keeps sending with the old key through the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sender = {
        let (d, stop, acked) = (d.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let texts: Vec<String> = (0..20).map(|i| format!("steady {n} {i}")).collect();
                let lines: Vec<_> = texts
                    .iter()
                    .map(|t| json!({"line": t, "timestamp": hours_ago(2, 0)}))
                    .collect();
                let (status, body) = d.ingest_json("k1", &json!({ "lines": lines }));
                assert_eq!(
                    status, 200,
                    "the old key stays valid through the reload: {body}"
                );
                acked.lock().unwrap().extend(texts);
                n += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    write(&cfg_path, "[keys]\nk1 = \"acme\"\nk2 = \"beta\"\n");
    d.hangup();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = d.ingest_json(
            "k2",
            &json!({"lines": [{"line": "new key", "timestamp": hours_ago(2, 0)}]}),
        );
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(
            Instant::now() < deadline,
            "the new key was not taken: {}",
            d.log_tail(10)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert_eq!(d.starts(), 1);
    assert!(
        d.log().contains("now in force: 2 ingestion key(s)"),
        "{}",
        d.log_tail(10)
    );

    d.wait_drained(Duration::from_secs(60));
    let mut archived = Vec::new();
    for (_, lines) in read_archive(&d.data.join("archive")) {
        archived.extend(
            lines
                .iter()
                .map(|l| l["_line"].as_str().unwrap().to_owned()),
        );
    }
    let unique: BTreeSet<&String> = archived.iter().collect();
    assert_eq!(unique.len(), archived.len(), "a line was archived twice");
    let acked = acked.lock().unwrap();
    assert!(acked.len() >= 20, "the sender got nothing through");
    for text in acked.iter() {
        assert!(unique.contains(text), "acked line {text:?} was lost");
    }
    assert!(unique.contains(&"new key".to_owned()));
}

/// Sends one HTTP/1.1 request over TLS, trusting only `ca`; returns the response.
fn https_request(addr: &str, ca: &rcgen::Certificate, request: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "localhost".try_into().unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response);
    response
}

#[test]
fn ingest_over_tls_with_a_certificate_made_here() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = write(&dir.path().join("cert.pem"), &made.cert.pem());
    let key = write(
        &dir.path().join("key.pem"),
        &made.signing_key.serialize_pem(),
    );
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_larch"))
        .args([
            "run",
            "--listen",
            &addr,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--key",
            "k=acme",
            "--set",
            "ingest.header_timeout=2s",
        ])
        .arg("--data")
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let local = loop {
        assert!(child.try_wait().unwrap().is_none(), "larch exited");
        assert!(Instant::now() < deadline, "larch did not start");
        if let Ok(text) = std::fs::read_to_string(data.join("admin.json")) {
            let file: serde_json::Value = serde_json::from_str(&text).unwrap();
            break file["addr"].as_str().unwrap().to_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(
        local, addr,
        "local tools get a plain loopback listener of their own"
    );
    while agent()
        .get(format!("http://{local}/health"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "larch did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let body = r#"{"lines":[{"line":"over tls"}]}"#;
    let request = format!(
        "POST /logs/ingest?hostname=h HTTP/1.1\r\nHost: localhost\r\napikey: k\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = https_request(&addr, &made.cert, &request);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");

    // A client that never starts its handshake is let go after the header timeout.
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = matches!(silent.read(&mut buf), Ok(0) | Err(_));
    assert!(
        closed && started.elapsed() < Duration::from_secs(6),
        "a silent TLS client held its connection for {:?}",
        started.elapsed()
    );

    // Plain HTTP on the TLS port gets no answer.
    let plain = agent().get(format!("http://{addr}/health")).call();
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));

    let mut r = agent()
        .get(format!("http://{local}/status"))
        .call()
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(status["lines_waiting"], 1, "{status}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit}");
}
