//! One line object of a request body: the fields larch reads from it, and
//! where its text is kept. A text with no escapes stays a slice of the body;
//! an escaped one is unescaped straight into one buffer the whole request
//! shares, so no line's text is a string of its own.

use std::borrow::Cow;
use std::fmt;

use bytestring::ByteString;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::line::Line;

/// One line object as sent, its strings borrowed from the body where they
/// hold no escapes; the line's text is kept as [`Texts`] says. The JSON-valued
/// fields stay the text they were sent as: built into values, a flat array of
/// a few bytes per element would take tens of times the body's size.
#[derive(Default)]
pub(super) struct InLine<'a> {
    pub line: Option<Kept<'a>>,
    pub timestamp: Option<Stamp>,
    pub app: Option<Text<'a>>,
    pub level: Option<Text<'a>>,
    pub file: Option<Text<'a>>,
    pub env: Option<Text<'a>>,
    pub hostname: Option<Text<'a>>,
    pub meta: Option<&'a RawValue>,
    pub label: Option<&'a RawValue>,
}

/// The keys of a line object larch reads; any other is skipped.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Line,
    Timestamp,
    App,
    Level,
    File,
    Env,
    Hostname,
    Meta,
    Label,
    #[serde(other)]
    Other,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Line => "line",
            Key::Timestamp => "timestamp",
            Key::App => "app",
            Key::Level => "level",
            Key::File => "file",
            Key::Env => "env",
            Key::Hostname => "hostname",
            Key::Meta => "meta",
            Key::Label => "label",
            Key::Other => "other",
        }
    }
}

/// Reads one line object, its text kept in [`Texts`] as it is read: an
/// escaped text is unescaped straight into the request's buffer, never into
/// a string of its own. The fields go into `into`, one slot the whole
/// array reuses: handed back by value, a line object of a dozen fields was
/// copied on its way through each layer of the parser.
pub(super) struct LineSeed<'r, 'de> {
    pub texts: &'r mut Texts,
    pub into: &'r mut InLine<'de>,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a line object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Each key read once, `null` or not, as serde's derive has it.
        let mut seen = 0u16;
        let read = self.into;
        *read = InLine::default();
        while let Some(key) = map.next_key::<Key>()? {
            if key != Key::Other {
                let bit = 1 << key as u16;
                if seen & bit != 0 {
                    return Err(serde::de::Error::duplicate_field(key.name()));
                }
                seen |= bit;
            }
            match key {
                Key::Line => read.line = map.next_value_seed(KeepSeed(&mut *self.texts))?,
                Key::Timestamp => read.timestamp = map.next_value()?,
                Key::App => read.app = map.next_value()?,
                Key::Level => read.level = map.next_value()?,
                Key::File => read.file = map.next_value()?,
                Key::Env => read.env = map.next_value()?,
                Key::Hostname => read.hostname = map.next_value()?,
                Key::Meta => read.meta = map.next_value()?,
                Key::Label => read.label = map.next_value()?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A line's `timestamp` as sent (absent or `null` is `None`), read as the
/// number it is in one pass: kept as JSON text and parsed again, it cost
/// a twentieth of a line's CPU.
#[derive(Clone, Copy)]
pub(super) enum Stamp {
    /// A number, or a string holding one.
    Number(f64),
    /// Anything else: refused with the line's other problems.
    NotANumber,
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StampVisitor)
    }
}

struct StampVisitor;

impl<'de> Visitor<'de> for StampVisitor {
    type Value = Stamp;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Stamp, E> {
        Ok(Stamp::Number(v as f64))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Stamp, E> {
        Ok(Stamp::Number(v as f64))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Stamp, E> {
        Ok(Stamp::Number(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Stamp, E> {
        Ok(v.trim()
            .parse::<f64>()
            .map_or(Stamp::NotANumber, Stamp::Number))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Stamp, E> {
        Ok(Stamp::NotANumber)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Stamp, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Stamp::NotANumber)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Stamp, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Stamp::NotANumber)
    }
}

/// A line's text (or `null`), kept in [`Texts`] as it is read.
struct KeepSeed<'r>(&'r mut Texts);

impl<'de> DeserializeSeed<'de> for KeepSeed<'_> {
    type Value = Option<Kept<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for KeepSeed<'_> {
    type Value = Option<Kept<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(self.0.keep_borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(self.0.keep_unescaped(v)))
    }
}

/// A JSON string borrowed from the body, or unescaped into a copy when it
/// holds escapes. (serde's own `Cow<str>` always copies inside an `Option`.)
pub(super) struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Where the lines' texts are kept while the body is read.
pub(super) struct Texts {
    /// The body, when it is UTF-8: texts without escapes are slices of it.
    pub body: Option<ByteString>,
    /// Texts that held escapes (or of a body read as bytes), unescaped one
    /// after the other into chunks of [`CHUNK`] bytes (or of one text's
    /// length, when it is longer). A full chunk stays where it is, so no text
    /// is copied again as more come (growing one buffer cost a twentieth of
    /// a line's CPU), and at most a chunk's room goes unused.
    pub unescaped: Vec<String>,
    /// Which line's text is where in `unescaped` (chunk, bytes), given once
    /// reading is done.
    pub placed: Vec<(usize, usize, std::ops::Range<usize>)>,
    pub borrows_body: bool,
    /// About how many lines the body holds, for `placed`'s first room.
    pub lines_guess: usize,
}

/// Room for unescaped texts is made this much at a time.
const CHUNK: usize = 64 * 1024;

/// Where a line's text was put as its object was read.
pub(super) enum Kept<'a> {
    /// A slice of the body (when it is UTF-8), or empty.
    Body(&'a str),
    /// `Texts::unescaped[chunk][range]`.
    Unescaped(usize, std::ops::Range<usize>),
}

impl Texts {
    /// A text the parser found in the body as it lies (no escapes).
    fn keep_borrowed<'a>(&mut self, text: &'a str) -> Kept<'a> {
        let within = self
            .body
            .as_ref()
            .is_some_and(|body| body.as_bytes().as_ptr_range().contains(&text.as_ptr()));
        if within || text.is_empty() {
            Kept::Body(text)
        } else {
            self.keep_unescaped(text)
        }
    }

