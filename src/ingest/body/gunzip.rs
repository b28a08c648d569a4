//! `Content-Encoding: gzip`, undone step by step within the body limit.

use std::io::Read;

use super::{Rejection, MAX_BODY};

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

    /// The text, holding no room beyond itself: lines may keep slices of it
    /// until they are stored, and only its length is counted while they do.
    pub fn into_text(mut self) -> Vec<u8> {
        self.out.shrink_to_fit();
        self.out
    }
}

/// A whole body through [`Gunzip`], in the listener's steps.
#[cfg(test)]
pub(super) fn gunzip(raw: &[u8]) -> Result<Vec<u8>, Rejection> {
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
