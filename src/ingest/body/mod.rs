//! Turning an ingest request into lines: gzip, JSON, the limits table and the
//! timestamp rules of docs/FORMAT.md §3–4. Everything here is checked before a single
//! line goes to the spool, so a bad request stores nothing.
//!
//! (Over 600 lines: the body's visitors, the conversion of one line and the
//! limits each field is held to read best side by side; one line object's
//! fields and where its text is kept, gunzip, the tests and the fuzzing live
//! beside it.)

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;

use crate::clock::EpochMs;
use crate::line::{Line, Origin, OwnFields};

mod gunzip;
mod object;
#[cfg(test)]
use gunzip::gunzip;
pub use gunzip::Gunzip;
use object::{InLine, LineSeed, Stamp, Text, Texts};

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
/// A line object of a usual length, with the comma after it: a body is
/// first thought to hold its length over this many lines.
const USUAL_LINE_JSON: usize = 256;
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

/// The origins a request's lines point at: the query's, and the query's with
/// a line's own host, app, file or level in place. Lines that give the same
/// ones (most lines of a request give the same app) share one, so those
/// fields cost nothing per line, in memory or in the spool.
struct Origins {
    request: Arc<Origin>,
    /// Recent ones first; past [`MAX_DERIVED`] lines keep their fields themselves.
    derived: Vec<Arc<Origin>>,
}

/// Different origins one request's lines may make: enough for the apps and
/// levels of a batch, few enough that a block finds its own quickly.
const MAX_DERIVED: usize = 16;

impl Origins {
    /// The origin for a line with these fields of its own, if it can share one.
    fn with(
        &mut self,
        host: Option<&str>,
        app: Option<&str>,
        file: Option<&str>,
        level: Option<&str>,
    ) -> Option<Arc<Origin>> {
        if host.is_none() && app.is_none() && file.is_none() && level.is_none() {
            return Some(self.request.clone());
        }
        let base = &self.request;
        let field = |own: Option<&str>, of_request: &Option<String>| {
            own.map(str::to_owned).or_else(|| of_request.clone())
        };
        let same = |o: &Origin| {
            o.host.as_deref() == host.or(base.host.as_deref())
                && o.app.as_deref() == app.or(base.app.as_deref())
                && o.file.as_deref() == file.or(base.file.as_deref())
                && o.level.as_deref() == level.or(base.level.as_deref())
        };
        if let Some(at) = self.derived.iter().position(|o| same(o)) {
            self.derived[..=at].rotate_right(1);
            return Some(self.derived[0].clone());
        }
        if self.derived.len() == MAX_DERIVED {
            return None;
        }
        let origin = Arc::new(Origin {
            host: field(host, &base.host),
            app: field(app, &base.app),
            file: field(file, &base.file),
            level: field(level, &base.level),
            ..(**base).clone()
        });
        self.derived.insert(0, origin.clone());
        Some(origin)
    }

    /// Memory the derived origins hold.
    fn heap_size(&self) -> usize {
        self.derived
            .iter()
            .map(|o| std::mem::size_of::<Origin>() + o.stored_size())
            .sum()
    }
}

/// JSON nested deeper than this is refused: archive readers (serde_json,
/// `larch restore` among them) stop at 128 levels.
pub const MAX_DEPTH: usize = 128;

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

/// Lines read from a body, and whether their texts point into it.
pub struct Parsed {
    pub lines: Vec<Line>,
    /// Some texts are slices of the body, which lives as long as they do.
    pub borrows_body: bool,
}

/// Parses and checks a JSON body into lines ready for the spool. The lines
/// are built as the array is read, each pointing at one shared [`Origin`]:
/// memory is the lines' own, never a copy of the request's fields per line,
/// and `reserve` is asked for it as it grows.
///
/// A line's text is a slice of the body where it holds no escapes, and else
/// a slice of one buffer the request's texts are unescaped into, so no line
/// holds a string of its own until it is stored: allocating a string per line
/// on one thread and freeing it on the committer's was a good part of what a
/// line cost. An escaped text goes from serde_json's scratch space straight
/// into that buffer, without a string between.
pub fn parse(
    json: &Bytes,
    ctx: &RequestContext,
    reserve: Reserve<'_>,
) -> Result<Parsed, Rejection> {
    let mut errors = Vec::new();
    let origin = origin_of(ctx, &mut errors);
    if !errors.is_empty() {
        return Err(Rejection::Malformed(errors));
    }
    // A client clock outside the years larch can name is not believed at all.
    let drift = ctx
        .client_now
        .filter(|client| (0..MAX_TS).contains(client))
        .map_or(0, |client| ctx.received.saturating_sub(client));
    // Sized for lines of a usual length, and grown if they are shorter, up
    // to the most lines the body can hold: counting the lines first took a
    // thirtieth of a line's CPU.
    let most_lines = json.len() / MIN_LINE_JSON + 1;
    let capacity = json.len() / USUAL_LINE_JSON + 1;
    let held = capacity * std::mem::size_of::<Line>();
    reserve(held)?;
    // One check of the whole body spares the parser one per string, and
    // lets lines be slices of it. A body that is not UTF-8 is read as bytes,
    // for serde_json to name the bad byte (or to skip it where it is ignored).
    let body = ByteString::try_from(json.clone()).ok();
    let mut reader = Reader {
        ctx,
        origins: Origins {
            request: Arc::new(origin),
            derived: Vec::new(),
        },
        drift,
        lines: Vec::with_capacity(capacity),
        most_lines,
        texts: Texts {
            body: body.clone(),
            unescaped: Vec::new(),
            placed: Vec::new(),
            borrows_body: false,
            lines_guess: capacity,
        },
        errors: Vec::new(),
        found: false,
        held,
        reserve,
        refused: None,
    };
    let read = match &body {
        Some(text) => read_whole(serde_json::Deserializer::from_str(text), &mut reader),
        None => read_whole(serde_json::Deserializer::from_slice(json), &mut reader),
    };
    if let Some(refused) = reader.refused {
        return Err(refused);
    }
    let holding = reader.holding() + reader.origins.heap_size();
    (reader.reserve)(holding)?;
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
        let mut lines = reader.lines;
        let borrows_body = reader.texts.borrows_body;
        reader.texts.place(&mut lines);
        Ok(Parsed {
            lines,
            borrows_body,
        })
    } else {
        reader.errors.truncate(MAX_ERRORS);
        Err(Rejection::Malformed(reader.errors))
    }
}

