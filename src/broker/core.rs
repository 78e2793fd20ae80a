//! The broker's shared state: the session registry, the router, metrics, and the publish path every source
//! (client connections, the in-process link, wills, `$SYS`) goes through.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::config::BrokerConfig;

use super::message::Message;
use super::router::{Router, Target};
use super::session::{Offer, OfflineBudget, Outbound, Session};
use crate::metrics::Metric;
use crate::mqtt::{LastWill, Protocol, QoS};

/// Counters of the broker. All monotonic except `clients_connected`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections currently open (MQTT sessions attached to a socket).
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received from clients and in-process publishes.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients and deliveries to in-process links.
    pub messages_sent: AtomicU64,
    /// Bytes read from sockets.
    pub bytes_received: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_sent: AtomicU64,
    /// Deliveries dropped because a session queue was full (QoS 0) or its session was offline and full.
    pub dropped_queue_full: AtomicU64,
    /// Deliveries dropped because the message expired before it could be sent.
    pub dropped_expired: AtomicU64,
    /// Deliveries dropped because they exceeded the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Publishes refused by the ACL.
    pub denied_publishes: AtomicU64,
    /// Deliveries withheld because the receiver may not read the topic (see `broker::auth`).
    pub denied_deliveries: AtomicU64,
    /// Connections closed for protocol violations or malformed packets.
    pub protocol_errors: AtomicU64,
    /// Connections refused at CONNECT (auth, client id, limits).
    pub connections_refused: AtomicU64,
    /// Subscribers disconnected because they made no room in their queue within `max_publish_wait`.
    pub slow_consumers_disconnected: AtomicU64,
    /// Topics and filters refused for `max_topic_levels` / `max_topic_length`.
    pub refused_topic_limits: AtomicU64,
    /// Subscriptions refused for `max_subscriptions_per_client`.
    pub refused_subscriptions: AtomicU64,
    /// Retained messages not stored for `max_retained_messages` / `max_retained_bytes`.
    pub refused_retained: AtomicU64,
    /// Persistent sessions refused for `max_offline_sessions`.
    pub refused_sessions: AtomicU64,
    /// Connections closed because a packet did not complete within `packet_timeout`.
    pub packet_timeouts: AtomicU64,
}

impl Metrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the metrics plus gauges, for `$SYS`, the status command and the HTTP API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BrokerStats {
    /// Seconds since the broker started.
    pub uptime_secs: u64,
    /// Connections open.
    pub clients_connected: u64,
    /// Sessions known (connected or persisted).
    pub sessions: usize,
    /// Subscriptions in the tree.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// See [`Metrics`].
    pub messages_received: u64,
    /// See [`Metrics`].
    pub messages_sent: u64,
    /// See [`Metrics`].
    pub bytes_received: u64,
    /// See [`Metrics`].
    pub bytes_sent: u64,
    /// See [`Metrics`].
    pub dropped_queue_full: u64,
    /// See [`Metrics`].
    pub dropped_expired: u64,
    /// See [`Metrics`].
    pub dropped_too_large: u64,
    /// See [`Metrics`].
    pub denied_publishes: u64,
    /// See [`Metrics`].
    pub denied_deliveries: u64,
    /// See [`Metrics`].
    pub protocol_errors: u64,
    /// See [`Metrics`].
    pub connections_refused: u64,
    /// See [`Metrics`].
    pub slow_consumers_disconnected: u64,
    /// See [`Metrics`].
    pub refused_topic_limits: u64,
    /// See [`Metrics`].
    pub refused_subscriptions: u64,
    /// See [`Metrics`].
    pub refused_retained: u64,
    /// See [`Metrics`].
    pub refused_sessions: u64,
    /// See [`Metrics`].
    pub packet_timeouts: u64,
    /// Bytes queued for offline sessions, charged to `max_offline_queued_bytes`.
    pub offline_queued_bytes: u64,
}

