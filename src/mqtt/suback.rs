//! SUBACK. One reason code per filter; 3.1.1 knows only 0, 1, 2 and 0x80, so every v5 failure code collapses
//! to 0x80 there.
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, Reader};
use super::properties::{self, Ctx};
use super::{DecodeError, Protocol, SubAck};

/// Reason codes MQTT 5 defines for SUBACK.
fn valid_v5(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x01 | 0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
    )
}

/// v5 reason code -> 3.1.1 return code.
fn v311_code(code: u8) -> u8 {
    if code <= 2 {
        code
    } else {
        0x80
    }
}

/// Decodes a SUBACK body.
pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<SubAck, DecodeError> {
    let packet_id = r.u16("packet identifier")?;
    let props = match protocol {
        Protocol::V5 => properties::decode(r, Ctx::SubAck)?,
        Protocol::V311 => Default::default(),
    };
    let codes = r.rest();
    let valid = match protocol {
        Protocol::V5 => valid_v5,
        Protocol::V311 => |c| matches!(c, 0x00 | 0x01 | 0x02 | 0x80),
    };
    if let Some(bad) = codes.iter().find(|&&c| !valid(c)) {
        return Err(DecodeError::protocol_error(format!(
            "SUBACK reason code 0x{bad:02X} is not defined"
        )));
    }
    Ok(SubAck {
        packet_id,
        properties: props,
        reason_codes: codes.to_vec(),
    })
}

fn remaining_and_props(s: &SubAck, protocol: Protocol) -> (usize, usize) {
    let mut remaining = 2 + s.reason_codes.len();
    let mut props = 0;
    if protocol == Protocol::V5 {
        props = properties::len(&s.properties, Ctx::SubAck);
        remaining += properties::section_len(props);
    }
    (remaining, props)
}

/// Encoded size of a SUBACK.
pub(crate) fn encoded_len(s: &SubAck, protocol: Protocol) -> usize {
    packet_len(remaining_and_props(s, protocol).0)
}

/// Writes a SUBACK.
pub(crate) fn encode(s: &SubAck, protocol: Protocol, out: &mut BytesMut) {
    let (remaining, props) = remaining_and_props(s, protocol);
    put_fixed_header(out, 0x90, remaining);
    out.put_u16(s.packet_id);
    match protocol {
        Protocol::V5 => {
            properties::encode(out, &s.properties, Ctx::SubAck, props);
            out.put_slice(&s.reason_codes);
        }
        Protocol::V311 => {
            for &c in &s.reason_codes {
                out.put_u8(v311_code(c));
            }
        }
    }
}
