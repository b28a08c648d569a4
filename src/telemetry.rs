//! What larch counts: a leaf every stage may call and that calls none.
//!
//! Events only a stage sees (lines made durable, requests answered, group
//! commits, follow-up parts, the current backoff) are recorded where they
//! happen, with the `metrics` crate. What the daemon's status already counts
//! (parts by state, the backlog, the room, the rules' drops, uploads) is set
//! by `ops` when `/metrics` is scraped, so the two never disagree and nothing
//! is counted twice. The exporter is installed once per process; before that
//! (in unit tests, `larch drain`) recording is a no-op. Every metric's name and
//! meaning is in [`describe`] (and in the README's table).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::account::AccountId;

/// Where a line came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    File,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::File => "file",
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
        "larch_ingested_lines_total",
        "Lines made durable, by account and source"
    );
    describe_counter!(
        "larch_ingested_bytes_total",
        "Bytes of line text made durable, by account and source"
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

pub fn ingested(account: &AccountId, source: Source, lines: usize, bytes: usize) {
    let labels = [
        ("account", account.as_str().to_owned()),
        ("source", source.label().to_owned()),
    ];
    counter!("larch_ingested_lines_total", &labels).increment(lines as u64);
    counter!("larch_ingested_bytes_total", &labels).increment(bytes as u64);
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

/// No upload is waiting out a backoff any more.
pub fn backoff_over() {
    gauge!("larch_upload_backoff_seconds").set(0.0);
}
