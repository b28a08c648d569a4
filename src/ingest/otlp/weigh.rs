//! How much memory decoding an OTLP logs body will take, found before it is
//! decoded: every message a decoder would make costs its struct, however few
//! bytes it took on the wire, so a body of empty records cannot take a
//! hundred times its size.

use std::mem::size_of;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::encoding::{decode_key, decode_varint, WireType};

/// Messages nested deeper than this are refused (prost's own limit is 100).
const MAX_NESTING: usize = 64;

/// The messages of `ExportLogsServiceRequest` that hold other messages.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Request,
    ResourceLogs,
    Resource,
    ScopeLogs,
    Scope,
    Record,
    KeyValue,
    AnyValue,
    Array,
    KvList,
    /// Fields of a newer schema, or messages of no interest: read as bytes.
    Opaque,
}

impl Kind {
    /// What field `field` of this message holds, if it is a message.
    fn child(self, field: u32) -> Option<Kind> {
        use Kind::*;
        Some(match (self, field) {
            (Request, 1) => ResourceLogs,
            (ResourceLogs, 1) => Resource,
            (ResourceLogs, 2) => ScopeLogs,
            (Resource, 1) => KeyValue,
            (Resource, _) => Opaque,
            (ScopeLogs, 1) => Scope,
            (ScopeLogs, 2) => Record,
            (Scope, 3) => KeyValue,
            (Record, 5) => AnyValue,
            (Record, 6) => KeyValue,
            (KeyValue, 2) => AnyValue,
            (AnyValue, 5) => Array,
            (AnyValue, 6) => KvList,
            (Array, 1) => AnyValue,
            (KvList, 1) => KeyValue,
            _ => return None,
        })
    }

    /// What one such message takes once decoded, before its strings and lists.
    fn size(self) -> usize {
        match self {
            Kind::Request => size_of::<ExportLogsServiceRequest>(),
            Kind::ResourceLogs => size_of::<ResourceLogs>(),
            Kind::Resource => size_of::<Resource>(),
            Kind::ScopeLogs => size_of::<ScopeLogs>(),
            Kind::Scope => size_of::<InstrumentationScope>(),
            Kind::Record => size_of::<LogRecord>(),
            Kind::KeyValue => size_of::<KeyValue>(),
            Kind::AnyValue => size_of::<AnyValue>(),
            Kind::Array => size_of::<ArrayValue>(),
            Kind::KvList => size_of::<KeyValueList>(),
            Kind::Opaque => 0,
        }
    }
}

/// Bytes decoding `body` as protobuf will allocate, at most; an error when
/// it is not protobuf at all.
pub fn protobuf(body: &[u8]) -> Result<usize, String> {
    weigh(body, Kind::Request, 0).map(|w| w + Kind::Request.size())
}

fn weigh(mut buf: &[u8], kind: Kind, depth: usize) -> Result<usize, String> {
    if depth > MAX_NESTING {
        return Err(format!("messages nested over {MAX_NESTING} deep"));
    }
    let mut weight = 0usize;
    while !buf.is_empty() {
        let (field, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|e| e.to_string())?;
            }
            WireType::SixtyFourBit => buf = skip(buf, 8)?,
            WireType::ThirtyTwoBit => buf = skip(buf, 4)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
                let len = usize::try_from(len).map_err(|_| "a length past memory".to_owned())?;
                let inner = buf.get(..len).ok_or("a field runs past the body's end")?;
                buf = &buf[len..];
                weight += match kind.child(field) {
                    // A message of a newer schema: each two bytes of it may
                    // decode into a string or a message of its own.
                    Some(Kind::Opaque) => len.saturating_mul(48).saturating_add(96),
                    None => len,
                    Some(child) => child.size() + weigh(inner, child, depth + 1)?,
                };
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err("groups are not part of OTLP".into())
            }
        }
    }
    Ok(weight)
}

fn skip(buf: &[u8], n: usize) -> Result<&[u8], String> {
    buf.get(n..)
        .ok_or_else(|| "a field runs past the body's end".into())
}

/// What one JSON value may take while it is read: serde buffers the
/// members of an `AnyValue` (a flattened enum) as untyped values.
const VALUE_COST: usize = 80;

