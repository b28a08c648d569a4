//! One journal entry, as `journalctl --output=json` prints it, as an archived
//! line (docs/FORMAT.md §2b).
//!
//! `MESSAGE` becomes `_line`, `PRIORITY` the level's name, `_HOSTNAME` the
//! host, `SYSLOG_IDENTIFIER` (else `_SYSTEMD_UNIT`, else `_COMM`) the app, and
//! the source's chosen fields go into `_meta`. journalctl prints a value that
//! is not printable UTF-8 (a colour code, say) as an array of bytes and a
//! field given more than once as an array of values: both are read back as
//! text, invalid UTF-8 replaced. The line's ID comes from the entry's cursor,
//! so an entry read again after a crash gets the same one.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::config::{JournalSource, MetaFields};
use crate::clock::EpochMs;
use crate::ingest::body::{MAX_APP, MAX_HOSTNAME, MAX_LINE, MAX_META};
use crate::line::{cut_to, Line, Origin};

/// The level names of syslog priorities 0 to 7, as syslog lines carry them.
const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];
/// Fields that have a place of their own in the line: never repeated in `_meta`.
const MAPPED: &[&str] = &["MESSAGE", "PRIORITY", "_HOSTNAME"];

/// An entry read, ready to commit.
#[derive(Debug)]
pub struct Entry {
    /// Where the journal is once this entry is stored.
    pub cursor: String,
    pub id: String,
    pub line: Line,
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("journalctl printed a line that is not a JSON object ({0})")]
    NotJson(String),
    #[error("journalctl printed an entry without __CURSOR")]
    NoCursor,
}

/// Turns one source's entries into lines.
pub struct Mapper {
    source: Arc<JournalSource>,
    /// Mixed into IDs, as for file lines, so two hosts' entries never share one.
    instance: String,
    origin: Arc<Origin>,
}

impl Mapper {
    pub fn new(source: Arc<JournalSource>, instance: String) -> Self {
        Self {
            source,
            instance,
            origin: Arc::new(Origin {
                ingester: "journald",
                ..Origin::default()
            }),
        }
    }

    /// The fields journalctl needs to print: those mapped and the chosen ones
    /// (journalctl always adds the cursor, the times and `_BOOT_ID`); `None`
    /// when every field is taken.
    pub fn output_fields(&self) -> Option<Vec<String>> {
        let MetaFields::Named(chosen) = &self.source.fields else {
            return None;
        };
        let mut fields: Vec<String> = [
            "MESSAGE",
            "PRIORITY",
            "_HOSTNAME",
            "SYSLOG_IDENTIFIER",
            "_SYSTEMD_UNIT",
            "_COMM",
            "_SOURCE_REALTIME_TIMESTAMP",
        ]
        .iter()
        .map(|f| f.to_string())
        .chain(chosen.iter().cloned())
        .collect();
        fields.sort();
        fields.dedup();
        Some(fields)
    }

