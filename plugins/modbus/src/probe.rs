//! One-shot reads and writes for commissioning (`fieldbridge modbus read|write`).
//!
//! An integrator probes a device before writing its map, like mbpoll, but with the daemon's own decoder and
//! addressing rules: what the probe prints is what the daemon will publish for the same settings.
use std::time::Duration;

use fieldbridge_sdk::{CommandError, Value};

use crate::address::{parse_offset, parse_reference, RawAddress, Table};
use crate::codec::{DataType, Format};
use crate::ops::{self, Target, WriteOptions};
use crate::transport::{exception_name, Endpoint, Line, Parity, SerialSettings, TransportError};

/// What to probe: endpoint, unit and patience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Unit (slave) id.
    pub unit: u8,
    /// Connect and request timeout.
    pub timeout: Duration,
}

/// The connection flags of the CLI, as plain values (map them 1:1 onto clap arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionArgs {
    /// `--tcp host[:port]`
    pub tcp: Option<String>,
    /// `--rtu-over-tcp host[:port]`
    pub rtu_over_tcp: Option<String>,
    /// `--serial /dev/ttyUSB0`
    pub serial: Option<String>,
    /// `--baud` (serial; default 9600)
    pub baud: u32,
    /// `--data-bits` (serial; default 8)
    pub data_bits: u8,
    /// `--parity none|even|odd` (serial; default none)
    pub parity: String,
    /// `--stop-bits 1|2` (serial; default 1)
    pub stop_bits: u8,
}

impl Default for ConnectionArgs {
    fn default() -> Self {
        ConnectionArgs {
            tcp: None,
            rtu_over_tcp: None,
            serial: None,
            baud: 9600,
            data_bits: 8,
            parity: "none".into(),
            stop_bits: 1,
        }
    }
}

impl ConnectionArgs {
    /// The endpoint, with the same rules as a device map's `connection:` (exactly one transport, port 502
    /// when none is given, serial settings checked).
    pub fn endpoint(&self) -> Result<Endpoint, ProbeError> {
        let given = [
            self.tcp.is_some(),
            self.rtu_over_tcp.is_some(),
            self.serial.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ProbeError::Invalid(
                "give exactly one of --tcp host:port, --rtu-over-tcp host:port or --serial /dev/ttyUSB0".into(),
            ));
        }
        if let Some(a) = &self.tcp {
            return crate::config::host_port(a)
                .map(Endpoint::Tcp)
                .map_err(ProbeError::Invalid);
        }
        if let Some(a) = &self.rtu_over_tcp {
            return crate::config::host_port(a)
                .map(Endpoint::RtuOverTcp)
                .map_err(ProbeError::Invalid);
        }
        let path = self.serial.clone().unwrap_or_default();
        if !(5..=8).contains(&self.data_bits)
            || !(1..=2).contains(&self.stop_bits)
            || self.baud == 0
        {
            return Err(ProbeError::Invalid(
                "serial settings: baud > 0, data bits 5 to 8, stop bits 1 or 2".into(),
            ));
        }
        Ok(Endpoint::Serial(SerialSettings {
            path,
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity.parse::<Parity>().map_err(ProbeError::Invalid)?,
            stop_bits: self.stop_bits,
            frame_gap: SerialSettings::default_frame_gap(self.baud),
        }))
    }
}

/// One decoded value of a probe read.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeValue {
    /// Its table.
    pub table: Table,
    /// 0-based offset of its first register / bit.
    pub offset: u16,
    /// The raw registers (bits as 0/1), as they came off the wire.
    pub raw: Vec<u16>,
    /// The decoded value.
    pub value: Value,
}

