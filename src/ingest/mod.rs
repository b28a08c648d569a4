//! The HTTP front door: Mezmo-compatible `POST /logs/ingest`, and OTLP/HTTP
//! logs on `POST /v1/logs` ([`otlp`]). A request is answered 200 only after
//! the committer says its lines are durable; every refusal uses
//! docs/FORMAT.md's error body (OTLP's, a `google.rpc.Status`).
//!
//! A request's memory comes from one shared [`budget`] before it is used.
//! gunzip runs on blocking threads, and so do the JSON parsing and the rules
//! of a body past a MiB (or one whose lines want more of the budget than it
//! holds), so a large or hostile body neither fills memory nor stalls the
//! listeners; a smaller body is read where it arrived, in a few
//! milliseconds at most.

pub mod auth;
pub mod body;
pub mod budget;
pub mod listen;
pub mod otlp;
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
        .route("/v1/logs", post(otlp::export_logs))
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

    let received = match receive(&ingest, &headers, param("apikey"), param("account"), body).await {
        Ok(received) => received,
        Err(refusal) => return refusal.into_response(),
    };
    let Received {
        account,
        text: json,
        mut share,
        body_held,
    } = received;
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
    let json_len = json.len();
    // A body of up to a MiB is read where it arrived, within what its share
    // already holds (1 to 3 ms a MiB here): handing each request to a blocking
    // thread and back cost a twentieth of a line's CPU. A larger body, or one
    // whose lines need more of the budget than its share holds, is read on a
    // blocking thread, where waiting for room stalls no other request.
    let inline = (json_len <= budget::LARGE)
        .then(|| read_lines(&json, &ctx, &rules, &account, &mut share, body_held, None))
        .filter(|read| !read.wanted_room);
    let (read, mut share) = match inline {
        Some(read) => (read, share),
        None => {
            let runtime = tokio::runtime::Handle::current();
            let account = account.clone();
            let on_blocking_thread = tokio::task::spawn_blocking(move || {
                let wait_on = Some(&runtime);
                let read = read_lines(
                    &json, &ctx, &rules, &account, &mut share, body_held, wait_on,
                );
                (read, share)
            });
            match on_blocking_thread.await {
                Ok(read) => read,
                Err(e) => {
                    return not_ok(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        vec![format!("parsing the request failed: {e}")],
                    )
                }
            }
        }
    };
    let ReadLines {
        parsed, lines_held, ..
    } = read;
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(r) => return Refusal::rejected(r).into_response(),
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
        Err(e) => Refusal::not_stored(e).into_response(),
    }
}

/// A body read into lines, and what they hold of the request's share.
struct ReadLines {
    parsed: Result<body::Parsed, Rejection>,
    /// What parse last asked the budget for: all its lines.
    lines_held: usize,
    /// The lines needed more than the share held, and there was no waiting
    /// for it here: read again where waiting is allowed.
    wanted_room: bool,
}

/// Parses `json` into lines and applies the rules, taking memory for the
/// lines from `share` on top of the body as they are read. With a runtime to
/// wait on (a blocking thread), a share too small grows, waiting for room;
/// without one, reading stops as soon as it would have to.
fn read_lines(
    json: &Bytes,
    ctx: &RequestContext,
    rules: &crate::rules::Rules,
    account: &crate::account::AccountId,
    share: &mut Share,
    body_held: usize,
    wait_on: Option<&tokio::runtime::Handle>,
) -> ReadLines {
    // The body stays held while its lines are read; the lines come on top.
    let body_bytes = share.held().min(body_held);
    let mut lines_held = 0;
    let mut wanted_room = false;
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
            let Some(runtime) = wait_on else {
                wanted_room = true;
                return Err(Rejection::Busy);
            };
            // Asked for in steps of at least 1 MiB, so a large body
            // seldom waits for room.
            let step_up = wanted.max(share.held() + budget::LARGE);
            runtime
                .block_on(share.hold(step_up.min(share.total())))
                .map_err(|_| Rejection::Busy)?;
        }
        Ok(())
    };
    let parsed = body::parse(json, ctx, &mut reserve).map(|mut parsed| {
        rules.retain(account, &mut parsed.lines);
        parsed
    });
    // parse's last ask was for all its lines; the rules only drop some.
    ReadLines {
        parsed,
        lines_held,
        wanted_room,
    }
}

/// Why a request was refused: its status, what to tell the client, and when
/// to try again. Each route writes it in its own error body.
pub struct Refusal {
    pub status: StatusCode,
    pub errors: Vec<String>,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<&'static str>,
}

