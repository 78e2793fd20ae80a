//! Typed fields at byte offsets of a binary frame, with the byte/word orders of the Modbus adapter.
//!
//! The orders mean exactly what they mean in `plugins/modbus` (a frame is read as a sequence of 16-bit words):
//! `ABCD` big-endian, `BADC` bytes swapped in each word, `CDAB` words reversed, `DCBA` little-endian; the 64-bit
//! spellings (`ABCDEFGH`, `BADCFEHG`, `GHEFCDAB`, `HGFEDCBA`) and the 16-bit ones (`AB`, `BA`) name the same
//! four. The code is a small copy rather than a dependency on the Modbus crate, which would drag tokio-modbus
//! into every build with serial support.

use std::fmt;
use std::str::FromStr;

use fieldbridge_sdk::Value;

/// Byte/word order of a multi-byte field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    /// Big-endian.
    #[default]
    Abcd,
    /// Bytes swapped in each 16-bit word.
    Badc,
    /// 16-bit words reversed, bytes big-endian in each.
    Cdab,
    /// Little-endian.
    Dcba,
}

impl Order {
    fn byte_swap(self) -> bool {
        matches!(self, Order::Badc | Order::Dcba)
    }
    fn word_swap(self) -> bool {
        matches!(self, Order::Cdab | Order::Dcba)
    }

    /// The 32-bit name.
    pub fn name(self) -> &'static str {
        match self {
            Order::Abcd => "ABCD",
            Order::Badc => "BADC",
            Order::Cdab => "CDAB",
            Order::Dcba => "DCBA",
        }
    }

    /// Turns `raw` (as on the wire) into big-endian, in place. Its own inverse, so it also turns big-endian
    /// into wire order. Only for even lengths of 2 or more (odd tails are left alone).
    pub fn normalize(self, raw: &mut [u8]) {
        if raw.len() < 2 {
            return;
        }
        if self.word_swap() {
            let words = raw.len() / 2;
            for i in 0..words / 2 {
                let j = words - 1 - i;
                raw.swap(2 * i, 2 * j);
                raw.swap(2 * i + 1, 2 * j + 1);
            }
        }
        if self.byte_swap() {
            for w in raw.chunks_exact_mut(2) {
                w.swap(0, 1);
            }
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
    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase().replace(['-', ' '], "_");
        Ok(match upper.as_str() {
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
        })
    }
}

/// The type of a binary field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinType {
    /// Unsigned 8-bit.
    U8,
    /// Signed 8-bit.
    I8,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
    /// Unsigned 64-bit.
    U64,
    /// Signed 64-bit.
    I64,
    /// IEEE 754 single.
    F32,
    /// IEEE 754 double.
    F64,
    /// Raw bytes of a given length.
    Bytes,
    /// Text of a given length (trailing NULs and spaces trimmed; invalid UTF-8 replaced).
    String,
}

impl BinType {
    /// Every type with its name.
    pub const ALL: [(BinType, &'static str); 12] = [
        (BinType::U8, "u8"),
        (BinType::I8, "i8"),
        (BinType::U16, "u16"),
        (BinType::I16, "i16"),
        (BinType::U32, "u32"),
        (BinType::I32, "i32"),
        (BinType::U64, "u64"),
        (BinType::I64, "i64"),
        (BinType::F32, "f32"),
        (BinType::F64, "f64"),
        (BinType::Bytes, "bytes"),
        (BinType::String, "string"),
    ];

    /// The type's name.
    pub fn name(self) -> &'static str {
        BinType::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("?", |(_, n)| n)
    }

    /// Size in bytes of the fixed-size types; `None` for `bytes` and `string` (they take a `length`).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            BinType::U8 | BinType::I8 => 1,
            BinType::U16 | BinType::I16 => 2,
            BinType::U32 | BinType::I32 | BinType::F32 => 4,
            BinType::U64 | BinType::I64 | BinType::F64 => 8,
            BinType::Bytes | BinType::String => return None,
        })
    }
}

