//! OTLP/HTTP logs: `POST /v1/logs` on the ingest listener, in protobuf or
//! JSON, gzipped or not, answered as the OTLP specification asks.
//!
//! The key is the Mezmo API's (an `apikey` header, Basic auth or
//! `?apikey=`), so accounts stay apart; a request is answered 200 with an
//! `ExportLogsServiceResponse` only once its lines are durable, with a
//! partial success naming how many records the rules dropped. Bad data gets
//! 400, and a spool without room 429 or 503 with `Retry-After` (both of
//! which OTLP clients retry; 507 they would not). Every refusal carries a
//! `google.rpc.Status` in the request's encoding.
//!
//! A request's memory comes from the same budget as the Mezmo API's. Decoded
//! records can take far more memory than their bytes on the wire (an empty
//! record is two bytes of protobuf), so what decoding will take is weighed
//! from the body first ([`weigh`]) and held before anything is decoded.

mod records;
mod weigh;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;

use super::body::Rejection;
use super::{receive, Ingest, Received, Refusal};
use crate::spool::Along;
use crate::telemetry::Source;
use records::Arrival;

/// The two encodings OTLP/HTTP allows, told by `Content-Type`; a response
/// uses the request's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Option<Self> {
        let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let media = content_type.split(';').next()?.trim();
        if media.eq_ignore_ascii_case("application/x-protobuf")
            || media.eq_ignore_ascii_case("application/protobuf")
        {
            Some(Self::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Self::Json)
        } else {
            None
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        })
    }
}

/// `google.rpc.Status`, the body of every OTLP refusal (`details` left out).
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// gRPC's INVALID_ARGUMENT and UNAVAILABLE, for the `code` of a Status.
const INVALID_ARGUMENT: i32 = 3;
const UNAVAILABLE: i32 = 14;

pub async fn export_logs(
    State(ingest): State<Arc<Ingest>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let response = answer(&ingest, query, &headers, body).await;
    crate::telemetry::answered(response.status().as_u16());
    response
}

async fn answer(
    ingest: &Ingest,
    query: Option<String>,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Some(encoding) = Encoding::of(headers) else {
        return refuse(
            Encoding::Json,
            Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send OTLP logs as Content-Type application/x-protobuf or application/json".into(),
            ),
        );
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
    if let Some(other) = content_encoding.filter(|e| e != "gzip" && e != "identity") {
        return refuse(
            encoding,
            Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not taken: send gzip, or nothing"),
            ),
        );
    }
    // `?apikey=` and, as for the Mezmo API, `?account=`: a key of another
    // account is then refused rather than filing records there.
    let param = |name: &str| {
        query.as_deref().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
    };
    let (apikey, expected_account) = (param("apikey"), param("account"));
    let Received {
        account,
        text,
        mut share,
        body_held,
    } = match receive(
        ingest,
        headers,
        apikey.as_deref(),
        expected_account.as_deref(),
        body,
    )
    .await
    {
        Ok(received) => received,
        Err(refusal) => return refuse(encoding, refusal),
    };
    // What decoding will take, and the lines about as much again, held
    // before any of it is made.
    let weight = match encoding {
        Encoding::Protobuf => weigh::protobuf(&text),
        Encoding::Json => Ok(weigh::json(&text)),
    };
    let weight = match weight {
        Ok(w) => w,
        Err(e) => {
            return refuse(
                encoding,
                bad_data(format!("the body is not OTLP protobuf: {e}")),
            )
        }
    };
    let wanted = body_held.saturating_add(weight.saturating_mul(2));
    if wanted > share.total() {
        return refuse(
            encoding,
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the records of this body take more memory than larch gives all requests together \
                     (ingest.max_request_memory, {}); send fewer records per request",
                    crate::units::mib(share.total() as u64)
                ),
            ),
        );
    }
    if wanted > share.held() {
        if wanted > super::budget::LARGE && share.large().await.is_err() {
            return refuse(encoding, Refusal::busy());
        }
        if share.hold(wanted).await.is_err() {
            return refuse(encoding, Refusal::busy());
        }
    }
    let arrival = Arrival {
        received_ms: ingest.intake.clock.now_ms(),
        max_skew_ms: ingest.max_skew_ms,
    };
    let rules = ingest.intake.rules.load_full();
    let for_rules = account.clone();
    let runtime = tokio::runtime::Handle::current();
    let decoded = tokio::task::spawn_blocking(move || {
        let request = decode(encoding, &text).map_err(bad_data)?;
        drop(text);
        // What the lines copy beyond the decoded request, held before they are made.
        let mut held = share.held();
        let mut reserve = |more: usize| {
            held = held.saturating_add(more);
            if held > share.total() {
                return Err(Refusal::rejected(Rejection::TooLarge(format!(
                    "the records of this body take more memory than larch gives all requests together \
                     (ingest.max_request_memory, {}); send fewer records per request",
                    crate::units::mib(share.total() as u64)
                ))));
            }
            if held > share.held() {
                runtime
                    .block_on(share.hold(held))
                    .map_err(|_| Refusal::busy())?;
            }
            Ok(())
        };
        let mut lines = records::lines_of(&request, &arrival, &mut reserve)?;
        drop(request);
        let count = lines.len();
        rules.retain(&for_rules, &mut lines);
        Ok::<_, Refusal>((lines, count, share))
    })
    .await;
    let (lines, count, mut share) = match decoded {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(refusal)) => return refuse(encoding, refusal),
        Err(e) => {
            return refuse(
                encoding,
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("decoding the request failed: {e}"),
                ),
            )
        }
    };
    share.shrink_to(crate::spool::stored_bytes(&lines));
    let dropped = count - lines.len();
    if !lines.is_empty() {
        let committed = ingest
            .intake
            .committer
            .commit_along(account, lines, Along::default(), Source::Otlp)
            .await;
        if let Err(e) = committed {
            return refuse(encoding, Refusal::not_stored(e));
        }
    }
    drop(share);
    let response = ExportLogsServiceResponse {
        partial_success: (dropped > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: dropped as i64,
            error_message: format!(
                "{dropped} of {count} log records were dropped by larch's rules and not archived"
            ),
        }),
    };
    let body = match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        // A response of numbers and text always serializes.
        Encoding::Json => serde_json::to_vec(&response).unwrap_or_default(),
    };
    respond(StatusCode::OK, encoding, body, None)
}

