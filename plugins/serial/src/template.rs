//! Write-back templates: what is sent to the device when a point is written.
//!
//! Two forms, both checked when the device map is loaded:
//!
//! - text (`write:`): `"SP {value:.1}\r\n"`. Escapes as in [`crate::escape`]; `{value}` is the value as is,
//!   `{value:SPEC}` formats it, SPEC being `[0][width][.precision][d|f|x|X]` (`{value:.2}` two decimals,
//!   `{value:05d}` zero-padded integer, `{value:02X}` upper-case hex). `{{` and `}}` are literal braces.
//! - bytes (`write_hex:`): hex bytes and placeholders separated by spaces:
//!   `"01 06 00 10 {value:u16} {crc16_modbus}"`. `{value:TYPE}` or `{value:TYPE:ORDER}` encodes the value as a
//!   binary type (`u8` … `f64`, orders as for reading); `{ALGORITHM}` appends the checksum of every byte
//!   before it, `{ALGORITHM:N}` of the bytes from offset `N` on.

use fieldbridge_sdk::Value;

/// A template that cannot be parsed, or a value that cannot be rendered with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl From<String> for TemplateError {
    fn from(s: String) -> Self {
        TemplateError(s)
    }
}

impl From<&str> for TemplateError {
    fn from(s: &str) -> Self {
        TemplateError(s.to_owned())
    }
}

use crate::binary::{self, BinType, Order};
use crate::checksum::{Algorithm, ChecksumSpec};
use crate::escape::{parse_hex, unescape};

/// A number format (`[0][width][.precision][d|f|x|X]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NumFormat {
    zero: bool,
    width: usize,
    precision: Option<usize>,
    kind: Option<char>,
}

impl NumFormat {
    fn parse(spec: &str) -> Result<NumFormat, String> {
        let bad = || {
            format!(
                "bad format `{spec}`: expected [0][width][.precision][d|f|x|X], e.g. `.2` or `04X`"
            )
        };
        let mut f = NumFormat::default();
        let mut rest = spec;
        if let Some(k) = rest
            .chars()
            .last()
            .filter(|c| matches!(c, 'd' | 'f' | 'x' | 'X'))
        {
            f.kind = Some(k);
            rest = &rest[..rest.len() - 1];
        }
        let (w, p) = match rest.split_once('.') {
            Some((w, p)) => (w, Some(p)),
            None => (rest, None),
        };
        if let Some(p) = p {
            let p: usize = p.parse().map_err(|_| bad())?;
            if p > 17 {
                return Err(bad());
            }
            f.precision = Some(p);
        }
        if let Some(w) = w.strip_prefix('0') {
            f.zero = true;
            if !w.is_empty() {
                f.width = w.parse().map_err(|_| bad())?;
            }
        } else if !w.is_empty() {
            f.width = w.parse().map_err(|_| bad())?;
        }
        if f.width > 64 || (f.precision.is_some() && matches!(f.kind, Some('d' | 'x' | 'X'))) {
            return Err(bad());
        }
        Ok(f)
    }

