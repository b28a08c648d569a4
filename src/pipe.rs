//! The pipe source, `larch send`: lines from standard input go to a running
//! larch over its ingest API, in batches, each one acknowledged only once it is
//! durable there.
//!
//! `myapp | larch send …` must never lose lines quietly, so a batch that is not
//! acknowledged is retried for a while (larch may be restarting) and then the
//! command stops and exits non-zero, saying how many lines were acknowledged.
//! Each line is stamped when it is read, so a line waiting in a batch keeps its
//! own time.

use std::io::{BufRead, ErrorKind, Read};
use std::time::{Duration, Instant};

use serde_json::json;

/// Lines cut here already; larch cuts them further, to the line limit, and marks them.
const MAX_LINE_BYTES: usize = 32 * 1024;
const BATCH_LINES: usize = 1000;
/// Kept well under the ingest body limit (10 MB).
const BATCH_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct SendOptions {
    /// `HOST:PORT` of the running larch.
    pub addr: String,
    pub key: String,
    /// The account the key must belong to; larch refuses the batch otherwise.
    pub account: String,
    pub app: Option<String>,
    pub host: Option<String>,
    pub level: Option<String>,
    /// A batch is sent at the latest this long after its first line was read.
    pub linger: Duration,
    /// How long a batch is retried before the command gives up.
    pub retry_for: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("--addr {0:?} is not HOST:PORT")]
    Address(String),
    #[error("cannot read standard input: {0}")]
    Stdin(std::io::Error),
    #[error("{acked} line(s) acknowledged, {unacked} not: {reason}")]
    NotAcknowledged {
        acked: u64,
        unacked: u64,
        reason: String,
    },
}

/// What a finished `larch send` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub lines: u64,
    pub batches: u64,
}

/// Reads `input` to its end and sends every line.
pub fn send(input: impl Read + Send + 'static, options: &SendOptions) -> Result<Sent, SendError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<(i64, String)>>(BATCH_LINES);
    // A reader thread, so a batch can go out while the next line is still awaited.
    std::thread::spawn(move || read_lines(input, &tx));
    let client = Client::new(options)?;
    let mut sent = Sent::default();
    let mut batch: Vec<(i64, String)> = Vec::new();
    let mut batch_bytes = 0;
    let mut started = Instant::now();
    loop {
        let next = if batch.is_empty() {
            rx.recv().map_err(|_| None)
        } else {
            let left = options.linger.saturating_sub(started.elapsed());
            rx.recv_timeout(left).map_err(|e| match e {
                std::sync::mpsc::RecvTimeoutError::Timeout => Some(()),
                std::sync::mpsc::RecvTimeoutError::Disconnected => None,
            })
        };
        let at_end = match next {
            Ok(Ok(line)) => {
                if batch.is_empty() {
                    started = Instant::now();
                }
                batch_bytes += line.1.len() + 64;
                batch.push(line);
                false
            }
            Ok(Err(e)) => {
                // Lines read before the failure still go out.
                client.deliver(&batch, &mut sent)?;
                return Err(SendError::Stdin(e));
            }
            Err(Some(())) => false,
            Err(None) => true,
        };
        let due = started.elapsed() >= options.linger;
        if !batch.is_empty()
            && (at_end || due || batch.len() >= BATCH_LINES || batch_bytes >= BATCH_BYTES)
        {
            client.deliver(&batch, &mut sent)?;
            batch.clear();
            batch_bytes = 0;
        }
        if at_end {
            return Ok(sent);
        }
    }
}

/// Splits `input` into lines (without their line ending), each stamped with
/// the time it was read. Empty lines are skipped; bytes that are not UTF-8
/// become U+FFFD; a line longer than [`MAX_LINE_BYTES`] is cut there.
fn read_lines(input: impl Read, out: &std::sync::mpsc::SyncSender<std::io::Result<(i64, String)>>) {
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_bounded_line(&mut reader, &mut line) {
            Ok(0) => return,
            Ok(_) => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    continue;
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                let now = chrono::Utc::now().timestamp_millis();
                if out.send(Ok((now, text))).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = out.send(Err(e));
                return;
            }
        }
    }
}

