//! A real S3-compatible server (moto, installed by `scripts/test-servers.sh`)
//! on 127.0.0.1, and proxies to put in front of it: one that counts requests,
//! one that fails them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{agent, free_port, installed, repo_file};

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Self {
        Self::start_with(Command::new(installed("venv/bin/moto_server")))
    }

    /// moto with create-only writes made atomic, as S3's are
    /// (`scripts/moto_atomic.py`), for writers racing for one name.
    pub fn start_atomic() -> Self {
        let mut command = Command::new(installed("venv/bin/python"));
        command.arg(super::repo_file("scripts/moto_atomic.py"));
        Self::start_with(command)
    }

    fn start_with(mut command: Command) -> Self {
        let port = free_port();
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while agent().get(&moto.endpoint).call().is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn create_bucket(&self, bucket: &str) {
        let r = agent()
            .put(format!("{}/{bucket}", self.endpoint))
            .send_empty()
            .expect("create bucket");
        assert_eq!(r.status(), 200, "create bucket {bucket}");
    }

    fn helper(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(installed("venv/bin/python"))
            .arg(repo_file("scripts/s3_inspect.py"))
            .arg(&self.endpoint)
            .args(args)
            .output()
            .expect("run s3_inspect.py");
        assert!(
            out.status.success(),
            "s3_inspect.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Copies an object (without larch's metadata), as another writer
    /// planting the same lines again would.
    pub fn copy(&self, bucket: &str, from: &str, to: &str) {
        self.helper(&[bucket, "copy", from, to]);
    }

    /// Copies an object with larch's metadata, claiming it was written by `instance`.
    pub fn copy_as(&self, bucket: &str, from: &str, to: &str, instance: &str) {
        self.helper(&[bucket, "copy", from, to, instance]);
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.helper(&[bucket, "delete", key]);
    }

    /// The environment a larch needs to use this server (through `endpoint`,
    /// which may be a proxy in front of it).
    pub fn env(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", endpoint),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Every archived line of `bucket`, one per row: key, `_id`, `_ts`,
    /// `_account` and the first word of `_line`, tab-separated; an object that
    /// does not read is a row `BAD<tab>key<tab>why`.
    pub fn lines(&self, bucket: &str) -> String {
        String::from_utf8(self.helper(&[bucket, "lines"])).expect("s3_inspect.py lines output")
    }

    /// Every object of `bucket` as the server reports it: key, size, `sse`,
    /// `metadata`, `sha256` of the bytes and the gunzipped `lines`.
    pub fn inspect(&self, bucket: &str) -> Vec<Value> {
        serde_json::from_slice(&self.helper(&[bucket])).expect("s3_inspect.py output")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// s3s-fs: an S3-compatible server that checks signatures, storing each
/// object as a file under `root/<bucket>/<key>`.
pub struct S3sFs {
    child: Child,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

impl S3sFs {
    pub const ACCESS_KEY: &'static str = "AKIDLARCHTEST";
    pub const SECRET_KEY: &'static str = "the-right-secret";

    pub fn start(buckets: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).unwrap();
        }
        let port = free_port();
        let child = Command::new(installed("cargo/bin/s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                Self::ACCESS_KEY,
                "--secret-key",
                Self::SECRET_KEY,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    pub fn env(&self, secret: &str) -> Vec<(String, String)> {
        let mut env = Moto::env(&self.endpoint);
        for (k, v) in env.iter_mut() {
            match k.as_str() {
                "AWS_ACCESS_KEY_ID" => *v = Self::ACCESS_KEY.into(),
                "AWS_SECRET_ACCESS_KEY" => *v = secret.into(),
                _ => {}
            }
        }
        env
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the server.
    Pass,
    /// Accept and drop every connection, as a dead link does.
    Refuse,
    /// Answer every request with this HTTP status and an S3 error body.
    Status(u16),
    /// Forward a request's headers and its first KiB of body, then reset
    /// both connections (RST), as a link dying mid-upload does.
    Reset,
    /// Take the request and never answer, until the mode changes.
    Stall,
}

/// `scripts/count_proxy.py` in front of a store: every request passed on and
/// counted by kind, as the store saw it.
pub struct CountProxy {
    child: Child,
    pub endpoint: String,
}

impl CountProxy {
    pub fn start(upstream: &str) -> Self {
        let port = free_port();
        let child = Command::new(installed("venv/bin/python"))
            .arg(repo_file("scripts/count_proxy.py"))
            .args([&port.to_string(), upstream])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the counting proxy");
        let proxy = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent()
            .get(format!("{}/_counts", proxy.endpoint))
            .call()
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the counting proxy did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    /// Creates `key` in `bucket` with `body` right after the next listing
    /// reaches the store, before its answer goes back: another writer taking
    /// the name a host is about to choose.
    pub fn plant_after_next_listing(&self, bucket: &str, key: &str, body: &[u8]) {
        agent()
            .post(format!("{}/_plant/{bucket}/{key}", self.endpoint))
            .send(body)
            .expect("arming the plant");
    }

    /// Requests so far by kind (`put`, `put-refused`, `list`, `head`, …).
    pub fn requests(&self) -> BTreeMap<String, u64> {
        let text = agent()
            .get(format!("{}/_counts", self.endpoint))
            .call()
            .expect("counts")
            .body_mut()
            .read_to_string()
            .unwrap();
        let counts: Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(counts["requests"].clone()).unwrap()
    }
}

impl Drop for CountProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy whose behaviour the test switches while larch runs. Switching
/// away from `Pass` also cuts connections already open.
pub struct FaultProxy {
    pub endpoint: String,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: &str, mode: Mode) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let current = *m.lock().unwrap();
                        let (m, s, upstream) = (m.clone(), s.clone(), upstream.clone());
                        std::thread::spawn(move || match current {
                            Mode::Refuse => drop(client),
                            Mode::Status(code) => answer(client, code),
                            Mode::Pass | Mode::Reset => forward(client, &upstream, m, s),
                            Mode::Stall => stall(client, m, s),
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            endpoint,
            mode,
            stop,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request (headers and a Content-Length body) and answers `code`.
fn answer(mut client: TcpStream, code: u16) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let header_end = loop {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let headers = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - header_end;
    while have < length {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    let (reason, s3_code) = match code {
        400 => ("Bad Request", "InvalidArgument"),
        403 => ("Forbidden", "AccessDenied"),
        500 => ("Internal Server Error", "InternalError"),
        503 => ("Service Unavailable", "SlowDown"),
        _ => ("Error", "InternalError"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3_code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}

fn forward(client: TcpStream, upstream: &str, mode: Arc<Mutex<Mode>>, stop: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    // A connection taken in Reset mode dies a KiB into its first request's body.
    let reset_after = (*mode.lock().unwrap() == Mode::Reset).then_some(1024usize);
    let keep_going = {
        let mode = mode.clone();
        move || {
            !stop.load(Ordering::Relaxed)
                && matches!(*mode.lock().unwrap(), Mode::Pass | Mode::Reset)
        }
    };
    let pipes = [
        (client.try_clone(), server.try_clone(), reset_after),
        (server.try_clone(), client.try_clone(), None),
    ];
    let mut threads = Vec::new();
    for (from, to, reset_after) in pipes {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        let keep_going = keep_going.clone();
        threads.push(std::thread::spawn(move || {
            let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0u8; 64 * 1024];
            let mut seen = Vec::new();
            loop {
                if !keep_going() {
                    break;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut chunk = &buf[..n];
                        let mut cut = false;
                        if let Some(limit) = reset_after {
                            let before = seen.len();
                            seen.extend_from_slice(chunk);
                            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                let stop_at = end + 4 + limit;
                                if seen.len() > stop_at {
                                    chunk = &chunk[..stop_at.saturating_sub(before).min(n)];
                                    cut = true;
                                }
                            }
                        }
                        if to.write_all(chunk).is_err() {
                            break;
                        }
                        if cut {
                            reset(&from);
                            reset(&to);
                            return;
                        }
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }));
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Closes a connection with a TCP reset instead of an orderly close.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reads whatever comes and never answers, until the mode changes.
fn stall(mut client: TcpStream, mode: Arc<Mutex<Mode>>, stop: Arc<AtomicBool>) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) && *mode.lock().unwrap() == Mode::Stall {
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// A read that timed out (the socket's read timeout), not a broken connection.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
