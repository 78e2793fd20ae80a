//! Lines: one connection per serial port or TCP endpoint, shared by every device on it.
//!
//! An RS-485 bus carries many units over one port, and a Modbus TCP gateway serves many units over one
//! endpoint. Opening the port once per device fails (the port is exclusive) or garbles frames (two masters on
//! one bus), and most gateways accept few TCP connections. So devices do not own connections: they borrow a
//! [`Line`] from the factory's [`LineRegistry`], keyed by endpoint, and every request holds the line's lock
//! for exactly one request/response (plus the device's `inter_request_delay`). The lock is FIFO-fair, so a
//! device with many points cannot starve its neighbours, and a dead unit delays the others by at most one
//! timeout per request.
//!
//! # Errors and reconnection
//!
//! A line connects lazily (at the first request) and drops its connection on any transport error on a stream
//! (TCP, RTU over TCP): after a timeout a late answer may still arrive and would be taken for the answer to
//! the next request. A serial port is only reopened after an I/O error; a timeout there just means that one
//! unit did not answer, and the next unit on the bus must not pay for it. Stale bytes (a late answer) are
//! discarded before every request (by the Modbus TCP client itself, by [`Drain`] on RTU lines). A request
//! abandoned half-way (the caller's future was dropped) leaves the line marked suspect, and the next request
//! starts from a fresh connection.
//!
//! Connecting again is the only recovery a line needs: a server that starts after us, restarts, or a USB
//! adapter that is re-plugged, all come back at the next request. Pacing (backoff while a device is down) is
//! the poller's job. One case is handled within a request: a stream connection that served earlier requests
//! and that the device has closed since (some devices and gateways allow one request per connection, others
//! close idle ones) fails the request before any byte of an answer arrives; the request is then sent once
//! more on a new connection, so that a poll of several requests does not fail at its second one.
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::client::{self, Client as _};
use tokio_modbus::slave::{Slave, SlaveContext as _};
use tokio_modbus::{ExceptionCode, Request, Response};

pub use fieldbridge_sdk::poller::TransportError;

use crate::mbap::{MbapError, TcpClient};
use fieldbridge_sdk::{Lease, SharedPool};

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    /// No parity bit (usually with 2 stop bits per the Modbus spec, but 1 is common).
    None,
    /// Even parity (the Modbus RTU default).
    Even,
    /// Odd parity.
    Odd,
}

impl fmt::Display for Parity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        })
    }
}

/// Settings of a serial port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    /// Device path, e.g. `/dev/ttyUSB0`.
    pub path: String,
    /// Baud rate.
    pub baud: u32,
    /// 5–8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    /// Silence kept between the end of one frame and the start of the next (Modbus RTU's 3.5 character
    /// times, which slow devices need longer).
    pub frame_gap: Duration,
}

impl SerialSettings {
    /// The spec's inter-frame silence: 3.5 characters of 11 bits, fixed at 1.75 ms above 19200 baud.
    pub fn default_frame_gap(baud: u32) -> Duration {
        if baud == 0 || baud > 19200 {
            Duration::from_micros(1750)
        } else {
            Duration::from_secs_f64(3.5 * 11.0 / f64::from(baud))
        }
    }
}

impl fmt::Display for SerialSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} baud {}{}{}",
            self.path,
            self.baud,
            self.data_bits,
            match self.parity {
                Parity::None => 'N',
                Parity::Even => 'E',
                Parity::Odd => 'O',
            },
            self.stop_bits
        )
    }
}

/// Where a line goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Modbus TCP (MBAP framing), `host:port`.
    Tcp(String),
    /// RTU framing over a TCP socket (serial device servers, transparent gateways), `host:port`.
    RtuOverTcp(String),
    /// RTU over a local serial port.
    Serial(SerialSettings),
}

impl Endpoint {
    /// The registry key: what makes two devices share a line. For serial ports only the path counts (two
    /// devices naming the same port with different settings is a conflict, not two lines).
    pub fn key(&self) -> String {
        match self {
            Endpoint::Tcp(a) => format!("tcp://{}", a.to_ascii_lowercase()),
            Endpoint::RtuOverTcp(a) => format!("rtu+tcp://{}", a.to_ascii_lowercase()),
            Endpoint::Serial(s) => format!("serial://{}", s.path),
        }
    }

