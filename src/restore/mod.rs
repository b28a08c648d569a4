//! `larch restore`: archive objects read back from any target, filtered,
//! deduplicated by line ID and printed as NDJSON, in time order per hour.
//!
//! Objects are chosen by their names (FORMAT.md §1): with a time range only the
//! days it covers are listed (`year=/month=/day=` prefixes), so a narrow range
//! never lists a whole bucket. Several objects download and gunzip at once, but
//! results are taken in (hour, part) order, and an hour is printed only when
//! all its parts are in: its lines are deduplicated (a line ID is printed once,
//! from the earliest part that has it) and sorted by `_ts`. Memory holds the
//! matching lines of one hour, never a whole object. An object that does not
//! read to the end (not gzip, cut short, a line that is not JSON) is skipped
//! whole and named in the report; the rest is still restored.

mod filter;
mod record;

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Arc;

use futures::StreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

pub use filter::{parse_time, Filter, FilterError};
pub use record::Record;

use crate::account::AccountId;
use crate::clock::EpochMs;
use crate::hour::{day_prefix, Hour, ObjectName};
use crate::target::read::Listed;
use crate::target::{Target, TargetError};

const DAY_MS: i64 = 24 * 3_600_000;
/// Past this many days a range is listed whole instead of day by day.
const MAX_DAY_LISTINGS: i64 = 3_660;
/// Day listings in flight at once.
const LIST_CONCURRENCY: usize = 8;

