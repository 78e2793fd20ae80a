//! Reads and writes on a line, shared by the poller device and the commissioning probe.
use std::time::Duration;

use fieldbridge_sdk::poller::TransportError;
use fieldbridge_sdk::{CommandError, Value};
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::address::Table;
use crate::codec::{Encoded, Format};
use crate::transport::{exception_name, Line};

/// Who to talk to, and how patiently.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub line: &'a Line,
    pub unit: u8,
    /// Per request, once the line is ours.
    pub timeout: Duration,
    /// Quiet time after each request (slow devices).
    pub delay: Duration,
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

impl Data {
    /// The slice `[at, at + width)` as raw register values (bits as 0/1), for display.
    pub fn raw(&self, at: usize, width: usize) -> Vec<u16> {
        match self {
            Data::Bits(b) => b
                .iter()
                .skip(at)
                .take(width)
                .map(|&x| u16::from(x))
                .collect(),
            Data::Words(w) => w.iter().skip(at).take(width).copied().collect(),
        }
    }

    /// Decodes the value of a point sitting at `at`.
    pub fn decode(&self, at: usize, format: &Format) -> Result<Value, String> {
        let r = match self {
            Data::Bits(b) => format.decode_bits(b.get(at..).unwrap_or(&[])),
            Data::Words(w) => format.decode_registers(w.get(at..).unwrap_or(&[])),
        };
        r.map_err(|e| format!("bad response: {e}"))
    }
}

/// Writes need the same knobs as the point that is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Read the point back after writing and compare.
    pub verify: bool,
    /// Use FC15/FC16 even for a single coil/register (devices that lack FC5/FC6).
    pub write_multiple: bool,
}

pub(crate) async fn read(
    t: Target<'_>,
    table: Table,
    start: u16,
    count: u16,
) -> Result<Result<Data, ExceptionCode>, TransportError> {
    let req = match table {
        Table::Coil => Request::ReadCoils(start, count),
        Table::DiscreteInput => Request::ReadDiscreteInputs(start, count),
        Table::HoldingRegister => Request::ReadHoldingRegisters(start, count),
        Table::InputRegister => Request::ReadInputRegisters(start, count),
    };
    let answer = t.line.call(t.unit, req, t.timeout, t.delay).await?;
    Ok(match answer {
        Ok(Response::ReadCoils(mut b)) | Ok(Response::ReadDiscreteInputs(mut b)) => {
            // Bits come padded to whole bytes: the answer must have exactly the bytes the count needs.
            let want = usize::from(count).div_ceil(8);
            let got = b.len() / 8;
            if got != want {
                let n = usize::from(count);
                return Err(malformed(
                    table,
                    format!(
                        "{got} data byte{} for {n} bit{} ({want} byte{}) requested",
                        plural(got),
                        plural(n),
                        plural(want)
                    ),
                ));
            }
            b.truncate(usize::from(count));
            Ok(Data::Bits(b))
        }
        Ok(Response::ReadHoldingRegisters(w)) | Ok(Response::ReadInputRegisters(w)) => {
            // Framing only checks that the byte count agrees with the frame; an answer with more (or fewer)
            // registers than asked for is out of step with the request, and its values cannot be placed.
            if w.len() != usize::from(count) {
                return Err(malformed(
                    table,
                    format!(
                        "{} register{} for {count} requested",
                        w.len(),
                        plural(w.len())
                    ),
                ));
            }
            Ok(Data::Words(w))
        }
        Ok(other) => {
            return Err(TransportError::Protocol(format!(
                "unexpected response {other:?}"
            )))
        }
        Err(exc) => Err(exc),
    })
}

/// A read answer of the wrong size, refused in the same words as a byte count that disagrees with the data
/// ("bad response: malformed answer to function 0x03: ...").
fn malformed(table: Table, what: String) -> TransportError {
    let fc = match table {
        Table::Coil => 0x01,
        Table::DiscreteInput => 0x02,
        Table::HoldingRegister => 0x03,
        Table::InputRegister => 0x04,
    };
    TransportError::Protocol(format!("malformed answer to function {fc:#04x}: {what}"))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn command_error(e: TransportError) -> CommandError {
    match e {
        TransportError::Timeout(_) => CommandError::Timeout,
        other => CommandError::Transport(other.to_string()),
    }
}

/// What a device must answer to a write: FC5/FC6 echo the address and the value, FC15/FC16 the address and
/// the quantity. Anything else means the device wrote elsewhere, or its answers are out of step.
fn expected_echo(req: &Request<'_>) -> Option<Response> {
    Some(match req {
        Request::WriteSingleCoil(a, on) => Response::WriteSingleCoil(*a, *on),
        Request::WriteSingleRegister(a, w) => Response::WriteSingleRegister(*a, *w),
        Request::WriteMultipleCoils(a, c) => Response::WriteMultipleCoils(*a, c.len() as u16),
        Request::WriteMultipleRegisters(a, w) => {
            Response::WriteMultipleRegisters(*a, w.len() as u16)
        }
        _ => return None,
    })
}

async fn send(t: Target<'_>, req: Request<'_>) -> Result<(), CommandError> {
    let want = expected_echo(&req);
    match t.line.call(t.unit, req, t.timeout, t.delay).await {
        Ok(Ok(got)) => match want {
            Some(want) if got != want => Err(CommandError::Device(format!(
                "the device's answer does not echo the write: sent {}, answer {}",
                echo_text(&want),
                echo_text(&got)
            ))),
            _ => Ok(()),
        },
        Ok(Err(exc)) => Err(CommandError::Device(exception_name(exc))),
        Err(e) => Err(command_error(e)),
    }
}

/// A write's echo as an operator reads it (register numbers are 0-based protocol offsets).
fn echo_text(r: &Response) -> String {
    match r {
        Response::WriteSingleCoil(a, on) => format!("coil offset {a} = {}", u8::from(*on)),
        Response::WriteSingleRegister(a, w) => format!("register offset {a} = 0x{w:04X}"),
        Response::WriteMultipleCoils(a, n) => format!("{n} coil(s) from offset {a}"),
        Response::WriteMultipleRegisters(a, n) => format!("{n} register(s) from offset {a}"),
        other => format!("{other:?}"),
    }
}

async fn read_for_write(
    t: Target<'_>,
    table: Table,
    start: u16,
    count: u16,
) -> Result<Data, CommandError> {
    match read(t, table, start, count).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(exc)) => Err(CommandError::Device(exception_name(exc))),
        Err(e) => Err(command_error(e)),
    }
}