    fn is_stream(&self) -> bool {
        !matches!(self, Endpoint::Serial(_))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp {a}"),
            Endpoint::RtuOverTcp(a) => write!(f, "rtu over tcp {a}"),
            Endpoint::Serial(s) => write!(f, "serial {s}"),
        }
    }
}

/// Two devices name the same port with different settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} is already open as `{existing}` by another device; this device asks for `{wanted}`")]
pub struct LineConflict {
    /// The registry key.
    pub key: String,
    /// The settings of the open line.
    pub existing: String,
    /// The settings asked for.
    pub wanted: String,
}

/// The lines of one factory, keyed by [`Endpoint::key`]: the SDK's [`SharedPool`], so a line closes when the
/// last device using it stops (reload, shutdown), and a later device with other settings may then reopen it.
#[derive(Debug, Clone, Default)]
pub struct LineRegistry {
    lines: SharedPool<Line>,
}

/// A device's hold on a line (the line stays open while one exists).
pub type LineLease = Lease<Line>;

impl LineRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        LineRegistry::default()
    }

    /// The line for `endpoint`, creating it (without I/O) if no live device holds it.
    pub fn acquire(&self, endpoint: &Endpoint) -> Result<LineLease, LineConflict> {
        let key = endpoint.key();
        self.lines.acquire(
            &key,
            |line| {
                if line.endpoint == *endpoint {
                    Ok(())
                } else {
                    Err(LineConflict {
                        key: key.clone(),
                        existing: line.endpoint.to_string(),
                        wanted: endpoint.to_string(),
                    })
                }
            },
            |_stop| Ok(Line::new(endpoint.clone())),
        )
    }

    /// How many lines are open (held by a live device), for tests and metrics.
    pub fn open_lines(&self) -> usize {
        self.lines.open()
    }
}

/// One shared connection. See the module documentation.
pub struct Line {
    endpoint: Endpoint,
    state: tokio::sync::Mutex<LineState>,
}

/// An open connection: Modbus TCP on the crate's own small-buffer client, RTU framing through tokio-modbus.
enum Conn {
    /// Boxed: the client holds its 260-byte frame buffer inline.
    Tcp(Box<TcpClient>),
    /// `received` sees the bytes tokio-modbus reads (through [`Drain`]), to say why an answer was refused.
    Rtu {
        ctx: client::Context,
        received: Received,
    },
}

/// Why a call on a connection failed.
enum CallFailure {
    Io(io::Error),
    /// The device had closed the connection before any byte of the answer arrived (see
    /// [`MbapError::Closed`]).
    Closed(io::Error),
    Protocol(String),
    Timeout,
}

impl Conn {
    fn rtu<T>(transport: T) -> Conn
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let drain = Drain::new(transport);
        let received = drain.received.clone();
        Conn::Rtu {
            ctx: client::rtu::attach_slave(drain, Slave(1)),
            received,
        }
    }

    async fn call(
        &mut self,
        unit: u8,
        request: &Request<'_>,
    ) -> Result<Result<Response, ExceptionCode>, CallFailure> {
        match self {
            Conn::Tcp(c) => c.call(unit, request).await.map_err(|e| match e {
                MbapError::Io(e) => CallFailure::Io(e),
                MbapError::Closed(e) => CallFailure::Closed(e),
                MbapError::Protocol(m) => CallFailure::Protocol(m),
            }),
            Conn::Rtu { ctx, received } => {
                received.clear();
                ctx.set_slave(Slave(unit));
                let fc = request.function_code().value();
                ctx.call(request.clone()).await.map_err(|e| match e {
                    tokio_modbus::Error::Transport(e)
                        if crate::mbap::is_closed(&e) && received.is_empty() =>
                    {
                        CallFailure::Closed(e)
                    }
                    tokio_modbus::Error::Transport(e) => CallFailure::Io(e),
                    tokio_modbus::Error::Protocol(e) => {
                        CallFailure::Protocol(rtu_protocol_reason(unit, fc, &e))
                    }
                })
            }
        }
    }

    /// Why an RTU answer that tokio-modbus could not take was refused, when the bytes that arrived say it:
    /// a frame whose CRC is wrong is skipped by tokio-modbus byte by byte, which ends in a timeout (or in
    /// "too many retries") instead of an error naming the CRC.
    fn refused_answer(&self, fc: u8) -> Option<String> {
        let Conn::Rtu { received, .. } = self else {
            return None;
        };
        let rx = received.bytes();
        let (len, got, want) = bad_crc(&rx, fc)?;
        tracing::debug!(
            frame = ?&rx[..len],
            received_crc = format_args!("{got:#06x}"),
            computed_crc = format_args!("{want:#06x}"),
            "RTU answer with a bad CRC"
        );
        // Stable text (no CRC values, which change with the data): the status reason is republished, and
        // logged, whenever it changes.
        Some(format!(
            "answer with a bad CRC ({len}-byte answer to function {fc:#04x})"
        ))
    }
}