/// Reads up to and including the next newline, keeping at most
/// [`MAX_LINE_BYTES`] of it. Returns how many bytes were consumed.
fn read_bounded_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(consumed);
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..=at], true),
            None => (available, false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let n = chunk.len();
        reader.consume(n);
        consumed += n;
        if done {
            return Ok(consumed);
        }
    }
}

struct Client<'a> {
    agent: ureq::Agent,
    url: String,
    options: &'a SendOptions,
}

enum Attempt {
    Acked,
    /// Worth another try: larch is down, restarting, busy or out of disk.
    Retry(String),
    /// Retrying the same batch cannot help.
    Refused(String),
}

impl<'a> Client<'a> {
    fn new(options: &'a SendOptions) -> Result<Self, SendError> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let bad_addr = || SendError::Address(options.addr.clone());
        let mut url = url::Url::parse(&format!("http://{}/logs/ingest", options.addr))
            .map_err(|_| bad_addr())?;
        if url.host_str().is_none() || url.port().is_none() || url.path() != "/logs/ingest" {
            return Err(bad_addr());
        }
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("account", &options.account);
            if let Some(host) = &options.host {
                query.append_pair("hostname", host);
            }
        }
        Ok(Self {
            agent,
            url: url.to_string(),
            options,
        })
    }

    /// Sends one batch until it is acknowledged, refused, or the retry time is up.
    fn deliver(&self, batch: &[(i64, String)], sent: &mut Sent) -> Result<(), SendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = self.body(batch);
        let give_up_at = Instant::now() + self.options.retry_for;
        let mut delay = Duration::from_millis(100);
        let mut retrying = false;
        loop {
            let reason = match self.attempt(&body) {
                Attempt::Acked => {
                    sent.lines += batch.len() as u64;
                    sent.batches += 1;
                    return Ok(());
                }
                Attempt::Refused(reason) => reason,
                Attempt::Retry(reason) if Instant::now() + delay < give_up_at => {
                    if !retrying {
                        tracing::warn!(
                            "{reason}; retrying for up to {}",
                            humantime::format_duration(self.options.retry_for)
                        );
                        retrying = true;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                Attempt::Retry(reason) => format!(
                    "{reason} (gave up after retrying for {})",
                    humantime::format_duration(self.options.retry_for)
                ),
            };
            return Err(SendError::NotAcknowledged {
                acked: sent.lines,
                unacked: batch.len() as u64,
                reason,
            });
        }
    }

    fn body(&self, batch: &[(i64, String)]) -> Vec<u8> {
        let o = self.options;
        let lines: Vec<_> = batch
            .iter()
            .map(|(ts, text)| {
                let mut line = json!({"timestamp": ts, "line": text});
                if let Some(app) = &o.app {
                    line["app"] = json!(app);
                }
                if let Some(level) = &o.level {
                    line["level"] = json!(level);
                }
                line
            })
            .collect();
        json!({ "lines": lines }).to_string().into_bytes()
    }

    fn attempt(&self, body: &[u8]) -> Attempt {
        let result = self
            .agent
            .post(&self.url)
            .header("apikey", &self.options.key)
            .header("Content-Type", "application/json")
            .send(body);
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry(format!(
                    "cannot reach larch at {}: {e}; is it running?",
                    self.options.addr
                ))
            }
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let said = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["errors"].as_array().cloned())
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or(text);
        match status {
            200 => Attempt::Acked,
            408 | 429 | 500..=599 => Attempt::Retry(format!("larch answered {status}: {said}")),
            _ => Attempt::Refused(format!("larch answered {status}: {said}")),
        }
    }
}
