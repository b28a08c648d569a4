//! The local tools' way to the daemon: `<data>/admin.json` names the address
//! and the token of the admin API. A daemon that was killed leaves the file
//! behind, and something else may listen on that address later: the token
//! must never reach it, and its answers must not be believed.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Daemon;

/// What a `larch` command printed and how it ended.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn larch(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_larch"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("LARCH_CONFIG")
        .output()
        .expect("cannot run larch");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A plain TCP server that records every request it gets and answers each
/// with 200 and `body`: what might hold a dead daemon's port later.
struct Impostor {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Impostor {
    fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&request).into_owned());
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// An answer any client that trusts JSON would take: a whole status, an
/// instance and a (made up) proof.
fn plausible_answer() -> String {
    let mut answer = serde_json::to_value(larch::status::Status::default()).unwrap();
    answer["instance"] = "0123456789abcdef".into();
    answer["target"] = "directory /nowhere".into();
    answer["proof"] = "0".repeat(64).into();
    answer["entries"] = serde_json::json!([]);
    answer.to_string()
}

fn write_stale_admin_file(data: &Path, addr: &str, token: &str) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        data.join("admin.json"),
        serde_json::json!({"addr": addr, "token": token}).to_string(),
    )
    .unwrap();
}

#[test]
fn a_stale_admin_file_never_hands_the_token_to_whoever_listens_now() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let impostor = Impostor::start(plausible_answer());
    let token = "4d1c0ffee5ec2e7t0ken0fadeadlarch";
    write_stale_admin_file(&data, &impostor.addr, token);
    let spool_dir = format!("spool.dir={}", data.display());

    let status = larch(&["status", "--set", &spool_dir]);
    assert!(
        !status.ok,
        "status believed the impostor:\n{}",
        status.stdout
    );
    assert!(
        status
            .stderr
            .contains(&format!("no larch daemon answers at {}", impostor.addr))
            && status.stderr.contains("admin.json stale?"),
        "{}",
        status.stderr
    );

    // drain and verify fall back to the spool itself (there is none here).
    let data_arg = data.to_str().unwrap();
    let drain = larch(&["drain", "--data", data_arg, "--timeout", "2s"]);
    assert!(!drain.ok, "{}", drain.stdout);
    let verify = larch(&["verify", "--data", data_arg]);
    assert!(!verify.ok, "{}", verify.stdout);

    let requests = impostor.requests();
    assert!(
        !requests.is_empty(),
        "the clients did not even ask the address"
    );
    for request in &requests {
        assert!(
            !request.contains(token),
            "the token reached the impostor:\n{request}"
        );
        assert!(
            !request.to_ascii_lowercase().contains("authorization"),
            "credentials reached the impostor:\n{request}"
        );
    }
}

#[test]
fn status_reaches_the_daemon_of_the_data_directory_through_its_admin_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start(&data, &["--key", "k=acme"]);
    let spool_dir = format!("spool.dir={}", data.display());
    let run = larch(&["status", "--set", &spool_dir, "--json"]);
    assert!(run.ok, "{}", run.stderr);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["instance"], d.status()["instance"]);
}
