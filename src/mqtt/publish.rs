//! PUBLISH: the hot path. Decoding allocates only the topic's `Arc<str>` (plus properties when present); the
//! payload is a slice of the read buffer. Encoding computes the length once and writes straight into `out`.
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, put_str, str_len, Reader};
use super::properties::{self, Ctx};
use super::{reason, DecodeError, Protocol, Publish, QoS};

/// Decodes a PUBLISH body; `flags` are the fixed-header flags, already checked for QoS 3 and DUP at QoS 0.
pub(crate) fn decode(
    flags: u8,
    r: &mut Reader,
    protocol: Protocol,
) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0b11)
        .ok_or_else(|| DecodeError::malformed("PUBLISH with QoS 3"))?;
    let topic = r.str_with("topic name", |s| {
        // Wildcards make the name unusable, and so do control characters: an upstream mosquitto disconnects a
        // bridge that forwards one (U+0000 was already refused as malformed).
        if s.bytes().any(|b| b == b'+' || b == b'#') || super::topic::has_forbidden_char(s) {
            None
        } else {
            Some(std::sync::Arc::<str>::from(s))
        }
    })?;
    let Some(topic) = topic else {
        return Err(DecodeError::new(
            reason::TOPIC_NAME_INVALID,
            "PUBLISH topic name contains a wildcard, a control character or a Unicode non-character",
        ));
    };
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        let id = r.u16("packet identifier")?;
        if id == 0 {
            return Err(DecodeError::malformed(
                "PUBLISH at QoS > 0 with packet identifier 0",
            ));
        }
        id
    };
    let props = match protocol {
        Protocol::V5 => properties::decode(r, Ctx::Publish)?,
        Protocol::V311 => Default::default(),
    };
    if topic.is_empty() {
        match protocol {
            Protocol::V5 if props.topic_alias.is_some() => {}
            Protocol::V5 => {
                return Err(DecodeError::protocol_error(
                    "PUBLISH with an empty topic name and no topic alias",
                ))
            }
            Protocol::V311 => {
                return Err(DecodeError::new(
                    reason::TOPIC_NAME_INVALID,
                    "PUBLISH with an empty topic name",
                ))
            }
        }
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties: props,
        payload: r.rest(),
    })
}

#[inline]
fn remaining_and_props(p: &Publish, protocol: Protocol) -> (usize, usize) {
    let mut remaining = str_len(&p.topic) + p.payload.len();
    if p.qos != QoS::AtMostOnce {
        remaining += 2;
    }
    let mut props = 0;
    if protocol == Protocol::V5 {
        props = properties::len(&p.properties, Ctx::Publish);
        remaining += properties::section_len(props);
    }
    (remaining, props)
}

/// Encoded size of a PUBLISH.
#[inline]
pub(crate) fn encoded_len(p: &Publish, protocol: Protocol) -> usize {
    packet_len(remaining_and_props(p, protocol).0)
}

/// Writes a PUBLISH.
#[inline]
pub(crate) fn encode(p: &Publish, protocol: Protocol, out: &mut BytesMut) {
    let (remaining, props) = remaining_and_props(p, protocol);
    let mut first = 0x30 | ((p.qos as u8) << 1) | u8::from(p.retain);
    if p.dup && p.qos != QoS::AtMostOnce {
        first |= 0b1000;
    }
    put_fixed_header(out, first, remaining);
    put_str(out, &p.topic);
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.packet_id);
    }
    if protocol == Protocol::V5 {
        properties::encode(out, &p.properties, Ctx::Publish, props);
    }
    out.put_slice(&p.payload);
}