/// What to restore.
pub struct Restore {
    pub account: AccountId,
    /// The config's `key_prefix`: it stands before `year=`.
    pub key_prefix: String,
    pub filter: Filter,
    /// Objects downloaded and decompressed at once.
    pub concurrency: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// An object that could not be restored, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub key: String,
    pub why: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub objects: u64,
    pub bytes: u64,
    pub lines_read: u64,
    pub lines_written: u64,
    pub duplicates: u64,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot list {prefix:?} in {target}: {source}")]
    List {
        target: String,
        prefix: String,
        source: TargetError,
    },
    #[error("cannot write the restored lines: {0}")]
    Write(#[from] io::Error),
}

/// The key prefixes to list for a range: one per UTC day it touches (up to a
/// day past `now` when it has no end), or the whole prefix without a start.
fn day_prefixes(filter: &Filter, key_prefix: &str, now: EpochMs) -> Vec<String> {
    let Some(since) = filter.since else {
        return vec![key_prefix.to_owned()];
    };
    let first = since.div_euclid(DAY_MS);
    let last = filter
        .until
        .unwrap_or(now + DAY_MS)
        .saturating_sub(1)
        .div_euclid(DAY_MS);
    if last - first > MAX_DAY_LISTINGS {
        return vec![key_prefix.to_owned()];
    }
    (first..=last)
        .map(|day| day_prefix(key_prefix, Hour(day * 24)))
        .collect()
}

/// The account's objects that may hold lines in the range, oldest hour first.
pub async fn select(
    target: &Target,
    restore: &Restore,
    now: EpochMs,
) -> Result<Vec<(ObjectName, Listed)>, RestoreError> {
    let filter = &restore.filter;
    let prefixes = day_prefixes(filter, &restore.key_prefix, now);
    let listings: Vec<_> = futures::stream::iter(prefixes)
        .map(|prefix| async move {
            target
                .list(&prefix)
                .await
                .map_err(|source| RestoreError::List {
                    target: target.describe(),
                    prefix,
                    source,
                })
        })
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await;
    let mut selected = Vec::new();
    for listing in listings {
        for listed in listing? {
            let Some(name) = ObjectName::parse(&listed.key) else {
                continue;
            };
            // Keys under another prefix that happen to end alike are not ours.
            let expected =
                crate::hour::object_key(&restore.key_prefix, &name.account, name.hour, name.n);
            if name.account == restore.account
                && filter.wants_hour(name.hour)
                && expected == listed.key
            {
                selected.push((name, listed));
            }
        }
    }
    selected.sort_by(|a, b| a.0.cmp(&b.0));
    selected.dedup_by(|a, b| a.1.key == b.1.key);
    Ok(selected)
}

/// Restores `selected` (from [`select`]) to `out`.
pub async fn restore(
    target: Arc<Target>,
    restore: &Restore,
    selected: Vec<(ObjectName, Listed)>,
    out: &mut dyn Write,
) -> Result<Report, RestoreError> {
    let bar = if restore.progress {
        let bar = ProgressBar::new(selected.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} objects  {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let filter = Arc::new(restore.filter.clone());
    let mut report = Report::default();
    let mut reads = futures::stream::iter(selected)
        .map(|(name, listed)| {
            let (target, filter) = (target.clone(), filter.clone());
            async move {
                let result = read_object(&target, &listed.key, filter).await;
                (name, listed, result)
            }
        })
        .buffered(restore.concurrency.max(1));
    let mut hour: Option<(Hour, Vec<Record>)> = None;
    while let Some((name, listed, result)) = reads.next().await {
        bar.inc(1);
        let read = match result {
            Ok(read) => read,
            Err(why) => {
                bar.suspend(|| eprintln!("larch: skipped {}: {why}", listed.key));
                report.skipped.push(Skipped {
                    key: listed.key,
                    why,
                });
                continue;
            }
        };
        report.objects += 1;
        report.bytes += read.bytes;
        report.lines_read += read.lines;
        match &mut hour {
            Some((h, records)) if *h == name.hour => records.extend(read.kept),
            _ => {
                if let Some((h, records)) = hour.take() {
                    write_hour(h, records, out, &mut report)?;
                }
                hour = Some((name.hour, read.kept));
            }
        }
        bar.set_message(format!(
            "{} read, {} lines read, {} printed",
            HumanBytes(report.bytes),
            report.lines_read,
            report.lines_written
        ));
    }
    if let Some((h, records)) = hour.take() {
        write_hour(h, records, out, &mut report)?;
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(report)
}

/// Prints one hour's lines: each ID once, in time order (ties in archive order).
fn write_hour(
    hour: Hour,
    records: Vec<Record>,
    out: &mut dyn Write,
    report: &mut Report,
) -> io::Result<()> {
    let mut seen = HashSet::with_capacity(records.len());
    let mut unique: Vec<Record> = Vec::with_capacity(records.len());
    for r in records {
        match &r.id {
            Some(id) if !seen.insert(id.clone()) => report.duplicates += 1,
            _ => unique.push(r),
        }
    }
    unique.sort_by_key(|r| r.ts.unwrap_or(hour.start_ms()));
    for r in &unique {
        out.write_all(r.text.as_bytes())?;
        out.write_all(b"\n")?;
    }
    report.lines_written += unique.len() as u64;
    Ok(())
}

/// What one object gave.
struct ObjectRead {
    /// Compressed bytes read.
    bytes: u64,
    lines: u64,
    kept: Vec<Record>,
}

async fn read_object(
    target: &Target,
    key: &str,
    filter: Arc<Filter>,
) -> Result<ObjectRead, String> {
    let reader = target
        .open(key)
        .await
        .map_err(|e| format!("cannot download it: {e}"))?;
    tokio::task::spawn_blocking(move || decode(reader, &filter))
        .await
        .map_err(|e| format!("its reader failed: {e}"))?
}

/// Counts what passes through a reader.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Gunzips an object and keeps the lines `filter` wants. Any flaw fails the whole object.
fn decode(reader: impl Read, filter: &Filter) -> Result<ObjectRead, String> {
    let mut gz = BufReader::new(flate2::read::MultiGzDecoder::new(Counted {
        inner: reader,
        bytes: 0,
    }));
    let (mut lines, mut kept, mut buf) = (0u64, Vec::new(), Vec::new());
    loop {
        buf.clear();
        let n = gz
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("not a whole gzip stream ({e})"))?;
        if n == 0 {
            break;
        }
        lines += 1;
        let text = std::str::from_utf8(buf.strip_suffix(b"\n").unwrap_or(&buf))
            .map_err(|_| format!("line {lines} is not UTF-8"))?;
        if text.trim().is_empty() {
            continue;
        }
        let record =
            Record::parse(text).map_err(|e| format!("line {lines} is not a JSON object: {e}"))?;
        if filter.keeps(&record) {
            kept.push(record);
        }
    }
    let bytes = gz.into_inner().into_inner().bytes;
    if bytes == 0 {
        return Err("the object is empty, not gzip".into());
    }
    Ok(ObjectRead { bytes, lines, kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_cut_object_fails_whole() {
        let text = "{\"_id\":\"a\",\"_ts\":1}\n".repeat(2000);
        let whole = gz(&text);
        assert_eq!(
            decode(&whole[..], &Filter::default()).unwrap().kept.len(),
            2000
        );
        let cut = &whole[..whole.len() / 2];
        let err = decode(cut, &Filter::default()).err().unwrap();
        assert!(err.contains("not a whole gzip stream"), "{err}");
        assert!(decode(&b""[..], &Filter::default()).is_err());
        assert!(decode(&b"plain text\n"[..], &Filter::default()).is_err());
        let err = decode(&gz("{\"_id\":\"a\"}\nnot json\n")[..], &Filter::default())
            .err()
            .unwrap();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_range_lists_only_the_days_it_touches() {
        let at = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        };
        let filter = Filter {
            since: Some(at("2026-11-25T22:00:00Z")),
            until: Some(at("2026-11-27T00:00:00Z")),
            ..Filter::default()
        };
        assert_eq!(
            day_prefixes(&filter, "edge/", 0),
            [
                "edge/year=2026/month=11/day=25/",
                "edge/year=2026/month=11/day=26/"
            ]
        );
        let open_ended = Filter {
            since: Some(at("2026-12-31T23:30:00Z")),
            ..Filter::default()
        };
        assert_eq!(
            day_prefixes(&open_ended, "", at("2026-12-31T23:40:00Z")),
            ["year=2026/month=12/day=31/", "year=2027/month=01/day=01/"]
        );
        assert_eq!(day_prefixes(&Filter::default(), "edge/", 0), ["edge/"]);
    }

    #[test]
    fn an_hour_prints_each_id_once_in_time_order() {
        let r = |id: &str, ts: i64| {
            Record::parse(&format!("{{\"_id\":\"{id}\",\"_ts\":{ts}}}")).unwrap()
        };
        let mut out = Vec::new();
        let mut report = Report::default();
        write_hour(
            Hour(0),
            vec![r("b", 5), r("a", 9), r("c", 1), r("b", 5)],
            &mut out,
            &mut report,
        )
        .unwrap();
        let ids: Vec<String> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids, ["c", "b", "a"]);
        assert_eq!(report.duplicates, 1);
    }
}