    /// The line of one JSON entry, received at `received_ms`.
    pub fn entry(&self, json: &[u8], received_ms: EpochMs) -> Result<Entry, EntryError> {
        let fields: Map<String, Value> =
            serde_json::from_slice(json).map_err(|e| EntryError::NotJson(e.to_string()))?;
        let cursor = fields
            .get("__CURSOR")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or(EntryError::NoCursor)?
            .to_owned();
        let believable = |ms: EpochMs| {
            (ms > 0 && ms <= received_ms.saturating_add(self.source.max_skew_ms)).then_some(ms)
        };
        let millis = |field: &str| {
            fields
                .get(field)
                .and_then(Value::as_str)
                .and_then(|us| us.parse::<i64>().ok())
                .map(|us| us / 1000)
        };
        let realtime = millis("__REALTIME_TIMESTAMP");
        let ts = millis("_SOURCE_REALTIME_TIMESTAMP")
            .and_then(believable)
            .or_else(|| realtime.and_then(believable))
            .unwrap_or(received_ms);

        let message = fields.get("MESSAGE").map(joined).unwrap_or_default();
        let mut line = Line::new(
            ts,
            cut_to(&message, MAX_LINE).to_owned(),
            self.origin.clone(),
        );
        line.truncated = message.len() > MAX_LINE;
        let first = |name: &str| fields.get(name).and_then(|v| texts(v).into_iter().next());
        let own = line.own_mut();
        own.host = first("_HOSTNAME")
            .filter(|h| !h.is_empty() && h.len() <= MAX_HOSTNAME)
            .map(Cow::into_owned);
        own.app = ["SYSLOG_IDENTIFIER", "_SYSTEMD_UNIT", "_COMM"]
            .into_iter()
            .find_map(|name| first(name).filter(|a| !a.is_empty() && a.len() <= MAX_APP))
            .map(Cow::into_owned);
        own.level = first("PRIORITY")
            .and_then(|p| p.parse::<usize>().ok())
            .and_then(|p| LEVELS.get(p))
            .map(|l| l.to_string());
        own.meta_json = self.meta(&fields);
        Ok(Entry {
            // The entry's own time, never the time it was read: the same ID every read.
            id: self.line_id(&cursor, realtime.unwrap_or(0)),
            cursor,
            line,
        })
    }

    /// A line for an entry longer than larch reads of one (`start` is what
    /// was kept of it): journalctl prints the cursor and times first, so
    /// the place in the journal is known and the entry is archived, empty
    /// and marked, rather than skipped without a trace.
    pub fn oversized(
        &self,
        start: &[u8],
        entry_bytes: usize,
        received_ms: EpochMs,
    ) -> Result<Entry, EntryError> {
        let cursor = leading_text(start, "__CURSOR")
            .filter(|c| !c.is_empty())
            .ok_or(EntryError::NoCursor)?
            .to_owned();
        let realtime = leading_text(start, "__REALTIME_TIMESTAMP")
            .and_then(|us| us.parse::<i64>().ok())
            .map(|us| us / 1000);
        let ts = realtime
            .filter(|&ms| ms > 0 && ms <= received_ms.saturating_add(self.source.max_skew_ms))
            .unwrap_or(received_ms);
        let mut line = Line::new(ts, String::new(), self.origin.clone());
        line.truncated = true;
        line.own_mut().meta_json = Some(format!(
            r#"{{"entry_too_large":true,"entry_bytes":{entry_bytes}}}"#
        ));
        Ok(Entry {
            // The entry's own time, as `entry` takes it: the same ID every read.
            id: self.line_id(&cursor, realtime.unwrap_or(0)),
            cursor,
            line,
        })
    }

    /// `_meta`: the chosen fields present in the entry, as text (or a list of
    /// texts for a field given more than once). Fields that would take it
    /// past its limit are left out and named in `fields_dropped`.
    fn meta(&self, fields: &Map<String, Value>) -> Option<String> {
        let chosen: Box<dyn Iterator<Item = (&String, &Value)>> = match &self.source.fields {
            MetaFields::All => Box::new(
                fields
                    .iter()
                    .filter(|(k, _)| !k.starts_with("__") && !MAPPED.contains(&k.as_str())),
            ),
            MetaFields::Named(names) => Box::new(
                names
                    .iter()
                    .filter_map(|n| fields.get_key_value(n.as_str())),
            ),
        };
        // Each value is written once, straight into the text, its cost
        // measured as written (escaping can grow a text).
        let mut meta = String::from("{");
        let mut dropped = Vec::new();
        // Room for `fields_dropped` itself.
        let room = MAX_META - 1024;
        for (name, value) in chosen {
            let mut values: Vec<Value> = texts(value)
                .into_iter()
                .map(|t| Value::String(t.into_owned()))
                .collect();
            let value = match values.len() {
                0 => continue,
                1 => values.remove(0),
                _ => Value::Array(values),
            };
            let member = format!(
                "{}:{}",
                json_text(&Value::String(name.clone())),
                json_text(&value)
            );
            if meta.len() + member.len() + 1 > room {
                if dropped.len() < 32 {
                    dropped.push(Value::String(name.clone()));
                }
                continue;
            }
            if meta.len() > 1 {
                meta.push(',');
            }
            meta.push_str(&member);
        }
        if !dropped.is_empty() {
            if meta.len() > 1 {
                meta.push(',');
            }
            meta.push_str("\"fields_dropped\":");
            meta.push_str(&json_text(&Value::Array(dropped)));
        }
        meta.push('}');
        (meta.len() > 2).then_some(meta)
    }