impl ProbeValue {
    /// The 1-based reference (`40001`) of the value, for display next to the offset.
    pub fn reference(&self) -> String {
        self.table.reference(self.offset)
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Bad arguments (type on the wrong table, range past 65535, …).
    #[error("{0}")]
    Invalid(String),
    /// The device could not be reached or did not answer.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The device answered with a Modbus exception, e.g. `IllegalDataAddress`.
    #[error("device exception: {0}")]
    Exception(String),
    /// A write failed (includes read-back mismatches).
    #[error(transparent)]
    Write(#[from] CommandError),
}

/// Parses a CLI address: with a table it is a 0-based offset (decimal or `0x` hex); without one it is a
/// 1-based reference (`40001`, `300001`) and the table comes from its leading digit.
pub fn parse_address(address: &str, table: Option<Table>) -> Result<(Table, u16), ProbeError> {
    let raw = RawAddress::Text(address.to_owned());
    match table {
        Some(t) => parse_offset(&raw)
            .map(|o| (t, o))
            .map_err(ProbeError::Invalid),
        None => parse_reference(&raw).map_err(|e| {
            ProbeError::Invalid(format!("{e} (or give --table to use a 0-based offset)"))
        }),
    }
}

fn check(table: Table, format: &Format) -> Result<(), ProbeError> {
    match (table.is_bits(), format.data_type) {
        (true, DataType::Bool) | (false, DataType::Bit) => Ok(()),
        (true, t) => Err(ProbeError::Invalid(format!(
            "a {table} holds one bit: use type bool, not {t}"
        ))),
        (false, DataType::Bool) => Err(ProbeError::Invalid(format!(
            "bool is for coils and discrete inputs; for a bit of a {table} use type bit"
        ))),
        (false, DataType::String | DataType::Bytes) if format.length == 0 => Err(
            ProbeError::Invalid(format!("{} needs a length in registers", format.data_type)),
        ),
        _ => Ok(()),
    }
}

/// Reads `count` consecutive values of `format` starting at `offset` (as many requests as needed, each at
/// most the protocol maximum and made of whole values).
pub async fn probe_read(
    target: &ProbeTarget,
    table: Table,
    offset: u16,
    format: Format,
    count: u16,
) -> Result<Vec<ProbeValue>, ProbeError> {
    check(table, &format)?;
    let width = format.width().max(1);
    let count = count.max(1);
    if u32::from(offset) + u32::from(width) * u32::from(count) > 65536 {
        return Err(ProbeError::Invalid(format!(
            "{count} x {} from offset {offset} runs past address 65535",
            format.data_type
        )));
    }
    let per_request = (table.protocol_max() / width).max(1);
    if width > table.protocol_max() {
        return Err(ProbeError::Invalid(format!(
            "one {} of {width} registers exceeds the {} registers a request may read",
            format.data_type,
            table.protocol_max()
        )));
    }
    let line = Line::new(target.endpoint.clone());
    let t = Target {
        line: &line,
        unit: target.unit,
        timeout: target.timeout,
        delay: Duration::ZERO,
    };
    let mut out = Vec::with_capacity(usize::from(count));
    let mut done = 0u16;
    while done < count {
        let n = per_request.min(count - done);
        let start = offset + done * width;
        let data = ops::read(t, table, start, n * width)
            .await?
            .map_err(|e| ProbeError::Exception(exception_name(e)))?;
        for i in 0..n {
            let at = usize::from(i * width);
            let value = data.decode(at, &format).map_err(ProbeError::Exception)?;
            out.push(ProbeValue {
                table,
                offset: start + i * width,
                raw: data.raw(at, usize::from(width)),
                value,
            });
        }
        done += n;
    }
    Ok(out)
}

/// Writes one value with the daemon's encoder (FC5/FC15 for coils, FC6 for one register, FC16 for more or
/// with `opts.write_multiple`), optionally reading it back (`opts.verify`).
pub async fn probe_write(
    target: &ProbeTarget,
    table: Table,
    offset: u16,
    format: Format,
    value: &Value,
    opts: WriteOptions,
) -> Result<(), ProbeError> {
    check(table, &format)?;
    if !table.is_writable() {
        return Err(ProbeError::Invalid(format!(
            "{table}s are read-only; only coils and holding registers can be written"
        )));
    }
    let line = Line::new(target.endpoint.clone());
    let t = Target {
        line: &line,
        unit: target.unit,
        timeout: target.timeout,
        delay: Duration::ZERO,
    };
    ops::write(t, table, offset, &format, value, opts).await?;
    Ok(())
}

/// Turns a CLI argument into a [`Value`] suitable for `format`: `true`/`false`/`1`/`0` for bits, numbers for
/// numeric types, the text itself for strings, hex (`DEADBEEF`, optional `0x`) for bytes.
pub fn parse_value(text: &str, format: &Format) -> Result<Value, ProbeError> {
    let t = text.trim();
    let bad = |what: &str| ProbeError::Invalid(format!("`{text}` is not {what}"));
    Ok(match format.data_type {
        DataType::Bool | DataType::Bit => match t.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" => Value::Bool(true),
            "0" | "false" | "off" => Value::Bool(false),
            _ => return Err(bad("a boolean (true/false, 1/0, on/off)")),
        },
        DataType::U16 | DataType::U32 | DataType::U64 => Value::UInt(
            parse_int(t)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| bad("an unsigned integer"))?,
        ),
        DataType::I16 | DataType::I32 | DataType::I64 => Value::Int(
            parse_int(t)
                .and_then(|v| i64::try_from(v).ok())
                .ok_or_else(|| bad("an integer"))?,
        ),
        DataType::F32 | DataType::F64 => Value::Float(t.parse().map_err(|_| bad("a number"))?),
        DataType::String => Value::String(text.to_owned()),
        DataType::Bytes => {
            let hex = t.strip_prefix("0x").unwrap_or(t);
            if !hex.len().is_multiple_of(2) {
                return Err(bad("hex bytes (an even number of hex digits)"));
            }
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect();
            Value::Bytes(bytes.ok_or_else(|| bad("hex bytes"))?)
        }
    })
}

