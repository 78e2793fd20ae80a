//! Representations -> values: text/plain numbers, JSON (a JSON pointer picks the value), CBOR (the same pointer
//! over maps and arrays), raw bytes, and SenML (RFC 8428, JSON and CBOR) where one representation carries
//! several points. Pure; every input is hostile (bounded by the datagram or `max_body`, parser depth limits of
//! serde_json and ciborium, and [`MAX_SENML_RECORDS`]).
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ciborium::Value as Cbor;
use fieldbridge_sdk::Value;
use serde_json::Value as Json;

/// Content-Format numbers (RFC 7252 §12.3, RFC 8428 §12.3).
pub mod cf {
    /// text/plain; charset=utf-8
    pub const TEXT: u16 = 0;
    /// application/link-format
    pub const LINK_FORMAT: u16 = 40;
    /// application/octet-stream
    pub const OCTET_STREAM: u16 = 42;
    /// application/json
    pub const JSON: u16 = 50;
    /// application/cbor
    pub const CBOR: u16 = 60;
    /// application/senml+json
    pub const SENML_JSON: u16 = 110;
    /// application/senml+cbor
    pub const SENML_CBOR: u16 = 112;
}

/// More SenML records than this in one pack is refused (a 64 KiB body of tiny records is ~5,000).
pub const MAX_SENML_RECORDS: usize = 4096;

/// How a point's representation is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// From the Content-Format option (text when absent).
    Auto,
    /// text/plain: a number, `true`/`false`, else the text as a string.
    Text,
    /// application/json (with `pointer`).
    Json,
    /// application/cbor (with `pointer`).
    Cbor,
    /// The payload as bytes.
    Raw,
    /// application/senml+json.
    SenmlJson,
    /// application/senml+cbor.
    SenmlCbor,
}

impl Format {
    /// The name in device maps.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Text => "text",
            Format::Json => "json",
            Format::Cbor => "cbor",
            Format::Raw => "raw",
            Format::SenmlJson => "senml_json",
            Format::SenmlCbor => "senml_cbor",
        }
    }

    /// The Content-Format number of a concrete format.
    pub fn content_format(self) -> Option<u16> {
        match self {
            Format::Auto => None,
            Format::Text => Some(cf::TEXT),
            Format::Json => Some(cf::JSON),
            Format::Cbor => Some(cf::CBOR),
            Format::Raw => Some(cf::OCTET_STREAM),
            Format::SenmlJson => Some(cf::SENML_JSON),
            Format::SenmlCbor => Some(cf::SENML_CBOR),
        }
    }

    /// Whether records are matched by name.
    pub fn is_senml(self) -> bool {
        matches!(self, Format::SenmlJson | Format::SenmlCbor)
    }

    /// The concrete format for a message: `Auto` follows the Content-Format; a fixed format must agree with
    /// the Content-Format when the sender gave one (text and raw accept anything: they are the fallbacks).
    pub fn resolve(self, content_format: Option<u16>) -> Result<Format, ContentError> {
        let from_cf = |c: u16| match c {
            cf::TEXT => Some(Format::Text),
            cf::OCTET_STREAM => Some(Format::Raw),
            cf::JSON => Some(Format::Json),
            cf::CBOR => Some(Format::Cbor),
            cf::SENML_JSON => Some(Format::SenmlJson),
            cf::SENML_CBOR => Some(Format::SenmlCbor),
            _ => None,
        };
        match (self, content_format) {
            (Format::Auto, None) => Ok(Format::Text),
            (Format::Auto, Some(c)) => from_cf(c).ok_or(ContentError::UnsupportedFormat(c)),
            (Format::Text | Format::Raw, _) | (_, None) => Ok(self),
            (f, Some(c)) if f.content_format() == Some(c) => Ok(f),
            (_, Some(c)) => Err(ContentError::WrongFormat {
                expected: self,
                got: c,
            }),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Format::Auto,
            "text" | "text/plain" => Format::Text,
            "json" | "application/json" => Format::Json,
            "cbor" | "application/cbor" => Format::Cbor,
            "raw" | "bytes" | "octet-stream" => Format::Raw,
            "senml_json" | "senml+json" | "senml-json" => Format::SenmlJson,
            "senml_cbor" | "senml+cbor" | "senml-cbor" => Format::SenmlCbor,
            _ => {
                return Err(format!(
                    "unknown format `{s}`; expected auto, text, json, cbor, raw, senml_json or senml_cbor"
                ))
            }
        })
    }
}

