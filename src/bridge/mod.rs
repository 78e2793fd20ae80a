//! Upstream bridges: the durable log, forwarded to cloud brokers in order, at least once.
//!
//! # Shape
//!
//! Each configured bridge is one task (plus a read-ahead task and a local-publish task), on a thread of its
//! own with a single-threaded runtime (see `own_thread`: a drain at the upstream's Receive Maximum is bound
//! by PUBACK -> PUBLISH round trips, which must not hop between worker threads):
//!
//! ```text
//!   store ──read_from(cursor, 1000)──▶ reader ──Batch (rules applied, topics mapped)──▶ driver ──▶ upstream
//!     ▲                                                                                  │ ▲ │  ▲
//!     └──────────── set_cursor(contiguous acked seq), every 200 ms and at stop ◀────────┘ │ │  │ PUBACK/PUBCOMP
//!   broker ◀── local task ◀── inbound PUBLISH (subscribe rules) / retained state ◀────────┘ │  │
//!                                        machine (no I/O): on_bytes/on_rows/on_tick/… ──▶ actions
//! ```
//!
//! The protocol lives in `machine.rs`, an I/O-free state machine (`down → connecting → up → down…`,
//! `stopped`): bytes, rows, ticks and the stop go in; actions come out (`Send` bytes, `Advance` the cursor,
//! `Deliver` an inbound message, `Reconnect` after a delay, `Stopped`). `session.rs` is the thin driver:
//! the transport, the timers, the read-ahead channel, the local link and the status. Each read's packets
//! are answered together, and the answer is written in the same wakeup: one write per read, however many
//! PUBLISH packets it carries.
//!
//! # The mode machine
//!
//! `connecting` (transport + CONNECT/CONNACK, bounded by a timeout) → on success `live` or `backlog` →
//! on any failure `backoff` (exponential with jitter, `reconnect_min`..`reconnect_max`, reset by a successful
//! CONNACK) → `connecting` … `live` and `backlog` differ only in lag: `backlog` while the log head is more than
//! two (window + read batch) ahead of the cursor, `live` again once within one (hysteresis, so a busy live
//! stream does not flap). `stopped` at shutdown or removal. The mode, lag (rows and seconds behind), drain
//! rate, window and last error are in [`BridgeStatus`] ([`Bridges::statuses`]) and published retained on
//! `{gateway}/bridge/{name}/state` as JSON when the mode or error changes, and at most once a second while
//! the lag moves outside `live` — never per message. One log line per transition, never per message; a
//! connection error repeated at every retry is logged once.
//!
//! # Delivery
//!
//! - Rows are read from the cursor in log order; rows no forward rule matches are passed (the cursor moves
//!   over them). The first matching rule maps the topic (`{topic}`, `{1}`… captures), sets QoS (the rule's, else
//!   1 — 2 for a QoS 2 row — whatever QoS the row was published with: readings are QoS 0 locally yet must
//!   survive a link that dies slowly; only an explicit `qos: 0` sends at 0, and such rows may be lost on a
//!   cut) and retain (passed through unless the rule says not to). MQTT 5 properties of the row go up;
//!   message expiry is reduced by the time spent in the log, and rows that expired are not sent (counted
//!   in `skipped`).
//! - The in-flight window (see `window.rs`) holds at most min(`inflight`, the upstream's CONNACK Receive
//!   Maximum) rows, QoS 0 included; the birth (and the `offline` message at stop), QoS 1 publishes too,
//!   take a slot of the Receive Maximum while unacknowledged, so rows and control messages together never
//!   exceed it. A stop whose grace ends with every slot taken sends DISCONNECT with reason 0x04 (MQTT 5),
//!   so the upstream publishes the will (`offline`) instead. Packet identifiers are ours: each row keeps
//!   its identifier until acknowledged, across reconnects. MQTT 3.1.1 has no Receive Maximum, yet brokers
//!   have limits (mosquitto: `max_inflight_messages`, default 20, for QoS 2 from 3.1.1 clients): there
//!   `inflight` must respect them. A v5 upstream that refuses a message for its quota (0x97) or disconnects
//!   with 0x93 gets the same rows again on a new connection with half the window (kept until restart).
//! - The cursor is the highest seq with every earlier forwarded row complete: PUBACK (QoS 1), PUBCOMP (QoS 2),
//!   or for QoS 0 its bytes written to the socket. Acks out of order wait for the front. Nothing is marked
//!   delivered that was not acknowledged.
//! - After a reconnect, every incomplete row of the window is sent again first, in order, with DUP set and
//!   its original packet identifier (a QoS 2 row whose PUBREC came gets PUBREL again if the upstream kept the
//!   session, or is re-published if it did not). So a subscriber sees every row at least once, in log order
//!   per topic, and duplicates are at most one window per reconnect.
//! - A message the upstream refuses with an error reason code (not authorized, topic name invalid, payload
//!   format invalid…; not 0x97 quota exceeded, which is retried as above) is counted (`refused`), logged once per connection, and passed: it would never be accepted,
//!   and retrying it forever would stall every row behind it.
//! - Rate limit (`rate_limit`, messages/s): a token bucket in front of the window (bursts of 1/20 s). It
//!   matters when draining; a live stream slower than the limit never meets it.
//! - Birth and will: CONNECT carries a will of `offline` (retained, QoS 1) on `status_topic`; after each
//!   CONNACK `online` (retained) is published there. A clean stop publishes `offline` itself before
//!   DISCONNECT (a normal DISCONNECT discards the will).
//! - Keepalive: a PINGREQ goes out when nothing was sent or nothing received for `keepalive` (the server's
//!   Server Keep Alive wins, MQTT 5); when a PINGREQ is outstanding and nothing at all has been received
//!   for 1.5 × keepalive, the link is declared dead (a stall without FIN: a 4G link gone silent) and
//!   reconnected. The unacknowledged rows are simply sent again on the next connection.
//! - Subscribe rules: SUBSCRIBE after each CONNACK (No Local set in MQTT 5, so overlapping forwards do not
//!   come back down). Inbound messages are mapped by the first matching rule and published into the local
//!   broker through an in-process link. In-process publishes are never logged (see `recorder.rs`), so an
//!   inbound message can never be forwarded upstream again: that is the loop prevention.
//!
//! # What a crash leaves behind
//!
//! The durable state of a bridge is its cursor in the store, nothing else. The cursor is handed to the store
//! every 200 ms and at stop, and the store commits it with its next group (≤ `commit_interval`). After
//! `kill -9` or a power cut the bridge restarts from the last committed cursor and re-sends what was acked
//! after it: at least once, never lost. The duplicates are at most (rows acked in the last ~200 ms + one
//! commit interval) + one window. A clean stop (shutdown, reload) waits up to the grace period for the
//! in-flight acks, publishes `offline`, sends DISCONNECT and stores the cursor: no duplicates.
//!
//! # Reload
//!
//! [`Bridges::reload`] compares each bridge's whole configuration: unchanged bridges keep running untouched
//! (same connection, same window); changed ones stop cleanly and start again from their cursor; removed ones
//! stop, their retained state is cleared and their cursor removed (so retention is no longer held back; a
//! warning says how many logged rows they had not delivered); new ones start at the log head (the store's rule
//! for a new cursor). One bridge removed and one added with the same upstream URL is a rename: the new name
//! takes over the old cursor, and the backlog goes up.
//!
//! # Why not rumqttc
//!
//! The design asked for rumqttc with its event loop driven directly. Reading rumqttc 0.25's state machine
//! showed the mapping from acknowledgements to log rows cannot be made exact, so this client runs on the
//! project's own codec (the fallback the design names):
//! - rumqttc assigns packet identifiers itself (cycling 1..=inflight) and reports only
//!   `Outgoing::Publish(pkid)`; which row got which identifier must be inferred from request order, and
//!   after a reconnect it replays its own in-flight copy (`EventLoop::pending`, from `MqttState::clean`) in
//!   identifier order starting after the last PUBACK — not log order when acks came out of order — and
//!   emits `Outgoing::Publish` events for those again, so the inference breaks exactly when it matters.
//! - The replayed publishes are sent without the DUP flag (`clean()` returns them as they were), which the
//!   delivery promise requires; and with a clean session they are silently discarded, so the bridge would
//!   have to keep a second copy of the window anyway.
//! - MQTT 3.1.1 (`rumqttc::EventLoop`) writes and flushes one request per poll: one write syscall per
//!   message, far from the 50k msg/s drain target; here hundreds of publishes go out per write.
//! - A missing PINGRESP is detected only at the next ping interval (2 × keepalive), not configurable.
//!
//! Receive Maximum is honoured by rumqttc's MQTT 5 event loop, but that alone did not outweigh the above.
pub mod config;
mod machine;
mod reader;
mod rules;
mod session;
mod status;
mod transport;
mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bridge::config::BridgeConfig;
use crate::broker::{Broker, Message};
use crate::mqtt::QoS;
use crate::store::{now_ms, Store};

