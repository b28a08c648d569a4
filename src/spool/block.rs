//! A block: many lines of one part, stored as one record in a segment file.
//!
//! Lines of one request (or one read of a file) share their origin: the
//! query's host, ip, mac and tags, a file source's app and path. A block
//! stores each origin once and each line points at it by number, so a request
//! with long shared fields costs the same on disk for a million lines as for
//! one (record version 2). Blocks written before that (version 1) hold every
//! field in every line and are still read.
//!
//! Reading borrows every string from the block's bytes: staging a backlog
//! reads every line once, and copying each string out cost as much as
//! serializing it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::codec::{self, CorruptRecord};
use crate::clock::EpochMs;
use crate::line::{Line, LineRef, Origin, StoredLineRef};

/// Blocks whose lines carry every field themselves.
const ALL_IN_LINE: u8 = 1;
/// Blocks whose lines point at origins stored once.
const SHARED_ORIGINS: u8 = 2;

/// An origin as a block stores it.
#[derive(Serialize, Deserialize)]
struct OriginRecord<'a> {
    #[serde(borrow)]
    host: Option<&'a str>,
    #[serde(borrow)]
    app: Option<&'a str>,
    #[serde(borrow)]
    file: Option<&'a str>,
    #[serde(borrow)]
    level: Option<&'a str>,
    #[serde(borrow)]
    ip: Option<&'a str>,
    #[serde(borrow)]
    mac: Option<&'a str>,
    #[serde(borrow)]
    tags: Vec<&'a str>,
    #[serde(borrow)]
    ingester: &'a str,
}

impl<'a> OriginRecord<'a> {
    fn of(origin: &'a Origin) -> Self {
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

/// A line as a version 2 block stores it: its own fields, and its origin's number.
#[derive(Serialize, Deserialize)]
struct LineRecord<'a> {
    #[serde(borrow)]
    id: &'a str,
    received: EpochMs,
    ts: EpochMs,
    #[serde(borrow)]
    line: &'a str,
    truncated: bool,
    origin: u32,
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
    label_json: Option<&'a str>,
    #[serde(borrow)]
    meta_json: Option<&'a str>,
}

#[derive(Serialize, Deserialize)]
struct SharedBlock<'a> {
    #[serde(borrow)]
    origins: Vec<OriginRecord<'a>>,
    #[serde(borrow)]
    lines: Vec<LineRecord<'a>>,
}

/// A line as a version 1 block stores it, every field in place.
#[derive(Serialize, Deserialize)]
struct OldLineRecord<'a> {
    #[serde(borrow)]
    id: &'a str,
    received: EpochMs,
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

#[derive(Serialize, Deserialize)]
struct OldBlock<'a> {
    #[serde(borrow)]
    lines: Vec<OldLineRecord<'a>>,
}

/// One line to write, with the ID and receive time the spool gave it.
pub struct ToWrite<'a> {
    pub id: String,
    pub received: EpochMs,
    pub line: &'a Line,
}

/// Encodes lines as one block, each distinct origin stored once.
pub fn encode(lines: &[ToWrite<'_>]) -> Vec<u8> {
    let mut origins: Vec<&Arc<Origin>> = Vec::new();
    let mut records = Vec::with_capacity(lines.len());
    for w in lines {
        let line = w.line;
        // Lines of a block come from few requests: a short scan finds the origin.
        let origin = match origins.iter().rposition(|o| Arc::ptr_eq(o, &line.origin)) {
            Some(at) => at,
            None => {
                origins.push(&line.origin);
                origins.len() - 1
            }
        };
        let own = line.own.as_deref();
        let field =
            |f: fn(&crate::line::OwnFields) -> &Option<String>| own.and_then(|o| f(o).as_deref());
        records.push(LineRecord {
            id: &w.id,
            received: w.received,
            ts: line.ts,
            line: &line.line,
            truncated: line.truncated,
            origin: origin as u32,
            host: field(|o| &o.host),
            app: field(|o| &o.app),
            file: field(|o| &o.file),
            level: field(|o| &o.level),
            env: field(|o| &o.env),
            label_json: field(|o| &o.label_json),
            meta_json: field(|o| &o.meta_json),
        });
    }
    let block = SharedBlock {
        origins: origins.into_iter().map(|o| OriginRecord::of(o)).collect(),
        lines: records,
    };
    codec::encode_version(SHARED_ORIGINS, &block)
}

/// A block as read, its strings borrowed from the record's bytes.
pub enum Decoded<'a> {
    Shared(SharedBlockView<'a>),
    Old(OldBlockView<'a>),
}

pub struct SharedBlockView<'a>(SharedBlock<'a>);
pub struct OldBlockView<'a>(OldBlock<'a>);

/// Checks and decodes a block record of either version.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, CorruptRecord> {
    let (version, payload) = codec::check(bytes)?;
    match version {
        SHARED_ORIGINS => {
            let block: SharedBlock = codec::decode_payload(payload)?;
            if let Some(bad) = block
                .lines
                .iter()
                .find(|l| l.origin as usize >= block.origins.len())
            {
                return Err(CorruptRecord::Decode(format!(
                    "a line names origin {} of {}",
                    bad.origin,
                    block.origins.len()
                )));
            }
            Ok(Decoded::Shared(SharedBlockView(block)))
        }
        ALL_IN_LINE => Ok(Decoded::Old(OldBlockView(codec::decode_payload(payload)?))),
        other => Err(CorruptRecord::Version(other)),
    }
}