/// Why a value could not be had from a representation. The text goes into the reading's `bad` quality or an
/// ingest diagnostic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContentError {
    /// A Content-Format we do not decode.
    #[error("content format {0} is not supported (text 0, octet-stream 42, json 50, cbor 60, senml+json 110, senml+cbor 112)")]
    UnsupportedFormat(u16),
    /// The point expects another format.
    #[error("expected {expected}, got content format {got}")]
    WrongFormat {
        /// The point's format.
        expected: Format,
        /// The message's Content-Format.
        got: u16,
    },
    /// The payload does not parse.
    #[error("{0}")]
    Syntax(String),
    /// The pointer names nothing.
    #[error("pointer `{0}` matches nothing")]
    NoMatch(String),
    /// The pointed value is not a scalar (object, array, null).
    #[error("value at `{pointer}` is {what}, not a number, bool or string")]
    NotScalar {
        /// The pointer.
        pointer: String,
        /// What was found.
        what: &'static str,
    },
    /// A SenML record carries no value.
    #[error("SenML record `{0}` has no value")]
    NoValue(String),
}

/// What to pick out of a representation for one point.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Extract {
    /// The decoding.
    pub format: Format,
    /// JSON pointer (RFC 6901) for JSON and CBOR; empty = the whole document.
    pub pointer: String,
    /// SenML: the resolved record name (base name + name).
    pub senml_name: String,
}

/// A decoded value with the time the device gave, if any (SenML).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The value.
    pub value: Value,
    /// The device's timestamp.
    pub ts: Option<SystemTime>,
}

/// Decodes one representation for several points at once (the document is parsed once per format). For
/// SenML, `Ok(None)` means the pack has no record for that point.
pub fn extract_all(
    payload: &[u8],
    content_format: Option<u16>,
    specs: &[&Extract],
) -> Vec<Result<Option<Decoded>, ContentError>> {
    let mut json: Option<Result<Json, ContentError>> = None;
    let mut cbor: Option<Result<Cbor, ContentError>> = None;
    let mut senml: HashMap<Format, Result<HashMap<String, Decoded>, ContentError>> = HashMap::new();
    specs
        .iter()
        .map(|spec| {
            let format = spec.format.resolve(content_format)?;
            match format {
                Format::Text | Format::Auto => text(payload).map(Some),
                Format::Raw => Ok(Some(Decoded {
                    value: Value::Bytes(payload.to_vec()),
                    ts: None,
                })),
                Format::Json => {
                    let doc = json.get_or_insert_with(|| parse_json(payload));
                    let doc = doc.as_ref().map_err(Clone::clone)?;
                    json_at(doc, &spec.pointer).map(Some)
                }
                Format::Cbor => {
                    let doc = cbor.get_or_insert_with(|| parse_cbor(payload));
                    let doc = doc.as_ref().map_err(Clone::clone)?;
                    cbor_at(doc, &spec.pointer).map(Some)
                }
                Format::SenmlJson | Format::SenmlCbor => {
                    let pack = senml
                        .entry(format)
                        .or_insert_with(|| senml_pack(payload, format));
                    let pack = pack.as_ref().map_err(Clone::clone)?;
                    Ok(pack.get(&spec.senml_name).cloned())
                }
            }
        })
        .collect()
}

fn text(payload: &[u8]) -> Result<Decoded, ContentError> {
    let s = std::str::from_utf8(payload)
        .map_err(|_| ContentError::Syntax("text/plain payload is not UTF-8".into()))?;
    Ok(Decoded {
        value: parse_text(s),
        ts: None,
    })
}

/// A text value: integer, float, bool, else the (trimmed) text.
pub fn parse_text(s: &str) -> Value {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Value::Int(i);
    }
    if let Ok(u) = t.parse::<u64>() {
        return Value::UInt(u);
    }
    if let Ok(f) = t.parse::<f64>() {
        if f.is_finite() {
            return Value::Float(f);
        }
    }
    match t {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(t.to_owned()),
    }
}

fn parse_json(payload: &[u8]) -> Result<Json, ContentError> {
    serde_json::from_slice(payload).map_err(|e| ContentError::Syntax(format!("JSON: {e}")))
}

fn parse_cbor(payload: &[u8]) -> Result<Cbor, ContentError> {
    // ciborium bounds nesting (recursion limit 256) and the reader is a slice: no unbounded allocation beyond
    // what the payload declares and holds.
    let mut r = payload;
    let v: Cbor = ciborium::de::from_reader(&mut r)
        .map_err(|e| ContentError::Syntax(format!("CBOR: {e}")))?;
    if !r.is_empty() {
        return Err(ContentError::Syntax(format!(
            "CBOR: {} bytes after the value",
            r.len()
        )));
    }
    Ok(v)
}

