//! Turning an ingest request into lines: gzip, JSON, the limits table and the
//! timestamp rules of FORMAT.md §3–4. Everything here is checked before a single
//! line goes to the spool, so a bad request stores nothing.

use std::fmt;
use std::io::Read;
use std::sync::Arc;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::clock::EpochMs;
use crate::line::{Line, Origin, OwnFields};

pub const MAX_BODY: usize = 10 * 1024 * 1024;
pub const MAX_LINE: usize = 16 * 1024;
pub const MAX_META: usize = 32 * 1024;
pub const MAX_HOSTNAME: usize = 256;
pub const MAX_APP: usize = 512;
pub const MAX_LEVEL: usize = 80;
pub const MAX_TAG: usize = 80;
/// Tags of one request: each is stored with every line of the request.
pub const MAX_TAGS: usize = 32;
/// A file path, as long as Linux lets one be (PATH_MAX).
pub const MAX_FILE: usize = 4096;
pub const MAX_ENV: usize = 80;
/// The `label` object, serialized.
pub const MAX_LABEL: usize = 2 * 1024;
/// Reported problems per request; past this the client has enough to go on.
const MAX_ERRORS: usize = 10;
/// The shortest line object, `{"line":""}`, and the comma after it: no body
/// holds more lines than its length over this.
const MIN_LINE_JSON: usize = 12;

#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the body or a field is malformed or over a field limit.
    Malformed(Vec<String>),
    /// 413: the body is over the size limit.
    TooLarge(String),
    /// 503: its lines found no room in the memory budget in time.
    Busy,
}

/// Takes memory for the lines read so far (bytes in all), before more are
/// read; refuses when there is none.
pub type Reserve<'r> = &'r mut dyn FnMut(usize) -> Result<(), Rejection>;

/// Lines read between two calls of [`Reserve`].
const RESERVE_EVERY: usize = 4096;

/// What the query string says about every line of the request.
#[derive(Debug, Default, Clone)]
pub struct RequestContext {
    pub hostname: Option<String>,
    pub mac: Option<String>,
    pub ip: Option<String>,
    /// The client's clock when it sent the request (`now`), for drift correction.
    pub client_now: Option<EpochMs>,
    pub tags: Vec<String>,
    /// Server time the request arrived.
    pub received: EpochMs,
    /// Timestamps further ahead than this are not believed.
    pub max_skew_ms: i64,
}

/// One line object as sent. The JSON-valued fields stay the text they were
/// sent as, borrowed from the body: built into values, a flat array of a few
/// bytes per element would take tens of times the body's size.
#[derive(Deserialize)]
struct InLine<'a> {
    line: Option<String>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    app: Option<String>,
    level: Option<String>,
    file: Option<String>,
    env: Option<String>,
    hostname: Option<String>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    label: Option<&'a RawValue>,
}

/// JSON nested deeper than this is refused: archive readers (serde_json,
/// `larch restore` among them) stop at 128 levels.
pub const MAX_DEPTH: usize = 128;

/// `Content-Encoding: gzip` undone a step at a time, into room the caller
/// reserves first (and takes from its memory budget), never past one byte
/// over the body limit.
pub struct Gunzip {
    decoder: flate2::read::MultiGzDecoder<bytes::buf::Reader<bytes::Bytes>>,
    out: Vec<u8>,
}

impl Gunzip {
    pub fn new(raw: bytes::Bytes) -> Self {
        use bytes::Buf;
        Self {
            decoder: flate2::read::MultiGzDecoder::new(raw.reader()),
            out: Vec::new(),
        }
    }

    /// The size the body's gzip trailer gives (of its last member; 0 if it
    /// has none). A hint only: a client may lie.
    pub fn said_size(raw: &[u8]) -> usize {
        raw.len()
            .checked_sub(4)
            .and_then(|at| raw.get(at..))
            .and_then(|t| <[u8; 4]>::try_from(t).ok())
            .map_or(0, |t| u32::from_le_bytes(t) as usize)
    }

    /// Bytes of text so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Room for the next step, if it needs some: how many bytes more the
    /// caller must take (0 when there is room left).
    pub fn room_wanted(&self, step: usize) -> usize {
        if self.out.len() < self.out.capacity() {
            return 0;
        }
        step.min(MAX_BODY + 1 - self.out.len().min(MAX_BODY + 1))
    }

