//! Turning register images into values and back.
//!
//! Everything here is pure: the same functions serve polling, write-back and the commissioning CLI, so what an
//! integrator sees with `fieldbridge modbus read` is exactly what the daemon will publish.
//!
//! # Byte and word order
//!
//! Modbus only defines 16-bit registers, sent high byte first. Wider values are spread over several registers
//! and every vendor picks its own layout. We name a layout by where the bytes of the big-endian value
//! `A B C D` (or `A B C D E F G H` for 64 bits) end up on the wire:
//!
//! | order  | 64-bit name | registers on the wire (32-bit) | meaning                                        |
//! |--------|-------------|--------------------------------|------------------------------------------------|
//! | `ABCD` | `ABCDEFGH`  | `[AB] [CD]`                    | big-endian, the Modbus convention              |
//! | `BADC` | `BADCFEHG`  | `[BA] [DC]`                    | bytes swapped inside each register             |
//! | `CDAB` | `GHEFCDAB`  | `[CD] [AB]`                    | register (word) order reversed                 |
//! | `DCBA` | `HGFEDCBA`  | `[DC] [BA]`                    | fully little-endian                            |
//!
//! An order is therefore two independent switches (swap bytes, reverse words), which is how it is stored:
//! the 64-bit names are accepted as spellings of the same four orders. Decoding first normalises the image to
//! big-endian bytes and only then reinterprets them as the requested type, so a float can never come out as an
//! integer whatever the order (a bug users hit in other gateways).
//!
//! 16-bit values only honour the byte swap. Strings and raw bytes only honour the byte swap too (a string is
//! a sequence of registers, not a number, so "word order" has no meaning for it).
use std::fmt;
use std::str::FromStr;

use fieldbridge_sdk::Value;

/// The type a point's registers (or bits) hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    /// One bit of a 16-bit register (`bit: 0` is the least significant bit).
    Bit,
    /// Unsigned 16-bit register.
    U16,
    /// Signed 16-bit register (two's complement).
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE-754 single precision, two registers.
    F32,
    /// IEEE-754 double precision, four registers.
    F64,
    /// Text over `length` registers, two characters per register, NUL padded.
    String,
    /// Raw bytes over `length` registers.
    Bytes,
}

impl DataType {
    /// Every type with its configuration name, for parsing and did-you-mean messages.
    pub const ALL: [(&'static str, DataType); 12] = [
        ("bool", DataType::Bool),
        ("bit", DataType::Bit),
        ("u16", DataType::U16),
        ("i16", DataType::I16),
        ("u32", DataType::U32),
        ("i32", DataType::I32),
        ("u64", DataType::U64),
        ("i64", DataType::I64),
        ("f32", DataType::F32),
        ("f64", DataType::F64),
        ("string", DataType::String),
        ("bytes", DataType::Bytes),
    ];

    /// The configuration name (`f32`, `string`, …).
    pub fn name(self) -> &'static str {
        DataType::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Registers taken by one value of a fixed-width type; `None` for bool (a bit, not a register) and for
    /// the variable-length string and bytes.
    pub fn fixed_registers(self) -> Option<u16> {
        match self {
            DataType::Bit | DataType::U16 | DataType::I16 => Some(1),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(2),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(4),
            DataType::Bool | DataType::String | DataType::Bytes => None,
        }
    }

    /// Whether the type lives in the bit tables (coils, discrete inputs) rather than in registers.
    pub fn is_bit_table_type(self) -> bool {
        self == DataType::Bool
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataType {
    type Err = String;

    /// Accepts the canonical names and the spellings found in device manuals (`float32`, `uint16`, `int`,
    /// `coil`…), case-insensitively, so a map can be typed straight from a datasheet.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let t = match lower.as_str() {
            "bool" | "boolean" => DataType::Bool,
            "bit" => DataType::Bit,
            "u16" | "uint16" | "word" | "uint" => DataType::U16,
            "i16" | "int16" | "int" | "short" => DataType::I16,
            "u32" | "uint32" | "dword" => DataType::U32,
            "i32" | "int32" | "dint" => DataType::I32,
            "u64" | "uint64" => DataType::U64,
            "i64" | "int64" => DataType::I64,
            "f32" | "float32" | "float" | "real" => DataType::F32,
            "f64" | "float64" | "double" | "lreal" => DataType::F64,
            "string" | "str" | "text" => DataType::String,
            "bytes" | "raw" => DataType::Bytes,
            _ => {
                let names: Vec<&str> = DataType::ALL.iter().map(|(n, _)| *n).collect();
                // Suggest from the datasheet spellings too: `flaot32` is closer to `float32` than to `f32`.
                let mut candidates = names.clone();
                candidates.extend([
                    "float32", "float64", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                ]);
                return Err(format!(
                    "unknown type `{s}`{}; expected one of {}",
                    did_you_mean(&lower, &candidates),
                    names.join(", ")
                ));
            }
        };
        Ok(t)
    }
}

/// The byte/word layout of a multi-byte value. See the module docs for the naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    /// Big-endian (`ABCD`, `ABCDEFGH`, 16-bit `AB`): the Modbus default.
    #[default]
    Abcd,
    /// Bytes swapped in each register (`BADC`, `BADCFEHG`, 16-bit `BA`).
    Badc,
    /// Words reversed, bytes big-endian (`CDAB`, `GHEFCDAB`): common on PLCs and many meters.
    Cdab,
    /// Little-endian (`DCBA`, `HGFEDCBA`).
    Dcba,
}