    /// The same entry always gets the same ID: a ULID whose time is the
    /// entry's and whose rest comes from the source and the cursor.
    fn line_id(&self, cursor: &str, ms: EpochMs) -> String {
        let mut h = Sha256::new();
        h.update(self.instance.as_bytes());
        h.update(self.source.name.as_bytes());
        h.update([0]);
        h.update(cursor.as_bytes());
        let digest = h.finalize();
        let mut low = [0u8; 16];
        low[6..].copy_from_slice(&digest[..10]);
        let ms = (ms.max(0) as u128) & ((1 << 48) - 1);
        ulid::Ulid((ms << 80) | u128::from_be_bytes(low)).to_string()
    }
}

/// Every value of a field as text: a string, an array of bytes (journalctl's
/// form for values that are not printable UTF-8), or an array of either for a
/// field the entry gives more than once. `null` (a value journalctl left out)
/// gives none.
fn texts(value: &Value) -> Vec<Cow<'_, str>> {
    match value {
        Value::String(s) => vec![Cow::Borrowed(s.as_str())],
        Value::Array(items) => match bytes_of(items) {
            Some(bytes) => vec![Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())],
            None => items.iter().flat_map(texts).collect(),
        },
        _ => Vec::new(),
    }
}

/// An array of numbers 0–255 as the bytes it spells.
fn bytes_of(items: &[Value]) -> Option<Vec<u8>> {
    if items.is_empty() {
        return None;
    }
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect()
}

/// JSON of texts and lists of texts always serializes.
fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A field's values as one text, a value given more than once one per row.
fn joined(value: &Value) -> String {
    texts(value).join("\n")
}