impl Decoded<'_> {
    /// The block's lines, every field resolved, borrowed from the block.
    pub fn lines(&self) -> Vec<StoredLineRef<'_>> {
        match self {
            Decoded::Shared(SharedBlockView(block)) => block
                .lines
                .iter()
                .map(|l| {
                    // Checked when decoded: every line's origin is in the block.
                    let o = &block.origins[l.origin as usize];
                    StoredLineRef {
                        id: l.id,
                        received: l.received,
                        line: LineRef {
                            ts: l.ts,
                            line: l.line,
                            truncated: l.truncated,
                            host: l.host.or(o.host),
                            app: l.app.or(o.app),
                            file: l.file.or(o.file),
                            level: l.level.or(o.level),
                            env: l.env,
                            ip: o.ip,
                            mac: o.mac,
                            tags: &o.tags,
                            label_json: l.label_json,
                            meta_json: l.meta_json,
                            ingester: o.ingester,
                        },
                    }
                })
                .collect(),
            Decoded::Old(OldBlockView(block)) => block
                .lines
                .iter()
                .map(|l| StoredLineRef {
                    id: l.id,
                    received: l.received,
                    line: LineRef {
                        ts: l.ts,
                        line: l.line,
                        truncated: l.truncated,
                        host: l.host,
                        app: l.app,
                        file: l.file,
                        level: l.level,
                        env: l.env,
                        ip: l.ip,
                        mac: l.mac,
                        tags: &l.tags,
                        label_json: l.label_json,
                        meta_json: l.meta_json,
                        ingester: l.ingester,
                    },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::{OwnFields, StoredLine};

    fn origin(tags: &[&str]) -> Arc<Origin> {
        Arc::new(Origin {
            host: Some("edge-1".into()),
            ip: Some("10.0.0.7".into()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ingester: "http",
            ..Origin::default()
        })
    }

    fn ndjson(lines: &[StoredLineRef<'_>]) -> String {
        let mut out = Vec::new();
        for l in lines {
            l.write_ndjson("acme", &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_read_back_as_they_were_given_whatever_their_origin() {
        let (a, b) = (origin(&["x", "y"]), origin(&[]));
        let mut own = Line::new(5, "own host".into(), a.clone());
        *own.own_mut() = OwnFields {
            host: Some("mine".into()),
            meta_json: Some(r#"{"k":1}"#.into()),
            ..OwnFields::default()
        };
        let lines = [
            Line::new(1, "first".into(), a.clone()),
            Line::new(2, "other origin".into(), b),
            own,
            Line::new(3, "back to the first".into(), a),
        ];
        let stored: Vec<StoredLine> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| StoredLine {
                id: format!("id{i}"),
                received: 9,
                line: l.clone(),
            })
            .collect();
        let write: Vec<ToWrite> = stored
            .iter()
            .map(|s| ToWrite {
                id: s.id.clone(),
                received: s.received,
                line: &s.line,
            })
            .collect();
        let bytes = encode(&write);
        let decoded = decode(&bytes).unwrap();
        let Decoded::Shared(SharedBlockView(block)) = &decoded else {
            panic!("new blocks share their origins");
        };
        assert_eq!(block.origins.len(), 2, "each origin once");
        let want: Vec<String> = stored
            .iter()
            .map(|s| {
                let mut out = Vec::new();
                s.write_ndjson("acme", &mut out);
                String::from_utf8(out).unwrap()
            })
            .collect();
        assert_eq!(ndjson(&decoded.lines()), want.concat());
        assert!(want[2].contains(r#""_host":"mine""#));
        assert!(want[0].contains(r#""_tag":["x","y"]"#));
    }

    #[test]
    fn a_long_shared_field_is_stored_once_per_block() {
        let tags: Vec<String> = (0..32).map(|i| format!("{i:0>80}")).collect();
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let shared = origin(&tags);
        let lines: Vec<Line> = (0..500)
            .map(|_| Line::new(1, "x".into(), shared.clone()))
            .collect();
        let write: Vec<ToWrite> = lines
            .iter()
            .map(|line| ToWrite {
                id: "01JDX6Q3ZK8V7S3M2N4P5R6T7W".into(),
                received: 1,
                line,
            })
            .collect();
        let bytes = encode(&write);
        assert!(
            bytes.len() < 32 * 81 + 500 * 48,
            "{} bytes for 500 one-byte lines sharing 2.6 KB of tags",
            bytes.len()
        );
    }

    #[test]
    fn blocks_of_the_first_version_are_still_read() {
        let old = OldBlock {
            lines: vec![OldLineRecord {
                id: "01JDX6Q3ZK8V7S3M2N4P5R6T7W",
                received: 1764140245201,
                ts: 1764140245123,
                line: "GET /health 200 3ms",
                truncated: false,
                host: Some("edge-17"),
                app: Some("nginx"),
                file: None,
                level: Some("info"),
                env: None,
                ip: None,
                mac: None,
                tags: vec!["edge"],
                label_json: None,
                meta_json: Some(r#"{"status":200}"#),
                ingester: "http",
            }],
        };
        let bytes = codec::encode_version(ALL_IN_LINE, &old);
        let decoded = decode(&bytes).unwrap();
        let text = ndjson(&decoded.lines());
        let got: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got["_host"], "edge-17");
        assert_eq!(got["_tag"][0], "edge");
        assert_eq!(got["_meta"]["status"], 200);
    }

    #[test]
    fn a_line_naming_a_missing_origin_is_a_damaged_block() {
        let block = SharedBlock {
            origins: vec![],
            lines: vec![LineRecord {
                id: "a",
                received: 0,
                ts: 0,
                line: "x",
                truncated: false,
                origin: 3,
                host: None,
                app: None,
                file: None,
                level: None,
                env: None,
                label_json: None,
                meta_json: None,
            }],
        };
        let bytes = codec::encode_version(SHARED_ORIGINS, &block);
        assert!(decode(&bytes).is_err());
    }
}
