//! MQTT 5 properties: one flat [`Properties`] struct for every packet kind, with the per-kind rules enforced
//! here rather than in every packet module.
//!
//! Decoding rejects a property the packet kind does not allow and a repeated single-valued property as
//! protocol errors, an unknown identifier as malformed (its length cannot be known), and values the spec forbids
//! (Receive Maximum 0, a 0/1 flag with another value, …) as protocol errors. Encoding writes only the properties
//! the packet kind allows, in identifier order, so whatever the encoder emits the decoder accepts.
use bytes::{BufMut, BytesMut};

use super::primitives::{binary_len, put_binary, put_str, put_varint, str_len, varint_len, Reader};
use super::{DecodeError, Properties};

/// Which packet (or the will inside CONNECT) a property section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Ctx {
    fn name(self) -> &'static str {
        match self {
            Ctx::Connect => "CONNECT",
            Ctx::Will => "will properties",
            Ctx::ConnAck => "CONNACK",
            Ctx::Publish => "PUBLISH",
            Ctx::PubResp => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            Ctx::Subscribe => "SUBSCRIBE",
            Ctx::SubAck => "SUBACK",
            Ctx::Unsubscribe => "UNSUBSCRIBE",
            Ctx::UnsubAck => "UNSUBACK",
            Ctx::Disconnect => "DISCONNECT",
            Ctx::Auth => "AUTH",
        }
    }
}

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The spec's table of which property may appear in which packet.
pub(crate) fn allowed(ctx: Ctx, id: u8) -> bool {
    match id {
        USER_PROPERTY => true,
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => matches!(ctx, Ctx::Publish | Ctx::Will),
        SUBSCRIPTION_IDENTIFIER => matches!(ctx, Ctx::Publish | Ctx::Subscribe),
        SESSION_EXPIRY_INTERVAL => matches!(ctx, Ctx::Connect | Ctx::ConnAck | Ctx::Disconnect),
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => ctx == Ctx::ConnAck,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => {
            matches!(ctx, Ctx::Connect | Ctx::ConnAck | Ctx::Auth)
        }
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => ctx == Ctx::Connect,
        WILL_DELAY_INTERVAL => ctx == Ctx::Will,
        SERVER_REFERENCE => matches!(ctx, Ctx::ConnAck | Ctx::Disconnect),
        REASON_STRING => matches!(
            ctx,
            Ctx::ConnAck | Ctx::PubResp | Ctx::SubAck | Ctx::UnsubAck | Ctx::Disconnect | Ctx::Auth
        ),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
            matches!(ctx, Ctx::Connect | Ctx::ConnAck)
        }
        TOPIC_ALIAS => ctx == Ctx::Publish,
        _ => false,
    }
}

fn protocol_error(ctx: Ctx, what: String) -> DecodeError {
    DecodeError::protocol_error(format!("{}: {what}", ctx.name()))
}

