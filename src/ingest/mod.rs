//! The HTTP front door: Mezmo-compatible `POST /logs/ingest`. A request is
//! answered 200 only after the committer says its lines are durable; every
//! refusal uses docs/FORMAT.md's error body.
//!
//! A request's memory comes from one shared [`budget`] before it is used, and
//! gunzip, JSON parsing and the rules run on blocking threads, so a large or
//! hostile body neither fills memory nor stalls the listeners.

pub mod auth;
pub mod body;
pub mod budget;
pub mod listen;
pub mod tls;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::intake::Intake;
use crate::spool::{CommitError, NoRoom};
pub use auth::{Keys, LiveKeys};
use body::{Rejection, RequestContext};
use budget::{Budget, Busy, Share};

pub struct Ingest {
    pub keys: LiveKeys,
    pub budget: Budget,
    /// A request body must arrive whole within this.
    pub body_timeout: std::time::Duration,
    pub max_skew_ms: i64,
    pub intake: Intake,
}

pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/logs/ingest", post(ingest_lines))
        // The handler enforces the body limit itself, with docs/FORMAT.md's 413 body.
        .layer(DefaultBodyLimit::disable())
        .with_state(ingest)
}

/// A refusal in docs/FORMAT.md's error body.
pub fn not_ok(status: StatusCode, errors: Vec<String>) -> Response {
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
    let mut share = ingest.budget.share();
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let raw = match read_body(body, length, &mut share, ingest.body_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return rejection(Rejection::TooLarge(format!(
                "the request body is over the {} MB limit; send fewer lines per request",
                body::MAX_BODY / (1024 * 1024)
            )))
        }
        Err(BodyError::Busy) => return busy(),
        Err(BodyError::Slow) => {
            crate::telemetry::connection_timed_out();
            return not_ok(
                StatusCode::REQUEST_TIMEOUT,
                vec![format!(
                    "the request body did not arrive within {} (ingest.body_timeout); send smaller requests or check the link",
                    humantime::format_duration(ingest.body_timeout)
                )],
            );
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
    let received = raw.len();
    let json = if gzip {
        match gunzip(raw, &mut share).await {
            Ok(json) => json,
            Err(Refused::Busy) => return busy(),
            Err(Refused::Rejected(r)) => return rejection(r),
            Err(Refused::Failed(e)) => {
                return not_ok(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    vec![format!("decompressing the body failed: {e}")],
                )
            }
        }
    } else {
        raw
    };
    // What the body holds of the share: as received, and its text if gunzipped.
    let body_held = if gzip {
        received + json.len()
    } else {
        received
    };
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
        received: ingest.intake.clock.now_ms(),
        max_skew_ms: ingest.max_skew_ms,
    };
    let rules = ingest.intake.rules.load_full();
    let for_rules = account.clone();
    let runtime = tokio::runtime::Handle::current();
    let json_len = json.len();
    let parsed = tokio::task::spawn_blocking(move || {
        // The body stays held while its lines are read; the lines come on top.
        let body_bytes = share.held().min(body_held);
        let mut lines_held = 0;
        let mut reserve = |lines: usize| {
            lines_held = lines;
            let wanted = body_bytes + lines;
            if wanted > share.total() {
                return Err(Rejection::TooLarge(format!(
                    "the lines of this body take more memory than larch gives all requests together \
                     (ingest.max_request_memory, {}); send fewer lines per request",
                    crate::units::mib(share.total() as u64)
                )));
            }
            if wanted > share.held() {
                // Asked for in steps of at least 1 MiB, so a large body
                // seldom waits for room.
                let step_up = wanted.max(share.held() + budget::LARGE);
                runtime
                    .block_on(share.hold(step_up.min(share.total())))
                    .map_err(|_| Rejection::Busy)?;
            }
            Ok(())
        };
        let read = body::parse(&json, &ctx, &mut reserve).map(|mut parsed| {
            rules.retain(&for_rules, &mut parsed.lines);
            parsed
        });
        // parse's last ask was for all its lines; the rules only drop some.
        (read, share, lines_held)
    })
    .await;
    let (parsed, mut share, lines_held) = match parsed {
        Ok((Ok(parsed), share, held)) => (parsed, share, held),
        Ok((Err(r), ..)) => return rejection(r),
        Err(e) => {
            return not_ok(
                StatusCode::INTERNAL_SERVER_ERROR,
                vec![format!("parsing the request failed: {e}")],
            )
        }
    };
    // The lines are what is held until they are stored, and the body (its
    // text after gunzip) only if their texts are slices of it.
    let body_kept = if parsed.borrows_body { json_len } else { 0 };
    share.shrink_to(lines_held + body_kept);
    match ingest.intake.committer.commit(account, parsed.lines).await {
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

fn busy() -> Response {
    crate::telemetry::ingest_busy();
    retry_after(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{Busy}; nothing of this request was stored, retry shortly"),
        "1",
    )
}

/// A refusal the client should retry after a while.
fn retry_later(status: StatusCode, why: String) -> Response {
    retry_after(status, why, "5")
}

fn retry_after(status: StatusCode, why: String, seconds: &'static str) -> Response {
    let mut response = not_ok(status, vec![why]);
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static(seconds),
    );
    response
}

fn rejection(r: Rejection) -> Response {
    match r {
        Rejection::Busy => busy(),
        Rejection::Malformed(errors) => not_ok(StatusCode::BAD_REQUEST, errors),
        Rejection::TooLarge(e) => not_ok(StatusCode::PAYLOAD_TOO_LARGE, vec![e]),
    }
}

/// A body past the limit is still read (and thrown away) up to this much, so the
/// client gets its 413 instead of a connection reset in the middle of sending.
const DRAIN_MAX: usize = 4 * body::MAX_BODY;

enum BodyError {
    TooLarge,
    Busy,
    /// Not whole within the body timeout.
    Slow,
    Read(axum::Error),
}

/// The request body, up to the limit, its buffer taken from the request's
/// share of the budget before it grows (at once when the client said its
/// length); past the limit, the rest is drained and dropped. All of it within
/// `timeout`.
async fn read_body(
    body: axum::body::Body,
    length: Option<usize>,
    share: &mut Share,
    timeout: std::time::Duration,
) -> Result<Bytes, BodyError> {
    use futures::StreamExt;
    let read = async {
        // A said length sizes the buffer, but only what has arrived is held
        // beyond a first MiB: a client that announces 10 MB and sends slowly
        // holds little of the budget.
        let announced = length.unwrap_or(body::MAX_BODY).min(body::MAX_BODY);
        let mut kept: Vec<u8> = Vec::new();
        match length.filter(|n| *n <= body::MAX_BODY) {
            Some(n) if n <= budget::LARGE => {
                share
                    .hold(n * budget::SMALL_REQUEST_SHARE)
                    .await
                    .map_err(|_| BodyError::Busy)?;
                kept.reserve_exact(n);
            }
            Some(_) => {
                share
                    .hold(budget::LARGE)
                    .await
                    .map_err(|_| BodyError::Busy)?;
                kept.reserve_exact(budget::LARGE);
            }
            None => {}
        }
        let mut stream = body.into_data_stream();
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(BodyError::Read)?;
            total += chunk.len();
            if total <= body::MAX_BODY {
                let wanted = kept.len() + chunk.len();
                if wanted > budget::LARGE {
                    share.large().await.map_err(|_| BodyError::Busy)?;
                }
                if wanted > kept.capacity() {
                    let grown = wanted.max((2 * kept.capacity()).min(announced));
                    share.hold(grown).await.map_err(|_| BodyError::Busy)?;
                    kept.reserve_exact(grown - kept.len());
                }
                kept.extend_from_slice(&chunk);
            } else if total > DRAIN_MAX {
                break;
            }
        }
        if total > body::MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        // Lines may keep slices of the body until they are stored, and only
        // its length is counted while they do: no room beyond it is kept.
        kept.shrink_to_fit();
        Ok(Bytes::from(kept))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Slow))
}

