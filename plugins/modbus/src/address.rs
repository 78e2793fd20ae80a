//! The four Modbus tables and the two ways people write addresses.
//!
//! Device manuals use either 0-based protocol offsets (what goes on the wire, often in hex) or 1-based
//! "Modicon references" where the leading digit names the table: `40001` is holding register 0, `30001` input
//! register 0, `10001` discrete input 0, `00001` (or plain `1`) coil 0. Six-digit references (`400001`) reach
//! offsets above 9998. Mixing the two styles up is the classic off-by-one, so a device states which one its
//! map uses (`addressing: reference | offset`, default `reference`, which is what most datasheets print) and
//! we refuse anything that does not fit that style instead of guessing.
use std::fmt;
use std::str::FromStr;

/// A Modbus data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Read/write bits (FC1 read, FC5/FC15 write). Reference prefix 0.
    Coil,
    /// Read-only bits (FC2). Reference prefix 1.
    DiscreteInput,
    /// Read-only registers (FC4). Reference prefix 3.
    InputRegister,
    /// Read/write registers (FC3 read, FC6/FC16 write). Reference prefix 4.
    HoldingRegister,
}

impl Table {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::InputRegister => "input_register",
            Table::HoldingRegister => "holding_register",
        }
    }

    /// Whether the table holds bits (coils, discrete inputs) rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// Whether the protocol lets a master write the table.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::HoldingRegister)
    }

    /// The largest quantity one read request may ask for (Modbus spec: 2000 bits, 125 registers).
    pub fn protocol_max(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }

    /// The reference prefix digit.
    pub fn prefix(self) -> u32 {
        match self {
            Table::Coil => 0,
            Table::DiscreteInput => 1,
            Table::InputRegister => 3,
            Table::HoldingRegister => 4,
        }
    }

    /// The 1-based 5-digit reference of an offset, when it has one (e.g. for messages).
    pub fn reference(self, offset: u16) -> String {
        if offset <= 9998 {
            format!("{}{:04}", self.prefix(), u32::from(offset) + 1)
        } else {
            format!("{}{:05}", self.prefix(), u32::from(offset) + 1)
        }
    }
}

impl fmt::Display for Table {
    /// The name in prose ("holding register"), for messages; [`Table::name`] is the configuration keyword.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete input",
            Table::InputRegister => "input register",
            Table::HoldingRegister => "holding register",
        })
    }
}

impl FromStr for Table {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = match s.trim().to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
            "coil" | "coils" => Table::Coil,
            "discrete_input" | "discrete_inputs" | "discrete" | "input_status" => Table::DiscreteInput,
            "input_register" | "input_registers" | "input" => Table::InputRegister,
            "holding_register" | "holding_registers" | "holding" => Table::HoldingRegister,
            _ => {
                return Err(format!(
                    "unknown table `{s}`; expected coil, discrete_input, input_register or holding_register"
                ))
            }
        };
        Ok(t)
    }
}

/// How a device's map writes addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Addressing {
    /// 1-based references, table from the leading digit (`40001`).
    #[default]
    Reference,
    /// 0-based protocol offsets (decimal or `0x…` hex), with an explicit `table:`.
    Offset,
}

impl FromStr for Addressing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reference" | "references" | "modicon" => Ok(Addressing::Reference),
            "offset" | "offsets" | "zero_based" | "protocol" => Ok(Addressing::Offset),
            _ => Err(format!(
                "unknown addressing `{s}`; expected `reference` (1-based, 40001 = holding register 0) or \
                 `offset` (0-based, with `table:`)"
            )),
        }
    }
}

/// An address as written in the map: an integer, or a string (keeps leading zeros, allows hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawAddress {
    /// `address: 40001`
    Int(i64),
    /// `address: "000123"` or `address: "0x1F"`
    Text(String),
}

impl fmt::Display for RawAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawAddress::Int(i) => write!(f, "{i}"),
            RawAddress::Text(s) => f.write_str(s),
        }
    }
}

