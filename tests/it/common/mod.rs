//! Helpers for tests that run the real `larch` binary against real files.

pub mod azure;
pub mod metrics;
pub mod objects;
pub mod s3;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A test server installed by `scripts/test-servers.sh` under `.test-servers/`.
pub fn installed(relative: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".test-servers")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-servers.sh (scripts/test.sh does it for you)",
        path.display()
    );
    path
}

/// A file of the repository, e.g. a helper script.
pub fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A `larch run` child process with its own data directory and port.
pub struct Daemon {
    child: Option<Child>,
    pub addr: String,
    pub data: PathBuf,
    /// Where larch's stderr goes: beside the data directory unless set.
    log: PathBuf,
    args: Vec<String>,
    /// Environment for the next (re)start.
    pub env: Vec<(String, String)>,
    starts: u32,
    agent: ureq::Agent,
}

impl Daemon {
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data, extra, &[])
    }

    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(String, String)]) -> Self {
        Self::start_on(&format!("127.0.0.1:{}", free_port()), data, extra, env)
    }

    /// Starts larch listening on `addr`.
    pub fn start_on(addr: &str, data: &Path, extra: &[&str], env: &[(String, String)]) -> Self {
        Self::start_logging_to(addr, data, &data.with_extension("log"), extra, env)
    }

    /// Starts larch listening on `addr`, its log going to `log` (off a
    /// filesystem whose power the test cuts, say).
    pub fn start_logging_to(
        addr: &str,
        data: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let addr = addr.to_owned();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--data".into(),
            data.display().to_string(),
            "--listen".into(),
            addr.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Self {
            child: None,
            addr,
            data: data.to_owned(),
            log: log.to_owned(),
            args,
            env: env.to_vec(),
            starts: 0,
            agent: agent(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("cannot open daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_larch"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start larch");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self
                .agent
                .get(format!("http://{}/health", self.addr))
                .call()
            {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "larch exited during start-up ({status}); the end of {}:\n{}",
                        self.log_path().display(),
                        self.log_tail(20)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "larch did not become ready; see {}",
            self.log_path().display()
        );
    }

    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends SIGHUP: the daemon reloads its configuration.
    pub fn hangup(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(sent.success(), "kill -HUP {} failed", self.pid());
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Restarts larch with a fault point armed (`LARCH_FAULT`, see `src/fault.rs`).
    pub fn arm_fault(&mut self, point: &str) {
        self.env.push(("LARCH_FAULT".into(), point.into()));
        self.restart();
    }

    /// Waits for larch to die at its armed fault point.
    pub fn died_at_fault(&mut self) {
        let exit = self.wait_exit(Duration::from_secs(120));
        assert!(!exit.success(), "larch should have died at the fault point");
    }

    /// Starts larch again with no fault point armed.
    pub fn start_without_fault(&mut self) {
        self.env.retain(|(k, _)| k != "LARCH_FAULT");
        self.start_again();
    }

    /// Waits for the process to exit by itself (a crash at a fault point, say).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("larch is not running");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "larch did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again after it exited.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "larch is still running");
        self.spawn();
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("larch is not running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().expect("cannot wait for larch")
    }

    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// POSTs to the ingest API with the given key header form; returns status and body.
    pub fn ingest(
        &self,
        query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, String), String> {
        let url = format!("http://{}/logs/ingest{}", self.addr, query);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.send(&body[..]) {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                Ok((status, text))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn ingest_json(&self, key: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self
            .ingest("", &[("apikey", key)], body.to_string().into_bytes())
            .expect("request failed");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn status(&self) -> Value {
        let mut r = self
            .agent
            .get(format!("http://{}/status", self.addr))
            .call()
            .expect("status request failed");
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// Waits until the spool holds `n` lines (at most a minute).
    pub fn wait_lines_waiting(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status();
            if s["lines_waiting"].as_u64() == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} lines stored: {s}\n{}",
                self.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every line has left the spool for the archive.
    pub fn wait_drained(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            let busy = [
                "parts_open",
                "parts_sealed",
                "parts_uploading",
                "lines_waiting",
            ]
            .iter()
            .any(|k| s[*k].as_u64() != Some(0));
            if !busy {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "spool not drained in {timeout:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `larch drain` on the daemon of `data`: seals everything and waits
/// until it is archived (at most two minutes).
pub fn drain(data: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_larch"))
        .args(["drain", "--timeout", "120s", "--data"])
        .arg(data)
        .output()
        .expect("run larch drain");
    assert!(
        out.status.success(),
        "larch drain failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every archive object under `dir` (files named `*.json.gz`), decompressed and
/// parsed, keyed by their path relative to `dir`, sorted.
pub fn read_archive(dir: &Path) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".json.gz") {
                let mut text = String::new();
                flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap())
                    .read_to_string(&mut text)
                    .unwrap_or_else(|e| panic!("{} is not valid gzip: {e}", path.display()));
                assert!(
                    text.is_empty() || text.ends_with('\n'),
                    "{} does not end in a newline",
                    path.display()
                );
                let lines = text
                    .lines()
                    .map(|l| {
                        serde_json::from_str(l).unwrap_or_else(|e| {
                            panic!("bad NDJSON line in {}: {e}: {l}", path.display())
                        })
                    })
                    .collect();
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, lines));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A small deterministic generator, so a failing seed can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `true` with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A timestamp `hours_ago` whole hours before the hour the test run started in, plus
/// `offset_ms`.
///
/// The hour is taken once per run, not at each call: a test that stamps lines and later
/// names the object they should be in would otherwise disagree with itself whenever the
/// clock passes an hour between the two. Every caller asks for a past hour (one or more),
/// so a run that outlasts its starting hour still stamps only sealed hours.
pub fn hours_ago(hours_ago: i64, offset_ms: i64) -> i64 {
    static RUN_HOUR: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let hour = *RUN_HOUR.get_or_init(|| now_ms() / 3_600_000);
    (hour - hours_ago) * 3_600_000 + offset_ms
}

/// `bytes` as a gzip file.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A tmpfs of a fixed size, mounted for a spool and unmounted on drop: a
/// real disk that fills up. Mounting needs root (CI has it).
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &Path, bytes: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Mounts one, or with `LARCH_TEST_NO_MOUNT=1` says it is skipped and
    /// gives `None`; any other failure to mount fails the test.
    pub fn mount_or_skip(path: &Path, bytes: u64) -> Option<Self> {
        if std::env::var_os("LARCH_TEST_NO_MOUNT").is_some_and(|v| v == "1") {
            println!(
                "LARCH_TEST_NO_MOUNT=1: no small filesystem, its full-disk checks are skipped"
            );
            return None;
        }
        match Self::mount(path, bytes) {
            Ok(disk) => Some(disk),
            Err(why) => panic!(
                "cannot mount a small tmpfs at {} ({why}): run the tests as root, or set LARCH_TEST_NO_MOUNT=1 to skip the full-disk checks",
                path.display()
            ),
        }
    }

    /// Fills the filesystem to the last byte; returns the filler's path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("test-filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler file");
        let chunk = vec![0x5au8; 1024 * 1024];
        while file.write_all(&chunk).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
