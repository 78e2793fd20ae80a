//! The link between the message flow and the store: which messages are logged, and how.
//!
//! - Readings are logged by the pipeline (through [`Recorder`]) with their device, point and numeric value,
//!   when their point is recorded or a bridge forwards their topic.
//! - Client publishes are logged by the broker's [`PublishHook`] when their topic matches a bridge `forward`
//!   filter or a `storage.record` filter. Under `durability: strict` the client's PUBACK/PUBREC waits for the
//!   commit, so an acknowledged message is never lost.
//! - In-process publishes (device status, bridge inbound messages, `$SYS`) are not logged: they are state, and
//!   logging a bridge's inbound traffic would send it straight back up (loop prevention).
//! - Answers to write requests (`…/set/result`, the MQTT 5 response topic) are the gateway's own messages: the
//!   pipeline logs them through [`Recorder::record_message`] when a filter matches, so a command that came
//!   through a bridge is answered upstream.
use std::sync::Arc;

use fieldbridge_sdk::Reading;
use futures::future::BoxFuture;
use parking_lot::RwLock;

use crate::broker::persist::{Saved, StateSink};
use crate::broker::{AdmissionFuture, CommitFuture, HookRefusal, Message, PublishHook};
use crate::config::{Config, Durability};
use crate::mqtt::reason;
use crate::pipeline::Recorder;
use crate::store::{now_ms, LogRecord, MsgProps, StateKind, StateOp, Store, StoreError};

/// Logs messages into the store; shared by the broker (hook) and the pipeline (recorder).
pub struct StoreLink {
    store: Store,
    filters: RwLock<Vec<String>>,
    strict: RwLock<bool>,
}

impl StoreLink {
    /// A link with the filters and durability of `cfg`.
    pub fn new(store: Store, cfg: &Config) -> StoreLink {
        let link = StoreLink {
            store,
            filters: RwLock::new(Vec::new()),
            strict: RwLock::new(true),
        };
        link.configure(cfg);
        link
    }

    /// Takes the filters and durability of a (re)loaded configuration.
    pub fn configure(&self, cfg: &Config) {
        let mut filters: Vec<String> = cfg
            .bridges
            .iter()
            .flat_map(|b| b.forward.iter().map(|f| f.filter.clone()))
            .chain(cfg.storage.record.iter().cloned())
            .collect();
        filters.sort();
        filters.dedup();
        *self.filters.write() = filters;
        *self.strict.write() = cfg.storage.durability == Durability::Strict;
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn matches(&self, topic: &str) -> bool {
        self.filters
            .read()
            .iter()
            .any(|f| crate::mqtt::filter_matches(f, topic))
    }
}

fn refusal(e: StoreError) -> HookRefusal {
    // Not stored: MQTT 5 says so with a failure reason (3.1.1 clients are disconnected instead).
    let reason_code = match e {
        StoreError::Full => reason::QUOTA_EXCEEDED,
        _ => reason::UNSPECIFIED_ERROR,
    };
    HookRefusal {
        reason_code,
        reason: e.to_string(),
    }
}

impl PublishHook for StoreLink {
    fn on_publish(&self, msg: &Arc<Message>) -> Option<AdmissionFuture> {
        if !self.matches(&msg.topic) {
            return None;
        }
        let rec = LogRecord {
            ts_ms: now_ms(),
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos as u8,
            retain: msg.retain,
            props: MsgProps::from_properties(&msg.properties).map(Box::new),
            device: None,
            point: None,
            num: None,
        };
        let store = self.store.clone();
        let strict = *self.strict.read();
        Some(Box::pin(async move {
            let commit: CommitFuture = if strict {
                let ticket = store.append(rec).await.map_err(refusal)?;
                Box::pin(async move { ticket.await.map(|_| ()).map_err(refusal) })
            } else {
                // Relaxed: acknowledged once queued; the row still commits within the commit interval.
                store.append_relaxed(rec).await.map_err(refusal)?;
                Box::pin(async { Ok(()) })
            };
            Ok(commit)
        }))
    }
}

/// The broker's retained messages and persistent sessions go into the same file, in the log's transactions.
impl StateSink for StoreLink {
    fn save(&self, changes: Vec<Saved>) -> BoxFuture<'static, ()> {
        let ops = changes
            .into_iter()
            .map(|c| {
                let (kind, key, value) = match c {
                    Saved::Retained { topic, value } => (StateKind::Retained, topic, value),
                    Saved::Session { client_id, value } => (StateKind::Session, client_id, value),
                };
                match value {
                    Some(value) => StateOp::Put { kind, key, value },
                    None => StateOp::Delete { kind, key },
                }
            })
            .collect();
        let store = self.store.clone();
        Box::pin(async move {
            if let Err(e) = store.save_state(ops).await {
                tracing::warn!(error = %e, "broker state not saved");
            }
        })
    }
}

impl Recorder for StoreLink {
    fn record(&self, msg: &Message, reading: &Reading, num: Option<f64>) -> BoxFuture<'static, ()> {
        let ts_ms = reading
            .ts
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let rec = LogRecord {
            ts_ms,
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos as u8,
            retain: msg.retain,
            props: None,
            device: Some(reading.device.clone()),
            point: Some(reading.point.clone()),
            num: num.filter(|n| n.is_finite()),
        };
        let store = self.store.clone();
        Box::pin(async move {
            // Refusals (drop_newest, unwritable disk) are counted and logged by the store itself; the reading
            // is still published locally.
            let _ = store.append_relaxed(rec).await;
        })
    }

    fn must_log(&self, topic: &str) -> bool {
        self.matches(topic)
    }

    fn record_message(&self, msg: &Message) -> BoxFuture<'static, ()> {
        let rec = LogRecord {
            ts_ms: now_ms(),
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos as u8,
            retain: msg.retain,
            props: MsgProps::from_properties(&msg.properties).map(Box::new),
            device: None,
            point: None,
            num: None,
        };
        let store = self.store.clone();
        Box::pin(async move {
            if let Ok(ticket) = store.append(rec).await {
                drop(ticket);
            }
        })
    }
}