    /// Makes room for exactly `bytes` more.
    pub fn reserve(&mut self, bytes: usize) {
        self.out.reserve_exact(bytes);
    }

    /// Decompresses into the room reserved; true once the body has ended.
    pub fn step(&mut self) -> Result<bool, Rejection> {
        let room = (self.out.capacity() - self.out.len()) as u64;
        let read = (&mut self.decoder)
            .take(room)
            .read_to_end(&mut self.out)
            .map_err(|e| {
                Rejection::Malformed(vec![format!(
                    "the body says Content-Encoding: gzip but is not valid gzip ({e})"
                )])
            })?;
        if self.out.len() > MAX_BODY {
            return Err(gunzip_too_large());
        }
        Ok((read as u64) < room)
    }

    pub fn into_text(self) -> Vec<u8> {
        self.out
    }
}

/// A whole body through [`Gunzip`], in the listener's steps.
#[cfg(test)]
fn gunzip(raw: &[u8]) -> Result<Vec<u8>, Rejection> {
    let mut body = Gunzip::new(bytes::Bytes::copy_from_slice(raw));
    loop {
        let room = body.room_wanted(1 << 20);
        body.reserve(room);
        if body.step()? {
            return Ok(body.into_text());
        }
    }
}

fn gunzip_too_large() -> Rejection {
    Rejection::TooLarge(format!(
        "the request body is over the {} MB limit (after gunzip); send fewer lines per request",
        MAX_BODY / (1024 * 1024)
    ))
}

/// The fields of the query string every line shares, checked.
fn origin_of(ctx: &RequestContext, errors: &mut Vec<String>) -> Origin {
    check_len(
        errors,
        "hostname parameter",
        ctx.hostname.as_deref(),
        MAX_HOSTNAME,
    );
    if ctx.tags.len() > MAX_TAGS {
        errors.push(format!(
            "tags parameter holds {} tags, over the limit of {MAX_TAGS}",
            ctx.tags.len()
        ));
    } else {
        for tag in &ctx.tags {
            check_len(errors, "tag", Some(tag), MAX_TAG);
        }
    }
    if let Some(ip) = &ctx.ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            errors.push(format!(
                "ip parameter {:?} is not an IPv4 or IPv6 address",
                shown(ip)
            ));
        }
    }
    if let Some(mac) = &ctx.mac {
        if !is_mac(mac) {
            errors.push(format!(
                "mac parameter {:?} is not a MAC address (like 00:1a:2b:3c:4d:5e)",
                shown(mac)
            ));
        }
    }
    Origin {
        host: ctx.hostname.clone(),
        ip: ctx.ip.clone(),
        mac: ctx.mac.clone(),
        tags: ctx.tags.clone(),
        ingester: "http",
        ..Origin::default()
    }
}

/// At most the first 40 characters of a bad value, for an error message.
fn shown(value: &str) -> String {
    value.chars().take(40).collect()
}