/// The broker's counters and gauges, described once for `/metrics`, `$SYS` and `/api/status` (see
/// [`crate::metrics`]).
pub const METRICS: &[Metric<BrokerStats>] = &[
    M::gauge(
        "fieldbridge_broker_clients_connected",
        "MQTT connections open.",
        "clients_connected",
        |b| Some(b.clients_connected as f64),
    )
    .sys("clients/connected"),
    M::gauge(
        "fieldbridge_broker_sessions",
        "MQTT sessions known (connected or persisted).",
        "sessions",
        |b| Some(b.sessions as f64),
    )
    .sys("clients/total"),
    M::gauge(
        "fieldbridge_broker_subscriptions",
        "Subscriptions in the topic tree.",
        "subscriptions",
        |b| Some(b.subscriptions as f64),
    )
    .sys("subscriptions/count"),
    M::gauge(
        "fieldbridge_broker_retained_messages",
        "Retained messages held by the broker.",
        "retained",
        |b| Some(b.retained as f64),
    )
    .sys("retained messages/count"),
    M::counter(
        "fieldbridge_broker_messages_received_total",
        "PUBLISH packets received (clients and the daemon itself).",
        "messages_received",
        |b| Some(b.messages_received as f64),
    )
    .sys("messages/received"),
    M::counter(
        "fieldbridge_broker_messages_sent_total",
        "PUBLISH packets sent to clients.",
        "messages_sent",
        |b| Some(b.messages_sent as f64),
    )
    .sys("messages/sent"),
    M::counter(
        "fieldbridge_broker_received_bytes_total",
        "Bytes read from client connections.",
        "bytes_received",
        |b| Some(b.bytes_received as f64),
    )
    .sys("bytes/received"),
    M::counter(
        "fieldbridge_broker_sent_bytes_total",
        "Bytes written to client connections.",
        "bytes_sent",
        |b| Some(b.bytes_sent as f64),
    )
    .sys("bytes/sent"),
    M::counter(
        "fieldbridge_broker_publishes_denied_total",
        "Publishes refused by the ACL.",
        "denied_publishes",
        |b| Some(b.denied_publishes as f64),
    ),
    M::counter(
        "fieldbridge_broker_deliveries_denied_total",
        "Deliveries withheld because the receiver may not read the topic (ACL).",
        "denied_deliveries",
        |b| Some(b.denied_deliveries as f64),
    ),
    M::counter(
        "fieldbridge_broker_protocol_errors_total",
        "Connections closed for a protocol violation.",
        "protocol_errors",
        |b| Some(b.protocol_errors as f64),
    ),
    M::counter(
        "fieldbridge_broker_connections_refused_total",
        "CONNECTs refused (credentials, limits).",
        "connections_refused",
        |b| Some(b.connections_refused as f64),
    )
    .sys("connections/refused"),
    M::counter(
        "fieldbridge_broker_slow_consumers_disconnected_total",
        "Subscribers disconnected for making no room in their queue within max_publish_wait.",
        "slow_consumers_disconnected",
        |b| Some(b.slow_consumers_disconnected as f64),
    ),
    M::counter(
        "fieldbridge_broker_packet_timeouts_total",
        "Connections closed because a packet did not complete within packet_timeout.",
        "packet_timeouts",
        |b| Some(b.packet_timeouts as f64),
    ),
    M::counter(
        LIMIT_REFUSALS,
        LIMIT_REFUSALS_HELP,
        "refused_topic_limits",
        |b| Some(b.refused_topic_limits as f64),
    )
    .label("limit", "topic"),
    M::counter(
        LIMIT_REFUSALS,
        LIMIT_REFUSALS_HELP,
        "refused_subscriptions",
        |b| Some(b.refused_subscriptions as f64),
    )
    .label("limit", "subscriptions"),
    M::counter(
        LIMIT_REFUSALS,
        LIMIT_REFUSALS_HELP,
        "refused_retained",
        |b| Some(b.refused_retained as f64),
    )
    .label("limit", "retained"),
    M::counter(
        LIMIT_REFUSALS,
        LIMIT_REFUSALS_HELP,
        "refused_sessions",
        |b| Some(b.refused_sessions as f64),
    )
    .label("limit", "offline_sessions"),
    M::gauge(
        "fieldbridge_broker_offline_queued_bytes",
        "Bytes queued for offline sessions (charged to max_offline_queued_bytes).",
        "offline_queued_bytes",
        |b| Some(b.offline_queued_bytes as f64),
    ),
    M::counter(DROPPED, DROPPED_HELP, "dropped_queue_full", |b| {
        Some(b.dropped_queue_full as f64)
    })
    .label("reason", "queue_full")
    .sys("messages/dropped"),
    M::counter(DROPPED, DROPPED_HELP, "dropped_expired", |b| {
        Some(b.dropped_expired as f64)
    })
    .label("reason", "expired")
    .sys("messages/dropped"),
    M::counter(DROPPED, DROPPED_HELP, "dropped_too_large", |b| {
        Some(b.dropped_too_large as f64)
    })
    .label("reason", "too_large")
    .sys("messages/dropped"),
];

