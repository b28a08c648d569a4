//! Cutting a syslog TCP stream into messages (RFC 6587).
//!
//! Senders frame messages one of two ways on the same port: octet counting
//! (`123 <34>1 2026-…`, the length in decimal, a space, then exactly that many
//! bytes; `logger --octet-count`, rsyslog's `TCP_Framing="octet-counted"`) or
//! a newline after each message (`logger` without it, most appliances). A
//! frame that begins with a digit 1–9 is octet-counted, anything else runs to
//! the next newline, as rsyslog and syslog-ng tell them apart.
//!
//! Every byte the sender sent lands in some frame: a message longer than the
//! limit keeps its first `max_message` bytes and is marked cut, the rest is
//! skipped; a count that is not a number makes its frame a newline-framed
//! one; a stream that ends mid-frame (the sender stopped, or was cut off by
//! the timeout) gives what arrived, marked partial. Nothing here allocates
//! more than the limit per connection.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// The most digits an octet count may have (a count past 9,999,999,999 is no
/// syslog message; its frame is read as newline-framed instead).
const MAX_COUNT_DIGITS: usize = 10;

/// One message as the sender framed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub bytes: BytesMut,
    /// The message was longer than the limit; `bytes` is its beginning.
    pub cut: bool,
    /// The stream ended before the message did.
    pub partial: bool,
}

/// What the decoder is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a frame.
    Start,
    /// In an octet-counted message with this many bytes still to come.
    Counted { left: usize },
    /// In a newline-framed message.
    Line,
}

/// The RFC 6587 decoder for one connection.
#[derive(Debug)]
pub struct Frames {
    max_message: usize,
    state: State,
    /// The kept bytes of the message being read.
    held: BytesMut,
    /// The message being read was cut at the limit.
    cut: bool,
}

impl Frames {
    /// A decoder that keeps at most `max_message` bytes of each message.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message: max_message.max(1),
            state: State::Start,
            held: BytesMut::new(),
            cut: false,
        }
    }

    fn finish(&mut self, partial: bool) -> Frame {
        self.state = State::Start;
        Frame {
            bytes: std::mem::take(&mut self.held),
            cut: std::mem::take(&mut self.cut),
            partial,
        }
    }

    /// An octet count at the start of `src`: `Some(Some((count, header)))`
    /// when complete, `Some(None)` when more bytes are needed, `None` when the
    /// frame is not octet-counted.
    fn count(src: &[u8]) -> Option<Option<(usize, usize)>> {
        if !matches!(src.first(), Some(b'1'..=b'9')) {
            return None;
        }
        let digits = src.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > MAX_COUNT_DIGITS {
            return None;
        }
        match src.get(digits) {
            None => Some(None),
            Some(b' ') => {
                let text = std::str::from_utf8(&src[..digits]).ok()?;
                Some(Some((text.parse().ok()?, digits + 1)))
            }
            Some(_) => None,
        }
    }

    /// Moves `n` bytes (at most what `src` holds) out of `src` into the
    /// message, keeping no more than the limit; says how many were moved.
    fn take(&mut self, src: &mut BytesMut, n: usize) -> usize {
        let n = n.min(src.len());
        let keep = n.min(self.max_message.saturating_sub(self.held.len()));
        self.held.extend_from_slice(&src[..keep]);
        self.cut |= keep < n;
        src.advance(n);
        n
    }
}

