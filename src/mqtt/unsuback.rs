//! UNSUBACK. 3.1.1 carries only the packet identifier; MQTT 5 adds properties and one reason code per filter.
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, Reader};
use super::properties::{self, Ctx};
use super::{DecodeError, Protocol, UnsubAck};

/// Reason codes MQTT 5 defines for UNSUBACK.
fn valid_v5(code: u8) -> bool {
    matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

/// Decodes an UNSUBACK body.
pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.u16("packet identifier")?;
    let mut ack = UnsubAck {
        packet_id,
        properties: Default::default(),
        reason_codes: Vec::new(),
    };
    match protocol {
        Protocol::V311 => r.finish("UNSUBACK")?,
        Protocol::V5 => {
            ack.properties = properties::decode(r, Ctx::UnsubAck)?;
            let codes = r.rest();
            if let Some(bad) = codes.iter().find(|&&c| !valid_v5(c)) {
                return Err(DecodeError::protocol_error(format!(
                    "UNSUBACK reason code 0x{bad:02X} is not defined"
                )));
            }
            ack.reason_codes = codes.to_vec();
        }
    }
    Ok(ack)
}

fn remaining_and_props(u: &UnsubAck, protocol: Protocol) -> (usize, usize) {
    match protocol {
        Protocol::V311 => (2, 0),
        Protocol::V5 => {
            let props = properties::len(&u.properties, Ctx::UnsubAck);
            (
                2 + properties::section_len(props) + u.reason_codes.len(),
                props,
            )
        }
    }
}

/// Encoded size of an UNSUBACK.
pub(crate) fn encoded_len(u: &UnsubAck, protocol: Protocol) -> usize {
    packet_len(remaining_and_props(u, protocol).0)
}

/// Writes an UNSUBACK (reason codes and properties only for MQTT 5).
pub(crate) fn encode(u: &UnsubAck, protocol: Protocol, out: &mut BytesMut) {
    let (remaining, props) = remaining_and_props(u, protocol);
    put_fixed_header(out, 0xB0, remaining);
    out.put_u16(u.packet_id);
    if protocol == Protocol::V5 {
        properties::encode(out, &u.properties, Ctx::UnsubAck, props);
        out.put_slice(&u.reason_codes);
    }
}
