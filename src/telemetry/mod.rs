//! What larch counts: a leaf every stage may call and that calls none.
//!
//! Events only a stage sees (lines made durable, requests answered, group
//! commits, follow-up parts, the current backoff) are recorded where they
//! happen, with the `metrics` crate. What the daemon's status already counts
//! (parts by state, the backlog, the room, the rules' drops, uploads) is set
//! by `ops` when `/metrics` is scraped, so the two never disagree and nothing
//! is counted twice. The exporter is installed once per process; before that
//! (in unit tests, `larch drain`) recording is a no-op. Every metric's name and
//! meaning is in [`describe`] (the ingest counts by account in
//! [`render_ingested`]) and in the README's table.

pub mod sources;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

use crate::account::AccountId;

/// Where a line came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    File,
    Syslog,
    Journald,
    Otlp,
}

impl Source {
    /// Every source, each at its [`Source::index`].
    const ALL: [Source; 5] = [
        Source::Http,
        Source::File,
        Source::Syslog,
        Source::Journald,
        Source::Otlp,
    ];

    const fn index(self) -> usize {
        match self {
            Source::Http => 0,
            Source::File => 1,
            Source::Syslog => 2,
            Source::Journald => 3,
            Source::Otlp => 4,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::File => "file",
            Source::Syslog => "syslog",
            Source::Journald => "journald",
            Source::Otlp => "otlp",
        }
    }
}

static EXPORTER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus exporter (once per process) and returns its handle;
/// `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    EXPORTER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("larch_commit_lines".into()),
                    &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("larch_commit_seconds".into()),
                        &[
                            0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                        ],
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!("metrics are off: {e}");
                    return None;
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                return None;
            }
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(
        "larch_syslog_lost_total",
        "UDP syslog messages lost because the spool refused lines when they arrived (TCP senders are held back instead)"
    );
    describe_counter!(
        "larch_http_requests_total",
        "Ingest requests answered, by HTTP status"
    );
    describe_counter!(
        "larch_connections_refused_total",
        "Connections refused at once: the listener held its maximum, each with a request in flight"
    );
    describe_counter!(
        "larch_connections_evicted_total",
        "Waiting connections (no request in flight) closed to make room for a new one at the cap"
    );
    describe_counter!(
        "larch_connections_timed_out_total",
        "Connections closed for sending a request head, a body or a TLS handshake too slowly, idling, or not reading their answer"
    );
    describe_counter!(
        "larch_ingest_busy_total",
        "Ingest requests answered 503 because too many bodies were being decoded at once"
    );
    describe_counter!(
        "larch_rule_dropped_lines_total",
        "Lines the rules kept out of the spool, by rule"
    );
    describe_histogram!("larch_commit_lines", "Lines made durable per group commit");
    describe_histogram!(
        "larch_commit_seconds",
        "Time a group commit takes, fsync included"
    );
    describe_gauge!("larch_spool_parts", "Parts in the spool, by state");
    describe_gauge!(
        "larch_spool_bytes",
        "Bytes of line text in the spool, by part state"
    );
    describe_gauge!(
        "larch_spool_lines_waiting",
        "Lines in the spool not yet archived"
    );
    describe_gauge!(
        "larch_oldest_unsynced_hour_age_seconds",
        "Age of the end of the oldest hour with lines not yet archived (0 if none)"
    );
    describe_counter!(
        "larch_follow_up_parts_total",
        "Follow-up parts opened for lines of already sealed hours"
    );
    describe_gauge!(
        "larch_records_quarantined",
        "Spool records set aside as corrupt since start"
    );
    describe_counter!(
        "larch_uploads_total",
        "Archive objects uploaded (ok) and failed upload attempts (error)"
    );
    describe_counter!(
        "larch_upload_bytes_total",
        "Compressed bytes of archive objects uploaded"
    );
    describe_counter!(
        "larch_upload_sent_bytes_total",
        "Bytes of archive objects sent to a remote store, failed attempts included, counted as each put or multipart piece (at most 8 MiB) is handed to the store, once upload_rate_limit lets all of it go"
    );
    describe_counter!(
        "larch_upload_requests_total",
        "Requests uploads sent to the store, by kind: put (an object's create; a multipart upload counts once), copy (a large object kept in the store after losing the race for a name, copied to the next one instead of sent again), head (is an object already there, and whose?), get (an object without its checksum read back to hash it), list (the taken part numbers of an hour; a request per 1,000 names)"
    );
    describe_counter!(
        "larch_upload_retries_total",
        "Failed upload attempts that will be retried"
    );
    describe_gauge!(
        "larch_upload_backoff_seconds",
        "Current wait before the next upload attempt (0 when none is waiting)"
    );
    describe_gauge!("larch_disk_free_bytes", "Free bytes on the spool's disk");
    describe_gauge!(
        "larch_spool_disk_bytes",
        "Bytes of the spool's files on disk (sled and segments)"
    );
    describe_gauge!(
        "larch_spool_ndjson_bytes",
        "NDJSON bytes the spool's waiting lines make, estimated from the lines compressed so far"
    );
    describe_gauge!(
        "larch_intake_line_bytes_per_second",
        "Bytes of line text taken per second, over the last ten minutes"
    );
    describe_gauge!(
        "larch_outage_hours_left",
        "Hours until the spool refuses lines if nothing is uploaded, at the current intake"
    );
    describe_counter!(
        "larch_compacted_ndjson_bytes_total",
        "NDJSON bytes compressed in the spool while their parts were open"
    );
    describe_counter!(
        "larch_compacted_gzip_bytes_total",
        "gzip bytes the spool made of them"
    );
    describe_gauge!(
        "larch_refusing_lines",
        "1 while every new line is refused for lack of room"
    );
}

