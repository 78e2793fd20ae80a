//! The fieldbridge adapter contract.
//!
//! Adapters produce [`Reading`]s; the core decides topics, payloads, scaling and storage. An adapter never sees
//! MQTT, JSON or topics. The flow for one device:
//!
//! 1. The core parses the device map. The protocol-specific parts (the device's `connection` mapping and, for
//!    each point, every key the core does not own) are handed over as position-carrying [`ConfigNode`]s inside a
//!    [`DeviceConfig`].
//! 2. The registered [`AdapterFactory`] for the device's `protocol` validates them and builds a
//!    `Box<dyn Adapter>`. Building does no I/O, so `fieldbridge check` runs exactly the same code.
//! 3. The core runs the adapter with an [`AdapterContext`]: a bounded reading output, a status handle, a command
//!    input (write-back) and a cancellation token. An adapter that returns an error or panics is restarted by
//!    the core with backoff.
//!
//! Errors are kept apart the way tokio-modbus does: a transport error (retry with backoff, device goes
//! `offline`), a device exception (reading quality `bad`, keep polling) and a configuration error (refuse to
//! start).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub mod checksum;
pub mod config;
pub mod poller;
pub mod shared;
pub mod testkit;

pub use config::{ConfigError, ConfigNode, Mark, NodeKind};
pub use poller::{
    DeviceException, GroupReading, PollDevice, PollGroup, PollPlan, PollPoint, PollStats,
    PollStatsSnapshot, Poller, PollerSettings, TransportError,
};
pub use shared::{Lease, Shared, SharedPool};
pub use testkit::TestHarness;

/// A value read from, or written to, a device point.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A coil, a discrete input, a bit of a register, a flag.
    Bool(bool),
    /// Any signed integer.
    Int(i64),
    /// Any unsigned integer (kept apart so u64 counters above i64::MAX survive).
    UInt(u64),
    /// Any floating-point value.
    Float(f64),
    /// Text (a serial number, a firmware version, a line from a serial device).
    String(String),
    /// Raw bytes, published as hex or base64 by the core.
    Bytes(Vec<u8>),
}

impl Value {
    /// The value as `f64` when it is numeric (bools count as 0/1); used for scaling and deadbands.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::String(_) | Value::Bytes(_) => None,
        }
    }

    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::Int(_) => "integer",
            Value::UInt(_) => "unsigned integer",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::String(s) => f.write_str(s),
            Value::Bytes(b) => {
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// How much a reading can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quality {
    /// Read successfully.
    Good,
    /// The device answered with an error for this point (e.g. a Modbus exception); the reason names it.
    Bad(String),
    /// The last good value, re-published because a fresh one could not be had.
    Stale,
}

impl Quality {
    /// `good`, `bad` or `stale`, as published in payloads.
    pub fn as_str(&self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Bad(_) => "bad",
            Quality::Stale => "stale",
        }
    }
}

/// One observation of one point of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Device name, as in the device map.
    pub device: Arc<str>,
    /// Point name, as in the device map.
    pub point: Arc<str>,
    /// The raw value, before the core applies scale and offset.
    pub value: Value,
    /// Whether the value can be trusted.
    pub quality: Quality,
    /// When the value was read (the adapter's clock, or the device's when it sends one).
    pub ts: SystemTime,
}

/// The connection state of a device, published retained on `{gateway}/{device}/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    /// The adapter has not yet talked to the device.
    Starting,
    /// The device answers.
    Online,
    /// The device cannot be reached (transport error); the reason says why.
    Offline(String),
    /// The adapter itself failed (it is being restarted); the reason says why.
    Error(String),
}

impl DeviceStatus {
    /// `starting`, `online`, `offline` or `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceStatus::Starting => "starting",
            DeviceStatus::Online => "online",
            DeviceStatus::Offline(_) => "offline",
            DeviceStatus::Error(_) => "error",
        }
    }

    /// The reason for `offline` or `error`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            DeviceStatus::Offline(r) | DeviceStatus::Error(r) => Some(r),
            _ => None,
        }
    }
}

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The point does not exist on this device.
    #[error("unknown point `{0}`")]
    UnknownPoint(String),
    /// The point exists but is not writable.
    #[error("point `{0}` is read-only")]
    ReadOnly(String),
    /// The value cannot be encoded for the point (wrong type, out of range).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// The device refused the write (e.g. a Modbus exception).
    #[error("device refused the write: {0}")]
    Device(String),
    /// The device could not be reached.
    #[error("device unreachable: {0}")]
    Transport(String),
    /// Read-back after the write returned a different value.
    #[error("read-back mismatch: wrote {wrote}, read {read}")]
    Verify {
        /// What was written.
        wrote: String,
        /// What was read back.
        read: String,
    },
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// A write request for one point. The adapter answers through `reply` exactly once.
#[derive(Debug)]
pub struct Command {
    /// Point name.
    pub point: Arc<str>,
    /// The raw value to write (inverse scaling already applied by the core).
    pub value: Value,
    /// Where the result goes. Dropping it without an answer is reported as an error by the core.
    pub reply: oneshot::Sender<Result<(), CommandError>>,
}

/// The bounded output of readings. Sending waits when the pipeline is busy (back-pressure, never a silent drop).
#[derive(Debug, Clone)]
pub struct ReadingSink {
    tx: mpsc::Sender<Reading>,
}

