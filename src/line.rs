//! One log line, as the spool stores it and as the archive prints it.
//!
//! [`Line`] is what every source produces once a line is accepted; the spool
//! gives it its ID and receive time. [`ArchivedLine`] is the flat JSON object of
//! docs/FORMAT.md §2, with its field names and its "when known" rules.

use std::sync::Arc;

use bytestring::ByteString;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock::EpochMs;

/// What every line of one request, or of one read of a file, shares: held
/// once and pointed to by each line, so a request's fields cost as much for a
/// million lines as for one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    pub host: Option<String>,
    pub app: Option<String>,
    pub file: Option<String>,
    pub level: Option<String>,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub tags: Vec<String>,
    /// What received the lines: `http`, `tail`, ...
    pub ingester: &'static str,
}

/// Fields a line gives itself. Most lines have none, so they are boxed: a line
/// without them costs one pointer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnFields {
    /// Overrides the origin's host, app, file and level.
    pub host: Option<String>,
    pub app: Option<String>,
    pub file: Option<String>,
    pub level: Option<String>,
    pub env: Option<String>,
    /// The `label` object, as compact JSON text.
    pub label_json: Option<String>,
    /// The `meta` value, as compact JSON text.
    pub meta_json: Option<String>,
}

impl OwnFields {
    /// Every field that is set.
    pub fn texts(&self) -> impl Iterator<Item = &String> {
        [
            &self.host,
            &self.app,
            &self.file,
            &self.level,
            &self.env,
            &self.label_json,
            &self.meta_json,
        ]
        .into_iter()
        .flatten()
    }
}

/// A line accepted by a source, before the spool makes it durable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Line {
    pub ts: EpochMs,
    /// The text. An HTTP request's lines hold slices of its body, or of one
    /// buffer their escaped texts were unescaped into, not a string each.
    pub line: ByteString,
    pub truncated: bool,
    pub own: Option<Box<OwnFields>>,
    pub origin: Arc<Origin>,
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut_to(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What a stored line costs beyond its own fields' text: its ID, times,
/// flags, origin number and the framing of each field, rounded up.
const STORED_OVERHEAD: usize = 64;

impl Origin {
    /// Bytes the origin takes where it is stored (once per block).
    pub fn stored_size(&self) -> usize {
        let len = |s: &Option<String>| s.as_ref().map_or(0, String::len) + 1;
        len(&self.host)
            + len(&self.app)
            + len(&self.file)
            + len(&self.level)
            + len(&self.ip)
            + len(&self.mac)
            + self.tags.iter().map(|t| t.len() + 1).sum::<usize>()
            + self.ingester.len()
            + 2
    }
}

impl Line {
    pub fn new(ts: EpochMs, line: impl Into<ByteString>, origin: Arc<Origin>) -> Self {
        Self {
            ts,
            line: line.into(),
            truncated: false,
            own: None,
            origin,
        }
    }

    /// The line borrowed, with its origin borrowed by the caller (once for
    /// all the lines that share it).
    pub fn borrowed<'a>(&'a self, origin: &'a OriginRef<'a>) -> LineRef<'a> {
        LineRef {
            ts: self.ts,
            line: &self.line,
            truncated: self.truncated,
            own: OwnRef::of(self.own.as_deref()),
            origin,
        }
    }

    /// The line's own fields, made on first use.
    pub fn own_mut(&mut self) -> &mut OwnFields {
        self.own.get_or_insert_with(Box::default)
    }

    fn own_or_origin<'a>(
        &'a self,
        own: impl Fn(&'a OwnFields) -> &'a Option<String>,
        origin: &'a Option<String>,
    ) -> Option<&'a str> {
        self.own
            .as_deref()
            .and_then(|o| own(o).as_deref())
            .or(origin.as_deref())
    }

    pub fn host(&self) -> Option<&str> {
        self.own_or_origin(|o| &o.host, &self.origin.host)
    }

    pub fn app(&self) -> Option<&str> {
        self.own_or_origin(|o| &o.app, &self.origin.app)
    }

    pub fn file(&self) -> Option<&str> {
        self.own_or_origin(|o| &o.file, &self.origin.file)
    }

    pub fn level(&self) -> Option<&str> {
        self.own_or_origin(|o| &o.level, &self.origin.level)
    }

    pub fn meta_json(&self) -> Option<&str> {
        self.own.as_deref().and_then(|o| o.meta_json.as_deref())
    }

    /// Memory the line holds beyond its own slot: its text and its own
    /// fields, each with what an allocation costs besides its bytes.
    pub fn heap_size(&self) -> usize {
        const ALLOCATION: usize = 32;
        let own = self.own.as_deref().map_or(0, |o| {
            std::mem::size_of::<OwnFields>()
                + ALLOCATION
                + o.texts().map(|s| s.capacity() + ALLOCATION).sum::<usize>()
        });
        self.line.len() + ALLOCATION + own
    }

    /// Bytes the line takes in the spool besides its origin, near enough to
    /// admit it by.
    pub fn stored_size(&self) -> usize {
        self.line.len()
            + self
                .own
                .as_deref()
                .map_or(0, |o| o.texts().map(String::len).sum())
            + STORED_OVERHEAD
    }
}

