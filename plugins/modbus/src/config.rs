//! The Modbus part of a device map: raw serde structs, then checks that need several keys at once.
//!
//! Device-level Modbus settings live under the device's `connection:` mapping (the core hands adapters
//! only `connection` and each point's non-core keys):
//!
//! ```yaml
//! connection:
//!   tcp: 192.168.1.50:502        # or rtu_over_tcp: host:port, or serial: /dev/ttyUSB0 (+ baud, parity, …)
//!   unit: 1                      # Modbus unit (slave) id
//!   addressing: reference        # `reference` (40001 style, default) or `offset` (0-based + table)
//!   order: CDAB                  # default word/byte order of 32/64-bit points (default ABCD)
//!   max_gap: 4                   # registers that may be read and discarded to merge two points (default 0)
//!   max_registers: 125           # longest register read (default and maximum 125)
//!   max_coils: 2000              # longest coil/discrete read (default and maximum 2000)
//!   inter_request_delay: 20ms    # quiet time after each request, for slow devices (default 0)
//! ```
//!
//! Every problem is reported, each at the key or value that causes it.
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::config::Spanned;
use fieldbridge_sdk::{ConfigError, ConfigNode, DeviceConfig, PointConfig};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::address::{parse_offset, parse_reference, Addressing, RawAddress, Table};
use crate::codec::{DataType, Format, Order};
use crate::ops::WriteOptions;
use crate::plan::{plan, Limits, PlanGroup, PlanPoint};
use crate::transport::{Endpoint, Parity, SerialSettings};

/// Default Modbus TCP port, added when a `tcp:` address has none.
pub const DEFAULT_TCP_PORT: u16 = 502;

/// A validated Modbus device, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    /// Device name.
    pub name: Arc<str>,
    /// Where its line goes.
    pub endpoint: Endpoint,
    /// Unit (slave) id.
    pub unit: u8,
    /// Request coalescing limits.
    pub limits: Limits,
    /// Quiet time after each request.
    pub inter_request_delay: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of a failed poll before the device is marked offline.
    pub retries: u32,
    /// The points, in device-map order (indexes match [`DeviceConfig::points`]).
    pub points: Vec<ModbusPoint>,
}

/// A validated point.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusPoint {
    /// Point name.
    pub name: Arc<str>,
    /// Its table.
    pub table: Table,
    /// 0-based offset of its first register or bit.
    pub offset: u16,
    /// How to decode and encode it.
    pub format: Format,
    /// Whether writes are allowed.
    pub writable: bool,
    /// Its poll interval.
    pub interval: Duration,
    /// How writes are done.
    pub write: WriteOptions,
}

impl ModbusDevice {
    /// The coalesced poll plan.
    pub fn plan(&self) -> Vec<PlanGroup> {
        let pts: Vec<PlanPoint> = self
            .points
            .iter()
            .enumerate()
            .map(|(index, p)| PlanPoint {
                index,
                unit: self.unit,
                table: p.table,
                interval: p.interval,
                offset: p.offset,
                width: p.format.width(),
            })
            .collect();
        plan(&pts, &self.limits)
    }
}

/// `connection:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    tcp: Option<Spanned<String>>,
    rtu_over_tcp: Option<Spanned<String>>,
    serial: Option<Spanned<String>>,
    baud: Option<Spanned<u32>>,
    data_bits: Option<Spanned<u8>>,
    parity: Option<Spanned<Parity>>,
    stop_bits: Option<Spanned<u8>>,
    frame_gap: Option<Spanned<Dur>>,
    #[serde(alias = "unit_id", alias = "slave")]
    unit: Option<Spanned<u8>>,
    addressing: Option<Addressing>,
    order: Option<Spanned<Order>>,
    max_gap: Option<u16>,
    max_registers: Option<Spanned<u16>>,
    max_coils: Option<Spanned<u16>>,
    inter_request_delay: Option<Dur>,
}

