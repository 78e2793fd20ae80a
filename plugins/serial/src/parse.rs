//! Turning a frame into fields, and fields into point values.
//!
//! A [`Parser`] reads one frame and yields [`Parsed`] fields (or a [`ParseError`]); each point then picks its
//! field with a [`Source`] and converts it with a [`ValueType`]. A point whose field is absent from a frame is
//! simply not published for that frame: devices that print several kinds of lines (GGA then RMC, a header then
//! data) map each kind to its own points.
//!
//! Text parsers see the frame as UTF-8 (invalid sequences replaced) with leading and trailing CR/LF removed.
//! Pure and synchronous: the fuzz target drives it directly.

use std::collections::HashMap;

use fieldbridge_sdk::Value;

use crate::binary;
use crate::checksum::{ChecksumError, ChecksumSpec};
use crate::nmea::{self, NmeaError};

/// How frames are parsed.
#[derive(Debug, Clone)]
pub enum Parser {
    /// The whole frame is the field `text`.
    Text,
    /// A regex; its named captures are the fields.
    Regex(regex::Regex),
    /// Delimited columns, named by index (`0`, `1`, …) and by the optional column names.
    Csv {
        /// Column separator.
        delimiter: char,
        /// Names of the columns, in order.
        columns: Vec<String>,
    },
    /// A JSON document; points name a JSON pointer.
    Json,
    /// `key=value` pairs.
    KeyValue {
        /// Between pairs; `None` = any run of spaces, tabs, commas or semicolons.
        separator: Option<String>,
        /// Between a key and its value.
        assign: String,
    },
    /// NMEA 0183.
    Nmea {
        /// Reject sentences without `*hh`.
        require_checksum: bool,
    },
    /// A binary frame; points name typed fields at offsets.
    Binary {
        /// Verified before any field is read.
        checksum: Option<ChecksumSpec>,
        /// Shorter frames are rejected.
        min_length: usize,
    },
}

