//! The JSON documents of the HTTP API. The server serializes them and the CLI (`fieldbridge status`, `query`,
//! `reload`) deserializes the same types, so the two cannot drift apart. Every field the CLI reads has a
//! default, so a CLI talking to a slightly older or newer daemon still prints what it can.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthDoc {
    /// `ok` (HTTP 200), or `degraded` (HTTP 503) while the store cannot keep its promise: damaged (it refuses
    /// new messages until a restart salvages it) or stalled (a write failed: full disk, read-only file; it
    /// retries by itself). An uplink that is down or offline devices do not make the gateway unhealthy:
    /// those are in `/api/status`.
    pub status: String,
    /// Why the status is `degraded` (what failed, and what to do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The store writer's state: `normal`, `full`, `stalled` or `degraded`.
    #[serde(default)]
    pub store: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The daemon's version.
    pub version: String,
}

/// `GET /api/status`: everything an operator asks first, in one document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusDoc {
    /// `gateway.id`.
    pub gateway: String,
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// When this document was made (RFC 3339, ms).
    pub now: String,
    /// The embedded broker's counters and gauges (see `broker::BrokerStats`).
    pub broker: serde_json::Value,
    /// The durable log.
    pub store: StoreView,
    /// One entry per configured bridge.
    pub bridges: Vec<BridgeView>,
    /// One entry per configured (enabled) device.
    pub devices: Vec<DeviceView>,
    /// Reading pipeline counters.
    pub pipeline: PipelineView,
}

/// The store part of [`StatusDoc`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreView {
    /// Database file.
    pub path: String,
    /// `normal`, `full` (at the cap with nothing it may delete), `stalled` (a write failed; retrying) or
    /// `degraded` (damage found: appends refused until a restart salvages the file).
    pub state: String,
    /// Bytes on disk (database + WAL), measured.
    pub bytes_on_disk: u64,
    /// Bytes in use (on disk minus reusable free pages): what counts against `max_bytes`.
    pub bytes_used: u64,
    /// The configured cap.
    pub max_bytes: u64,
    /// Rows in the log.
    pub rows: u64,
    /// Oldest row's seq.
    pub oldest_seq: Option<u64>,
    /// Oldest row's time (RFC 3339).
    pub oldest_ts: Option<String>,
    /// Newest row's seq.
    pub newest_seq: Option<u64>,
    /// Newest row's time (RFC 3339).
    pub newest_ts: Option<String>,
    /// Last seq ever committed.
    pub head_seq: u64,
    /// Messages lost, by reason.
    pub dropped: DropsView,
    /// Delivered rows removed by `max_age`.
    pub removed_by_age: u64,
    /// Delivered rows removed to stay under `max_bytes`.
    pub removed_for_space: u64,
    /// Rows waiting in the writer's queue.
    pub queue_depth: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Rows committed since the store was opened.
    pub rows_committed: u64,
    /// One entry per bridge cursor.
    pub cursors: Vec<CursorView>,
    /// The writer's last error.
    pub last_error: Option<String>,
    /// What damage was found, when `state` is `degraded`.
    pub damage: Option<String>,
}

/// Drops by reason (since the store was opened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DropsView {
    /// Undelivered rows evicted by `drop_oldest`.
    pub oldest: u64,
    /// Appends refused by `drop_newest`.
    pub newest: u64,
    /// Messages that could not be written (disk full with nothing to evict, I/O errors).
    pub write_failed: u64,
    /// Rows lost to damage: unreadable when the damaged log was salvaged at start.
    pub damaged: u64,
    /// Sum of the above.
    pub total: u64,
}

/// One bridge's cursor in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CursorView {
    /// Bridge name.
    pub bridge: String,
    /// Last seq delivered.
    pub seq: u64,
    /// Rows after the cursor.
    pub lag_rows: u64,
    /// Rows evicted before this bridge got them.
    pub lost_rows: u64,
}