/// Six hex pairs separated by `:` or `-`, or three groups of four hex digits
/// separated by `.`.
fn is_mac(text: &str) -> bool {
    let hex = |group: &str, len: usize| {
        group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let pairs = |sep: char| {
        let groups: Vec<&str> = text.split(sep).collect();
        groups.len() == 6 && groups.iter().all(|g| hex(g, 2))
    };
    let dotted = || {
        let groups: Vec<&str> = text.split('.').collect();
        groups.len() == 3 && groups.iter().all(|g| hex(g, 4))
    };
    text.len() <= 17 && (pairs(':') || pairs('-') || dotted())
}

/// Parses and checks a JSON body into lines ready for the spool. The lines
/// are built as the array is read, each pointing at one shared [`Origin`]:
/// memory is the lines' own, never a copy of the request's fields per line,
/// and `reserve` is asked for it as it grows.
pub fn parse(
    json: &[u8],
    ctx: &RequestContext,
    reserve: Reserve<'_>,
) -> Result<Vec<Line>, Rejection> {
    let mut errors = Vec::new();
    let origin = Arc::new(origin_of(ctx, &mut errors));
    if !errors.is_empty() {
        return Err(Rejection::Malformed(errors));
    }
    // A client clock outside the years larch can name is not believed at all.
    let drift = ctx
        .client_now
        .filter(|client| (0..MAX_TS).contains(client))
        .map_or(0, |client| ctx.received.saturating_sub(client));
    // Sized once, so a million lines never reallocate on the way.
    let capacity = memchr::memmem::find_iter(json, b"\"line\"")
        .count()
        .min(json.len() / MIN_LINE_JSON + 1);
    let held = capacity * std::mem::size_of::<Line>();
    reserve(held)?;
    let mut reader = Reader {
        ctx,
        origin,
        drift,
        lines: Vec::with_capacity(capacity),
        errors: Vec::new(),
        found: false,
        held,
        reserve,
        refused: None,
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let read = BodySeed(&mut reader)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(refused) = reader.refused {
        return Err(refused);
    }
    (reader.reserve)(reader.held)?;
    if let Err(e) = read {
        return Err(Rejection::Malformed(vec![format!(
            "the body is not valid JSON of the form {{\"lines\":[...]}}: {e}"
        )]));
    }
    if !reader.found {
        return Err(Rejection::Malformed(vec![
            "the body has no \"lines\" array (or \"ls\" array)".into(),
        ]));
    }
    if reader.errors.is_empty() {
        Ok(reader.lines)
    } else {
        reader.errors.truncate(MAX_ERRORS);
        Err(Rejection::Malformed(reader.errors))
    }
}

/// What reading a body has produced so far.
struct Reader<'c> {
    ctx: &'c RequestContext,
    origin: Arc<Origin>,
    drift: i64,
    lines: Vec<Line>,
    errors: Vec<String>,
    /// A `lines` (or `ls`) array was read.
    found: bool,
    /// Memory the lines hold so far.
    held: usize,
    reserve: Reserve<'c>,
    /// Why reading stopped early, if `reserve` said no.
    refused: Option<Rejection>,
}

/// The body object: `lines` (or Mezmo's clients' `ls`) is read line by line;
/// every other key is skipped. With both, `lines` wins, as documented.
struct BodySeed<'r, 'c>(&'r mut Reader<'c>);

impl<'de> DeserializeSeed<'de> for BodySeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a \"lines\" array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut from_lines = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let wanted = match key.as_ref() {
                "lines" => true,
                "ls" => !from_lines,
                _ => false,
            };
            if !wanted {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            // A second array replaces what the first gave.
            self.0.lines.clear();
            self.0.held = self.0.lines.capacity() * std::mem::size_of::<Line>();
            self.0.errors.clear();
            self.0.found = true;
            from_lines = key.as_ref() == "lines";
            map.next_value_seed(LinesSeed(self.0))?;
        }
        Ok(())
    }
}

struct LinesSeed<'r, 'c>(&'r mut Reader<'c>);

impl<'de> DeserializeSeed<'de> for LinesSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for LinesSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of line objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let reader = self.0;
        let mut i = 0;
        while reader.errors.len() < MAX_ERRORS {
            let Some(raw) = seq.next_element::<InLine<'de>>()? else {
                return Ok(());
            };
            if i % RESERVE_EVERY == RESERVE_EVERY - 1 {
                if let Err(refused) = (reader.reserve)(reader.held) {
                    reader.refused = Some(refused);
                    return Err(serde::de::Error::custom("no memory for more lines"));
                }
            }
            match convert(raw, reader.ctx, reader.drift, &reader.origin) {
                Ok(line) => {
                    if reader.lines.len() == reader.lines.capacity() {
                        // The estimate fell short: the vector doubles.
                        reader.held += reader.lines.capacity().max(4) * std::mem::size_of::<Line>();
                    }
                    reader.held += line.heap_size();
                    reader.lines.push(line);
                }
                Err(problems) => reader
                    .errors
                    .extend(problems.into_iter().map(|p| format!("lines[{i}]: {p}"))),
            }
            i += 1;
        }
        // Enough problems to report: the rest is only checked to be JSON.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

fn check_len(errors: &mut Vec<String>, what: &str, value: Option<&str>, max: usize) {
    if let Some(v) = value {
        let n = v.chars().count();
        if n > max {
            errors.push(format!("{what} is {n} characters, over the limit of {max}"));
        }
    }
}

