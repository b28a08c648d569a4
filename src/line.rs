//! One log line, as the spool stores it and as the archive prints it.
//!
//! [`Line`] is what every source produces once a line is accepted; the spool
//! gives it its ID and receive time. [`ArchivedLine`] is the flat JSON object of
//! FORMAT.md §2, with its field names and its "when known" rules.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock::EpochMs;

/// A line accepted by a source, before the spool makes it durable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub ts: EpochMs,
    pub line: String,
    pub truncated: bool,
    pub host: Option<String>,
    pub app: Option<String>,
    pub file: Option<String>,
    pub level: Option<String>,
    pub env: Option<String>,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub tags: Vec<String>,
    /// The `label` object, as compact JSON text.
    pub label_json: Option<String>,
    /// The `meta` value, as compact JSON text.
    pub meta_json: Option<String>,
    pub ingester: String,
}

/// A line the spool has made durable: it now has its ID and receive time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredLine {
    pub id: String,
    pub received: EpochMs,
    pub line: Line,
}

/// A stored line read in place from a block's bytes, its text borrowed, not
/// copied: staging a backlog reads every line once, and copying each string out
/// cost as much as serializing it. The fields and their order mirror
/// [`StoredLine`] and [`Line`] exactly, as the spool's encoding is positional.
#[derive(Debug, Deserialize)]
pub struct StoredLineRef<'a> {
    #[serde(borrow)]
    id: &'a str,
    received: EpochMs,
    #[serde(borrow)]
    line: LineRef<'a>,
}

#[derive(Debug, Deserialize)]
struct LineRef<'a> {
    ts: EpochMs,
    #[serde(borrow)]
    line: &'a str,
    truncated: bool,
    #[serde(borrow)]
    host: Option<&'a str>,
    #[serde(borrow)]
    app: Option<&'a str>,
    #[serde(borrow)]
    file: Option<&'a str>,
    #[serde(borrow)]
    level: Option<&'a str>,
    #[serde(borrow)]
    env: Option<&'a str>,
    #[serde(borrow)]
    ip: Option<&'a str>,
    #[serde(borrow)]
    mac: Option<&'a str>,
    #[serde(borrow)]
    tags: Vec<&'a str>,
    #[serde(borrow)]
    label_json: Option<&'a str>,
    #[serde(borrow)]
    meta_json: Option<&'a str>,
    #[serde(borrow)]
    ingester: &'a str,
}

/// FORMAT.md §2, field for field and in that order.
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
    /// The line's fields, borrowed.
    pub fn view(&self) -> StoredLineRef<'_> {
        let l = &self.line;
        StoredLineRef {
            id: &self.id,
            received: self.received,
            line: LineRef {
                ts: l.ts,
                line: &l.line,
                truncated: l.truncated,
                host: l.host.as_deref(),
                app: l.app.as_deref(),
                file: l.file.as_deref(),
                level: l.level.as_deref(),
                env: l.env.as_deref(),
                ip: l.ip.as_deref(),
                mac: l.mac.as_deref(),
                tags: l.tags.iter().map(String::as_str).collect(),
                label_json: l.label_json.as_deref(),
                meta_json: l.meta_json.as_deref(),
                ingester: &l.ingester,
            },
        }
    }

    /// The line as one NDJSON record, newline included.
    pub fn write_ndjson(&self, account: &str, out: &mut Vec<u8>) {
        self.view().write_ndjson(account, out)
    }
}

impl StoredLineRef<'_> {
    pub fn archived<'b>(&'b self, account: &'b str) -> ArchivedLine<'b> {
        let l = &self.line;
        ArchivedLine {
            id: self.id,
            account,
            ts: l.ts,
            line: l.line,
            host: l.host,
            app: l.app,
            file: l.file,
            level: l.level,
            env: l.env,
            ip: l.ip,
            mac: l.mac,
            tags: &l.tags,
            label: raw(l.label_json),
            meta: raw(l.meta_json),
            ingester: l.ingester,
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
                host: Some("edge-17".into()),
                app: Some("nginx".into()),
                file: Some("/var/log/nginx/access.log".into()),
                level: Some("info".into()),
                env: None,
                ip: None,
                mac: None,
                tags: vec!["edge".into(), "eu-west".into()],
                label_json: None,
                meta_json: Some(r#"{"status":200}"#.into()),
                ingester: "http".into(),
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
            ingester: "http".into(),
            ..Line::default()
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
        l.line.meta_json = Some(r#""not an object""#.into());
        l.line.label_json = Some(r#"{"team":"core"}"#.into());
        let mut out = Vec::new();
        l.write_ndjson("a", &mut out);
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got["_meta"], json!("not an object"));
        assert_eq!(got["_label"], json!({"team":"core"}));
    }
}
