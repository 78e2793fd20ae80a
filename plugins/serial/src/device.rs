//! A running serial device.
//!
//! - Streaming devices (no `requests`) run in [`run_stream`]: open the port, read, frame, parse, publish; on an
//!   I/O error or end of file (a USB adapter unplugged, a pty whose other side went away) the device goes
//!   `offline` and the port is reopened with backoff until it is back, then `online` again. Writes are
//!   interleaved with reading in the same task.
//! - Polled devices (`requests`) run on the SDK's [`Poller`], which owns intervals, timeouts, retries,
//!   offline/online and write scheduling; [`PolledPort`] only sends a request and waits for its answer.
//!
//! Readings of one frame carry the time the frame was complete.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fieldbridge_sdk::poller::{
    DeviceException, GroupReading, PollDevice, PollGroup, PollPlan, PollPoint, Poller,
    PollerSettings, TransportError,
};
use fieldbridge_sdk::{
    Adapter, AdapterContext, AdapterError, Backoff, Command, CommandError, DeviceStatus, Quality,
    Reading, Value,
};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::SerialStream;

use crate::config::{
    FlowControl, Mode, OnError, Parity, PortSettings, SerialDevice, SerialPoint, WriteSpec,
};
use crate::escape::escape;
use crate::framing::{Event, Framer};
use crate::parse::{extract, ParseError, Parser};
use crate::stats::SerialStats;

/// Read buffer size.
const READ_CHUNK: usize = 1024;

/// Opens a serial port with its settings (inside a tokio runtime).
pub fn open(s: &PortSettings) -> Result<SerialStream, tokio_serial::Error> {
    use tokio_serial::SerialPortBuilderExt as _;
    tokio_serial::new(s.path.as_str(), s.baud)
        .data_bits(match s.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match s.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if s.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match s.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        })
        .open_native_async()
}

/// Counts a framer event; returns the frame if it is one.
pub(crate) fn count_event(stats: &SerialStats, e: Event) -> Option<Vec<u8>> {
    match e {
        Event::Frame(f) => {
            SerialStats::bump(&stats.frames);
            Some(f)
        }
        Event::Oversized { bytes } => {
            SerialStats::bump(&stats.oversized);
            SerialStats::add(&stats.discarded_bytes, bytes as u64);
            None
        }
        Event::Garbage { bytes } => {
            SerialStats::add(&stats.discarded_bytes, bytes as u64);
            None
        }
    }
}

/// Per point (by index): its value, or why its field did not convert.
pub(crate) type FrameValues = Vec<(usize, Result<Value, String>)>;

/// The values of the selected points in one frame: `Err` when the frame does not parse; per point, `Err` when
/// its field does not convert. Points whose field the frame lacks are left out.
pub(crate) fn decode_frame(
    parser: &Parser,
    points: &[SerialPoint],
    selected: impl Fn(&SerialPoint) -> bool,
    frame: &[u8],
) -> Result<FrameValues, ParseError> {
    let parsed = parser.parse(frame)?;
    Ok(points
        .iter()
        .enumerate()
        .filter(|(_, p)| selected(p))
        .filter_map(|(i, p)| {
            let src = p.source.as_ref()?;
            extract(&parsed, src, p.ty).map(|r| (i, r))
        })
        .collect())
}

/// Logs the first failure of a run of failures, and the recovery, but never one line per frame.
#[derive(Debug, Default)]
struct ErrorLog {
    failing: bool,
}

impl ErrorLog {
    fn failed(&mut self, device: &str, what: &str, err: &dyn std::fmt::Display) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(
                device,
                "{what}: {err} (counted; further failures are not logged until a good frame)"
            );
        }
    }
    fn ok(&mut self, device: &str) {
        if self.failing {
            self.failing = false;
            tracing::info!(device, "frames parse again");
        }
    }
}

/// The adapter for one validated device.
pub(crate) struct SerialAdapter {
    pub(crate) device: Arc<SerialDevice>,
    pub(crate) stats: Arc<SerialStats>,
}