/// An RTU protocol error in plain words. tokio-modbus's own text is its Rust debug output
/// (`mismatching headers: expected/request = Header { slave_id: 1 }, ...`).
fn rtu_protocol_reason(unit: u8, fc: u8, e: &tokio_modbus::ProtocolError) -> String {
    match e {
        tokio_modbus::ProtocolError::HeaderMismatch { message, .. } => {
            // The only header field of an RTU frame is the slave id; the answer's is the last one named.
            let from = message
                .rsplit("slave_id: ")
                .next()
                .and_then(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse::<u8>().ok()
                })
                .filter(|from| *from != unit);
            match from {
                Some(from) => format!("answer from unit {from}, expected unit {unit}"),
                None => format!("answer from another unit, expected unit {unit}"),
            }
        }
        tokio_modbus::ProtocolError::FunctionCodeMismatch { result, .. } => {
            let rfc = match result {
                Ok(r) => r.function_code().value(),
                Err(exc) => exc.function.value(),
            };
            format!("function code {rfc:#04x} in the answer to function {fc:#04x}")
        }
    }
}

/// If `rx` starts with an RTU answer to function `fc` (or its exception) whose CRC is wrong: the frame's
/// length, the CRC it carries and the CRC of its contents.
fn bad_crc(rx: &[u8], fc: u8) -> Option<(usize, u16, u16)> {
    let rfc = *rx.get(1)?;
    let len = if rfc == fc | 0x80 {
        5
    } else if rfc != fc {
        return None;
    } else {
        match fc {
            0x01..=0x04 => 5 + usize::from(*rx.get(2)?),
            0x05 | 0x06 | 0x0F | 0x10 => 8,
            _ => return None,
        }
    };
    let frame = rx.get(..len)?;
    let (body, crc) = frame.split_at(len - 2);
    let got = u16::from_le_bytes([crc[0], crc[1]]);
    let want = fieldbridge_sdk::checksum::crc16_modbus(body);
    (got != want).then_some((len, got, want))
}