impl Decoder for Frames {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if self.state == State::Start {
            match Self::count(src) {
                _ if src.is_empty() => return Ok(None),
                Some(None) => return Ok(None),
                Some(Some((count, header))) => {
                    src.advance(header);
                    self.state = State::Counted { left: count };
                }
                None => self.state = State::Line,
            }
        }
        match self.state {
            State::Start => Ok(None),
            State::Counted { left } => {
                let left = left - self.take(src, left);
                if left == 0 {
                    Ok(Some(self.finish(false)))
                } else {
                    self.state = State::Counted { left };
                    Ok(None)
                }
            }
            State::Line => match src.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.take(src, end);
                    src.advance(1);
                    Ok(Some(self.finish(false)))
                }
                None => {
                    let all = src.len();
                    self.take(src, all);
                    Ok(None)
                }
            },
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        // What is left is a message the stream ended in: an octet count
        // without its space, or a message without its end.
        let all = src.len();
        self.take(src, all);
        if self.state == State::Start && self.held.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.finish(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame `input` gives, read `chunk` bytes at a time, then at its end.
    fn frames(max: usize, input: &[u8], chunk: usize) -> Vec<(String, bool, bool)> {
        let mut decoder = Frames::new(max);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            src.extend_from_slice(piece);
            while let Some(f) = decoder.decode(&mut src).unwrap() {
                out.push(f);
            }
        }
        while let Some(f) = decoder.decode_eof(&mut src).unwrap() {
            out.push(f);
        }
        out.into_iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&f.bytes).into_owned(),
                    f.cut,
                    f.partial,
                )
            })
            .collect()
    }

    fn whole(text: &str) -> (String, bool, bool) {
        (text.to_owned(), false, false)
    }

    #[test]
    fn octet_counted_and_newline_framed_messages_mix_on_one_stream() {
        let input = b"9 <13>hello10 <13>second<13>by line\n\n7 <13>a\nb";
        for chunk in [1, 2, 3, 5, 64] {
            assert_eq!(
                frames(1024, input, chunk),
                vec![
                    whole("<13>hello"),
                    whole("<13>second"),
                    whole("<13>by line"),
                    whole(""),
                    whole("<13>a\nb"),
                ],
                "read {chunk} bytes at a time"
            );
        }
    }

    #[test]
    fn a_line_that_starts_with_digits_but_no_count_is_newline_framed() {
        assert_eq!(
            frames(1024, b"2026-12-04 12:00 disk full\n12345678901 x\n", 4),
            vec![whole("2026-12-04 12:00 disk full"), whole("12345678901 x")]
        );
    }

    #[test]
    fn a_message_past_the_limit_keeps_its_beginning_and_the_next_one_is_whole() {
        let input = b"20 <13>0123456789abcdef<13>long line here\n<13>ok\n";
        assert_eq!(
            frames(8, input, 3),
            vec![
                ("<13>0123".to_owned(), true, false),
                ("<13>long".to_owned(), true, false),
                whole("<13>ok"),
            ]
        );
    }

    #[test]
    fn a_stream_that_ends_mid_message_gives_what_arrived_marked_partial() {
        assert_eq!(
            frames(1024, b"30 <13>only part", 4),
            vec![("<13>only part".to_owned(), false, true)]
        );
        assert_eq!(
            frames(1024, b"<13>no newline", 4),
            vec![("<13>no newline".to_owned(), false, true)]
        );
        assert_eq!(frames(1024, b"12", 4), vec![("12".to_owned(), false, true)]);
        assert_eq!(frames(1024, b"", 4), vec![]);
    }

    #[test]
    fn fuzz_frames_of_any_stream_are_bounded_and_do_not_depend_on_reads() {
        use proptest::prelude::*;
        let bytes = proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b' '), b'0'..=b'9', any::<u8>()],
            0..400,
        );
        proptest!(|(input in bytes, max in 1usize..64, chunk in 1usize..50)| {
            let mut decoder = Frames::new(max);
            let mut src = BytesMut::from(&input[..]);
            let mut whole = Vec::new();
            while let Some(f) = decoder.decode(&mut src).unwrap() {
                whole.push(f);
            }
            while let Some(f) = decoder.decode_eof(&mut src).unwrap() {
                whole.push(f);
            }
            let kept: usize = whole.iter().map(|f| f.bytes.len()).sum();
            prop_assert!(whole.iter().all(|f| f.bytes.len() <= max));
            prop_assert!(kept <= input.len());
            // However the bytes arrive, the same messages come out.
            let by_pieces = frames(max, &input, chunk);
            let as_text: Vec<_> = whole
                .iter()
                .map(|f| (String::from_utf8_lossy(&f.bytes).into_owned(), f.cut, f.partial))
                .collect();
            prop_assert_eq!(by_pieces, as_text);
        });
    }
}