/// A point's Modbus keys as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    address: Spanned<RawAddress>,
    table: Option<Spanned<Table>>,
    #[serde(rename = "type")]
    data_type: Option<Spanned<DataType>>,
    order: Option<Spanned<Order>>,
    bit: Option<Spanned<u8>>,
    length: Option<Spanned<u16>>,
    verify: Option<Spanned<bool>>,
    write_multiple: Option<Spanned<bool>>,
}

/// Device-level settings every point needs.
struct DeviceDefaults {
    addressing: Addressing,
    order: Order,
    limits: Limits,
}

/// Validates a device's Modbus configuration. No I/O: `fieldbridge check` runs exactly this.
pub fn validate(device: &DeviceConfig) -> Result<ModbusDevice, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let conn = validate_connection(&device.connection, &mut errors);
    let defaults = conn.as_ref().map(|c| &c.1);
    let mut points = Vec::with_capacity(device.points.len());
    for p in device.points.iter() {
        // Points are checked even when the connection is broken, so one run shows every problem; they are
        // then checked against the default limits and addressing.
        let fallback = DeviceDefaults {
            addressing: Addressing::Reference,
            order: Order::Abcd,
            limits: Limits::default(),
        };
        let d = defaults.unwrap_or(&fallback);
        if let Some(point) = validate_point(device, p, d, &mut errors) {
            points.push(point);
        }
    }
    if !errors.is_empty() {
        errors.sort();
        errors.dedup();
        return Err(errors);
    }
    let Some((conn, defaults)) = conn else {
        // Unreachable in practice (a failed connection always pushes an error), kept total for safety.
        return Err(vec![device.connection.error("invalid connection")]);
    };
    Ok(ModbusDevice {
        name: device.name.clone(),
        endpoint: conn.endpoint,
        unit: conn.unit,
        limits: defaults.limits,
        inter_request_delay: conn.inter_request_delay,
        timeout: device.timeout,
        retries: device.retries,
        points,
    })
}

struct Connection {
    endpoint: Endpoint,
    unit: u8,
    inter_request_delay: Duration,
}