/// One upstream bridge, as the API reports it.
///
/// The bridge runtime fills `state`, the lags, `drain_rate` and `last_error` (through
/// [`ApiState::bridge_statuses`](super::ApiState::bridge_statuses)); the API completes the rest from the
/// configuration and the store cursor, so a bridge that has not reported yet still shows up with its backlog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BridgeView {
    /// Bridge name (`bridges[].name`).
    pub name: String,
    /// Upstream address, `scheme://host:port` (filled from the configuration when empty).
    pub url: String,
    /// Mode: `connecting`, `live`, `backlog`, `backoff`, … or `unknown` when the bridge has not reported.
    pub state: String,
    /// Rows logged but not yet acknowledged upstream.
    pub lag_rows: u64,
    /// Age of the oldest unacknowledged row, in seconds.
    pub lag_seconds: Option<f64>,
    /// Messages acknowledged per second, recently.
    pub drain_rate: Option<f64>,
    /// `lag_rows / drain_rate`, when the bridge is draining (filled by the API).
    pub eta_seconds: Option<f64>,
    /// The bridge's cursor seq (filled by the API from the store): what the CLI measures progress with.
    pub cursor_seq: Option<u64>,
    /// Rows this bridge lost to `drop_oldest` (filled by the API from the store).
    pub lost_rows: u64,
    /// When the state last changed (RFC 3339).
    pub since: Option<String>,
    /// Rows delivered since the bridge started.
    pub delivered: u64,
    /// PUBLISH packets sent again after reconnects (the duplicates a subscriber may see).
    pub resent: u64,
    /// Messages the upstream refused with an error reason code.
    pub refused: u64,
    /// Rows not sent (expired, too large for the upstream).
    pub skipped: u64,
    /// Messages awaiting their acknowledgement now.
    pub inflight: u64,
    /// The in-flight window on the current connection.
    pub window: u64,
    /// Successful connections since the bridge started.
    pub connects: u64,
    /// The last error (connection refused, bad credentials, …), if any.
    pub last_error: Option<String>,
    /// When `last_error` happened (RFC 3339).
    pub last_error_at: Option<String>,
}

/// One configured device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceView {
    /// Device name.
    pub name: String,
    /// Adapter protocol (`modbus`, `sim`, …).
    pub protocol: String,
    /// `starting`, `online`, `offline` or `error`.
    pub status: String,
    /// Why it is offline or in error.
    pub reason: Option<String>,
    /// Configured point names, in file order.
    pub points: Vec<String>,
    /// The device's labels.
    pub labels: BTreeMap<String, String>,
}

/// Pipeline counters (since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineView {
    /// Readings received from adapters.
    pub readings: u64,
    /// Readings published.
    pub published: u64,
    /// Readings suppressed by on-change/deadband rules.
    pub suppressed: u64,
    /// Readings for devices or points not configured.
    pub unknown: u64,
    /// Write requests handled.
    pub commands: u64,
}

/// `GET /api/devices`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DevicesDoc {
    /// Configured devices, in configuration order.
    pub devices: Vec<DeviceView>,
}

/// One point's latest value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PointView {
    /// Device name.
    pub device: String,
    /// Point name.
    pub point: String,
    /// Scaled value (number, bool or string as the adapter produced it).
    pub value: serde_json::Value,
    /// Unit from the device map.
    pub unit: Option<String>,
    /// `good`, `bad` or `stale`.
    pub quality: String,
    /// Why the quality is bad.
    pub reason: Option<String>,
    /// When it was read (RFC 3339).
    pub ts: String,
    /// The topic it is published on.
    pub topic: String,
    /// Whether it takes writes (`POST /api/v1/devices/{device}/points/{point}`, or MQTT `…/set`).
    #[serde(default)]
    pub writable: bool,
}

/// `GET /api/points`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PointsDoc {
    /// Latest value of every point that has been read, sorted by device then point.
    pub points: Vec<PointView>,
}

/// One logged message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryRow {
    /// Log sequence number.
    pub seq: u64,
    /// Timestamp (RFC 3339, ms).
    pub ts: String,
    /// Timestamp (unix ms), for scripts that compute with it.
    pub ts_ms: i64,
    /// MQTT topic.
    pub topic: String,
    /// Device (adapter readings only).
    pub device: Option<String>,
    /// Point (adapter readings only).
    pub point: Option<String>,
    /// Numeric value (readings of good quality only).
    pub value: Option<f64>,
    /// The payload as text (invalid UTF-8 replaced by U+FFFD).
    pub payload: String,
    /// QoS it was published with.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// The reading's value as published (`true`/`false` stay booleans, text stays text): the payload's
    /// `value` when it is a JSON reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<serde_json::Value>,
    /// The reading's unit (the payload's `unit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// `GET /api/history`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryDoc {
    /// Matching rows, in the requested order.
    pub rows: Vec<HistoryRow>,
    /// The limit applied.
    pub limit: usize,
    /// Whether more rows matched than `limit` (narrow the time range or page with `from`).
    pub more: bool,
    /// When `more`: pass it as `cursor` to get the next page (v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/history?every=…`: time buckets of numeric readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BucketsDoc {
    /// Start of the range (unix ms, inclusive).
    pub from_ms: i64,
    /// End of the range (unix ms, exclusive).
    pub to_ms: i64,
    /// Bucket width (ms); buckets are aligned to multiples of it since the epoch.
    pub every_ms: i64,
    /// One series per matching topic.
    pub series: Vec<SeriesView>,
}