/// A line the spool has made durable: it now has its ID and receive time.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredLine {
    pub id: String,
    pub received: EpochMs,
    pub line: Line,
}

/// An [`Origin`] borrowed: as a block stores it (once, for the lines that
/// point at it), and as readers see it.
#[derive(Debug, Serialize, Deserialize)]
pub struct OriginRef<'a> {
    #[serde(borrow)]
    pub host: Option<&'a str>,
    #[serde(borrow)]
    pub app: Option<&'a str>,
    #[serde(borrow)]
    pub file: Option<&'a str>,
    #[serde(borrow)]
    pub level: Option<&'a str>,
    #[serde(borrow)]
    pub ip: Option<&'a str>,
    #[serde(borrow)]
    pub mac: Option<&'a str>,
    #[serde(borrow)]
    pub tags: Vec<&'a str>,
    #[serde(borrow)]
    pub ingester: &'a str,
}

impl<'a> OriginRef<'a> {
    pub fn of(origin: &'a Origin) -> Self {
        Self {
            host: origin.host.as_deref(),
            app: origin.app.as_deref(),
            file: origin.file.as_deref(),
            level: origin.level.as_deref(),
            ip: origin.ip.as_deref(),
            mac: origin.mac.as_deref(),
            tags: origin.tags.iter().map(String::as_str).collect(),
            ingester: origin.ingester,
        }
    }
}

/// A line's [`OwnFields`] borrowed, as a block stores them with the line.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct OwnRef<'a> {
    #[serde(borrow)]
    pub host: Option<&'a str>,
    #[serde(borrow)]
    pub app: Option<&'a str>,
    #[serde(borrow)]
    pub file: Option<&'a str>,
    #[serde(borrow)]
    pub level: Option<&'a str>,
    #[serde(borrow)]
    pub env: Option<&'a str>,
    #[serde(borrow)]
    pub label_json: Option<&'a str>,
    #[serde(borrow)]
    pub meta_json: Option<&'a str>,
}

impl<'a> OwnRef<'a> {
    pub fn of(own: Option<&'a OwnFields>) -> Self {
        let Some(own) = own else {
            return Self::default();
        };
        Self {
            host: own.host.as_deref(),
            app: own.app.as_deref(),
            file: own.file.as_deref(),
            level: own.level.as_deref(),
            env: own.env.as_deref(),
            label_json: own.label_json.as_deref(),
            meta_json: own.meta_json.as_deref(),
        }
    }
}

/// A stored line read in place (from a block's bytes, or from a [`StoredLine`]),
/// borrowed, not copied.
#[derive(Debug)]
pub struct StoredLineRef<'a> {
    pub id: &'a str,
    pub received: EpochMs,
    pub line: LineRef<'a>,
}

/// A [`Line`] borrowed: its own fields, and the origin it shares with others.
#[derive(Debug)]
pub struct LineRef<'a> {
    pub ts: EpochMs,
    pub line: &'a str,
    pub truncated: bool,
    pub own: OwnRef<'a>,
    pub origin: &'a OriginRef<'a>,
}

/// docs/FORMAT.md §2, field for field and in that order.
#[derive(Serialize)]
pub struct ArchivedLine<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    #[serde(rename = "_account")]
    account: &'a str,
    #[serde(rename = "_ts")]
    ts: EpochMs,
    #[serde(rename = "_line")]
    line: &'a str,
    #[serde(rename = "_host", skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    #[serde(rename = "_app", skip_serializing_if = "Option::is_none")]
    app: Option<&'a str>,
    #[serde(rename = "_file", skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<&'a str>,
    #[serde(rename = "_env", skip_serializing_if = "Option::is_none")]
    env: Option<&'a str>,
    #[serde(rename = "_ip", skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(rename = "_mac", skip_serializing_if = "Option::is_none")]
    mac: Option<&'a str>,
    #[serde(rename = "_tag", skip_serializing_if = "<[&str]>::is_empty")]
    tags: &'a [&'a str],
    #[serde(rename = "_label", skip_serializing_if = "Option::is_none")]
    label: Option<&'a RawValue>,
    #[serde(rename = "_meta", skip_serializing_if = "Option::is_none")]
    meta: Option<&'a RawValue>,
    #[serde(rename = "_ingester")]
    ingester: &'a str,
    #[serde(rename = "_received")]
    received: EpochMs,
    #[serde(rename = "_truncated", skip_serializing_if = "is_false")]
    truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Stored JSON text that no longer parses (it was checked at ingest) is left out