pub use status::{BridgeState, BridgeStatus};

/// Why a connection attempt or a connection failed. Kept as text in [`BridgeStatus::last_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// TCP connect failed (DNS, refused, unreachable).
    #[error("cannot connect to {0}")]
    Connect(String),
    /// TLS setup or handshake failed (bad CA, certificate not trusted, name mismatch, unreadable files).
    #[error("TLS: {0}")]
    Tls(String),
    /// The WebSocket handshake failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The upstream answered CONNACK with an error.
    #[error("the upstream refused the connection: {text} (CONNACK reason 0x{code:02X}){detail}")]
    Refused {
        /// MQTT 5 reason code (3.1.1 return codes mapped to it).
        code: u8,
        /// The reason in words.
        text: &'static str,
        /// The server's reason string and a hint.
        detail: String,
    },
    /// No CONNACK in time.
    #[error("no CONNACK within {0:?}")]
    ConnectTimeout(Duration),
    /// The connection closed before CONNACK: often TLS expected, or the protocol version refused silently.
    #[error("the upstream closed the connection before CONNACK (wrong port or scheme, TLS expected, or the MQTT version refused)")]
    ClosedBeforeConnAck,
    /// The upstream closed the connection.
    #[error("the upstream closed the connection")]
    Closed,
    /// The upstream sent DISCONNECT.
    #[error("the upstream disconnected: {text} (reason 0x{code:02X})")]
    Disconnected {
        /// Reason code.
        code: u8,
        /// The reason in words (and the server's reason string).
        text: String,
    },
    /// Nothing heard for 1.5 × keepalive with a PINGREQ outstanding.
    #[error("no answer from the upstream for {0:?} (keepalive): the link stalled")]
    KeepaliveTimeout(Duration),
    /// A subscribe rule's filter was refused.
    #[error("the upstream refused the subscription `{filter}`: {text} (reason 0x{code:02X})")]
    SubscribeRefused {
        /// The filter.
        filter: String,
        /// Reason code.
        code: u8,
        /// The reason in words.
        text: &'static str,
    },
    /// The upstream refused a message for exceeding its in-flight quota (0x97), or disconnected for it.
    #[error("the upstream's in-flight quota was exceeded; reconnecting with a window of {window} (set `inflight` to at most the upstream's limit)")]
    QuotaExceeded {
        /// The window used from now on.
        window: usize,
    },
    /// A read or write failed.
    #[error("connection error: {0}")]
    Io(String),
    /// The upstream broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// How long a reload waits for a changed or removed bridge's in-flight acks before it disconnects anyway.
