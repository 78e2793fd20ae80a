//! CONNACK. The struct holds the MQTT 5 reason code; 3.1.1 return codes are mapped both ways so the broker
//! decides once, in v5 terms, and the codec speaks the client's dialect.
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, Reader};
use super::properties::{self, Ctx};
use super::{ConnAck, DecodeError, Protocol};

/// Reason codes MQTT 5 defines for CONNACK.
fn valid_v5(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x80
            | 0x81
            | 0x82
            | 0x83
            | 0x84
            | 0x85
            | 0x86
            | 0x87
            | 0x88
            | 0x89
            | 0x8A
            | 0x8C
            | 0x90
            | 0x95
            | 0x97
            | 0x99
            | 0x9A
            | 0x9B
            | 0x9C
            | 0x9D
            | 0x9F
    )
}

/// v5 reason code -> 3.1.1 return code, as documented on [`ConnAck`].
pub(crate) fn v311_return_code(reason_code: u8) -> u8 {
    match reason_code {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x86 => 4,
        0x87 => 5,
        _ => 3,
    }
}

/// 3.1.1 return code -> v5 reason code (the inverse of [`v311_return_code`] on its image).
fn v5_reason_code(return_code: u8) -> Option<u8> {
    Some(match return_code {
        0 => 0x00,
        1 => 0x84,
        2 => 0x85,
        3 => 0x88,
        4 => 0x86,
        5 => 0x87,
        _ => return None,
    })
}

/// Decodes a CONNACK body.
pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("connect acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::malformed("CONNACK reserved flag bits are set"));
    }
    let code = r.u8("connect reason code")?;
    let (reason_code, props) = match protocol {
        Protocol::V311 => {
            let Some(rc) = v5_reason_code(code) else {
                return Err(DecodeError::protocol_error(format!(
                    "CONNACK return code {code} is reserved in MQTT 3.1.1"
                )));
            };
            (rc, Default::default())
        }
        Protocol::V5 => {
            if !valid_v5(code) {
                return Err(DecodeError::protocol_error(format!(
                    "CONNACK reason code 0x{code:02X} is not defined"
                )));
            }
            (code, properties::decode(r, Ctx::ConnAck)?)
        }
    };
    r.finish("CONNACK")?;
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        reason_code,
        properties: props,
    })
}

fn remaining_and_props(c: &ConnAck, protocol: Protocol) -> (usize, usize) {
    match protocol {
        Protocol::V311 => (2, 0),
        Protocol::V5 => {
            let p = properties::len(&c.properties, Ctx::ConnAck);
            (2 + properties::section_len(p), p)
        }
    }
}

/// Encoded size of a CONNACK.
pub(crate) fn encoded_len(c: &ConnAck, protocol: Protocol) -> usize {
    packet_len(remaining_and_props(c, protocol).0)
}

/// Writes a CONNACK.
pub(crate) fn encode(c: &ConnAck, protocol: Protocol, out: &mut BytesMut) {
    let (remaining, props) = remaining_and_props(c, protocol);
    put_fixed_header(out, 0x20, remaining);
    out.put_u8(u8::from(c.session_present));
    match protocol {
        Protocol::V311 => out.put_u8(v311_return_code(c.reason_code)),
        Protocol::V5 => {
            out.put_u8(c.reason_code);
            properties::encode(out, &c.properties, Ctx::ConnAck, props);
        }
    }
}