/// One series of a [`BucketsDoc`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesView {
    /// The topic.
    pub topic: String,
    /// The device.
    pub device: Option<String>,
    /// The point.
    pub point: Option<String>,
    /// The unit (from the configuration).
    pub unit: Option<String>,
    /// Rows in the range without a numeric value (not aggregated).
    pub skipped: u64,
    /// Non-empty buckets, oldest first.
    pub buckets: Vec<crate::store::Bucket>,
}

/// `GET /api/v1/history?fields=values`: readings as time and value, served from the index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValuesDoc {
    /// Readings in the requested order.
    pub rows: Vec<ValueRow>,
    /// The limit applied.
    pub limit: usize,
    /// Whether more matched.
    pub more: bool,
    /// When `more`: pass it as `cursor` to get the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One reading of a [`ValuesDoc`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValueRow {
    /// Timestamp (RFC 3339, ms).
    pub ts: String,
    /// Timestamp (unix ms).
    pub ts_ms: i64,
    /// Log sequence number.
    pub seq: u64,
    /// The topic.
    pub topic: String,
    /// The numeric value (none for text readings).
    pub value: Option<f64>,
}

/// `GET /api/v1/latest`: the last logged row of each matching topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatestDoc {
    /// One row per topic, sorted by topic.
    pub rows: Vec<HistoryRow>,
}

/// `POST /api/v1/devices/{device}/points/{point}`: the answer of the write, as published on `…/set/result`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WriteDoc {
    /// Whether the device took the value.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the answer was made (RFC 3339).
    pub ts: String,
}

/// `POST /api/reload`, success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadDoc {
    /// Devices started.
    pub added: Vec<String>,
    /// Devices stopped.
    pub removed: Vec<String>,
    /// Devices restarted because their configuration changed.
    pub restarted: Vec<String>,
    /// Devices left running untouched.
    pub unchanged: Vec<String>,
    /// Changes that a reload cannot apply (they need a restart), e.g. a new `api.bind`.
    pub notes: Vec<String>,
}

/// Any error answer (4xx/5xx).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorDoc {
    /// What is wrong, and for a bad parameter which one and what was expected.
    pub error: String,
    /// Every configuration problem as `file:line:col: path: message` (`POST /api/reload`, 422).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Largest payload parsed for its `value` and `unit` (readings are a few dozen bytes).
const MAX_PARSED_PAYLOAD: usize = 64 * 1024;

impl From<crate::store::LogRow> for HistoryRow {
    fn from(r: crate::store::LogRow) -> HistoryRow {
        let (reading, unit) = reading_of(&r.payload);
        HistoryRow {
            seq: r.seq,
            ts: super::params::ms_to_rfc3339(r.ts_ms),
            ts_ms: r.ts_ms,
            topic: r.topic.to_string(),
            device: r.device.map(|d| d.to_string()),
            point: r.point.map(|p| p.to_string()),
            value: r.num.filter(|n| n.is_finite()),
            payload: String::from_utf8_lossy(&r.payload).into_owned(),
            qos: r.qos,
            retain: r.retain,
            reading,
            unit,
        }
    }
}

/// The `value` and `unit` of a JSON reading payload (`{"value":21.5,"unit":"°C",…}`).
pub fn reading_of(payload: &[u8]) -> (Option<serde_json::Value>, Option<String>) {
    if payload.len() > MAX_PARSED_PAYLOAD || payload.first() != Some(&b'{') {
        return (None, None);
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut o)) => {
            let value = o
                .remove("value")
                .filter(|v| !v.is_object() && !v.is_array());
            let unit = match o.remove("unit") {
                Some(serde_json::Value::String(u)) => Some(u),
                _ => None,
            };
            (value, unit)
        }
        _ => (None, None),
    }
}