struct LineState {
    ctx: Option<Conn>,
    /// Set while a request is on the wire; still set at the next lock means the request was abandoned.
    in_flight: bool,
    /// When the bus went quiet (serial frame gap).
    quiet_since: Option<Instant>,
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Line")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// What one request got: the device's answer (a response or an exception), or a transport error.
pub type CallResult = Result<Result<Response, ExceptionCode>, TransportError>;

impl Line {
    /// A line that will connect at its first request.
    pub fn new(endpoint: Endpoint) -> Self {
        Line {
            endpoint,
            state: tokio::sync::Mutex::new(LineState {
                ctx: None,
                in_flight: false,
                quiet_since: None,
            }),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Opens the connection if there is none (or it is suspect). `timeout` bounds the connect, not the wait
    /// for the line.
    pub async fn ensure_connected(&self, timeout: Duration) -> Result<(), TransportError> {
        let mut st = self.state.lock().await;
        self.prepare(&mut st, timeout).await.map(drop)
    }

    /// Sends one request to `unit` and waits up to `timeout` for its answer, then keeps the line quiet for
    /// `delay_after` (slow devices). Waiting for the line itself is not bounded here: every holder bounds its
    /// own request.
    ///
    /// A stream connection that served earlier requests and that the device has closed since (devices that
    /// allow one request per connection, or close idle ones) fails the request before any byte of an answer
    /// arrives: then the request is sent once more, on a new connection, instead of failing. A fresh
    /// connection closed that way is an error at once.
    pub async fn call(
        &self,
        unit: u8,
        request: Request<'_>,
        timeout: Duration,
        delay_after: Duration,
    ) -> CallResult {
        let mut st = self.state.lock().await;
        let mut fresh = self.prepare(&mut st, timeout).await?;
        let out = loop {
            match self.exchange(&mut st, unit, &request, timeout).await {
                Ok(answer) => break Ok(answer),
                Err(CallFailure::Closed(e)) if !fresh && self.endpoint.is_stream() => {
                    tracing::debug!(
                        endpoint = %self.endpoint,
                        error = %e,
                        "the device closed the connection since the last request; reconnecting to send it"
                    );
                    st.ctx = None;
                    match self.prepare(&mut st, timeout).await {
                        Ok(_) => fresh = true,
                        Err(e) => break Err(e),
                    }
                }
                Err(failure) => break Err(self.failed(&mut st, failure, timeout)),
            }
        };
        if !delay_after.is_zero() {
            tokio::time::sleep(delay_after).await;
        }
        out
    }

    /// One request on the open connection, under `timeout`.
    async fn exchange(
        &self,
        st: &mut LineState,
        unit: u8,
        request: &Request<'_>,
        timeout: Duration,
    ) -> Result<Result<Response, ExceptionCode>, CallFailure> {
        if let (Endpoint::Serial(s), Some(q)) = (&self.endpoint, st.quiet_since) {
            tokio::time::sleep_until(q + s.frame_gap).await;
        }
        let Some(ctx) = st.ctx.as_mut() else {
            return Err(CallFailure::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "not connected",
            )));
        };
        st.in_flight = true;
        let result = tokio::time::timeout(timeout, ctx.call(unit, request))
            .await
            .unwrap_or(Err(CallFailure::Timeout));
        st.in_flight = false;
        st.quiet_since = Some(Instant::now());
        match result {
            Err(CallFailure::Timeout) | Err(CallFailure::Io(_)) => {
                let fc = request.function_code().value();
                match st.ctx.as_ref().and_then(|c| c.refused_answer(fc)) {
                    Some(why) => Err(CallFailure::Protocol(why)),
                    None => result,
                }
            }
            other => other,
        }
    }

    /// The transport error for a failed request; drops the connection where it can no longer be trusted.
    fn failed(
        &self,
        st: &mut LineState,
        failure: CallFailure,
        timeout: Duration,
    ) -> TransportError {
        match failure {
            CallFailure::Io(e) | CallFailure::Closed(e) => {
                st.ctx = None;
                TransportError::Connection(io_reason(&e))
            }
            CallFailure::Protocol(e) => {
                if self.endpoint.is_stream() {
                    st.ctx = None;
                }
                TransportError::Protocol(e)
            }
            CallFailure::Timeout => {
                if self.endpoint.is_stream() {
                    st.ctx = None;
                }
                TransportError::Timeout(timeout)
            }
        }
    }

    /// Opens the connection if there is none (or it is suspect); returns whether it opened one.
    async fn prepare(&self, st: &mut LineState, timeout: Duration) -> Result<bool, TransportError> {
        if st.in_flight {
            st.in_flight = false;
            if self.endpoint.is_stream() {
                st.ctx = None;
            }
        }
        if st.ctx.is_none() {
            let ctx = tokio::time::timeout(timeout, self.open())
                .await
                .map_err(|_| TransportError::Timeout(timeout))?
                .map_err(|e| {
                    TransportError::Connection(format!("{}: {}", self.endpoint, io_reason(&e)))
                })?;
            st.ctx = Some(ctx);
            st.quiet_since = None;
            tracing::debug!(endpoint = %self.endpoint, "modbus line connected");
            return Ok(true);
        }
        Ok(false)
    }