impl Refusal {
    fn new(status: StatusCode, why: String) -> Self {
        Self {
            status,
            errors: vec![why],
            retry_after: None,
        }
    }

    fn retry(status: StatusCode, why: String, seconds: &'static str) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(status, why)
        }
    }

    /// Too many requests are being read at once.
    fn busy() -> Self {
        crate::telemetry::ingest_busy();
        Self::retry(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{Busy}; nothing of this request was stored, retry shortly"),
            "1",
        )
    }

    /// The request cannot be read: nothing can come of retrying it.
    fn rejected(r: Rejection) -> Self {
        match r {
            Rejection::Busy => Self::busy(),
            Rejection::Malformed(errors) => Self {
                status: StatusCode::BAD_REQUEST,
                errors,
                retry_after: None,
            },
            Rejection::TooLarge(e) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, e),
        }
    }

    /// Why the committer did not store a request's lines.
    fn not_stored(e: CommitError) -> Self {
        let why = |e: &dyn std::fmt::Display| {
            format!("{e}; nothing of this request was stored, retry later")
        };
        match e {
            e @ CommitError::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; retry shortly"),
            ),
            CommitError::NoRoom(NoRoom::Full(w)) => {
                Self::retry(StatusCode::INSUFFICIENT_STORAGE, why(&w), "5")
            }
            CommitError::NoRoom(NoRoom::OverShare(w)) => {
                Self::retry(StatusCode::TOO_MANY_REQUESTS, why(&w), "5")
            }
            e @ CommitError::Store {
                disk_full: true, ..
            } => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "{e}; the spool's disk is full, nothing of this request was stored, retry later"
                ),
            ),
            e => Self::new(StatusCode::SERVICE_UNAVAILABLE, why(&e)),
        }
    }
}

impl IntoResponse for Refusal {
    /// In docs/FORMAT.md's error body.
    fn into_response(self) -> Response {
        let mut response = not_ok(self.status, self.errors);
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(seconds),
            );
        }
        response
    }
}

/// A request whose key is known, its body read whole and, if it came
/// gzipped, decompressed: where every ingest route starts.
pub struct Received {
    pub account: crate::account::AccountId,
    pub text: Bytes,
    /// What the request holds of the memory budget.
    pub share: Share,
    /// Of that, what the body takes: as received, plus its text if gunzipped.
    pub body_held: usize,
}

/// Checks the request's key (and the account it was said to be for), then
/// reads its body within the budget and the body timeout, and gunzips it.
pub async fn receive(
    ingest: &Ingest,
    headers: &HeaderMap,
    apikey: Option<&str>,
    expected_account: Option<&str>,
    body: axum::body::Body,
) -> Result<Received, Refusal> {
    let Some(key) = auth::key_of(headers, apikey) else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "no ingestion key: send it as Basic auth (key as user name), an apikey header, or ?apikey=".into(),
        ));
    };
    let Some(account) = ingest.keys.load().account(&key).cloned() else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unknown ingestion key".into(),
        ));
    };
    // An optional check (`larch send --account`): lines never land in another
    // account because a key was mixed up.
    if let Some(expected) = expected_account {
        if expected != account.as_str() {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "this ingestion key belongs to account {:?}, not {expected:?}",
                    account.as_str()
                ),
            ));
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
            return Err(Refusal::rejected(Rejection::TooLarge(format!(
                "the request body is over the {} MB limit; send fewer lines per request",
                body::MAX_BODY / (1024 * 1024)
            ))))
        }
        Err(BodyError::Busy) => return Err(Refusal::busy()),
        Err(BodyError::Slow) => {
            crate::telemetry::connection_timed_out();
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} (ingest.body_timeout); send smaller requests or check the link",
                    humantime::format_duration(ingest.body_timeout)
                ),
            ));
        }
        Err(BodyError::Read(e)) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ))
        }
    };
    let gzip = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let received = raw.len();
    let text = if gzip {
        match gunzip(raw, &mut share).await {
            Ok(text) => text,
            Err(Refused::Busy) => return Err(Refusal::busy()),
            Err(Refused::Rejected(r)) => return Err(Refusal::rejected(r)),
            Err(Refused::Failed(e)) => {
                return Err(Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("decompressing the body failed: {e}"),
                ))
            }
        }
    } else {
        raw
    };
    let body_held = if gzip {
        received + text.len()
    } else {
        received
    };
    Ok(Received {
        account,
        text,
        share,
        body_held,
    })
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
