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
//! the poller's job.
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
    Rtu(client::Context),
}

/// Why a call on a connection failed.
enum CallFailure {
    Io(io::Error),
    Protocol(String),
}

impl Conn {
    async fn call(
        &mut self,
        unit: u8,
        request: Request<'_>,
    ) -> Result<Result<Response, ExceptionCode>, CallFailure> {
        match self {
            Conn::Tcp(c) => c.call(unit, &request).await.map_err(|e| match e {
                MbapError::Io(e) => CallFailure::Io(e),
                MbapError::Protocol(m) => CallFailure::Protocol(m),
            }),
            Conn::Rtu(ctx) => {
                ctx.set_slave(Slave(unit));
                ctx.call(request).await.map_err(|e| match e {
                    tokio_modbus::Error::Transport(e) => CallFailure::Io(e),
                    tokio_modbus::Error::Protocol(e) => CallFailure::Protocol(e.to_string()),
                })
            }
        }
    }
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
        self.prepare(&mut st, timeout).await
    }

    /// Sends one request to `unit` and waits up to `timeout` for its answer, then keeps the line quiet for
    /// `delay_after` (slow devices). Waiting for the line itself is not bounded here: every holder bounds its
    /// own request.
    pub async fn call(
        &self,
        unit: u8,
        request: Request<'_>,
        timeout: Duration,
        delay_after: Duration,
    ) -> CallResult {
        let mut st = self.state.lock().await;
        self.prepare(&mut st, timeout).await?;
        if let (Endpoint::Serial(s), Some(q)) = (&self.endpoint, st.quiet_since) {
            tokio::time::sleep_until(q + s.frame_gap).await;
        }
        st.in_flight = true;
        let result = {
            let Some(ctx) = st.ctx.as_mut() else {
                st.in_flight = false;
                return Err(TransportError::connection("not connected"));
            };
            tokio::time::timeout(timeout, ctx.call(unit, request)).await
        };
        st.in_flight = false;
        st.quiet_since = Some(Instant::now());
        let out = match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(CallFailure::Io(e))) => {
                st.ctx = None;
                Err(TransportError::Connection(io_reason(&e)))
            }
            Ok(Err(CallFailure::Protocol(e))) => {
                if self.endpoint.is_stream() {
                    st.ctx = None;
                }
                Err(TransportError::Protocol(e))
            }
            Err(_elapsed) => {
                if self.endpoint.is_stream() {
                    st.ctx = None;
                }
                Err(TransportError::Timeout(timeout))
            }
        };
        if !delay_after.is_zero() {
            tokio::time::sleep(delay_after).await;
        }
        out
    }

    async fn prepare(&self, st: &mut LineState, timeout: Duration) -> Result<(), TransportError> {
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
        }
        Ok(())
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
                Ok(Conn::Rtu(client::rtu::attach_slave(
                    Drain::new(s),
                    Slave(1),
                )))
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
                Ok(Conn::Rtu(client::rtu::attach_slave(
                    Drain::new(port),
                    Slave(1),
                )))
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
pub struct Drain<T> {
    inner: T,
}

impl<T> Drain<T> {
    /// Wraps a transport.
    pub fn new(inner: T) -> Self {
        Drain { inner }
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
    fn exception_names() {
        assert_eq!(
            exception_name(ExceptionCode::IllegalDataAddress),
            "IllegalDataAddress"
        );
        assert_eq!(exception_name(ExceptionCode::Custom(0x0C)), "Exception0x0C");
    }
}