/// The fields of one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Named text fields.
    Fields(HashMap<String, String>),
    /// A JSON document.
    Json(serde_json::Value),
    /// A verified binary frame.
    Frame(Vec<u8>),
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The regex did not match.
    #[error("the line does not match the pattern")]
    NoMatch,
    /// Not a JSON document.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// NMEA problem (checksum included).
    #[error("NMEA: {0}")]
    Nmea(#[from] NmeaError),
    /// Binary checksum problem.
    #[error("checksum: {0}")]
    Checksum(#[from] ChecksumError),
    /// A binary frame shorter than the fields need.
    #[error("frame of {len} bytes, expected at least {min}")]
    TooShort {
        /// Frame length.
        len: usize,
        /// Minimum.
        min: usize,
    },
    /// A frame without any `key=value` pair.
    #[error("no key{0}value pair in the line")]
    NoPairs(String),
}

impl ParseError {
    /// Whether this is a checksum failure (counted apart from other parse errors).
    pub fn is_checksum(&self) -> bool {
        matches!(
            self,
            ParseError::Checksum(_) | ParseError::Nmea(NmeaError::Checksum { .. })
        )
    }
}

fn text(frame: &[u8]) -> String {
    String::from_utf8_lossy(frame)
        .trim_matches(['\r', '\n'])
        .to_owned()
}

/// Splits a CSV line, honouring double quotes (`"a,b"` is one field, `""` inside quotes is a quote).
fn csv_split(line: &str, delimiter: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            c if c == delimiter && !quoted => out.push(std::mem::take(&mut cur).trim().to_owned()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_owned());
    out
}

impl Parser {
    /// Parses one frame.
    pub fn parse(&self, frame: &[u8]) -> Result<Parsed, ParseError> {
        match self {
            Parser::Text => {
                let mut m = HashMap::new();
                m.insert("text".to_owned(), text(frame));
                Ok(Parsed::Fields(m))
            }
            Parser::Regex(re) => {
                let t = text(frame);
                let caps = re.captures(&t).ok_or(ParseError::NoMatch)?;
                let mut m = HashMap::new();
                for name in re.capture_names().flatten() {
                    if let Some(c) = caps.name(name) {
                        m.insert(name.to_owned(), c.as_str().to_owned());
                    }
                }
                Ok(Parsed::Fields(m))
            }
            Parser::Csv { delimiter, columns } => {
                let cols = csv_split(&text(frame), *delimiter);
                let mut m = HashMap::new();
                for (i, v) in cols.into_iter().enumerate() {
                    if let Some(name) = columns.get(i) {
                        m.insert(name.clone(), v.clone());
                    }
                    m.insert(i.to_string(), v);
                }
                Ok(Parsed::Fields(m))
            }
            Parser::Json => serde_json::from_slice(frame)
                .map(Parsed::Json)
                .map_err(|e| ParseError::Json(e.to_string())),
            Parser::KeyValue { separator, assign } => {
                let t = text(frame);
                let pairs: Vec<&str> = match separator {
                    Some(sep) => t.split(sep.as_str()).collect(),
                    None => t.split([' ', '\t', ',', ';']).collect(),
                };
                let mut m = HashMap::new();
                for p in pairs {
                    if let Some((k, v)) = p.split_once(assign.as_str()) {
                        let k = k.trim();
                        if !k.is_empty() {
                            m.insert(k.to_owned(), v.trim().to_owned());
                        }
                    }
                }
                if m.is_empty() {
                    return Err(ParseError::NoPairs(assign.clone()));
                }
                Ok(Parsed::Fields(m))
            }
            Parser::Nmea { require_checksum } => Ok(Parsed::Fields(nmea::parse(
                &text(frame),
                *require_checksum,
            )?)),
            Parser::Binary {
                checksum,
                min_length,
            } => {
                if frame.len() < *min_length {
                    return Err(ParseError::TooShort {
                        len: frame.len(),
                        min: *min_length,
                    });
                }
                if let Some(c) = checksum {
                    c.verify(frame)?;
                }
                Ok(Parsed::Frame(frame.to_vec()))
            }
        }
    }
}

/// Where a point's value is in the parsed frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A named text field (capture, column, key, NMEA field).
    Field(String),
    /// A JSON pointer.
    Pointer(String),
    /// A typed field of a binary frame.
    Binary(binary::Field),
}

/// What a text or JSON field is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueType {
    /// Integer if it reads as one, else a finite number, else `true`/`false`, else text.
    #[default]
    Auto,
    /// A number.
    Float,
    /// A signed integer.
    Int,
    /// An unsigned integer.
    UInt,
    /// `true`/`false`, `1`/`0`, `on`/`off`, `yes`/`no`.
    Bool,
    /// Text as is.
    String,
}

impl ValueType {
    /// Names as written in device maps.
    pub const ALL: [(ValueType, &'static str); 6] = [
        (ValueType::Auto, "auto"),
        (ValueType::Float, "float"),
        (ValueType::Int, "int"),
        (ValueType::UInt, "uint"),
        (ValueType::Bool, "bool"),
        (ValueType::String, "string"),
    ];

    /// Converts text.
    pub fn convert(self, s: &str) -> Result<Value, String> {
        let t = s.trim();
        let bad = |what: &str| {
            let shown: String = t.chars().take(40).collect();
            format!("`{shown}` is not {what}")
        };
        let float = |t: &str| t.parse::<f64>().ok().filter(|f| f.is_finite());
        let boolean = |t: &str| match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Some(true),
            "false" | "0" | "off" | "no" => Some(false),
            _ => None,
        };
        match self {
            ValueType::Auto => Ok(if let Ok(i) = t.parse::<i64>() {
                Value::Int(i)
            } else if let Some(f) = float(t) {
                Value::Float(f)
            } else if t == "true" || t == "false" {
                Value::Bool(t == "true")
            } else {
                Value::String(s.to_owned())
            }),
            ValueType::Float => float(t).map(Value::Float).ok_or_else(|| bad("a number")),
            ValueType::Int => t
                .parse::<i64>()
                .map(Value::Int)
                .map_err(|_| bad("an integer")),
            ValueType::UInt => t
                .parse::<u64>()
                .map(Value::UInt)
                .map_err(|_| bad("an unsigned integer")),
            ValueType::Bool => boolean(t).map(Value::Bool).ok_or_else(|| bad("a boolean")),
            ValueType::String => Ok(Value::String(s.to_owned())),
        }
    }

