//! PUBACK, PUBREC, PUBREL and PUBCOMP: one shape, four packet types. MQTT 5 lets the sender drop the reason
//! code and property length when they carry nothing; the encoder uses the shortest form, which is also the only
//! form a 3.1.1 peer understands.
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, Reader};
use super::properties::{self, Ctx};
use super::{DecodeError, Protocol, PubResp};

/// Which of the four packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ack,
    Rec,
    Rel,
    Comp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ack => "PUBACK",
            Kind::Rec => "PUBREC",
            Kind::Rel => "PUBREL",
            Kind::Comp => "PUBCOMP",
        }
    }

    fn first_byte(self) -> u8 {
        match self {
            Kind::Ack => 0x40,
            Kind::Rec => 0x50,
            Kind::Rel => 0x62,
            Kind::Comp => 0x70,
        }
    }

    /// Reason codes MQTT 5 defines for this packet.
    fn valid(self, code: u8) -> bool {
        match self {
            Kind::Ack | Kind::Rec => {
                matches!(
                    code,
                    0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
                )
            }
            Kind::Rel | Kind::Comp => matches!(code, 0x00 | 0x92),
        }
    }
}

/// Decodes the body of one of the four packets.
pub(crate) fn decode(
    kind: Kind,
    r: &mut Reader,
    protocol: Protocol,
) -> Result<PubResp, DecodeError> {
    let packet_id = r.u16("packet identifier")?;
    let mut resp = PubResp {
        packet_id,
        reason_code: 0,
        properties: Default::default(),
    };
    if protocol == Protocol::V5 && !r.is_empty() {
        let code = r.u8("reason code")?;
        if !kind.valid(code) {
            return Err(DecodeError::protocol_error(format!(
                "{} reason code 0x{code:02X} is not defined",
                kind.name()
            )));
        }
        resp.reason_code = code;
        if !r.is_empty() {
            resp.properties = properties::decode(r, Ctx::PubResp)?;
        }
    }
    r.finish(kind.name())?;
    Ok(resp)
}

fn remaining_and_props(p: &PubResp, protocol: Protocol) -> (usize, usize) {
    match protocol {
        Protocol::V311 => (2, 0),
        Protocol::V5 => {
            let props = properties::len(&p.properties, Ctx::PubResp);
            if props > 0 {
                (3 + properties::section_len(props), props)
            } else if p.reason_code != 0 {
                (3, 0)
            } else {
                (2, 0)
            }
        }
    }
}

/// Encoded size of one of the four packets.
pub(crate) fn encoded_len(p: &PubResp, protocol: Protocol) -> usize {
    packet_len(remaining_and_props(p, protocol).0)
}

/// Writes one of the four packets.
pub(crate) fn encode(kind: Kind, p: &PubResp, protocol: Protocol, out: &mut BytesMut) {
    let (remaining, props) = remaining_and_props(p, protocol);
    put_fixed_header(out, kind.first_byte(), remaining);
    out.put_u16(p.packet_id);
    if remaining > 2 {
        out.put_u8(p.reason_code);
    }
    if remaining > 3 {
        properties::encode(out, &p.properties, Ctx::PubResp, props);
    }
}