/// The store's counters and gauges, described once for `/metrics` and `/api/status` (see [`crate::metrics`]).
/// `writer_state` and `degraded_info`, whose labels are the state itself, are written by `/metrics` directly.
pub const STORE_METRICS: &[Metric<StoreView>] = &[
    SM::gauge(
        "fieldbridge_store_disk_bytes",
        "Bytes of the log on disk (database file plus WAL), as measured after the latest commit.",
        "bytes_on_disk",
        |s| Some(s.bytes_on_disk as f64),
    ),
    SM::gauge(
        "fieldbridge_store_used_bytes",
        "Bytes of the log in use (disk bytes minus reusable free pages); compared with the cap.",
        "bytes_used",
        |s| Some(s.bytes_used as f64),
    ),
    SM::gauge(
        "fieldbridge_store_max_bytes",
        "The configured cap of the log (storage.max_bytes).",
        "max_bytes",
        |s| Some(s.max_bytes as f64),
    ),
    SM::gauge("fieldbridge_store_rows", "Rows in the log.", "rows", |s| {
        Some(s.rows as f64)
    }),
    SM::gauge(
        "fieldbridge_store_head_seq",
        "Last sequence number committed.",
        "head_seq",
        |s| Some(s.head_seq as f64),
    ),
    SM::gauge(
        "fieldbridge_store_queue_depth",
        "Rows waiting in the writer's queue.",
        "queue_depth",
        |s| Some(s.queue_depth as f64),
    ),
    SM::counter(
        "fieldbridge_store_commits_total",
        "Transactions committed with rows.",
        "commits",
        |s| Some(s.commits as f64),
    ),
    SM::counter(
        "fieldbridge_store_rows_committed_total",
        "Rows committed.",
        "rows_committed",
        |s| Some(s.rows_committed as f64),
    ),
    SM::gauge(
        "fieldbridge_store_oldest_timestamp_seconds",
        "Unix time of the oldest row in the log.",
        "oldest_ts",
        |s| s.oldest_ts.as_deref().and_then(rfc3339_secs),
    )
    .hide_empty(),
    SM::counter(STORE_DROPPED, STORE_DROPPED_HELP, "dropped.oldest", |s| {
        Some(s.dropped.oldest as f64)
    })
    .label("reason", "oldest"),
    SM::counter(STORE_DROPPED, STORE_DROPPED_HELP, "dropped.newest", |s| {
        Some(s.dropped.newest as f64)
    })
    .label("reason", "newest"),
    SM::counter(
        STORE_DROPPED,
        STORE_DROPPED_HELP,
        "dropped.write_failed",
        |s| Some(s.dropped.write_failed as f64),
    )
    .label("reason", "write_failed"),
    SM::counter(STORE_DROPPED, STORE_DROPPED_HELP, "dropped.damaged", |s| {
        Some(s.dropped.damaged as f64)
    })
    .label("reason", "damaged"),
    SM::counter(STORE_REMOVED, STORE_REMOVED_HELP, "removed_by_age", |s| {
        Some(s.removed_by_age as f64)
    })
    .label("reason", "age"),
    SM::counter(
        STORE_REMOVED,
        STORE_REMOVED_HELP,
        "removed_for_space",
        |s| Some(s.removed_for_space as f64),
    )
    .label("reason", "space"),
];
type SM = Metric<StoreView>;

const STORE_DROPPED: &str = "fieldbridge_store_dropped_total";
const STORE_DROPPED_HELP: &str =
    "Messages lost by the log, by reason (oldest: evicted undelivered; newest: \
                                  refused when full; write_failed: could not be written; damaged: unreadable when a damaged \
                                  log was salvaged).";
const STORE_REMOVED: &str = "fieldbridge_store_removed_total";
const STORE_REMOVED_HELP: &str = "Delivered rows removed by retention, by reason.";