/// The core has stopped accepting readings (shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reading pipeline is closed")]
pub struct SinkClosed;

impl ReadingSink {
    /// Wraps a channel sender.
    pub fn new(tx: mpsc::Sender<Reading>) -> Self {
        ReadingSink { tx }
    }

    /// Sends one reading, waiting while the channel is full.
    pub async fn send(&self, reading: Reading) -> Result<(), SinkClosed> {
        self.tx.send(reading).await.map_err(|_| SinkClosed)
    }
}

/// Publishes the device's connection state. Only changes are passed on.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    tx: Arc<watch::Sender<DeviceStatus>>,
}

impl StatusHandle {
    /// A handle and the receiver the core watches.
    pub fn new() -> (Self, watch::Receiver<DeviceStatus>) {
        let (tx, rx) = watch::channel(DeviceStatus::Starting);
        (StatusHandle { tx: Arc::new(tx) }, rx)
    }

    /// Sets the status; a repeat of the current status is not a change.
    pub fn set(&self, status: DeviceStatus) {
        self.tx.send_if_modified(|cur| {
            if *cur == status {
                false
            } else {
                *cur = status;
                true
            }
        });
    }

    /// The current status.
    pub fn get(&self) -> DeviceStatus {
        self.tx.borrow().clone()
    }
}

/// Everything an adapter gets from the core for one run.
#[derive(Debug)]
pub struct AdapterContext {
    /// The device's name.
    pub device: Arc<str>,
    /// Where readings go.
    pub output: ReadingSink,
    /// Where the device's connection state goes.
    pub status: StatusHandle,
    /// Write requests for this device's points (only points marked writable reach the adapter).
    pub commands: mpsc::Receiver<Command>,
    /// Cancelled when the adapter must stop (shutdown, reload, device removed).
    pub cancel: CancellationToken,
}

/// Why an adapter run ended with an error. The core logs it, marks the device `error` and restarts the adapter
/// with backoff.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The reading pipeline closed (shutdown): not a failure, the core does not restart.
    #[error(transparent)]
    Closed(#[from] SinkClosed),
    /// Something the adapter cannot recover from by itself.
    #[error("{0}")]
    Fatal(String),
}

/// A running adapter for one device.
pub trait Adapter: Send + 'static {
    /// Runs until `ctx.cancel` is cancelled (return `Ok`) or a fatal error. Transport errors and device
    /// exceptions are handled inside (status, quality, retries): they are not reasons to return.
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>>;
}

/// The part of a device map every adapter gets: common settings, plus the protocol-specific nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Device name (unique in the gateway).
    pub name: Arc<str>,
    /// The `protocol` key.
    pub protocol: String,
    /// The `connection` mapping, protocol-specific (may be a null node when absent).
    pub connection: ConfigNode,
    /// Default poll interval for points that do not set their own.
    pub poll_interval: Duration,
    /// Request timeout.
    pub timeout: Duration,
    /// Retries of a failed request before the device is marked offline.
    pub retries: u32,
    /// The points, in file order. Shared: a device's configuration is held by the running configuration, the
    /// supervisor and the pipeline at once, and is immutable once validated.
    pub points: Arc<[PointConfig]>,
}

/// The part of a point the adapter owns.
#[derive(Debug, Clone, PartialEq)]
pub struct PointConfig {
    /// Point name (unique in the device).
    pub name: Arc<str>,
    /// Whether write-back is allowed.
    pub writable: bool,
    /// The point's own poll interval, when it overrides the device's.
    pub poll_interval: Option<Duration>,
    /// The point's mapping with the core's keys removed: what remains is the adapter's (address, type, …).
    pub spec: ConfigNode,
}

/// Builds adapters for one protocol. Registered in the core under [`AdapterFactory::protocol`].
pub trait AdapterFactory: Send + Sync + 'static {
    /// The `protocol:` value this factory serves, e.g. `modbus`.
    fn protocol(&self) -> &'static str;

    /// Validates the protocol-specific config and builds the adapter. No I/O. Every problem found is returned,
    /// each with its position (see [`ConfigNode::error`]).
    fn build(&self, device: &DeviceConfig) -> Result<Box<dyn Adapter>, Vec<ConfigError>>;
}

/// Exponential backoff with full jitter, used by the poller and by the core's adapter supervisor.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff starting at `base`, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: a random duration in `[cap/2, cap]` where `cap = min(max, base * 2^attempt)`.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let cap = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = cap / 2;
        let jitter = rand::random_range(0.0..=1.0f64);
        half + half.mul_f64(jitter)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d0 = b.next_delay();
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1), "{d:?}");
        }
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(500), "{d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn status_handle_passes_changes_only() {
        let (h, mut rx) = StatusHandle::new();
        rx.mark_unchanged();
        h.set(DeviceStatus::Starting);
        assert!(!rx.has_changed().unwrap());
        h.set(DeviceStatus::Online);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), DeviceStatus::Online);
    }

    #[test]
    fn value_as_f64() {
        assert_eq!(Value::Bool(true).as_f64(), Some(1.0));
        assert_eq!(Value::Int(-3).as_f64(), Some(-3.0));
        assert_eq!(Value::UInt(7).as_f64(), Some(7.0));
        assert_eq!(Value::String("x".into()).as_f64(), None);
        assert_eq!(Value::Bytes(vec![0xab, 0x01]).to_string(), "ab01");
    }
}
