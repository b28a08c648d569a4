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
use crate::line::{Line, LineRef, Origin, OriginRef, OwnRef, StoredLineRef};

/// Blocks whose lines carry every field themselves.
const ALL_IN_LINE: u8 = 1;
/// Blocks whose lines point at origins stored once.
const SHARED_ORIGINS: u8 = 2;

/// Fields of [`OwnRef`].
const OWN_FIELDS: usize = 7;

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
    own: OwnRef<'a>,
}

#[derive(Serialize, Deserialize)]
struct SharedBlock<'a> {
    #[serde(borrow)]
    origins: Vec<OriginRef<'a>>,
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

/// A line's ID as text: the one its source gave, or one the spool made,
/// held in place so that making it allocates nothing.
pub enum IdText<'a> {
    Given(&'a str),
    Made([u8; ulid::ULID_LEN]),
}

impl IdText<'_> {
    pub fn made(id: ulid::Ulid) -> Self {
        let mut text = [0; ulid::ULID_LEN];
        id.array_to_str(&mut text);
        IdText::Made(text)
    }

    /// The text's bytes, as a block stores them.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IdText::Given(id) => id.as_bytes(),
            IdText::Made(text) => text,
        }
    }

    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        match self {
            IdText::Given(id) => id,
            // A ULID's text is ASCII: this never falls back.
            IdText::Made(text) => std::str::from_utf8(text).unwrap_or_default(),
        }
    }
}

impl<'a> From<&'a str> for IdText<'a> {
    fn from(id: &'a str) -> Self {
        IdText::Given(id)
    }
}

/// One line to write, with the ID and receive time the spool gave it.
pub struct ToWrite<'a> {
    pub id: IdText<'a>,
    pub received: EpochMs,
    pub line: &'a Line,
}

/// Encodes lines as one block, each distinct origin stored once.
#[cfg(test)]
pub fn encode(lines: &[ToWrite<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(lines, &mut out);
    out
}

/// Encodes lines as one block at the end of `out`, each distinct origin
/// stored once: a [`SharedBlock`], field by field.
pub fn encode_into<B: codec::RecordBuf>(lines: &[ToWrite<'_>], out: &mut B) {
    let (origins, numbers) = number_origins(lines);
    codec::encode_fields_into(SHARED_ORIGINS, out, |fields| {
        fields.serde(&origins);
        fields.len(lines.len());
        for (w, &origin) in lines.iter().zip(&numbers) {
            // LineRecord's fields, in its order.
            let line = w.line;
            fields.text(w.id.as_bytes());
            fields.i64(w.received);
            fields.i64(line.ts);
            fields.str(&line.line);
            fields.bool(line.truncated);
            fields.u32(origin);
            match line.own.as_deref() {
                // Most lines have none: seven absent fields at once.
                None => fields.nones::<OWN_FIELDS>(),
                Some(own) => {
                    let own = OwnRef::of(Some(own));
                    for field in [
                        own.host,
                        own.app,
                        own.file,
                        own.level,
                        own.env,
                        own.label_json,
                        own.meta_json,
                    ] {
                        fields.option_str(field);
                    }
                }
            }
        }
    });
}

/// [`encode_into`] through serde: what it must write, byte for byte.
#[cfg(test)]
fn encode_through_serde(lines: &[ToWrite<'_>]) -> Vec<u8> {
    let (origins, numbers) = number_origins(lines);
    let records = lines
        .iter()
        .zip(numbers)
        .map(|(w, origin)| LineRecord {
            id: w.id.as_str(),
            received: w.received,
            ts: w.line.ts,
            line: &w.line.line,
            truncated: w.line.truncated,
            origin,
            own: OwnRef::of(w.line.own.as_deref()),
        })
        .collect();
    let block = SharedBlock {
        origins,
        lines: records,
    };
    codec::encode_version(SHARED_ORIGINS, &block)
}

/// A block's distinct origins, in the order lines first name them, and each
/// line's origin number.
fn number_origins<'a>(lines: &[ToWrite<'a>]) -> (Vec<OriginRef<'a>>, Vec<u32>) {
    let mut origins: Vec<&Arc<Origin>> = Vec::new();
    let mut numbers = Vec::with_capacity(lines.len());
    for w in lines {
        // Lines of a block come from few requests: a short scan finds the origin.
        let number = match origins.iter().rposition(|o| Arc::ptr_eq(o, &w.line.origin)) {
            Some(at) => at,
            None => {
                origins.push(&w.line.origin);
                origins.len() - 1
            }
        };
        numbers.push(number as u32);
    }
    let origins = origins.into_iter().map(|o| OriginRef::of(o)).collect();
    (origins, numbers)
}

/// A block as read, its strings borrowed from the record's bytes.
pub enum Decoded<'a> {
    Shared(SharedBlockView<'a>),
    Old(OldBlockView<'a>),
}

pub struct SharedBlockView<'a>(SharedBlock<'a>);
pub struct OldBlockView<'a> {
    block: OldBlock<'a>,
    /// What each line carries of an origin, one per line, so old lines read
    /// back through the same [`LineRef`] as new ones.
    origins: Vec<OriginRef<'a>>,
}

