//! `larch verify`: the target checked against the spool's ledger.
//!
//! Each object the ledger lists must be there with the recorded size and
//! SHA-256, gunzip to the end and hold the recorded number of lines. The day
//! directories the ledger touches are also listed, and an object there that the
//! ledger does not know is reported when it is this instance's (its owner
//! metadata says so) or, where a store keeps no metadata (a directory), when it
//! belongs to an account and hour the ledger has uploads for.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::hour::ObjectName;
use crate::spool::LedgerEntry;
use crate::store::{Target, TargetError};

/// What the spool remembers uploading, and which instance it is.
pub struct Ledger {
    pub instance: String,
    pub entries: Vec<LedgerEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Missing,
    /// Size, checksum, gunzip or line count differ from the ledger.
    Differs(String),
    /// The target could not be asked; nothing is known about the object.
    Unchecked(String),
    /// In the target, not in the ledger.
    Unknown(String),
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Missing => "MISSING",
            Verdict::Differs(_) => "DIFFERS",
            Verdict::Unchecked(_) => "UNCHECKED",
            Verdict::Unknown(_) => "UNKNOWN",
        }
    }

    pub fn note(&self) -> &str {
        match self {
            Verdict::Ok => "",
            Verdict::Missing => "not in the target",
            Verdict::Differs(n) | Verdict::Unchecked(n) | Verdict::Unknown(n) => n,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    /// Lines and size as the ledger recorded them (none for unknown objects).
    pub lines: Option<u64>,
    pub size: Option<u64>,
    pub verdict: Verdict,
}

/// Checks every entry of `ledger` (and looks for unknown objects) with
/// `concurrency` objects read at once. Rows come in key order.
pub async fn verify(target: Arc<Target>, ledger: &Ledger, concurrency: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = futures::stream::iter(ledger.entries.clone())
        .map(|entry| {
            let target = target.clone();
            async move {
                let verdict = check(&target, &entry).await;
                Row {
                    key: entry.key,
                    lines: Some(entry.lines),
                    size: Some(entry.size),
                    verdict,
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    rows.extend(unknown_objects(&target, ledger).await);
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    rows
}

async fn check(target: &Target, entry: &LedgerEntry) -> Verdict {
    let head = match target.head(&entry.key).await {
        Ok(Some(head)) => head,
        Ok(None) => return Verdict::Missing,
        Err(e) => return Verdict::Unchecked(format!("cannot ask the target: {e}")),
    };
    if head.size != entry.size {
        return Verdict::Differs(format!(
            "size {} bytes, the ledger says {}",
            head.size, entry.size
        ));
    }
    let reader = match target.open(&entry.key).await {
        Ok(reader) => reader,
        Err(e) => return Verdict::Unchecked(format!("cannot download it: {e}")),
    };
    let read = match tokio::task::spawn_blocking(move || read_through(reader)).await {
        Ok(read) => read,
        Err(e) => return Verdict::Unchecked(format!("its reader failed: {e}")),
    };
    let (sha256, lines) = match read {
        Ok(read) => read,
        Err(ReadError::Download(e)) => return Verdict::Unchecked(format!("download failed: {e}")),
        Err(ReadError::Gunzip { sha256, why }) if sha256 != entry.sha256 => {
            return Verdict::Differs(format!(
                "checksum differs from the ledger's, and it does not gunzip: {why}"
            ))
        }
        Err(ReadError::Gunzip { why, .. }) => {
            return Verdict::Differs(format!("does not gunzip: {why}"))
        }
    };
    if sha256 != entry.sha256 {
        return Verdict::Differs(format!(
            "checksum differs from the ledger's ({lines} lines)"
        ));
    }
    if lines != entry.lines {
        return Verdict::Differs(format!("{lines} lines, the ledger says {}", entry.lines));
    }
    Verdict::Ok
}

enum ReadError {
    Download(io::Error),
    Gunzip { sha256: String, why: String },
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                // Kept so a failed download is not mistaken for a bad object.
                let kind = e.kind();
                self.failed = Some(e);
                Err(io::Error::new(kind, "download failed"))
            }
        }
    }
}

/// SHA-256 of the object's bytes and its count of lines, in one pass.
fn read_through(reader: impl Read) -> Result<(String, u64), ReadError> {
    let hashing = Hashing {
        inner: reader,
        hasher: Sha256::new(),
        failed: None,
    };
    let mut gz = BufReader::new(flate2::read::MultiGzDecoder::new(hashing));
    let mut lines = 0u64;
    let gunzipped: Result<(), String> = loop {
        let chunk = match gz.fill_buf() {
            Ok([]) => break Ok(()),
            Ok(chunk) => chunk,
            Err(e) => break Err(e.to_string()),
        };
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = chunk.len();
        gz.consume(n);
    };
    let mut hashing = gz.into_inner().into_inner();
    if let Some(e) = hashing.failed.take() {
        return Err(ReadError::Download(e));
    }
    // Whatever follows a stream that stopped decoding still counts for the checksum.
    if let Err(e) = io::copy(&mut hashing, &mut io::sink()) {
        return Err(ReadError::Download(hashing.failed.take().unwrap_or(e)));
    }
    let sha256 = hex::encode(hashing.hasher.finalize());
    match gunzipped {
        Ok(()) => Ok((sha256, lines)),
        Err(why) => Err(ReadError::Gunzip { sha256, why }),
    }
}

/// Objects in the ledger's day directories that the ledger does not list.
async fn unknown_objects(target: &Target, ledger: &Ledger) -> Vec<Row> {
    let known: HashSet<&str> = ledger.entries.iter().map(|e| e.key.as_str()).collect();
    let accounts: HashSet<&str> = ledger.entries.iter().map(|e| e.account.as_str()).collect();
    let hours: HashSet<(&str, i64)> = ledger
        .entries
        .iter()
        .map(|e| (e.account.as_str(), e.hour))
        .collect();
    let days: BTreeSet<&str> = ledger
        .entries
        .iter()
        .filter_map(|e| e.key.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    let mut rows = Vec::new();
    for day in days {
        let listed = match target.list(day).await {
            Ok(listed) => listed,
            Err(e) => {
                rows.push(Row {
                    key: format!("{day}/"),
                    lines: None,
                    size: None,
                    verdict: Verdict::Unchecked(format!("cannot list it: {e}")),
                });
                continue;
            }
        };
        for object in listed {
            let Some(name) = ObjectName::parse(&object.key) else {
                continue;
            };
            if known.contains(object.key.as_str()) || !accounts.contains(name.account.as_str()) {
                continue;
            }
            let verdict = match owner(target, &object.key, &ledger.instance).await {
                Ok(Owner::This) => Verdict::Unknown("written by this instance".into()),
                Ok(Owner::Other) => continue,
                Ok(Owner::Unrecorded) if hours.contains(&(name.account.as_str(), name.hour.0)) => {
                    Verdict::Unknown(format!(
                        "no owner recorded; the ledger has other uploads of {} {}",
                        name.account, name.hour
                    ))
                }
                Ok(Owner::Unrecorded) => continue,
                Err(e) => Verdict::Unchecked(format!("cannot ask who wrote it: {e}")),
            };
            rows.push(Row {
                key: object.key,
                lines: None,
                size: None,
                verdict,
            });
        }
    }
    rows
}

enum Owner {
    This,
    Other,
    Unrecorded,
}

async fn owner(target: &Target, key: &str, instance: &str) -> Result<Owner, TargetError> {
    Ok(match target.head(key).await?.and_then(|h| h.instance) {
        Some(i) if i == instance => Owner::This,
        Some(_) => Owner::Other,
        None => Owner::Unrecorded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(text: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reading_through_hashes_every_byte_and_counts_lines() {
        let mut bytes = gz(b"{\"a\":1}\n{\"a\":2}\n");
        bytes.extend(gz(b"{\"a\":3}\n"));
        let (sha, lines) = read_through(&bytes[..]).ok().unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(lines, 3);
        let cut = &bytes[..bytes.len() - 10];
        match read_through(cut) {
            Err(ReadError::Gunzip { sha256, .. }) => {
                assert_eq!(sha256, hex::encode(Sha256::digest(cut)))
            }
            _ => panic!("a cut object must not gunzip"),
        }
    }
}