    async fn open(&self) -> io::Result<Conn> {
        match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(Box::new(TcpClient::new(s))))
            }
            Endpoint::RtuOverTcp(addr) => {
                let s = TcpStream::connect(addr.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Conn::rtu(s))
            }
            Endpoint::Serial(cfg) => {
                use tokio_serial::SerialPortBuilderExt as _;
                let builder = tokio_serial::new(cfg.path.as_str(), cfg.baud)
                    .data_bits(match cfg.data_bits {
                        5 => tokio_serial::DataBits::Five,
                        6 => tokio_serial::DataBits::Six,
                        7 => tokio_serial::DataBits::Seven,
                        _ => tokio_serial::DataBits::Eight,
                    })
                    .parity(match cfg.parity {
                        Parity::None => tokio_serial::Parity::None,
                        Parity::Even => tokio_serial::Parity::Even,
                        Parity::Odd => tokio_serial::Parity::Odd,
                    })
                    .stop_bits(if cfg.stop_bits == 2 {
                        tokio_serial::StopBits::Two
                    } else {
                        tokio_serial::StopBits::One
                    });
                let port = builder.open_native_async().map_err(io::Error::from)?;
                Ok(Conn::rtu(port))
            }
        }
    }
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "connection closed by the device".to_owned(),
        _ => e.to_string(),
    }
}

/// A transport wrapper that throws away whatever is waiting to be read before each write.
///
/// Modbus is strictly request/response, so bytes present before a request is sent can only be the late
/// answer to an abandoned request (or line noise); left there, they would be parsed as the answer to the new
/// request. tokio-modbus clears its own buffer but not the socket's.
///
/// It also keeps a copy of the first bytes read since the line last cleared it (the answer to the current
/// request, up to one RTU frame), so that the line can say why tokio-modbus refused an answer.
pub struct Drain<T> {
    inner: T,
    received: Received,
}

impl<T> Drain<T> {
    /// Wraps a transport.
    pub fn new(inner: T) -> Self {
        Drain {
            inner,
            received: Received::default(),
        }
    }
}

