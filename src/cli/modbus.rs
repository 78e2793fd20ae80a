//! `fieldbridge modbus read|write`: probe a device before writing its map, with the daemon's own decoder,
//! addressing rules and byte orders (what this prints is what the daemon publishes for the same settings).
use std::io::Write;
use std::time::Duration;

use fieldbridge_modbus::{
    parse_address, parse_value, probe_read, probe_write, ConnectionArgs, DataType, Format, Order,
    ProbeError, ProbeTarget, Table, WriteOptions,
};

/// How to reach the device.
#[derive(Debug, Clone, clap::Args)]
pub struct ModbusConnection {
    /// Modbus TCP endpoint, `host[:port]` (port 502 by default).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub tcp: Option<String>,
    /// RTU frames over TCP (serial servers), `host[:port]`.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub rtu_over_tcp: Option<String>,
    /// RTU over a serial port, e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "PATH")]
    pub serial: Option<String>,
    /// Serial baud rate.
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Serial data bits.
    #[arg(long, default_value_t = 8)]
    pub data_bits: u8,
    /// Serial parity: none, even or odd.
    #[arg(long, default_value = "none")]
    pub parity: String,
    /// Serial stop bits.
    #[arg(long, default_value_t = 1)]
    pub stop_bits: u8,
    /// Unit (slave) id.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// Connect and request timeout, e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    fieldbridge_sdk::config::parse_duration(s)
}

/// What to read or write.
#[derive(Debug, Clone, clap::Args)]
pub struct ModbusPoint {
    /// A reference like `40001` (table from the first digit), or a 0-based offset with `--table`.
    pub address: String,
    /// coil, discrete_input, holding_register or input_register (makes ADDRESS a 0-based offset).
    #[arg(long)]
    pub table: Option<Table>,
    /// bool, bit, u16, i16, u32, i32, u64, i64, f32, f64, string, bytes.
    #[arg(long = "type", default_value = "u16")]
    pub data_type: DataType,
    /// Byte/word order: ABCD, BADC, CDAB, DCBA (and the 64-bit spellings).
    #[arg(long, default_value = "ABCD")]
    pub order: Order,
    /// Bit index for `--type bit`.
    #[arg(long, default_value_t = 0)]
    pub bit: u8,
    /// Length in registers for `string`/`bytes`.
    #[arg(long, default_value_t = 0)]
    pub length: u16,
}

/// `fieldbridge modbus …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ModbusCmd {
    /// Read and decode one or more consecutive values.
    Read {
        #[command(flatten)]
        conn: ModbusConnection,
        #[command(flatten)]
        point: ModbusPoint,
        /// How many consecutive values.
        #[arg(long, default_value_t = 1)]
        count: u16,
    },
    /// Encode and write one value.
    Write {
        #[command(flatten)]
        conn: ModbusConnection,
        #[command(flatten)]
        point: ModbusPoint,
        /// The value, e.g. `21.5`, `true`, `-3`.
        #[arg(allow_negative_numbers = true)]
        value: String,
        /// Read back and compare after writing.
        #[arg(long)]
        verify: bool,
        /// Use FC15/FC16 even for a single coil/register.
        #[arg(long)]
        write_multiple: bool,
    },
}

fn target(c: &ModbusConnection) -> Result<ProbeTarget, ProbeError> {
    let args = ConnectionArgs {
        tcp: c.tcp.clone(),
        rtu_over_tcp: c.rtu_over_tcp.clone(),
        serial: c.serial.clone(),
        baud: c.baud,
        data_bits: c.data_bits,
        parity: c.parity.clone(),
        stop_bits: c.stop_bits,
    };
    Ok(ProbeTarget {
        endpoint: args.endpoint()?,
        unit: c.unit,
        timeout: c.timeout,
    })
}

fn format(p: &ModbusPoint) -> Format {
    let mut f = Format::new(p.data_type).with_order(p.order);
    f.bit = p.bit;
    f.length = p.length;
    f
}

/// Exit codes: 0 ok, 64 bad arguments, 69 device unreachable, 1 device exception or refused write.
fn exit_code(e: &ProbeError) -> u8 {
    match e {
        ProbeError::Invalid(_) => 64,
        ProbeError::Transport(_) => 69,
        ProbeError::Exception(_) | ProbeError::Write(_) => 1,
    }
}

/// Runs a `modbus` subcommand, printing to `out`/`err`; returns the exit code.
pub async fn run(cmd: &ModbusCmd, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let result = async {
        match cmd {
            ModbusCmd::Read { conn, point, count } => {
                let target = target(conn)?;
                let (table, offset) = parse_address(&point.address, point.table)?;
                let values = probe_read(&target, table, offset, format(point), *count).await?;
                for v in values {
                    let raw: Vec<String> = v.raw.iter().map(|r| format!("{r:04X}")).collect();
                    let _ = writeln!(
                        out,
                        "{} ({} {}): {}  raw [{}]",
                        v.reference(),
                        v.table,
                        v.offset,
                        v.value,
                        raw.join(" ")
                    );
                }
                Ok(())
            }
            ModbusCmd::Write {
                conn,
                point,
                value,
                verify,
                write_multiple,
            } => {
                let target = target(conn)?;
                let (table, offset) = parse_address(&point.address, point.table)?;
                let f = format(point);
                let v = parse_value(value, &f)?;
                let opts = WriteOptions {
                    verify: *verify,
                    write_multiple: *write_multiple,
                };
                probe_write(&target, table, offset, f, &v, opts).await?;
                let _ = writeln!(out, "wrote {v} to {}", table.reference(offset));
                Ok(())
            }
        }
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "fieldbridge modbus: {e}");
            exit_code(&e)
        }
    }
}
