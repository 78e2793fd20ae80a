//! The running daemon as the HTTP API sees it ([`ApiState`]). Here rather than in `api/` so that `api` does not
//! depend on `app`.
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::api::model::BridgeView;
use crate::api::{ApiState, ReloadSummary};
use crate::broker::{BrokerStats, Message};
use crate::config::{Config, ConfigErrors};
use crate::mqtt::QoS;
use crate::pipeline::{LiveState, PipelineStats};
use crate::store::{
    BucketQuery, HistoryQuery, LogRow, Reading, Series, StoreError, StoreStats, WriterState,
};

use super::App;

/// How long a write waits for the command task's answer (which waits 30 s for the device).
const WRITE_TIMEOUT: Duration = Duration::from_secs(35);

impl ApiState for App {
    fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    fn uptime(&self) -> Duration {
        // The broker is created first thing in `App::start`, so its uptime is the daemon's.
        Duration::from_secs(self.broker.stats().uptime_secs)
    }

    fn broker_stats(&self) -> BrokerStats {
        self.broker.stats()
    }

    fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    fn store_path(&self) -> std::path::PathBuf {
        self.store.path().to_path_buf()
    }

    fn store_health(&self) -> (WriterState, Option<String>) {
        self.store.health()
    }

    fn query(&self, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
        self.store.query(q)
    }

    fn buckets(&self, q: &BucketQuery) -> Result<Vec<Series>, StoreError> {
        self.store.buckets(q)
    }

    fn latest(&self, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
        self.store.latest(q)
    }

    fn readings(&self, q: &HistoryQuery) -> Result<Vec<Reading>, StoreError> {
        self.store.readings(q)
    }

    fn write_point<'a>(
        &'a self,
        device: &'a str,
        point: &'a str,
        payload: bytes::Bytes,
    ) -> BoxFuture<'a, Result<bytes::Bytes, String>> {
        Box::pin(async move {
            let gateway = self.config().gateway.id.clone();
            let link = self.broker.link("api-write");
            let mut nonce = [0u8; 16];
            rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
            // A `$` topic: no `#` forward or record filter matches it, so the private answer is not logged.
            let reply = format!(
                "$fieldbridge/api/{}",
                data_encoding::HEXLOWER.encode(&nonce)
            );
            link.subscribe(&reply, QoS::AtLeastOnce)
                .map_err(|e| e.to_string())?;
            let mut msg = Message::new(
                format!("{gateway}/{device}/{point}/set"),
                payload,
                QoS::AtLeastOnce,
                false,
            );
            msg.properties.response_topic = Some(reply.clone());
            msg.properties.correlation_data = Some(bytes::Bytes::copy_from_slice(&nonce));
            link.publish(msg).await;
            // The command task gives a device 30 s.
            let answer = tokio::time::timeout(WRITE_TIMEOUT, async {
                loop {
                    let r = link.recv().await;
                    if *r.msg.topic == *reply {
                        return r.msg.payload.clone();
                    }
                }
            })
            .await;
            answer.map_err(|_| {
                format!(
                    "no answer to the write within {} s (is the device's adapter running?)",
                    WRITE_TIMEOUT.as_secs()
                )
            })
        })
    }

    fn live(&self) -> Arc<LiveState> {
        App::live(self)
    }

    fn pipeline_stats(&self) -> Arc<PipelineStats> {
        App::pipeline_stats(self)
    }

    fn bridge_statuses(&self) -> Vec<BridgeView> {
        self.bridges
            .statuses()
            .iter()
            .map(BridgeView::from)
            .collect()
    }

    fn reload(&self) -> BoxFuture<'_, Result<ReloadSummary, ConfigErrors>> {
        Box::pin(App::reload(self))
    }
}
