//! `larch send`: lines piped in reach the archive, and the exit status tells
//! the truth when they could not.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{free_port, read_archive, Daemon};

/// Runs `larch send` with `input` on its standard input.
fn larch_send(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_larch"))
        .arg("send")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from a thread: `send` may stop reading early when it gives up.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

fn numbered(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("piped line {i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn piped_lines_are_archived_once_with_their_stamps() {
    let dir = tempfile::tempdir().unwrap();
    // Lines are stamped when read; larch runs two hours ahead, so their hour
    // is over for it and seals at once.
    let d = Daemon::start_with_env(
        &dir.path().join("data"),
        &["--late-window", "0s", "--key", "k=acme"],
        &[("LARCH_CLOCK_OFFSET".into(), "2h".into())],
    );
    let before = common::now_ms();
    let mut input = numbered(2500);
    // A blank line is skipped; a Windows line ending and bad UTF-8 are tidied.
    input.extend_from_slice(b"\nwindows line\r\nbad \xff byte\n");
    let out = larch_send(
        &[
            "--addr",
            &d.addr,
            "--key",
            "k",
            "--account",
            "acme",
            "--app",
            "myapp",
            "--host",
            "edge-7",
        ],
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = common::now_ms();
    d.wait_drained(Duration::from_secs(30));
    let lines: Vec<_> = read_archive(&d.data.join("archive"))
        .into_iter()
        .flat_map(|(_, lines)| lines)
        .collect();
    let mut expected: Vec<String> = (0..2500).map(|i| format!("piped line {i}")).collect();
    expected.push("windows line".into());
    expected.push("bad \u{fffd} byte".into());
    let texts: Vec<&str> = lines.iter().map(|l| l["_line"].as_str().unwrap()).collect();
    assert_eq!(texts, expected);
    for l in &lines {
        assert_eq!(l["_app"], "myapp");
        assert_eq!(l["_host"], "edge-7");
        assert_eq!(l["_account"], "acme");
        let ts = l["_ts"].as_i64().unwrap();
        assert!(ts >= before && ts <= after, "{l}");
    }
    let ids: BTreeSet<&str> = lines.iter().map(|l| l["_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len());
}

#[test]
fn a_daemon_that_is_down_makes_send_fail_and_say_so() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let out = larch_send(
        &[
            "--addr",
            &addr,
            "--key",
            "k",
            "--account",
            "acme",
            "--retry-for",
            "1s",
        ],
        &numbered(10),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0 line(s) acknowledged, 10 not") && stderr.contains("is it running"),
        "{stderr}"
    );
}

#[test]
fn send_waits_for_a_daemon_that_comes_up_within_the_retry_time() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    let sender = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            larch_send(
                &[
                    "--addr",
                    &addr,
                    "--key",
                    "k",
                    "--account",
                    "acme",
                    "--retry-for",
                    "60s",
                ],
                &numbered(50),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let d = Daemon::start_on(&addr, &data, &["--key", "k=acme"], &[]);
    let out = sender.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.status()["lines_waiting"], 50);
}

#[test]
fn a_key_of_another_account_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--key", "k=acme", "--key", "k2=beta"],
    );
    let out = larch_send(
        &["--addr", &d.addr, "--key", "k2", "--account", "acme"],
        &numbered(5),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("belongs to account \"beta\", not \"acme\""),
        "{stderr}"
    );
    assert_eq!(d.status()["lines_waiting"], 0);
}