fn validate_connection(
    node: &ConfigNode,
    errors: &mut Vec<ConfigError>,
) -> Option<(Connection, DeviceDefaults)> {
    if node.is_null() {
        errors.push(node.error(
            "a modbus device needs a `connection:` with one of `tcp: host:port`, `rtu_over_tcp: host:port` or \
             `serial: /dev/ttyUSB0`",
        ));
        return None;
    }
    let raw: RawConnection = match node.deserialize_all() {
        Ok(r) => r,
        Err(mut e) => {
            errors.append(&mut e);
            return None;
        }
    };
    let before = errors.len();
    let transports: Vec<(&str, &Spanned<String>)> = [
        ("tcp", raw.tcp.as_ref()),
        ("rtu_over_tcp", raw.rtu_over_tcp.as_ref()),
        ("serial", raw.serial.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let endpoint = match transports.as_slice() {
        [] => {
            errors.push(node.error(
                "missing transport: give one of `tcp: host:port`, `rtu_over_tcp: host:port` or `serial: \
                 /dev/ttyUSB0`",
            ));
            None
        }
        [(kind, addr)] => match *kind {
            "serial" => {
                if addr.trim().is_empty() {
                    errors.push(addr.error("the serial device path is empty"));
                }
                let baud = raw.baud.as_ref().map_or(9600, |b| b.value);
                if baud == 0 {
                    if let Some(b) = &raw.baud {
                        errors.push(b.error("baud must be above 0"));
                    }
                }
                let data_bits = raw.data_bits.as_ref().map_or(8, |b| b.value);
                if !(5..=8).contains(&data_bits) {
                    if let Some(b) = &raw.data_bits {
                        errors.push(
                            b.error(format!("data_bits must be 5, 6, 7 or 8, not {data_bits}")),
                        );
                    }
                }
                let stop_bits = raw.stop_bits.as_ref().map_or(1, |b| b.value);
                if !(1..=2).contains(&stop_bits) {
                    if let Some(b) = &raw.stop_bits {
                        errors.push(b.error(format!("stop_bits must be 1 or 2, not {stop_bits}")));
                    }
                }
                let frame_gap = raw
                    .frame_gap
                    .as_ref()
                    .map_or_else(|| SerialSettings::default_frame_gap(baud), |g| g.value.0);
                Some(Endpoint::Serial(SerialSettings {
                    path: addr.value.trim().to_owned(),
                    baud,
                    data_bits,
                    parity: raw.parity.as_ref().map_or(Parity::None, |p| p.value),
                    stop_bits,
                    frame_gap,
                }))
            }
            kind => match host_port(&addr.value) {
                Ok(hp) if kind == "tcp" => Some(Endpoint::Tcp(hp)),
                Ok(hp) => Some(Endpoint::RtuOverTcp(hp)),
                Err(msg) => {
                    errors.push(addr.error(msg));
                    None
                }
            },
        },
        [_, (second, addr), ..] => {
            errors.push(addr.error(format!(
                "`{second}` conflicts with `{}`: a device has exactly one transport",
                transports[0].0
            )));
            None
        }
    };
    let is_serial = matches!(endpoint, Some(Endpoint::Serial(_)));
    if !is_serial && endpoint.is_some() {
        let serial_only = [
            ("baud", raw.baud.as_ref().map(|s| s.error(""))),
            ("data_bits", raw.data_bits.as_ref().map(|s| s.error(""))),
            ("parity", raw.parity.as_ref().map(|s| s.error(""))),
            ("stop_bits", raw.stop_bits.as_ref().map(|s| s.error(""))),
            ("frame_gap", raw.frame_gap.as_ref().map(|s| s.error(""))),
        ];
        for (key, at) in serial_only {
            if let Some(mut e) = at {
                e.message = format!("`{key}` only applies to `serial:` connections");
                errors.push(e);
            }
        }
    }
    let unit = raw.unit.as_ref().map_or(1, |u| u.value);
    if let Some(u) = &raw.unit {
        // On a serial bus 0 is broadcast (nobody answers) and 248–255 are reserved; over TCP, 0 and 255 are
        // what many devices expect, so anything goes.
        let serial_bus = matches!(
            endpoint,
            Some(Endpoint::Serial(_)) | Some(Endpoint::RtuOverTcp(_))
        );
        if serial_bus && !(1..=247).contains(&u.value) {
            errors.push(u.error(format!(
                "unit {} cannot be polled on an RTU line: unit ids are 1 to 247 (0 is broadcast)",
                u.value
            )));
        }
    }
    let mut limits = Limits {
        max_gap: raw.max_gap.unwrap_or(0),
        ..Limits::default()
    };
    if let Some(m) = &raw.max_registers {
        if !(1..=125).contains(&m.value) {
            errors.push(m.error(format!(
                "max_registers must be 1 to 125 (the Modbus limit for one read), not {}",
                m.value
            )));
        }
        limits.max_registers = m.value.clamp(1, 125);
    }
    if let Some(m) = &raw.max_coils {
        if !(1..=2000).contains(&m.value) {
            errors.push(m.error(format!(
                "max_coils must be 1 to 2000 (the Modbus limit for one read), not {}",
                m.value
            )));
        }
        limits.max_coils = m.value.clamp(1, 2000);
    }
    let defaults = DeviceDefaults {
        addressing: raw.addressing.unwrap_or_default(),
        order: raw.order.as_ref().map_or(Order::Abcd, |o| o.value),
        limits,
    };
    let endpoint = endpoint?;
    if errors.len() > before {
        return None;
    }
    Some((
        Connection {
            endpoint,
            unit,
            inter_request_delay: raw.inter_request_delay.map_or(Duration::ZERO, |d| d.0),
        },
        defaults,
    ))
}

/// `host:port`, `host` (port 502 added), `[v6]:port`.
pub(crate) fn host_port(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the address is empty; expected host:port".into());
    }
    if s.contains("://") {
        return Err(format!("`{s}`: write host:port without a scheme"));
    }
    let has_port = if let Some(rest) = s.strip_prefix('[') {
        rest.contains("]:")
    } else {
        s.matches(':').count() == 1
    };
    if !has_port {
        return Ok(if s.matches(':').count() > 1 && !s.starts_with('[') {
            format!("[{s}]:{DEFAULT_TCP_PORT}")
        } else {
            format!("{s}:{DEFAULT_TCP_PORT}")
        });
    }
    let (host, port) = s.rsplit_once(':').unwrap_or((s, ""));
    if host.is_empty() || host == "[]" {
        return Err(format!("`{s}`: the host is empty"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{s}`: `{port}` is not a port (1 to 65535)")),
        Ok(_) => Ok(s.to_owned()),
    }
}

fn validate_point(
    device: &DeviceConfig,
    p: &PointConfig,
    d: &DeviceDefaults,
    errors: &mut Vec<ConfigError>,
) -> Option<ModbusPoint> {
    let raw: RawPoint = match p.spec.deserialize_all() {
        Ok(r) => r,
        Err(mut e) => {
            errors.append(&mut e);
            return None;
        }
    };
    let before = errors.len();
    let (table, offset) = match d.addressing {
        Addressing::Reference => match parse_reference(&raw.address.value) {
            Ok((t, o)) => {
                if let Some(given) = &raw.table {
                    if given.value != t {
                        errors.push(given.error(format!(
                            "table `{}` contradicts address {} (a {t} reference); with `addressing: reference` \
                             the table comes from the address, so `table:` can be left out",
                            given.value.name(), raw.address.value
                        )));
                    }
                }
                (t, o)
            }
            Err(msg) => {
                errors.push(raw.address.error(msg));
                return None;
            }
        },
        Addressing::Offset => {
            let offset = match parse_offset(&raw.address.value) {
                Ok(o) => o,
                Err(msg) => {
                    errors.push(raw.address.error(msg));
                    return None;
                }
            };
            let Some(t) = &raw.table else {
                errors.push(p.spec.error(
                    "missing `table:` (coil, discrete_input, input_register or holding_register): with \
                     `addressing: offset` the address does not say which table it is in",
                ));
                return None;
            };
            (t.value, offset)
        }
    };

    let data_type = raw.data_type.as_ref().map_or(
        if table.is_bits() {
            DataType::Bool
        } else {
            DataType::U16
        },
        |t| t.value,
    );
    let type_at = |msg: String| match &raw.data_type {
        Some(t) => t.error(msg),
        None => p.spec.error(msg),
    };
    if table.is_bits() && data_type != DataType::Bool {
        errors.push(type_at(format!(
            "a {table} holds a single bit: its type is `bool`, not `{data_type}`"
        )));
    }
    if !table.is_bits() && data_type == DataType::Bool {
        errors.push(type_at(format!(
            "`bool` is for coils and discrete inputs; for one bit of a {table} use `type: bit` with `bit: 0..15`"
        )));
    }

    let mut format = Format::new(data_type);
    match (&raw.bit, data_type) {
        (Some(b), DataType::Bit) if b.value > 15 => errors.push(b.error(format!(
            "bit must be 0 to 15 (0 = least significant), not {}",
            b.value
        ))),
        (Some(b), DataType::Bit) => format.bit = b.value,
        (None, DataType::Bit) => errors.push(type_at("`type: bit` needs `bit: 0..15`".into())),
        (Some(b), t) => {
            errors.push(b.error(format!("`bit` only applies to `type: bit`, not `{t}`")))
        }
        (None, _) => {}
    }
    let max_len = d.limits.max_for(table);
    match (&raw.length, data_type) {
        (Some(l), DataType::String | DataType::Bytes) if l.value == 0 || l.value > max_len => {
            errors.push(l.error(format!(
                "length is in registers (2 bytes each) and must be 1 to {max_len}, not {}",
                l.value
            )))
        }
        (Some(l), DataType::String | DataType::Bytes) => format.length = l.value,
        (None, DataType::String | DataType::Bytes) => errors.push(type_at(format!(
            "`type: {data_type}` needs `length:` (in registers, 2 bytes each)"
        ))),
        (Some(l), t) => errors.push(l.error(format!(
            "`length` only applies to `string` and `bytes`; `{t}` has a fixed size"
        ))),
        (None, _) => {}
    }
    format.order = match (&raw.order, data_type) {
        (Some(o), DataType::Bool) => {
            errors.push(o.error("`order` does not apply to coils and discrete inputs"));
            Order::Abcd
        }
        (Some(o), DataType::String | DataType::Bytes) if o.value.word_swap() => {
            errors.push(o.error(format!(
                "{data_type} points only take a byte order: AB (high byte first, the default) or BA"
            )));
            Order::Abcd
        }
        (Some(o), _) => o.value,
        // The device default is about how wide numbers are split over registers; 16-bit values, strings and
        // bytes follow the Modbus convention unless the point says otherwise.
        (None, t) if t.fixed_registers().is_some_and(|n| n > 1) => d.order,
        (None, _) => Order::Abcd,
    };

    let width = format.width();
    if width > max_len && data_type.fixed_registers().is_some() {
        let at = raw
            .data_type
            .as_ref()
            .map_or_else(|| raw.address.error(""), |t| t.error(""));
        errors.push(ConfigError {
            message: format!(
                "`{data_type}` needs {width} registers but this device reads at most {max_len} per request \
                 (max_registers)"
            ),
            ..at
        });
    }
    if u32::from(offset) + u32::from(width) > 65536 {
        errors.push(raw.address.error(format!(
            "{data_type} at {table} offset {offset} runs past the last address 65535"
        )));
    }

    let verify = raw.verify.as_ref().is_some_and(|v| v.value);
    let write_multiple = raw.write_multiple.as_ref().is_some_and(|v| v.value);
    if p.writable && !table.is_writable() {
        errors.push(p.spec.error(format!(
            "point `{}` is `writable: true` but {table}s are read-only in Modbus (only coils and holding \
             registers can be written)",
            p.name
        )));
    }
    for (key, flag) in [
        ("verify", &raw.verify),
        ("write_multiple", &raw.write_multiple),
    ] {
        if let Some(f) = flag {
            if f.value && !p.writable {
                errors.push(f.error(format!(
                    "`{key}` applies to writes, but the point is not `writable: true`"
                )));
            }
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(ModbusPoint {
        name: p.name.clone(),
        table,
        offset,
        format,
        writable: p.writable,
        interval: p.poll_interval.unwrap_or(device.poll_interval),
        write: WriteOptions {
            verify,
            write_multiple,
        },
    })
}

/// Implements `Deserialize` through `FromStr`, so that a bad name is reported at the value with the
/// parser's message (which lists the accepted names).
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

deserialize_from_str!(DataType, "a data type name");
deserialize_from_str!(Order, "a byte order such as ABCD or CDAB");
deserialize_from_str!(Table, "a table name");
deserialize_from_str!(Addressing, "`reference` or `offset`");

impl FromStr for Parity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "n" | "no" => Ok(Parity::None),
            "even" | "e" => Ok(Parity::Even),
            "odd" | "o" => Ok(Parity::Odd),
            _ => Err(format!("unknown parity `{s}`; expected none, even or odd")),
        }
    }
}
deserialize_from_str!(Parity, "none, even or odd");

impl<'de> Deserialize<'de> for RawAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawAddress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address (a number like 40001, or a string like \"0x1F\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawAddress, E> {
                Ok(RawAddress::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawAddress, E> {
                i64::try_from(v)
                    .map(RawAddress::Int)
                    .map_err(|_| E::custom(format!("address {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAddress, E> {
                Ok(RawAddress::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration as people write it (`20ms`, `1.5s`), through the SDK's parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fieldbridge_sdk::config::HumanDuration::deserialize(d).map(|h| Dur(h.into()))
    }
}
