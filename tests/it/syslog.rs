//! Syslog sources against `logger` (util-linux), the sender every Linux host
//! has, unchanged: RFC 5424 and 3164 over UDP and TCP, TCP framed by octet
//! counting and by newlines, odd messages, and a sender that stalls mid-frame.

use crate::common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, read_archive, Daemon};
use serde_json::Value;

fn logger(args: &[&str], message: &str) {
    let out = Command::new("logger")
        .args(args)
        .arg(message)
        .output()
        .expect("run logger (util-linux)");
    assert!(
        out.status.success(),
        "logger {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn logger_messages_over_udp_and_tcp_in_both_formats_are_archived_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (udp, tcp) = (free_port(), free_port());
    let config = dir.path().join("larch.toml");
    std::fs::write(
        &config,
        format!(
            "[[sources.syslog]]\naccount = \"net\"\ntransport = \"udp\"\nlisten = \"127.0.0.1:{udp}\"\n\n\
             [[sources.syslog]]\naccount = \"net\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{tcp}\"\nidle_timeout = \"1s\"\n"
        ),
    )
    .unwrap();
    let d = Daemon::start(
        &data,
        &["--late-window", "0s", "--config", config.to_str().unwrap()],
    );
    let (udp_port, tcp_port) = (udp.to_string(), tcp.to_string());
    let to_udp = ["-n", "127.0.0.1", "-P", &udp_port, "-d"];
    let to_tcp = ["-n", "127.0.0.1", "-P", &tcp_port, "-T"];
    let with = |to: &[&str], more: &[&str]| -> Vec<String> {
        to.iter().chain(more).map(|s| s.to_string()).collect()
    };
    let send = |args: Vec<String>, message: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        logger(&args, message);
    };
    let sd = [
        "--rfc5424",
        "-t",
        "billing",
        "-p",
        "local4.notice",
        "--msgid",
        "ID47",
        "--sd-id",
        "order@32473",
        "--sd-param",
        "seq=\"9\"",
    ];
    send(with(&to_udp, &sd), "udp 5424 card declined");
    send(
        with(&to_udp, &["--rfc3164", "-t", "sshd", "-p", "auth.crit"]),
        "udp 3164 failed password",
    );
    send(
        with(
            &to_tcp,
            &["--octet-count", "--rfc5424", "-t", "app", "-p", "user.err"],
        ),
        "tcp counted message",
    );
    send(
        with(&to_tcp, &["--rfc5424", "-t", "app", "-p", "user.warning"]),
        "tcp newline message",
    );
    send(
        with(&to_tcp, &["--rfc3164", "-t", "cron", "-p", "cron.info"]),
        "tcp 3164 message",
    );
    // Not syslog at all: kept whole.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"just text from a broken appliance", ("127.0.0.1", udp))
        .unwrap();
    // A sender that stops mid-frame is closed by the idle timeout, and what
    // it sent is kept, marked partial.
    let mut stalled = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    stalled
        .write_all(b"60 <13>1 - edge app - - - stalled half")
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let closed = matches!(stalled.read(&mut buf), Ok(0));
    assert!(
        closed && started.elapsed() < Duration::from_secs(8),
        "the stalled connection was not closed by the 1 s idle timeout"
    );

    // UDP has no acknowledgement: give the last datagrams a moment.
    std::thread::sleep(Duration::from_millis(500));
    common::drain(&d.data);
    let lines: Vec<Value> = read_archive(&data.join("archive"))
        .into_iter()
        .flat_map(|(_, lines)| lines)
        .collect();
    let find = |text: &str| -> &Value {
        let found: Vec<&Value> = lines
            .iter()
            .filter(|l| l["_line"].as_str().is_some_and(|t| t.ends_with(text)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{text:?} archived {} times: {lines:?}",
            found.len()
        );
        found[0]
    };
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let l = find("udp 5424 card declined");
    assert_eq!(l["_app"], "billing");
    assert_eq!(l["level"], "notice");
    assert_eq!(l["_ingester"], "syslog");
    assert_eq!(l["_account"], "net");
    assert_eq!(l["_meta"]["facility"], "local4");
    assert_eq!(l["_meta"]["msgid"], "ID47");
    assert_eq!(l["_meta"]["structured_data"]["order@32473"]["seq"], "9");
    let l = find("udp 3164 failed password");
    assert_eq!(l["_app"], "sshd");
    assert_eq!(l["level"], "crit");
    assert_eq!(l["_meta"]["protocol"], "rfc3164");
    assert_eq!(find("tcp counted message")["level"], "err");
    assert_eq!(find("tcp newline message")["level"], "warning");
    assert_eq!(find("tcp 3164 message")["_app"], "cron");
    let l = find("just text from a broken appliance");
    assert!(l.get("level").is_none() && l.get("_app").is_none(), "{l}");
    let l = find("stalled half");
    assert_eq!(l["_meta"]["partial_message"], true);
}

#[test]
fn sighup_moves_a_syslog_listener_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (before, after) = (free_port(), free_port());
    let config = dir.path().join("larch.toml");
    let listener = |port: u16| {
        format!("[[sources.syslog]]\naccount = \"net\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{port}\"\n")
    };
    std::fs::write(&config, listener(before)).unwrap();
    let d = Daemon::start(
        &data,
        &["--late-window", "0s", "--config", config.to_str().unwrap()],
    );
    let port = before.to_string();
    logger(&["-n", "127.0.0.1", "-P", &port, "-T"], "before the reload");
    std::fs::write(&config, listener(after)).unwrap();
    d.hangup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", after)).is_err() {
        assert!(
            Instant::now() < deadline,
            "no listener on the new port after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        TcpStream::connect(("127.0.0.1", before)).is_err(),
        "the old port still listens"
    );
    let port = after.to_string();
    logger(&["-n", "127.0.0.1", "-P", &port, "-T"], "after the reload");
    common::drain(&d.data);
    let texts: Vec<String> = read_archive(&data.join("archive"))
        .into_iter()
        .flat_map(|(_, lines)| lines)
        .filter_map(|l| l["_line"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts.iter().any(|t| t.ends_with("before the reload")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.ends_with("after the reload")),
        "{texts:?}"
    );
}

#[test]
fn a_tls_listener_takes_messages_from_a_tls_client_framed_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let config = dir.path().join("larch.toml");
    std::fs::write(
        &config,
        format!(
            "[[sources.syslog]]\naccount = \"net\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{port}\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start(
        &data,
        &["--late-window", "0s", "--config", config.to_str().unwrap()],
    );
    // RFC 5425 frames by octet count; a newline-framed message follows it.
    let counted = "<11>1 2026-01-02T03:04:05Z edge-1 vault 77 - - tls counted message";
    let mut stream = format!("{} {counted}", counted.len()).into_bytes();
    stream.extend_from_slice(b"<30>Jan  2 03:04:05 edge-2 cron[9]: tls newline message\n");
    // openssl's own client, closing once its input ends.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-no_ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    client.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(client.wait().unwrap().success(), "openssl s_client failed");
    // A client that never completes the handshake costs the listener nothing.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .write_all(b"<13>1 - - - - - - not encrypted\n")
        .unwrap();
    // TLS (like TCP) has no acknowledgement: wait for the source to say it stored them.
    let row = format!("tls 127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = d.status();
        let stored = status["sources"]
            .as_array()
            .and_then(|rows| rows.iter().find(|s| s["name"] == row))
            .and_then(|s| s["lines"].as_u64());
        if stored == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "{status}\n{}", d.log_tail(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    common::drain(&d.data);
    let lines: Vec<Value> = read_archive(&data.join("archive"))
        .into_iter()
        .flat_map(|(_, lines)| lines)
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "{lines:#?}\n{}\n{}",
        d.status(),
        d.log_tail(30)
    );
    let by_text = |text: &str| {
        lines
            .iter()
            .find(|l| l["_line"] == text)
            .unwrap_or_else(|| panic!("{text:?} not archived: {lines:#?}"))
    };
    let l = by_text("tls counted message");
    assert_eq!(
        (&l["_app"], &l["level"], &l["_host"]),
        (
            &Value::from("vault"),
            &Value::from("err"),
            &Value::from("edge-1")
        )
    );
    let l = by_text("tls newline message");
    assert_eq!(
        (&l["_app"], &l["level"]),
        (&Value::from("cron"), &Value::from("info"))
    );
}
