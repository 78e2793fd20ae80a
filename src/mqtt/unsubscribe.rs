//! UNSUBSCRIBE. As with SUBSCRIBE, filters are only checked for UTF-8; the broker judges them.
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, put_str, str_len, Reader};
use super::properties::{self, Ctx};
use super::{DecodeError, Protocol, Unsubscribe};

/// Decodes an UNSUBSCRIBE body.
pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.u16("packet identifier")?;
    if packet_id == 0 {
        return Err(DecodeError::malformed(
            "UNSUBSCRIBE with packet identifier 0",
        ));
    }
    let props = match protocol {
        Protocol::V5 => properties::decode(r, Ctx::Unsubscribe)?,
        Protocol::V311 => Default::default(),
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::protocol_error(
            "UNSUBSCRIBE without topic filters",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        properties: props,
        filters,
    })
}

fn remaining_and_props(u: &Unsubscribe, protocol: Protocol) -> (usize, usize) {
    let mut remaining = 2 + u.filters.iter().map(|f| str_len(f)).sum::<usize>();
    let mut props = 0;
    if protocol == Protocol::V5 {
        props = properties::len(&u.properties, Ctx::Unsubscribe);
        remaining += properties::section_len(props);
    }
    (remaining, props)
}

/// Encoded size of an UNSUBSCRIBE.
pub(crate) fn encoded_len(u: &Unsubscribe, protocol: Protocol) -> usize {
    packet_len(remaining_and_props(u, protocol).0)
}

/// Writes an UNSUBSCRIBE.
pub(crate) fn encode(u: &Unsubscribe, protocol: Protocol, out: &mut BytesMut) {
    let (remaining, props) = remaining_and_props(u, protocol);
    put_fixed_header(out, 0xA2, remaining);
    out.put_u16(u.packet_id);
    if protocol == Protocol::V5 {
        properties::encode(out, &u.properties, Ctx::Unsubscribe, props);
    }
    for f in &u.filters {
        put_str(out, f);
    }
}