/// Checks and decodes a block record of either version.
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, CorruptRecord> {
    let (version, payload) = codec::check(bytes)?;
    decode_payload(version, payload)
}

/// Decodes a checked block payload of either version.
pub fn decode_payload(version: u8, payload: &[u8]) -> Result<Decoded<'_>, CorruptRecord> {
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
        ALL_IN_LINE => {
            let block: OldBlock = codec::decode_payload(payload)?;
            let origins = block
                .lines
                .iter()
                .map(|l| OriginRef {
                    host: None,
                    app: None,
                    file: None,
                    level: None,
                    ip: l.ip,
                    mac: l.mac,
                    tags: l.tags.clone(),
                    ingester: l.ingester,
                })
                .collect();
            Ok(Decoded::Old(OldBlockView { block, origins }))
        }
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
                .map(|l| StoredLineRef {
                    id: l.id,
                    received: l.received,
                    line: LineRef {
                        ts: l.ts,
                        line: l.line,
                        truncated: l.truncated,
                        own: l.own,
                        // Checked when decoded: every line's origin is in the block.
                        origin: &block.origins[l.origin as usize],
                    },
                })
                .collect(),
            // An old line holds its origin's fields and its own together,
            // host, app, file and level already resolved: they read as its own.
            Decoded::Old(OldBlockView { block, origins }) => block
                .lines
                .iter()
                .zip(origins)
                .map(|(l, origin)| StoredLineRef {
                    id: l.id,
                    received: l.received,
                    line: LineRef {
                        ts: l.ts,
                        line: l.line,
                        truncated: l.truncated,
                        own: OwnRef {
                            host: l.host,
                            app: l.app,
                            file: l.file,
                            level: l.level,
                            env: l.env,
                            label_json: l.label_json,
                            meta_json: l.meta_json,
                        },
                        origin,
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
        let mut own = Line::new(5, "own host", a.clone());
        *own.own_mut() = OwnFields {
            host: Some("mine".into()),
            meta_json: Some(r#"{"k":1}"#.into()),
            ..OwnFields::default()
        };
        let lines = [
            Line::new(1, "first", a.clone()),
            Line::new(2, "other origin", b),
            own,
            Line::new(3, "back to the first", a),
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
                id: s.id.as_str().into(),
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
            .map(|_| Line::new(1, "x", shared.clone()))
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
                own: OwnRef::default(),
            }],
        };
        let bytes = codec::encode_version(SHARED_ORIGINS, &block);
        assert!(decode(&bytes).is_err());
    }

    /// A version 2 origin as it was first written, before blocks and readers
    /// shared one borrowed origin type.
    #[derive(Serialize)]
    struct FlatOriginRecord<'a> {
        host: Option<&'a str>,
        app: Option<&'a str>,
        file: Option<&'a str>,
        level: Option<&'a str>,
        ip: Option<&'a str>,
        mac: Option<&'a str>,
        tags: Vec<&'a str>,
        ingester: &'a str,
    }

    /// A version 2 line as it was first written: its own fields inline. The
    /// line record now holds them as one struct, which must encode the same.
    #[derive(Serialize)]
    struct FlatLineRecord<'a> {
        id: &'a str,
        received: EpochMs,
        ts: EpochMs,
        line: &'a str,
        truncated: bool,
        origin: u32,
        host: Option<&'a str>,
        app: Option<&'a str>,
        file: Option<&'a str>,
        level: Option<&'a str>,
        env: Option<&'a str>,
        label_json: Option<&'a str>,
        meta_json: Option<&'a str>,
    }

    #[test]
    fn version_2_blocks_written_with_flat_line_fields_read_the_same() {
        #[derive(Serialize)]
        struct FlatBlock<'a> {
            origins: Vec<FlatOriginRecord<'a>>,
            lines: Vec<FlatLineRecord<'a>>,
        }
        let origin = origin(&["edge"]);
        let flat = FlatBlock {
            origins: vec![FlatOriginRecord {
                host: Some("edge-1"),
                app: None,
                file: None,
                level: None,
                ip: Some("10.0.0.7"),
                mac: None,
                tags: vec!["edge"],
                ingester: "http",
            }],
            lines: vec![FlatLineRecord {
                id: "id0",
                received: 9,
                ts: 5,
                line: "own host",
                truncated: true,
                origin: 0,
                host: Some("mine"),
                app: None,
                file: Some("/var/log/x"),
                level: Some("warn"),
                env: Some("prod"),
                label_json: Some(r#"{"a":"b"}"#),
                meta_json: Some(r#"{"k":1}"#),
            }],
        };
        let mut line = Line::new(5, "own host", origin.clone());
        line.truncated = true;
        *line.own_mut() = crate::line::OwnFields {
            host: Some("mine".into()),
            file: Some("/var/log/x".into()),
            level: Some("warn".into()),
            env: Some("prod".into()),
            label_json: Some(r#"{"a":"b"}"#.into()),
            meta_json: Some(r#"{"k":1}"#.into()),
            ..Default::default()
        };
        let written = encode(&[ToWrite {
            id: "id0".into(),
            received: 9,
            line: &line,
        }]);
        assert_eq!(written, codec::encode_version(SHARED_ORIGINS, &flat));
        let decoded = decode(&written).unwrap();
        let text = ndjson(&decoded.lines());
        assert!(text.contains(r#""_host":"mine""#), "{text}");
        assert!(text.contains(r#""_env":"prod""#), "{text}");
        assert!(text.contains(r#""_label":{"a":"b"}"#), "{text}");
    }

    proptest::proptest! {
        /// The block writer writes what serde would, byte for byte: every
        /// integer width, texts around the writer's gathering size, own
        /// fields present and absent, made and given IDs.
        #[test]
        fn blocks_are_written_as_serde_would(
            lines in proptest::collection::vec(
                (
                    proptest::prelude::any::<i64>(),
                    proptest::prelude::any::<bool>(),
                    0usize..400,
                    proptest::option::of(0usize..300),
                    0usize..3,
                    proptest::option::of("[a-z]{0,30}"),
                ),
                0..40,
            ),
            received in proptest::prelude::any::<i64>(),
            made in proptest::prelude::any::<bool>(),
            seq in proptest::prelude::any::<u128>(),
        ) {
            let origins = [origin(&[]), origin(&["x"]), origin(&["a", "b", "c"])];
            let lines: Vec<Line> = lines
                .into_iter()
                .map(|(ts, truncated, len, meta, origin, level)| {
                    let mut line = Line::new(ts, "é".repeat(len / 2) + &"x".repeat(len % 2), origins[origin].clone());
                    line.truncated = truncated;
                    if meta.is_some() || level.is_some() {
                        *line.own_mut() = OwnFields {
                            level,
                            meta_json: meta.map(|n| format!("{{\"k\":\"{}\"}}", "m".repeat(n))),
                            ..OwnFields::default()
                        };
                    }
                    line
                })
                .collect();
            let write: Vec<ToWrite> = lines
                .iter()
                .enumerate()
                .map(|(i, line)| ToWrite {
                    id: if made {
                        IdText::made(ulid::Ulid(seq.wrapping_add(i as u128)))
                    } else {
                        IdText::Given("given-id")
                    },
                    received,
                    line,
                })
                .collect();
            proptest::prop_assert_eq!(encode(&write), encode_through_serde(&write));
        }
    }
}
