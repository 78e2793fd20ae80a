//! Wire primitives shared by every packet: variable byte integers, two-byte integers, length-prefixed UTF-8
//! strings and binary data, plus the fixed header.
//!
//! Decoding reads from a [`Reader`] that owns a `Bytes` view of one packet body, so binary fields and payloads
//! come out as zero-copy slices of the socket buffer. Encoding writes into a `BytesMut` whose capacity the
//! caller reserved once from the precomputed length: the `*_len` helpers here must agree byte for byte with the
//! `put_*` writers, or the remaining length on the wire would lie.
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

/// Largest value a four-byte variable byte integer can carry (remaining length, property lengths, subscription
/// identifiers).
pub(crate) const MAX_VARINT: u32 = 268_435_455;

/// Largest length a two-byte length prefix can carry.
pub(crate) const MAX_U16_LEN: usize = u16::MAX as usize;

/// Bytes needed to encode `v` as a variable byte integer (values above the maximum are clamped, see
/// [`put_varint`]).
#[inline]
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer. Values above [`MAX_VARINT`] cannot be represented; they are clamped so that
/// the output keeps the length [`varint_len`] promised (a debug build panics instead, to catch the caller).
#[inline]
pub(crate) fn put_varint(out: &mut BytesMut, v: usize) {
    debug_assert!(
        v <= MAX_VARINT as usize,
        "variable byte integer {v} out of range"
    );
    let mut v = v.min(MAX_VARINT as usize);
    loop {
        let mut byte = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Parses a variable byte integer at the front of `buf` without consuming it. `Ok(None)` means the integer is
/// not complete yet; a fourth byte that still has its continuation bit set is malformed (the spec caps the
/// encoding at four bytes). Non-minimal encodings are accepted: the rule binds senders, and rejecting them buys
/// nothing.
#[inline]
pub(crate) fn parse_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// Encoded size of a UTF-8 string field (two-byte length prefix + bytes, clamped like [`put_str`]).
#[inline]
pub(crate) fn str_len(s: &str) -> usize {
    2 + s.len().min(MAX_U16_LEN)
}

/// Encoded size of a binary data field.
#[inline]
pub(crate) fn binary_len(b: &[u8]) -> usize {
    2 + b.len().min(MAX_U16_LEN)
}

/// Writes a length-prefixed UTF-8 string. Strings longer than 65535 bytes cannot be represented: callers must
/// not produce them (a debug build panics); a release build writes only the first 65535 bytes so the packet
/// framing stays intact and the peer, not our stream, is what rejects it.
#[inline]
pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}

/// Writes length-prefixed binary data (same length rule as [`put_str`]).
#[inline]
pub(crate) fn put_binary(out: &mut BytesMut, b: &[u8]) {
    debug_assert!(
        b.len() <= MAX_U16_LEN,
        "string/binary field of {} bytes",
        b.len()
    );
    let n = b.len().min(MAX_U16_LEN);
    out.put_u16(n as u16);
    out.put_slice(&b[..n]);
}

/// Reserves room for a whole packet once, then writes its fixed header. `remaining` must be the exact body
/// length that follows.
#[inline]
pub(crate) fn put_fixed_header(out: &mut BytesMut, first_byte: u8, remaining: usize) {
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first_byte);
    put_varint(out, remaining);
}

/// Total encoded size of a packet whose body is `remaining` bytes long.
#[inline]
pub(crate) fn packet_len(remaining: usize) -> usize {
    1 + varint_len(remaining) + remaining
}

/// Checks that `bytes` is a well-formed MQTT UTF-8 string: valid UTF-8 (which excludes encoded surrogates) and
/// no U+0000. Both are malformed packets per the spec. The control characters the spec only discourages are let
/// through.
#[inline]
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(bytes)
        .map_err(|_| DecodeError::malformed("string is not well-formed UTF-8"))?;
    if bytes.contains(&0) {
        return Err(DecodeError::malformed("string contains U+0000"));
    }
    Ok(s)
}