/// Stores a single-valued property, refusing a second occurrence.
#[inline]
fn set_once<T>(slot: &mut Option<T>, value: T, ctx: Ctx, id: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(protocol_error(
            ctx,
            format!("property 0x{id:02X} appears more than once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// Reads a byte property that the spec restricts to 0 or 1.
#[inline]
fn flag(r: &mut Reader, ctx: Ctx, id: u8) -> Result<u8, DecodeError> {
    let v = r.u8("property value")?;
    if v > 1 {
        return Err(protocol_error(
            ctx,
            format!("property 0x{id:02X} must be 0 or 1, got {v}"),
        ));
    }
    Ok(v)
}

/// Reads a property section (its variable-length-integer length, then the properties) for `ctx`.
pub(crate) fn decode(r: &mut Reader, ctx: Ctx) -> Result<Properties, DecodeError> {
    let len = r.varint("property length")? as usize;
    let mut props = Properties::default();
    if len == 0 {
        return Ok(props);
    }
    let mut r = r.sub(len, "property section")?;
    let p = &mut props;
    while !r.is_empty() {
        let raw_id = r.varint("property identifier")?;
        let id = match u8::try_from(raw_id) {
            Ok(id) if id != 0 && id <= SHARED_SUBSCRIPTION_AVAILABLE && known(id) => id,
            _ => {
                return Err(DecodeError::malformed(format!(
                    "{}: unknown property identifier 0x{raw_id:02X}",
                    ctx.name()
                )))
            }
        };
        if !allowed(ctx, id) {
            return Err(protocol_error(
                ctx,
                format!("property 0x{id:02X} is not allowed here"),
            ));
        }
        one(&mut r, ctx, id, p)?;
    }
    Ok(props)
}

/// Reads the value of property `id` (known and allowed in `ctx`) into `p`.
#[inline]
fn one(r: &mut Reader, ctx: Ctx, id: u8, p: &mut Properties) -> Result<(), DecodeError> {
    match id {
        PAYLOAD_FORMAT_INDICATOR => {
            let v = flag(r, ctx, id)?;
            set_once(&mut p.payload_format_indicator, v, ctx, id)?
        }
        MESSAGE_EXPIRY_INTERVAL => {
            let v = r.u32("message expiry interval")?;
            set_once(&mut p.message_expiry_interval, v, ctx, id)?
        }
        CONTENT_TYPE => {
            let v = r.string("content type")?;
            set_once(&mut p.content_type, v, ctx, id)?
        }
        RESPONSE_TOPIC => {
            let v = r.string("response topic")?;
            // A topic name, published to by the responder: no wildcards (MQTT-3.3.2-14), no control
            // characters.
            if !super::topic::valid_topic_name(&v) {
                return Err(DecodeError::protocol_error(format!(
                    "response topic {v:?} is not a valid topic name"
                )));
            }
            set_once(&mut p.response_topic, v, ctx, id)?
        }
        CORRELATION_DATA => {
            let v = r.binary("correlation data")?;
            set_once(&mut p.correlation_data, v, ctx, id)?
        }
        SUBSCRIPTION_IDENTIFIER => {
            let v = r.varint("subscription identifier")?;
            if v == 0 {
                return Err(protocol_error(ctx, "subscription identifier 0".into()));
            }
            // A server forwards one per matching subscription; a SUBSCRIBE carries at most one.
            if ctx == Ctx::Subscribe && !p.subscription_identifiers.is_empty() {
                return Err(protocol_error(
                    ctx,
                    "subscription identifier appears more than once".into(),
                ));
            }
            p.subscription_identifiers.push(v);
        }
        SESSION_EXPIRY_INTERVAL => {
            let v = r.u32("session expiry interval")?;
            set_once(&mut p.session_expiry_interval, v, ctx, id)?
        }
        ASSIGNED_CLIENT_IDENTIFIER => {
            let v = r.string("assigned client identifier")?;
            set_once(&mut p.assigned_client_identifier, v, ctx, id)?
        }
        SERVER_KEEP_ALIVE => {
            let v = r.u16("server keep alive")?;
            set_once(&mut p.server_keep_alive, v, ctx, id)?
        }
        AUTHENTICATION_METHOD => {
            let v = r.string("authentication method")?;
            set_once(&mut p.authentication_method, v, ctx, id)?
        }
        AUTHENTICATION_DATA => {
            let v = r.binary("authentication data")?;
            set_once(&mut p.authentication_data, v, ctx, id)?
        }
        REQUEST_PROBLEM_INFORMATION => {
            let v = flag(r, ctx, id)?;
            set_once(&mut p.request_problem_information, v, ctx, id)?
        }
        WILL_DELAY_INTERVAL => {
            let v = r.u32("will delay interval")?;
            set_once(&mut p.will_delay_interval, v, ctx, id)?
        }
        REQUEST_RESPONSE_INFORMATION => {
            let v = flag(r, ctx, id)?;
            set_once(&mut p.request_response_information, v, ctx, id)?
        }
        RESPONSE_INFORMATION => {
            let v = r.string("response information")?;
            set_once(&mut p.response_information, v, ctx, id)?
        }
        SERVER_REFERENCE => {
            let v = r.string("server reference")?;
            set_once(&mut p.server_reference, v, ctx, id)?
        }
        REASON_STRING => {
            let v = r.string("reason string")?;
            set_once(&mut p.reason_string, v, ctx, id)?
        }
        RECEIVE_MAXIMUM => {
            let v = r.u16("receive maximum")?;
            if v == 0 {
                return Err(protocol_error(ctx, "receive maximum 0".into()));
            }
            set_once(&mut p.receive_maximum, v, ctx, id)?
        }
        TOPIC_ALIAS_MAXIMUM => {
            let v = r.u16("topic alias maximum")?;
            set_once(&mut p.topic_alias_maximum, v, ctx, id)?
        }
        TOPIC_ALIAS => {
            let v = r.u16("topic alias")?;
            if v == 0 {
                // The spec names its own reason code for this rather than a generic protocol error.
                return Err(DecodeError::new(
                    super::reason::TOPIC_ALIAS_INVALID,
                    "PUBLISH: topic alias 0",
                ));
            }
            set_once(&mut p.topic_alias, v, ctx, id)?
        }
        MAXIMUM_QOS => {
            let v = flag(r, ctx, id)?;
            set_once(&mut p.maximum_qos, v, ctx, id)?
        }
        RETAIN_AVAILABLE => {
            let v = flag(r, ctx, id)?;
            set_once(&mut p.retain_available, v, ctx, id)?
        }
        USER_PROPERTY => {
            let k = r.string("user property name")?;
            let v = r.string("user property value")?;
            p.user_properties.push((k, v));
        }
        MAXIMUM_PACKET_SIZE => {
            let v = r.u32("maximum packet size")?;
            if v == 0 {
                return Err(protocol_error(ctx, "maximum packet size 0".into()));
            }
            set_once(&mut p.maximum_packet_size, v, ctx, id)?
        }
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            let v = flag(r, ctx, id)?;
            set_once(&mut p.wildcard_subscription_available, v, ctx, id)?
        }
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            let v = flag(r, ctx, id)?;
            set_once(&mut p.subscription_identifier_available, v, ctx, id)?
        }
        SHARED_SUBSCRIPTION_AVAILABLE => {
            let v = flag(r, ctx, id)?;
            set_once(&mut p.shared_subscription_available, v, ctx, id)?
        }
        _ => unreachable!("identifier 0x{id:02X} passed the known() check"),
    }
    Ok(())
}

/// Identifiers the spec defines (the table has gaps).
fn known(id: u8) -> bool {
    matches!(
        id,
        0x01 | 0x02
            | 0x03
            | 0x08
            | 0x09
            | 0x0B
            | 0x11
            | 0x12
            | 0x13
            | 0x15
            | 0x16
            | 0x17
            | 0x18
            | 0x19
            | 0x1A
            | 0x1C
            | 0x1F
            | 0x21
            | 0x22
            | 0x23
            | 0x24
            | 0x25
            | 0x26
            | 0x27
            | 0x28
            | 0x29
            | 0x2A
    )
}

/// Walks the properties `ctx` allows, in identifier order, handing each encoded piece to `v`. One walker for
/// both the length computation and the writer keeps the two from drifting apart.
#[inline]
fn walk<V: Visit>(p: &Properties, ctx: Ctx, v: &mut V) {
    let ok = |id| allowed(ctx, id);
    if let Some(x) = p.payload_format_indicator {
        if ok(PAYLOAD_FORMAT_INDICATOR) {
            v.byte(PAYLOAD_FORMAT_INDICATOR, x);
        }
    }
    if let Some(x) = p.message_expiry_interval {
        if ok(MESSAGE_EXPIRY_INTERVAL) {
            v.u32(MESSAGE_EXPIRY_INTERVAL, x);
        }
    }
    if let Some(x) = &p.content_type {
        if ok(CONTENT_TYPE) {
            v.bin(CONTENT_TYPE, x.as_bytes());
        }
    }
    if let Some(x) = &p.response_topic {
        if ok(RESPONSE_TOPIC) {
            v.bin(RESPONSE_TOPIC, x.as_bytes());
        }
    }
    if let Some(x) = &p.correlation_data {
        if ok(CORRELATION_DATA) {
            v.bin(CORRELATION_DATA, x);
        }
    }
    if ok(SUBSCRIPTION_IDENTIFIER) {
        // A SUBSCRIBE may carry only one; writing more would make our own output a protocol error.
        let n = if ctx == Ctx::Subscribe { 1 } else { usize::MAX };
        for &x in p.subscription_identifiers.iter().take(n) {
            v.varint(SUBSCRIPTION_IDENTIFIER, x);
        }
    }
    if let Some(x) = p.session_expiry_interval {
        if ok(SESSION_EXPIRY_INTERVAL) {
            v.u32(SESSION_EXPIRY_INTERVAL, x);
        }
    }
    if let Some(x) = &p.assigned_client_identifier {
        if ok(ASSIGNED_CLIENT_IDENTIFIER) {
            v.bin(ASSIGNED_CLIENT_IDENTIFIER, x.as_bytes());
        }
    }
    if let Some(x) = p.server_keep_alive {
        if ok(SERVER_KEEP_ALIVE) {
            v.u16(SERVER_KEEP_ALIVE, x);
        }
    }
    if let Some(x) = &p.authentication_method {
        if ok(AUTHENTICATION_METHOD) {
            v.bin(AUTHENTICATION_METHOD, x.as_bytes());
        }
    }
    if let Some(x) = &p.authentication_data {
        if ok(AUTHENTICATION_DATA) {
            v.bin(AUTHENTICATION_DATA, x);
        }
    }
    if let Some(x) = p.request_problem_information {
        if ok(REQUEST_PROBLEM_INFORMATION) {
            v.byte(REQUEST_PROBLEM_INFORMATION, x);
        }
    }
    if let Some(x) = p.will_delay_interval {
        if ok(WILL_DELAY_INTERVAL) {
            v.u32(WILL_DELAY_INTERVAL, x);
        }
    }
    if let Some(x) = p.request_response_information {
        if ok(REQUEST_RESPONSE_INFORMATION) {
            v.byte(REQUEST_RESPONSE_INFORMATION, x);
        }
    }
    if let Some(x) = &p.response_information {
        if ok(RESPONSE_INFORMATION) {
            v.bin(RESPONSE_INFORMATION, x.as_bytes());
        }
    }
    if let Some(x) = &p.server_reference {
        if ok(SERVER_REFERENCE) {
            v.bin(SERVER_REFERENCE, x.as_bytes());
        }
    }
    if let Some(x) = &p.reason_string {
        if ok(REASON_STRING) {
            v.bin(REASON_STRING, x.as_bytes());
        }
    }
    if let Some(x) = p.receive_maximum {
        if ok(RECEIVE_MAXIMUM) {
            v.u16(RECEIVE_MAXIMUM, x);
        }
    }
    if let Some(x) = p.topic_alias_maximum {
        if ok(TOPIC_ALIAS_MAXIMUM) {
            v.u16(TOPIC_ALIAS_MAXIMUM, x);
        }
    }
    if let Some(x) = p.topic_alias {
        if ok(TOPIC_ALIAS) {
            v.u16(TOPIC_ALIAS, x);
        }
    }
    if let Some(x) = p.maximum_qos {
        if ok(MAXIMUM_QOS) {
            v.byte(MAXIMUM_QOS, x);
        }
    }
    if let Some(x) = p.retain_available {
        if ok(RETAIN_AVAILABLE) {
            v.byte(RETAIN_AVAILABLE, x);
        }
    }
    for (k, val) in &p.user_properties {
        v.pair(USER_PROPERTY, k, val);
    }
    if let Some(x) = p.maximum_packet_size {
        if ok(MAXIMUM_PACKET_SIZE) {
            v.u32(MAXIMUM_PACKET_SIZE, x);
        }
    }
    if let Some(x) = p.wildcard_subscription_available {
        if ok(WILDCARD_SUBSCRIPTION_AVAILABLE) {
            v.byte(WILDCARD_SUBSCRIPTION_AVAILABLE, x);
        }
    }
    if let Some(x) = p.subscription_identifier_available {
        if ok(SUBSCRIPTION_IDENTIFIER_AVAILABLE) {
            v.byte(SUBSCRIPTION_IDENTIFIER_AVAILABLE, x);
        }
    }
    if let Some(x) = p.shared_subscription_available {
        if ok(SHARED_SUBSCRIPTION_AVAILABLE) {
            v.byte(SHARED_SUBSCRIPTION_AVAILABLE, x);
        }
    }
}

trait Visit {
    fn byte(&mut self, id: u8, x: u8);
    fn u16(&mut self, id: u8, x: u16);
    fn u32(&mut self, id: u8, x: u32);
    fn varint(&mut self, id: u8, x: u32);
    fn bin(&mut self, id: u8, x: &[u8]);
    fn pair(&mut self, id: u8, k: &str, v: &str);
}

struct Len(usize);

impl Visit for Len {
    fn byte(&mut self, _: u8, _: u8) {
        self.0 += 2;
    }
    fn u16(&mut self, _: u8, _: u16) {
        self.0 += 3;
    }
    fn u32(&mut self, _: u8, _: u32) {
        self.0 += 5;
    }
    fn varint(&mut self, _: u8, x: u32) {
        self.0 += 1 + varint_len(x as usize);
    }
    fn bin(&mut self, _: u8, x: &[u8]) {
        self.0 += 1 + binary_len(x);
    }
    fn pair(&mut self, _: u8, k: &str, v: &str) {
        self.0 += 1 + str_len(k) + str_len(v);
    }
}

struct Write<'a>(&'a mut BytesMut);

impl Visit for Write<'_> {
    fn byte(&mut self, id: u8, x: u8) {
        self.0.put_u8(id);
        self.0.put_u8(x);
    }
    fn u16(&mut self, id: u8, x: u16) {
        self.0.put_u8(id);
        self.0.put_u16(x);
    }
    fn u32(&mut self, id: u8, x: u32) {
        self.0.put_u8(id);
        self.0.put_u32(x);
    }
    fn varint(&mut self, id: u8, x: u32) {
        self.0.put_u8(id);
        put_varint(self.0, x as usize);
    }
    fn bin(&mut self, id: u8, x: &[u8]) {
        self.0.put_u8(id);
        put_binary(self.0, x);
    }
    fn pair(&mut self, id: u8, k: &str, v: &str) {
        self.0.put_u8(id);
        put_str(self.0, k);
        put_str(self.0, v);
    }
}