fn convert(
    raw: InLine<'_>,
    ctx: &RequestContext,
    drift: i64,
    origin: &Arc<Origin>,
) -> Result<Line, Vec<String>> {
    let mut errors = Vec::new();
    let Some(mut text) = raw.line else {
        return Err(vec!["\"line\" is missing".into()]);
    };
    check_len(
        &mut errors,
        "hostname",
        raw.hostname.as_deref(),
        MAX_HOSTNAME,
    );
    check_len(&mut errors, "app", raw.app.as_deref(), MAX_APP);
    check_len(&mut errors, "level", raw.level.as_deref(), MAX_LEVEL);
    check_len(&mut errors, "file", raw.file.as_deref(), MAX_FILE);
    check_len(&mut errors, "env", raw.env.as_deref(), MAX_ENV);
    let ts = match resolve_timestamp(raw.timestamp, ctx, drift) {
        Ok(ts) => ts,
        Err(e) => {
            errors.push(e);
            ctx.received
        }
    };
    let meta_json = match raw.meta.map(meta_text).transpose() {
        Ok(meta) => meta,
        Err(e) => {
            errors.push(format!("meta {e}"));
            None
        }
    };
    let label_json = match raw.label.map(RawValue::get) {
        None | Some("null") => None,
        Some(text) if text.starts_with('{') => match compact(text, MAX_LABEL) {
            Ok(text) => Some(text),
            Err(e) => {
                errors.push(format!("label {e}"));
                None
            }
        },
        Some(_) => {
            errors.push("\"label\" must be an object of name → value".into());
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let truncated = text.len() > MAX_LINE;
    if truncated {
        let mut cut = MAX_LINE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.shrink_to_fit();
    }
    let mut line = Line::new(ts, text, origin.clone());
    line.truncated = truncated;
    let own = OwnFields {
        host: raw.hostname,
        app: raw.app,
        file: raw.file,
        level: raw.level,
        env: raw.env,
        label_json,
        meta_json,
    };
    if own != OwnFields::default() {
        line.own = Some(Box::new(own));
    }
    Ok(line)
}

/// `meta` as an object when it is one, or a string holding one; else as sent.
fn meta_text(meta: &RawValue) -> Result<String, String> {
    let text = meta.get();
    if text.starts_with('"') {
        if let Ok(inner) = serde_json::from_str::<String>(text) {
            if let Ok(object) = serde_json::from_str::<&RawValue>(&inner) {
                if object.get().starts_with('{') {
                    return compact(object.get(), MAX_META);
                }
            }
        }
    }
    compact(text, MAX_META)
}

/// Valid JSON text without the white space between its tokens (as a value
/// serialized again would be, with numbers and escapes kept as sent), no
/// deeper than [`MAX_DEPTH`] and no longer than `limit` bytes: it stops
/// there, so a value sent with megabytes holds no more than the limit.
fn compact(json: &str, limit: usize) -> Result<String, String> {
    let mut out = String::with_capacity(json.len().min(limit + 1));
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for c in json.chars() {
        if out.len() > limit {
            return Err(over_limit(limit));
        }
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            ' ' | '\t' | '\n' | '\r' => continue,
            '"' => in_string = true,
            '{' | '[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("nests deeper than {MAX_DEPTH} levels"));
                }
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(c);
    }
    if out.len() > limit {
        return Err(over_limit(limit));
    }
    Ok(out)
}

fn over_limit(limit: usize) -> String {
    format!("is over the limit of {limit} bytes serialized")
}

/// Timestamps run from 1970 to the end of 9999, so every hour has a printable name.
const MAX_TS: EpochMs = 253_402_300_800_000;

/// Epoch milliseconds from a client's number, which may be seconds: 1e11 ms
/// is 1973 and 1e11 s is the year 5138, so anything below it is seconds.
pub fn epoch_ms_by_magnitude(t: f64) -> EpochMs {
    let ms = if t.abs() < 1e11 { t * 1000.0 } else { t };
    ms as i64
}

/// The line's `_ts`: the client's timestamp (ms, or seconds recognised by
/// magnitude) corrected for the client's clock drift, unless it is missing or
/// further ahead than the allowed skew; then the time the request arrived.
fn resolve_timestamp(
    raw: Option<&RawValue>,
    ctx: &RequestContext,
    drift: i64,
) -> Result<EpochMs, String> {
    let number = match raw.map(RawValue::get) {
        None | Some("null") => return Ok(ctx.received),
        Some(text) if text.starts_with('"') => serde_json::from_str::<String>(text)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok()),
        Some(text) => serde_json::from_str::<f64>(text).ok(),
    };
    let Some(t) = number.filter(|t| t.is_finite()) else {
        return Err("\"timestamp\" must be epoch milliseconds (a number)".into());
    };
    let ms = epoch_ms_by_magnitude(t).saturating_add(drift);
    if !(0..MAX_TS).contains(&ms) || ms > ctx.received.saturating_add(ctx.max_skew_ms) {
        return Ok(ctx.received);
    }
    Ok(ms)
}