const RELOAD_GRACE: Duration = Duration::from_secs(2);

struct Running {
    cfg: BridgeConfig,
    shared: Arc<status::Shared>,
    cancel: CancellationToken,
    grace: Arc<parking_lot::Mutex<Duration>>,
    task: JoinHandle<()>,
    /// A bridge whose owner is gone stops: its thread would otherwise outlive the owner's runtime.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

struct Inner {
    gateway: String,
    running: Vec<Running>,
}

/// All configured bridges. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Bridges {
    store: Store,
    broker: Broker,
    inner: tokio::sync::Mutex<Inner>,
    /// The status handles, readable without waiting for a reload in progress.
    shared: parking_lot::Mutex<Vec<Arc<status::Shared>>>,
}

impl std::fmt::Debug for Bridges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridges")
            .field("bridges", &self.shared.lock().len())
            .finish_non_exhaustive()
    }
}

impl Bridges {
    /// Starts one task per bridge (call from inside the tokio runtime). `gateway` is the gateway id (the
    /// `{gateway}` of `{gateway}/bridge/{name}/state`).
    pub fn start(cfgs: &[BridgeConfig], gateway: &str, store: Store, broker: Broker) -> Bridges {
        // Cursors of bridges no longer configured (removed, or renamed while the daemon was stopped): said at
        // start, with what they had not delivered. Kept, so the old name given back resumes from them.
        let head = store.head();
        for (name, seq) in store.cursors() {
            if !cfgs.iter().any(|c| *c.name == *name) && seq < head {
                tracing::warn!(bridge = %name, undelivered = head - seq, "bridge {name} is in the log but not in the configuration: up to {} logged rows it had not delivered (seq {}..={head}) will not be sent. A bridge renamed while fieldbridge was stopped starts at the head of the log: give it its old name back to send them (a rename in a reload keeps the backlog).", head - seq, seq + 1);
            }
        }
        let running: Vec<Running> = cfgs
            .iter()
            .map(|c| spawn(c.clone(), gateway, &store, &broker))
            .collect();
        let shared = running.iter().map(|r| r.shared.clone()).collect();
        Bridges {
            store,
            broker,
            inner: tokio::sync::Mutex::new(Inner {
                gateway: gateway.to_string(),
                running,
            }),
            shared: parking_lot::Mutex::new(shared),
        }
    }