    fn convert_json(self, v: &serde_json::Value) -> Option<Result<Value, String>> {
        use serde_json::Value as J;
        Some(match (self, v) {
            (_, J::Null) => return None,
            (ValueType::String, J::String(s)) => Ok(Value::String(s.clone())),
            (ValueType::String, other) => Ok(Value::String(other.to_string())),
            (t, J::String(s)) => t.convert(s),
            (ValueType::Auto | ValueType::Bool, J::Bool(b)) => Ok(Value::Bool(*b)),
            (ValueType::Auto, J::Number(n)) => Ok(if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }),
            (ValueType::Auto, other) => Ok(Value::String(other.to_string())),
            (t, J::Number(n)) => t.convert(&n.to_string()),
            (t, J::Bool(b)) => t.convert(if *b { "1" } else { "0" }),
            (t, other) => Err(format!("a JSON {} is not {t:?}", json_kind(other))),
        })
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
        _ => "scalar",
    }
}

/// A point's value from a parsed frame: `None` when the frame does not carry it, `Some(Err)` when it does but
/// it cannot be converted.
pub fn extract(parsed: &Parsed, source: &Source, ty: ValueType) -> Option<Result<Value, String>> {
    match (parsed, source) {
        (Parsed::Fields(m), Source::Field(name)) => m.get(name).map(|s| ty.convert(s)),
        (Parsed::Json(doc), Source::Pointer(p)) => doc.pointer(p).and_then(|v| ty.convert_json(v)),
        (Parsed::Frame(f), Source::Binary(field)) => {
            Some(field.decode(f).map_err(|e| e.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::{BinType, Field, Order};
    use crate::checksum::Algorithm;

    fn fields(p: &Parser, frame: &[u8]) -> HashMap<String, String> {
        match p.parse(frame).unwrap() {
            Parsed::Fields(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn regex_named_captures() {
        let p = Parser::Regex(
            regex::Regex::new(
                r"^(?P<mode>ST|US),GS,\s*(?P<weight>[-+]?\d+\.\d+)\s*(?P<unit>\w+)?$",
            )
            .unwrap(),
        );
        let m = fields(&p, b"ST,GS,  +012.50 kg\r\n");
        assert_eq!(m["weight"], "+012.50");
        assert_eq!(m["unit"], "kg");
        assert_eq!(
            ValueType::Float.convert(&m["weight"]),
            Ok(Value::Float(12.5))
        );
        assert_eq!(p.parse(b"garbage"), Err(ParseError::NoMatch));
    }

    #[test]
    fn csv_columns() {
        let p = Parser::Csv {
            delimiter: ',',
            columns: vec!["t".into(), "rh".into()],
        };
        let m = fields(&p, b"21.5, 40 ,\"a,b\",\"say \"\"hi\"\"\"\n");
        assert_eq!(m["t"], "21.5");
        assert_eq!(m["rh"], "40");
        assert_eq!(m["1"], "40");
        assert_eq!(m["2"], "a,b");
        assert_eq!(m["3"], "say \"hi\"");
        assert!(!m.contains_key("4"));
    }

    #[test]
    fn json_pointers() {
        let p = Parser::Json;
        let parsed = p
            .parse(br#"{"t":21.5,"n":3,"ok":true,"s":"7","a":[1,{"b":-2}],"z":null}"#)
            .unwrap();
        let get = |ptr: &str, ty| extract(&parsed, &Source::Pointer(ptr.into()), ty);
        assert_eq!(get("/t", ValueType::Auto), Some(Ok(Value::Float(21.5))));
        assert_eq!(get("/n", ValueType::Auto), Some(Ok(Value::Int(3))));
        assert_eq!(get("/n", ValueType::Float), Some(Ok(Value::Float(3.0))));
        assert_eq!(get("/ok", ValueType::Auto), Some(Ok(Value::Bool(true))));
        assert_eq!(get("/s", ValueType::Int), Some(Ok(Value::Int(7))));
        assert_eq!(get("/a/1/b", ValueType::Auto), Some(Ok(Value::Int(-2))));
        assert_eq!(get("/z", ValueType::Auto), None);
        assert_eq!(get("/missing", ValueType::Auto), None);
        assert!(get("/a", ValueType::Float).unwrap().is_err());
        assert!(matches!(p.parse(b"{\"t\":"), Err(ParseError::Json(_))));
    }

    #[test]
    fn key_value_pairs() {
        let p = Parser::KeyValue {
            separator: None,
            assign: "=".into(),
        };
        let m = fields(&p, b"T=21.5 RH=40,P=1013;flag=on\r\n");
        assert_eq!(m["T"], "21.5");
        assert_eq!(m["P"], "1013");
        assert_eq!(ValueType::Bool.convert(&m["flag"]), Ok(Value::Bool(true)));
        let p = Parser::KeyValue {
            separator: Some("|".into()),
            assign: ":".into(),
        };
        let m = fields(&p, b"a: 1|b :two");
        assert_eq!(m["b"], "two");
        assert!(matches!(
            p.parse(b"nothing here"),
            Err(ParseError::NoPairs(_))
        ));
    }

    #[test]
    fn binary_with_checksum() {
        let spec = ChecksumSpec::new(Algorithm::Crc16Modbus);
        let mut frame = vec![0x01, 0x00, 0xD7, 0x41, 0xC8, 0x00, 0x00];
        frame.extend(spec.encode(&frame));
        let p = Parser::Binary {
            checksum: Some(spec),
            min_length: 9,
        };
        let parsed = p.parse(&frame).unwrap();
        let f = |ty: BinType, offset| {
            Source::Binary(Field {
                ty,
                offset,
                order: Order::Abcd,
                length: ty.size().unwrap(),
            })
        };
        assert_eq!(
            extract(&parsed, &f(BinType::U16, 1), ValueType::Auto),
            Some(Ok(Value::UInt(215)))
        );
        assert_eq!(
            extract(&parsed, &f(BinType::F32, 3), ValueType::Auto),
            Some(Ok(Value::Float(25.0)))
        );
        frame[1] ^= 0xFF;
        let e = p.parse(&frame).unwrap_err();
        assert!(e.is_checksum(), "{e}");
        assert!(matches!(
            p.parse(&frame[..4]),
            Err(ParseError::TooShort { len: 4, min: 9 })
        ));
    }

    #[test]
    fn conversions() {
        assert_eq!(ValueType::Auto.convert(" 42 "), Ok(Value::Int(42)));
        assert_eq!(ValueType::Auto.convert("-1.5e3"), Ok(Value::Float(-1500.0)));
        assert_eq!(
            ValueType::Auto.convert("inf"),
            Ok(Value::String("inf".into()))
        );
        assert_eq!(
            ValueType::Auto.convert("OK"),
            Ok(Value::String("OK".into()))
        );
        assert!(ValueType::Float.convert("NaN").is_err());
        assert!(ValueType::Int.convert("1.5").is_err());
        assert!(ValueType::UInt.convert("-1").is_err());
        assert_eq!(
            ValueType::UInt.convert("18446744073709551615"),
            Ok(Value::UInt(u64::MAX))
        );
    }
}
