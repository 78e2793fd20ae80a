//! AUTH (MQTT 5 only): extended authentication exchanges. Packet type 15 is reserved in 3.1.1, which the fixed
//! header check refuses before we get here.
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, Reader};
use super::properties::{self, Ctx};
use super::{Auth, DecodeError, Protocol};

/// Decodes an AUTH body. Remaining length 0 means success with no properties.
pub(crate) fn decode(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth::default();
    if !r.is_empty() {
        let code = r.u8("reason code")?;
        if !matches!(code, 0x00 | 0x18 | 0x19) {
            return Err(DecodeError::protocol_error(format!(
                "AUTH reason code 0x{code:02X} is not defined"
            )));
        }
        a.reason_code = code;
        if !r.is_empty() {
            a.properties = properties::decode(r, Ctx::Auth)?;
        }
    }
    r.finish("AUTH")?;
    Ok(a)
}

fn remaining_and_props(a: &Auth) -> (usize, usize) {
    let props = properties::len(&a.properties, Ctx::Auth);
    if props == 0 && a.reason_code == 0 {
        (0, 0)
    } else {
        // The spec only defines dropping both fields together, so keep the property length otherwise.
        (1 + properties::section_len(props), props)
    }
}

/// Encoded size of an AUTH; 0 for 3.1.1, where it is not written at all.
pub(crate) fn encoded_len(a: &Auth, protocol: Protocol) -> usize {
    match protocol {
        Protocol::V311 => 0,
        Protocol::V5 => packet_len(remaining_and_props(a).0),
    }
}

/// Writes an AUTH; nothing for 3.1.1, which has no such packet.
pub(crate) fn encode(a: &Auth, protocol: Protocol, out: &mut BytesMut) {
    if protocol == Protocol::V311 {
        return;
    }
    let (remaining, props) = remaining_and_props(a);
    put_fixed_header(out, 0xF0, remaining);
    if remaining > 0 {
        out.put_u8(a.reason_code);
        properties::encode(out, &a.properties, Ctx::Auth, props);
    }
}