impl Order {
    /// Whether the two bytes inside each register are swapped.
    pub fn byte_swap(self) -> bool {
        matches!(self, Order::Badc | Order::Dcba)
    }

    /// Whether the registers come least significant first.
    pub fn word_swap(self) -> bool {
        matches!(self, Order::Cdab | Order::Dcba)
    }

    /// The 32-bit name (`ABCD` …).
    pub fn name(self) -> &'static str {
        match self {
            Order::Abcd => "ABCD",
            Order::Badc => "BADC",
            Order::Cdab => "CDAB",
            Order::Dcba => "DCBA",
        }
    }

    /// The 64-bit name (`ABCDEFGH` …), for messages about 64-bit points.
    pub fn name64(self) -> &'static str {
        match self {
            Order::Abcd => "ABCDEFGH",
            Order::Badc => "BADCFEHG",
            Order::Cdab => "GHEFCDAB",
            Order::Dcba => "HGFEDCBA",
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Order {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase().replace(['-', ' '], "_");
        let o = match upper.as_str() {
            "ABCD" | "AB" | "ABCDEFGH" | "BIG" | "BIG_ENDIAN" => Order::Abcd,
            "BADC" | "BA" | "BADCFEHG" | "BYTE_SWAP" => Order::Badc,
            "CDAB" | "GHEFCDAB" | "WORD_SWAP" => Order::Cdab,
            "DCBA" | "HGFEDCBA" | "LITTLE" | "LITTLE_ENDIAN" => Order::Dcba,
            _ => {
                return Err(format!(
                    "unknown byte/word order `{s}`; expected ABCD (big-endian), BADC (byte swap), CDAB (word \
                     swap) or DCBA (little-endian), or the 64-bit spellings ABCDEFGH, BADCFEHG, GHEFCDAB, \
                     HGFEDCBA, or AB/BA for 16-bit values"
                ))
            }
        };
        Ok(o)
    }
}

/// Everything needed to decode and encode one point: its type, order and, for `bit`/`string`/`bytes`, the
/// extra parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format {
    /// The data type.
    pub data_type: DataType,
    /// Byte/word order (ignored for bool; only the byte swap matters for 16-bit types, strings and bytes).
    pub order: Order,
    /// Bit index 0–15 for [`DataType::Bit`]; 0 otherwise.
    pub bit: u8,
    /// Register count for [`DataType::String`] and [`DataType::Bytes`]; ignored otherwise.
    pub length: u16,
}

/// Why a register image or a value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The value cannot be stored in the point (wrong kind, out of range, too long).
    #[error("{0}")]
    InvalidValue(String),
    /// The device returned fewer registers or bits than the point needs (a misbehaving device).
    #[error("expected {expected} {unit}, got {got}")]
    ShortResponse {
        /// What the point needs.
        expected: usize,
        /// What arrived.
        got: usize,
        /// `registers` or `bits`.
        unit: &'static str,
    },
}