/// The request, from protobuf or OTLP's JSON.
fn decode(encoding: Encoding, text: &Bytes) -> Result<ExportLogsServiceRequest, String> {
    match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(text.as_ref())
            .map_err(|e| format!("the body is not OTLP protobuf: {e}")),
        Encoding::Json => serde_json::from_slice(text).or_else(|first| {
            // Senders leave out an empty list's `values` (`{"arrayValue":{}}`),
            // which the typed reader does not take: fill them in and read again.
            // Only then is the body read a second time, untyped.
            if !weigh::may_hold_empty_lists(text) {
                return Err(format!("the body is not OTLP JSON: {first}"));
            }
            let mut value: serde_json::Value =
                serde_json::from_slice(text).map_err(|e| format!("the body is not JSON: {e}"))?;
            if !weigh::fill_empty_lists(&mut value) {
                return Err(format!("the body is not OTLP JSON: {first}"));
            }
            serde_json::from_value(value).map_err(|e| format!("the body is not OTLP JSON: {e}"))
        }),
    }
}

fn bad_data(message: String) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, message)
}

/// A refusal as OTLP answers it: a `Status` in the request's encoding. A
/// spool without room is 503 (OTLP clients retry 429 and 503, not 507).
fn refuse(encoding: Encoding, refusal: Refusal) -> Response {
    let status = match refusal.status {
        StatusCode::INSUFFICIENT_STORAGE => StatusCode::SERVICE_UNAVAILABLE,
        other => other,
    };
    let retry_after = match (status, refusal.retry_after) {
        (StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS, None) => Some("5"),
        (_, given) => given,
    };
    let code = if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        INVALID_ARGUMENT
    } else {
        UNAVAILABLE
    };
    let message = refusal.errors.join("; ");
    let body = match encoding {
        Encoding::Protobuf => Status { code, message }.encode_to_vec(),
        Encoding::Json => serde_json::json!({"code": code, "message": message})
            .to_string()
            .into_bytes(),
    };
    respond(status, encoding, body, retry_after)
}

fn respond(
    status: StatusCode,
    encoding: Encoding,
    body: Vec<u8>,
    retry_after: Option<&'static str>,
) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, encoding.content_type());
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
    }
    response
}