/// rather than written as invalid JSON.
fn raw(json: Option<&str>) -> Option<&RawValue> {
    json.and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
}

impl StoredLine {
    /// The line as one NDJSON record, newline included.
    pub fn write_ndjson(&self, account: &str, out: &mut Vec<u8>) {
        let origin = OriginRef::of(&self.line.origin);
        StoredLineRef {
            id: &self.id,
            received: self.received,
            line: self.line.borrowed(&origin),
        }
        .write_ndjson(account, out)
    }
}

impl StoredLineRef<'_> {
    pub fn archived<'b>(&'b self, account: &'b str) -> ArchivedLine<'b> {
        let (l, own, origin) = (&self.line, &self.line.own, self.line.origin);
        ArchivedLine {
            id: self.id,
            account,
            ts: l.ts,
            line: l.line,
            host: own.host.or(origin.host),
            app: own.app.or(origin.app),
            file: own.file.or(origin.file),
            level: own.level.or(origin.level),
            env: own.env,
            ip: origin.ip,
            mac: origin.mac,
            tags: &origin.tags,
            label: raw(own.label_json),
            meta: raw(own.meta_json),
            ingester: origin.ingester,
            received: self.received,
            truncated: l.truncated,
        }
    }

    /// The line as one NDJSON record, newline included.
    pub fn write_ndjson(&self, account: &str, out: &mut Vec<u8>) {
        // Serializing plain strings, integers and checked raw JSON cannot fail.
        if serde_json::to_writer(&mut *out, &self.archived(account)).is_ok() {
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn full() -> StoredLine {
        StoredLine {
            id: "01JDX6Q3ZK8V7S3M2N4P5R6T7W".into(),
            received: 1764140245201,
            line: Line {
                ts: 1764140245123,
                line: "GET /health 200 3ms".into(),
                truncated: false,
                own: Some(Box::new(OwnFields {
                    app: Some("nginx".into()),
                    file: Some("/var/log/nginx/access.log".into()),
                    level: Some("info".into()),
                    meta_json: Some(r#"{"status":200}"#.into()),
                    ..OwnFields::default()
                })),
                origin: Arc::new(Origin {
                    host: Some("edge-17".into()),
                    tags: vec!["edge".into(), "eu-west".into()],
                    ingester: "http",
                    ..Origin::default()
                }),
            },
        }
    }

    #[test]
    fn matches_the_format_example_field_for_field() {
        let mut out = Vec::new();
        full().write_ndjson("acme", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let expected = json!({"_id":"01JDX6Q3ZK8V7S3M2N4P5R6T7W","_account":"acme","_ts":1764140245123i64,
            "_line":"GET /health 200 3ms","_host":"edge-17","_app":"nginx",
            "_file":"/var/log/nginx/access.log","level":"info","_tag":["edge","eu-west"],
            "_meta":{"status":200},"_ingester":"http","_received":1764140245201i64});
        let got: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got, expected);
        // Field order follows the table, so the output reads like the example.
        let expected_order = [
            "_id",
            "_account",
            "_ts",
            "_line",
            "_host",
            "_app",
            "_file",
            "level",
            "_tag",
            "_meta",
            "_ingester",
            "_received",
        ];
        let mut last = 0;
        for field in expected_order {
            let at = text.find(&format!("\"{field}\"")).unwrap();
            assert!(at >= last, "{field} out of order in {text}");
            last = at;
        }
    }

    #[test]
    fn unknown_fields_are_left_out_and_truncation_is_marked() {
        let mut l = full();
        l.line = Line {
            ts: 5,
            line: "x".into(),
            truncated: true,
            own: None,
            origin: Arc::new(Origin {
                ingester: "http",
                ..Origin::default()
            }),
        };
        let mut out = Vec::new();
        l.write_ndjson("a", &mut out);
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            got,
            json!({"_id": l.id, "_account":"a","_ts":5,"_line":"x","_ingester":"http",
                   "_received":1764140245201i64,"_truncated":true})
        );
    }

    #[test]
    fn string_meta_and_labels_stay_json() {
        let mut l = full();
        l.line.own_mut().meta_json = Some(r#""not an object""#.into());
        l.line.own_mut().label_json = Some(r#"{"team":"core"}"#.into());
        let mut out = Vec::new();
        l.write_ndjson("a", &mut out);
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got["_meta"], json!("not an object"));
        assert_eq!(got["_label"], json!({"team":"core"}));
    }
}
