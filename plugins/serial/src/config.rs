//! The serial part of a device map: raw serde structs, then the checks that need several keys at once.
//!
//! Every key is documented in `plugins/serial/README.md`. Every problem is reported in one run, each at the
//! key or value that causes it.
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::config::{HumanDuration, Spanned};
use fieldbridge_sdk::{ConfigError, ConfigNode, DeviceConfig, PointConfig};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::binary::{self, BinType, Order};
use crate::checksum::{Algorithm, ChecksumSpec, Encoding};
use crate::escape::{parse_hex, unescape};
use crate::framing::{FramingSpec, Terminator};
use crate::parse::{Parser, Source, ValueType};
use crate::template::Template;

/// Default `max_frame`.
pub const DEFAULT_MAX_FRAME: usize = 1024;
/// Largest `max_frame` (and fixed `length`) accepted.
pub const MAX_MAX_FRAME: usize = 65536;
/// Largest compiled regex (bytes of automaton), so a device map cannot make the gateway build a huge one.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Parity {
    /// None.
    #[default]
    None,
    /// Even.
    Even,
    /// Odd.
    Odd,
}

/// Flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// How to open the port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSettings {
    /// Device path (`/dev/ttyUSB0`, `/dev/serial/by-id/…`).
    pub path: String,
    /// Baud rate.
    pub baud: u32,
    /// 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow_control: FlowControl,
}

impl Default for PortSettings {
    fn default() -> Self {
        PortSettings {
            path: String::new(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
        }
    }
}

impl fmt::Display for PortSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} baud {}{}{}",
            self.path,
            self.baud,
            self.data_bits,
            match self.parity {
                Parity::None => 'N',
                Parity::Even => 'E',
                Parity::Odd => 'O',
            },
            self.stop_bits
        )
    }
}

/// What happens to a frame that fails its checksum or parser, or a value that does not convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Counted (and logged once per run of failures); nothing is published.
    #[default]
    Count,
    /// Counted, and every point of the parser gets a `bad` reading.
    Bad,
}

/// A write-back.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    /// What to send.
    pub template: Template,
    /// A reply matching it means success.
    pub reply: Option<regex::bytes::Regex>,
    /// A reply matching it means the device refused.
    pub reply_error: Option<regex::bytes::Regex>,
    /// How long to wait for a reply.
    pub reply_timeout: Duration,
}

/// A validated point.
#[derive(Debug, Clone)]
pub struct SerialPoint {
    /// Name.
    pub name: Arc<str>,
    /// Where its value is read from; `None` for write-only points.
    pub source: Option<Source>,
    /// Conversion of text/JSON fields.
    pub ty: ValueType,
    /// Its request (polled devices).
    pub request: Option<usize>,
    /// Whether writes are allowed.
    pub writable: bool,
    /// How writes are done.
    pub write: Option<WriteSpec>,
}

/// A request of a polled device.
#[derive(Debug, Clone)]
pub struct Request {
    /// Name.
    pub name: Arc<str>,
    /// Bytes sent.
    pub send: Vec<u8>,
    /// Parses the answer.
    pub parser: Parser,
    /// Failed answers.
    pub on_error: OnError,
    /// How often.
    pub interval: Duration,
}

/// Streaming (the device talks by itself) or polled (it answers requests).
#[derive(Debug, Clone)]
pub enum Mode {
    /// Every frame is parsed with one parser.
    Stream {
        /// Parser.
        parser: Parser,
        /// Failed frames.
        on_error: OnError,
    },
    /// Requests sent at intervals.
    Polled(Vec<Request>),
}