    /// A text the parser unescaped (or found in a body read as bytes).
    fn keep_unescaped<'a>(&mut self, text: &str) -> Kept<'a> {
        let fits = self
            .unescaped
            .last()
            .is_some_and(|chunk| chunk.capacity() - chunk.len() >= text.len());
        if !fits {
            self.unescaped
                .push(String::with_capacity(CHUNK.max(text.len())));
        }
        let at = self.unescaped.len() - 1;
        let chunk = &mut self.unescaped[at];
        let start = chunk.len();
        chunk.push_str(text);
        Kept::Unescaped(at, start..chunk.len())
    }

    pub fn text<'k>(&'k self, kept: &'k Kept<'_>) -> &'k str {
        match kept {
            Kept::Body(text) => text,
            Kept::Unescaped(chunk, range) => &self.unescaped[*chunk][range.clone()],
        }
    }

    /// The first `len` bytes of a kept text become line number `at`'s: a
    /// slice of the body, or of `unescaped` once [`Self::place`] gives it.
    pub fn hold(&mut self, at: usize, kept: Kept<'_>, len: usize) -> ByteString {
        match kept {
            Kept::Body(text) => match &self.body {
                Some(body) if !text.is_empty() => {
                    self.borrows_body = true;
                    body.slice_ref(&text[..len])
                }
                _ => ByteString::new(),
            },
            Kept::Unescaped(chunk, range) => {
                let end = range.start + len;
                // A cut text was the last one put there: its rest is given back.
                self.give_back(chunk, end..range.end);
                if self.placed.capacity() == 0 {
                    self.placed.reserve(self.lines_guess);
                }
                self.placed.push((at, chunk, range.start..end));
                ByteString::new()
            }
        }
    }

    /// A kept text no line takes (its line was refused) gives its room back.
    pub fn release(&mut self, kept: Kept<'_>) {
        if let Kept::Unescaped(chunk, range) = kept {
            self.give_back(chunk, range);
        }
    }

    /// Drops the bytes of `range` from a chunk if they are its last.
    fn give_back(&mut self, chunk: usize, range: std::ops::Range<usize>) {
        if let Some(chunk) = self.unescaped.get_mut(chunk) {
            if range.end == chunk.len() {
                chunk.truncate(range.start);
            }
        }
    }

    /// Memory the texts hold beyond the body.
    pub fn heap_size(&self) -> usize {
        self.unescaped.iter().map(String::capacity).sum::<usize>()
            + self.placed.capacity() * std::mem::size_of::<(usize, usize, std::ops::Range<usize>)>()
    }

    /// Gives the lines kept in `unescaped` their texts.
    pub fn place(self, lines: &mut [Line]) {
        let chunks: Vec<ByteString> = self.unescaped.into_iter().map(ByteString::from).collect();
        for (at, chunk, range) in self.placed {
            if let (Some(line), Some(chunk)) = (lines.get_mut(at), chunks.get(chunk)) {
                line.line = chunk.slice_ref(&chunk[range]);
            }
        }
    }
}
