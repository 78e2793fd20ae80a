//! `fieldbridge serial monitor PORT [--map draft.yaml]`: print what a serial port sends, framed and parsed with
//! a draft device map (the daemon's own framers and parsers), for commissioning.
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use fieldbridge_serial::config::{FlowControl, Parity, PortSettings};
use fieldbridge_serial::monitor::{bare_device, device_from_yaml, monitor, MonitorOptions};
use tokio_util::sync::CancellationToken;

/// `fieldbridge serial …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SerialCmd {
    /// Print what a port sends, framed and parsed with a draft device map. Stops on Ctrl-C, after --count
    /// frames or after --duration.
    Monitor(MonitorArgs),
}

/// Arguments of `serial monitor`.
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// The port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/usb-…
    pub port: String,
    /// A draft device map (a file with `devices:`, or one device): its framing, parser, points and requests
    /// are used; the port settings below override its `connection`.
    #[arg(long, value_name = "FILE")]
    pub map: Option<PathBuf>,
    /// Which device of the map (default: the first serial device).
    #[arg(long)]
    pub device: Option<String>,
    /// Baud rate (default: the map's, else 9600).
    #[arg(long)]
    pub baud: Option<u32>,
    /// Data bits, 5 to 8.
    #[arg(long)]
    pub data_bits: Option<u8>,
    /// Parity: none, even or odd.
    #[arg(long)]
    pub parity: Option<Parity>,
    /// Stop bits, 1 or 2.
    #[arg(long)]
    pub stop_bits: Option<u8>,
    /// Flow control: none, software or hardware.
    #[arg(long)]
    pub flow_control: Option<FlowControl>,
    /// Stop after this many frames.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long, e.g. `30s`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print frames as hex (binary framings always are).
    #[arg(long)]
    pub hex: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    fieldbridge_sdk::config::parse_duration(s)
}

/// Runs a `serial` subcommand until it ends or `cancel` fires (Ctrl-C); returns the exit code: 0 done, 1 the
/// port failed, 2 a bad argument, 64 an invalid map.
pub async fn run(
    cmd: &SerialCmd,
    out: &mut impl Write,
    err: &mut impl Write,
    cancel: CancellationToken,
) -> u8 {
    let SerialCmd::Monitor(a) = cmd;
    let mut device = match &a.map {
        None => bare_device(PortSettings {
            path: a.port.clone(),
            ..PortSettings::default()
        }),
        Some(path) => {
            let name = path.display().to_string();
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    let _ = writeln!(err, "fieldbridge serial monitor: cannot read {name}: {e}");
                    return super::EXIT_FAILURE;
                }
            };
            let built = device_from_yaml(&name, &text, a.device.as_deref(), &a.port)
                .and_then(|cfg| fieldbridge_serial::validate(&cfg));
            match built {
                Ok(d) => d,
                Err(errors) => {
                    for e in &errors {
                        let _ = writeln!(err, "{e}");
                    }
                    let _ = writeln!(
                        err,
                        "fieldbridge serial monitor: {} problem(s) in {name}",
                        errors.len()
                    );
                    return super::EXIT_CONFIG;
                }
            }
        }
    };
    if let Some(b) = a.baud {
        device.port.baud = b;
    }
    if let Some(b) = a.data_bits {
        device.port.data_bits = b;
    }
    if let Some(p) = a.parity {
        device.port.parity = p;
    }
    if let Some(s) = a.stop_bits {
        device.port.stop_bits = s;
    }
    if let Some(f) = a.flow_control {
        device.port.flow_control = f;
    }
    let p = &device.port;
    if p.baud == 0 || !(5..=8).contains(&p.data_bits) || !(1..=2).contains(&p.stop_bits) {
        let _ = writeln!(
            err,
            "fieldbridge serial monitor: baud must be above 0, data bits 5 to 8, stop bits 1 or 2"
        );
        return super::EXIT_USAGE;
    }
    let opts = MonitorOptions {
        count: a.count,
        duration: a.duration,
        hex: a.hex,
    };
    match monitor(&device, &opts, out, cancel).await {
        Ok(_) => super::EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "fieldbridge serial monitor: {e}");
            super::EXIT_FAILURE
        }
    }
}
