//! One syslog message as an archived line (docs/FORMAT.md §2).
//!
//! RFC 5424 and RFC 3164 messages are parsed by `syslog_loose` (the parser
//! Vector uses, lenient about what real senders emit): the message text
//! becomes `_line`, the hostname `_host`, the app-name (or 3164 tag) `_app`,
//! the severity `level`, and the facility, process ID, message ID and
//! structured data go into `_meta`. A message that does not parse is kept
//! whole as `_line`, never dropped. The time is the message's own when it has
//! one within the accepted clock skew, else the time it was received; an RFC
//! 3164 time has no year or zone, and is read as UTC in the year that puts it
//! nearest the time received.

use std::sync::Arc;

use chrono::{Datelike, TimeZone, Utc};
use serde_json::{json, Map, Value};
use syslog_loose::{IncompleteDate, Message, ProcId, Protocol, Variant};

use crate::clock::EpochMs;
use crate::ingest::body::{MAX_APP, MAX_HOSTNAME, MAX_LINE, MAX_META};
use crate::line::{cut_to, Line, Origin};

use super::frame::Frame;

/// The archived line for a message framed as `frame`, received at
/// `received_ms` from a sender `origin` describes; times more than
/// `max_skew_ms` ahead of `received_ms` are not believed.
pub fn line_of(frame: &Frame, received_ms: EpochMs, max_skew_ms: i64, origin: Arc<Origin>) -> Line {
    let raw = String::from_utf8_lossy(&frame.bytes);
    let text = raw.trim_end_matches(['\r', '\n', '\0']);
    let year_of = |date: IncompleteDate| year_nearest(date, received_ms);
    let message =
        syslog_loose::parse_message_with_year_tz(text, year_of, Some(Utc), Variant::Either);
    let parsed = message.facility.is_some() || message.timestamp.is_some();
    let ts = message
        .timestamp
        .map(|t| t.timestamp_millis())
        .filter(|&t| parsed && t <= received_ms.saturating_add(max_skew_ms) && t > 0)
        .unwrap_or(received_ms);
    let body = if parsed { message.msg } else { text };
    let mut line = Line::new(ts, cut_to(body, MAX_LINE).to_owned(), origin);
    line.truncated = frame.cut || body.len() > MAX_LINE;
    let mut meta = Map::new();
    if parsed {
        let own = line.own_mut();
        own.host = message
            .hostname
            .filter(|h| h.len() <= MAX_HOSTNAME)
            .map(str::to_owned);
        own.app = message
            .appname
            .filter(|a| a.len() <= MAX_APP)
            .map(str::to_owned);
        own.level = message.severity.map(|s| s.as_str().to_owned());
        meta = meta_of(&message);
    }
    if frame.partial {
        meta.insert("partial_message".into(), Value::Bool(true));
    }
    if !meta.is_empty() {
        // A map of strings, numbers and booleans always serializes.
        let json = |meta: &Map<String, Value>| serde_json::to_string(meta).unwrap_or_default();
        let mut text = json(&meta);
        if text.len() > MAX_META {
            // Structured data past the limit goes; the rest fits.
            meta.remove("structured_data");
            meta.insert("structured_data_dropped".into(), Value::Bool(true));
            text = json(&meta);
        }
        line.own_mut().meta_json = Some(text);
    }
    line
}

/// `_meta` of a parsed message: what has no field of its own in the line.
fn meta_of(message: &Message<&str>) -> Map<String, Value> {
    let mut meta = Map::new();
    if let Some(facility) = message.facility {
        meta.insert("facility".into(), json!(facility.as_str()));
    }
    match &message.procid {
        Some(ProcId::PID(pid)) => {
            meta.insert("procid".into(), json!(pid));
        }
        Some(ProcId::Name(name)) => {
            meta.insert("procid".into(), json!(name));
        }
        None => {}
    }
    if let Some(msgid) = message.msgid {
        meta.insert("msgid".into(), json!(msgid));
    }
    meta.insert(
        "protocol".into(),
        json!(match message.protocol {
            Protocol::RFC3164 => "rfc3164",
            Protocol::RFC5424(_) => "rfc5424",
        }),
    );
    if !message.structured_data.is_empty() {
        let mut elements = Map::new();
        for element in &message.structured_data {
            let params: Map<String, Value> = element
                .params()
                .map(|(name, value)| ((*name).to_owned(), Value::String(value)))
                .collect();
            elements.insert(element.id.to_owned(), Value::Object(params));
        }
        meta.insert("structured_data".into(), Value::Object(elements));
    }
    meta
}