enum Refused {
    Busy,
    Rejected(Rejection),
    /// larch's own fault (a task that died): 500.
    Failed(String),
}

/// Decompressed output taken from the budget per step.
const GUNZIP_STEP: usize = 1 << 20;

/// Undoes `Content-Encoding: gzip` on a blocking thread, a step at a time,
/// each step's output taken from the request's share first.
async fn gunzip(raw: Bytes, share: &mut Share) -> Result<Bytes, Refused> {
    // A body that says it is large, or turns out so, waits for the large
    // requests' turn; the trailer's size, when believable, sizes the text once.
    let said = body::Gunzip::said_size(&raw);
    if said > budget::LARGE || raw.len() > budget::LARGE {
        share.large().await.map_err(|_| Refused::Busy)?;
    }
    let mut text = body::Gunzip::new(raw);
    let mut step = said.clamp(1, body::MAX_BODY + 1);
    loop {
        if text.len() >= budget::LARGE {
            share.large().await.map_err(|_| Refused::Busy)?;
        }
        let room = text.room_wanted(step);
        share.grow(room).await.map_err(|_| Refused::Busy)?;
        text.reserve(room);
        step = GUNZIP_STEP;
        let stepped = tokio::task::spawn_blocking(move || {
            let ended = text.step();
            (text, ended)
        })
        .await;
        let (back, ended) = stepped.map_err(|e| Refused::Failed(e.to_string()))?;
        text = back;
        if ended.map_err(Refused::Rejected)? {
            return Ok(Bytes::from(text.into_text()));
        }
    }
}
