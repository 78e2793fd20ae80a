//! `fieldbridge serial monitor PORT [--map draft.yaml]`: print what a port sends, framed and parsed exactly as
//! the daemon would, for commissioning a device before its map is final.
//!
//! Without a map the port is read as text lines (any of CR, LF, CRLF). With a map, its framing, parser and
//! points are used (the first serial device of the file, or the one named with `--device`), and for a polled
//! device its requests are sent at their intervals. Each frame is printed with its offset from the start, its
//! bytes (escaped text, or hex for binary framings or `--hex`), then each point it yields or why it was
//! rejected. It stops on Ctrl-C (the caller's cancellation), after `count` frames or after `duration`, and
//! ends with the counters.
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::config::{parse_duration, parse_yaml, POINT_CORE_KEYS};
use fieldbridge_sdk::{ConfigError, ConfigNode, DeviceConfig, Mark, NodeKind, PointConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Mode, PortSettings, SerialDevice};
use crate::escape::{escape, hex};
use crate::framing::{Framer, FramingSpec, Terminator};
use crate::parse::Parser;
use crate::stats::{SerialStats, StatsSnapshot};

/// Why the monitor stopped early.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The port could not be opened.
    #[error("cannot open {path}: {reason}")]
    Open {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The port failed while reading (unplugged).
    #[error("{path}: {reason}")]
    Io {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// When to stop, and how to print.
#[derive(Debug, Clone, Default)]
pub struct MonitorOptions {
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Print frames as hex even when they are text.
    pub hex: bool,
}

/// A device for a bare port: text lines, the whole line as the point `line`.
pub fn bare_device(port: PortSettings) -> SerialDevice {
    SerialDevice {
        name: Arc::from("monitor"),
        port,
        framing: FramingSpec::Line {
            terminator: Terminator::Any,
            max_frame: crate::config::DEFAULT_MAX_FRAME,
        },
        gap: None,
        mode: Mode::Stream {
            parser: Parser::Text,
            on_error: crate::config::OnError::Count,
        },
        points: Vec::new(),
        timeout: Duration::from_secs(1),
        retries: 0,
        reopen_min: Duration::from_secs(1),
        reopen_max: Duration::from_secs(1),
        silence_timeout: None,
    }
}

fn duration_of(node: &ConfigNode, errors: &mut Vec<ConfigError>) -> Option<Duration> {
    let text = match &node.kind {
        NodeKind::String(s) => s.clone(),
        NodeKind::Int(i) => i.to_string(),
        _ => {
            errors.push(node.error(format!("expected a duration, found {}", node.type_name())));
            return None;
        }
    };
    parse_duration(&text)
        .map_err(|e| errors.push(node.error(e)))
        .ok()
}

/// The device named `name` (or the first serial device) of a draft map, as the core would hand it to the
/// adapter, with `connection.port` set to `port` (the port given on the command line wins).
pub fn device_from_yaml(
    file: &str,
    text: &str,
    name: Option<&str>,
    port: &str,
) -> Result<DeviceConfig, Vec<ConfigError>> {
    let root = parse_yaml(file, text)?;
    let candidates: Vec<&ConfigNode> = match root.get("devices") {
        Some(list) => list
            .as_seq()
            .map(|s| s.iter().collect())
            .unwrap_or_default(),
        None => vec![&root],
    };
    let is_serial = |d: &&ConfigNode| {
        d.get("protocol")
            .and_then(ConfigNode::as_str)
            .is_none_or(|p| p == crate::PROTOCOL)
    };
    let picked = match name {
        Some(n) => candidates
            .into_iter()
            .find(|d| d.get("name").and_then(ConfigNode::as_str) == Some(n)),
        None => candidates.into_iter().find(is_serial),
    };
    let Some(dev) = picked else {
        return Err(vec![root.error(match name {
            Some(n) => format!("no device named `{n}` in the map"),
            None => "no serial device (protocol: serial) in the map".to_owned(),
        })]);
    };
    let mut errors = Vec::new();
    let dev_name = dev
        .get("name")
        .and_then(ConfigNode::as_str)
        .unwrap_or("monitor")
        .to_owned();
    // The port from the command line replaces the map's.
    let port_entry = |mark: &Mark, path: &str| {
        (
            ConfigNode {
                kind: NodeKind::String("port".into()),
                mark: mark.clone(),
                path: format!("{path}.port"),
            },
            ConfigNode {
                kind: NodeKind::String(port.to_owned()),
                mark: mark.clone(),
                path: format!("{path}.port"),
            },
        )
    };
    let connection = match dev.get("connection") {
        Some(c) if c.as_map().is_some() => {
            let mut entries: Vec<(ConfigNode, ConfigNode)> = c
                .as_map()
                .unwrap_or_default()
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), Some("port" | "path" | "device")))
                .cloned()
                .collect();
            entries.push(port_entry(&c.mark, &c.path));
            ConfigNode {
                kind: NodeKind::Map(entries),
                ..c.clone()
            }
        }
        Some(c) if !c.is_null() => {
            errors.push(c.error(format!(
                "`connection` must be a mapping, found {}",
                c.type_name()
            )));
            c.clone()
        }
        _ => ConfigNode {
            kind: NodeKind::Map(vec![port_entry(&dev.mark, "connection")]),
            mark: dev.mark.clone(),
            path: "connection".into(),
        },
    };
    let poll_interval = dev
        .get("poll_interval")
        .and_then(|n| duration_of(n, &mut errors))
        .unwrap_or(Duration::from_secs(1));
    let timeout = dev
        .get("timeout")
        .and_then(|n| duration_of(n, &mut errors))
        .unwrap_or(Duration::from_secs(1));
    let mut points = Vec::new();
    for p in dev
        .get("points")
        .and_then(ConfigNode::as_seq)
        .unwrap_or_default()
    {
        let Some(entries) = p.as_map() else {
            errors.push(p.error("a point must be a mapping"));
            continue;
        };
        let Some(pname) = p.get("name").and_then(ConfigNode::as_str) else {
            errors.push(p.error("a point needs a `name`"));
            continue;
        };
        points.push(PointConfig {
            name: Arc::from(pname),
            writable: matches!(
                p.get("writable").map(|n| &n.kind),
                Some(NodeKind::Bool(true))
            ),
            poll_interval: p
                .get("poll_interval")
                .and_then(|n| duration_of(n, &mut errors)),
            spec: ConfigNode {
                kind: NodeKind::Map(
                    entries
                        .iter()
                        .filter(|(k, _)| !k.as_str().is_some_and(|k| POINT_CORE_KEYS.contains(&k)))
                        .cloned()
                        .collect(),
                ),
                ..p.clone()
            },
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(DeviceConfig {
        name: Arc::from(dev_name.as_str()),
        protocol: crate::PROTOCOL.into(),
        connection,
        poll_interval,
        timeout,
        retries: 0,
        points: points.into(),
    })
}

fn binary_framing(f: &FramingSpec) -> bool {
    !matches!(f, FramingSpec::Line { .. })
}

/// Reads the port until cancelled or a limit is reached, printing every frame. Returns the counters.
pub async fn monitor(
    device: &SerialDevice,
    opts: &MonitorOptions,
    out: &mut impl Write,
    cancel: CancellationToken,
) -> Result<StatsSnapshot, MonitorError> {
    let mut port = crate::device::open(&device.port).map_err(|e| MonitorError::Open {
        path: device.port.path.clone(),
        reason: e.to_string(),
    })?;
    writeln!(out, "# {} — {}", device.port, describe(device))?;
    let stats = SerialStats::default();
    let mut framer = Framer::new(device.framing.clone());
    let start = Instant::now();
    let end = opts.duration.map(|d| start + d);
    let far = start + Duration::from_secs(86400 * 365);
    let requests = match &device.mode {
        Mode::Polled(r) => r.clone(),
        Mode::Stream { .. } => Vec::new(),
    };
    let mut next_send: Vec<Instant> = requests.iter().map(|_| start).collect();
    let mut current: Option<usize> = None;
    let mut last_byte = start;
    let mut buf = [0u8; 1024];
    let hex_out = opts.hex || binary_framing(&device.framing);
    'outer: loop {
        if opts.count.is_some_and(|c| stats.snapshot().frames >= c) {
            break;
        }
        let due = next_send.iter().copied().min().unwrap_or(far);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(end.unwrap_or(far)), if end.is_some() => break,
            _ = tokio::time::sleep_until(due), if !requests.is_empty() => {
                let now = Instant::now();
                for (i, r) in requests.iter().enumerate() {
                    if next_send[i] <= now {
                        next_send[i] = now + r.interval;
                        current = Some(i);
                        writeln!(out, "{:>9.3}s > {} {}", now.duration_since(start).as_secs_f64(), r.name, show(&r.send, hex_out))?;
                        if let Err(e) = async { AsyncWriteExt::write_all(&mut port, &r.send).await?; AsyncWriteExt::flush(&mut port).await }.await {
                            return Err(MonitorError::Io { path: device.port.path.clone(), reason: e.to_string() });
                        }
                        break;
                    }
                }
            }
            r = port.read(&mut buf) => {
                let n = match r {
                    Ok(0) => return Err(MonitorError::Io { path: device.port.path.clone(), reason: "the port closed".into() }),
                    Ok(n) => n,
                    Err(e) => return Err(MonitorError::Io { path: device.port.path.clone(), reason: e.to_string() }),
                };
                SerialStats::add(&stats.bytes, n as u64);
                let now = Instant::now();
                if device.gap.is_some_and(|g| now.duration_since(last_byte) > g) {
                    let dropped = framer.reset();
                    if dropped > 0 {
                        SerialStats::add(&stats.discarded_bytes, dropped as u64);
                        writeln!(out, "{:>9.3}s ! gap: {dropped} bytes of a partial frame dropped", now.duration_since(start).as_secs_f64())?;
                    }
                }
                last_byte = now;
                let mut events = Vec::new();
                framer.push(&buf[..n], &mut events);
                for e in events {
                    let t = now.duration_since(start).as_secs_f64();
                    match &e {
                        crate::framing::Event::Oversized { bytes } => writeln!(out, "{t:>9.3}s ! oversized frame: {bytes} bytes discarded")?,
                        crate::framing::Event::Garbage { bytes } => writeln!(out, "{t:>9.3}s ! {bytes} bytes skipped before a frame start")?,
                        crate::framing::Event::Frame(_) => {}
                    }
                    let Some(frame) = crate::device::count_event(&stats, e) else { continue };
                    writeln!(out, "{t:>9.3}s < {} ({} bytes)", show(&frame, hex_out), frame.len())?;
                    let (parser, selected): (&Parser, Option<usize>) = match (&device.mode, current) {
                        (Mode::Stream { parser, .. }, _) => (parser, None),
                        (Mode::Polled(r), Some(i)) => (&r[i].parser, Some(i)),
                        (Mode::Polled(_), None) => continue,
                    };
                    match crate::device::decode_frame(parser, &device.points, |p| selected.is_none() || p.request == selected, &frame) {
                        Ok(values) if values.is_empty() && !device.points.is_empty() => writeln!(out, "            (no point in this frame)")?,
                        Ok(values) => {
                            for (i, v) in values {
                                match v {
                                    Ok(v) => writeln!(out, "            {} = {v}", device.points[i].name)?,
                                    Err(e) => {
                                        SerialStats::bump(&stats.conversion_errors);
                                        writeln!(out, "            {} ! {e}", device.points[i].name)?
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            SerialStats::bump(if e.is_checksum() { &stats.checksum_errors } else { &stats.parse_errors });
                            writeln!(out, "            ! {e}")?
                        }
                    }
                    if opts.count.is_some_and(|c| stats.snapshot().frames >= c) {
                        break 'outer;
                    }
                }
            }
        }
    }
    let s = stats.snapshot();
    writeln!(
        out,
        "# {} frames, {} bytes; {} oversized, {} bytes discarded, {} parse errors, {} checksum errors, {} conversion errors",
        s.frames, s.bytes, s.oversized, s.discarded_bytes, s.parse_errors, s.checksum_errors, s.conversion_errors
    )?;
    Ok(s)
}

fn show(bytes: &[u8], as_hex: bool) -> String {
    if as_hex {
        hex(bytes)
    } else {
        format!("\"{}\"", escape(bytes))
    }
}

fn describe(d: &SerialDevice) -> String {
    let framing = match &d.framing {
        FramingSpec::Line {
            terminator,
            max_frame,
        } => format!("lines ({terminator:?}, max {max_frame} bytes)"),
        FramingSpec::Fixed { length, .. } => format!("fixed frames of {length} bytes"),
        FramingSpec::Delimited { max_frame, .. } => {
            format!("delimited frames (max {max_frame} bytes)")
        }
        FramingSpec::LengthPrefixed { max_frame, .. } => {
            format!("length-prefixed frames (max {max_frame} bytes)")
        }
    };
    let mode = match &d.mode {
        Mode::Stream { parser, .. } => format!("parser {}", parser_name(parser)),
        Mode::Polled(r) => format!("{} request(s)", r.len()),
    };
    format!("{framing}, {mode}, {} point(s)", d.points.len())
}

fn parser_name(p: &Parser) -> &'static str {
    match p {
        Parser::Text => "text",
        Parser::Regex(_) => "regex",
        Parser::Csv { .. } => "csv",
        Parser::Json => "json",
        Parser::KeyValue { .. } => "key_value",
        Parser::Nmea { .. } => "nmea",
        Parser::Binary { .. } => "binary",
    }
}
