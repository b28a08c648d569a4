//! One archived line read back: docs/FORMAT.md's flat form, or the older wrapped
//! form `{"_source":{…}}` with `_lid` for the ID that Mezmo's own archives use.
//! Either comes out as a flat docs/FORMAT.md line.

use serde_json::{Map, Value};

/// The fields restore filters, sorts and dedupes on, and the line to print.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: Option<String>,
    pub ts: Option<i64>,
    pub host: Option<String>,
    pub app: Option<String>,
    pub level: Option<String>,
    pub line: Option<String>,
    /// The line as printed: the archived text itself when it already is a
    /// flat line with `_id`, else the flat form rebuilt.
    pub text: String,
}

fn string(fields: &Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Epoch ms from a number (seconds are recognised by magnitude) or a string of digits.
fn epoch_ms(value: &Value) -> Option<i64> {
    let n = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    if !n.is_finite() {
        return None;
    }
    Some(if n.abs() < 1e11 { n * 1000.0 } else { n } as i64)
}

impl Record {
    /// Reads one line of an archive object (without its `\n`).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let mut outer: Map<String, Value> = serde_json::from_str(text)?;
        let (fields, rebuilt) = match outer.remove("_source") {
            Some(Value::Object(mut inner)) => {
                // The wrapper's own `_id` names the line when the inner form has none.
                if !inner.contains_key("_id") {
                    if let Some(id) = outer.remove("_id").or_else(|| inner.get("_lid").cloned()) {
                        inner.insert("_id".into(), id);
                    }
                }
                (inner, true)
            }
            Some(other) => {
                outer.insert("_source".into(), other);
                (outer, false)
            }
            None => (outer, false),
        };
        let (fields, rebuilt) = if !fields.contains_key("_id") && fields.contains_key("_lid") {
            let mut with_id = Map::with_capacity(fields.len() + 1);
            with_id.insert("_id".into(), fields["_lid"].clone());
            with_id.extend(fields);
            (with_id, true)
        } else {
            (fields, rebuilt)
        };
        Ok(Self {
            id: string(&fields, "_id"),
            ts: fields.get("_ts").and_then(epoch_ms),
            host: string(&fields, "_host"),
            app: string(&fields, "_app"),
            level: string(&fields, "level"),
            line: string(&fields, "_line"),
            text: if rebuilt {
                Value::Object(fields).to_string()
            } else {
                text.to_owned()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_line_is_printed_as_archived() {
        let text = r#"{"_id":"01A","_account":"acme","_ts":1764140245123,"_line":"GET /x","_host":"edge-1","_app":"nginx","level":"INFO","_ingester":"http","_received":1764140245201}"#;
        let r = Record::parse(text).unwrap();
        assert_eq!(r.id.as_deref(), Some("01A"));
        assert_eq!(r.ts, Some(1_764_140_245_123));
        assert_eq!(r.host.as_deref(), Some("edge-1"));
        assert_eq!(r.app.as_deref(), Some("nginx"));
        assert_eq!(r.level.as_deref(), Some("INFO"));
        assert_eq!(r.line.as_deref(), Some("GET /x"));
        assert_eq!(r.text, text);
    }

    #[test]
    fn the_wrapped_form_comes_out_flat_with_its_lid_as_id() {
        let text = r#"{"_source":{"_account":"acme","_ts":1764140245,"_line":"hi","_host":"h","_lid":"L1","level":"warn"}}"#;
        let r = Record::parse(text).unwrap();
        assert_eq!(r.id.as_deref(), Some("L1"));
        assert_eq!(r.ts, Some(1_764_140_245_000));
        assert_eq!(r.level.as_deref(), Some("warn"));
        let flat: Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(flat["_id"], "L1");
        assert_eq!(flat["_line"], "hi");
        assert!(flat.get("_source").is_none());
    }

    #[test]
    fn a_flat_line_with_only_lid_gets_an_id() {
        let r = Record::parse(r#"{"_lid":"L2","_ts":"1764140245123","_line":"x"}"#).unwrap();
        assert_eq!(r.id.as_deref(), Some("L2"));
        assert_eq!(r.ts, Some(1_764_140_245_123));
        assert!(r.text.starts_with(r#"{"_id":"L2""#), "{}", r.text);
    }

    #[test]
    fn a_line_that_is_not_an_object_is_an_error() {
        assert!(Record::parse("[1,2]").is_err());
        assert!(Record::parse("{\"_id\":").is_err());
    }
}