/// [`parse`] with memory for any number of lines.
#[cfg(test)]
fn parse_freely(json: &[u8], ctx: &RequestContext) -> Result<Vec<Line>, Rejection> {
    parse(json, ctx, &mut |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::parse_freely as parse;
    use super::*;
    use serde_json::{json, Value};

    const NOW: EpochMs = 1_764_140_245_123;

    fn ctx() -> RequestContext {
        RequestContext {
            received: NOW,
            max_skew_ms: 300_000,
            ..RequestContext::default()
        }
    }

    fn parse_json(v: Value) -> Result<Vec<Line>, Rejection> {
        parse(v.to_string().as_bytes(), &ctx())
    }

    fn malformed(r: Result<Vec<Line>, Rejection>) -> String {
        match r {
            Err(Rejection::Malformed(e)) => e.join("; "),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn lines_and_ls_are_both_accepted() {
        let a = parse_json(json!({"lines":[{"line":"x","app":"nginx"}]})).unwrap();
        let b = parse_json(json!({"e":"ls","ls":[{"line":"x","app":"nginx"}]})).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].app(), Some("nginx"));
        assert_eq!(a[0].ts, NOW);
    }

    #[test]
    fn missing_line_and_bad_json_are_400() {
        assert!(
            malformed(parse_json(json!({"lines":[{"line":"ok"},{"app":"a"}]})))
                .contains("lines[1]: \"line\" is missing")
        );
        assert!(malformed(parse(b"{not json", &ctx())).contains("not valid JSON"));
        assert!(malformed(parse_json(json!({"other":1}))).contains("no \"lines\""));
    }

    #[test]
    fn field_limits_are_enforced() {
        let long = |n| "h".repeat(n);
        assert!(parse_json(
            json!({"lines":[{"line":"x","hostname":long(256),"app":long(512),"level":long(80)}]})
        )
        .is_ok());
        assert!(malformed(parse_json(
            json!({"lines":[{"line":"x","hostname":long(257)}]})
        ))
        .contains("hostname"));
        assert!(
            malformed(parse_json(json!({"lines":[{"line":"x","app":long(513)}]}))).contains("app")
        );
        assert!(
            malformed(parse_json(json!({"lines":[{"line":"x","level":long(81)}]})))
                .contains("level")
        );
        let mut c = ctx();
        c.tags = vec!["ok".into(), long(81)];
        assert!(
            matches!(parse(br#"{"lines":[{"line":"x"}]}"#, &c), Err(Rejection::Malformed(e)) if e[0].contains("tag"))
        );
    }

    #[test]
    fn request_fields_are_checked_and_named() {
        let body = br#"{"lines":[{"line":"x"}]}"#;
        let with = |f: &dyn Fn(&mut RequestContext)| {
            let mut c = ctx();
            f(&mut c);
            parse(body, &c)
        };
        for ip in ["10.1.2.3", "::1", "fe80::1"] {
            assert!(with(&|c| c.ip = Some(ip.into())).is_ok(), "{ip}");
        }
        assert!(malformed(with(&|c| c.ip = Some("10.1.2".into()))).contains("ip parameter"));
        for mac in ["00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "001a.2b3c.4d5e"] {
            assert!(with(&|c| c.mac = Some(mac.into())).is_ok(), "{mac}");
        }
        assert!(malformed(with(&|c| c.mac = Some("00:1a:2b".into()))).contains("mac parameter"));
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| i.to_string()).collect();
        assert!(malformed(with(&|c| c.tags = many.clone())).contains("33 tags"));
        let long = |n| "f".repeat(n);
        assert!(parse_json(
            json!({"lines":[{"line":"x","file":long(MAX_FILE),"env":long(MAX_ENV)}]})
        )
        .is_ok());
        assert!(malformed(parse_json(
            json!({"lines":[{"line":"x","file":long(MAX_FILE + 1)}]})
        ))
        .contains("file"));
        assert!(malformed(parse_json(
            json!({"lines":[{"line":"x","env":long(MAX_ENV + 1)}]})
        ))
        .contains("env"));
        assert!(malformed(parse_json(
            json!({"lines":[{"line":"x","label":{"k":long(MAX_LABEL)}}]})
        ))
        .contains("label"));
    }

    #[test]
    fn lines_of_a_request_share_one_origin() {
        let mut c = ctx();
        c.tags = vec!["a".into(), "b".into()];
        c.hostname = Some("edge-3".into());
        let lines = parse(
            br#"{"lines":[{"line":"x"},{"line":"y","hostname":"own"},{"line":"z"}]}"#,
            &c,
        )
        .unwrap();
        assert!(lines
            .iter()
            .all(|l| Arc::ptr_eq(&l.origin, &lines[0].origin)));
        assert_eq!(lines[0].origin.tags, ["a", "b"]);
        assert_eq!(lines[0].host(), Some("edge-3"));
        assert_eq!(lines[1].host(), Some("own"));
        assert!(
            lines[0].own.is_none(),
            "a line with no fields of its own holds none"
        );
    }

    #[test]
    fn lines_wins_over_ls_and_other_keys_are_skipped() {
        let l = parse(br#"{"e":"ls","ls":[{"line":"from ls"}],"lines":[{"line":"from lines"}],"x":{"y":[1]}}"#, &ctx()).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].line, "from lines");
    }

    #[test]
    fn deep_meta_and_broken_text_are_refused() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let body = format!(r#"{{"lines":[{{"line":"x","meta":{deep}}}]}}"#);
        assert!(malformed(parse(body.as_bytes(), &ctx())).contains("meta nests deeper than 128"));
        let label = format!(r#"{{"lines":[{{"line":"x","label":{{"a":{deep}}}}}]}}"#);
        assert!(malformed(parse(label.as_bytes(), &ctx())).contains("label nests deeper"));
        // Within the limit, and white space gone as if serialized again.
        let fine = r#"{"lines":[{"line":"x","meta":{ "a" : [1, 2.50, "s p\"ace"] }}]}"#;
        assert_eq!(
            parse(fine.as_bytes(), &ctx()).unwrap()[0].meta_json(),
            Some(r#"{"a":[1,2.50,"s p\"ace"]}"#)
        );
        let mut bad = br#"{"lines":[{"line":"x"#.to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        bad.extend_from_slice(br#""}]}"#);
        assert!(malformed(parse(&bad, &ctx())).contains("not valid JSON"));
    }

    #[test]
    fn lines_are_charged_as_they_are_read_and_stop_when_refused() {
        let body = |line: &str| {
            let mut body = String::from(r#"{"lines":["#);
            for _ in 0..100_000 {
                body.push_str(line);
                body.push(',');
            }
            body.pop();
            body.push_str("]}");
            body
        };
        let shortest = body(r#"{"line":"x"}"#);
        let mut asked = Vec::new();
        let lines = super::parse(shortest.as_bytes(), &ctx(), &mut |held| {
            asked.push(held);
            Ok(())
        })
        .unwrap();
        assert_eq!(lines.capacity(), lines.len(), "sized once, never grown");
        let last = *asked.last().unwrap();
        let real = lines.capacity() * std::mem::size_of::<Line>()
            + lines.iter().map(Line::heap_size).sum::<usize>();
        assert_eq!(last, real, "the last charge is what the lines hold");
        assert!(
            asked.len() > 20,
            "charged as they are read: {}",
            asked.len()
        );
        assert!(asked.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            last <= shortest.len() * crate::ingest::budget::PARSED_PER_BYTE,
            "{last} bytes held for a body of {}",
            shortest.len()
        );
        // Lines with fields of their own hold more, and are charged so.
        let with_fields = body(r#"{"line":"x","app":"y"}"#);
        let mut most = 0;
        let _ = super::parse(with_fields.as_bytes(), &ctx(), &mut |held| {
            most = most.max(held);
            Ok(())
        });
        assert!(most > with_fields.len() * crate::ingest::budget::PARSED_PER_BYTE);
        // No room: reading stops at once, and says why.
        let mut calls = 0;
        let refused = super::parse(shortest.as_bytes(), &ctx(), &mut |_| {
            calls += 1;
            if calls > 2 {
                Err(Rejection::Busy)
            } else {
                Ok(())
            }
        });
        assert_eq!(refused.unwrap_err(), Rejection::Busy);
        assert_eq!(calls, 3);
    }

    #[test]
    fn meta_over_32k_is_400_and_under_is_kept() {
        let big = "m".repeat(40 * 1024);
        assert!(
            malformed(parse_json(json!({"lines":[{"line":"x","meta":{"k":big}}]})))
                .contains("meta")
        );
        let ok = parse_json(json!({"lines":[{"line":"x","meta":{"status":200}}]})).unwrap();
        assert_eq!(ok[0].meta_json(), Some(r#"{"status":200}"#));
    }

    #[test]
    fn meta_as_a_json_string_becomes_an_object() {
        let l = parse_json(json!({"lines":[{"line":"x","meta":"{\"a\":1,\"b\":[2]}"},{"line":"y","meta":"plain"}]})).unwrap();
        assert_eq!(l[0].meta_json(), Some(r#"{"a":1,"b":[2]}"#));
        assert_eq!(l[1].meta_json(), Some(r#""plain""#));
    }

    #[test]
    fn long_lines_are_cut_at_a_char_boundary() {
        let text = format!("{}é tail", "a".repeat(MAX_LINE - 1));
        let l = parse_json(json!({"lines":[{"line":text}]})).unwrap();
        assert!(l[0].truncated);
        assert_eq!(l[0].line.len(), MAX_LINE - 1);
        let exact = parse_json(json!({"lines":[{"line":"a".repeat(MAX_LINE)}]})).unwrap();
        assert!(!exact[0].truncated);
    }

    #[test]
    fn client_clocks_in_seconds_or_milliseconds() {
        assert_eq!(epoch_ms_by_magnitude(1_764_140_245.0), 1_764_140_245_000);
        assert_eq!(
            epoch_ms_by_magnitude(1_764_140_245_123.0),
            1_764_140_245_123
        );
        assert_eq!(epoch_ms_by_magnitude(1_764_140_245.5), 1_764_140_245_500);
    }

    #[test]
    fn timestamps_seconds_drift_and_skew() {
        let ts = |v: Value, c: &RequestContext| {
            parse(
                json!({"lines":[{"line":"x","timestamp":v}]})
                    .to_string()
                    .as_bytes(),
                c,
            )
            .unwrap()[0]
                .ts
        };
        let c = ctx();
        assert_eq!(ts(json!(NOW - 5000), &c), NOW - 5000);
        assert_eq!(
            ts(json!((NOW - 5000) / 1000), &c),
            (NOW - 5000) / 1000 * 1000
        );
        // Ahead of the allowed skew: not believed.
        assert_eq!(ts(json!(NOW + 3_600_000), &c), NOW);
        // The client's clock is 10 s slow: its timestamps move forward 10 s.
        let mut drift = ctx();
        drift.client_now = Some(NOW - 10_000);
        assert_eq!(ts(json!(NOW - 60_000), &drift), NOW - 50_000);
        assert!(malformed(parse_json(
            json!({"lines":[{"line":"x","timestamp":"soon"}]})
        ))
        .contains("timestamp"));
    }

    #[test]
    fn gzip_bodies_are_checked() {
        assert!(matches!(
            gunzip(b"plain text"),
            Err(Rejection::Malformed(_))
        ));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &vec![b' '; MAX_BODY + 10]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(matches!(gunzip(&bomb), Err(Rejection::TooLarge(_))));
        let text = vec![b'x'; 3 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &text).unwrap();
        let body = gz.finish().unwrap();
        assert_eq!(Gunzip::said_size(&body), text.len());
        assert_eq!(gunzip(&body).unwrap(), text, "read in steps, whole");
    }

    #[test]
    fn an_absurd_client_clock_is_ignored() {
        for client_now in [i64::MIN, -1, MAX_TS, i64::MAX] {
            let c = RequestContext {
                client_now: Some(client_now),
                ..ctx()
            };
            let lines =
                parse(br#"{"lines":[{"line":"x","timestamp":1764140000000}]}"#, &c).unwrap();
            assert_eq!(lines[0].ts, 1_764_140_000_000, "now={client_now}");
        }
    }
}

/// Fuzzing the ingest parser (`fuzz_` tests also run in a debug build, with
/// overflow checks; `PROPTEST_CASES` sets how many inputs each tries).
#[cfg(test)]
mod fuzz {
    use super::parse_freely as parse;
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const NOW: EpochMs = 1_764_140_245_123;

    /// What every accepted line must satisfy, whatever came in.
    fn check(lines: &[Line], ctx: &RequestContext) {
        for l in lines {
            assert!(l.line.len() <= MAX_LINE, "line of {} bytes", l.line.len());
            assert!((0..MAX_TS).contains(&l.ts), "ts {}", l.ts);
            assert!(
                l.ts <= ctx
                    .received
                    .saturating_add(ctx.max_skew_ms)
                    .max(ctx.received),
                "ts {} ahead of the allowed skew",
                l.ts
            );
            assert!(l.meta_json().is_none_or(|m| m.len() <= MAX_META));
            assert!(l.app().is_none_or(|a| a.chars().count() <= MAX_APP));
        }
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            prop_oneof![
                Just(1e300),
                Just(-1e300),
                Just(1.5e11),
                Just(9.99e14),
                Just(2.6e14)
            ]
            .prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::from),
            "[0-9]{1,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A line object whose known fields hold anything at all.
    fn any_line() -> impl Strategy<Value = Value> {
        const FIELDS: [&str; 9] = [
            "line",
            "timestamp",
            "app",
            "level",
            "file",
            "env",
            "hostname",
            "meta",
            "label",
        ];
        prop::collection::vec((prop::sample::select(&FIELDS[..]), any_json()), 0..8).prop_map(
            |pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        )
    }

    fn any_ctx() -> impl Strategy<Value = RequestContext> {
        (
            prop::option::of(prop_oneof![
                any::<i64>(),
                Just(i64::MIN),
                Just(i64::MAX),
                0..MAX_TS
            ]),
            prop::option::of(".{0,300}"),
            prop::collection::vec(".{0,90}", 0..3),
            0..MAX_TS,
            prop_oneof![Just(0i64), Just(300_000), any::<i64>()],
        )
            .prop_map(|(client_now, hostname, tags, received, max_skew_ms)| {
                RequestContext {
                    hostname,
                    client_now,
                    tags,
                    received,
                    max_skew_ms,
                    ..RequestContext::default()
                }
            })
    }

    proptest! {
        #[test]
        fn fuzz_ingest_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), gzip: bool) {
            let ctx = RequestContext { received: NOW, max_skew_ms: 300_000, ..RequestContext::default() };
            let json = if gzip { gunzip(&bytes) } else { Ok(bytes) };
            if let Ok(json) = json {
                if let Ok(lines) = parse(&json, &ctx) {
                    check(&lines, &ctx);
                }
            }
        }

        #[test]
        fn fuzz_ingest_bodies_give_valid_lines_or_a_named_error(
            lines in prop::collection::vec(any_line(), 0..6),
            ls: bool,
            ctx in any_ctx(),
        ) {
            let body = if ls { json!({"e": "ls", "ls": lines}) } else { json!({"lines": lines}) };
            match parse(body.to_string().as_bytes(), &ctx) {
                Ok(lines) => check(&lines, &ctx),
                Err(Rejection::Malformed(errors)) => {
                    prop_assert!(!errors.is_empty() && errors.len() <= MAX_ERRORS);
                    prop_assert!(errors.iter().all(|e| !e.is_empty()));
                }
                Err(Rejection::TooLarge(_) | Rejection::Busy) => {}
            }
        }
    }
}
