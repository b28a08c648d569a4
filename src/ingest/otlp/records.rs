//! OTLP log records as archived lines (docs/FORMAT.md §2c).
//!
//! The body becomes `_line` (a string as it is, any other value as its JSON),
//! the resource's `service.name` `_app` and `host.name` `_host`, the severity
//! `level`; record attributes, resource attributes, the scope, trace and span
//! IDs go into `_meta`. Every record of one resource shares one origin.

use std::sync::Arc;

use base64::Engine;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use serde_json::{Map, Value};

use crate::clock::EpochMs;
use crate::ingest::body::{MAX_APP, MAX_HOSTNAME, MAX_LEVEL, MAX_LINE, MAX_META};
use crate::line::{cut_to, Line, Origin};

/// The level of a record that gives only a severity number: OTLP's ranges
/// 1–4, 5–8, … 21–24 by their short names.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "fatal"];
/// Nesting kept of an attribute value; deeper values are written as `null`.
const MAX_DEPTH: usize = 32;

/// When a request's records were received, and which times to believe.
pub struct Arrival {
    pub received_ms: EpochMs,
    pub max_skew_ms: i64,
}

/// Values larger than this on the wire are not rendered as JSON at all: a
/// body past it is archived empty and `_truncated`, attributes past it are
/// left out of `_meta` and named in `dropped`, so no record's rendering takes
/// more than a few times the limits it will be cut to.
const MAX_RENDERED: usize = 4 * MAX_META;

/// Every record of a request as a line. `reserve` is told, scope by scope,
/// what the lines will take beyond the decoded request (the resource's and
/// scope's `_meta` text copied into each of their records) before they are
/// made, and may refuse.
pub fn lines_of<E>(
    request: &ExportLogsServiceRequest,
    arrival: &Arrival,
    reserve: &mut dyn FnMut(usize) -> Result<(), E>,
) -> Result<Vec<Line>, E> {
    let mut lines = Vec::new();
    for resource_logs in &request.resource_logs {
        let attributes = resource_logs
            .resource
            .as_ref()
            .map_or(&[][..], |r| r.attributes.as_slice());
        let text_of = |key: &str, max: usize| {
            attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) if !s.is_empty() && s.len() <= max => {
                        Some(s.clone())
                    }
                    _ => None,
                })
        };
        let origin = Arc::new(Origin {
            app: text_of("service.name", MAX_APP),
            host: text_of("host.name", MAX_HOSTNAME),
            ingester: "otlp",
            ..Origin::default()
        });
        // The resource's and each scope's part of `_meta`, written once.
        let resource_size: usize = attributes.iter().map(Message::encoded_len).sum();
        let resource_dropped = resource_size > MAX_RENDERED;
        let resource_json = (!attributes.is_empty() && !resource_dropped)
            .then(|| json_text(&object_of(attributes)));
        for scope_logs in &resource_logs.scope_logs {
            let scope_json = scope_logs
                .scope
                .as_ref()
                .filter(|s| !s.name.is_empty() || !s.version.is_empty())
                .filter(|s| s.name.len() + s.version.len() <= MAX_RENDERED)
                .map(|s| {
                    let mut scope = Map::new();
                    if !s.name.is_empty() {
                        scope.insert("name".into(), s.name.clone().into());
                    }
                    if !s.version.is_empty() {
                        scope.insert("version".into(), s.version.clone().into());
                    }
                    json_text(&Value::Object(scope))
                });
            let shared = Shared {
                origin: &origin,
                resource_json: resource_json.as_deref(),
                resource_dropped,
                scope_json: scope_json.as_deref(),
            };
            let copied = resource_json.as_ref().map_or(0, String::len)
                + scope_json.as_ref().map_or(0, String::len);
            reserve(scope_logs.log_records.len() * (copied + LINE_COST))?;
            lines.extend(
                scope_logs
                    .log_records
                    .iter()
                    .map(|record| line_of(record, &shared, arrival)),
            );
        }
    }
    Ok(lines)
}