/// The year that puts an RFC 3164 date (month, day, time; no year) nearest
/// `received_ms`: a December message received in January is last year's.
fn year_nearest(date: IncompleteDate, received_ms: EpochMs) -> i32 {
    let received = Utc
        .timestamp_millis_opt(received_ms)
        .single()
        .unwrap_or_default();
    let (month, day, hour, minute, second) = date;
    let distance = |year: i32| {
        Utc.with_ymd_and_hms(year, month, day, hour, minute, second)
            .single()
            .map_or(i64::MAX, |t| (t.timestamp_millis() - received_ms).abs())
    };
    let this = received.year();
    (this - 1..=this + 1)
        .min_by_key(|&y| distance(y))
        .unwrap_or(this)
}

/// `text` cut to at most `max` bytes, at a character boundary.
#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// 2026-12-04T12:00:00Z.
    const NOW: EpochMs = 1_796_385_600_000;

    fn line(text: &str) -> Line {
        let frame = Frame {
            bytes: BytesMut::from(text.as_bytes()),
            cut: false,
            partial: false,
        };
        line_of(&frame, NOW, 300_000, Arc::new(Origin::default()))
    }

    fn meta(l: &Line) -> Value {
        serde_json::from_str(l.own.as_ref().unwrap().meta_json.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn an_rfc5424_message_fills_every_field() {
        let l = line(
            r#"<165>1 2026-12-04T11:59:58.003Z shop-17 billing 4242 ID47 [exampleSDID@32473 iut="3" eventSource="App\"lication"][meta seq="9"] card declined"#,
        );
        assert_eq!(&*l.line, "card declined");
        assert_eq!(l.ts, NOW - 1_997);
        let own = l.own.as_ref().unwrap();
        assert_eq!(own.host.as_deref(), Some("shop-17"));
        assert_eq!(own.app.as_deref(), Some("billing"));
        assert_eq!(own.level.as_deref(), Some("notice"));
        assert_eq!(
            meta(&l),
            json!({
                "facility": "local4", "procid": 4242, "msgid": "ID47", "protocol": "rfc5424",
                "structured_data": {
                    "exampleSDID@32473": {"iut": "3", "eventSource": "App\"lication"},
                    "meta": {"seq": "9"}
                }
            })
        );
    }

    #[test]
    fn an_rfc3164_message_takes_the_year_nearest_its_arrival() {
        let l = line("<34>Dec  4 11:58:00 gateway sshd[811]: Failed password for root");
        assert_eq!(&*l.line, "Failed password for root");
        assert_eq!(l.ts, NOW - 120_000);
        let own = l.own.as_ref().unwrap();
        assert_eq!(own.host.as_deref(), Some("gateway"));
        assert_eq!(own.app.as_deref(), Some("sshd"));
        assert_eq!(own.level.as_deref(), Some("crit"));
        assert_eq!(meta(&l)["procid"], json!(811));
        assert_eq!(meta(&l)["facility"], json!("auth"));
        // Received on 1 January, a message of 31 December is last year's.
        let new_year = 1_798_761_600_000; // 2027-01-01T00:00:00Z
        assert_eq!(
            year_nearest((12, 31, 23, 59, 0), new_year),
            2026,
            "the nearest year"
        );
    }

    #[test]
    fn what_does_not_parse_is_kept_whole_and_times_ahead_are_not_believed() {
        let l = line("just some text, no priority\r\n");
        assert_eq!(&*l.line, "just some text, no priority");
        assert_eq!(l.ts, NOW);
        assert!(l.own.is_none());
        let ahead = line("<13>1 2027-06-01T00:00:00Z h a - - - from the future");
        assert_eq!(ahead.ts, NOW);
        assert_eq!(&*ahead.line, "from the future");
    }

    #[test]
    fn long_and_partial_messages_are_kept_marked() {
        let long = format!("<13>1 - h a - - - {}", "é".repeat(MAX_LINE));
        let l = line(&long);
        assert!(l.truncated);
        assert!(l.line.len() <= MAX_LINE && l.line.len() >= MAX_LINE - 1);
        let frame = Frame {
            bytes: BytesMut::from(&b"<13>1 - h a - - - cut off"[..]),
            cut: true,
            partial: true,
        };
        let l = line_of(&frame, NOW, 0, Arc::new(Origin::default()));
        assert!(l.truncated);
        assert_eq!(meta(&l)["partial_message"], json!(true));
        // Structured data past the _meta limit goes, and says so.
        let big = format!("<13>1 - h a - - [x v=\"{}\"] text", "v".repeat(MAX_META));
        let l = line(&big);
        assert_eq!(&*l.line, "text");
        let m = meta(&l);
        assert_eq!(m["structured_data_dropped"], json!(true));
        assert!(m.get("structured_data").is_none() && m["facility"] == json!("user"));
    }
}