impl fmt::Display for BinType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BinType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase();
        let alias = match norm.as_str() {
            "uint8" | "byte" => "u8",
            "int8" => "i8",
            "uint16" => "u16",
            "int16" => "i16",
            "uint32" => "u32",
            "int32" => "i32",
            "uint64" => "u64",
            "int64" => "i64",
            "float" | "float32" => "f32",
            "double" | "float64" => "f64",
            other => other,
        };
        BinType::ALL
            .iter()
            .find(|(_, n)| *n == alias)
            .map(|(t, _)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = BinType::ALL.iter().map(|(_, n)| *n).collect();
                format!(
                    "unknown binary type `{s}`; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A field: type, offset, order, length (for bytes/string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Type.
    pub ty: BinType,
    /// Offset from the start of the frame; negative counts from its end.
    pub offset: i64,
    /// Order.
    pub order: Order,
    /// Length in bytes (the fixed size for numbers).
    pub length: usize,
}

/// Why a field cannot be read from a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field at offset {offset} ({length} bytes) is outside the {frame}-byte frame")]
pub struct OutOfFrame {
    offset: i64,
    length: usize,
    frame: usize,
}

impl Field {
    /// Reads the field from a frame.
    pub fn decode(&self, frame: &[u8]) -> Result<Value, OutOfFrame> {
        let err = OutOfFrame {
            offset: self.offset,
            length: self.length,
            frame: frame.len(),
        };
        let len = i64::try_from(frame.len()).map_err(|_| err.clone())?;
        let start = if self.offset < 0 {
            len + self.offset
        } else {
            self.offset
        };
        let start = usize::try_from(start).map_err(|_| err.clone())?;
        let end = start.checked_add(self.length).ok_or(err.clone())?;
        let raw = frame.get(start..end).ok_or(err)?;
        Ok(decode(self.ty, self.order, raw))
    }
}

/// Decodes `raw` (exactly the type's size, or any length for bytes/string).
pub fn decode(ty: BinType, order: Order, raw: &[u8]) -> Value {
    let mut b = raw.to_vec();
    if !matches!(ty, BinType::Bytes | BinType::String) {
        order.normalize(&mut b);
    }
    let mut a8 = [0u8; 8];
    let n = b.len().min(8);
    a8[8 - n..].copy_from_slice(&b[..n]);
    let be = u64::from_be_bytes(a8);
    match ty {
        BinType::U8 | BinType::U16 | BinType::U32 | BinType::U64 => Value::UInt(be),
        BinType::I8 => Value::Int(i64::from(be as u8 as i8)),
        BinType::I16 => Value::Int(i64::from(be as u16 as i16)),
        BinType::I32 => Value::Int(i64::from(be as u32 as i32)),
        BinType::I64 => Value::Int(be as i64),
        BinType::F32 => Value::Float(f64::from(f32::from_bits(be as u32))),
        BinType::F64 => Value::Float(f64::from_bits(be)),
        BinType::Bytes => Value::Bytes(b),
        BinType::String => Value::String(
            String::from_utf8_lossy(&b)
                .trim_end_matches(['\0', ' '])
                .to_owned(),
        ),
    }
}

/// Why a value cannot be encoded as a type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value} does not fit in {ty}")]
pub struct EncodeError {
    value: String,
    ty: BinType,
}

/// Encodes a value as a fixed-size type in wire order (for write templates).
pub fn encode(ty: BinType, order: Order, value: &Value) -> Result<Vec<u8>, EncodeError> {
    let err = || EncodeError {
        value: value.to_string(),
        ty,
    };
    let int = || -> Option<i128> {
        match value {
            Value::Int(i) => Some(i128::from(*i)),
            Value::UInt(u) => Some(i128::from(*u)),
            Value::Bool(b) => Some(i128::from(*b)),
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 1.9e19 => {
                Some(*f as i128)
            }
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let mut bytes = match ty {
        BinType::U8 => u8::try_from(int().ok_or_else(err)?)
            .map_err(|_| err())?
            .to_be_bytes()
            .to_vec(),
        BinType::I8 => i8::try_from(int().ok_or_else(err)?)
            .map_err(|_| err())?
            .to_be_bytes()
            .to_vec(),
        BinType::U16 => u16::try_from(int().ok_or_else(err)?)
            .map_err(|_| err())?
            .to_be_bytes()
            .to_vec(),
        BinType::I16 => i16::try_from(int().ok_or_else(err)?)
            .map_err(|_| err())?
            .to_be_bytes()
            .to_vec(),
        BinType::U32 => u32::try_from(int().ok_or_else(err)?)
            .map_err(|_| err())?
            .to_be_bytes()
            .to_vec(),
        BinType::I32 => i32::try_from(int().ok_or_else(err)?)
            .map_err(|_| err())?
            .to_be_bytes()
            .to_vec(),
        BinType::U64 => u64::try_from(int().ok_or_else(err)?)
            .map_err(|_| err())?
            .to_be_bytes()
            .to_vec(),
        BinType::I64 => i64::try_from(int().ok_or_else(err)?)
            .map_err(|_| err())?
            .to_be_bytes()
            .to_vec(),
        BinType::F32 | BinType::F64 => {
            let f = match value {
                Value::String(s) => s.trim().parse::<f64>().map_err(|_| err())?,
                v => v.as_f64().ok_or_else(err)?,
            };
            if ty == BinType::F32 {
                if f.is_finite() && (f as f32).is_infinite() {
                    return Err(err());
                }
                (f as f32).to_be_bytes().to_vec()
            } else {
                f.to_be_bytes().to_vec()
            }
        }
        BinType::Bytes => match value {
            Value::Bytes(b) => return Ok(b.clone()),
            _ => return Err(err()),
        },
        BinType::String => return Ok(value.to_string().into_bytes()),
    };
    order.normalize(&mut bytes);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(ty: BinType, offset: i64, order: Order) -> Field {
        Field {
            ty,
            offset,
            order,
            length: ty.size().unwrap_or(0),
        }
    }

    #[test]
    fn orders_like_modbus() {
        // 123.456f32 = 0x42F6E979.
        let want = Value::Float(f64::from(123.456f32));
        for (order, raw) in [
            (Order::Abcd, [0x42, 0xF6, 0xE9, 0x79]),
            (Order::Badc, [0xF6, 0x42, 0x79, 0xE9]),
            (Order::Cdab, [0xE9, 0x79, 0x42, 0xF6]),
            (Order::Dcba, [0x79, 0xE9, 0xF6, 0x42]),
        ] {
            assert_eq!(decode(BinType::F32, order, &raw), want, "{order}");
            assert_eq!(encode(BinType::F32, order, &want).unwrap(), raw, "{order}");
        }
        // 64-bit: 0x0102030405060708 in GHEFCDAB.
        let raw = [7, 8, 5, 6, 3, 4, 1, 2];
        assert_eq!(
            decode(BinType::U64, Order::Cdab, &raw),
            Value::UInt(0x0102030405060708)
        );
        assert_eq!(
            decode(BinType::I16, Order::Badc, &[0xD8, 0xFF]),
            Value::Int(-40)
        );
        assert_eq!("GHEFCDAB".parse::<Order>(), Ok(Order::Cdab));
        assert_eq!("little".parse::<Order>(), Ok(Order::Dcba));
    }

    #[test]
    fn every_type() {
        let frame = [0xFF, 0x80, 0x00, 0x01, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            field(BinType::U8, 0, Order::Abcd).decode(&frame),
            Ok(Value::UInt(255))
        );
        assert_eq!(
            field(BinType::I8, 0, Order::Abcd).decode(&frame),
            Ok(Value::Int(-1))
        );
        assert_eq!(
            field(BinType::U16, 0, Order::Abcd).decode(&frame),
            Ok(Value::UInt(0xFF80))
        );
        assert_eq!(
            field(BinType::I16, 1, Order::Abcd).decode(&frame),
            Ok(Value::Int(-32768))
        );
        assert_eq!(
            field(BinType::U32, 0, Order::Abcd).decode(&frame),
            Ok(Value::UInt(0xFF80_0001))
        );
        assert_eq!(
            field(BinType::I32, 0, Order::Abcd).decode(&frame),
            Ok(Value::Int(-8_388_607))
        );
        assert_eq!(
            field(BinType::F64, 4, Order::Abcd).decode(&frame),
            Ok(Value::Float(1.5))
        );
        assert_eq!(
            field(BinType::I64, 4, Order::Abcd).decode(&frame),
            Ok(Value::Int(0x3FF8_0000_0000_0000))
        );
        assert_eq!(
            field(BinType::U8, -1, Order::Abcd).decode(&frame),
            Ok(Value::UInt(0))
        );
        assert!(field(BinType::U64, 8, Order::Abcd).decode(&frame).is_err());
        assert!(field(BinType::U8, -13, Order::Abcd).decode(&frame).is_err());
        let s = Field {
            ty: BinType::String,
            offset: 0,
            order: Order::Abcd,
            length: 4,
        };
        assert_eq!(s.decode(b"AB\0\0xx"), Ok(Value::String("AB".into())));
    }

    #[test]
    fn encode_checks_range() {
        assert_eq!(
            encode(BinType::U16, Order::Abcd, &Value::Int(258)).unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            encode(BinType::U16, Order::Badc, &Value::Float(258.0)).unwrap(),
            vec![2, 1]
        );
        assert!(encode(BinType::U8, Order::Abcd, &Value::Int(256)).is_err());
        assert!(encode(BinType::U16, Order::Abcd, &Value::Int(-1)).is_err());
        assert!(encode(BinType::I16, Order::Abcd, &Value::Float(1.5)).is_err());
        assert_eq!(
            encode(BinType::I16, Order::Abcd, &Value::String("-2".into())).unwrap(),
            vec![0xFF, 0xFE]
        );
        // Beyond f32 (it used to become infinity); f32::MAX as printed still fits.
        assert!(encode(BinType::F32, Order::Abcd, &Value::Float(6.8e38)).is_err());
        assert_eq!(
            encode(
                BinType::F32,
                Order::Abcd,
                &Value::String("3.4028235e38".into())
            )
            .unwrap(),
            vec![0x7F, 0x7F, 0xFF, 0xFF]
        );
    }
}