/// The text of `"field": "..."` near the start of an entry cut short:
/// journalctl writes its cursor and times first, and they hold no escapes.
fn leading_text<'a>(start: &'a [u8], field: &str) -> Option<&'a str> {
    let head = std::str::from_utf8(&start[..start.len().min(4096)])
        .or_else(|e| std::str::from_utf8(&start[..e.valid_up_to()]))
        .ok()?;
    let quoted = format!("\"{field}\"");
    let after = &head[head.find(&quoted)? + quoted.len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let value = after.strip_prefix('"')?;
    let end = value.find(['"', '\\'])?;
    Some(&value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journald::config::JournaldSourceConfig;

    fn mapper(extra: &str) -> Mapper {
        let config: JournaldSourceConfig =
            toml::from_str(&format!("account = \"ops\"\n{extra}")).unwrap();
        let source = JournalSource::all(vec![config], 60_000).unwrap().remove(0);
        Mapper::new(Arc::new(source), "0123".into())
    }

    const NOW: EpochMs = 1_700_000_000_000;

    #[test]
    fn an_entry_fills_the_line_schema() {
        let json = br#"{"__CURSOR":"s=ab;i=1f","__REALTIME_TIMESTAMP":"1700000000123456","_BOOT_ID":"b1","MESSAGE":"disk full","PRIORITY":"3","_HOSTNAME":"edge-7","SYSLOG_IDENTIFIER":"app","_SYSTEMD_UNIT":"app.service","_PID":"42","_SOURCE_REALTIME_TIMESTAMP":"1699999999000000"}"#;
        let e = mapper("").entry(json, NOW).unwrap();
        assert_eq!(e.cursor, "s=ab;i=1f");
        assert_eq!(&*e.line.line, "disk full");
        assert_eq!(e.line.ts, 1_699_999_999_000);
        let own = e.line.own.as_ref().unwrap();
        assert_eq!(own.host.as_deref(), Some("edge-7"));
        assert_eq!(own.app.as_deref(), Some("app"));
        assert_eq!(own.level.as_deref(), Some("err"));
        assert_eq!(
            own.meta_json.as_deref(),
            Some(r#"{"_SYSTEMD_UNIT":"app.service","_PID":"42","_BOOT_ID":"b1"}"#)
        );
        assert_eq!(e.line.origin.ingester, "journald");
        // The same entry read again gets the same ID; another entry another.
        assert_eq!(mapper("").entry(json, NOW + 5).unwrap().id, e.id);
        let other = String::from_utf8_lossy(json).replace("i=1f", "i=20");
        assert_ne!(mapper("").entry(other.as_bytes(), NOW).unwrap().id, e.id);
    }

    #[test]
    fn binary_and_repeated_values_are_read_as_text() {
        // "\x1b[31mred" as bytes, and a field given twice.
        let json = br#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1700000000000000","MESSAGE":[27,91,51,49,109,114,101,100,255],"_COMM":"x","_UID":["1","2"]}"#;
        let e = mapper("fields = [\"_UID\"]").entry(json, NOW).unwrap();
        assert_eq!(&*e.line.line, "\u{1b}[31mred\u{fffd}");
        let own = e.line.own.as_ref().unwrap();
        assert_eq!(own.app.as_deref(), Some("x"));
        assert_eq!(own.level, None);
        assert_eq!(own.meta_json.as_deref(), Some(r#"{"_UID":["1","2"]}"#));
    }

    #[test]
    fn times_ahead_of_the_skew_are_not_believed_and_long_messages_are_cut() {
        let ahead = (NOW + 3_600_000) * 1000;
        let long = "x".repeat(MAX_LINE + 10);
        let json = format!(
            r#"{{"__CURSOR":"c","__REALTIME_TIMESTAMP":"{}","_SOURCE_REALTIME_TIMESTAMP":"{ahead}","MESSAGE":"{long}"}}"#,
            (NOW - 1000) * 1000
        );
        let e = mapper("").entry(json.as_bytes(), NOW).unwrap();
        assert_eq!(e.line.ts, NOW - 1000);
        assert!(e.line.truncated);
        assert_eq!(e.line.line.len(), MAX_LINE);
    }

    #[test]
    fn every_field_can_go_into_meta_within_its_limit() {
        let big = "y".repeat(MAX_META);
        let json = format!(
            r#"{{"__CURSOR":"c","__MONOTONIC_TIMESTAMP":"9","MESSAGE":"m","PRIORITY":"6","A_FIELD":"a","BIG":"{big}"}}"#
        );
        let e = mapper("fields = [\"*\"]")
            .entry(json.as_bytes(), NOW)
            .unwrap();
        let meta = e.line.own.as_ref().unwrap().meta_json.clone().unwrap();
        assert_eq!(meta, r#"{"A_FIELD":"a","fields_dropped":["BIG"]}"#);
    }

    #[test]
    fn what_is_not_an_entry_is_an_error_and_an_oversized_entry_keeps_its_place() {
        let m = mapper("");
        assert!(matches!(
            m.entry(b"-- No entries --", NOW),
            Err(EntryError::NotJson(_))
        ));
        assert!(matches!(
            m.entry(b"{\"MESSAGE\":\"m\"}", NOW),
            Err(EntryError::NoCursor)
        ));
        let start = br#"{ "__CURSOR" : "s=1;i=2", "__REALTIME_TIMESTAMP" : "1699999000000000", "MESSAGE" : "xxxx"#;
        let e = m.oversized(start, 5 << 20, NOW).unwrap();
        assert_eq!(
            (e.cursor.as_str(), e.line.ts),
            ("s=1;i=2", 1_699_999_000_000)
        );
        assert!(e.line.truncated && e.line.line.is_empty());
        assert_eq!(
            e.line.own.unwrap().meta_json.as_deref(),
            Some(r#"{"entry_too_large":true,"entry_bytes":5242880}"#)
        );
    }
}