impl From<CodecError> for fieldbridge_sdk::CommandError {
    fn from(e: CodecError) -> Self {
        fieldbridge_sdk::CommandError::InvalidValue(e.to_string())
    }
}

/// What a write must put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// One coil (FC5).
    Coil(bool),
    /// One bit of a holding register: needs a read-modify-write of that register.
    Bit {
        /// Bit index 0–15.
        bit: u8,
        /// The new state.
        on: bool,
    },
    /// Whole registers (FC6 for one, FC16 for more).
    Registers(Vec<u16>),
}

impl Format {
    /// A format with the default order and no extra parameters.
    pub fn new(data_type: DataType) -> Self {
        Format {
            data_type,
            order: Order::Abcd,
            bit: 0,
            length: 0,
        }
    }

    /// With an order.
    pub fn with_order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// How many registers (or, for bool, bits) one value occupies.
    pub fn width(&self) -> u16 {
        match self.data_type {
            DataType::Bool => 1,
            DataType::String | DataType::Bytes => self.length,
            t => t.fixed_registers().unwrap_or(1),
        }
    }

    /// Decodes the bits of a coil or discrete input.
    pub fn decode_bits(&self, bits: &[bool]) -> Result<Value, CodecError> {
        match bits.first() {
            Some(b) => Ok(Value::Bool(*b)),
            None => Err(CodecError::ShortResponse {
                expected: 1,
                got: 0,
                unit: "bits",
            }),
        }
    }

    /// Decodes `width()` registers, as they came off the wire.
    pub fn decode_registers(&self, regs: &[u16]) -> Result<Value, CodecError> {
        let need = usize::from(self.width());
        if regs.len() < need {
            return Err(CodecError::ShortResponse {
                expected: need,
                got: regs.len(),
                unit: "registers",
            });
        }
        let regs = &regs[..need];
        let v = match self.data_type {
            DataType::Bool => Value::Bool(regs[0] != 0),
            DataType::Bit => Value::Bool((self.order_reg(regs[0]) >> self.bit) & 1 == 1),
            DataType::U16 => Value::UInt(u64::from(self.order_reg(regs[0]))),
            DataType::I16 => Value::Int(i64::from(self.order_reg(regs[0]) as i16)),
            DataType::U32 => Value::UInt(u64::from(u32::from_be_bytes(self.be_bytes(regs)))),
            DataType::I32 => Value::Int(i64::from(i32::from_be_bytes(self.be_bytes(regs)))),
            DataType::F32 => Value::Float(f64::from(f32::from_be_bytes(self.be_bytes(regs)))),
            DataType::U64 => Value::UInt(u64::from_be_bytes(self.be_bytes(regs))),
            DataType::I64 => Value::Int(i64::from_be_bytes(self.be_bytes(regs))),
            DataType::F64 => Value::Float(f64::from_be_bytes(self.be_bytes(regs))),
            DataType::String => {
                let bytes = self.text_bytes(regs);
                // Devices pad with NULs (sometimes spaces): the text ends at the first NUL.
                let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
                let s = String::from_utf8_lossy(&bytes[..end]);
                Value::String(s.trim_end().to_owned())
            }
            DataType::Bytes => Value::Bytes(self.text_bytes(regs)),
        };
        Ok(v)
    }