    /// Applies a new bridge list: unchanged bridges are not touched; changed ones restart from their cursor;
    /// removed ones stop and their cursor is removed; new ones start. A changed gateway id restarts all.
    pub async fn reload(&self, cfgs: &[BridgeConfig], gateway: &str) {
        let mut inner = self.inner.lock().await;
        let gateway_changed = inner.gateway != gateway;
        let old = std::mem::take(&mut inner.running);
        let old_names: Vec<String> = old.iter().map(|r| r.cfg.name.to_string()).collect();
        let mut keep: Vec<Option<Running>> = Vec::new();
        let mut stopping = Vec::new();
        for r in old {
            let same = !gateway_changed && cfgs.contains(&r.cfg);
            if same {
                keep.push(Some(r));
            } else {
                let removed = !cfgs.iter().any(|c| c.name == r.cfg.name);
                stopping.push((r, removed));
            }
        }
        // One bridge removed and one added with the same upstream: a rename. The new name takes over the old
        // cursor, so the backlog still goes up (it started at the head of the log, the backlog silently
        // abandoned).
        let added: Vec<&BridgeConfig> = cfgs
            .iter()
            .filter(|c| !old_names.iter().any(|n| **n == *c.name))
            .collect();
        let removed: Vec<&Running> = stopping
            .iter()
            .filter(|(_, rm)| *rm)
            .map(|(r, _)| r)
            .collect();
        let renamed = match (removed.as_slice(), added.as_slice()) {
            ([r], [c]) if r.cfg.url == c.url => Some((r.cfg.name.clone(), c.name.clone())),
            _ => None,
        };
        // Stop first: a changed bridge must have stored its cursor before its successor reads it.
        for (r, _) in &stopping {
            *r.grace.lock() = RELOAD_GRACE;
            r.cancel.cancel();
        }
        for (r, removed) in stopping {
            let name = r.cfg.name.clone();
            let old_state_topic = state_topic(&inner.gateway, &name);
            let _ = tokio::time::timeout(RELOAD_GRACE + Duration::from_secs(3), r.task).await;
            if removed {
                let seq = self
                    .store
                    .cursors()
                    .into_iter()
                    .find_map(|(n, s)| (n == name).then_some(s));
                match renamed.as_ref().filter(|(from, _)| *from == name) {
                    Some((_, to)) => match self.store.rename_cursor(&name, to) {
                        Ok(Some(seq)) => {
                            tracing::info!(bridge = %name, "bridge {name}: renamed to {to}, which goes on from its cursor (seq {seq})")
                        }
                        Ok(None) => {
                            tracing::warn!(bridge = %name, "bridge {name}: renamed to {to}, which already had a cursor of its own")
                        }
                        Err(e) => {
                            tracing::warn!(bridge = %name, "bridge {name}: cursor not renamed: {e}")
                        }
                    },
                    None => {
                        if let Err(e) = self.store.remove_cursor(&name) {
                            tracing::warn!(bridge = %name, "bridge {name}: cursor not removed: {e}");
                        }
                        let head = self.store.head();
                        match seq {
                            Some(seq) if seq < head => {
                                tracing::warn!(bridge = %name, undelivered = head - seq, "bridge {name}: removed with up to {} logged rows it had not delivered (seq {}..={head}): they stay in the log for history, but no bridge will send them. (A bridge renamed alone, with the same upstream, keeps its backlog.)", head - seq, seq + 1)
                            }
                            _ => tracing::info!(bridge = %name, "bridge {name}: removed"),
                        }
                    }
                }
            } else {
                tracing::info!(bridge = %name, "bridge {name}: configuration changed, restarting from its cursor");
            }
            if removed || gateway_changed {
                // Clear the retained state of a bridge that no longer exists (under that topic).
                self.broker
                    .publish(Message::new(
                        old_state_topic,
                        bytes::Bytes::new(),
                        QoS::AtLeastOnce,
                        true,
                    ))
                    .await;
            }
        }
        inner.gateway = gateway.to_string();
        let mut running = Vec::with_capacity(cfgs.len());
        for c in cfgs {
            let existing = keep
                .iter_mut()
                .find(|r| r.as_ref().is_some_and(|r| r.cfg == *c))
                .and_then(Option::take);
            running.push(match existing {
                Some(r) => r,
                None => spawn(c.clone(), gateway, &self.store, &self.broker),
            });
        }
        *self.shared.lock() = running.iter().map(|r| r.shared.clone()).collect();
        inner.running = running;
    }

