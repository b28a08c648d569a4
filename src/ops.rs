//! The operator's routes: `/status` (loopback only), Prometheus metrics at
//! `/metrics`, liveness at `/health`, readiness at `/ready`. All are served on
//! the ingest listener; `metrics.listen`, if set, serves the last three
//! ([`probes`]). Those answer anyone: they hold counts, never lines or keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::clock::{EpochMs, SharedClock};
use crate::ingest::not_ok;
use crate::spool::Room;
use crate::status::{Reporter, Status};

/// What the routes read.
pub struct Ops {
    pub reporter: Arc<Reporter>,
    pub room: Arc<Room>,
    pub clock: SharedClock,
    pub exporter: Option<PrometheusHandle>,
    pub data_dir: PathBuf,
}

/// Every route, for the ingest listener.
pub fn router(ops: Arc<Ops>) -> Router {
    probe_routes().route("/status", get(status)).with_state(ops)
}

/// `/metrics`, `/health` and `/ready` alone, for `metrics.listen`.
pub fn probes(ops: Arc<Ops>) -> Router {
    probe_routes().with_state(ops)
}

fn probe_routes() -> Router<Arc<Ops>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
}

/// Status is for the host's own operator: only loopback peers are answered.
async fn status(
    State(ops): State<Arc<Ops>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !peer.ip().is_loopback() {
        return not_ok(
            StatusCode::FORBIDDEN,
            vec!["status is served to loopback clients only".into()],
        );
    }
    match ops.reporter.status().await {
        Ok(status) => Json(status).into_response(),
        Err(e) => not_ok(StatusCode::INTERNAL_SERVER_ERROR, vec![e.to_string()]),
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let Some(exporter) = ops.exporter.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are off in this process (another metrics recorder was installed first)\n",
        )
            .into_response();
    };
    match ops.reporter.status().await {
        Ok(status) => observe(&status, ops.clock.now_ms()),
        Err(e) => tracing::warn!("metrics: cannot read the spool's parts, gauges are stale: {e}"),
    }
    exporter.run_upkeep();
    let mut text = exporter.render();
    crate::telemetry::render_ingested(&mut text);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
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
    gauge!("larch_spool_disk_bytes").set(room.spool_bytes as f64);
    gauge!("larch_intake_line_bytes_per_second").set(room.intake_line_bytes_per_s);
    let outlook = &status.outlook;
    if let Some(ndjson) = outlook.ndjson_waiting_bytes {
        gauge!("larch_spool_ndjson_bytes").set(ndjson as f64);
    }
    if let Some(hours) = outlook.outage_hours_left {
        gauge!("larch_outage_hours_left").set(hours);
    }
    let compressed = &spool.compressed;
    counter!("larch_compacted_ndjson_bytes_total").absolute(compressed.ndjson_bytes);
    counter!("larch_compacted_gzip_bytes_total").absolute(compressed.gzip_bytes);
    for (rule, lines) in &status.lines_dropped_by_rule {
        counter!("larch_rule_dropped_lines_total", "rule" => rule.clone()).absolute(*lines);
    }
    counter!("larch_uploads_total", "result" => "ok").absolute(status.sync.objects_uploaded);
    counter!("larch_uploads_total", "result" => "error").absolute(status.sync.upload_failures);
    // Every failed attempt is retried: paused uploads too, every 30 s at most.
    counter!("larch_upload_retries_total").absolute(status.sync.upload_failures);
    counter!("larch_upload_bytes_total").absolute(status.sync.bytes_uploaded);
}

/// Ready means lines sent now would be taken: there is room, and the spool's
/// directory takes a write.
async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    if let Some(why) = ops.room.refusing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: refusing lines: {why}\n"),
        )
            .into_response();
    }
    let dir = ops.data_dir.clone();
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