/// What a line takes besides its texts: the line, its own fields and their
/// allocations.
const LINE_COST: usize = 256;

/// What the records of one scope share.
struct Shared<'a> {
    origin: &'a Arc<Origin>,
    resource_json: Option<&'a str>,
    /// The resource's attributes were too large to render.
    resource_dropped: bool,
    scope_json: Option<&'a str>,
}

fn line_of(record: &LogRecord, shared: &Shared<'_>, arrival: &Arrival) -> Line {
    let believable = |nanos: u64| {
        let ms = (nanos / 1_000_000).min(i64::MAX as u64) as i64;
        (ms > 0 && ms <= arrival.received_ms.saturating_add(arrival.max_skew_ms)).then_some(ms)
    };
    let ts = believable(record.time_unix_nano)
        .or_else(|| believable(record.observed_time_unix_nano))
        .unwrap_or(arrival.received_ms);
    let (body, too_large) = match record.body.as_ref() {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        }) => (cut_to(s, MAX_LINE).to_owned(), s.len() > MAX_LINE),
        Some(b) if b.encoded_len() > MAX_RENDERED => (String::new(), true),
        Some(b) if b.value.is_some() => {
            let text = json_text(&value_of(b, 0));
            (cut_to(&text, MAX_LINE).to_owned(), text.len() > MAX_LINE)
        }
        _ => (String::new(), false),
    };
    let mut line = Line::new(ts, body, shared.origin.clone());
    line.truncated = too_large;
    let level = if record.severity_text.is_empty() {
        usize::try_from(record.severity_number.saturating_sub(1))
            .ok()
            .and_then(|n| LEVELS.get(n / 4))
            .map(|l| l.to_string())
    } else {
        Some(cut_to(&record.severity_text, MAX_LEVEL).to_owned())
    };
    let meta = meta_of(record, shared);
    if level.is_some() || meta.is_some() {
        let own = line.own_mut();
        own.level = level;
        own.meta_json = meta;
    }
    line
}

/// `_meta` as JSON text: the record's attributes, its resource's, its scope,
/// trace and span IDs, severity number and event name. Past the `_meta`
/// limit the resource, then the attributes are left out and named in
/// `dropped`.
fn meta_of(record: &LogRecord, shared: &Shared<'_>) -> Option<String> {
    let attributes_size: usize = record.attributes.iter().map(Message::encoded_len).sum();
    let attributes_dropped = attributes_size > MAX_RENDERED;
    let attributes = (!record.attributes.is_empty() && !attributes_dropped)
        .then(|| json_text(&object_of(&record.attributes)));
    let number = (record.severity_number != 0).then(|| record.severity_number.to_string());
    let quoted = |text: &str| json_text(&Value::String(text.to_owned()));
    let trace_id = (!record.trace_id.is_empty()).then(|| quoted(&hex::encode(&record.trace_id)));
    let span_id = (!record.span_id.is_empty()).then(|| quoted(&hex::encode(&record.span_id)));
    let event = (!record.event_name.is_empty()).then(|| quoted(&record.event_name));
    let mut parts: Vec<(&str, Option<&str>)> = vec![
        ("attributes", attributes.as_deref()),
        ("resource", shared.resource_json),
        ("scope", shared.scope_json),
        ("trace_id", trace_id.as_deref()),
        ("span_id", span_id.as_deref()),
        ("severity_number", number.as_deref()),
        ("event_name", event.as_deref()),
    ];
    let size = |parts: &[(&str, Option<&str>)]| -> usize {
        parts
            .iter()
            .filter_map(|(k, v)| v.map(|v| k.len() + v.len() + 4))
            .sum::<usize>()
            + 2
    };
    let mut dropped = Vec::new();
    if shared.resource_dropped {
        dropped.push("resource");
    }
    if attributes_dropped {
        dropped.push("attributes");
    }
    for key in ["resource", "attributes"] {
        if size(&parts) + 64 <= MAX_META {
            break;
        }
        if let Some(part) = parts.iter_mut().find(|(k, v)| *k == key && v.is_some()) {
            part.1 = None;
            dropped.push(key);
        }
    }
    if size(&parts) + 64 > MAX_META {
        // Even without them (a huge scope or event name): only the IDs.
        for part in parts.iter_mut() {
            if !matches!(part.0, "trace_id" | "span_id" | "severity_number") && part.1.is_some() {
                part.1 = None;
                dropped.push(part.0);
            }
        }
    }
    let dropped_json = (!dropped.is_empty()).then(|| json_text(&Value::from(dropped)));
    parts.push(("dropped", dropped_json.as_deref()));
    let mut text = String::from("{");
    for (key, value) in parts {
        let Some(value) = value else { continue };
        if text.len() > 1 {
            text.push(',');
        }
        text.push('"');
        text.push_str(key);
        text.push_str("\":");
        text.push_str(value);
    }
    text.push('}');
    (text.len() > 2).then_some(text)
}