impl Adapter for SerialAdapter {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(async move {
            match &self.device.mode {
                Mode::Stream { .. } => {
                    let cancel = ctx.cancel.clone();
                    let mut s = Stream::new(self.device.clone(), self.stats.clone(), ctx);
                    match cancel.run_until_cancelled(s.run()).await {
                        Some(r) => r,
                        None => Ok(()),
                    }
                }
                Mode::Polled(requests) => {
                    let points = self
                        .device
                        .points
                        .iter()
                        .map(|p| PollPoint {
                            name: p.name.clone(),
                            writable: p.writable,
                        })
                        .collect();
                    let plan = PollPlan {
                        groups: requests
                            .iter()
                            .enumerate()
                            .map(|(i, r)| PollGroup {
                                interval: r.interval,
                                points: self
                                    .device
                                    .points
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, p)| p.request == Some(i) && p.source.is_some())
                                    .map(|(n, _)| n)
                                    .collect(),
                            })
                            .collect(),
                    };
                    // The request's own timeout (and a write's reply timeout) end first; the poller's is only a
                    // safety net.
                    let longest_reply = self
                        .device
                        .points
                        .iter()
                        .filter_map(|p| p.write.as_ref().map(|w| w.reply_timeout))
                        .max()
                        .unwrap_or_default();
                    let settings = PollerSettings {
                        timeout: self.device.timeout.max(longest_reply) * 2
                            + Duration::from_secs(1),
                        retries: self.device.retries,
                        backoff_min: self.device.reopen_min,
                        backoff_max: self.device.reopen_max,
                        ..PollerSettings::default()
                    };
                    let poller = Poller::new(points, plan, settings);
                    let port = PolledPort {
                        device: self.device.clone(),
                        stats: self.stats.clone(),
                        port: None,
                        framer: Framer::new(self.device.framing.clone()),
                        log: ErrorLog::default(),
                    };
                    poller.run(ctx, port).await
                }
            }
        })
    }
}

/// A write waiting for its reply.
struct Pending {
    reply: tokio::sync::oneshot::Sender<Result<(), CommandError>>,
    spec: WriteSpec,
    deadline: Instant,
}

/// Whether a frame answers a write: `Some(result)` when it matches `reply` or `reply_error`.
fn reply_result(spec: &WriteSpec, frame: &[u8]) -> Option<Result<(), CommandError>> {
    if spec.reply_error.as_ref().is_some_and(|r| r.is_match(frame)) {
        return Some(Err(CommandError::Device(format!(
            "device answered `{}`",
            escape(&frame[..frame.len().min(80)])
        ))));
    }
    if spec.reply.as_ref().is_some_and(|r| r.is_match(frame)) {
        return Some(Ok(()));
    }
    None
}

fn render(device: &SerialDevice, cmd: &Command) -> Result<(Vec<u8>, WriteSpec), CommandError> {
    let Some(p) = device.points.iter().find(|p| p.name == cmd.point) else {
        return Err(CommandError::UnknownPoint(cmd.point.to_string()));
    };
    let Some(w) = p.write.as_ref().filter(|_| p.writable) else {
        return Err(CommandError::ReadOnly(cmd.point.to_string()));
    };
    let bytes = w
        .template
        .render(&cmd.value)
        .map_err(|e| CommandError::InvalidValue(e.to_string()))?;
    Ok((bytes, w.clone()))
}

/// A streaming device's run.
struct Stream {
    device: Arc<SerialDevice>,
    stats: Arc<SerialStats>,
    ctx: AdapterContext,
    framer: Framer,
    log: ErrorLog,
    online: Option<bool>,
    commands_open: bool,
}

impl Stream {
    fn new(device: Arc<SerialDevice>, stats: Arc<SerialStats>, ctx: AdapterContext) -> Self {
        Stream {
            framer: Framer::new(device.framing.clone()),
            device,
            stats,
            ctx,
            log: ErrorLog::default(),
            online: None,
            commands_open: true,
        }
    }

    fn set_online(&mut self) {
        if self.online != Some(true) {
            tracing::info!(device = %self.device.name, port = %self.device.port, "device online");
            self.online = Some(true);
        }
        self.ctx.status.set(DeviceStatus::Online);
    }

    fn set_offline(&mut self, reason: String) {
        if self.online != Some(false) {
            tracing::warn!(device = %self.device.name, port = %self.device.port.path, "device offline: {reason}");
            self.online = Some(false);
        }
        self.ctx.status.set(DeviceStatus::Offline(reason));
    }

