//! What the API reads from the running daemon. A trait rather than `App` itself so the server can be tested
//! against a stand-in, and so the API does not depend on `app` (which implements the trait, in
//! `app/api_state.rs`).
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::bridge::BridgeStatus;
use crate::broker::BrokerStats;
use crate::config::{Config, ConfigErrors};
use crate::pipeline::{LiveState, PipelineStats};
use crate::store::{
    BucketQuery, HistoryQuery, LogRow, Reading, Series, StoreError, StoreStats, WriterState,
};

use super::model::BridgeView;
use super::params::ms_to_rfc3339;

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Devices started.
    pub added: Vec<String>,
    /// Devices stopped.
    pub removed: Vec<String>,
    /// Devices restarted because their configuration changed.
    pub restarted: Vec<String>,
    /// Devices left running.
    pub unchanged: Vec<String>,
    /// What the reload could not apply, one line each: a changed setting that takes effect at the next
    /// restart (`api.bind changed (…): takes effect at the next restart`), a listener that could not be bound
    /// again. Also logged.
    pub notes: Vec<String>,
}

/// The daemon state the HTTP API serves.
///
/// `store_stats` and `query` run SQLite queries on the calling thread: the server calls them through
/// `spawn_blocking`, so implementations may block.
pub trait ApiState: Send + Sync + 'static {
    /// The configuration in force (gateway id, devices, bridges).
    fn config(&self) -> Arc<Config>;
    /// Time since the daemon started.
    fn uptime(&self) -> Duration;
    /// The embedded broker's counters.
    fn broker_stats(&self) -> BrokerStats;
    /// A snapshot of the durable log (blocking).
    fn store_stats(&self) -> StoreStats;
    /// The log file being served (named in errors).
    fn store_path(&self) -> std::path::PathBuf {
        self.config().storage.path.clone()
    }
    /// The store writer's state and, when stalled or degraded, why (cheap: no SQLite query).
    fn store_health(&self) -> (WriterState, Option<String>) {
        let s = self.store_stats();
        (s.state, s.damage.or(s.last_error))
    }
    /// A history query (blocking).
    fn query(&self, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError>;
    /// Time buckets of numeric readings (blocking).
    fn buckets(&self, q: &BucketQuery) -> Result<Vec<Series>, StoreError>;
    /// Time and value of the matching readings, from the index (blocking).
    fn readings(&self, q: &HistoryQuery) -> Result<Vec<Reading>, StoreError>;
    /// The last logged row of each matching stream (blocking).
    fn latest(&self, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError>;
    /// Executes a write request as an MQTT `…/set` publish would be; resolves with the answer's payload
    /// (`{"ok":…}`), or a message when no answer came in time.
    fn write_point<'a>(
        &'a self,
        device: &'a str,
        point: &'a str,
        payload: bytes::Bytes,
    ) -> BoxFuture<'a, Result<bytes::Bytes, String>>;
    /// Latest values and device statuses.
    fn live(&self) -> Arc<LiveState>;
    /// The pipeline's counters.
    fn pipeline_stats(&self) -> Arc<PipelineStats>;
    /// What each running bridge reports. Bridges missing here are still listed (state `unknown`, lag from
    /// their store cursor).
    fn bridge_statuses(&self) -> Vec<BridgeView>;
    /// Re-reads the configuration file; on errors the running configuration is kept.
    fn reload(&self) -> BoxFuture<'_, Result<ReloadSummary, ConfigErrors>>;
}

/// What a running bridge reports, as the API shows it.
impl From<&BridgeStatus> for BridgeView {
    fn from(s: &BridgeStatus) -> BridgeView {
        BridgeView {
            name: s.name.clone(),
            url: s.url.clone(),
            state: s.state.as_str().to_string(),
            lag_rows: s.lag_rows,
            lag_seconds: Some(s.lag_seconds),
            drain_rate: Some(s.drain_rate),
            eta_seconds: s.eta_seconds,
            cursor_seq: Some(s.cursor),
            lost_rows: 0,
            since: Some(ms_to_rfc3339(s.since_ms)),
            delivered: s.delivered,
            resent: s.resent,
            refused: s.refused,
            skipped: s.skipped,
            inflight: s.inflight as u64,
            window: s.window as u64,
            connects: s.connects,
            last_error: s.last_error.clone(),
            last_error_at: s.last_error_ms.map(ms_to_rfc3339),
        }
    }
}