/// A validated serial device.
#[derive(Debug, Clone)]
pub struct SerialDevice {
    /// Name.
    pub name: Arc<str>,
    /// Port.
    pub port: PortSettings,
    /// Framing.
    pub framing: FramingSpec,
    /// A silence this long ends any partial frame.
    pub gap: Option<Duration>,
    /// Streaming or polled.
    pub mode: Mode,
    /// Points, in device-map order.
    pub points: Vec<SerialPoint>,
    /// Request timeout (polled) and default reply timeout.
    pub timeout: Duration,
    /// Retries of a failed request.
    pub retries: u32,
    /// First reopen delay.
    pub reopen_min: Duration,
    /// Longest reopen delay.
    pub reopen_max: Duration,
    /// Streaming: offline after this long without a valid frame.
    pub silence_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    #[serde(alias = "path", alias = "device")]
    port: Spanned<String>,
    baud: Option<Spanned<u32>>,
    data_bits: Option<Spanned<u8>>,
    parity: Option<Parity>,
    stop_bits: Option<Spanned<u8>>,
    flow_control: Option<FlowControl>,
    reopen_min: Option<Spanned<HumanDuration>>,
    reopen_max: Option<Spanned<HumanDuration>>,
    silence_timeout: Option<Spanned<HumanDuration>>,
    // Read from their own nodes (for positions); listed so that they are known keys.
    #[allow(dead_code)]
    framing: Option<de::IgnoredAny>,
    #[allow(dead_code)]
    parser: Option<de::IgnoredAny>,
    on_error: Option<OnError>,
    #[allow(dead_code)]
    requests: Option<de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFraming {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    terminator: Option<Spanned<String>>,
    max_frame: Option<Spanned<u64>>,
    length: Option<Spanned<u64>>,
    start: Option<Spanned<String>>,
    start_hex: Option<Spanned<String>>,
    end: Option<Spanned<String>>,
    end_hex: Option<Spanned<String>>,
    keep_delimiters: Option<Spanned<bool>>,
    length_offset: Option<Spanned<u64>>,
    length_size: Option<Spanned<u64>>,
    length_order: Option<Spanned<String>>,
    length_adjust: Option<Spanned<i64>>,
    gap: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParser {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    pattern: Option<Spanned<String>>,
    delimiter: Option<Spanned<String>>,
    columns: Option<Spanned<Vec<String>>>,
    separator: Option<Spanned<String>>,
    assign: Option<Spanned<String>>,
    require_checksum: Option<Spanned<bool>>,
    checksum: Option<Spanned<RawChecksum>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChecksum {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    from: Option<i64>,
    to: Option<i64>,
    at: Option<i64>,
    order: Option<Spanned<String>>,
    encoding: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    name: Spanned<String>,
    send: Option<Spanned<String>>,
    send_hex: Option<Spanned<String>>,
    #[allow(dead_code)] // read from its own node
    parser: Option<de::IgnoredAny>,
    on_error: Option<OnError>,
    interval: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    field: Option<Spanned<FieldName>>,
    #[serde(rename = "type")]
    ty: Option<Spanned<String>>,
    /// Byte position of a binary field (`offset` is the core's value offset).
    at: Option<Spanned<i64>>,
    order: Option<Spanned<String>>,
    length: Option<Spanned<u64>>,
    request: Option<Spanned<String>>,
    write: Option<Spanned<String>>,
    write_hex: Option<Spanned<String>>,
    reply: Option<Spanned<String>>,
    reply_error: Option<Spanned<String>>,
    reply_timeout: Option<Spanned<HumanDuration>>,
}

/// A field name: a string, or a column number.
#[derive(Debug, Clone, PartialEq)]
struct FieldName(String);

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name, a column number or a JSON pointer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldName, E> {
                Ok(FieldName(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldName, E> {
                if v < 0 {
                    return Err(E::custom("column numbers start at 0"));
                }
                Ok(FieldName(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldName, E> {
                Ok(FieldName(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

macro_rules! deserialize_from_str {
    ($t:ty, $what:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$t, E> {
                        <$t>::from_str(s).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

impl FromStr for Parity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "n" | "no" => Ok(Parity::None),
            "even" | "e" => Ok(Parity::Even),
            "odd" | "o" => Ok(Parity::Odd),
            _ => Err(format!("unknown parity `{s}`; expected none, even or odd")),
        }
    }
}

impl FromStr for FlowControl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "no" => Ok(FlowControl::None),
            "software" | "xon_xoff" | "xonxoff" => Ok(FlowControl::Software),
            "hardware" | "rts_cts" | "rtscts" => Ok(FlowControl::Hardware),
            _ => Err(format!(
                "unknown flow control `{s}`; expected none, software (XON/XOFF) or hardware (RTS/CTS)"
            )),
        }
    }
}

impl FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "count" => Ok(OnError::Count),
            "bad" => Ok(OnError::Bad),
            _ => Err(format!("unknown on_error `{s}`; expected count or bad")),
        }
    }
}

deserialize_from_str!(Parity, "none, even or odd");
deserialize_from_str!(FlowControl, "none, software or hardware");
deserialize_from_str!(OnError, "count or bad");

/// Text with escapes, or hex: exactly one of the two keys.
fn bytes_of(
    text: Option<&Spanned<String>>,
    hex: Option<&Spanned<String>>,
    at: &ConfigNode,
    what: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<u8>> {
    let (bytes, s) = match (text, hex) {
        (Some(_), Some(h)) => {
            errors.push(h.error(format!("give `{what}` or `{what}_hex`, not both")));
            return None;
        }
        (Some(t), None) => (unescape(&t.value), t),
        (None, Some(h)) => (parse_hex(&h.value), h),
        (None, None) => return None,
    };
    match bytes {
        Ok(b) if b.is_empty() => {
            errors.push(s.error(format!("`{what}` is empty")));
            None
        }
        Ok(b) => Some(b),
        Err(e) => {
            errors.push(s.error(e.to_string()));
            let _ = at;
            None
        }
    }
}

/// A request's bytes: a text or hex template without `{value}` (so `{crc16_modbus}` and friends work).
fn request_bytes(
    r: &RawRequest,
    item: &ConfigNode,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<u8>> {
    let (template, at) = match (&r.send, &r.send_hex) {
        (Some(_), Some(h)) => {
            errors.push(h.error("give `send` or `send_hex`, not both"));
            return None;
        }
        (Some(t), None) => (Template::text(&t.value), t),
        (None, Some(h)) => (Template::bytes(&h.value), h),
        (None, None) => {
            errors.push(item.error("a request needs `send:` (text with escapes) or `send_hex:`"));
            return None;
        }
    };
    let template = template
        .map_err(|e| errors.push(at.error(e.to_string())))
        .ok()?;
    if template.uses_value() {
        errors.push(at.error("a request has no value to put in `{value}`"));
        return None;
    }
    match template.render(&fieldbridge_sdk::Value::Int(0)) {
        Ok(b) if b.is_empty() => {
            errors.push(at.error("the request is empty"));
            None
        }
        Ok(b) => Some(b),
        Err(e) => {
            errors.push(at.error(e.to_string()));
            None
        }
    }
}

fn usize_in(
    v: &Spanned<u64>,
    min: u64,
    max: u64,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> usize {
    if !(min..=max).contains(&v.value) {
        errors.push(v.error(format!("{key} must be {min} to {max}, not {}", v.value)));
    }
    v.value.clamp(min, max) as usize
}

fn validate_framing(
    node: Option<&ConfigNode>,
    errors: &mut Vec<ConfigError>,
) -> (FramingSpec, Option<Duration>) {
    let default = FramingSpec::Line {
        terminator: Terminator::Any,
        max_frame: DEFAULT_MAX_FRAME,
    };
    let Some(node) = node.filter(|n| !n.is_null()) else {
        return (default, None);
    };
    let raw: RawFraming = match node.deserialize_all() {
        Ok(r) => r,
        Err(mut e) => {
            errors.append(&mut e);
            return (default, None);
        }
    };
    let kind = raw.kind.as_ref().map_or("line", |k| k.value.as_str());
    let max_frame = raw.max_frame.as_ref().map_or(DEFAULT_MAX_FRAME, |m| {
        usize_in(m, 1, MAX_MAX_FRAME as u64, "max_frame", errors)
    });
    let start = bytes_of(
        raw.start.as_ref(),
        raw.start_hex.as_ref(),
        node,
        "start",
        errors,
    );
    let end = bytes_of(raw.end.as_ref(), raw.end_hex.as_ref(), node, "end", errors);
    // Keys that belong to other framing types.
    let mut only = |present: bool, key: &str, types: &str| {
        if present {
            let at = node
                .as_map()
                .and_then(|m| {
                    m.iter()
                        .find(|(k, _)| k.as_str() == Some(key))
                        .map(|(k, _)| k)
                })
                .unwrap_or(node);
            errors.push(at.error(format!(
                "`{key}` only applies to framing type {types}, not `{kind}`"
            )));
        }
    };
    let spec = match kind {
        "line" => {
            only(raw.length.is_some(), "length", "fixed");
            only(
                raw.start.is_some() || raw.start_hex.is_some(),
                if raw.start.is_some() {
                    "start"
                } else {
                    "start_hex"
                },
                "fixed, delimited or length_prefixed",
            );
            only(
                raw.end.is_some() || raw.end_hex.is_some(),
                if raw.end.is_some() { "end" } else { "end_hex" },
                "delimited",
            );
            only(
                raw.keep_delimiters.is_some(),
                "keep_delimiters",
                "delimited",
            );
            only(
                raw.length_offset.is_some()
                    || raw.length_size.is_some()
                    || raw.length_order.is_some()
                    || raw.length_adjust.is_some(),
                "length_offset",
                "length_prefixed",
            );
            let terminator = match &raw.terminator {
                None => Terminator::Any,
                Some(t) => match t.value.to_ascii_lowercase().as_str() {
                    "lf" | "\n" => Terminator::Lf,
                    "cr" | "\r" => Terminator::Cr,
                    "crlf" | "\r\n" => Terminator::CrLf,
                    "any" => Terminator::Any,
                    _ => match unescape(&t.value) {
                        Ok(b) if b.is_empty() => {
                            errors.push(t.error("the terminator is empty"));
                            Terminator::Any
                        }
                        Ok(b) if b.len() > 16 => {
                            errors.push(t.error("a terminator is at most 16 bytes"));
                            Terminator::Any
                        }
                        Ok(b) => Terminator::Custom(b),
                        Err(e) => {
                            errors.push(t.error(format!("{e}; or use lf, cr, crlf or any")));
                            Terminator::Any
                        }
                    },
                },
            };
            FramingSpec::Line {
                terminator,
                max_frame,
            }
        }
        "fixed" => {
            only(raw.terminator.is_some(), "terminator", "line");
            only(
                raw.max_frame.is_some(),
                "max_frame",
                "line, delimited or length_prefixed (a fixed frame's size is its `length`)",
            );
            only(
                raw.end.is_some() || raw.end_hex.is_some(),
                "end",
                "delimited",
            );
            only(
                raw.keep_delimiters.is_some(),
                "keep_delimiters",
                "delimited",
            );
            only(
                raw.length_offset.is_some()
                    || raw.length_size.is_some()
                    || raw.length_order.is_some()
                    || raw.length_adjust.is_some(),
                "length_offset",
                "length_prefixed",
            );
            let length = match &raw.length {
                Some(l) => usize_in(l, 1, MAX_MAX_FRAME as u64, "length", errors),
                None => {
                    errors.push(node.error("`type: fixed` needs `length:` (bytes per frame)"));
                    1
                }
            };
            if let (Some(s), Some(l)) = (&start, &raw.length) {
                if s.len() as u64 > l.value {
                    errors.push(l.error("the frame is shorter than its `start` pattern"));
                }
            }
            FramingSpec::Fixed { length, start }
        }
        "delimited" => {
            only(raw.terminator.is_some(), "terminator", "line");
            only(raw.length.is_some(), "length", "fixed");
            only(
                raw.length_offset.is_some()
                    || raw.length_size.is_some()
                    || raw.length_order.is_some()
                    || raw.length_adjust.is_some(),
                "length_offset",
                "length_prefixed",
            );
            if start.is_none() && raw.start.is_none() && raw.start_hex.is_none() {
                errors.push(node.error("`type: delimited` needs `start:` (or `start_hex:`)"));
            }
            if end.is_none() && raw.end.is_none() && raw.end_hex.is_none() {
                errors.push(node.error("`type: delimited` needs `end:` (or `end_hex:`)"));
            }
            FramingSpec::Delimited {
                start: start.unwrap_or_else(|| vec![0]),
                end: end.unwrap_or_else(|| vec![0]),
                max_frame,
                keep_delimiters: raw.keep_delimiters.as_ref().is_some_and(|k| k.value),
            }
        }
        "length_prefixed" => {
            only(raw.terminator.is_some(), "terminator", "line");
            only(raw.length.is_some(), "length", "fixed");
            only(
                raw.end.is_some() || raw.end_hex.is_some(),
                "end",
                "delimited",
            );
            only(
                raw.keep_delimiters.is_some(),
                "keep_delimiters",
                "delimited",
            );
            let length_size = match &raw.length_size {
                Some(s) if ![1, 2, 4].contains(&s.value) => {
                    errors.push(s.error(format!(
                        "length_size must be 1, 2 or 4 (bytes), not {}",
                        s.value
                    )));
                    1
                }
                Some(s) => s.value as usize,
                None => 1,
            };
            let length_offset = match &raw.length_offset {
                Some(o) => usize_in(o, 0, MAX_MAX_FRAME as u64, "length_offset", errors),
                None => start.as_ref().map_or(0, Vec::len),
            };
            if length_offset + length_size > max_frame {
                errors.push(node.error(format!(
                    "the length field (offset {length_offset}, {length_size} bytes) does not fit in max_frame {max_frame}"
                )));
            }
            let little_endian = match &raw.length_order {
                None => false,
                Some(o) => match o.value.to_ascii_lowercase().as_str() {
                    "big" | "abcd" | "ab" => false,
                    "little" | "dcba" | "ba" => true,
                    _ => {
                        errors.push(o.error(format!(
                            "unknown length_order `{}`; expected big or little",
                            o.value
                        )));
                        false
                    }
                },
            };
            let length_adjust = raw.length_adjust.as_ref().map_or(0, |a| {
                if a.value.unsigned_abs() > MAX_MAX_FRAME as u64 {
                    errors.push(a.error("length_adjust is out of range"));
                    0
                } else {
                    a.value
                }
            });
            FramingSpec::LengthPrefixed {
                start,
                length_offset,
                length_size,
                little_endian,
                length_adjust,
                max_frame,
            }
        }
        other => {
            if let Some(k) = &raw.kind {
                errors.push(k.error(format!(
                    "unknown framing `{other}`; expected line, fixed, delimited or length_prefixed"
                )));
            }
            default
        }
    };
    (spec, raw.gap.map(Duration::from))
}

fn validate_checksum(
    raw: &Spanned<RawChecksum>,
    errors: &mut Vec<ConfigError>,
) -> Option<ChecksumSpec> {
    let r = &raw.value;
    let algorithm = match r.kind.value.parse::<Algorithm>() {
        Ok(a) => a,
        Err(e) => {
            errors.push(r.kind.error(e));
            return None;
        }
    };
    let mut spec = ChecksumSpec::new(algorithm);
    spec.from = r.from.unwrap_or(0);
    spec.to = r.to;
    spec.at = r.at;
    if let Some(o) = &r.order {
        match o.value.to_ascii_lowercase().as_str() {
            "big" | "ab" | "abcd" => spec.little_endian = false,
            "little" | "ba" | "dcba" => spec.little_endian = true,
            _ => errors.push(o.error(format!(
                "unknown order `{}`; expected big or little",
                o.value
            ))),
        }
    }
    if let Some(e) = &r.encoding {
        match e.value.to_ascii_lowercase().as_str() {
            "binary" => spec.encoding = Encoding::Binary,
            "ascii_hex" | "hex" => spec.encoding = Encoding::AsciiHex,
            _ => errors.push(e.error(format!(
                "unknown encoding `{}`; expected binary or ascii_hex",
                e.value
            ))),
        }
    }
    Some(spec)
}

/// Parser keys that apply to each parser type.
const PARSER_KEYS: &[(&str, &[&str])] = &[
    ("text", &[]),
    ("regex", &["pattern"]),
    ("csv", &["delimiter", "columns"]),
    ("json", &[]),
    ("key_value", &["separator", "assign"]),
    ("nmea", &["require_checksum"]),
    ("binary", &["checksum"]),
];

fn validate_parser(node: Option<&ConfigNode>, errors: &mut Vec<ConfigError>) -> Parser {
    let Some(node) = node.filter(|n| !n.is_null()) else {
        return Parser::Text;
    };
    let raw: RawParser = match node.deserialize_all() {
        Ok(r) => r,
        Err(mut e) => {
            errors.append(&mut e);
            return Parser::Text;
        }
    };
    let kind = raw.kind.value.to_ascii_lowercase().replace('-', "_");
    let kind = match kind.as_str() {
        "kv" | "keyvalue" => "key_value".to_owned(),
        "line" => "text".to_owned(),
        _ => kind,
    };
    let Some((_, allowed)) = PARSER_KEYS.iter().find(|(k, _)| *k == kind) else {
        let names: Vec<&str> = PARSER_KEYS.iter().map(|(k, _)| *k).collect();
        errors.push(raw.kind.error(format!(
            "unknown parser `{}`; expected one of {}",
            raw.kind.value,
            names.join(", ")
        )));
        return Parser::Text;
    };
    if let Some(map) = node.as_map() {
        for (k, _) in map {
            let Some(key) = k.as_str() else { continue };
            if key != "type" && !allowed.contains(&key) {
                errors.push(k.error(format!("`{key}` does not apply to the `{kind}` parser")));
            }
        }
    }
    match kind.as_str() {
        "text" => Parser::Text,
        "json" => Parser::Json,
        "regex" => {
            let Some(p) = &raw.pattern else {
                errors.push(node.error(
                    "the regex parser needs `pattern:` (with named groups like `(?P<weight>…)`)",
                ));
                return Parser::Text;
            };
            match regex::RegexBuilder::new(&p.value)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(re) if re.capture_names().flatten().next().is_none() => {
                    errors.push(p.error("the pattern has no named group: name what to read, e.g. `(?P<weight>[-0-9.]+)`"));
                    Parser::Text
                }
                Ok(re) => Parser::Regex(re),
                Err(e) => {
                    errors.push(p.error(format!("invalid regex: {e}")));
                    Parser::Text
                }
            }
        }
        "csv" => {
            let delimiter = match &raw.delimiter {
                None => ',',
                Some(d) => match unescape(&d.value)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                {
                    Some(s) if s.chars().count() == 1 => s.chars().next().unwrap_or(','),
                    _ => {
                        errors.push(
                            d.error("the delimiter must be one character (`,`, `;`, `\\t`, …)"),
                        );
                        ','
                    }
                },
            };
            let columns = raw
                .columns
                .as_ref()
                .map_or_else(Vec::new, |c| c.value.clone());
            if let Some(c) = &raw.columns {
                let mut seen = HashSet::new();
                for name in &c.value {
                    if !seen.insert(name) {
                        errors.push(c.error(format!("column `{name}` is named twice")));
                    }
                }
            }
            Parser::Csv { delimiter, columns }
        }
        "key_value" => {
            let unesc =
                |s: &Spanned<String>, errors: &mut Vec<ConfigError>| match unescape(&s.value)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                {
                    Some(v) if !v.is_empty() => Some(v),
                    _ => {
                        errors.push(s.error("must be non-empty text"));
                        None
                    }
                };
            let separator = raw.separator.as_ref().and_then(|s| unesc(s, errors));
            let assign = raw
                .assign
                .as_ref()
                .and_then(|s| unesc(s, errors))
                .unwrap_or_else(|| "=".to_owned());
            Parser::KeyValue { separator, assign }
        }
        "nmea" => Parser::Nmea {
            require_checksum: raw.require_checksum.as_ref().is_none_or(|r| r.value),
        },
        "binary" => Parser::Binary {
            checksum: raw
                .checksum
                .as_ref()
                .and_then(|c| validate_checksum(c, errors)),
            min_length: 0,
        },
        _ => Parser::Text,
    }
}

fn regex_bytes(s: &Spanned<String>, errors: &mut Vec<ConfigError>) -> Option<regex::bytes::Regex> {
    match regex::bytes::RegexBuilder::new(&s.value)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(s.error(format!("invalid regex: {e}")));
            None
        }
    }
}

fn binary_parser(p: &Parser) -> bool {
    matches!(p, Parser::Binary { .. })
}

/// Validates a device's serial configuration. No I/O: `fieldbridge check` runs exactly this.
pub fn validate(device: &DeviceConfig) -> Result<SerialDevice, Vec<ConfigError>> {
    let node = &device.connection;
    if node.is_null() {
        return Err(vec![node.error(
            "a serial device needs a `connection:` with at least `port: /dev/ttyUSB0` (see plugins/serial/README.md)",
        )]);
    }
    let (raw, mut errors) = node.deserialize_partial::<RawConnection>();
    let Some(raw) = raw else {
        return Err(errors);
    };
    let mut port = PortSettings {
        path: raw.port.value.trim().to_owned(),
        ..PortSettings::default()
    };
    if port.path.is_empty() {
        errors.push(raw.port.error("the serial port path is empty"));
    }
    if let Some(b) = &raw.baud {
        if b.value == 0 {
            errors.push(b.error("baud must be above 0"));
        }
        port.baud = b.value;
    }
    if let Some(b) = &raw.data_bits {
        if !(5..=8).contains(&b.value) {
            errors.push(b.error(format!("data_bits must be 5, 6, 7 or 8, not {}", b.value)));
        }
        port.data_bits = b.value;
    }
    if let Some(b) = &raw.stop_bits {
        if !(1..=2).contains(&b.value) {
            errors.push(b.error(format!("stop_bits must be 1 or 2, not {}", b.value)));
        }
        port.stop_bits = b.value;
    }
    port.parity = raw.parity.unwrap_or_default();
    port.flow_control = raw.flow_control.unwrap_or_default();
    let reopen_min = raw
        .reopen_min
        .as_ref()
        .map_or(Duration::from_secs(1), |d| d.value.0);
    let reopen_max = raw
        .reopen_max
        .as_ref()
        .map_or(Duration::from_secs(30), |d| d.value.0);
    if let Some(d) = &raw.reopen_min {
        if d.value.0.is_zero() {
            errors.push(d.error("reopen_min must be above 0"));
        }
    }
    if let Some(d) = &raw.reopen_max {
        if d.value.0 < reopen_min {
            errors.push(d.error("reopen_max must not be below reopen_min"));
        }
    }
    if let Some(s) = &raw.silence_timeout {
        if s.value.0.is_zero() {
            errors.push(s.error("silence_timeout must be above 0 (leave it out to disable it)"));
        }
    }

    let (framing, gap) = validate_framing(node.get("framing"), &mut errors);
    let default_parser = validate_parser(node.get("parser"), &mut errors);
    let on_error = raw.on_error.unwrap_or_default();

    // Requests.
    let mut requests: Vec<(Request, ConfigNode)> = Vec::new();
    if let Some(rn) = node.get("requests").filter(|n| !n.is_null()) {
        match rn.as_seq() {
            None => errors.push(rn.error(format!(
                "`requests` must be a list, found {}",
                rn.type_name()
            ))),
            Some([]) => errors.push(
                rn.error("`requests` is empty: leave it out for a device that talks by itself"),
            ),
            Some(items) => {
                let mut names = HashSet::new();
                for item in items {
                    let r: RawRequest = match item.deserialize_all() {
                        Ok(r) => r,
                        Err(mut e) => {
                            errors.append(&mut e);
                            continue;
                        }
                    };
                    if !names.insert(r.name.value.clone()) {
                        errors.push(
                            r.name
                                .error(format!("request `{}` is defined twice", r.name.value)),
                        );
                    }
                    let send = request_bytes(&r, item, &mut errors);
                    let parser = match item.get("parser") {
                        Some(p) if !p.is_null() => validate_parser(Some(p), &mut errors),
                        _ => default_parser.clone(),
                    };
                    let interval = r
                        .interval
                        .as_ref()
                        .map_or(device.poll_interval, |i| i.value.0);
                    if let Some(i) = &r.interval {
                        if i.value.0.is_zero() {
                            errors.push(i.error("interval must be above 0"));
                        }
                    }
                    requests.push((
                        Request {
                            name: Arc::from(r.name.value.as_str()),
                            send: send.unwrap_or_default(),
                            parser,
                            on_error: r.on_error.unwrap_or(on_error),
                            interval: interval.max(Duration::from_millis(1)),
                        },
                        item.clone(),
                    ));
                }
            }
        }
        if let Some(s) = &raw.silence_timeout {
            errors.push(s.error("silence_timeout applies to devices that talk by themselves; a polled device goes offline when a request gets no answer within `timeout`"));
        }
    }

    // Points.
    let mut points = Vec::with_capacity(device.points.len());
    let mut min_len: Vec<usize> = vec![0; requests.len().max(1)];
    for p in device.points.iter() {
        if let Some(point) = validate_point(
            device,
            p,
            &requests,
            &default_parser,
            &mut min_len,
            &mut errors,
        ) {
            points.push(point);
        }
    }
    if errors.is_empty() {
        for (i, (r, item)) in requests.iter().enumerate() {
            if !points
                .iter()
                .any(|p| p.request == Some(i) && p.source.is_some())
            {
                errors
                    .push(item.error(format!("request `{}` has no point reading from it", r.name)));
            }
        }
    }
    if !errors.is_empty() {
        errors.sort();
        errors.dedup();
        return Err(errors);
    }
    let set_min = |p: &mut Parser, n: usize| {
        if let Parser::Binary { min_length, .. } = p {
            *min_length = n;
        }
    };
    let mode = if requests.is_empty() {
        let mut parser = default_parser;
        set_min(&mut parser, min_len[0]);
        Mode::Stream { parser, on_error }
    } else {
        Mode::Polled(
            requests
                .into_iter()
                .enumerate()
                .map(|(i, (mut r, _))| {
                    set_min(&mut r.parser, min_len[i]);
                    r
                })
                .collect(),
        )
    };
    Ok(SerialDevice {
        name: device.name.clone(),
        port,
        framing,
        gap,
        mode,
        points,
        timeout: device.timeout,
        retries: device.retries,
        reopen_min,
        reopen_max,
        silence_timeout: raw.silence_timeout.map(|s| s.value.0),
    })
}

fn validate_point(
    device: &DeviceConfig,
    p: &PointConfig,
    requests: &[(Request, ConfigNode)],
    default_parser: &Parser,
    min_len: &mut [usize],
    errors: &mut Vec<ConfigError>,
) -> Option<SerialPoint> {
    let raw: RawPoint = match p.spec.deserialize_all() {
        Ok(r) => r,
        Err(mut e) => {
            errors.append(&mut e);
            return None;
        }
    };
    let before = errors.len();
    if let Some(i) = p.poll_interval {
        let _ = i;
        errors.push(p.spec.error(format!(
            "point `{}` sets `poll_interval`, but serial points are read whenever their frame arrives; for a \
             polled device set `interval` on its request",
            p.name
        )));
    }
    // Which request (and so which parser) the point belongs to.
    let request = match (&raw.request, requests.len()) {
        (Some(r), 0) => {
            errors
                .push(r.error("`request` applies to polled devices (with `connection.requests`)"));
            None
        }
        (Some(r), _) => match requests.iter().position(|(q, _)| *q.name == *r.value) {
            Some(i) => Some(i),
            None => {
                let names: Vec<&str> = requests.iter().map(|(q, _)| &*q.name).collect();
                errors.push(r.error(format!(
                    "no request named `{}`; requests: {}",
                    r.value,
                    names.join(", ")
                )));
                return None;
            }
        },
        (None, 0) => None,
        (None, 1) => Some(0),
        (None, _) => None,
    };
    let parser = request.map_or(default_parser, |i| &requests[i].0.parser);
    let is_binary = binary_parser(parser);
    let reads = raw.field.is_some()
        || raw.at.is_some()
        || (matches!(parser, Parser::Text) && raw.write.is_none() && raw.write_hex.is_none());
    if reads && request.is_none() && requests.len() > 1 {
        errors.push(p.spec.error(format!(
            "point `{}` must say which request it reads from (`request:`), the device has {}",
            p.name,
            requests.len()
        )));
    }
    let mut ty = ValueType::Auto;
    let mut source = None;
    if is_binary {
        if let Some(f) = &raw.field {
            errors.push(f.error(
                "binary frames have no named fields: give `at:` (byte position) and `type:`",
            ));
        }
        if let Some(off) = &raw.at {
            let bt = match &raw.ty {
                Some(t) => match t.value.parse::<BinType>() {
                    Ok(b) => Some(b),
                    Err(e) => {
                        errors.push(t.error(e));
                        None
                    }
                },
                None => {
                    errors.push(
                        p.spec
                            .error("a binary point needs `type:` (u8, i16, u32, f32, …)"),
                    );
                    None
                }
            };
            let order = match &raw.order {
                Some(o) => o.value.parse::<Order>().unwrap_or_else(|e| {
                    errors.push(o.error(e));
                    Order::Abcd
                }),
                None => Order::Abcd,
            };
            if let Some(bt) = bt {
                let length = match (bt.size(), &raw.length) {
                    (Some(n), None) => n,
                    (Some(_), Some(l)) => {
                        errors.push(l.error(format!("`length` only applies to `bytes` and `string`; `{bt}` has a fixed size")));
                        1
                    }
                    (None, Some(l)) => usize_in(l, 1, MAX_MAX_FRAME as u64, "length", errors),
                    (None, None) => {
                        errors.push(
                            p.spec
                                .error(format!("`type: {bt}` needs `length:` (bytes)")),
                        );
                        1
                    }
                };
                if off.value.unsigned_abs() > MAX_MAX_FRAME as u64 {
                    errors.push(off.error("`at` is out of range"));
                } else if off.value >= 0 {
                    let need = off.value as usize + length;
                    let slot = request.unwrap_or(0);
                    if let Some(m) = min_len.get_mut(slot) {
                        *m = (*m).max(need);
                    }
                } else if (off.value.unsigned_abs() as usize) < length {
                    errors.push(off.error(format!("`at: {}` from the end leaves room for fewer than the {length} bytes of `{bt}`", off.value)));
                }
                source = Some(Source::Binary(binary::Field {
                    ty: bt,
                    offset: off.value,
                    order,
                    length,
                }));
            }
        } else if let Some(t) = &raw.ty {
            errors.push(
                t.error("a binary point needs `at:` (its byte position) to go with its `type:`"),
            );
        }
    } else {
        for (key, present) in [
            ("at", raw.at.as_ref().map(|s| s.error(""))),
            ("order", raw.order.as_ref().map(|s| s.error(""))),
            ("length", raw.length.as_ref().map(|s| s.error(""))),
        ] {
            if let Some(mut e) = present {
                e.message = format!("`{key}` applies to binary frames (parser type binary); this parser reads named fields");
                errors.push(e);
            }
        }
        if let Some(t) = &raw.ty {
            match ValueType::ALL
                .iter()
                .find(|(_, n)| *n == t.value.to_ascii_lowercase())
            {
                Some((v, _)) => ty = *v,
                None => {
                    let names: Vec<&str> = ValueType::ALL.iter().map(|(_, n)| *n).collect();
                    errors.push(t.error(format!(
                        "unknown type `{}`; for text fields: {}",
                        t.value,
                        names.join(", ")
                    )));
                }
            }
        }
        source = match (&raw.field, parser) {
            (Some(f), Parser::Json) => Some(Source::Pointer(
                if f.value.0.starts_with('/') || f.value.0.is_empty() {
                    f.value.0.clone()
                } else {
                    format!("/{}", f.value.0)
                },
            )),
            (Some(f), Parser::Regex(re)) => {
                if !re.capture_names().flatten().any(|n| n == f.value.0) {
                    let names: Vec<&str> = re.capture_names().flatten().collect();
                    errors.push(f.error(format!(
                        "the pattern has no group named `{}`; its groups: {}",
                        f.value.0,
                        names.join(", ")
                    )));
                }
                Some(Source::Field(f.value.0.clone()))
            }
            (Some(f), Parser::Csv { columns, .. }) => {
                if f.value.0.parse::<usize>().is_err() && !columns.contains(&f.value.0) {
                    errors.push(f.error(format!(
                        "`{}` is neither a column number nor one of `columns`",
                        f.value.0
                    )));
                }
                Some(Source::Field(f.value.0.clone()))
            }
            (Some(f), Parser::Text) if f.value.0 != "text" => {
                errors.push(f.error("the text parser has one field, `text`"));
                None
            }
            (Some(f), _) => Some(Source::Field(f.value.0.clone())),
            (None, Parser::Text) if reads => Some(Source::Field("text".into())),
            (None, _) => None,
        };
    }
    // Write-back.
    let template = match (&raw.write, &raw.write_hex) {
        (Some(_), Some(h)) => {
            errors.push(h.error("give `write` or `write_hex`, not both"));
            None
        }
        (Some(t), None) => Template::text(&t.value)
            .map_err(|e| errors.push(t.error(e.to_string())))
            .ok(),
        (None, Some(h)) => Template::bytes(&h.value)
            .map_err(|e| errors.push(h.error(e.to_string())))
            .ok(),
        (None, None) => None,
    };
    let has_template = raw.write.is_some() || raw.write_hex.is_some();
    if p.writable && !has_template {
        errors.push(p.spec.error(format!(
            "point `{}` is `writable: true` but has no `write:` (or `write_hex:`) template saying what to send",
            p.name
        )));
    }
    if !p.writable {
        for (key, s) in [
            ("write", &raw.write),
            ("write_hex", &raw.write_hex),
            ("reply", &raw.reply),
            ("reply_error", &raw.reply_error),
        ] {
            if let Some(s) = s {
                errors.push(s.error(format!(
                    "`{key}` applies to writes, but the point is not `writable: true`"
                )));
            }
        }
        if let Some(s) = &raw.reply_timeout {
            errors.push(
                s.error("`reply_timeout` applies to writes, but the point is not `writable: true`"),
            );
        }
    }
    if source.is_none() && !has_template && errors.len() == before {
        errors.push(p.spec.error(format!(
            "point `{}` neither reads (`field:`, or `at:` for binary frames) nor writes (`write:`)",
            p.name
        )));
    }
    let reply = raw.reply.as_ref().and_then(|r| regex_bytes(r, errors));
    let reply_error = raw
        .reply_error
        .as_ref()
        .and_then(|r| regex_bytes(r, errors));
    if raw.reply.is_none() && raw.reply_error.is_none() {
        if let Some(s) = &raw.reply_timeout {
            errors.push(s.error("`reply_timeout` needs `reply:` or `reply_error:`"));
        }
    }
    if errors.len() > before {
        return None;
    }
    let write = template.map(|template| WriteSpec {
        template,
        reply,
        reply_error,
        reply_timeout: raw.reply_timeout.map_or(device.timeout, |t| t.value.0),
    });
    Some(SerialPoint {
        name: p.name.clone(),
        source,
        ty,
        request: if raw.field.is_some() || raw.at.is_some() || reads {
            request
        } else {
            None
        },
        writable: p.writable,
        write,
    })
}
