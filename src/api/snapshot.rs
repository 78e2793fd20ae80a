//! One consistent read of the daemon's state, from which `/api/status`, `/api/devices` and `/metrics` are all
//! rendered: the JSON and the metrics never disagree about what they describe.
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use crate::broker::BrokerStats;
use crate::config::{BridgeConfig, BridgeScheme, Config};
use crate::pipeline::{rfc3339_ms, LiveState, PipelineStats};
use crate::store::{StoreStats, WriterState};

use super::model::{
    BridgeView, CursorView, DeviceView, DropsView, PipelineView, StatusDoc, StoreView,
};
use super::params::ms_to_rfc3339;
use super::ApiState;

/// Everything `/api/status` and `/metrics` show, read once.
pub(crate) struct Snapshot {
    pub gateway: String,
    pub uptime_secs: u64,
    pub broker: BrokerStats,
    pub store: StoreView,
    pub bridges: Vec<BridgeView>,
    pub devices: Vec<DeviceView>,
    pub pipeline: PipelineView,
}

impl Snapshot {
    /// Reads the state. Blocking: the store statistics run a SQLite query.
    pub fn take(state: &dyn ApiState) -> Snapshot {
        let cfg = state.config();
        let store = store_view(&state.store_stats());
        let bridges = bridge_views(&cfg, &store, state.bridge_statuses());
        Snapshot {
            gateway: cfg.gateway.id.clone(),
            uptime_secs: state.uptime().as_secs(),
            broker: state.broker_stats(),
            store,
            bridges,
            devices: device_views(&cfg, &state.live()),
            pipeline: pipeline_view(&state.pipeline_stats()),
        }
    }

    /// The `/api/status` document.
    pub fn into_doc(self) -> StatusDoc {
        StatusDoc {
            gateway: self.gateway,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.uptime_secs,
            now: rfc3339_ms(SystemTime::now()),
            broker: serde_json::to_value(&self.broker).unwrap_or_default(),
            store: self.store,
            bridges: self.bridges,
            devices: self.devices,
            pipeline: self.pipeline,
        }
    }
}

/// `writer state` as the API spells it.
pub(crate) fn writer_state(s: WriterState) -> &'static str {
    match s {
        WriterState::Normal => "normal",
        WriterState::Full => "full",
        WriterState::Stalled => "stalled",
        WriterState::Degraded => "degraded",
    }
}

fn store_view(s: &StoreStats) -> StoreView {
    StoreView {
        path: s.path.display().to_string(),
        state: writer_state(s.state).to_string(),
        bytes_on_disk: s.bytes_on_disk,
        bytes_used: s.bytes_used,
        max_bytes: s.max_bytes,
        rows: s.rows,
        oldest_seq: s.oldest_seq,
        oldest_ts: s.oldest_ts_ms.map(ms_to_rfc3339),
        newest_seq: s.newest_seq,
        newest_ts: s.newest_ts_ms.map(ms_to_rfc3339),
        head_seq: s.head_seq,
        dropped: DropsView {
            oldest: s.dropped.oldest,
            newest: s.dropped.newest,
            write_failed: s.dropped.write_failed,
            damaged: s.dropped.damaged,
            total: s.dropped.total(),
        },
        removed_by_age: s.removed_by_age,
        removed_for_space: s.removed_for_space,
        queue_depth: s.queue_depth,
        commits: s.commits,
        rows_committed: s.rows_committed,
        cursors: s
            .cursors
            .iter()
            .map(|c| CursorView {
                bridge: c.bridge.clone(),
                seq: c.seq,
                lag_rows: c.lag_rows,
                lost_rows: c.lost_rows,
            })
            .collect(),
        last_error: s.last_error.clone(),
        damage: s.damage.clone(),
    }
}

/// `scheme://host:port[/path]` of a bridge (no credentials: they are never shown).
pub(crate) fn bridge_url(b: &BridgeConfig) -> String {
    let (scheme, ws) = match b.url.scheme {
        BridgeScheme::Mqtt => ("mqtt", false),
        BridgeScheme::Mqtts => ("mqtts", false),
        BridgeScheme::Ws => ("ws", true),
        BridgeScheme::Wss => ("wss", true),
    };
    let host = if b.url.host.contains(':') {
        format!("[{}]", b.url.host)
    } else {
        b.url.host.clone()
    };
    let path = if ws { b.url.path.as_str() } else { "" };
    format!("{scheme}://{host}:{}{path}", b.url.port)
}

/// Configured bridges, in configuration order, with what their runtime reported; completed from the store
/// cursor (position, losses, and the lag when the bridge has not reported). Reported bridges that are not in
/// the configuration (a reload removed them while they stop) follow.
fn bridge_views(cfg: &Config, store: &StoreView, mut reported: Vec<BridgeView>) -> Vec<BridgeView> {
    let mut out = Vec::with_capacity(cfg.bridges.len());
    for b in &cfg.bridges {
        let cursor = store.cursors.iter().find(|c| c.bridge == b.name);
        let mut v = match reported.iter().position(|r| r.name == b.name) {
            Some(i) => reported.swap_remove(i),
            None => BridgeView {
                name: b.name.clone(),
                state: "unknown".into(),
                lag_rows: cursor.map_or(0, |c| c.lag_rows),
                ..BridgeView::default()
            },
        };
        if v.url.is_empty() {
            v.url = bridge_url(b);
        }
        out.push(v);
    }
    out.extend(reported);
    for v in &mut out {
        if let Some(c) = store.cursors.iter().find(|c| c.bridge == v.name) {
            // The bridge's own cursor is fresher (the store's is written at the next commit).
            v.cursor_seq = v.cursor_seq.or(Some(c.seq));
            v.lost_rows = c.lost_rows;
        }
        if v.state.is_empty() {
            v.state = "unknown".into();
        }
        // The ETA is the bridge's own (set only while it drains): never derived here from a stale rate.
    }
    out
}

/// Configured devices in configuration order with their live status (`starting` until the adapter reports).
pub(crate) fn device_views(cfg: &Config, live: &LiveState) -> Vec<DeviceView> {
    let status = live.status.read();
    cfg.devices
        .iter()
        .map(|d| {
            let s = status.get(&d.adapter.name);
            DeviceView {
                name: d.adapter.name.to_string(),
                protocol: d.adapter.protocol.clone(),
                status: s.map_or("starting", |s| s.as_str()).to_string(),
                reason: s.and_then(|s| s.reason()).map(str::to_string),
                points: d.points.iter().map(|p| p.name.to_string()).collect(),
                labels: d.labels.clone(),
            }
        })
        .collect()
}

fn pipeline_view(p: &PipelineStats) -> PipelineView {
    PipelineView {
        readings: p.readings.load(Relaxed),
        published: p.published.load(Relaxed),
        suppressed: p.suppressed.load(Relaxed),
        unknown: p.unknown.load(Relaxed),
        commands: p.commands.load(Relaxed),
    }
}
