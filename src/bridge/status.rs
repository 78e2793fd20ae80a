//! What a bridge reports: the status struct behind `fieldbridge status`, the HTTP API and the retained
//! `{gateway}/bridge/{name}/state` message.
use parking_lot::Mutex;
use serde::Serialize;

/// The bridge's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeState {
    /// Opening the transport, waiting for CONNACK.
    Connecting,
    /// Connected and caught up: rows go up as they are logged.
    Live,
    /// Connected and draining rows logged while the link was down (or faster than the link).
    Backlog,
    /// Waiting before the next connection attempt, after a failure.
    Backoff,
    /// Stopped (shutdown, or removed by a reload).
    Stopped,
}

impl BridgeState {
    /// Lower-case name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeState::Connecting => "connecting",
            BridgeState::Live => "live",
            BridgeState::Backlog => "backlog",
            BridgeState::Backoff => "backoff",
            BridgeState::Stopped => "stopped",
        }
    }

    /// Whether the bridge has a working upstream connection.
    pub fn connected(self) -> bool {
        matches!(self, BridgeState::Live | BridgeState::Backlog)
    }
}

impl std::fmt::Display for BridgeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bridge's status. Serialized as is for the state topic and the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BridgeStatus {
    /// Bridge name.
    pub name: String,
    /// Upstream URL (no credentials: they are never part of it).
    pub url: String,
    /// Current mode.
    pub state: BridgeState,
    /// When the mode last changed (unix ms).
    pub since_ms: i64,
    /// Last seq delivered upstream (every forwarded row up to it is acknowledged).
    pub cursor: u64,
    /// Last seq in the log.
    pub head: u64,
    /// Rows behind the head (forwarded or not).
    pub lag_rows: u64,
    /// Age of the oldest row not yet delivered (the first row after the cursor), in seconds; 0 when caught up.
    /// It keeps growing during an outage.
    pub lag_seconds: f64,
    /// Rows delivered per second over the last 10 s while connected (sliding window); 0 while disconnected.
    pub drain_rate: f64,
    /// `lag_rows / drain_rate` while draining (connected, delivering, the backlog shrinking), else `None`.
    pub eta_seconds: Option<f64>,
    /// Rows in the in-flight window now.
    pub inflight: usize,
    /// The window on the current connection: min(configured, the upstream's Receive Maximum).
    pub window: usize,
    /// Rows delivered since the bridge started.
    pub delivered: u64,
    /// PUBLISH packets sent again after reconnects (the duplicates a subscriber may see).
    pub resent: u64,
    /// Messages the upstream refused with an error reason code (counted and skipped).
    pub refused: u64,
    /// Rows not sent: expired (MQTT 5 message expiry), too large for the upstream, or an empty topic.
    pub skipped: u64,
    /// Successful connections since the bridge started.
    pub connects: u64,
    /// The last connection error, if the last attempt or connection failed (cleared once connected and
    /// delivering).
    pub last_error: Option<String>,
    /// When `last_error` happened (unix ms).
    pub last_error_ms: Option<i64>,
}

impl BridgeStatus {
    pub(crate) fn new(name: &str, url: String, cursor: u64, now: i64) -> BridgeStatus {
        BridgeStatus {
            name: name.to_string(),
            url,
            state: BridgeState::Connecting,
            since_ms: now,
            cursor,
            head: cursor,
            lag_rows: 0,
            lag_seconds: 0.0,
            drain_rate: 0.0,
            eta_seconds: None,
            inflight: 0,
            window: 0,
            delivered: 0,
            resent: 0,
            refused: 0,
            skipped: 0,
            connects: 0,
            last_error: None,
            last_error_ms: None,
        }
    }
}

/// The status a running bridge shares with [`super::Bridges::statuses`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub status: Mutex<BridgeStatus>,
}