    /// The status of every bridge, in configuration order. `lag_rows` is computed against the log head now.
    pub fn statuses(&self) -> Vec<BridgeStatus> {
        let head = self.store.head();
        self.shared
            .lock()
            .iter()
            .map(|s| {
                let mut st = s.status.lock().clone();
                if head > st.head {
                    st.head = head;
                    st.lag_rows = head.saturating_sub(st.cursor);
                    if let Some(eta) = st.eta_seconds.as_mut() {
                        // Only set while draining, with a measured rate (> 0).
                        *eta = st.lag_rows as f64 / st.drain_rate;
                    }
                }
                st
            })
            .collect()
    }

    /// One bridge's status.
    pub fn status(&self, name: &str) -> Option<BridgeStatus> {
        self.statuses().into_iter().find(|s| s.name == name)
    }

    /// Stops every bridge: each waits up to `grace` for its in-flight acks, publishes `offline`, sends
    /// DISCONNECT and stores its cursor. Returns when all have stopped (or `grace` + 3 s passed).
    pub async fn shutdown(&self, grace: Duration) {
        let mut inner = self.inner.lock().await;
        let running = std::mem::take(&mut inner.running);
        for r in &running {
            *r.grace.lock() = grace;
            r.cancel.cancel();
        }
        let all = futures::future::join_all(running.into_iter().map(|r| r.task));
        if tokio::time::timeout(grace + Duration::from_secs(3), all)
            .await
            .is_err()
        {
            tracing::warn!("bridges: some bridge did not stop within the grace period");
        }
    }
}

fn state_topic(gateway: &str, name: &str) -> String {
    format!("{gateway}/bridge/{name}/state")
}

fn spawn(cfg: BridgeConfig, gateway: &str, store: &Store, broker: &Broker) -> Running {
    let cursor = store.cursor(&cfg.name).unwrap_or(0);
    let shared = Arc::new(status::Shared {
        status: parking_lot::Mutex::new(BridgeStatus::new(
            &cfg.name,
            machine::url_text(&cfg),
            cursor,
            now_ms(),
        )),
    });
    let cancel = CancellationToken::new();
    let grace = Arc::new(parking_lot::Mutex::new(RELOAD_GRACE));
    let ctx = session::Ctx {
        cfg: cfg.clone(),
        state_topic: state_topic(gateway, &cfg.name),
        store: store.clone(),
        broker: broker.clone(),
        shared: shared.clone(),
        cancel: cancel.clone(),
        grace: grace.clone(),
        own_thread: false,
    };
    let task = own_thread(&cfg.name, move |own| {
        supervise(session::Ctx {
            own_thread: own,
            ..ctx
        })
    });
    Running {
        cfg,
        shared,
        cancel: cancel.clone(),
        grace,
        task,
        _stop_on_drop: cancel.drop_guard(),
    }
}

