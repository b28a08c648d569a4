//! The HTTP front door: Mezmo-compatible `POST /logs/ingest`, plus `/status`. A request is answered 200 only after the committer says its
//! lines are durable; every refusal uses FORMAT.md's error body.

pub mod auth;
pub mod body;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::clock::SharedClock;
use crate::rules::LiveRules;
use crate::spool::{CommitError, Committer, NoRoom, Spool};
use crate::status::Board;
pub use auth::{Keys, LiveKeys};
use body::{Rejection, RequestContext};

pub struct Ingest {
    pub keys: LiveKeys,
    pub committer: Committer,
    pub clock: SharedClock,
    pub max_skew_ms: i64,
    pub spool: Arc<Spool>,
    pub board: Arc<Board>,
    pub rules: LiveRules,
}

pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/logs/ingest", post(ingest_lines))
        .route("/status", get(status))
        // The handler enforces the body limit itself, with FORMAT.md's 413 body.
        .layer(DefaultBodyLimit::disable())
        .with_state(ingest)
}

fn not_ok(status: StatusCode, errors: Vec<String>) -> Response {
    (status, Json(json!({"status": "not ok", "errors": errors}))).into_response()
}

async fn ingest_lines(
    state: State<Arc<Ingest>>,
    query: RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let response = answer(state, query, headers, body).await;
    crate::telemetry::answered(response.status().as_u16());
    response
}

async fn answer(
    State(ingest): State<Arc<Ingest>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let params: Vec<(String, String)> = query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    let Some(key) = auth::key_of(&headers, param("apikey")) else {
        return not_ok(
            StatusCode::UNAUTHORIZED,
            vec!["no ingestion key: send it as Basic auth (key as user name), an apikey header, or ?apikey=".into()],
        );
    };
    let Some(account) = ingest.keys.load().account(&key).cloned() else {
        return not_ok(
            StatusCode::UNAUTHORIZED,
            vec!["unknown ingestion key".into()],
        );
    };
    // An optional check (`larch send --account`): lines never land in another
    // account because a key was mixed up.
    if let Some(expected) = param("account") {
        if expected != account.as_str() {
            return not_ok(
                StatusCode::UNAUTHORIZED,
                vec![format!(
                    "this ingestion key belongs to account {:?}, not {expected:?}",
                    account.as_str()
                )],
            );
        }
    }
    let raw = match read_body(body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return rejection(Rejection::TooLarge(format!(
                "the request body is over the {} MB limit; send fewer lines per request",
                body::MAX_BODY / (1024 * 1024)
            )))
        }
        Err(BodyError::Read(e)) => {
            return not_ok(
                StatusCode::BAD_REQUEST,
                vec![format!("cannot read the request body: {e}")],
            )
        }
    };
    let gzip = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let ctx = RequestContext {
        hostname: param("hostname").map(str::to_owned),
        mac: param("mac").map(str::to_owned),
        ip: param("ip").map(str::to_owned),
        client_now: param("now")
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|n| n.is_finite())
            .map(body::epoch_ms_by_magnitude),
        tags: param("tags")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        received: ingest.clock.now_ms(),
        max_skew_ms: ingest.max_skew_ms,
    };
    let mut lines = match body::decode_body(&raw, gzip).and_then(|json| body::parse(&json, &ctx)) {
        Ok(lines) => lines,
        Err(r) => return rejection(r),
    };
    ingest.rules.load().retain(&account, &mut lines);
    // The parsed lines are all that is needed now; the body need not wait for the commit.
    drop(raw);
    match ingest.committer.commit(account, lines).await {
        Ok(batch_id) => (
            StatusCode::OK,
            Json(json!({"status": "ok", "batchID": batch_id})),
        )
            .into_response(),
        Err(e @ CommitError::ShuttingDown) => not_ok(
            StatusCode::SERVICE_UNAVAILABLE,
            vec![format!("{e}; retry shortly")],
        ),
        Err(CommitError::NoRoom(NoRoom::Full(why))) => retry_later(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("{why}; nothing of this request was stored, retry later"),
        ),
        Err(CommitError::NoRoom(NoRoom::OverShare(why))) => retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{why}; nothing of this request was stored, retry later"),
        ),
        Err(
            e @ CommitError::Store {
                disk_full: true, ..
            },
        ) => not_ok(
            StatusCode::INSUFFICIENT_STORAGE,
            vec![format!(
                "{e}; the spool's disk is full, nothing of this request was stored, retry later"
            )],
        ),
        Err(e) => not_ok(
            StatusCode::SERVICE_UNAVAILABLE,
            vec![format!(
                "{e}; nothing of this request was stored, retry later"
            )],
        ),
    }
}

/// A refusal the client should retry after a while.
fn retry_later(status: StatusCode, why: String) -> Response {
    let mut response = not_ok(status, vec![why]);
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    response
}

fn rejection(r: Rejection) -> Response {
    match r {
        Rejection::Malformed(errors) => not_ok(StatusCode::BAD_REQUEST, errors),
        Rejection::TooLarge(e) => not_ok(StatusCode::PAYLOAD_TOO_LARGE, vec![e]),
    }
}

/// Status is for the host's own operator: only loopback peers are answered.
async fn status(
    State(ingest): State<Arc<Ingest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !peer.ip().is_loopback() {
        return not_ok(
            StatusCode::FORBIDDEN,
            vec!["status is served to loopback clients only".into()],
        );
    }
    let spool = ingest.spool.clone();
    match tokio::task::spawn_blocking(move || spool.summary()).await {
        Ok(Ok(summary)) => {
            let room = ingest.committer.room().status();
            Json(ingest.board.running(summary, &ingest.rules.load(), room)).into_response()
        }
        Ok(Err(e)) => not_ok(StatusCode::INTERNAL_SERVER_ERROR, vec![e.to_string()]),
        Err(e) => not_ok(StatusCode::INTERNAL_SERVER_ERROR, vec![e.to_string()]),
    }
}

/// A body past the limit is still read (and thrown away) up to this much, so the
/// client gets its 413 instead of a connection reset in the middle of sending.
const DRAIN_MAX: usize = 4 * body::MAX_BODY;

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// The request body, up to the limit; past it, the rest is drained and dropped.
async fn read_body(body: axum::body::Body) -> Result<Bytes, BodyError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut kept = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        total += chunk.len();
        if total <= body::MAX_BODY {
            kept.extend_from_slice(&chunk);
        } else if total > DRAIN_MAX {
            break;
        }
    }
    if total > body::MAX_BODY {
        return Err(BodyError::TooLarge);
    }
    Ok(kept.freeze())
}