/// Lines and bytes made durable, by account and source. Kept here rather than
/// in the metrics registry, where an account's two labelled series took about
/// half a KiB, more than anything else an open part costs (5 MB at 10,000
/// accounts); an account takes about a tenth of that here. [`render_ingested`]
/// writes them after the exporter's text, in the same format.
static INGESTED: Mutex<BTreeMap<AccountId, [Ingested; Source::ALL.len()]>> =
    Mutex::new(BTreeMap::new());

#[derive(Default, Clone, Copy)]
struct Ingested {
    lines: u64,
    bytes: u64,
}

pub fn ingested(account: &AccountId, source: Source, lines: usize, bytes: usize) {
    // Like every other metric, nothing is recorded before the exporter is
    // installed (unit tests, `larch drain`).
    if !EXPORTER.get().is_some_and(Option::is_some) {
        return;
    }
    let mut counts = INGESTED.lock();
    let by_source = match counts.get_mut(account) {
        Some(by_source) => by_source,
        None => counts.entry(account.clone()).or_default(),
    };
    let count = &mut by_source[source.index()];
    count.lines += lines as u64;
    count.bytes += bytes as u64;
}

/// Appends `larch_ingested_lines_total` and `larch_ingested_bytes_total` to a
/// scrape, in Prometheus' text format (account names need no escaping: they
/// are letters, digits, `_` and `-`).
pub fn render_ingested(out: &mut String) {
    use std::fmt::Write;
    let counts = INGESTED.lock();
    if counts.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let families = [
        (
            "larch_ingested_lines_total",
            "Lines made durable, by account and source",
            false,
        ),
        (
            "larch_ingested_bytes_total",
            "Bytes of line text made durable, by account and source",
            true,
        ),
    ];
    for (name, help, of_bytes) in families {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (account, by_source) in counts.iter() {
            for source in Source::ALL {
                let count = &by_source[source.index()];
                if count.lines > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{account=\"{account}\",source=\"{}\"}} {}",
                        source.label(),
                        if of_bytes { count.bytes } else { count.lines }
                    );
                }
            }
        }
        out.push('\n');
    }
}

pub fn answered(status: u16) {
    counter!("larch_http_requests_total", "status" => status.to_string()).increment(1);
}

pub fn connection_refused() {
    counter!("larch_connections_refused_total").increment(1);
}

pub fn connection_evicted() {
    counter!("larch_connections_evicted_total").increment(1);
}

pub fn connection_timed_out() {
    counter!("larch_connections_timed_out_total").increment(1);
}

pub fn ingest_busy() {
    counter!("larch_ingest_busy_total").increment(1);
}

pub fn committed(lines: usize, took: Duration) {
    histogram!("larch_commit_lines").record(lines as f64);
    histogram!("larch_commit_seconds").record(took.as_secs_f64());
}

pub fn follow_ups_opened(parts: usize) {
    counter!("larch_follow_up_parts_total").increment(parts as u64);
}

/// A failed upload attempt waits `retry_in` before the next one.
pub fn backing_off(retry_in: Duration) {
    gauge!("larch_upload_backoff_seconds").set(retry_in.as_secs_f64());
}

/// Bytes of an object on their way to a remote store. Counted as each put
/// or multipart piece (at most 8 MiB) is handed over, not once the object is
/// done: an object of hundreds of MB on a slow link shows as a steady flow,
/// and bytes of attempts that failed count too, as a metered link bills them.
pub fn sent_to_store(bytes: usize) {
    counter!("larch_upload_sent_bytes_total").increment(bytes as u64);
}

/// A request on the upload path, of `kind` (`put`, `copy`, `head`, `get`, `list`), went to
/// the store: what a fleet in one bucket pays per object.
pub fn upload_request(kind: &'static str) {
    counter!("larch_upload_requests_total", "request" => kind).increment(1);
}

/// UDP syslog messages that arrived while the spool refused lines, lost
/// (syslog has no way to ask the sender again).
pub fn syslog_lost(messages: usize) {
    counter!("larch_syslog_lost_total").increment(messages as u64);
}

/// No upload is waiting out a backoff any more.
pub fn backoff_over() {
    gauge!("larch_upload_backoff_seconds").set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_listed_at_their_index() {
        for (at, source) in Source::ALL.into_iter().enumerate() {
            assert_eq!(source.index(), at, "{source:?}");
        }
    }

    #[test]
    fn ingest_counts_render_as_prometheus_counters() {
        let account = AccountId::parse("render-test").unwrap();
        let mut counts = [Ingested::default(); Source::ALL.len()];
        counts[Source::Http.index()] = Ingested {
            lines: 3,
            bytes: 40,
        };
        INGESTED.lock().insert(account, counts);
        // The exporter's text may or may not end its last line.
        let mut text = String::from("larch_http_requests_total{status=\"200\"} 1");
        render_ingested(&mut text);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE larch_ingested_lines_total counter",
            "larch_ingested_lines_total{account=\"render-test\",source=\"http\"} 3",
            "# TYPE larch_ingested_bytes_total counter",
            "larch_ingested_bytes_total{account=\"render-test\",source=\"http\"} 40",
        ] {
            assert!(lines.contains(&expected), "{expected:?} not in:\n{text}");
        }
        // A source that stored nothing for the account has no series.
        assert!(!text.contains("render-test\",source=\"file\""), "{text}");
        assert_eq!(
            lines[0], "larch_http_requests_total{status=\"200\"} 1",
            "appended after the exporter's last line: {text}"
        );
    }
}