    async fn run(&mut self) -> Result<(), AdapterError> {
        let mut backoff = Backoff::new(self.device.reopen_min, self.device.reopen_max);
        loop {
            let reason = match open(&self.device.port) {
                Ok(port) => {
                    SerialStats::bump(&self.stats.opens);
                    backoff.reset();
                    let dropped = self.framer.reset();
                    SerialStats::add(&self.stats.discarded_bytes, dropped as u64);
                    if self.device.silence_timeout.is_none() {
                        self.set_online();
                    }
                    self.session(port).await?
                }
                Err(e) => format!("cannot open {}: {e}", self.device.port.path),
            };
            SerialStats::bump(&self.stats.port_errors);
            self.set_offline(reason);
            let delay = backoff.next_delay();
            self.wait_refusing_writes(delay).await?;
        }
    }

    /// Waits while the port is closed; writes in the meantime fail at once (the device is unreachable).
    async fn wait_refusing_writes(&mut self, delay: Duration) -> Result<(), AdapterError> {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                cmd = self.ctx.commands.recv(), if self.commands_open => match cmd {
                    Some(cmd) => {
                        SerialStats::bump(&self.stats.writes_failed);
                        let _ = cmd.reply.send(Err(CommandError::Transport(format!(
                            "{} is not open", self.device.port.path
                        ))));
                    }
                    None => self.commands_open = false,
                },
            }
        }
    }

    /// Reads the open port until it fails; returns why.
    async fn session(&mut self, mut port: SerialStream) -> Result<String, AdapterError> {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut pending: Option<Pending> = None;
        let mut last_byte = Instant::now();
        let mut last_frame = Instant::now();
        let far = Duration::from_secs(86400 * 365);
        let reason = loop {
            let reply_deadline = pending
                .as_ref()
                .map_or(Instant::now() + far, |p| p.deadline);
            let silence_deadline = self
                .device
                .silence_timeout
                .filter(|_| self.online == Some(true))
                .map_or(Instant::now() + far, |s| last_frame + s);
            tokio::select! {
                r = port.read(&mut buf) => match r {
                    Ok(0) => break "the port closed (end of file)".to_owned(),
                    Err(e) => break format!("read error on {}: {e}", self.device.port.path),
                    Ok(n) => {
                        SerialStats::add(&self.stats.bytes, n as u64);
                        let now = Instant::now();
                        if let Some(gap) = self.device.gap {
                            if now.duration_since(last_byte) > gap {
                                let dropped = self.framer.reset();
                                SerialStats::add(&self.stats.discarded_bytes, dropped as u64);
                            }
                        }
                        last_byte = now;
                        let mut events = Vec::new();
                        self.framer.push(&buf[..n], &mut events);
                        for e in events {
                            let Some(frame) = count_event(&self.stats, e) else { continue };
                            if let Some(p) = pending.take() {
                                match reply_result(&p.spec, &frame) {
                                    Some(result) => {
                                        SerialStats::bump(if result.is_ok() { &self.stats.writes_ok } else { &self.stats.writes_failed });
                                        let _ = p.reply.send(result);
                                        continue;
                                    }
                                    None => pending = Some(p),
                                }
                            }
                            if self.frame(&frame).await? {
                                last_frame = Instant::now();
                                if self.device.silence_timeout.is_some() {
                                    self.set_online();
                                }
                            }
                        }
                    }
                },
                cmd = self.ctx.commands.recv(), if self.commands_open && pending.is_none() => match cmd {
                    None => self.commands_open = false,
                    Some(cmd) => match render(&self.device, &cmd) {
                        Err(e) => {
                            SerialStats::bump(&self.stats.writes_failed);
                            let _ = cmd.reply.send(Err(e));
                        }
                        Ok((bytes, spec)) => {
                            let written = async {
                                port.write_all(&bytes).await?;
                                port.flush().await
                            };
                            match tokio::time::timeout(spec.reply_timeout.max(Duration::from_secs(1)), written).await {
                                Ok(Ok(())) if spec.reply.is_none() && spec.reply_error.is_none() => {
                                    SerialStats::bump(&self.stats.writes_ok);
                                    let _ = cmd.reply.send(Ok(()));
                                }
                                Ok(Ok(())) => {
                                    pending = Some(Pending {
                                        reply: cmd.reply,
                                        deadline: Instant::now() + spec.reply_timeout,
                                        spec,
                                    });
                                }
                                Ok(Err(e)) => {
                                    SerialStats::bump(&self.stats.writes_failed);
                                    let msg = format!("write error on {}: {e}", self.device.port.path);
                                    let _ = cmd.reply.send(Err(CommandError::Transport(msg.clone())));
                                    break msg;
                                }
                                Err(_) => {
                                    SerialStats::bump(&self.stats.writes_failed);
                                    let _ = cmd.reply.send(Err(CommandError::Timeout));
                                }
                            }
                        }
                    },
                },
                _ = tokio::time::sleep_until(reply_deadline), if pending.is_some() => {
                    if let Some(p) = pending.take() {
                        SerialStats::bump(&self.stats.writes_failed);
                        let _ = p.reply.send(Err(CommandError::Timeout));
                    }
                }
                _ = tokio::time::sleep_until(silence_deadline), if self.device.silence_timeout.is_some() && self.online == Some(true) => {
                    let s = self.device.silence_timeout.unwrap_or_default();
                    self.set_offline(format!("no valid frame for {}", fieldbridge_sdk::config::format_duration(s)));
                }
            }
        };
        if let Some(p) = pending.take() {
            SerialStats::bump(&self.stats.writes_failed);
            let _ = p.reply.send(Err(CommandError::Transport(reason.clone())));
        }
        Ok(reason)
    }

    /// Parses one frame and publishes its readings; returns whether the frame parsed.
    async fn frame(&mut self, frame: &[u8]) -> Result<bool, AdapterError> {
        let Mode::Stream { parser, on_error } = &self.device.mode else {
            return Ok(false);
        };
        let on_error = *on_error;
        let ts = SystemTime::now();
        let device = self.device.clone();
        let values = match decode_frame(parser, &device.points, |_| true, frame) {
            Ok(v) => {
                self.log.ok(&device.name);
                v
            }
            Err(e) => {
                SerialStats::bump(if e.is_checksum() {
                    &self.stats.checksum_errors
                } else {
                    &self.stats.parse_errors
                });
                self.log.failed(&device.name, "frame rejected", &e);
                if on_error == OnError::Bad {
                    for p in device.points.iter().filter(|p| p.source.is_some()) {
                        self.send(
                            p,
                            fieldbridge_sdk::poller::NO_VALUE,
                            Quality::Bad(e.to_string()),
                            ts,
                        )
                        .await?;
                    }
                }
                return Ok(false);
            }
        };
        for (i, v) in values {
            let p = &device.points[i];
            match v {
                Ok(v) => self.send(p, v, Quality::Good, ts).await?,
                Err(msg) => {
                    SerialStats::bump(&self.stats.conversion_errors);
                    self.log
                        .failed(&device.name, &format!("point `{}`", p.name), &msg);
                    if on_error == OnError::Bad {
                        self.send(p, fieldbridge_sdk::poller::NO_VALUE, Quality::Bad(msg), ts)
                            .await?;
                    }
                }
            }
        }
        Ok(true)
    }

    async fn send(
        &self,
        p: &SerialPoint,
        value: Value,
        quality: Quality,
        ts: SystemTime,
    ) -> Result<(), AdapterError> {
        SerialStats::bump(&self.stats.readings);
        self.ctx
            .output
            .send(Reading {
                device: self.device.name.clone(),
                point: p.name.clone(),
                value,
                quality,
                ts,
            })
            .await?;
        Ok(())
    }
}

