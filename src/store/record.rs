//! What goes into the log ([`LogRecord`]) and what comes out ([`LogRow`]), and the `props` encoding.
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::mqtt::Properties;

/// One message to append to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// When the message was produced (unix milliseconds): the reading's timestamp for adapter readings, the
    /// arrival time for client publishes. Age retention and history queries use it.
    pub ts_ms: i64,
    /// MQTT topic.
    pub topic: Arc<str>,
    /// Payload, as published.
    pub payload: Bytes,
    /// QoS it was published with (0..=2).
    pub qos: u8,
    /// Retain flag it was published with.
    pub retain: bool,
    /// The MQTT 5 properties worth forwarding upstream; `None` for most messages (boxed to keep records small).
    pub props: Option<Box<MsgProps>>,
    /// Device name, for adapter readings.
    pub device: Option<Arc<str>>,
    /// Point name, for adapter readings.
    pub point: Option<Arc<str>>,
    /// Numeric value of an adapter reading (after scaling), for history queries. NaN is stored as NULL.
    pub num: Option<f64>,
}

impl LogRecord {
    /// A plain message stamped now: QoS 0, no retain, no properties, not a reading.
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> LogRecord {
        LogRecord {
            ts_ms: now_ms(),
            topic: topic.into(),
            payload: payload.into(),
            qos: 0,
            retain: false,
            props: None,
            device: None,
            point: None,
            num: None,
        }
    }

    /// Rough bytes this record takes in the database (row + index entries); used only to size how much room
    /// to make after a disk-full error, never for the cap (which measures the real file).
    pub(crate) fn approx_bytes(&self) -> u64 {
        let text = self.topic.len() * 2
            + self.device.as_deref().map_or(0, str::len) * 2
            + self.point.as_deref().map_or(0, str::len) * 2;
        (text + self.payload.len() + self.props.as_ref().map_or(0, |_| 64) + 48) as u64
    }
}

/// One row read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    /// Sequence number: assigned at commit order, strictly increasing, never reused.
    pub seq: u64,
    /// See [`LogRecord::ts_ms`].
    pub ts_ms: i64,
    /// MQTT topic.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS (0..=2).
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 properties, if any were stored.
    pub props: Option<Box<MsgProps>>,
    /// Device name (readings only).
    pub device: Option<Arc<str>>,
    /// Point name (readings only).
    pub point: Option<Arc<str>>,
    /// Numeric value (readings only).
    pub num: Option<f64>,
}

/// The PUBLISH properties of MQTT 5 that still mean something when the message is forwarded later, by
/// another connection. Topic alias and subscription identifiers are per-connection and are not kept.
///
/// `message_expiry_interval` is the value as published; a bridge forwarding the row should subtract the time
/// the row spent in the log (`now - ts_ms`) and skip it if the result is not positive (MQTT 5 §3.3.2.3.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MsgProps {
    /// 0x01 payload format indicator.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 message expiry interval (seconds), as published.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 content type.
    pub content_type: Option<String>,
    /// 0x08 response topic.
    pub response_topic: Option<String>,
    /// 0x09 correlation data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 user properties, in order.
    pub user_properties: Vec<(String, String)>,
}

/// Format byte that starts every stored `props` blob. A later encoding gets a new byte; old rows stay readable.
const PROPS_FORMAT_V1: u8 = 1;

impl MsgProps {
    /// The properties of a PUBLISH worth keeping; `None` when it has none of them (the common case).
    pub fn from_properties(p: &Properties) -> Option<MsgProps> {
        let m = MsgProps {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
        };
        (!m.is_empty()).then_some(m)
    }