/// Splits a reference into its table and 0-based offset.
///
/// Five digits or fewer (`40001`, `1`, `"00001"`) use the 5-digit convention: prefix digit + 1..9999.
/// Six digits (`400001`, `"000001"`) use the 6-digit one: prefix digit + 1..65536. A coil reference above 9999
/// needs its leading zero and therefore a quoted string (`"010001"`); an integer cannot carry it.
pub fn parse_reference(raw: &RawAddress) -> Result<(Table, u16), String> {
    let digits: String = match raw {
        RawAddress::Int(i) if *i < 0 => return Err(format!("address {i} is negative")),
        RawAddress::Int(i) => i.to_string(),
        RawAddress::Text(s) => {
            let t = s.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "`{s}` is not a reference; with `addressing: reference` an address is digits like 40001 \
                     (use `addressing: offset` for 0-based or hex addresses)"
                ));
            }
            t.to_owned()
        }
    };
    let (width, padded) = if digits.len() <= 5 {
        (5, format!("{digits:0>5}"))
    } else if digits.len() == 6 {
        (6, digits.clone())
    } else {
        return Err(format!(
            "reference {raw} has {} digits; references have 5 (40001) or 6 (400001)",
            digits.len()
        ));
    };
    let prefix = padded.as_bytes()[0] - b'0';
    let table = match prefix {
        0 => Table::Coil,
        1 => Table::DiscreteInput,
        3 => Table::InputRegister,
        4 => Table::HoldingRegister,
        _ => {
            return Err(format!(
                "reference {raw} starts with {prefix}; the leading digit must be 0 (coil), 1 (discrete input), \
                 3 (input register) or 4 (holding register)"
            ))
        }
    };
    let number: u32 = padded[1..]
        .parse()
        .map_err(|_| format!("bad reference {raw}"))?;
    let max = if width == 5 { 9999 } else { 65536 };
    if number == 0 || number > max {
        return Err(format!(
            "reference {raw} is out of range: references are 1-based, {}{} is the first {} (did you mean \
             `addressing: offset`?)",
            prefix,
            if width == 5 { "0001" } else { "00001" },
            table
        ));
    }
    Ok((table, (number - 1) as u16))
}

/// Parses a 0-based offset: decimal, or hex with `0x`.
pub fn parse_offset(raw: &RawAddress) -> Result<u16, String> {
    let v: i64 = match raw {
        RawAddress::Int(i) => *i,
        RawAddress::Text(s) => {
            let t = s.trim();
            let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                i64::from_str_radix(hex, 16)
            } else {
                t.parse::<i64>()
            };
            parsed.map_err(|_| format!("`{s}` is not an address (decimal, or hex like 0x1F)"))?
        }
    };
    u16::try_from(v).map_err(|_| format!("address {raw} is out of range 0..=65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(i: i64) -> Result<(Table, u16), String> {
        parse_reference(&RawAddress::Int(i))
    }
    fn rs(s: &str) -> Result<(Table, u16), String> {
        parse_reference(&RawAddress::Text(s.into()))
    }

    #[test]
    fn five_digit_references() {
        assert_eq!(r(40001).unwrap(), (Table::HoldingRegister, 0));
        assert_eq!(r(49999).unwrap(), (Table::HoldingRegister, 9998));
        assert_eq!(r(30001).unwrap(), (Table::InputRegister, 0));
        assert_eq!(r(30343).unwrap(), (Table::InputRegister, 342));
        assert_eq!(r(10001).unwrap(), (Table::DiscreteInput, 0));
        assert_eq!(r(1).unwrap(), (Table::Coil, 0));
        assert_eq!(r(9999).unwrap(), (Table::Coil, 9998));
        assert_eq!(rs("00017").unwrap(), (Table::Coil, 16));
    }

    #[test]
    fn six_digit_references() {
        assert_eq!(r(400001).unwrap(), (Table::HoldingRegister, 0));
        assert_eq!(r(465536).unwrap(), (Table::HoldingRegister, 65535));
        assert_eq!(r(310001).unwrap(), (Table::InputRegister, 10000));
        assert_eq!(rs("012345").unwrap(), (Table::Coil, 12344));
    }

    #[test]
    fn bad_references() {
        assert!(r(40000).unwrap_err().contains("1-based"));
        assert!(r(0).is_err());
        assert!(r(20001).unwrap_err().contains("leading digit"));
        assert!(r(465537).is_err());
        assert!(r(4000001).unwrap_err().contains("digits"));
        assert!(r(-5).is_err());
        assert!(rs("0x10").unwrap_err().contains("addressing: offset"));
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset(&RawAddress::Int(0)).unwrap(), 0);
        assert_eq!(parse_offset(&RawAddress::Int(65535)).unwrap(), 65535);
        assert_eq!(parse_offset(&RawAddress::Text("0x1F".into())).unwrap(), 31);
        assert_eq!(parse_offset(&RawAddress::Text("100".into())).unwrap(), 100);
        assert!(parse_offset(&RawAddress::Int(65536)).is_err());
        assert!(parse_offset(&RawAddress::Int(-1)).is_err());
        assert!(parse_offset(&RawAddress::Text("0xZZ".into())).is_err());
    }

    #[test]
    fn table_names_and_references() {
        assert_eq!("holding".parse::<Table>().unwrap(), Table::HoldingRegister);
        assert_eq!(
            "Discrete-Inputs".parse::<Table>().unwrap(),
            Table::DiscreteInput
        );
        assert!("registers".parse::<Table>().is_err());
        assert_eq!(Table::HoldingRegister.reference(0), "40001");
        assert_eq!(Table::Coil.reference(16), "00017");
        assert_eq!(Table::InputRegister.reference(20000), "320001");
    }
}
