//! DISCONNECT. Empty in 3.1.1; in MQTT 5 the reason code and property length may be omitted when they carry
//! nothing (remaining length 0 means "normal disconnection").
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, Reader};
use super::properties::{self, Ctx};
use super::{DecodeError, Disconnect, Protocol};

/// Reason codes MQTT 5 defines for DISCONNECT (either direction).
fn valid_v5(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x04
            | 0x80
            | 0x81
            | 0x82
            | 0x83
            | 0x87
            | 0x89
            | 0x8B
            | 0x8D
            | 0x8E
            | 0x8F
            | 0x90
            | 0x93
            | 0x94
            | 0x95
            | 0x96
            | 0x97
            | 0x98
            | 0x99
            | 0x9A
            | 0x9B
            | 0x9C
            | 0x9D
            | 0x9E
            | 0x9F
            | 0xA0
            | 0xA1
            | 0xA2
    )
}

/// Decodes a DISCONNECT body.
pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    if protocol == Protocol::V5 && !r.is_empty() {
        let code = r.u8("reason code")?;
        if !valid_v5(code) {
            return Err(DecodeError::protocol_error(format!(
                "DISCONNECT reason code 0x{code:02X} is not defined"
            )));
        }
        d.reason_code = code;
        if !r.is_empty() {
            d.properties = properties::decode(r, Ctx::Disconnect)?;
        }
    }
    r.finish("DISCONNECT")?;
    Ok(d)
}

fn remaining_and_props(d: &Disconnect, protocol: Protocol) -> (usize, usize) {
    match protocol {
        Protocol::V311 => (0, 0),
        Protocol::V5 => {
            let props = properties::len(&d.properties, Ctx::Disconnect);
            if props > 0 {
                (1 + properties::section_len(props), props)
            } else if d.reason_code != 0 {
                (1, 0)
            } else {
                (0, 0)
            }
        }
    }
}

/// Encoded size of a DISCONNECT.
pub(crate) fn encoded_len(d: &Disconnect, protocol: Protocol) -> usize {
    packet_len(remaining_and_props(d, protocol).0)
}

/// Writes a DISCONNECT in its shortest form.
pub(crate) fn encode(d: &Disconnect, protocol: Protocol, out: &mut BytesMut) {
    let (remaining, props) = remaining_and_props(d, protocol);
    put_fixed_header(out, 0xE0, remaining);
    if remaining > 0 {
        out.put_u8(d.reason_code);
    }
    if remaining > 1 {
        properties::encode(out, &d.properties, Ctx::Disconnect, props);
    }
}