type M = Metric<BrokerStats>;
const LIMIT_REFUSALS: &str = "fieldbridge_broker_limit_refusals_total";
const LIMIT_REFUSALS_HELP: &str = "Requests refused by a broker limit, by limit.";
const DROPPED: &str = "fieldbridge_broker_messages_dropped_total";
const DROPPED_HELP: &str = "Messages the broker could not deliver to a subscriber, by reason.";

/// Why a publish hook refused a message (the client gets PUBACK/PUBREC with this v5 reason code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRefusal {
    /// v5 reason code, e.g. 0x97 quota exceeded.
    pub reason_code: u8,
    /// Human-readable reason (sent as reason string).
    pub reason: String,
}

/// Resolves when a logged message is durable (or says why it never will be).
pub type CommitFuture = BoxFuture<'static, Result<(), HookRefusal>>;

/// Resolves when the log has accepted a message (it waits while the log applies back-pressure), yielding the
/// [`CommitFuture`].
pub type AdmissionFuture = BoxFuture<'static, Result<CommitFuture, HookRefusal>>;

/// Called for every publish from a client (not for in-process publishes, which log themselves). The store uses
/// it to log messages that match a forward or record filter. Two phases keep both promises: the connection
/// stops reading until the message is *admitted* (per-connection order, and back-pressure when the log is full
/// under `block`), and sends PUBACK/PUBREC only once it is *committed* (`durability: strict`).
pub trait PublishHook: Send + Sync + 'static {
    /// `None`: the message is not logged.
    fn on_publish(&self, msg: &Arc<Message>) -> Option<AdmissionFuture>;
}

pub(crate) struct Inner {
    pub cfg: RwLock<Arc<BrokerConfig>>,
    /// Bumped after every `update_config`: connections compare it (one relaxed load) before re-reading `cfg`.
    pub cfg_generation: AtomicU64,
    pub router: RwLock<Router>,
    pub sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    next_session_id: AtomicU64,
    pub metrics: Metrics,
    pub started: Instant,
    pub connections: AtomicUsize,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub hook: RwLock<Option<Arc<dyn PublishHook>>>,
    pub offline_budget: OfflineBudget,
    /// The state saver's bookkeeping, once [`Broker::persist_to`] was called.
    pub persist: Mutex<Option<super::persist::PersistState>>,
    /// Sessions kept while their client is away (see `SessionState::counted_offline`).
    pub offline_sessions: AtomicUsize,
    /// Whether the in-process publishers' retained refusal was logged already (clients log once each).
    retained_refusal_logged: std::sync::atomic::AtomicBool,
    /// Whether the keepalive/shutdown sweeper runs (started by the first connection).
    sweeper: std::sync::atomic::AtomicBool,
}

/// The embedded broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// Upper bound on a client-requested session expiry meaning "never" in v5.
pub(crate) const EXPIRY_NEVER: u32 = u32::MAX;

/// How often expired keepalives are looked for: a silent client is disconnected at most this late.
const KEEPALIVE_SWEEP: Duration = Duration::from_secs(1);