/// A cursor over one packet body. Every read checks the length first, so a short packet is a malformed-packet
/// error, never a panic.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    /// Wraps a packet body.
    #[inline]
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    /// True when the body has been read completely.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline]
    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::malformed(format!(
                "packet ends inside {what} (needs {n} bytes, {} left)",
                self.buf.len()
            )))
        } else {
            Ok(())
        }
    }

    /// Reads one byte.
    #[inline]
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    /// Reads a big-endian two-byte integer.
    #[inline]
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    /// Reads a big-endian four-byte integer.
    #[inline]
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    /// Reads a variable byte integer; running out of bytes in the middle is malformed here (the body is
    /// complete, unlike the fixed header's stream).
    #[inline]
    pub(crate) fn varint(&mut self, what: &str) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf)? {
            Some((v, n)) => {
                self.buf.advance(n);
                Ok(v)
            }
            None => Err(DecodeError::malformed(format!(
                "packet ends inside {what} (variable byte integer)"
            ))),
        }
    }

    /// Takes the next `n` bytes as a zero-copy slice.
    #[inline]
    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// Reads length-prefixed binary data as a zero-copy slice.
    #[inline]
    pub(crate) fn binary(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let n = self.u16(what)? as usize;
        self.bytes(n, what)
    }

    /// Reads a length-prefixed UTF-8 string and hands the validated `&str` to `f`, so the caller decides the
    /// one allocation (`String`, `Arc<str>`) or none at all.
    #[inline]
    pub(crate) fn str_with<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&str) -> T,
    ) -> Result<T, DecodeError> {
        let n = self.u16(what)? as usize;
        self.need(n, what)?;
        let s = check_utf8(&self.buf[..n]).map_err(|e| e.context(what))?;
        let out = f(s);
        self.buf.advance(n);
        Ok(out)
    }

    /// Reads a length-prefixed UTF-8 string into a `String`.
    #[inline]
    pub(crate) fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        self.str_with(what, str::to_owned)
    }

    /// Reads a length-prefixed UTF-8 string into an `Arc<str>` (topics are shared by every subscriber).
    #[inline]
    pub(crate) fn arc_str(&mut self, what: &str) -> Result<Arc<str>, DecodeError> {
        self.str_with(what, |s| Arc::<str>::from(s))
    }

    /// Splits off the next `n` bytes as their own reader (a property section), so reading past its end is
    /// caught as malformed instead of silently eating the payload.
    #[inline]
    pub(crate) fn sub(&mut self, n: usize, what: &str) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.bytes(n, what)?))
    }

    /// Takes whatever is left (a PUBLISH payload, a list of reason codes).
    #[inline]
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails when bytes are left over: a packet longer than its fields is malformed.
    #[inline]
    pub(crate) fn finish(&self, packet: &str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::malformed(format!(
                "{} unexpected trailing bytes in {packet}",
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_varint(&mut out, v);
        out.to_vec()
    }

    #[test]
    fn varint_boundaries_match_the_spec_table() {
        for (v, bytes) in [
            (0usize, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (268_435_455, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            assert_eq!(enc(v), bytes, "encoding {v}");
            assert_eq!(varint_len(v), bytes.len());
            assert_eq!(parse_varint(&bytes).unwrap(), Some((v as u32, bytes.len())));
        }
    }

    #[test]
    fn varint_fifth_byte_is_malformed_and_short_is_incomplete() {
        let err = parse_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err();
        assert_eq!(err.reason_code, 0x81);
        assert_eq!(parse_varint(&[0xff, 0xff]).unwrap(), None);
        assert_eq!(parse_varint(&[]).unwrap(), None);
        // Non-minimal but within four bytes: accepted.
        assert_eq!(parse_varint(&[0x80, 0x00]).unwrap(), Some((0, 2)));
    }

    #[test]
    fn strings_reject_nul_bad_utf8_and_surrogates() {
        for bad in [
            &[0x00, 0x01, 0x00][..],
            &[0x00, 0x02, 0xc3, 0x28],
            &[0x00, 0x03, 0xed, 0xa0, 0x80], // U+D800 encoded
            &[0x00, 0x05, b'a'],             // short
        ] {
            let mut r = Reader::new(Bytes::copy_from_slice(bad));
            assert_eq!(r.string("s").unwrap_err().reason_code, 0x81, "{bad:?}");
        }
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x03, b'a', 0x01, b'b']));
        assert_eq!(r.string("s").unwrap(), "a\u{1}b");
        assert!(r.is_empty());
    }

    #[test]
    fn reader_reports_short_fields() {
        let mut r = Reader::new(Bytes::from_static(&[0x01]));
        assert_eq!(r.u16("id").unwrap_err().reason_code, 0x81);
        let mut r = Reader::new(Bytes::from_static(&[0x80]));
        assert_eq!(r.varint("len").unwrap_err().reason_code, 0x81);
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x04, 1, 2]));
        assert_eq!(r.binary("b").unwrap_err().reason_code, 0x81);
    }
}