    /// Encodes a value for writing. Integers are range-checked against the type, floats must be integral
    /// for integer types (the core has already undone `scale`/`offset`), strings and bytes must fit.
    pub fn encode(&self, value: &Value) -> Result<Encoded, CodecError> {
        let regs = match self.data_type {
            DataType::Bool => return Ok(Encoded::Coil(to_bool(value)?)),
            DataType::Bit => {
                return Ok(Encoded::Bit {
                    bit: self.bit,
                    on: to_bool(value)?,
                })
            }
            DataType::U16 => vec![self.order_reg(to_int::<u16>(value, "u16")?)],
            DataType::I16 => vec![self.order_reg(to_int::<i16>(value, "i16")? as u16)],
            DataType::U32 => self.regs_from_be(&to_int::<u32>(value, "u32")?.to_be_bytes()),
            DataType::I32 => self.regs_from_be(&to_int::<i32>(value, "i32")?.to_be_bytes()),
            DataType::U64 => self.regs_from_be(&to_int::<u64>(value, "u64")?.to_be_bytes()),
            DataType::I64 => self.regs_from_be(&to_int::<i64>(value, "i64")?.to_be_bytes()),
            DataType::F32 => {
                let f = to_float(value)?;
                // Rounds to the nearest f32: `3.4028235e38` (f32::MAX as usually printed) is a little above
                // f32::MAX as an f64 and still fits; only what would round to infinity is out of range.
                if f.is_finite() && (f as f32).is_infinite() {
                    return Err(CodecError::InvalidValue(format!(
                        "{f} is out of range for f32"
                    )));
                }
                self.regs_from_be(&(f as f32).to_be_bytes())
            }
            DataType::F64 => self.regs_from_be(&to_float(value)?.to_be_bytes()),
            DataType::String => {
                let Value::String(s) = value else {
                    return Err(CodecError::InvalidValue(format!(
                        "expected a string, got {}",
                        value.kind()
                    )));
                };
                let cap = usize::from(self.length) * 2;
                if s.len() > cap {
                    return Err(CodecError::InvalidValue(format!(
                        "string of {} bytes does not fit in {} registers ({cap} bytes)",
                        s.len(),
                        self.length
                    )));
                }
                let mut bytes = s.as_bytes().to_vec();
                bytes.resize(cap, 0);
                self.text_regs(&bytes)
            }
            DataType::Bytes => {
                let Value::Bytes(b) = value else {
                    return Err(CodecError::InvalidValue(format!(
                        "expected bytes, got {}",
                        value.kind()
                    )));
                };
                let cap = usize::from(self.length) * 2;
                if b.len() != cap {
                    return Err(CodecError::InvalidValue(format!(
                        "expected exactly {cap} bytes ({} registers), got {}",
                        self.length,
                        b.len()
                    )));
                }
                self.text_regs(b)
            }
        };
        Ok(Encoded::Registers(regs))
    }

    /// A 16-bit register value honouring the byte swap (its own inverse): what a `bit` point's bit index
    /// counts in, and what read-modify-write puts back.
    pub fn order_reg(&self, r: u16) -> u16 {
        if self.order.byte_swap() {
            r.swap_bytes()
        } else {
            r
        }
    }

    /// Normalises a 2- or 4-register image to big-endian bytes.
    fn be_bytes<const N: usize>(&self, regs: &[u16]) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N / 2;
        for i in 0..n {
            let src = if self.order.word_swap() { n - 1 - i } else { i };
            let r = self.order_reg(regs[src]);
            out[2 * i..2 * i + 2].copy_from_slice(&r.to_be_bytes());
        }
        out
    }

    /// The inverse of [`Format::be_bytes`].
    fn regs_from_be(&self, bytes: &[u8]) -> Vec<u16> {
        let n = bytes.len() / 2;
        let mut regs = vec![0u16; n];
        for i in 0..n {
            let r = u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]);
            let dst = if self.order.word_swap() { n - 1 - i } else { i };
            regs[dst] = self.order_reg(r);
        }
        regs
    }

    /// The bytes of a string/bytes point in reading order (only the byte swap applies).
    fn text_bytes(&self, regs: &[u16]) -> Vec<u8> {
        regs.iter()
            .flat_map(|r| self.order_reg(*r).to_be_bytes())
            .collect()
    }

    fn text_regs(&self, bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks(2)
            .map(|c| self.order_reg(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .collect()
    }
}

fn to_bool(v: &Value) -> Result<bool, CodecError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Int(0) | Value::UInt(0) => Ok(false),
        Value::Int(1) | Value::UInt(1) => Ok(true),
        Value::Float(f) if *f == 0.0 => Ok(false),
        Value::Float(f) if *f == 1.0 => Ok(true),
        Value::String(s)
            if s.eq_ignore_ascii_case("true") || s == "1" || s.eq_ignore_ascii_case("on") =>
        {
            Ok(true)
        }
        Value::String(s)
            if s.eq_ignore_ascii_case("false") || s == "0" || s.eq_ignore_ascii_case("off") =>
        {
            Ok(false)
        }
        other => Err(CodecError::InvalidValue(format!(
            "expected a boolean (true/false, 0/1), got {other}"
        ))),
    }
}

