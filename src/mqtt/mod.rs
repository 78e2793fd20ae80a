//! MQTT 3.1.1 and 5.0 codec: pure functions over bytes, no I/O.
//!
//! One file per packet kind; the shared wire primitives are in `primitives`, MQTT 5 properties in
//! `properties`, topic syntax in `topic`. The connection task calls [`decode`] on its read buffer and
//! [`encode`]/[`encode_publish`] into its write buffer; nothing here keeps state between calls, which is what
//! makes the codec fuzzable in isolation (see `fuzz/`).
//!
//! Decisions where the specifications leave a choice (each is tested):
//! - Reason codes: a packet that cannot be parsed (short, reserved bits set, QoS 3, bad UTF-8, U+0000, unknown
//!   property identifier, trailing bytes) is `0x81`; a parseable packet the protocol forbids (property not
//!   allowed in that packet, repeated single property, forbidden property value, reason code not defined for
//!   that packet, SUBSCRIBE/UNSUBSCRIBE without filters, retain handling 3, a second CONNECT or a first packet
//!   that is not CONNECT) is `0x82`. MQTT 3.1.1 has no reason codes on the wire, but the same codes tell the
//!   broker why it closes the connection.
//! - PUBLISH with DUP set at QoS 0 is malformed (`0x81`), like the other invalid fixed-header flags.
//! - A topic name with `+` or `#` (PUBLISH or will topic), or an empty one in 3.1.1, is `0x90` Topic Name
//!   invalid: the spec forbids wildcards in topic names and defines `0x90` for a topic name that parses but is
//!   not acceptable, and it is valid in both DISCONNECT and CONNACK. An empty topic without a topic alias in
//!   MQTT 5 is a protocol error (`0x82`), as the spec says. Topic alias 0 is `0x94`.
//! - Topic *filters* are only checked for UTF-8 here; the broker answers bad filters per filter (SUBACK 0x8F).
//!   The one filter rule checked here is No Local on a `$share/` filter, which the spec makes a protocol error
//!   for the whole packet.
//! - CONNECT: protocol name `MQTT` with level 4 or 5, or `MQIsdp` with level 3; anything else is `0x84`,
//!   and the message names the level. A 3.1.1 client with an empty client id and clean session 0 (or any empty
//!   client id at level 3) is `0x85`, which the 3.1.1 CONNACK mapping turns into return code 2.
//! - Non-minimal variable byte integers (within four bytes) are accepted.
//! - Packet identifier 0 is malformed in PUBLISH (QoS > 0), SUBSCRIBE and UNSUBSCRIBE; in acknowledgements it
//!   is left to the session, which answers "packet identifier not found".
mod auth;
mod connack;
mod connect;
mod disconnect;
mod ping;
mod primitives;
mod properties;
mod publish;
mod pubresp;
mod suback;
mod subscribe;
mod topic;
mod types;
mod unsuback;
mod unsubscribe;
pub mod yaml;

#[cfg(test)]
mod tests;

use bytes::{Buf, Bytes, BytesMut};

pub use topic::{
    check_topic_filter, filter_matches, valid_topic_filter, valid_topic_name, FilterError,
};
pub use types::*;

use primitives::{parse_varint, Reader};

/// Why a packet could not be decoded. `reason_code` is the MQTT 5 reason code to close the connection with
/// (DISCONNECT in v5, or CONNACK when the failing packet is the CONNECT); for MQTT 3.1.1 it still tells the
/// broker which CONNACK return code applies (`0x84`, `0x85`) or that it should just close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (reason code 0x{reason_code:02X})")]
pub struct DecodeError {
    /// 0x81 malformed, 0x82 protocol error, 0x84 unsupported protocol version, 0x85 client identifier not
    /// valid, 0x90 topic name invalid, 0x94 topic alias invalid, 0x95 packet too large.
    pub reason_code: u8,
    /// Human-readable detail for logs (and a v5 reason string, if the broker wants one).
    pub message: String,
}

impl DecodeError {
    /// An error with an explicit reason code.
    pub fn new(reason_code: u8, message: impl Into<String>) -> Self {
        DecodeError {
            reason_code,
            message: message.into(),
        }
    }

    /// 0x81: the bytes cannot be parsed as the packet they claim to be.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(reason::MALFORMED_PACKET, message)
    }

    /// 0x82: the packet parses but breaks a protocol rule.
    pub fn protocol_error(message: impl Into<String>) -> Self {
        Self::new(reason::PROTOCOL_ERROR, message)
    }

    /// Prefixes the message with the field being read, so logs say which field was bad.
    pub(crate) fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Fixed-header checks that need no body, so garbage is refused before we buffer it.
