//! SUBSCRIBE. Filters are checked for UTF-8 only: the broker judges each filter and answers a bad one with its
//! own SUBACK reason code, instead of the codec dropping the whole connection.
use bytes::{BufMut, BytesMut};

use super::primitives::{packet_len, put_fixed_header, put_str, str_len, Reader};
use super::properties::{self, Ctx};
use super::{DecodeError, Protocol, QoS, RetainHandling, Subscribe, Subscription};

const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;

/// Decodes a SUBSCRIBE body.
pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Subscribe, DecodeError> {
    let packet_id = r.u16("packet identifier")?;
    if packet_id == 0 {
        return Err(DecodeError::malformed("SUBSCRIBE with packet identifier 0"));
    }
    let props = match protocol {
        Protocol::V5 => properties::decode(r, Ctx::Subscribe)?,
        Protocol::V311 => Default::default(),
    };
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let opts = r.u8("subscription options")?;
        let reserved = match protocol {
            Protocol::V311 => 0xFC,
            Protocol::V5 => 0xC0,
        };
        if opts & reserved != 0 {
            return Err(DecodeError::malformed(format!(
                "SUBSCRIBE options 0x{opts:02X} for {filter:?} set reserved bits"
            )));
        }
        let qos = QoS::from_u8(opts & 0b11).ok_or_else(|| {
            DecodeError::malformed(format!("SUBSCRIBE with QoS 3 for {filter:?}"))
        })?;
        let retain_handling = match (opts >> RETAIN_HANDLING_SHIFT) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => {
                return Err(DecodeError::protocol_error(format!(
                    "SUBSCRIBE retain handling 3 for {filter:?}"
                )))
            }
        };
        let no_local = opts & NO_LOCAL != 0;
        if no_local && filter.starts_with("$share/") {
            return Err(DecodeError::protocol_error(format!(
                "SUBSCRIBE with No Local on shared subscription {filter:?}"
            )));
        }
        subscriptions.push(Subscription {
            filter,
            qos,
            no_local,
            retain_as_published: opts & RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        });
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::protocol_error(
            "SUBSCRIBE without topic filters",
        ));
    }
    Ok(Subscribe {
        packet_id,
        properties: props,
        subscriptions,
    })
}

fn remaining_and_props(s: &Subscribe, protocol: Protocol) -> (usize, usize) {
    let mut remaining = 2 + s
        .subscriptions
        .iter()
        .map(|sub| str_len(&sub.filter) + 1)
        .sum::<usize>();
    let mut props = 0;
    if protocol == Protocol::V5 {
        props = properties::len(&s.properties, Ctx::Subscribe);
        remaining += properties::section_len(props);
    }
    (remaining, props)
}

/// Encoded size of a SUBSCRIBE.
pub(crate) fn encoded_len(s: &Subscribe, protocol: Protocol) -> usize {
    packet_len(remaining_and_props(s, protocol).0)
}

/// Writes a SUBSCRIBE (3.1.1: only the QoS bits of the options byte).
pub(crate) fn encode(s: &Subscribe, protocol: Protocol, out: &mut BytesMut) {
    let (remaining, props) = remaining_and_props(s, protocol);
    put_fixed_header(out, 0x82, remaining);
    out.put_u16(s.packet_id);
    if protocol == Protocol::V5 {
        properties::encode(out, &s.properties, Ctx::Subscribe, props);
    }
    for sub in &s.subscriptions {
        put_str(out, &sub.filter);
        let mut opts = sub.qos as u8;
        if protocol == Protocol::V5 {
            if sub.no_local {
                opts |= NO_LOCAL;
            }
            if sub.retain_as_published {
                opts |= RETAIN_AS_PUBLISHED;
            }
            opts |= (sub.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
        }
        out.put_u8(opts);
    }
}