    /// Back to the broker's property struct (for forwarding); other fields are left at their defaults.
    pub fn to_properties(&self) -> Properties {
        Properties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            content_type: self.content_type.clone(),
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self.user_properties.clone(),
            ..Properties::default()
        }
    }

    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }

    /// Encodes into `out` (cleared first). Format v1: the byte `1`, then for each present property its MQTT 5
    /// identifier byte followed by its value — u8 as one byte, the expiry as 4 bytes big-endian, strings and
    /// binary data as a LEB128 length then the bytes; a user property is two such strings. Properties appear in
    /// identifier order, user properties last and in their original order.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(PROPS_FORMAT_V1);
        if let Some(v) = self.payload_format_indicator {
            out.extend_from_slice(&[0x01, v]);
        }
        if let Some(v) = self.message_expiry_interval {
            out.push(0x02);
            out.extend_from_slice(&v.to_be_bytes());
        }
        if let Some(v) = &self.content_type {
            out.push(0x03);
            put_bytes(out, v.as_bytes());
        }
        if let Some(v) = &self.response_topic {
            out.push(0x08);
            put_bytes(out, v.as_bytes());
        }
        if let Some(v) = &self.correlation_data {
            out.push(0x09);
            put_bytes(out, v);
        }
        for (k, v) in &self.user_properties {
            out.push(0x26);
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
    }

    /// Decodes a blob written by [`MsgProps::encode_into`].
    pub fn decode(mut b: &[u8]) -> Result<MsgProps, String> {
        match take(&mut b, 1)?[0] {
            PROPS_FORMAT_V1 => {}
            f => return Err(format!("unknown props format {f}")),
        }
        let mut m = MsgProps::default();
        while let Some((&id, rest)) = b.split_first() {
            b = rest;
            match id {
                0x01 => m.payload_format_indicator = Some(take(&mut b, 1)?[0]),
                0x02 => {
                    let v = take(&mut b, 4)?;
                    m.message_expiry_interval = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                }
                0x03 => m.content_type = Some(take_str(&mut b)?),
                0x08 => m.response_topic = Some(take_str(&mut b)?),
                0x09 => m.correlation_data = Some(Bytes::copy_from_slice(take_bytes(&mut b)?)),
                0x26 => {
                    let k = take_str(&mut b)?;
                    let v = take_str(&mut b)?;
                    m.user_properties.push((k, v));
                }
                other => return Err(format!("unknown property id 0x{other:02x}")),
            }
        }
        Ok(m)
    }
}

fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
    let mut n = v.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(v);
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("truncated props".into());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let mut n: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = take(b, 1)?[0];
        if shift > 56 {
            return Err("bad length in props".into());
        }
        n |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let n = usize::try_from(n).map_err(|_| "bad length in props".to_string())?;
    take(b, n)
}

fn take_str(b: &mut &[u8]) -> Result<String, String> {
    let v = take_bytes(b)?;
    String::from_utf8(v.to_vec()).map_err(|_| "non-UTF-8 string in props".to_string())
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_roundtrip() {
        let full = MsgProps {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some("application/json".into()),
            response_topic: Some("gw/reply/ü".into()),
            correlation_data: Some(Bytes::from(vec![0u8; 300])),
            user_properties: vec![
                ("a".into(), "1".into()),
                ("a".into(), "2".into()),
                ("".into(), "".into()),
            ],
        };
        for m in [
            full,
            MsgProps::default(),
            MsgProps {
                message_expiry_interval: Some(0),
                ..Default::default()
            },
        ] {
            let mut buf = Vec::new();
            m.encode_into(&mut buf);
            assert_eq!(MsgProps::decode(&buf).unwrap(), m);
        }
        let mut buf = Vec::new();
        MsgProps {
            content_type: Some("x".into()),
            ..Default::default()
        }
        .encode_into(&mut buf);
        assert_eq!(buf, [1, 0x03, 1, b'x']);
    }

    #[test]
    fn props_decode_rejects_garbage() {
        assert!(MsgProps::decode(&[]).is_err());
        assert!(MsgProps::decode(&[2]).is_err());
        assert!(MsgProps::decode(&[1, 0x02, 0, 0]).is_err());
        assert!(MsgProps::decode(&[1, 0x03, 5, b'a']).is_err());
        assert!(MsgProps::decode(&[1, 0x7f]).is_err());
        assert!(MsgProps::decode(&[
            1, 0x03, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .is_err());
    }

    #[test]
    fn props_from_broker_properties() {
        assert_eq!(MsgProps::from_properties(&Properties::default()), None);
        let p = Properties {
            content_type: Some("text/plain".into()),
            topic_alias: Some(3),
            subscription_identifiers: vec![7],
            ..Default::default()
        };
        let m = MsgProps::from_properties(&p).unwrap();
        assert_eq!(m.content_type.as_deref(), Some("text/plain"));
        let back = m.to_properties();
        assert_eq!(back.topic_alias, None);
        assert!(back.subscription_identifiers.is_empty());
        assert_eq!(back.content_type.as_deref(), Some("text/plain"));
    }
}
