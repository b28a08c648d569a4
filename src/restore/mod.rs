//! `larch restore`: archive objects read back from any target, filtered,
//! deduplicated by line ID and printed as NDJSON, in time order per hour.
//!
//! Objects are chosen by their names (docs/FORMAT.md §1): with a time range only the
//! days it covers are listed (`year=/month=/day=` prefixes), so a narrow range
//! never lists a whole bucket. Several objects download and gunzip at once, but
//! results are taken in (hour, part) order, and an hour is printed only when
//! all its parts are in: sorted by `_ts`, each line ID once, from the earliest
//! part that has it (see `sort`). Memory is bounded: readers run a few batches
//! ahead, and an hour's lines past a budget spill to temporary files. An object
//! that does not read to its end (not gzip, cut short, a line that is not JSON
//! or longer than [`MAX_LINE_BYTES`]) is skipped whole and named in the report;
//! the rest is still restored.
//!
//! (Over 500 lines with its tests, which take the last hundred: the code that
//! picks, fetches and merges an hour reads best in one place.)

mod filter;
mod record;
mod sort;

use std::collections::{HashSet, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Arc;

use futures::StreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

pub use filter::{parse_time, Filter, FilterError};
pub use record::Record;
use sort::{HourSorter, Kept, Printed};

use crate::account::AccountId;
use crate::clock::EpochMs;
use crate::hour::{day_prefix, Hour, ObjectName, HOST_SEGMENT};
use crate::store::read::Listed;
use crate::store::{Target, TargetError};

const DAY_MS: i64 = 24 * 3_600_000;
/// Past this many days a range is listed whole instead of day by day.
const MAX_DAY_LISTINGS: i64 = 3_660;
/// Day listings in flight at once.
const LIST_CONCURRENCY: usize = 8;
/// Lines of an hour held in memory before they spill to a temporary file.
const HOUR_MEMORY: usize = 64 << 20;
/// Kept lines go from an object's reader to the sorter in batches of about this size ...
const BATCH_BYTES: usize = 1 << 20;
/// ... and a reader runs at most this many batches ahead.
const BATCHES_AHEAD: usize = 2;
/// The longest line restore reads from an object. docs/FORMAT.md caps a line's text
/// at 16 KB and its `meta` at 32 KB; with the other fields and JSON escaping
/// (six bytes for a control character) an archived line stays well below this.
/// A longer one means a damaged or crafted object (a gzip bomb without a
/// newline would otherwise be read into memory whole), so it is skipped.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What to restore.
pub struct Restore {
    pub account: AccountId,
    /// The config's `key_prefix`: it stands before `year=`. With a `{host}`
    /// segment, every host's prefix found in the target is read.
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
    #[error("cannot list {} in {target}: {source}", if prefix.is_empty() { "the objects" } else { prefix })]
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
    let list_err = |prefix: String| {
        move |source| RestoreError::List {
            target: target.describe(),
            prefix,
            source,
        }
    };
    let key_prefixes = match restore.key_prefix.split_once(HOST_SEGMENT) {
        None => vec![restore.key_prefix.clone()],
        Some((before, after)) => target
            .segments_under(before)
            .await
            .map_err(list_err(before.to_owned()))?
            .into_iter()
            .map(|host| format!("{before}{host}{after}"))
            .collect(),
    };
    let prefixes = key_prefixes.iter().flat_map(|key_prefix| {
        day_prefixes(filter, key_prefix, now)
            .into_iter()
            .map(move |day| (key_prefix, day))
    });
    let listings: Vec<_> = futures::stream::iter(prefixes)
        .map(|(key_prefix, prefix)| async move {
            let listed = target.list(&prefix).await.map_err(list_err(prefix))?;
            Ok::<_, RestoreError>((key_prefix, listed))
        })
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await;
    let mut selected = Vec::new();
    for listing in listings {
        let (key_prefix, listed) = listing?;
        for listed in listed {
            let Some(name) = ObjectName::parse(&listed.key) else {
                continue;
            };
            // Keys under another prefix that happen to end alike are not ours.
            let expected = crate::hour::object_key(key_prefix, &name.account, name.hour, name.n);
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
    let bar = progress_bar(restore.progress, selected.len() as u64);
    let filter = Arc::new(restore.filter.clone());
    let mut report = Report::default();
    let mut queue = selected.into_iter().enumerate();
    let mut reading: VecDeque<Reading> = VecDeque::new();
    let mut hour: Option<(Hour, HourSorter, HashSet<u32>)> = None;
    loop {
        // Later objects download and gunzip while this one is sorted.
        while reading.len() < restore.concurrency.max(1) {
            let Some((index, (name, listed))) = queue.next() else {
                break;
            };
            reading.push_back(Reading::start(&target, index as u32, name, listed, &filter));
        }
        let Some(mut object) = reading.pop_front() else {
            break;
        };
        if hour.as_ref().is_none_or(|(h, _, _)| *h != object.name.hour) {
            if let Some((_, sorter, failed)) = hour.take() {
                report.add(tokio::task::block_in_place(|| {
                    bar.suspend(|| sorter.print(&failed, out))
                })?);
            }
            hour = Some((
                object.name.hour,
                HourSorter::new(HOUR_MEMORY),
                HashSet::new(),
            ));
        }
        let Some((_, sorter, failed)) = hour.as_mut() else {
            continue;
        };
        loop {
            match object.news.recv().await {
                Some(News::Lines(lines)) => {
                    // Sorting and spilling block; the runtime's other workers go on downloading.
                    tokio::task::block_in_place(|| {
                        lines.into_iter().try_for_each(|line| sorter.push(line))
                    })?;
                }
                Some(News::Done { bytes, lines }) => {
                    report.objects += 1;
                    report.bytes += bytes;
                    report.lines_read += lines;
                    break;
                }
                failure => {
                    let why = match failure {
                        Some(News::Failed(why)) => why,
                        _ => "its reader stopped".to_owned(),
                    };
                    bar.suspend(|| eprintln!("larch: skipped {}: {why}", object.key));
                    failed.insert(object.index);
                    report.skipped.push(Skipped {
                        key: object.key.clone(),
                        why,
                    });
                    break;
                }
            }
        }
        bar.inc(1);
        bar.set_message(format!(
            "{} read, {} lines read, {} printed",
            HumanBytes(report.bytes),
            report.lines_read,
            report.lines_written
        ));
    }
    if let Some((_, sorter, failed)) = hour.take() {
        report.add(bar.suspend(|| sorter.print(&failed, out))?);
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(report)
}

fn progress_bar(show: bool, objects: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(objects);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} objects  {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

impl Report {
    fn add(&mut self, printed: Printed) {
        self.lines_written += printed.lines;
        self.duplicates += printed.duplicates;
    }
}

/// What the reader of one object reports, in order.
enum News {
    /// Lines the filter kept, a batch at a time.
    Lines(Vec<Kept>),
    /// The object read to its end: its compressed size and its line count.
    Done {
        bytes: u64,
        lines: u64,
    },
    Failed(String),
}

/// An object being downloaded and gunzipped by a task of its own.
struct Reading {
    index: u32,
    name: ObjectName,
    key: String,
    news: mpsc::Receiver<News>,
}

impl Reading {
    fn start(
        target: &Arc<Target>,
        index: u32,
        name: ObjectName,
        listed: Listed,
        filter: &Arc<Filter>,
    ) -> Self {
        let (tx, news) = mpsc::channel(BATCHES_AHEAD);
        let (target, filter, key) = (target.clone(), filter.clone(), listed.key.clone());
        let hour = name.hour;
        tokio::spawn(async move {
            let reader = match target.open(&key).await {
                Ok(reader) => reader,
                Err(e) => {
                    let _ = tx
                        .send(News::Failed(format!("cannot download it: {e}")))
                        .await;
                    return;
                }
            };
            let object = ObjectInHour { index, hour };
            let decoded = tokio::task::spawn_blocking(move || {
                let news = match decode(reader, &filter, object, &tx) {
                    Ok(Some(done)) => done,
                    Ok(None) => return,
                    Err(why) => News::Failed(why),
                };
                let _ = tx.blocking_send(news);
            });
            let _ = decoded.await;
        });
        Self {
            index,
            name,
            key: listed.key,
            news,
        }
    }
}

#[derive(Clone, Copy)]
struct ObjectInHour {
    index: u32,
    hour: Hour,
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

/// Gunzips an object and sends on the lines `filter` keeps, in batches. Any
/// flaw fails the whole object. `Ok(None)` when nobody listens any more.
fn decode(
    reader: impl Read,
    filter: &Filter,
    object: ObjectInHour,
    tx: &mpsc::Sender<News>,
) -> Result<Option<News>, String> {
    let mut gz = BufReader::new(flate2::read::MultiGzDecoder::new(Counted {
        inner: reader,
        bytes: 0,
    }));
    let (mut lines, mut buf) = (0u64, Vec::new());
    let (mut batch, mut batch_bytes) = (Vec::new(), 0usize);
    loop {
        buf.clear();
        let read = read_line(&mut gz, &mut buf, MAX_LINE_BYTES)
            .map_err(|e| format!("not a whole gzip stream ({e})"))?;
        match read {
            LineRead::End => break,
            LineRead::Line => lines += 1,
            LineRead::TooLong => {
                return Err(format!(
                    "line {} is longer than {} MiB, far past any archived line; the object is damaged or not a larch archive",
                    lines + 1,
                    MAX_LINE_BYTES >> 20
                ))
            }
        }
        let text = std::str::from_utf8(buf.strip_suffix(b"\n").unwrap_or(&buf))
            .map_err(|_| format!("line {lines} is not UTF-8"))?;
        if text.trim().is_empty() {
            continue;
        }
        let record =
            Record::parse(text).map_err(|e| format!("line {lines} is not a JSON object: {e}"))?;
        if !filter.keeps(&record) {
            continue;
        }
        batch_bytes += record.text.len();
        batch.push(Kept {
            ts: record.ts.unwrap_or(object.hour.start_ms()),
            id: record.id.unwrap_or_default().into_boxed_str(),
            object: object.index,
            position: lines,
            text: record.text.into_boxed_str(),
        });
        if batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            if tx
                .blocking_send(News::Lines(std::mem::take(&mut batch)))
                .is_err()
            {
                return Ok(None);
            }
        }
    }
    let bytes = gz.into_inner().into_inner().bytes;
    if bytes == 0 {
        return Err("the object is empty, not gzip".into());
    }
    if !batch.is_empty() && tx.blocking_send(News::Lines(batch)).is_err() {
        return Ok(None);
    }
    Ok(Some(News::Done { bytes, lines }))
}

enum LineRead {
    /// A line is in the buffer, with its `\n` unless the object ended first.
    Line,
    /// The object ended: the buffer is empty.
    End,
    /// The line goes on past the cap; what was read of it is in the buffer.
    TooLong,
}

/// Reads up to and including the next `\n` into `buf`, but never more than
/// `max` bytes of one line, so an object without newlines cannot fill memory.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<LineRead> {
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::End
            } else {
                LineRead::Line
            });
        }
        let (take, ends) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        let text_len = buf.len() + take - usize::from(ends);
        if text_len > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if ends {
            return Ok(LineRead::Line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    /// Decodes `bytes` as an object: the lines kept, or why it failed.
    fn decoded(bytes: &[u8]) -> Result<Vec<Kept>, String> {
        let (tx, mut rx) = mpsc::channel(1 << 20);
        let object = ObjectInHour {
            index: 0,
            hour: Hour(0),
        };
        match decode(bytes, &Filter::default(), object, &tx)? {
            Some(News::Done { .. }) => {}
            _ => panic!("decode ended without Done"),
        }
        let mut kept = Vec::new();
        while let Ok(News::Lines(lines)) = rx.try_recv() {
            kept.extend(lines);
        }
        Ok(kept)
    }

    #[test]
    fn a_cut_object_fails_whole() {
        let text = "{\"_id\":\"a\",\"_ts\":1}\n".repeat(20_000);
        let whole = gz(&text);
        assert_eq!(decoded(&whole).unwrap().len(), 20_000);
        let err = decoded(&whole[..whole.len() / 2]).unwrap_err();
        assert!(err.contains("not a whole gzip stream"), "{err}");
        assert!(decoded(b"").is_err());
        assert!(decoded(b"plain text\n").is_err());
        let err = decoded(&gz("{\"_id\":\"a\"}\nnot json\n")).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_line_past_the_cap_fails_its_object_without_being_read_whole() {
        let longest = format!("{{\"_id\":\"a\",\"_line\":\"{}\"}}", "x".repeat(100));
        let mut reader = io::Cursor::new(format!("{longest}\n{longest}"));
        let mut buf = Vec::new();
        let cap = longest.len();
        assert!(matches!(
            read_line(&mut reader, &mut buf, cap).unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, format!("{longest}\n").as_bytes());
        buf.clear();
        assert!(matches!(
            read_line(&mut reader, &mut buf, cap).unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, longest.as_bytes(), "a last line without its newline");
        buf.clear();
        assert!(matches!(
            read_line(&mut reader, &mut buf, cap).unwrap(),
            LineRead::End
        ));
        let mut reader = io::Cursor::new(format!("{longest}x\n"));
        assert!(matches!(
            read_line(&mut reader, &mut buf, cap).unwrap(),
            LineRead::TooLong
        ));

        let endless = gz(&"a".repeat(MAX_LINE_BYTES * 3));
        let err = decoded(&endless).unwrap_err();
        assert!(err.starts_with("line 1 is longer than 1 MiB"), "{err}");
        let mut two = gz("{\"_id\":\"a\",\"_ts\":1}\n");
        two.extend(endless);
        let err = decoded(&two).unwrap_err();
        assert!(err.starts_with("line 2 is longer than"), "{err}");
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
}