/// Bytes decoding `body` as OTLP JSON will allocate, at most: its text, for
/// every object and list the largest struct it could become (JSON gives no
/// cheaper way to tell a record from an attribute before reading it), and
/// for every member and element an untyped value.
pub fn json(body: &[u8]) -> usize {
    let objects = body.iter().filter(|&&b| b == b'{' || b == b'[').count();
    let members = body.iter().filter(|&&b| b == b',' || b == b':').count();
    let largest = [
        Kind::ResourceLogs,
        Kind::Resource,
        Kind::ScopeLogs,
        Kind::Scope,
        Kind::Record,
        Kind::KeyValue,
        Kind::AnyValue,
    ]
    .iter()
    .map(|k| k.size())
    .max()
    .unwrap_or(0);
    body.len() + objects * largest + members * VALUE_COST
}

/// Whether the body names a list kind whose empty form the typed reader
/// refuses (see [`fill_empty_lists`]).
pub fn may_hold_empty_lists(body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    has(b"\"arrayValue\"") || has(b"\"kvlistValue\"")
}

/// Gives `{"arrayValue":{}}` and `{"kvlistValue":{}}` (an empty list, as
/// senders write it) their empty `values`; returns whether it changed any.
pub fn fill_empty_lists(value: &mut serde_json::Value) -> bool {
    let mut changed = false;
    let mut pending = vec![value];
    while let Some(v) = pending.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for key in ["arrayValue", "kvlistValue"] {
                    if let Some(serde_json::Value::Object(list)) = map.get_mut(key) {
                        if !list.contains_key("values") {
                            list.insert("values".into(), serde_json::Value::Array(Vec::new()));
                            changed = true;
                        }
                    }
                }
                pending.extend(map.values_mut());
            }
            serde_json::Value::Array(items) => pending.extend(items.iter_mut()),
            _ => {}
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message;

    fn request(records: usize, attributes: usize) -> ExportLogsServiceRequest {
        let record = LogRecord {
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue("hello".into())),
            }),
            attributes: (0..attributes)
                .map(|i| KeyValue {
                    key: format!("k{i}"),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(i as i64)),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![record; records],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn empty_records_weigh_what_they_decode_to_not_what_they_took_on_the_wire() {
        let wire = request(10_000, 0).encode_to_vec();
        let weight = protobuf(&wire).unwrap();
        assert!(
            weight >= 10_000 * size_of::<LogRecord>(),
            "{weight} for {} bytes",
            wire.len()
        );
        // And no less than what attributes take once decoded.
        let wire = request(100, 50).encode_to_vec();
        let weight = protobuf(&wire).unwrap();
        assert!(weight >= 100 * 50 * (size_of::<KeyValue>() + size_of::<AnyValue>()));
    }

    #[test]
    fn what_is_not_protobuf_is_an_error() {
        assert!(protobuf(b"{\"resourceLogs\":[]}").is_err());
        let mut wire = request(1, 1).encode_to_vec();
        wire.truncate(wire.len() - 3);
        assert!(protobuf(&wire).is_err());
        assert_eq!(
            protobuf(&[]).unwrap(),
            size_of::<ExportLogsServiceRequest>()
        );
    }

    #[test]
    fn json_weighs_every_member_not_only_objects() {
        // A body of bare numbers: no object to count, every one a value.
        let body = format!("{{\"resourceLogs\":0,\"x\":[{}0]}}", "0,".repeat(100_000));
        assert!(json(body.as_bytes()) >= 100_000 * VALUE_COST);
        assert!(!may_hold_empty_lists(body.as_bytes()));
    }

    #[test]
    fn an_unknown_message_in_a_resource_weighs_what_it_could_decode_to() {
        // Resource field 3 (entity references, newer than this reader): ten
        // empty messages, two bytes each on the wire.
        let mut resource = Vec::new();
        for _ in 0..10 {
            resource.extend_from_slice(&[0x1a, 0x00]);
        }
        let mut resource_logs = vec![0x0a, resource.len() as u8];
        resource_logs.extend_from_slice(&resource);
        let mut request = vec![0x0a, resource_logs.len() as u8];
        request.extend_from_slice(&resource_logs);
        assert!(protobuf(&request).unwrap() >= 10 * 96);
    }

    #[test]
    fn empty_lists_are_filled_so_the_typed_reader_takes_them() {
        let text = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"x"},"attributes":[{"key":"empty","value":{"arrayValue":{}}}]}]}]}]}"#;
        let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(fill_empty_lists(&mut value));
        let request: ExportLogsServiceRequest = serde_json::from_value(value).unwrap();
        assert_eq!(request.resource_logs[0].scope_logs[0].log_records.len(), 1);
        assert!(json(text.as_bytes()) > text.len());
    }
}