/// The [`PollDevice`] of a polled serial device.
struct PolledPort {
    device: Arc<SerialDevice>,
    stats: Arc<SerialStats>,
    port: Option<SerialStream>,
    framer: Framer,
    log: ErrorLog,
}

impl PolledPort {
    /// Throws away whatever is already buffered before a request or write is sent: a late answer to an earlier
    /// exchange, unsolicited output. Reads the port without waiting (`try_read` goes straight to the file
    /// descriptor, so bytes the runtime has not yet reported as readable are caught too). Bounded.
    async fn drain(&mut self) -> Result<(), TransportError> {
        let dropped = self.framer.reset();
        SerialStats::add(&self.stats.discarded_bytes, dropped as u64);
        let mut buf = [0u8; READ_CHUNK];
        for _ in 0..64 {
            let Some(port) = self.port.as_mut() else {
                return Err(TransportError::connection("the port is not open"));
            };
            match port.try_read(&mut buf) {
                Ok(0) => return self.broken("the port closed (end of file)".into()),
                Ok(n) => self.discard(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return self.broken(format!("read error: {e}")),
            }
        }
        // A partial frame left over: its bytes are already counted as discarded.
        self.framer.reset();
        Ok(())
    }

    /// After a request or write got no answer in time (the poller reconnects after every transport error): the
    /// device may still be answering the abandoned exchange. Reads and discards until the line has been quiet
    /// for the device's `timeout` (at most twice that in all, for a device that never stops talking), so that
    /// a late answer arriving up to one more `timeout` after the deadline is not taken for the next request's.
    async fn settle(&mut self) -> Result<(), TransportError> {
        let quiet = self.device.timeout;
        let start = Instant::now();
        let cap = start + quiet * 2;
        let mut quiet_until = start + quiet;
        let dropped = self.framer.reset();
        SerialStats::add(&self.stats.discarded_bytes, dropped as u64);
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let Some(port) = self.port.as_mut() else {
                return Err(TransportError::connection("the port is not open"));
            };
            match tokio::time::timeout_at(quiet_until.min(cap), port.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) => return self.broken("the port closed (end of file)".into()),
                Ok(Err(e)) => return self.broken(format!("read error: {e}")),
                Ok(Ok(n)) => {
                    self.discard(&buf[..n]);
                    quiet_until = Instant::now() + quiet;
                }
            }
        }
        self.framer.reset();
        self.drain().await
    }

    /// Bytes nobody waits for: counted as discarded; the complete frames among them are counted as stale and
    /// logged at debug level (never published).
    fn discard(&mut self, bytes: &[u8]) {
        SerialStats::add(&self.stats.discarded_bytes, bytes.len() as u64);
        let mut events = Vec::new();
        self.framer.push(bytes, &mut events);
        for e in events {
            if let Event::Frame(f) = e {
                self.stale(&f);
            }
        }
    }

    /// Counts and logs one frame that no request was waiting for.
    fn stale(&self, frame: &[u8]) {
        SerialStats::bump(&self.stats.stale_frames);
        tracing::debug!(
            device = %self.device.name,
            frame = %escape(&frame[..frame.len().min(80)]),
            "discarded a frame no request was waiting for (a late answer or unsolicited output)"
        );
    }

    fn broken<T>(&mut self, reason: String) -> Result<T, TransportError> {
        self.port = None;
        SerialStats::bump(&self.stats.port_errors);
        Err(TransportError::Connection(format!(
            "{}: {reason}",
            self.device.port.path
        )))
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.drain().await?;
        let Some(port) = self.port.as_mut() else {
            return Err(TransportError::connection("the port is not open"));
        };
        let r = async {
            port.write_all(bytes).await?;
            port.flush().await
        };
        match tokio::time::timeout(self.device.timeout.max(Duration::from_secs(1)), r).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => self.broken(format!("write error: {e}")),
            Err(_) => Err(TransportError::Timeout(self.device.timeout)),
        }
    }

    /// The next frame before `deadline`: `Ok(None)` on timeout.
    async fn next_frame(
        &mut self,
        deadline: Instant,
        queue: &mut Vec<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            if !queue.is_empty() {
                return Ok(Some(queue.remove(0)));
            }
            let Some(port) = self.port.as_mut() else {
                return Err(TransportError::connection("the port is not open"));
            };
            match tokio::time::timeout_at(deadline, port.read(&mut buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return self.broken("the port closed (end of file)".into()),
                Ok(Err(e)) => return self.broken(format!("read error: {e}")),
                Ok(Ok(n)) => {
                    SerialStats::add(&self.stats.bytes, n as u64);
                    let mut events = Vec::new();
                    self.framer.push(&buf[..n], &mut events);
                    queue.extend(
                        events
                            .into_iter()
                            .filter_map(|e| count_event(&self.stats, e)),
                    );
                }
            }
        }
    }

    async fn request(&mut self, group: usize) -> Result<GroupReading, TransportError> {
        let Mode::Polled(requests) = &self.device.mode else {
            return Ok(Vec::new());
        };
        let Some(req) = requests.get(group).cloned() else {
            return Ok(Vec::new());
        };
        self.send(&req.send).await?;
        SerialStats::bump(&self.stats.requests);
        let deadline = Instant::now() + self.device.timeout;
        let mut queue = Vec::new();
        let mut last_error: Option<ParseError> = None;
        let device = self.device.clone();
        while let Some(frame) = self.next_frame(deadline, &mut queue).await? {
            match decode_frame(
                &req.parser,
                &device.points,
                |p| p.request == Some(group),
                &frame,
            ) {
                Ok(values) => {
                    self.log.ok(&device.name);
                    // Frames that came in the same read after the answer belong to no request.
                    for f in queue.drain(..) {
                        self.stale(&f);
                    }
                    let mut out = GroupReading::new();
                    for (i, v) in values {
                        match v {
                            Ok(v) => out.push((i, Ok(v))),
                            Err(msg) => {
                                SerialStats::bump(&self.stats.conversion_errors);
                                self.log.failed(
                                    &device.name,
                                    &format!("point `{}`", device.points[i].name),
                                    &msg,
                                );
                                if req.on_error == OnError::Bad {
                                    out.push((i, Err(DeviceException::new(msg))));
                                }
                            }
                        }
                    }
                    return Ok(out);
                }
                Err(e) => {
                    // An echo, a prompt, line noise: keep waiting for the answer until the timeout.
                    SerialStats::bump(if e.is_checksum() {
                        &self.stats.checksum_errors
                    } else {
                        &self.stats.parse_errors
                    });
                    self.log.failed(
                        &device.name,
                        &format!("answer to `{}` rejected", req.name),
                        &e,
                    );
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            // The device answered, but nothing usable: it is there, its answer is bad.
            Some(e) if req.on_error == OnError::Bad => Ok(device
                .points
                .iter()
                .enumerate()
                .filter(|(_, p)| p.request == Some(group) && p.source.is_some())
                .map(|(i, _)| (i, Err(DeviceException::new(e.to_string()))))
                .collect()),
            Some(_) => Ok(Vec::new()),
            None => {
                SerialStats::bump(&self.stats.timeouts);
                Err(TransportError::Timeout(self.device.timeout))
            }
        }
    }

    async fn write_point(&mut self, point: usize, value: Value) -> Result<(), CommandError> {
        let device = self.device.clone();
        let Some(p) = device.points.get(point) else {
            return Err(CommandError::UnknownPoint(point.to_string()));
        };
        let Some(w) = p.write.as_ref() else {
            return Err(CommandError::ReadOnly(p.name.to_string()));
        };
        let result = async {
            let bytes = w
                .template
                .render(&value)
                .map_err(|e| CommandError::InvalidValue(e.to_string()))?;
            self.send(&bytes)
                .await
                .map_err(|e| CommandError::Transport(e.to_string()))?;
            if w.reply.is_none() && w.reply_error.is_none() {
                return Ok(());
            }
            let deadline = Instant::now() + w.reply_timeout;
            let mut queue = Vec::new();
            while let Some(frame) = self
                .next_frame(deadline, &mut queue)
                .await
                .map_err(|e| CommandError::Transport(e.to_string()))?
            {
                if let Some(r) = reply_result(w, &frame) {
                    for f in queue.drain(..) {
                        self.stale(&f);
                    }
                    return r;
                }
            }
            Err(CommandError::Timeout)
        }
        .await;
        SerialStats::bump(if result.is_ok() {
            &self.stats.writes_ok
        } else {
            &self.stats.writes_failed
        });
        result
    }
}

impl PollDevice for PolledPort {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if self.port.is_some() {
                // Called again after a transport error (a timeout): the port itself is fine, but a late answer
                // to the abandoned exchange may still be on its way. Let it arrive and discard it.
                return self.settle().await;
            }
            match open(&self.device.port) {
                Ok(p) => {
                    SerialStats::bump(&self.stats.opens);
                    self.port = Some(p);
                    let dropped = self.framer.reset();
                    SerialStats::add(&self.stats.discarded_bytes, dropped as u64);
                    Ok(())
                }
                Err(e) => {
                    SerialStats::bump(&self.stats.port_errors);
                    Err(TransportError::Connection(format!(
                        "cannot open {}: {e}",
                        self.device.port.path
                    )))
                }
            }
        })
    }

    fn read(&mut self, group: usize) -> BoxFuture<'_, Result<GroupReading, TransportError>> {
        Box::pin(self.request(group))
    }

    fn write(&mut self, point: usize, value: Value) -> BoxFuture<'_, Result<(), CommandError>> {
        Box::pin(self.write_point(point, value))
    }
}