/// Attributes as a JSON object, later keys of the same name winning.
fn object_of(attributes: &[KeyValue]) -> Value {
    Value::Object(
        attributes
            .iter()
            .map(|kv| {
                let value = kv.value.as_ref().map_or(Value::Null, |v| value_of(v, 0));
                (kv.key.clone(), value)
            })
            .collect(),
    )
}

/// An OTLP value as JSON: bytes as base64, maps as objects, nesting cut at
/// [`MAX_DEPTH`].
fn value_of(value: &AnyValue, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match &value.value {
        // An index into a profile's string table: logs have none to look in.
        None | Some(any_value::Value::StringValueStrindex(_)) => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        Some(any_value::Value::BytesValue(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| value_of(v, depth + 1)).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(
            kv.values
                .iter()
                .map(|kv| {
                    let value = kv
                        .value
                        .as_ref()
                        .map_or(Value::Null, |v| value_of(v, depth + 1));
                    (kv.key.clone(), value)
                })
                .collect(),
        ),
    }
}

/// JSON of strings, numbers, booleans, arrays and objects always serializes.
fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope};
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn text(s: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    }

    fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            ..Default::default()
        }
    }

    const NOW: EpochMs = 1_700_000_000_000;

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", text("checkout")),
                        kv("host.name", text("edge-4")),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "shop.cart".into(),
                        version: "2.1".into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn no_limit(_: usize) -> Result<(), ()> {
        Ok(())
    }

    fn arrival() -> Arrival {
        Arrival {
            received_ms: NOW,
            max_skew_ms: 60_000,
        }
    }

    #[test]
    fn a_record_fills_the_line_schema() {
        let record = LogRecord {
            time_unix_nano: (NOW as u64 - 5000) * 1_000_000,
            severity_number: 17,
            body: text("payment failed"),
            attributes: vec![
                kv(
                    "order",
                    Some(AnyValue {
                        value: Some(any_value::Value::IntValue(42)),
                    }),
                ),
                kv(
                    "tags",
                    Some(AnyValue {
                        value: Some(any_value::Value::ArrayValue(ArrayValue {
                            values: vec![text("a").unwrap(), text("b").unwrap()],
                        })),
                    }),
                ),
            ],
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            ..Default::default()
        };
        let lines = lines_of(&request(vec![record]), &arrival(), &mut no_limit).unwrap();
        let l = &lines[0];
        assert_eq!((&*l.line, l.ts), ("payment failed", NOW - 5000));
        assert_eq!(l.origin.app.as_deref(), Some("checkout"));
        assert_eq!(l.origin.host.as_deref(), Some("edge-4"));
        assert_eq!(l.origin.ingester, "otlp");
        let own = l.own.as_ref().unwrap();
        assert_eq!(own.level.as_deref(), Some("error"));
        let meta: Value = serde_json::from_str(own.meta_json.as_deref().unwrap()).unwrap();
        assert_eq!(
            meta,
            serde_json::json!({
                "attributes": {"order": 42, "tags": ["a", "b"]},
                "resource": {"service.name": "checkout", "host.name": "edge-4"},
                "scope": {"name": "shop.cart", "version": "2.1"},
                "trace_id": "ab".repeat(16),
                "span_id": "cd".repeat(8),
                "severity_number": 17,
            })
        );
    }

    #[test]
    fn times_text_and_bodies_that_are_not_strings() {
        let records = vec![
            // No time at all, a map body, the severity's own text.
            LogRecord {
                severity_text: "Warning".into(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::KvlistValue(
                        opentelemetry_proto::tonic::common::v1::KeyValueList {
                            values: vec![kv("k", text("v"))],
                        },
                    )),
                }),
                ..Default::default()
            },
            // A time an hour ahead is not believed; the observed time is.
            LogRecord {
                time_unix_nano: (NOW as u64 + 3_600_000) * 1_000_000,
                observed_time_unix_nano: (NOW as u64 - 1) * 1_000_000,
                body: text(&"x".repeat(MAX_LINE + 1)),
                ..Default::default()
            },
        ];
        let lines = lines_of(&request(records), &arrival(), &mut no_limit).unwrap();
        assert_eq!((&*lines[0].line, lines[0].ts), (r#"{"k":"v"}"#, NOW));
        assert_eq!(
            lines[0].own.as_ref().unwrap().level.as_deref(),
            Some("Warning")
        );
        assert_eq!(lines[1].ts, NOW - 1);
        assert!(lines[1].truncated && lines[1].line.len() == MAX_LINE);
    }

    #[test]
    fn what_each_record_copies_of_its_resource_is_reserved_first_and_may_be_refused() {
        let big = "r".repeat(10_000);
        let mut req = request(vec![LogRecord::default(); 1000]);
        if let Some(r) = req.resource_logs[0].resource.as_mut() {
            r.attributes.push(kv("big", text(&big)));
        }
        let mut asked = 0;
        let lines = lines_of(&req, &arrival(), &mut |n: usize| {
            asked += n;
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(lines.len(), 1000);
        assert!(asked >= 1000 * 10_000, "{asked}");
        // A refusal comes before any line is made.
        let refused = lines_of(&req, &arrival(), &mut |_: usize| Err("no room"));
        assert_eq!(refused.unwrap_err(), "no room");
    }

    #[test]
    fn a_huge_body_that_is_not_text_is_not_rendered() {
        let values = (0..20_000)
            .map(|i| text(&format!("v{i}")).unwrap())
            .collect();
        let record = LogRecord {
            body: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
            }),
            ..Default::default()
        };
        let lines = lines_of(&request(vec![record]), &arrival(), &mut no_limit).unwrap();
        assert!(lines[0].line.is_empty() && lines[0].truncated);
    }

    #[test]
    fn meta_past_its_limit_leaves_out_the_resource_first() {
        let big = "r".repeat(MAX_META);
        let mut req = request(vec![LogRecord {
            body: text("m"),
            attributes: vec![kv("a", text("1"))],
            ..Default::default()
        }]);
        if let Some(r) = req.resource_logs[0].resource.as_mut() {
            r.attributes.push(kv("big", text(&big)));
        }
        let lines = lines_of(&req, &arrival(), &mut no_limit).unwrap();
        let meta: Value =
            serde_json::from_str(lines[0].own.as_ref().unwrap().meta_json.as_deref().unwrap())
                .unwrap();
        assert_eq!(meta["dropped"], serde_json::json!(["resource"]));
        assert_eq!(meta["attributes"], serde_json::json!({"a": "1"}));
        assert!(
            lines[0]
                .own
                .as_ref()
                .unwrap()
                .meta_json
                .as_ref()
                .unwrap()
                .len()
                <= MAX_META
        );
    }
}