/// Length of the property bytes (without the length prefix) that [`encode`] writes for `ctx`.
#[inline]
pub(crate) fn len(p: &Properties, ctx: Ctx) -> usize {
    let mut l = Len(0);
    walk(p, ctx, &mut l);
    l.0
}

/// Size of the whole section: length prefix plus properties, given `len(p, ctx)`.
#[inline]
pub(crate) fn section_len(props_len: usize) -> usize {
    varint_len(props_len) + props_len
}

/// Writes the property section (length prefix + properties); `props_len` must be `len(p, ctx)`.
#[inline]
pub(crate) fn encode(out: &mut BytesMut, p: &Properties, ctx: Ctx, props_len: usize) {
    put_varint(out, props_len);
    if props_len > 0 {
        walk(p, ctx, &mut Write(out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn dec(bytes: &[u8], ctx: Ctx) -> Result<Properties, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes));
        let p = decode(&mut r, ctx)?;
        r.finish("test")?;
        Ok(p)
    }

    #[test]
    fn every_property_type_decodes() {
        // byte, u32, string, binary, varint, u16, string pair
        let bytes = [
            0x1d, // length 29
            0x01, 0x01, // payload format indicator
            0x02, 0x00, 0x00, 0x00, 0x3c, // message expiry 60
            0x03, 0x00, 0x01, b't', // content type
            0x09, 0x00, 0x02, 0xff, 0x00, // correlation data
            0x0b, 0x80, 0x01, // subscription identifier 128
            0x23, 0x00, 0x07, // topic alias 7
            0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
        ];
        let p = dec(&bytes, Ctx::Publish).unwrap();
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.message_expiry_interval, Some(60));
        assert_eq!(p.content_type.as_deref(), Some("t"));
        assert_eq!(p.correlation_data.as_deref(), Some(&[0xff, 0x00][..]));
        assert_eq!(p.subscription_identifiers, vec![128]);
        assert_eq!(p.topic_alias, Some(7));
        assert_eq!(p.user_properties, vec![("k".into(), "v".into())]);
        let mut out = BytesMut::new();
        let l = len(&p, Ctx::Publish);
        encode(&mut out, &p, Ctx::Publish, l);
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn property_not_allowed_in_packet_is_protocol_error() {
        // Topic alias in CONNECT.
        assert_eq!(
            dec(&[0x03, 0x23, 0x00, 0x01], Ctx::Connect)
                .unwrap_err()
                .reason_code,
            0x82
        );
        // Will delay in PUBLISH.
        assert_eq!(
            dec(&[0x05, 0x18, 0, 0, 0, 1], Ctx::Publish)
                .unwrap_err()
                .reason_code,
            0x82
        );
        // Reason string in SUBSCRIBE.
        assert_eq!(
            dec(&[0x03, 0x1f, 0, 0], Ctx::Subscribe)
                .unwrap_err()
                .reason_code,
            0x82
        );
    }

    #[test]
    fn repeated_single_property_is_protocol_error() {
        let e = dec(&[0x06, 0x21, 0, 1, 0x21, 0, 2], Ctx::Connect).unwrap_err();
        assert_eq!(e.reason_code, 0x82);
        // Two subscription identifiers in SUBSCRIBE: protocol error; in PUBLISH: fine.
        let two = [0x04, 0x0b, 0x01, 0x0b, 0x02];
        assert_eq!(dec(&two, Ctx::Subscribe).unwrap_err().reason_code, 0x82);
        assert_eq!(
            dec(&two, Ctx::Publish).unwrap().subscription_identifiers,
            vec![1, 2]
        );
        // User properties repeat freely.
        let up = [0x0a, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0];
        assert_eq!(dec(&up[..11], Ctx::Auth).unwrap_err().reason_code, 0x81);
        let up = [0x0c, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0];
        assert_eq!(dec(&up, Ctx::Auth).unwrap().user_properties.len(), 2);
    }

    #[test]
    fn forbidden_values_are_protocol_errors() {
        for (bytes, ctx) in [
            (&[0x03, 0x21, 0, 0][..], Ctx::Connect), // receive maximum 0
            (&[0x05, 0x27, 0, 0, 0, 0], Ctx::ConnAck), // maximum packet size 0
            (&[0x02, 0x17, 2], Ctx::Connect),        // request problem info 2
            (&[0x02, 0x19, 2], Ctx::Connect),        // request response info 2
            (&[0x02, 0x24, 2], Ctx::ConnAck),        // maximum QoS 2
            (&[0x02, 0x25, 2], Ctx::ConnAck),        // retain available 2
            (&[0x02, 0x28, 2], Ctx::ConnAck),        // wildcard available 2
            (&[0x02, 0x29, 2], Ctx::ConnAck),        // sub id available 2
            (&[0x02, 0x2a, 2], Ctx::ConnAck),        // shared available 2
            (&[0x02, 0x01, 2], Ctx::Publish),        // payload format 2
            (&[0x02, 0x0b, 0], Ctx::Subscribe),      // subscription identifier 0
        ] {
            assert_eq!(
                dec(bytes, ctx).unwrap_err().reason_code,
                0x82,
                "{bytes:02x?}"
            );
        }
        assert_eq!(
            dec(&[0x03, 0x23, 0, 0], Ctx::Publish)
                .unwrap_err()
                .reason_code,
            0x94
        );
    }

    #[test]
    fn unknown_identifier_and_overruns_are_malformed() {
        assert_eq!(
            dec(&[0x02, 0x04, 0], Ctx::Publish).unwrap_err().reason_code,
            0x81
        );
        assert_eq!(
            dec(&[0x02, 0x80, 0x01], Ctx::Publish)
                .unwrap_err()
                .reason_code,
            0x81
        );
        // Property length longer than the packet.
        assert_eq!(
            dec(&[0x05, 0x01, 0x01], Ctx::Publish)
                .unwrap_err()
                .reason_code,
            0x81
        );
        // A value running past the property section.
        assert_eq!(
            dec(&[0x02, 0x02, 0, 0, 0, 0], Ctx::Publish)
                .unwrap_err()
                .reason_code,
            0x81
        );
    }

    #[test]
    fn encoder_skips_properties_the_packet_does_not_allow() {
        let p = Properties {
            topic_alias: Some(3),
            reason_string: Some("x".into()),
            subscription_identifiers: vec![1, 2],
            ..Properties::default()
        };
        assert_eq!(len(&p, Ctx::Connect), 0);
        assert_eq!(len(&p, Ctx::PubResp), 4);
        assert_eq!(len(&p, Ctx::Subscribe), 2);
        assert_eq!(len(&p, Ctx::Publish), 3 + 4);
    }
}