fn parse_int(t: &str) -> Option<i128> {
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i128::from_str_radix(h, 16).ok()
    } else {
        t.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Order;

    #[test]
    fn cli_addresses() {
        assert_eq!(
            parse_address("40001", None).unwrap(),
            (Table::HoldingRegister, 0)
        );
        assert_eq!(
            parse_address("300011", None).unwrap(),
            (Table::InputRegister, 10)
        );
        assert_eq!(
            parse_address("0x10", Some(Table::Coil)).unwrap(),
            (Table::Coil, 16)
        );
        assert_eq!(
            parse_address("7", Some(Table::InputRegister)).unwrap(),
            (Table::InputRegister, 7)
        );
        assert!(parse_address("0x10", None)
            .unwrap_err()
            .to_string()
            .contains("--table"));
    }

    #[test]
    fn cli_values() {
        let f = |t| Format::new(t).with_order(Order::Cdab);
        assert_eq!(
            parse_value("on", &f(DataType::Bool)).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            parse_value("0x10", &f(DataType::U16)).unwrap(),
            Value::UInt(16)
        );
        assert_eq!(
            parse_value("-5", &f(DataType::I32)).unwrap(),
            Value::Int(-5)
        );
        assert!(parse_value("-5", &f(DataType::U32)).is_err());
        assert_eq!(
            parse_value("1.5", &f(DataType::F64)).unwrap(),
            Value::Float(1.5)
        );
        assert_eq!(
            parse_value("dead", &f(DataType::Bytes)).unwrap(),
            Value::Bytes(vec![0xde, 0xad])
        );
        assert!(parse_value("abc", &f(DataType::Bytes)).is_err());
        assert_eq!(
            parse_value(" hi ", &f(DataType::String)).unwrap(),
            Value::String(" hi ".into())
        );
    }

    #[test]
    fn connection_args() {
        let tcp = ConnectionArgs {
            tcp: Some("10.0.0.5".into()),
            ..ConnectionArgs::default()
        };
        assert_eq!(
            tcp.endpoint().unwrap(),
            Endpoint::Tcp("10.0.0.5:502".into())
        );
        let none = ConnectionArgs::default();
        assert!(none.endpoint().is_err());
        let serial = ConnectionArgs {
            serial: Some("/dev/ttyUSB0".into()),
            parity: "even".into(),
            baud: 19200,
            ..ConnectionArgs::default()
        };
        let Endpoint::Serial(s) = serial.endpoint().unwrap() else {
            panic!()
        };
        assert_eq!((s.baud, s.parity), (19200, Parity::Even));
        let both = ConnectionArgs {
            serial: Some("/dev/ttyUSB0".into()),
            tcp: Some("x:1".into()),
            ..ConnectionArgs::default()
        };
        assert!(both.endpoint().is_err());
    }

    #[test]
    fn probe_argument_checks() {
        assert!(check(Table::Coil, &Format::new(DataType::F32)).is_err());
        assert!(check(Table::HoldingRegister, &Format::new(DataType::Bool)).is_err());
        assert!(check(Table::HoldingRegister, &Format::new(DataType::String)).is_err());
        assert!(check(Table::InputRegister, &Format::new(DataType::F64)).is_ok());
    }
}