impl Broker {
    /// A broker with no listeners yet (see [`Broker::serve`]).
    pub fn new(cfg: BrokerConfig) -> Broker {
        let offline_budget = OfflineBudget::new(cfg.limits.max_offline_queued_bytes);
        offline_budget.set_session_max(cfg.limits.max_queued_bytes);
        Broker {
            inner: Arc::new(Inner {
                cfg: RwLock::new(Arc::new(cfg)),
                cfg_generation: AtomicU64::new(0),
                router: RwLock::new(Router::default()),
                sessions: Mutex::new(HashMap::new()),
                next_session_id: AtomicU64::new(1),
                metrics: Metrics::default(),
                started: Instant::now(),
                connections: AtomicUsize::new(0),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                hook: RwLock::new(None),
                offline_budget,
                offline_sessions: AtomicUsize::new(0),
                persist: Mutex::new(None),
                retained_refusal_logged: std::sync::atomic::AtomicBool::new(false),
                sweeper: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<BrokerConfig> {
        self.inner.cfg.read().clone()
    }

    /// Replaces the settings that can change without a restart (users, ACL, limits). Listeners are not
    /// re-bound: the caller restarts them when they changed. Connected clients stay connected.
    pub fn update_config(&self, cfg: BrokerConfig) {
        self.inner
            .offline_budget
            .set_max(cfg.limits.max_offline_queued_bytes);
        self.inner
            .offline_budget
            .set_session_max(cfg.limits.max_queued_bytes);
        *self.inner.cfg.write() = Arc::new(cfg);
        self.inner.cfg_generation.fetch_add(1, Ordering::Release);
    }

    /// Installs the publish hook (the store).
    pub fn set_publish_hook(&self, hook: Arc<dyn PublishHook>) {
        *self.inner.hook.write() = Some(hook);
    }

    pub(crate) fn hook(&self) -> Option<Arc<dyn PublishHook>> {
        self.inner.hook.read().clone()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> BrokerStats {
        let m = &self.inner.metrics;
        let router = self.inner.router.read();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BrokerStats {
            uptime_secs: self.inner.started.elapsed().as_secs(),
            clients_connected: get(&m.clients_connected),
            sessions: self.inner.sessions.lock().len(),
            subscriptions: router.subscription_count(),
            retained: router.retained_count(),
            messages_received: get(&m.messages_received),
            messages_sent: get(&m.messages_sent),
            bytes_received: get(&m.bytes_received),
            bytes_sent: get(&m.bytes_sent),
            dropped_queue_full: get(&m.dropped_queue_full),
            dropped_expired: get(&m.dropped_expired),
            dropped_too_large: get(&m.dropped_too_large),
            denied_publishes: get(&m.denied_publishes),
            denied_deliveries: get(&m.denied_deliveries),
            protocol_errors: get(&m.protocol_errors),
            connections_refused: get(&m.connections_refused),
            slow_consumers_disconnected: get(&m.slow_consumers_disconnected),
            refused_topic_limits: get(&m.refused_topic_limits),
            refused_subscriptions: get(&m.refused_subscriptions),
            refused_retained: get(&m.refused_retained),
            refused_sessions: get(&m.refused_sessions),
            packet_timeouts: get(&m.packet_timeouts),
            offline_queued_bytes: self.inner.offline_budget.used(),
        }
    }

    /// Publishes a message from inside the daemon (no session: no-local does not apply).
    pub async fn publish(&self, msg: Message) {
        Metrics::inc(&self.inner.metrics.messages_received);
        self.route(Arc::new(msg)).await;
    }

    /// Stores/clears the retained message if the message is retained, then delivers it to every matching
    /// session, waiting (bounded by `max_publish_wait`) for room in queues of connected subscribers.
    pub(crate) async fn route(&self, msg: Arc<Message>) {
        let (targets, refused) = self.targets(&msg);
        if refused
            && !self
                .inner
                .retained_refusal_logged
                .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(topic = %msg.topic, "retained message not stored: max_retained_messages or max_retained_bytes reached (logged once)");
        }
        // One deadline for the message, set when it first has to wait: a subscriber still full after it is
        // disconnected at once, so the link waits at most `max_publish_wait` in all (it waited that long per
        // stuck subscriber, one after another: 16 s behind 16 of them, readings held up all that time).
        let mut deadline = None;
        for target in targets {
            let (session, out) = outbound_for(target, &msg);
            self.deliver(session, out, &mut deadline).await;
        }
    }

    /// Updates the retained store and returns the sessions the message goes to, and whether the retained
    /// store refused the message (over its limits; counted).
    pub(crate) fn targets(&self, msg: &Arc<Message>) -> (Vec<Target>, bool) {
        let mut refused = false;
        if msg.retain {
            let limits = self.config().limits.clone();
            refused = !self.inner.router.write().retain(
                msg,
                limits.max_retained_messages,
                limits.max_retained_bytes,
            );
            if refused {
                Metrics::inc(&self.inner.metrics.refused_retained);
            }
            self.mark_retained(&msg.topic);
        }
        (self.inner.router.read().route(msg), refused)
    }

    /// Offers without waiting: `Some(out)` when the session's queue is full and the caller must wait on
    /// `session.space` (enabled *before* this call) and offer again.
    pub(crate) fn try_deliver(&self, session: &Session, out: Outbound) -> Option<Outbound> {
        match session.offer(out, &self.inner.offline_budget) {
            Offer::Queued => None,
            Offer::Dropped => {
                Metrics::inc(&self.inner.metrics.dropped_queue_full);
                None
            }
            Offer::Full(back) => Some(back),
        }
    }

    async fn deliver(
        &self,
        session: Arc<Session>,
        out: Outbound,
        deadline: &mut Option<tokio::time::Instant>,
    ) {
        let Some(mut out) = self.try_deliver(&session, out) else {
            return;
        };
        let deadline = *deadline.get_or_insert_with(|| {
            tokio::time::Instant::now() + self.config().limits.max_publish_wait
        });
        loop {
            let space = session.space_waiter().notified_owned();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.try_deliver(&session, out) {
                None => return,
                Some(back) => {
                    out = back;
                    tokio::select! {
                        _ = &mut space => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            self.evict_slow(&session);
                            if let Some(back) = self.try_deliver(&session, out) {
                                // An in-process consumer cannot be disconnected: the message is dropped, counted.
                                drop(back);
                                Metrics::inc(&self.inner.metrics.dropped_queue_full);
                                session.state.lock().dropped += 1;
                            }
                            return;
                        }
                        _ = self.inner.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Disconnects a subscriber that made no room in its full queue within `max_publish_wait` (v5 reason 0x97
    /// quota exceeded). Its session goes offline at once, so waiting publishers move on (their messages are
    /// queued within the offline limits or dropped and counted), and continues as any offline session.
    pub(crate) fn evict_slow(&self, session: &Session) {
        let kept = {
            let mut st = session.state.lock();
            if session.live.swap(0, Ordering::AcqRel) == 0 {
                return;
            }
            st.kicked = Some((st.generation, crate::mqtt::reason::QUOTA_EXCEEDED));
            // Only while the connection is attached: a takeover in between attached a new one.
            session.set_online(false);
            st.expiry_secs != 0
        };
        session.wake.notify_waiters();
        Metrics::inc(&self.inner.metrics.slow_consumers_disconnected);
        tracing::warn!(
            client_id = %session.client_id,
            wait = ?self.config().limits.max_publish_wait,
            "subscriber made no room in its full queue in time: disconnected (quota exceeded); {}",
            if kept {
                "its session continues offline"
            } else {
                "its session ends (a clean session)"
            }
        );
        session.notify_space();
    }

    /// Queues the retained messages matching `filter` for a session that just subscribed. Called by the
    /// session's own connection, which cannot wait for itself: these may exceed the queue cap (they are bounded
    /// by the number of retained messages).
    pub(crate) fn queue_retained(
        &self,
        session: &Session,
        filter: &str,
        qos: QoS,
        sub_id: Option<u32>,
    ) {
        let msgs = self
            .inner
            .router
            .read()
            .retained_matching(filter, Instant::now());
        if msgs.is_empty() {
            return;
        }
        let mut st = session.state.lock();
        st.version += 1;
        for msg in msgs {
            st.push_queued(Outbound {
                qos: msg.qos.min(qos),
                // Retained messages sent because of a subscribe always carry RETAIN=1.
                retain: true,
                sub_ids: sub_id.into_iter().collect(),
                msg,
            });
        }
        drop(st);
        session.wake.notify_one();
    }

    fn uncount_offline(&self, st: &mut super::session::SessionState) {
        if std::mem::take(&mut st.counted_offline) {
            self.inner.offline_sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a client asking for a persistent session may have one: it resumes its own, or the broker keeps
    /// fewer than `max_offline_sessions` sessions of absent clients. Refusals are counted.
    pub(crate) fn may_keep_session(&self, client_id: &str) -> bool {
        if self.inner.sessions.lock().contains_key(client_id) {
            return true;
        }
        let ok = self.inner.offline_sessions.load(Ordering::Relaxed)
            < self.config().limits.max_offline_sessions;
        if !ok {
            Metrics::inc(&self.inner.metrics.refused_sessions);
        }
        ok
    }

    pub(crate) fn new_session_id(&self) -> u64 {
        self.inner.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Finds or creates the session for `client_id`. With `clean_start` an existing session is discarded.
    /// Returns the session and whether an existing one was resumed. Takes over (cancels) any attached
    /// connection. A session of another user is refused (a v5 CONNACK code) unless `client_id_binding` is off.
    pub(crate) fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        protocol: Protocol,
        user: Option<&str>,
    ) -> Result<(Arc<Session>, bool, u64), u8> {
        let cfg = self.config();
        let mut sessions = self.inner.sessions.lock();
        let existing = sessions.get(client_id).cloned();
        if let Some(s) = &existing {
            let owner = s.state.lock().owner.clone();
            super::auth::check_binding(&cfg, owner.as_deref(), user)?;
        }
        // A connection being taken over leaves with its will (5.0 §3.1.4 -> §3.1.2.5): taken here, before a clean
        // start discards the session or the new connection's will replaces it (the old connection used to find
        // the new connection's will in the session and publish that one instead).
        let taken_over_will = existing
            .as_ref()
            .filter(|s| s.live.load(Ordering::Acquire) != 0)
            .and_then(|s| s.state.lock().will.take());
        let (session, present) = match existing {
            Some(s) if !clean_start => (s, true),
            other => {
                if let Some(old) = other {
                    self.discard_session_locked(&mut sessions, &old);
                }
                let s = Session::new(
                    self.new_session_id(),
                    client_id.clone(),
                    protocol,
                    cfg.max_queued_messages,
                );
                sessions.insert(client_id.clone(), s.clone());
                (s, false)
            }
        };
        self.start_sweeper();
        let generation;
        {
            let mut st = session.state.lock();
            if let Some(timers) = st.timers.take() {
                timers.cancel();
            }
            st.generation += 1;
            generation = st.generation;
            // The connection attached before (if any) sees it is no longer live and ends (takeover).
            session.live.store(generation, Ordering::Release);
            session.keepalive_deadline.store(0, Ordering::Relaxed);
            st.protocol = protocol;
            st.max_queue = cfg.max_queued_messages;
            st.kicked = None;
            st.version += 1;
            st.owner = user.map(Into::into);
            session.release_offline(&mut st, &self.inner.offline_budget);
            self.uncount_offline(&mut st);
        }
        session.set_online(true);
        session.wake.notify_waiters();
        drop(sessions);
        if let Some(w) = taken_over_will {
            // The old session ends (clean start): the will goes now, whatever its delay. It is resumed: a will
            // without a delay goes now, one with a delay is not sent (resumed within the delay, §3.1.3.2.2).
            if clean_start || w.properties.will_delay_interval.unwrap_or(0) == 0 {
                self.spawn_will(*w, Duration::ZERO, None);
            }
        }
        Ok((session, present, generation))
    }

    /// Cancels a session's connection and timers and removes its subscriptions; the caller holds the sessions
    /// lock and removes/replaces the map entry.
    fn discard_session_locked(
        &self,
        sessions: &mut HashMap<Arc<str>, Arc<Session>>,
        old: &Arc<Session>,
    ) {
        let filters: Vec<String> = {
            let mut st = old.state.lock();
            old.live.store(0, Ordering::Release);
            old.keepalive_deadline.store(0, Ordering::Relaxed);
            if let Some(t) = st.timers.take() {
                t.cancel();
            }
            st.will = None;
            let f = st.subscriptions.keys().cloned().collect();
            st.reset();
            old.release_offline(&mut st, &self.inner.offline_budget);
            self.uncount_offline(&mut st);
            f
        };
        {
            let mut router = self.inner.router.write();
            for f in &filters {
                router.unsubscribe(old.id, f);
            }
        }
        if sessions.get(&old.client_id).is_some_and(|s| s.id == old.id) {
            sessions.remove(&old.client_id);
        }
        old.set_online(false);
        old.wake.notify_waiters();
        old.notify_space();
    }

    /// Removes a session (expiry, clean session end, link drop).
    pub(crate) fn remove_session(&self, session: &Arc<Session>) {
        let mut sessions = self.inner.sessions.lock();
        self.discard_session_locked(&mut sessions, session);
    }

    /// Called when a connection ends. `clean` is a normal DISCONNECT (reason 0). Publishes or schedules the
    /// will and schedules session expiry.
    pub(crate) fn detach(
        &self,
        session: &Arc<Session>,
        generation: u64,
        clean: bool,
        will: Option<LastWill>,
    ) {
        let (expiry, timers) = {
            let mut st = session.state.lock();
            if st.generation != generation {
                // Taken over: the new connection resumed the session. A will with a delay is not sent when
                // the session is resumed within the delay (5.0 §3.1.3.2.2); one without a delay is.
                drop(st);
                let immediate =
                    will.filter(|w| !clean && w.properties.will_delay_interval.unwrap_or(0) == 0);
                if let Some(w) = immediate {
                    self.spawn_will(w, Duration::ZERO, None);
                }
                return;
            }
            session.live.store(0, Ordering::Release);
            session.keepalive_deadline.store(0, Ordering::Relaxed);
            session.set_online(false);
            let token = CancellationToken::new();
            st.timers = Some(token.clone());
            let mut expiry = st.expiry_secs;
            if expiry != 0 && !st.counted_offline {
                let max = self.config().limits.max_offline_sessions;
                let n = self.inner.offline_sessions.fetch_add(1, Ordering::Relaxed);
                if n >= max {
                    // Over the cap (clients that connected together and left together): not kept.
                    self.inner.offline_sessions.fetch_sub(1, Ordering::Relaxed);
                    Metrics::inc(&self.inner.metrics.refused_sessions);
                    tracing::warn!(client_id = %session.client_id, max, "session not kept: max_offline_sessions reached");
                    expiry = 0;
                } else {
                    st.counted_offline = true;
                }
            }
            (expiry, token)
        };
        session.notify_space();
        let will = will.filter(|_| !clean);
        if expiry == 0 {
            self.remove_session(session);
            if let Some(w) = will {
                self.spawn_will(w, Duration::ZERO, None);
            }
            return;
        }
        let expiry_after = (expiry != EXPIRY_NEVER).then(|| Duration::from_secs(u64::from(expiry)));
        if let Some(w) = will {
            let delay =
                Duration::from_secs(u64::from(w.properties.will_delay_interval.unwrap_or(0)));
            let delay = expiry_after.map_or(delay, |e| delay.min(e));
            self.spawn_will(w, delay, Some(timers.clone()));
        }
        if let Some(after) = expiry_after {
            self.spawn_expiry(session, generation, after, timers);
        }
    }

    /// Removes `session` after `after` unless a client resumed it (its generation moved) or `timers` fired.
    fn spawn_expiry(
        &self,
        session: &Arc<Session>,
        generation: u64,
        after: Duration,
        timers: CancellationToken,
    ) {
        let broker = self.clone();
        let session = session.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => {
                    let still_offline = session.state.lock().generation == generation;
                    if still_offline {
                        broker.remove_session(&session);
                    }
                }
                _ = timers.cancelled() => {}
                _ = broker.inner.shutdown.cancelled() => {}
            }
        });
    }

    /// Expiry for a session restored from saved state (offline, never attached in this run).
    pub(crate) fn schedule_expiry(&self, session: &Arc<Session>, expiry_secs: u32) {
        let token = CancellationToken::new();
        let generation = {
            let mut st = session.state.lock();
            st.timers = Some(token.clone());
            st.generation
        };
        if expiry_secs != EXPIRY_NEVER {
            self.spawn_expiry(
                session,
                generation,
                Duration::from_secs(u64::from(expiry_secs)),
                token,
            );
        }
    }

    fn spawn_will(&self, will: LastWill, delay: Duration, cancel: Option<CancellationToken>) {
        let broker = self.clone();
        let msg = Message::from_publish(
            crate::mqtt::Publish {
                dup: false,
                qos: will.qos,
                retain: will.retain,
                topic: will.topic.clone(),
                packet_id: 0,
                properties: will.properties,
                payload: will.payload,
            },
            will.topic,
            None,
        );
        let mut msg = msg;
        msg.properties.will_delay_interval = None;
        if delay.is_zero() {
            self.inner
                .tasks
                .spawn(async move { broker.publish(msg).await });
            return;
        }
        let cancel = cancel.unwrap_or_default();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => broker.publish(msg).await,
                _ = cancel.cancelled() => {}
                _ = broker.inner.shutdown.cancelled() => {}
            }
        });
    }

    /// Starts (once) the task that wakes connections whose keepalive ran out, checked every second, and every
    /// connection at shutdown. Connections carry no timer of their own while idle: one task for all of them
    /// costs less than a timer each (as mosquitto checks keepalives from its main loop).
    fn start_sweeper(&self) {
        if self.inner.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(KEEPALIVE_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = shutdown.cancelled() => true,
                };
                let Some(inner) = inner.upgrade() else { return };
                let now = inner.started.elapsed().as_millis() as u64;
                for s in inner.sessions.lock().values() {
                    let due = s.keepalive_deadline.load(Ordering::Relaxed);
                    if stopping || (due != 0 && now >= due) {
                        s.wake.notify_waiters();
                    }
                }
                if stopping {
                    return;
                }
            }
        });
    }

    /// Stops accepting connections, closes every connection and waits (bounded by `grace`) for the tasks.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(grace, self.inner.tasks.wait()).await;
    }

    /// A token cancelled when the broker shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }
}

/// The delivery of `msg` to one target: QoS downgraded to the granted one, retain as the subscription wants.
pub(crate) fn outbound_for(target: Target, msg: &Arc<Message>) -> (Arc<Session>, Outbound) {
    let out = Outbound {
        msg: msg.clone(),
        qos: msg.qos.min(target.qos),
        retain: msg.retain && target.retain_as_published,
        sub_ids: target.sub_ids,
    };
    (target.session, out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mqtt::QoS;

    /// A message waits for full subscribers `max_publish_wait` in all, not once per full subscriber: the
    /// first wait sets the deadline, and the other stuck ones are given up at it (measured on tokio's virtual
    /// clock: exact, and nobody waits). It used to take one wait each, one after another.
    #[tokio::test(start_paused = true)]
    async fn a_message_waits_for_full_subscribers_once_not_once_each() {
        let mut cfg = BrokerConfig {
            max_queued_messages: 2,
            ..BrokerConfig::default()
        };
        cfg.limits.max_publish_wait = Duration::from_secs(1);
        let b = Broker::new(cfg);
        let stuck: Vec<_> = (0..4)
            .map(|i| {
                let l = b.link(&format!("stuck{i}"));
                l.subscribe("t/#", QoS::AtLeastOnce).unwrap();
                l
            })
            .collect();
        let publisher = b.link("pipeline");
        let msg = || Message::new("t/x", "v", QoS::AtLeastOnce, false);
        for _ in 0..2 {
            publisher.publish(msg()).await;
        }
        let t0 = tokio::time::Instant::now();
        publisher.publish(msg()).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert_eq!(
            b.stats().dropped_queue_full,
            4,
            "one message per stuck consumer"
        );
        drop(stuck);
    }
}