/// Encodes `value` with the point's format and writes it: FC5 (or FC15) for a coil, FC6 for a single
/// register, FC16 for anything wider (or always with `write_multiple`), and a read-modify-write of the
/// register for a `bit` point. With `verify`, reads the point back and compares the registers.
pub(crate) async fn write(
    t: Target<'_>,
    table: Table,
    offset: u16,
    format: &Format,
    value: &Value,
    opts: WriteOptions,
) -> Result<(), CommandError> {
    if !table.is_writable() {
        return Err(CommandError::InvalidValue(format!(
            "{table}s cannot be written"
        )));
    }
    let encoded = format.encode(value)?;
    match (&encoded, table) {
        (Encoded::Coil(on), Table::Coil) => {
            let req = if opts.write_multiple {
                Request::WriteMultipleCoils(offset, vec![*on].into())
            } else {
                Request::WriteSingleCoil(offset, *on)
            };
            send(t, req).await?;
        }
        (Encoded::Registers(regs), Table::HoldingRegister) => {
            let req = if regs.len() == 1 && !opts.write_multiple {
                Request::WriteSingleRegister(offset, regs[0])
            } else {
                Request::WriteMultipleRegisters(offset, regs.as_slice().into())
            };
            send(t, req).await?;
        }
        (Encoded::Bit { bit, on }, Table::HoldingRegister) => {
            // FC22 (mask write) would be atomic but many devices lack it; a read-modify-write is what every
            // device supports. The line is released between the two, so the device itself could change
            // other bits in between: documented for `bit` points.
            let current = match read_for_write(t, table, offset, 1).await? {
                Data::Words(w) if !w.is_empty() => format.order_reg(w[0]),
                _ => return Err(CommandError::Device("short response".into())),
            };
            let mask = 1u16 << bit;
            let new = if *on { current | mask } else { current & !mask };
            let new = format.order_reg(new);
            let req = if opts.write_multiple {
                Request::WriteMultipleRegisters(offset, vec![new].into())
            } else {
                Request::WriteSingleRegister(offset, new)
            };
            send(t, req).await?;
        }
        _ => {
            return Err(CommandError::InvalidValue(format!(
                "a {} point cannot be written to a {table}",
                format.data_type
            )))
        }
    }
    if opts.verify {
        verify(t, table, offset, format, &encoded).await?;
    }
    Ok(())
}

async fn verify(
    t: Target<'_>,
    table: Table,
    offset: u16,
    format: &Format,
    wrote: &Encoded,
) -> Result<(), CommandError> {
    let data = read_for_write(t, table, offset, format.width()).await?;
    let read_value = data.decode(0, format).map_err(CommandError::Device)?;
    let matches = match (wrote, &data) {
        (Encoded::Coil(on), Data::Bits(b)) => b.first() == Some(on),
        (Encoded::Registers(regs), Data::Words(w)) => w.get(..regs.len()) == Some(regs.as_slice()),
        (Encoded::Bit { on, .. }, _) => read_value == Value::Bool(*on),
        _ => false,
    };
    if matches {
        return Ok(());
    }
    // Show what was really stored (after encoding), not what was asked for: for an f32 point 0.1 is stored as
    // 0.10000000149011612, and a mismatch message must compare like with like.
    let wrote_value = match wrote {
        Encoded::Coil(on) | Encoded::Bit { on, .. } => Value::Bool(*on),
        Encoded::Registers(regs) => format
            .decode_registers(regs)
            .unwrap_or_else(|_| Value::String(format!("{regs:04X?}"))),
    };
    Err(CommandError::Verify {
        wrote: wrote_value.to_string(),
        read: read_value.to_string(),
    })
}