fn check_fixed_header(kind: u8, flags: u8, protocol: Option<Protocol>) -> Result<(), DecodeError> {
    match (protocol, kind) {
        (None, CONNECT) => {}
        (None, _) => {
            return Err(DecodeError::protocol_error(format!(
                "first packet must be CONNECT, got packet type {kind}"
            )))
        }
        (Some(_), CONNECT) => {
            return Err(DecodeError::protocol_error(
                "second CONNECT on the connection",
            ))
        }
        (Some(_), 0) => return Err(DecodeError::malformed("reserved packet type 0")),
        (Some(Protocol::V311), AUTH) => {
            return Err(DecodeError::malformed(
                "packet type 15 (AUTH) is reserved in MQTT 3.1.1",
            ))
        }
        _ => {}
    }
    match kind {
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::malformed("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::malformed("PUBLISH with DUP set at QoS 0"));
            }
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => {
            if flags != 0b0010 {
                return Err(DecodeError::malformed(format!(
                    "packet type {kind} needs fixed-header flags 0010, got {flags:04b}"
                )));
            }
        }
        _ => {
            if flags != 0 {
                return Err(DecodeError::malformed(format!(
                    "packet type {kind} needs fixed-header flags 0000, got {flags:04b}"
                )));
            }
        }
    }
    Ok(())
}

/// Streaming decode of one packet from the front of `buf`. Ok(None) when more bytes are needed (nothing
/// consumed). On Ok(Some) the packet's bytes are consumed. `protocol` is None before CONNECT was decoded (then
/// only CONNECT is acceptable: anything else is a protocol error), afterwards the session's protocol. Packets
/// whose remaining length makes them larger than `max_packet_size` are rejected with reason 0x95 *before*
/// buffering the whole body.
///
/// `max_packet_size` counts the whole packet (fixed header included), as the MQTT 5 Maximum Packet Size does;
/// pass `u32::MAX` for no limit beyond the protocol's own. On Err nothing is consumed either, so the caller can
/// still look at the bytes (for example with [`peek_connect_protocol`] to answer a broken CONNECT in the
/// client's own version); the connection must be closed, since the stream cannot be resynchronised. When the
/// header is complete but the body is not, `buf` gets capacity for the rest, so the next read fills it without
/// reallocating.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let kind = first >> 4;
    let flags = first & 0x0f;
    check_fixed_header(kind, flags, protocol)?;
    let Some((remaining, varint_len)) = parse_varint(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + varint_len;
    let total = header_len + remaining as usize;
    if total as u64 > u64::from(max_packet_size) {
        return Err(DecodeError::new(
            reason::PACKET_TOO_LARGE,
            format!("packet of {total} bytes exceeds the maximum packet size of {max_packet_size}"),
        ));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    let mut body = frame.clone();
    body.advance(header_len);
    match decode_body(kind, flags, body, protocol) {
        Ok(packet) => Ok(Some(packet)),
        Err(e) => {
            // Put the bytes back (error path only, so a copy is fine): the caller was promised nothing is
            // consumed on error.
            let mut restored = BytesMut::with_capacity(frame.len() + buf.len());
            restored.extend_from_slice(&frame);
            restored.extend_from_slice(buf);
            *buf = restored;
            Err(e)
        }
    }
}

/// Decodes a complete packet body. `protocol` is None only for CONNECT (checked by the caller).
fn decode_body(
    kind: u8,
    flags: u8,
    body: Bytes,
    protocol: Option<Protocol>,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let Some(protocol) = protocol else {
        return Ok(Packet::Connect(Box::new(connect::decode(&mut r)?)));
    };
    let packet = match kind {
        CONNACK => Packet::ConnAck(connack::decode(&mut r, protocol)?),
        PUBLISH => Packet::Publish(publish::decode(flags, &mut r, protocol)?),
        PUBACK => Packet::PubAck(pubresp::decode(pubresp::Kind::Ack, &mut r, protocol)?),
        PUBREC => Packet::PubRec(pubresp::decode(pubresp::Kind::Rec, &mut r, protocol)?),
        PUBREL => Packet::PubRel(pubresp::decode(pubresp::Kind::Rel, &mut r, protocol)?),
        PUBCOMP => Packet::PubComp(pubresp::decode(pubresp::Kind::Comp, &mut r, protocol)?),
        SUBSCRIBE => Packet::Subscribe(subscribe::decode(&mut r, protocol)?),
        SUBACK => Packet::SubAck(suback::decode(&mut r, protocol)?),
        UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe::decode(&mut r, protocol)?),
        UNSUBACK => Packet::UnsubAck(unsuback::decode(&mut r, protocol)?),
        PINGREQ => {
            ping::decode(&r, "PINGREQ")?;
            Packet::PingReq
        }
        PINGRESP => {
            ping::decode(&r, "PINGRESP")?;
            Packet::PingResp
        }
        DISCONNECT => Packet::Disconnect(disconnect::decode(&mut r, protocol)?),
        AUTH => Packet::Auth(auth::decode(&mut r)?),
        // CONNECT and type 0 were refused by check_fixed_header.
        _ => {
            return Err(DecodeError::malformed(format!(
                "unexpected packet type {kind}"
            )))
        }
    };
    Ok(packet)
}