fn json_scalar(v: &Json, pointer: &str) -> Result<Value, ContentError> {
    let not = |what| ContentError::NotScalar {
        pointer: pointer.to_owned(),
        what,
    };
    match v {
        Json::Bool(b) => Ok(Value::Bool(*b)),
        Json::Number(n) => Ok(if let Some(i) = n.as_i64() {
            Value::Int(i)
        } else if let Some(u) = n.as_u64() {
            Value::UInt(u)
        } else {
            Value::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        Json::String(s) => Ok(Value::String(s.clone())),
        Json::Null => Err(not("null")),
        Json::Array(_) => Err(not("an array")),
        Json::Object(_) => Err(not("an object")),
    }
}

fn json_at(doc: &Json, pointer: &str) -> Result<Decoded, ContentError> {
    let v = doc
        .pointer(pointer)
        .ok_or_else(|| ContentError::NoMatch(pointer.to_owned()))?;
    Ok(Decoded {
        value: json_scalar(v, pointer)?,
        ts: None,
    })
}

/// Unescapes one RFC 6901 reference token.
fn pointer_tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn cbor_at(doc: &Cbor, pointer: &str) -> Result<Decoded, ContentError> {
    let mut cur = doc;
    if !pointer.is_empty() {
        for tok in pointer_tokens(pointer) {
            cur = untag(cur);
            let next = match cur {
                Cbor::Map(entries) => entries.iter().find_map(|(k, v)| {
                    let hit = match untag(k) {
                        Cbor::Text(t) => *t == tok,
                        Cbor::Integer(i) => tok.parse::<i128>().ok() == Some(i128::from(*i)),
                        _ => false,
                    };
                    hit.then_some(v)
                }),
                Cbor::Array(items) => tok.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            cur = next.ok_or_else(|| ContentError::NoMatch(pointer.to_owned()))?;
        }
    }
    Ok(Decoded {
        value: cbor_scalar(cur, pointer)?,
        ts: None,
    })
}

fn untag(v: &Cbor) -> &Cbor {
    // Tags nest at most as deep as the parser allowed; iterate rather than recurse.
    let mut v = v;
    while let Cbor::Tag(_, inner) = v {
        v = inner;
    }
    v
}

fn cbor_scalar(v: &Cbor, pointer: &str) -> Result<Value, ContentError> {
    let not = |what| ContentError::NotScalar {
        pointer: pointer.to_owned(),
        what,
    };
    match untag(v) {
        Cbor::Integer(i) => {
            let i = i128::from(*i);
            Ok(if let Ok(x) = i64::try_from(i) {
                Value::Int(x)
            } else if let Ok(u) = u64::try_from(i) {
                Value::UInt(u)
            } else {
                Value::Float(i as f64)
            })
        }
        Cbor::Float(f) => Ok(Value::Float(*f)),
        Cbor::Bool(b) => Ok(Value::Bool(*b)),
        Cbor::Text(s) => Ok(Value::String(s.clone())),
        Cbor::Bytes(b) => Ok(Value::Bytes(b.clone())),
        Cbor::Null => Err(not("null")),
        Cbor::Array(_) => Err(not("an array")),
        Cbor::Map(_) => Err(not("a map")),
        _ => Err(not("an undefined value")),
    }
}

/// One SenML record's fields we use, with JSON and CBOR labels unified.
#[derive(Default)]
struct Record {
    bn: Option<String>,
    bt: Option<f64>,
    bv: Option<f64>,
    n: Option<String>,
    t: Option<f64>,
    v: Option<f64>,
    v_int: Option<i64>,
    vs: Option<String>,
    vb: Option<bool>,
    vd: Option<Vec<u8>>,
    s: Option<f64>,
    bs: Option<f64>,
}

/// SenML times below 2^28 are relative to now (RFC 8428 §4.5.3).
const SENML_RELATIVE_LIMIT: f64 = 268_435_456.0;

/// Resolves a pack (base fields carry over to later records) into name -> last value with its time.
fn senml_pack(payload: &[u8], format: Format) -> Result<HashMap<String, Decoded>, ContentError> {
    let records = match format {
        Format::SenmlJson => senml_json_records(payload)?,
        _ => senml_cbor_records(payload)?,
    };
    let mut out = HashMap::new();
    let (mut bn, mut bt, mut bv, mut bs) = (String::new(), 0.0f64, 0.0f64, 0.0f64);
    let now = SystemTime::now();
    for r in records {
        if let Some(b) = r.bn {
            bn = b;
        }
        if let Some(b) = r.bt {
            bt = b;
        }
        if let Some(b) = r.bv {
            bv = b;
        }
        if let Some(b) = r.bs {
            bs = b;
        }
        let name = format!("{bn}{}", r.n.as_deref().unwrap_or(""));
        let value = if let Some(i) = r.v_int.filter(|_| bv == 0.0) {
            Value::Int(i)
        } else if let Some(v) = r.v {
            Value::Float(v + bv)
        } else if let Some(s) = r.vs {
            Value::String(s)
        } else if let Some(b) = r.vb {
            Value::Bool(b)
        } else if let Some(d) = r.vd {
            Value::Bytes(d)
        } else if let Some(s) = r.s {
            Value::Float(s + bs)
        } else {
            return Err(ContentError::NoValue(name));
        };
        let t = bt + r.t.unwrap_or(0.0);
        let ts = if t == 0.0 || !t.is_finite() {
            None
        } else if t.abs() < SENML_RELATIVE_LIMIT {
            if t >= 0.0 {
                now.checked_add(Duration::from_secs_f64(t))
            } else {
                now.checked_sub(Duration::from_secs_f64(-t))
            }
        } else if t > 0.0 && t < 1e11 {
            UNIX_EPOCH.checked_add(Duration::from_secs_f64(t))
        } else {
            None
        };
        out.insert(name, Decoded { value, ts });
    }
    Ok(out)
}

fn senml_json_records(payload: &[u8]) -> Result<Vec<Record>, ContentError> {
    let doc = parse_json(payload)?;
    let Json::Array(items) = doc else {
        return Err(ContentError::Syntax(
            "SenML JSON: not an array of records".into(),
        ));
    };
    if items.len() > MAX_SENML_RECORDS {
        return Err(ContentError::Syntax(format!(
            "SenML: {} records (at most {MAX_SENML_RECORDS})",
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Json::Object(m) = item else {
            return Err(ContentError::Syntax(
                "SenML JSON: a record is not an object".into(),
            ));
        };
        let f = |k: &str| m.get(k).and_then(Json::as_f64);
        let st = |k: &str| m.get(k).and_then(Json::as_str).map(str::to_owned);
        let v_int = match m.get("v") {
            Some(Json::Number(n)) if n.is_i64() => n.as_i64(),
            _ => None,
        };
        out.push(Record {
            bn: st("bn"),
            bt: f("bt"),
            bv: f("bv"),
            bs: f("bs"),
            n: st("n"),
            t: f("t"),
            v: f("v"),
            v_int,
            vs: st("vs"),
            vb: m.get("vb").and_then(Json::as_bool),
            vd: st("vd").map(|s| base64url_decode(&s)).transpose()?,
            s: f("s"),
        });
    }
    Ok(out)
}

fn senml_cbor_records(payload: &[u8]) -> Result<Vec<Record>, ContentError> {
    let doc = parse_cbor(payload)?;
    let Cbor::Array(items) = doc else {
        return Err(ContentError::Syntax(
            "SenML CBOR: not an array of records".into(),
        ));
    };
    if items.len() > MAX_SENML_RECORDS {
        return Err(ContentError::Syntax(format!(
            "SenML: {} records (at most {MAX_SENML_RECORDS})",
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Cbor::Map(entries) = item else {
            return Err(ContentError::Syntax(
                "SenML CBOR: a record is not a map".into(),
            ));
        };
        let mut r = Record::default();
        for (k, v) in entries {
            // RFC 8428 §6: integer labels; text labels are accepted too (some encoders use them).
            let label: i128 = match &k {
                Cbor::Integer(i) => i128::from(*i),
                Cbor::Text(t) => match t.as_str() {
                    "bn" => -2,
                    "bt" => -3,
                    "bv" => -5,
                    "bs" => -6,
                    "n" => 0,
                    "v" => 2,
                    "vs" => 3,
                    "vb" => 4,
                    "s" => 5,
                    "t" => 6,
                    "vd" => 8,
                    _ => continue,
                },
                _ => continue,
            };
            let num = |v: &Cbor| match untag(v) {
                Cbor::Integer(i) => Some(i128::from(*i) as f64),
                Cbor::Float(f) => Some(*f),
                _ => None,
            };
            let text = |v: &Cbor| match untag(v) {
                Cbor::Text(t) => Some(t.clone()),
                _ => None,
            };
            match label {
                -2 => r.bn = text(&v),
                -3 => r.bt = num(&v),
                -5 => r.bv = num(&v),
                -6 => r.bs = num(&v),
                0 => r.n = text(&v),
                2 => {
                    r.v = num(&v);
                    if let Cbor::Integer(i) = untag(&v) {
                        r.v_int = i64::try_from(i128::from(*i)).ok();
                    }
                }
                3 => r.vs = text(&v),
                4 => r.vb = v.as_bool(),
                5 => r.s = num(&v),
                6 => r.t = num(&v),
                8 => {
                    if let Cbor::Bytes(b) = untag(&v) {
                        r.vd = Some(b.clone());
                    }
                }
                _ => {}
            }
        }
        out.push(r);
    }
    Ok(out)
}

fn base64url_decode(s: &str) -> Result<Vec<u8>, ContentError> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return Err(ContentError::Syntax("SenML vd: not base64url".into())),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// The payload written for a command, and its Content-Format.
pub fn encode_write(value: &Value, format: Format) -> Result<(Vec<u8>, u16), String> {
    match format {
        Format::Json => {
            let j = match value {
                Value::Bool(b) => Json::from(*b),
                Value::Int(i) => Json::from(*i),
                Value::UInt(u) => Json::from(*u),
                Value::Float(f) => serde_json::Number::from_f64(*f)
                    .map(Json::Number)
                    .ok_or_else(|| format!("{f} cannot be written as JSON"))?,
                Value::String(s) => Json::from(s.clone()),
                Value::Bytes(_) => return Err("bytes cannot be written as JSON".into()),
            };
            Ok((j.to_string().into_bytes(), cf::JSON))
        }
        Format::Cbor => {
            let c = match value {
                Value::Bool(b) => Cbor::Bool(*b),
                Value::Int(i) => Cbor::Integer((*i).into()),
                Value::UInt(u) => Cbor::Integer((*u).into()),
                Value::Float(f) => Cbor::Float(*f),
                Value::String(s) => Cbor::Text(s.clone()),
                Value::Bytes(b) => Cbor::Bytes(b.clone()),
            };
            let mut out = Vec::new();
            ciborium::ser::into_writer(&c, &mut out).map_err(|e| e.to_string())?;
            Ok((out, cf::CBOR))
        }
        Format::Raw => match value {
            Value::Bytes(b) => Ok((b.clone(), cf::OCTET_STREAM)),
            other => Ok((other.to_string().into_bytes(), cf::OCTET_STREAM)),
        },
        _ => match value {
            Value::Bytes(_) => {
                Err("bytes cannot be written as text; use `write_format: raw`".into())
            }
            other => Ok((other.to_string().into_bytes(), cf::TEXT)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(format: Format, pointer: &str, name: &str) -> Extract {
        Extract {
            format,
            pointer: pointer.into(),
            senml_name: name.into(),
        }
    }

    fn one(payload: &[u8], cf: Option<u16>, e: &Extract) -> Result<Option<Decoded>, ContentError> {
        extract_all(payload, cf, &[e]).remove(0)
    }

    #[test]
    fn text_numbers() {
        assert_eq!(parse_text(" 21.5\n"), Value::Float(21.5));
        assert_eq!(parse_text("-3"), Value::Int(-3));
        assert_eq!(parse_text("18446744073709551615"), Value::UInt(u64::MAX));
        assert_eq!(parse_text("true"), Value::Bool(true));
        assert_eq!(parse_text("on"), Value::String("on".into()));
        assert_eq!(parse_text("NaN"), Value::String("NaN".into()));
    }

    #[test]
    fn json_pointer() {
        let doc = br#"{"a":{"b":[1,2.5,"x"]},"t":true,"n":null}"#;
        let e = ex(Format::Json, "/a/b/1", "");
        assert_eq!(
            one(doc, Some(cf::JSON), &e).unwrap().unwrap().value,
            Value::Float(2.5)
        );
        assert_eq!(
            one(doc, None, &ex(Format::Json, "/t", ""))
                .unwrap()
                .unwrap()
                .value,
            Value::Bool(true)
        );
        assert!(matches!(
            one(doc, None, &ex(Format::Json, "/n", "")),
            Err(ContentError::NotScalar { .. })
        ));
        assert!(matches!(
            one(doc, None, &ex(Format::Json, "/zz", "")),
            Err(ContentError::NoMatch(_))
        ));
        assert!(matches!(
            one(doc, Some(cf::CBOR), &e),
            Err(ContentError::WrongFormat { .. })
        ));
        assert_eq!(
            one(doc, Some(cf::JSON), &ex(Format::Auto, "/a/b/0", ""))
                .unwrap()
                .unwrap()
                .value,
            Value::Int(1)
        );
    }

    #[test]
    fn cbor_pointer() {
        let v = Cbor::Map(vec![
            (Cbor::Text("temp".into()), Cbor::Float(21.5)),
            (Cbor::Integer(7.into()), Cbor::Array(vec![Cbor::Bool(true)])),
        ]);
        let mut buf = Vec::new();
        ciborium::ser::into_writer(&v, &mut buf).unwrap();
        assert_eq!(
            one(&buf, Some(cf::CBOR), &ex(Format::Cbor, "/temp", ""))
                .unwrap()
                .unwrap()
                .value,
            Value::Float(21.5)
        );
        assert_eq!(
            one(&buf, None, &ex(Format::Cbor, "/7/0", ""))
                .unwrap()
                .unwrap()
                .value,
            Value::Bool(true)
        );
        assert!(one(&buf[..buf.len() - 1], None, &ex(Format::Cbor, "/temp", "")).is_err());
    }

    #[test]
    fn senml_json_base_names_and_times() {
        let pack = br#"[{"bn":"urn:dev:1/","bt":1700000000,"n":"temp","v":21.5,"u":"Cel"},
                        {"n":"hum","v":40,"t":1},{"n":"door","vb":true},{"n":"fw","vs":"1.2"}]"#;
        let specs = [
            ex(Format::SenmlJson, "", "urn:dev:1/temp"),
            ex(Format::SenmlJson, "", "urn:dev:1/hum"),
            ex(Format::SenmlJson, "", "urn:dev:1/door"),
            ex(Format::SenmlJson, "", "urn:dev:1/fw"),
            ex(Format::SenmlJson, "", "missing"),
        ];
        let refs: Vec<&Extract> = specs.iter().collect();
        let out = extract_all(pack, Some(cf::SENML_JSON), &refs);
        let temp = out[0].clone().unwrap().unwrap();
        assert_eq!(temp.value, Value::Float(21.5));
        assert_eq!(
            temp.ts,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(out[1].clone().unwrap().unwrap().value, Value::Int(40));
        assert_eq!(
            out[1].clone().unwrap().unwrap().ts,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_001))
        );
        assert_eq!(out[2].clone().unwrap().unwrap().value, Value::Bool(true));
        assert_eq!(
            out[3].clone().unwrap().unwrap().value,
            Value::String("1.2".into())
        );
        assert_eq!(out[4], Ok(None));
    }

    #[test]
    fn senml_cbor_labels() {
        let rec = |n: &str, v: f64| {
            Cbor::Map(vec![
                (Cbor::Integer(0.into()), Cbor::Text(n.into())),
                (Cbor::Integer(2.into()), Cbor::Float(v)),
            ])
        };
        let pack = Cbor::Array(vec![
            Cbor::Map(vec![
                (Cbor::Integer((-2).into()), Cbor::Text("d/".into())),
                (Cbor::Integer(0.into()), Cbor::Text("a".into())),
                (Cbor::Integer(2.into()), Cbor::Float(1.5)),
            ]),
            rec("b", 2.5),
        ]);
        let mut buf = Vec::new();
        ciborium::ser::into_writer(&pack, &mut buf).unwrap();
        let b = ex(Format::Auto, "", "d/b");
        assert_eq!(
            one(&buf, Some(cf::SENML_CBOR), &b).unwrap().unwrap().value,
            Value::Float(2.5)
        );
    }

    #[test]
    fn writes() {
        assert_eq!(
            encode_write(&Value::Float(65.0), Format::Text).unwrap().0,
            b"65"
        );
        assert_eq!(
            encode_write(&Value::Int(3), Format::Json).unwrap(),
            (b"3".to_vec(), cf::JSON)
        );
        let (c, f) = encode_write(&Value::Bool(true), Format::Cbor).unwrap();
        assert_eq!((c, f), (vec![0xF5], cf::CBOR));
        assert!(encode_write(&Value::Bytes(vec![1]), Format::Text).is_err());
    }

    #[test]
    fn base64url() {
        assert_eq!(base64url_decode("aGVsbG8").unwrap(), b"hello");
        assert!(base64url_decode("*").is_err());
    }
}
