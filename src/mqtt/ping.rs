//! PINGREQ and PINGRESP: a fixed header and nothing else, identical in both versions.
use bytes::{BufMut, BytesMut};

use super::primitives::Reader;
use super::DecodeError;

/// Checks that the body is empty.
pub(crate) fn decode(r: &Reader, name: &str) -> Result<(), DecodeError> {
    r.finish(name)
}

/// Writes the two bytes of a PINGREQ (`kind` 12) or PINGRESP (`kind` 13).
pub(crate) fn encode(kind: u8, out: &mut BytesMut) {
    out.reserve(2);
    out.put_u8(kind << 4);
    out.put_u8(0);
}
