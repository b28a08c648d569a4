//! What larch counts and how it is read: Prometheus metrics at `/metrics`,
//! liveness at `/health`, readiness at `/ready`.
//!
//! Events only a stage sees (lines made durable, requests answered, group
//! commits, follow-up parts, the current backoff) are recorded where they
//! happen, with the `metrics` crate. What the daemon's status already counts
//! (parts by state, the backlog, the room, the rules' drops, uploads) is read
//! from it when `/metrics` is scraped, so the two never disagree and nothing
//! is counted twice. The exporter is installed once per process; before that
//! (in unit tests, `larch drain`) recording is a no-op. Every metric's name and
//! meaning is in [`describe`] (and in the README's table).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::account::AccountId;
use crate::clock::{EpochMs, SharedClock};
use crate::rules::LiveRules;
use crate::spool::{Room, Spool};
use crate::status::{Board, Status};

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

/// Sets what is read from the daemon's status (the spool's parts, the room,
/// the rules' and uploads' counts) just before a scrape renders it.
fn observe(status: &Status, now: EpochMs) {
    let spool = &status.spool;
    for (state, parts, bytes) in [
        ("open", spool.parts_open, spool.bytes_open),
        ("sealed", spool.parts_sealed, spool.bytes_sealed),
        ("uploading", spool.parts_uploading, spool.bytes_uploading),
    ] {
        gauge!("larch_spool_parts", "state" => state).set(parts as f64);
        gauge!("larch_spool_bytes", "state" => state).set(bytes as f64);
    }
    // Uploaded parts are deleted a moment later; their bytes count as archived.
    gauge!("larch_spool_parts", "state" => "uploaded").set(spool.parts_uploaded as f64);
    gauge!("larch_spool_lines_waiting").set(spool.lines_waiting as f64);
    let age = spool
        .oldest_waiting_hour_end
        .map_or(0.0, |end| ((now - end).max(0) as f64) / 1000.0);
    gauge!("larch_oldest_unsynced_hour_age_seconds").set(age);
    gauge!("larch_records_quarantined").set(spool.records_quarantined as f64);
    let room = &status.room;
    gauge!("larch_disk_free_bytes").set(room.disk_free_bytes as f64);
    gauge!("larch_refusing_lines").set(if room.refusing.is_some() { 1.0 } else { 0.0 });
    for (rule, lines) in &status.lines_dropped_by_rule {
        counter!("larch_rule_dropped_lines_total", "rule" => rule.clone()).absolute(*lines);
    }
    counter!("larch_uploads_total", "result" => "ok").absolute(status.objects_uploaded);
    counter!("larch_uploads_total", "result" => "error").absolute(status.upload_failures);
    // Every failed attempt is retried: paused uploads too, every 30 s at most.
    counter!("larch_upload_retries_total").absolute(status.upload_failures);
    counter!("larch_upload_bytes_total").absolute(status.bytes_uploaded);
}

/// What `/metrics`, `/health` and `/ready` read.
pub struct Observed {
    pub spool: Arc<Spool>,
    pub board: Arc<Board>,
    pub room: Arc<Room>,
    pub rules: LiveRules,
    pub clock: SharedClock,
    pub exporter: Option<PrometheusHandle>,
    pub data_dir: PathBuf,
}

/// `/metrics`, `/health` and `/ready`: served on the ingest listener, and on
/// `metrics.listen` if set. They answer anyone: they hold counts, never lines or keys.
pub fn router(observed: Arc<Observed>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(observed)
}

async fn metrics(State(o): State<Arc<Observed>>) -> Response {
    let Some(exporter) = o.exporter.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are off in this process (another metrics recorder was installed first)\n",
        )
            .into_response();
    };
    let spool = o.spool.clone();
    match tokio::task::spawn_blocking(move || spool.summary()).await {
        Ok(Ok(summary)) => observe(
            &o.board.running(summary, &o.rules.load(), o.room.status()),
            o.clock.now_ms(),
        ),
        Ok(Err(e)) => {
            tracing::warn!("metrics: cannot read the spool's parts, gauges are stale: {e}")
        }
        Err(e) => tracing::warn!("metrics: spool reading task failed: {e}"),
    }
    exporter.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        exporter.render(),
    )
        .into_response()
}

/// Ready means lines sent now would be taken: there is room, and the spool's
/// directory takes a write.
async fn ready(State(o): State<Arc<Observed>>) -> Response {
    if let Some(why) = o.room.refusing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: refusing lines: {why}\n"),
        )
            .into_response();
    }
    let dir = o.data_dir.clone();
    let probed = tokio::task::spawn_blocking(move || {
        let path = dir.join(".ready-probe");
        let written = std::fs::write(&path, b"ready").and_then(|()| std::fs::remove_file(&path));
        written.map_err(|e| format!("cannot write to the spool directory {}: {e}", dir.display()))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the write check failed: {e}")));
    match probed {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