/// Which protocol version a CONNECT at the front of `buf` asks for, without decoding (or consuming) it. This
/// is how the broker answers a CONNECT that [`decode`] rejected in the client's own CONNACK format: a level-5
/// client gets an MQTT 5 CONNACK with the reason code, everyone else the 3.1.1 form. None when `buf` does not
/// start with a CONNECT that gets as far as a supported name/level pair.
pub fn peek_connect_protocol(buf: &[u8]) -> Option<Protocol> {
    if buf.first()? >> 4 != CONNECT {
        return None;
    }
    let (_, n) = parse_varint(&buf[1..]).ok()??;
    let rest = &buf[1 + n..];
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + name_len)?;
    let level = *rest.get(2 + name_len)?;
    match (name, level) {
        (b"MQTT", 4) | (b"MQIsdp", 3) => Some(Protocol::V311),
        (b"MQTT", 5) => Some(Protocol::V5),
        _ => None,
    }
}

/// Appends the encoding of `packet` for `protocol` to `out` (v5-only parts omitted for V311; for V311 CONNACK
/// map reason codes as documented on ConnAck; SUBACK v3 codes 0,1,2,0x80 (any >=0x80 -> 0x80)).
///
/// The buffer grows once, by exactly [`encoded_len`]. Properties a packet kind does not allow are not written,
/// so the output always decodes. For CONNECT, `protocol` (not `Connect::protocol`) picks the level written.
/// AUTH does not exist in 3.1.1: encoding it for V311 writes nothing. Strings and binary fields longer than
/// 65535 bytes, and packets longer than 268435455 bytes, cannot be represented: callers must not build them
/// (debug builds panic; release builds truncate the field so the framing stays consistent).
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    match packet {
        Packet::Connect(c) => connect::encode(c, protocol, out),
        Packet::ConnAck(c) => connack::encode(c, protocol, out),
        Packet::Publish(p) => publish::encode(p, protocol, out),
        Packet::PubAck(p) => pubresp::encode(pubresp::Kind::Ack, p, protocol, out),
        Packet::PubRec(p) => pubresp::encode(pubresp::Kind::Rec, p, protocol, out),
        Packet::PubRel(p) => pubresp::encode(pubresp::Kind::Rel, p, protocol, out),
        Packet::PubComp(p) => pubresp::encode(pubresp::Kind::Comp, p, protocol, out),
        Packet::Subscribe(s) => subscribe::encode(s, protocol, out),
        Packet::SubAck(s) => suback::encode(s, protocol, out),
        Packet::Unsubscribe(u) => unsubscribe::encode(u, protocol, out),
        Packet::UnsubAck(u) => unsuback::encode(u, protocol, out),
        Packet::PingReq => ping::encode(PINGREQ, out),
        Packet::PingResp => ping::encode(PINGRESP, out),
        Packet::Disconnect(d) => disconnect::encode(d, protocol, out),
        Packet::Auth(a) => auth::encode(a, protocol, out),
    }
}

/// Hot path: encode a PUBLISH without building a Packet.
///
/// DUP is written only for QoS 1 and 2 (a DUP flag at QoS 0 would make the packet malformed), and the packet
/// identifier only for QoS 1 and 2.
pub fn encode_publish(publish: &Publish, protocol: Protocol, out: &mut BytesMut) {
    publish::encode(publish, protocol, out)
}

/// Encoded size of a packet (to honour a client's Maximum Packet Size before sending).
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    match packet {
        Packet::Connect(c) => connect::encoded_len(c, protocol),
        Packet::ConnAck(c) => connack::encoded_len(c, protocol),
        Packet::Publish(p) => publish::encoded_len(p, protocol),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            pubresp::encoded_len(p, protocol)
        }
        Packet::Subscribe(s) => subscribe::encoded_len(s, protocol),
        Packet::SubAck(s) => suback::encoded_len(s, protocol),
        Packet::Unsubscribe(u) => unsubscribe::encoded_len(u, protocol),
        Packet::UnsubAck(u) => unsuback::encoded_len(u, protocol),
        Packet::PingReq | Packet::PingResp => 2,
        Packet::Disconnect(d) => disconnect::encoded_len(d, protocol),
        Packet::Auth(a) => auth::encoded_len(a, protocol),
    }
}

/// Encoded size of a PUBLISH (the per-subscriber Maximum Packet Size check on the hot path).
pub fn publish_encoded_len(publish: &Publish, protocol: Protocol) -> usize {
    publish::encoded_len(publish, protocol)
}