/// Converts to an integer type, refusing anything that would not survive the round trip.
fn to_int<T>(v: &Value, name: &str) -> Result<T, CodecError>
where
    T: TryFrom<i128> + Copy,
{
    let wide: i128 = match v {
        Value::Int(i) => i128::from(*i),
        Value::UInt(u) => i128::from(*u),
        Value::Bool(b) => i128::from(*b),
        Value::Float(f) => {
            // The core's inverse scaling can leave 214.99999999999997 for 215; anything further from an
            // integer is a real fraction the register cannot hold.
            let r = f.round();
            if !f.is_finite() || (f - r).abs() > 1e-6 * r.abs().max(1.0) {
                return Err(CodecError::InvalidValue(format!(
                    "{f} is not an integer ({name} holds whole numbers)"
                )));
            }
            if r.abs() > 1.9e19 {
                return Err(CodecError::InvalidValue(format!(
                    "{f} is out of range for {name}"
                )));
            }
            r as i128
        }
        Value::String(s) => s.trim().parse::<i128>().map_err(|_| {
            CodecError::InvalidValue(format!("expected a number for {name}, got `{s}`"))
        })?,
        Value::Bytes(_) => {
            return Err(CodecError::InvalidValue(format!(
                "expected a number for {name}, got bytes"
            )))
        }
    };
    T::try_from(wide)
        .map_err(|_| CodecError::InvalidValue(format!("{wide} is out of range for {name}")))
}

fn to_float(v: &Value) -> Result<f64, CodecError> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::UInt(u) => Ok(*u as f64),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| CodecError::InvalidValue(format!("expected a number, got `{s}`"))),
        Value::Bytes(_) => Err(CodecError::InvalidValue(
            "expected a number, got bytes".into(),
        )),
    }
}