/// The bytes read on an RTU connection since the current request (at most one RTU frame's worth), shared
/// between the [`Drain`] inside tokio-modbus and the line.
#[derive(Debug, Clone, Default)]
struct Received(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Received {
    /// The longest RTU frame.
    const MAX: usize = 256;

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn push(&self, bytes: &[u8]) {
        let mut v = self.lock();
        let room = Self::MAX.saturating_sub(v.len());
        v.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn bytes(&self) -> Vec<u8> {
        self.lock().clone()
    }
}

impl<T> fmt::Debug for Drain<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Drain")
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Drain<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.received.push(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Drain<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Bounded: at most 64 KiB of garbage is skipped per write; a device spewing more is broken anyway and
        // its garbage will fail the next response's parsing.
        let mut scratch = [0u8; 512];
        for _ in 0..128 {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    tracing::debug!(
                        bytes = rb.filled().len(),
                        "discarded stale bytes before a request"
                    );
                }
                // EOF: let the write (or the following read) report the closed connection.
                Poll::Ready(Ok(())) => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The name put in a bad reading's quality for a Modbus exception, e.g. `IllegalDataAddress`.
pub fn exception_name(code: ExceptionCode) -> String {
    match code {
        ExceptionCode::IllegalFunction => "IllegalFunction".to_owned(),
        ExceptionCode::IllegalDataAddress => "IllegalDataAddress".to_owned(),
        ExceptionCode::IllegalDataValue => "IllegalDataValue".to_owned(),
        ExceptionCode::ServerDeviceFailure => "ServerDeviceFailure".to_owned(),
        ExceptionCode::Acknowledge => "Acknowledge".to_owned(),
        ExceptionCode::ServerDeviceBusy => "ServerDeviceBusy".to_owned(),
        ExceptionCode::MemoryParityError => "MemoryParityError".to_owned(),
        ExceptionCode::GatewayPathUnavailable => "GatewayPathUnavailable".to_owned(),
        ExceptionCode::GatewayTargetDevice => "GatewayTargetDevice".to_owned(),
        ExceptionCode::Custom(c) => format!("Exception0x{c:02X}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn serial(path: &str, baud: u32) -> Endpoint {
        Endpoint::Serial(SerialSettings {
            path: path.into(),
            baud,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            frame_gap: SerialSettings::default_frame_gap(baud),
        })
    }

    #[test]
    fn registry_shares_and_releases_lines() {
        let reg = LineRegistry::new();
        let a = reg.acquire(&Endpoint::Tcp("127.0.0.1:502".into())).unwrap();
        let b = reg.acquire(&Endpoint::Tcp("127.0.0.1:502".into())).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = reg
            .acquire(&Endpoint::RtuOverTcp("127.0.0.1:502".into()))
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(reg.open_lines(), 2);
        drop((a, b, c));
        assert_eq!(reg.open_lines(), 0);
    }

    #[test]
    fn registry_refuses_conflicting_serial_settings_while_open() {
        let reg = LineRegistry::new();
        let a = reg.acquire(&serial("/dev/ttyUSB0", 9600)).unwrap();
        let e = reg.acquire(&serial("/dev/ttyUSB0", 19200)).unwrap_err();
        assert!(e.to_string().contains("9600"), "{e}");
        assert!(e.to_string().contains("19200"), "{e}");
        drop(a);
        assert!(reg.acquire(&serial("/dev/ttyUSB0", 19200)).is_ok());
    }

    #[test]
    fn frame_gap_follows_the_spec() {
        let g = SerialSettings::default_frame_gap(9600);
        assert!(
            g > Duration::from_micros(3900) && g < Duration::from_micros(4100),
            "{g:?}"
        );
        assert_eq!(
            SerialSettings::default_frame_gap(115200),
            Duration::from_micros(1750)
        );
    }

    #[test]
    fn a_bad_crc_is_found_in_the_received_bytes() {
        let mut frame = vec![0x01, 0x03, 0x02, 0x03, 0xE8];
        let crc = fieldbridge_sdk::checksum::crc16_modbus(&frame);
        frame.extend(crc.to_le_bytes());
        assert_eq!(bad_crc(&frame, 0x03), None, "a good frame");
        let mut bad = frame.clone();
        bad[3] ^= 0x10;
        assert_eq!(bad_crc(&bad, 0x03).map(|(len, ..)| len), Some(7));
        assert_eq!(bad_crc(&bad[..6], 0x03), None, "incomplete: nothing to say");
        assert_eq!(bad_crc(&bad, 0x04), None, "not an answer to this request");
        let exception = [0x01, 0x83, 0x02, 0x00, 0x00];
        assert_eq!(bad_crc(&exception, 0x03).map(|(len, ..)| len), Some(5));
    }

    #[test]
    fn rtu_protocol_errors_read_as_plain_text() {
        // tokio-modbus 0.17's own text for an answer from another slave.
        let e = tokio_modbus::ProtocolError::HeaderMismatch {
            message: "expected/request = Header { slave_id: 1 }, actual/response = Header { slave_id: 2 }"
                .into(),
            result: Ok(Response::ReadHoldingRegisters(vec![1000])),
        };
        assert_eq!(
            rtu_protocol_reason(1, 0x03, &e),
            "answer from unit 2, expected unit 1"
        );
        let e = tokio_modbus::ProtocolError::HeaderMismatch {
            message: "something else".into(),
            result: Ok(Response::ReadHoldingRegisters(vec![1000])),
        };
        assert_eq!(
            rtu_protocol_reason(1, 0x03, &e),
            "answer from another unit, expected unit 1"
        );
        let e = tokio_modbus::ProtocolError::FunctionCodeMismatch {
            request: tokio_modbus::FunctionCode::ReadHoldingRegisters,
            result: Ok(Response::ReadInputRegisters(vec![1])),
        };
        assert_eq!(
            rtu_protocol_reason(1, 0x03, &e),
            "function code 0x04 in the answer to function 0x03"
        );
    }

    #[test]
    fn exception_names() {
        assert_eq!(
            exception_name(ExceptionCode::IllegalDataAddress),
            "IllegalDataAddress"
        );
        assert_eq!(exception_name(ExceptionCode::Custom(0x0C)), "Exception0x0C");
    }
}
