//! CONNECT: the only packet decoded before the protocol version is known, so it carries its own version.
use bytes::{BufMut, BytesMut};

use super::primitives::{
    binary_len, packet_len, put_binary, put_fixed_header, put_str, str_len, Reader,
};
use super::properties::{self, Ctx};
use super::topic::valid_topic_name;
use super::{reason, Connect, DecodeError, LastWill, Protocol, QoS};

const USERNAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_FLAG: u8 = 0x04;
const CLEAN_START: u8 = 0x02;
const RESERVED: u8 = 0x01;

/// Decodes a CONNECT body.
pub(crate) fn decode(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) | ("MQIsdp", 3) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        // Another protocol name is not this protocol: no CONNACK, the connection is closed (§3.1.2.1; the
        // level is only answered with a CONNACK when the name is right), as mosquitto does.
        (n, _) if n != "MQTT" && n != "MQIsdp" => {
            return Err(DecodeError::malformed(format!(
                "protocol name {name:?} is not MQTT"
            )))
        }
        _ => {
            return Err(DecodeError::new(
                reason::UNSUPPORTED_PROTOCOL_VERSION,
                format!("unsupported protocol level {level} (protocol name {name:?})"),
            ))
        }
    };
    let flags = r.u8("connect flags")?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::malformed("CONNECT reserved flag bit is set"));
    }
    let will_flag = flags & WILL_FLAG != 0;
    let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0b11;
    let will_retain = flags & WILL_RETAIN != 0;
    let Some(will_qos) = QoS::from_u8(will_qos_bits) else {
        return Err(DecodeError::malformed("CONNECT will QoS 3"));
    };
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::malformed(
            "CONNECT will QoS or will retain set without the will flag",
        ));
    }
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    if protocol == Protocol::V311 && has_password && !has_username {
        return Err(DecodeError::malformed(
            "CONNECT password flag without user name flag (MQTT 3.1.1)",
        ));
    }
    let clean_start = flags & CLEAN_START != 0;
    let keep_alive = r.u16("keep alive")?;
    let props = match protocol {
        Protocol::V5 => properties::decode(r, Ctx::Connect)?,
        Protocol::V311 => Default::default(),
    };
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        // §3.1.2.11.10: "It is a Protocol Error to include Authentication Data if there is no Authentication
        // Method".
        return Err(DecodeError::protocol_error(
            "CONNECT carries authentication data without an authentication method",
        ));
    }
    let client_id = r.string("client identifier")?;
    if protocol == Protocol::V311 && client_id.is_empty() && (!clean_start || level == 3) {
        return Err(DecodeError::new(
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            if level == 3 {
                "empty client identifier (MQTT 3.1 requires one)"
            } else {
                "empty client identifier with clean session 0"
            },
        ));
    }
    let will = if will_flag {
        let will_props = match protocol {
            Protocol::V5 => properties::decode(r, Ctx::Will)?,
            Protocol::V311 => Default::default(),
        };
        let topic = r.arc_str("will topic")?;
        if !valid_topic_name(&topic) {
            return Err(DecodeError::new(
                reason::TOPIC_NAME_INVALID,
                format!("will topic {topic:?} is not a valid topic name"),
            ));
        }
        let payload = r.binary("will payload")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties: will_props,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };
    r.finish("CONNECT")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties: props,
    })
}

/// Body length plus the two property-section lengths, computed once per encode.
struct Sizes {
    remaining: usize,
    props: usize,
    will_props: usize,
}

fn sizes(c: &Connect, protocol: Protocol) -> Sizes {
    let v5 = protocol == Protocol::V5;
    // "MQTT" + level + flags + keep alive.
    let mut remaining = 6 + 1 + 1 + 2 + str_len(&c.client_id);
    let props = if v5 {
        properties::len(&c.properties, Ctx::Connect)
    } else {
        0
    };
    if v5 {
        remaining += properties::section_len(props);
    }
    let mut will_props = 0;
    if let Some(w) = &c.will {
        if v5 {
            will_props = properties::len(&w.properties, Ctx::Will);
            remaining += properties::section_len(will_props);
        }
        remaining += str_len(&w.topic) + binary_len(&w.payload);
    }
    if let Some(u) = &c.username {
        remaining += str_len(u);
    }
    if let Some(p) = &c.password {
        remaining += binary_len(p);
    }
    Sizes {
        remaining,
        props,
        will_props,
    }
}

/// Encoded size of a CONNECT.
pub(crate) fn encoded_len(c: &Connect, protocol: Protocol) -> usize {
    packet_len(sizes(c, protocol).remaining)
}

/// Writes a CONNECT for `protocol` (protocol name `MQTT`, level 4 or 5).
pub(crate) fn encode(c: &Connect, protocol: Protocol, out: &mut BytesMut) {
    let s = sizes(c, protocol);
    put_fixed_header(out, 0x10, s.remaining);
    put_str(out, "MQTT");
    out.put_u8(match protocol {
        Protocol::V311 => 4,
        Protocol::V5 => 5,
    });
    let mut flags = 0;
    if c.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(w) = &c.will {
        flags |= WILL_FLAG | ((w.qos as u8) << WILL_QOS_SHIFT);
        if w.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= USERNAME;
    }
    if c.password.is_some() {
        flags |= PASSWORD;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if protocol == Protocol::V5 {
        properties::encode(out, &c.properties, Ctx::Connect, s.props);
    }
    put_str(out, &c.client_id);
    if let Some(w) = &c.will {
        if protocol == Protocol::V5 {
            properties::encode(out, &w.properties, Ctx::Will, s.will_props);
        }
        put_str(out, &w.topic);
        put_binary(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_str(out, u);
    }
    if let Some(p) = &c.password {
        put_binary(out, p);
    }
}