fn rfc3339_secs(s: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// Each bridge's counters and gauges (one sample per bridge, labelled `bridge`), described once for `/metrics`
/// and `/api/status`. `bridge_state`, labelled by the state itself, is written by `/metrics` directly.
pub const BRIDGE_METRICS: &[Metric<BridgeView>] = &[
    BM::gauge(
        "fieldbridge_bridge_lag_rows",
        "Rows logged but not yet acknowledged by the bridge's upstream.",
        "lag_rows",
        |b| Some(b.lag_rows as f64),
    ),
    BM::gauge(
        "fieldbridge_bridge_lag_seconds",
        "Age of the oldest row not yet acknowledged upstream.",
        "lag_seconds",
        |b| b.lag_seconds,
    ),
    BM::gauge(
        "fieldbridge_bridge_drain_messages_per_second",
        "Messages acknowledged upstream per second, recently.",
        "drain_rate",
        |b| b.drain_rate,
    ),
    BM::counter(
        "fieldbridge_bridge_lost_rows_total",
        "Rows evicted by drop_oldest before the bridge delivered them.",
        "lost_rows",
        |b| Some(b.lost_rows as f64),
    ),
    BM::counter(
        "fieldbridge_bridge_delivered_total",
        "Rows delivered upstream (acknowledged) since the bridge started.",
        "delivered",
        |b| Some(b.delivered as f64),
    ),
    BM::counter(
        "fieldbridge_bridge_resent_total",
        "PUBLISH packets sent again after reconnects.",
        "resent",
        |b| Some(b.resent as f64),
    ),
    BM::counter(
        "fieldbridge_bridge_refused_total",
        "Messages the upstream refused with an error reason code.",
        "refused",
        |b| Some(b.refused as f64),
    ),
    BM::counter(
        "fieldbridge_bridge_skipped_total",
        "Rows not sent (expired, or too large for the upstream).",
        "skipped",
        |b| Some(b.skipped as f64),
    ),
    BM::counter(
        "fieldbridge_bridge_connects_total",
        "Successful upstream connections since the bridge started.",
        "connects",
        |b| Some(b.connects as f64),
    ),
    BM::gauge(
        "fieldbridge_bridge_inflight_messages",
        "Messages sent upstream and awaiting their acknowledgement.",
        "inflight",
        |b| Some(b.inflight as f64),
    ),
];
type BM = Metric<BridgeView>;

/// The pipeline's counters, described once for `/metrics` and `/api/status`.
pub const PIPELINE_METRICS: &[Metric<PipelineView>] = &[
    PM::counter(
        "fieldbridge_pipeline_readings_total",
        "Readings received from adapters.",
        "readings",
        |p| Some(p.readings as f64),
    ),
    PM::counter(
        "fieldbridge_pipeline_published_total",
        "Readings published to the broker.",
        "published",
        |p| Some(p.published as f64),
    ),
    PM::counter(
        "fieldbridge_pipeline_suppressed_total",
        "Readings not published by on-change or deadband rules.",
        "suppressed",
        |p| Some(p.suppressed as f64),
    ),
    PM::counter(
        "fieldbridge_pipeline_unknown_total",
        "Readings for devices or points that are not configured.",
        "unknown",
        |p| Some(p.unknown as f64),
    ),
    PM::counter(
        "fieldbridge_pipeline_commands_total",
        "Write requests handled.",
        "commands",
        |p| Some(p.commands as f64),
    ),
];
type PM = Metric<PipelineView>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::assert_json_agrees;

    #[test]
    fn tables_agree_with_their_json() {
        let store = StoreView {
            bytes_on_disk: 1,
            bytes_used: 2,
            max_bytes: 3,
            rows: 4,
            oldest_ts: Some("2026-11-22T02:00:00.250Z".into()),
            head_seq: 5,
            dropped: DropsView {
                oldest: 6,
                newest: 7,
                write_failed: 8,
                damaged: 1,
                total: 22,
            },
            removed_by_age: 9,
            removed_for_space: 10,
            queue_depth: 11,
            commits: 12,
            rows_committed: 13,
            ..StoreView::default()
        };
        assert_json_agrees(STORE_METRICS, &store);
        assert_json_agrees(
            STORE_METRICS,
            &StoreView {
                oldest_ts: None,
                ..store
            },
        );
        let bridge = BridgeView {
            lag_rows: 1,
            lag_seconds: Some(2.5),
            drain_rate: None,
            lost_rows: 3,
            delivered: 4,
            resent: 5,
            refused: 6,
            skipped: 7,
            connects: 8,
            inflight: 9,
            ..BridgeView::default()
        };
        assert_json_agrees(BRIDGE_METRICS, &bridge);
        let pipeline = PipelineView {
            readings: 1,
            published: 2,
            suppressed: 3,
            unknown: 4,
            commands: 5,
        };
        assert_json_agrees(PIPELINE_METRICS, &pipeline);
    }
}