    fn render(&self, v: &Value) -> Result<String, String> {
        let int = || -> Result<i128, String> {
            match v {
                Value::Int(i) => Ok(i128::from(*i)),
                Value::UInt(u) => Ok(i128::from(*u)),
                Value::Bool(b) => Ok(i128::from(*b)),
                Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e30 => Ok(*f as i128),
                Value::String(s) => s
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{s}` is not an integer")),
                other => Err(format!("{other} is not an integer")),
            }
        };
        let float = || -> Result<f64, String> {
            match v {
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("`{s}` is not a number")),
                other => other
                    .as_f64()
                    .ok_or_else(|| format!("{} is not a number", other.kind())),
            }
        };
        let body = match (self.kind, self.precision) {
            (Some('x'), _) | (Some('X'), _) => {
                let i = int()?;
                if i < 0 {
                    return Err(format!("{i} is negative: cannot write it as hex"));
                }
                if self.kind == Some('x') {
                    format!("{i:x}")
                } else {
                    format!("{i:X}")
                }
            }
            (Some('d'), _) => int()?.to_string(),
            (_, Some(p)) => format!("{:.*}", p, float()?),
            (Some('f'), None) => format!("{}", float()?),
            _ => v.to_string(),
        };
        Ok(pad(&body, self.width, self.zero))
    }
}

fn pad(body: &str, width: usize, zero: bool) -> String {
    let len = body.chars().count();
    if len >= width {
        return body.to_owned();
    }
    let fill = width - len;
    if zero {
        match body.strip_prefix('-') {
            Some(rest) => format!("-{}{rest}", "0".repeat(fill)),
            None => format!("{}{body}", "0".repeat(fill)),
        }
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Bytes(Vec<u8>),
    Text(NumFormat),
    Binary(BinType, Order),
    Checksum(ChecksumSpec, usize),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// Splits `s` into literal text and `{…}` placeholder contents.
fn split_placeholders(s: &str) -> Result<Vec<(bool, String)>, String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => {
                            return Err(
                                "`{` without its closing `}` (write `{{` for a brace)".into()
                            )
                        }
                    }
                }
                if !lit.is_empty() {
                    out.push((false, std::mem::take(&mut lit)));
                }
                out.push((true, inner));
            }
            '}' => return Err("`}` without an opening `{` (write `}}` for a brace)".into()),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push((false, lit));
    }
    Ok(out)
}

impl Template {
    /// A text template.
    pub fn text(s: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        for (placeholder, part) in split_placeholders(s)? {
            if !placeholder {
                segments.push(Segment::Bytes(unescape(&part).map_err(|e| e.to_string())?));
                continue;
            }
            let spec = match part.split_once(':') {
                Some(("value", spec)) => spec,
                None if part == "value" => "",
                _ => {
                    return Err(TemplateError(format!(
                        "unknown placeholder `{{{part}}}`: text templates take `{{value}}` or `{{value:FORMAT}}`"
                    )))
                }
            };
            segments.push(Segment::Text(NumFormat::parse(spec)?));
        }
        Ok(Template { segments })
    }

    /// A bytes template.
    pub fn bytes(s: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        for (placeholder, part) in split_placeholders(s)? {
            if !placeholder {
                segments.push(Segment::Bytes(
                    parse_hex(part.trim()).map_err(|e| e.to_string())?,
                ));
                continue;
            }
            let mut it = part.split(':');
            let head = it.next().unwrap_or("");
            if head == "value" {
                let ty: BinType = it
                    .next()
                    .ok_or("`{value}` in a hex template needs a type, e.g. `{value:u16}`")?
                    .parse()?;
                if ty.size().is_none() {
                    return Err(TemplateError(format!(
                        "`{ty}` has no fixed size; use u8 … f64 in a hex template"
                    )));
                }
                let order: Order = it.next().map_or(Ok(Order::Abcd), str::parse)?;
                segments.push(Segment::Binary(ty, order));
            } else {
                let alg: Algorithm = head.parse().map_err(|e| {
                    format!("unknown placeholder `{{{part}}}`: expected {{value:TYPE}} or a checksum; {e}")
                })?;
                let from = match it.next() {
                    Some(n) => n.parse::<usize>().map_err(|_| {
                        format!("`{{{part}}}`: the checksum's start must be a byte offset")
                    })?,
                    None => 0,
                };
                segments.push(Segment::Checksum(ChecksumSpec::new(alg), from));
            }
            if let Some(extra) = it.next() {
                return Err(TemplateError(format!(
                    "`{{{part}}}`: unexpected `:{extra}`"
                )));
            }
        }
        Ok(Template { segments })
    }

    /// Whether the value appears in the output (a template without it sends a fixed command).
    pub fn uses_value(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Text(_) | Segment::Binary(..)))
    }

    /// The bytes to send for `value`.
    pub fn render(&self, value: &Value) -> Result<Vec<u8>, TemplateError> {
        let mut out = Vec::new();
        for s in &self.segments {
            match s {
                Segment::Bytes(b) => out.extend_from_slice(b),
                Segment::Text(f) => out.extend_from_slice(f.render(value)?.as_bytes()),
                Segment::Binary(ty, order) => {
                    out.extend(binary::encode(*ty, *order, value).map_err(|e| e.to_string())?)
                }
                Segment::Checksum(spec, from) => {
                    let covered = out.get(*from..).ok_or_else(|| {
                        format!(
                            "checksum from byte {from}, but only {} bytes precede it",
                            out.len()
                        )
                    })?;
                    let sum = spec.encode(covered);
                    out.extend(sum);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_formats() {
        let t = |s: &str, v: Value| Template::text(s).unwrap().render(&v).unwrap();
        assert_eq!(
            t(r"SP {value:.2}\r\n", Value::Float(21.456)),
            b"SP 21.46\r\n"
        );
        assert_eq!(t("{value}", Value::Int(-3)), b"-3");
        assert_eq!(t("{value:05d}", Value::Int(-42)), b"-0042");
        assert_eq!(t("{value:04X}", Value::UInt(255)), b"00FF");
        assert_eq!(t("{value:x}", Value::Float(26.0)), b"1a");
        assert_eq!(t("{value:6.1}|", Value::Float(2.25)), b"   2.2|");
        assert_eq!(t("{{{value}}}", Value::Bool(true)), b"{true}");
        assert_eq!(t("P\\x02{value}", Value::String("on".into())), b"P\x02on");
        assert_eq!(t("RESET\r", Value::Int(1)), b"RESET\r");
        assert!(Template::text("{value:x}")
            .unwrap()
            .render(&Value::Float(1.5))
            .is_err());
        assert!(Template::text("{value:x}")
            .unwrap()
            .render(&Value::Int(-1))
            .is_err());
        assert!(Template::text("{value:.2}")
            .unwrap()
            .render(&Value::String("x".into()))
            .is_err());
        assert!(Template::text("{other}").is_err());
        assert!(Template::text("{value:.2x}").is_err());
        assert!(Template::text("{value").is_err());
        assert!(Template::text("}").is_err());
        assert!(!Template::text("RESET").unwrap().uses_value());
    }

    #[test]
    fn byte_templates() {
        // Modbus "write single register 0x0010 = 300" to unit 1, with its CRC.
        let t = Template::bytes("01 06 00 10 {value:u16} {crc16_modbus}").unwrap();
        let out = t.render(&Value::Int(300)).unwrap();
        assert_eq!(&out[..6], &[0x01, 0x06, 0x00, 0x10, 0x01, 0x2C]);
        assert!(ChecksumSpec::new(Algorithm::Crc16Modbus)
            .verify(&out)
            .is_ok());
        let t = Template::bytes("02 {value:f32:DCBA} 03 {xor8:1}").unwrap();
        let out = t.render(&Value::Float(1.0)).unwrap();
        assert_eq!(out, vec![0x02, 0, 0, 0x80, 0x3F, 0x03, 0x80 ^ 0x3F ^ 0x03]);
        assert!(t.render(&Value::String("x".into())).is_err());
        assert!(Template::bytes("01 {value}").is_err());
        assert!(Template::bytes("01 {value:string}").is_err());
        assert!(Template::bytes("01 {md5}").is_err());
        assert!(Template::bytes("zz").is_err());
        assert!(Template::bytes("01 {sum8:5}")
            .unwrap()
            .render(&Value::Int(0))
            .is_err());
    }
}