/// Runs a bridge on a thread of its own, with a single-threaded runtime: the PUBACK that frees a slot and
/// the PUBLISH that takes it are handled on one thread, without waking a worker of the shared runtime for
/// each round trip (with 20 messages in flight the drain is bound by these round trips, and handing the
/// connection between worker threads cost a third of the bridge's CPU). The read-ahead (SQLite on that
/// runtime's blocking pool) and the local-publish task run there too. The thread ends with the bridge. If
/// it cannot be started, the bridge runs on the caller's runtime instead. `make` is told which.
fn own_thread<F>(name: &str, make: impl FnOnce(bool) -> F + Send + 'static) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    // I/O and timers only: a runtime with the process driver also reaps child processes at every park (1 % of
    // this thread in a drain profile), and bridges start none.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .thread_name(format!("bridge-{name}-blocking"))
        .build();
    let why = match rt {
        Ok(rt) => {
            let handle = rt.handle().clone();
            // The runtime is driven until the bridge ends (the sender is dropped), then dropped with
            // whatever the bridge left on it.
            let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("bridge-{name}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = end_rx.await;
                    })
                });
            match thread {
                Ok(_) => {
                    return handle.spawn(async move {
                        make(true).await;
                        drop(end_tx);
                    })
                }
                Err(e) => e.to_string(),
            }
        }
        Err(e) => e.to_string(),
    };
    tracing::warn!(bridge = %name, "bridge {name}: no thread of its own ({why}); it runs on the shared runtime");
    tokio::spawn(make(false))
}

/// Runs the bridge; a panic (a bug) is logged and the bridge restarted from its cursor after a pause, so
/// one bridge's bug does not end forwarding for good.
async fn supervise(ctx: session::Ctx) {
    loop {
        let again = ctx.clone();
        match tokio::spawn(session::run(again)).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(bridge = %ctx.cfg.name, "bridge {}: task panicked; restarting it from its cursor in 5 s", ctx.cfg.name);
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::config::{BrokerConfig, StorageConfig, Synchronous};

    /// Bounded waits. Shorter than the bridge's connect timeout (its 30 s keepalive), so a bridge that did
    /// not stop cannot pass by giving up on the silent upstream by itself.
    const WAIT: Duration = Duration::from_secs(10);

    /// Threads of this process with this name (`/proc/self/task/*/comm`).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim_end() == name)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// The future is told whether it runs on the thread of its own (where the bridge may let acks gather with
    /// a short sleep), and it does.
    #[tokio::test]
    async fn the_bridge_task_knows_it_has_a_thread_of_its_own() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = own_thread("told", move |own| async move {
            let name = std::thread::current().name().map(str::to_string);
            let _ = tx.send((own, name));
        });
        let (own, name) = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
        assert!(own, "the task was not told it has a thread of its own");
        assert_eq!(name.as_deref(), Some("bridge-told"));
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }

    /// The bridge runs on a thread of its own, and a `Bridges` dropped without `shutdown` (an owner that
    /// went away) still stops it: the connection is closed and the thread ends, rather than living on
    /// after the owner's runtime.
    #[tokio::test]
    async fn a_bridge_runs_on_its_own_thread_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StorageConfig {
            commit_interval: Duration::from_millis(5),
            synchronous: Synchronous::Normal,
            ..StorageConfig::at(dir.path().join("log.db"))
        })
        .unwrap();
        let broker = Broker::new(BrokerConfig::default());
        // An upstream that accepts the connection and never answers CONNECT: the bridge stays connecting.
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut cfg = machine::tests::cfg();
        cfg.name = "own".into();
        cfg.url.port = upstream.local_addr().unwrap().port();
        cfg.keepalive = Duration::from_secs(30);
        let bridges = Bridges::start(std::slice::from_ref(&cfg), "gw", store, broker);
        let (mut conn, _) = tokio::time::timeout(WAIT, upstream.accept())
            .await
            .expect("the bridge connects")
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
            .await
            .expect("CONNECT arrives")
            .unwrap();
        assert!(
            n > 0 && buf[0] >> 4 == 1,
            "CONNECT expected, got {:?}",
            &buf[..n]
        );
        assert_eq!(threads_named("bridge-own"), 1, "the bridge's own thread");

        drop(bridges);
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the dropped bridge closes its connection");
        crate::store::tests::wait_until("the bridge's thread to end", || {
            threads_named("bridge-own") == 0
        })
        .await;
    }
}