/// Reads the body object into `reader`, and checks nothing follows it.
fn read_whole<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    reader: &mut Reader<'_>,
) -> serde_json::Result<()> {
    BodySeed(reader).deserialize(&mut de)?;
    de.end()
}

/// What reading a body has produced so far.
struct Reader<'c> {
    ctx: &'c RequestContext,
    origins: Origins,
    drift: i64,
    lines: Vec<Line>,
    /// No body of this length holds more lines than this.
    most_lines: usize,
    texts: Texts,
    errors: Vec<String>,
    /// A `lines` (or `ls`) array was read.
    found: bool,
    /// Memory the lines hold so far.
    held: usize,
    reserve: Reserve<'c>,
    /// Why reading stopped early, if `reserve` said no.
    refused: Option<Rejection>,
}

impl Reader<'_> {
    /// The guess fell short: room for twice the lines, or as many as the
    /// body can still hold, charged as it is taken.
    fn grow_lines(&mut self) {
        let had = self.lines.capacity();
        let more = had.max(4).min(self.most_lines.saturating_sub(had)).max(1);
        self.lines.reserve_exact(more);
        self.held += (self.lines.capacity() - had) * std::mem::size_of::<Line>();
    }

    /// Memory the lines hold so far: the texts that are not slices of the
    /// body live in one buffer, counted as large as it has grown.
    fn holding(&self) -> usize {
        self.held + self.texts.heap_size()
    }
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
            self.0.texts.placed.clear();
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
        let mut raw = InLine::default();
        while reader.errors.len() < MAX_ERRORS {
            let seed = LineSeed {
                texts: &mut reader.texts,
                into: &mut raw,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            if i % RESERVE_EVERY == RESERVE_EVERY - 1 {
                let holding = reader.holding();
                if let Err(refused) = (reader.reserve)(holding) {
                    reader.refused = Some(refused);
                    return Err(serde::de::Error::custom("no memory for more lines"));
                }
            }
            let at = reader.lines.len();
            match convert(
                &mut raw,
                reader.ctx,
                reader.drift,
                &mut reader.origins,
                (&mut reader.texts, at),
            ) {
                Ok(line) => {
                    if reader.lines.len() == reader.lines.capacity() {
                        reader.grow_lines();
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
    // No more characters than bytes: most values need no counting.
    if let Some(v) = value.filter(|v| v.len() > max) {
        let n = v.chars().count();
        if n > max {
            errors.push(format!("{what} is {n} characters, over the limit of {max}"));
        }
    }
}

fn convert(
    raw: &mut InLine<'_>,
    ctx: &RequestContext,
    drift: i64,
    origins: &mut Origins,
    (texts, at): (&mut Texts, usize),
) -> Result<Line, Vec<String>> {
    let mut errors = Vec::new();
    let Some(kept) = raw.line.take() else {
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
        texts.release(kept);
        return Err(errors);
    }
    let text = texts.text(&kept);
    let truncated = text.len() > MAX_LINE;
    let mut len = text.len();
    if truncated {
        len = MAX_LINE;
        while !text.is_char_boundary(len) {
            len -= 1;
        }
    }
    let text = texts.hold(at, kept, len);
    let owned = |field: Option<Text<'_>>| field.map(|t| t.0.into_owned());
    let shared = origins.with(
        raw.hostname.as_deref(),
        raw.app.as_deref(),
        raw.file.as_deref(),
        raw.level.as_deref(),
    );
    let (origin, own) = match shared {
        Some(origin) => (
            origin,
            OwnFields {
                env: owned(raw.env.take()),
                label_json,
                meta_json,
                ..OwnFields::default()
            },
        ),
        None => (
            origins.request.clone(),
            OwnFields {
                host: owned(raw.hostname.take()),
                app: owned(raw.app.take()),
                file: owned(raw.file.take()),
                level: owned(raw.level.take()),
                env: owned(raw.env.take()),
                label_json,
                meta_json,
            },
        ),
    };
    let mut line = Line::new(ts, text, origin);
    line.truncated = truncated;
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
    sent: Option<Stamp>,
    ctx: &RequestContext,
    drift: i64,
) -> Result<EpochMs, String> {
    let t = match sent {
        None => return Ok(ctx.received),
        Some(Stamp::Number(t)) if t.is_finite() => t,
        Some(_) => return Err("\"timestamp\" must be epoch milliseconds (a number)".into()),
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
    parse(&Bytes::copy_from_slice(json), ctx, &mut |_| Ok(())).map(|parsed| parsed.lines)
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