/// `; did you mean `x`?` when a candidate is close enough, else nothing.
pub(crate) fn did_you_mean(input: &str, candidates: &[&str]) -> String {
    let best = candidates
        .iter()
        .map(|c| (levenshtein(input, c), *c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= 2.max(input.len() / 3) && d > 0 => format!(" (did you mean `{c}`?)"),
        _ => String::new(),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    //! Golden images: every literal below was computed independently (Python's `struct.pack`), never with
    //! the code under test.
    use super::*;

    const ORDERS: [Order; 4] = [Order::Abcd, Order::Badc, Order::Cdab, Order::Dcba];

    fn fmt(t: DataType, o: Order) -> Format {
        Format::new(t).with_order(o)
    }

    /// Decodes `image`, checks the value, and checks that encoding the value gives the image back.
    fn golden(t: DataType, o: Order, image: &[u16], expected: Value) {
        let f = fmt(t, o);
        let got = f.decode_registers(image).unwrap();
        assert_eq!(got, expected, "decode {t} {o}");
        assert_eq!(
            f.encode(&expected).unwrap(),
            Encoded::Registers(image.to_vec()),
            "encode {t} {o}"
        );
    }

    #[test]
    fn f32_every_order() {
        // 123.456f32 = 0x42F6E979
        let v = Value::Float(f64::from(123.456f32));
        golden(DataType::F32, Order::Abcd, &[0x42F6, 0xE979], v.clone());
        golden(DataType::F32, Order::Badc, &[0xF642, 0x79E9], v.clone());
        golden(DataType::F32, Order::Cdab, &[0xE979, 0x42F6], v.clone());
        golden(DataType::F32, Order::Dcba, &[0x79E9, 0xF642], v);
        // -1.5f32 = 0xBFC00000
        let v = Value::Float(-1.5);
        golden(DataType::F32, Order::Abcd, &[0xBFC0, 0x0000], v.clone());
        golden(DataType::F32, Order::Badc, &[0xC0BF, 0x0000], v.clone());
        golden(DataType::F32, Order::Cdab, &[0x0000, 0xBFC0], v.clone());
        golden(DataType::F32, Order::Dcba, &[0x0000, 0xC0BF], v);
    }

    // One test per order for f64, so that a regression of "64-bit float comes back as an integer when the
    // words are flipped" names the order that broke.
    #[test]
    fn f64_abcdefgh() {
        // 123.456f64 = 0x405EDD2F1A9FBE77
        golden(
            DataType::F64,
            Order::Abcd,
            &[0x405E, 0xDD2F, 0x1A9F, 0xBE77],
            Value::Float(123.456),
        );
        // -0.000123456789 = 0xBF202E85BE111841
        golden(
            DataType::F64,
            Order::Abcd,
            &[0xBF20, 0x2E85, 0xBE11, 0x1841],
            Value::Float(-0.000123456789),
        );
    }

    #[test]
    fn f64_badcfehg() {
        golden(
            DataType::F64,
            Order::Badc,
            &[0x5E40, 0x2FDD, 0x9F1A, 0x77BE],
            Value::Float(123.456),
        );
        golden(
            DataType::F64,
            Order::Badc,
            &[0x20BF, 0x852E, 0x11BE, 0x4118],
            Value::Float(-0.000123456789),
        );
    }

    #[test]
    fn f64_ghefcdab() {
        golden(
            DataType::F64,
            Order::Cdab,
            &[0xBE77, 0x1A9F, 0xDD2F, 0x405E],
            Value::Float(123.456),
        );
        golden(
            DataType::F64,
            Order::Cdab,
            &[0x1841, 0xBE11, 0x2E85, 0xBF20],
            Value::Float(-0.000123456789),
        );
    }

    #[test]
    fn f64_hgfedcba() {
        golden(
            DataType::F64,
            Order::Dcba,
            &[0x77BE, 0x9F1A, 0x2FDD, 0x5E40],
            Value::Float(123.456),
        );
        golden(
            DataType::F64,
            Order::Dcba,
            &[0x4118, 0x11BE, 0x852E, 0x20BF],
            Value::Float(-0.000123456789),
        );
    }

    #[test]
    fn f64_is_always_a_float() {
        for o in ORDERS {
            let v = fmt(DataType::F64, o)
                .decode_registers(&[0, 0, 0, 0])
                .unwrap();
            assert!(matches!(v, Value::Float(_)), "{o}: {v:?}");
            let v = fmt(DataType::F32, o)
                .decode_registers(&[0x4000, 0x4000])
                .unwrap();
            assert!(matches!(v, Value::Float(_)), "{o}: {v:?}");
        }
    }

    #[test]
    fn i64_and_u64_every_order() {
        // 0xFEDCBA9876543210 = -81985529216486896 as i64, 18364758544493064720 as u64.
        let images: [(Order, [u16; 4]); 4] = [
            (Order::Abcd, [0xFEDC, 0xBA98, 0x7654, 0x3210]),
            (Order::Badc, [0xDCFE, 0x98BA, 0x5476, 0x1032]),
            (Order::Cdab, [0x3210, 0x7654, 0xBA98, 0xFEDC]),
            (Order::Dcba, [0x1032, 0x5476, 0x98BA, 0xDCFE]),
        ];
        for (o, img) in images {
            golden(DataType::I64, o, &img, Value::Int(-81985529216486896));
            golden(DataType::U64, o, &img, Value::UInt(18364758544493064720));
        }
    }

    #[test]
    fn i32_and_u32_every_order() {
        // -123456789 = 0xF8A432EB; 3000000000 = 0xB2D05E00
        let i: [(Order, [u16; 2]); 4] = [
            (Order::Abcd, [0xF8A4, 0x32EB]),
            (Order::Badc, [0xA4F8, 0xEB32]),
            (Order::Cdab, [0x32EB, 0xF8A4]),
            (Order::Dcba, [0xEB32, 0xA4F8]),
        ];
        for (o, img) in i {
            golden(DataType::I32, o, &img, Value::Int(-123456789));
        }
        let u: [(Order, [u16; 2]); 4] = [
            (Order::Abcd, [0xB2D0, 0x5E00]),
            (Order::Badc, [0xD0B2, 0x005E]),
            (Order::Cdab, [0x5E00, 0xB2D0]),
            (Order::Dcba, [0x005E, 0xD0B2]),
        ];
        for (o, img) in u {
            golden(DataType::U32, o, &img, Value::UInt(3_000_000_000));
        }
    }

    #[test]
    fn sixteen_bit_types_honour_only_the_byte_swap() {
        for o in [Order::Abcd, Order::Cdab] {
            golden(DataType::I16, o, &[0xFFFE], Value::Int(-2));
            golden(DataType::U16, o, &[0x1234], Value::UInt(0x1234));
        }
        for o in [Order::Badc, Order::Dcba] {
            golden(DataType::I16, o, &[0xFEFF], Value::Int(-2));
            golden(DataType::U16, o, &[0x3412], Value::UInt(0x1234));
        }
    }

    #[test]
    fn bits_of_a_register() {
        let reg = [0b1000_0000_0000_0101u16];
        let bit = |n: u8| Format {
            bit: n,
            ..Format::new(DataType::Bit)
        };
        assert_eq!(bit(0).decode_registers(&reg).unwrap(), Value::Bool(true));
        assert_eq!(bit(1).decode_registers(&reg).unwrap(), Value::Bool(false));
        assert_eq!(bit(2).decode_registers(&reg).unwrap(), Value::Bool(true));
        assert_eq!(bit(15).decode_registers(&reg).unwrap(), Value::Bool(true));
        assert_eq!(
            bit(3).encode(&Value::Bool(true)).unwrap(),
            Encoded::Bit { bit: 3, on: true }
        );
    }

    #[test]
    fn strings_and_bytes() {
        // "FB-1" padded to 3 registers: 0x4642 0x2D31 0x0000
        let s = Format {
            length: 3,
            ..Format::new(DataType::String)
        };
        assert_eq!(
            s.decode_registers(&[0x4642, 0x2D31, 0x0000]).unwrap(),
            Value::String("FB-1".into())
        );
        assert_eq!(
            s.encode(&Value::String("FB-1".into())).unwrap(),
            Encoded::Registers(vec![0x4642, 0x2D31, 0x0000])
        );
        let swapped = Format {
            order: Order::Badc,
            ..s
        };
        assert_eq!(
            swapped.decode_registers(&[0x4246, 0x312D, 0x0000]).unwrap(),
            Value::String("FB-1".into())
        );
        assert_eq!(
            swapped.encode(&Value::String("FB-1".into())).unwrap(),
            Encoded::Registers(vec![0x4246, 0x312D, 0x0000])
        );
        // Space padding is trimmed too.
        assert_eq!(
            s.decode_registers(&[0x4142, 0x2020, 0x2020]).unwrap(),
            Value::String("AB".into())
        );
        assert!(matches!(
            s.encode(&Value::String("too long!".into())),
            Err(CodecError::InvalidValue(_))
        ));
        let b = Format {
            length: 2,
            ..Format::new(DataType::Bytes)
        };
        assert_eq!(
            b.decode_registers(&[0xDEAD, 0xBEEF]).unwrap(),
            Value::Bytes(vec![0xDE, 0xAD, 0xBE, 0xEF])
        );
        assert_eq!(
            b.encode(&Value::Bytes(vec![0xDE, 0xAD, 0xBE, 0xEF]))
                .unwrap(),
            Encoded::Registers(vec![0xDEAD, 0xBEEF])
        );
        let b_sw = Format {
            order: Order::Badc,
            ..b
        };
        assert_eq!(
            b_sw.decode_registers(&[0xDEAD, 0xBEEF]).unwrap(),
            Value::Bytes(vec![0xAD, 0xDE, 0xEF, 0xBE])
        );
        assert!(b.encode(&Value::Bytes(vec![1, 2, 3])).is_err());
    }

    #[test]
    fn range_checks_on_encode() {
        let u16f = Format::new(DataType::U16);
        assert!(matches!(
            u16f.encode(&Value::Int(70000)),
            Err(CodecError::InvalidValue(_))
        ));
        assert!(matches!(
            u16f.encode(&Value::Int(-1)),
            Err(CodecError::InvalidValue(_))
        ));
        assert_eq!(
            u16f.encode(&Value::Int(65535)).unwrap(),
            Encoded::Registers(vec![0xFFFF])
        );
        let i16f = Format::new(DataType::I16);
        assert!(i16f.encode(&Value::Int(32768)).is_err());
        assert_eq!(
            i16f.encode(&Value::Int(-32768)).unwrap(),
            Encoded::Registers(vec![0x8000])
        );
        assert!(Format::new(DataType::U32)
            .encode(&Value::Int(1 << 32))
            .is_err());
        assert!(Format::new(DataType::I32)
            .encode(&Value::UInt(1 << 31))
            .is_err());
        assert!(Format::new(DataType::I64)
            .encode(&Value::UInt(u64::MAX))
            .is_err());
        assert!(Format::new(DataType::U64)
            .encode(&Value::UInt(u64::MAX))
            .is_ok());
        // f32::MAX as it is usually printed (a little above it as an f64) rounds to f32::MAX; twice that does not.
        let f32f = Format::new(DataType::F32);
        assert_eq!(
            f32f.encode(&Value::String("3.4028235e38".into())).unwrap(),
            Encoded::Registers(vec![0x7F7F, 0xFFFF])
        );
        assert!(f32f.encode(&Value::Float(6.8e38)).is_err());
        assert!(Format::new(DataType::U64).encode(&Value::Int(-1)).is_err());
        // Fractions are refused, float noise from inverse scaling is not.
        assert!(u16f.encode(&Value::Float(21.5)).is_err());
        assert_eq!(
            u16f.encode(&Value::Float(214.99999999999997)).unwrap(),
            Encoded::Registers(vec![215])
        );
        assert!(u16f.encode(&Value::Float(f64::NAN)).is_err());
        assert!(Format::new(DataType::F32)
            .encode(&Value::Float(1e300))
            .is_err());
        assert!(Format::new(DataType::F32)
            .encode(&Value::String("x".into()))
            .is_err());
        assert!(Format::new(DataType::Bool).encode(&Value::Int(2)).is_err());
        assert_eq!(
            Format::new(DataType::Bool).encode(&Value::Int(1)).unwrap(),
            Encoded::Coil(true)
        );
    }

    #[test]
    fn encode_is_the_inverse_of_decode_for_many_values() {
        let samples: [(DataType, Value); 8] = [
            (DataType::U16, Value::UInt(40000)),
            (DataType::I16, Value::Int(-12345)),
            (DataType::U32, Value::UInt(0xDEADBEEF)),
            (DataType::I32, Value::Int(i64::from(i32::MIN))),
            (DataType::U64, Value::UInt(u64::MAX)),
            (DataType::I64, Value::Int(i64::MIN)),
            (DataType::F32, Value::Float(f64::from(f32::MIN_POSITIVE))),
            (DataType::F64, Value::Float(std::f64::consts::PI)),
        ];
        for o in ORDERS {
            for (t, v) in &samples {
                let f = fmt(*t, o);
                let Encoded::Registers(regs) = f.encode(v).unwrap() else {
                    panic!("{t}: not registers")
                };
                assert_eq!(regs.len(), usize::from(f.width()));
                assert_eq!(&f.decode_registers(&regs).unwrap(), v, "{t} {o}");
            }
        }
    }

    #[test]
    fn short_response_is_an_error() {
        assert!(matches!(
            Format::new(DataType::F32).decode_registers(&[1]),
            Err(CodecError::ShortResponse {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(Format::new(DataType::Bool).decode_bits(&[]).is_err());
    }

    #[test]
    fn order_names() {
        for (s, o) in [
            ("ABCD", Order::Abcd),
            ("abcdefgh", Order::Abcd),
            ("AB", Order::Abcd),
            ("big-endian", Order::Abcd),
            ("BADC", Order::Badc),
            ("BADCFEHG", Order::Badc),
            ("BA", Order::Badc),
            ("CDAB", Order::Cdab),
            ("GHEFCDAB", Order::Cdab),
            ("word_swap", Order::Cdab),
            ("DCBA", Order::Dcba),
            ("HGFEDCBA", Order::Dcba),
            ("little_endian", Order::Dcba),
        ] {
            assert_eq!(s.parse::<Order>().unwrap(), o, "{s}");
        }
        assert!("ACBD".parse::<Order>().is_err());
        assert_eq!(Order::Cdab.name64(), "GHEFCDAB");
    }

    #[test]
    fn type_names() {
        assert_eq!("float32".parse::<DataType>().unwrap(), DataType::F32);
        assert_eq!("U16".parse::<DataType>().unwrap(), DataType::U16);
        let e = "flaot32".parse::<DataType>().unwrap_err();
        assert!(e.contains("did you mean `float32`"), "{e}");
        let e = "f23".parse::<DataType>().unwrap_err();
        assert!(e.contains("did you mean `f32`"), "{e}");
    }
}
