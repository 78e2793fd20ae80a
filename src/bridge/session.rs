//! One bridge's task: the mode machine around connections, and the connection loop itself (read acks, write
//! batches of publishes, keepalive, inbound messages), on the project's own codec.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fieldbridge_sdk::Backoff;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::reader::{self, Batch, Item, Reader};
use super::rules::Rules;
use super::status::{BridgeState, BridgeStatus, Shared};
use super::transport::{self, Io};
use super::window::{Acked, Window};
use super::BridgeError;
use crate::broker::codec::{
    self, reason, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Protocol, PubResp,
    Publish, QoS, RetainHandling, Subscribe, Subscription,
};
use crate::broker::{Broker, Message};
use crate::config::BridgeConfig;
use crate::store::{now_ms, Store};

/// Stop filling the write buffer beyond this: one write syscall carries hundreds of 100-byte publishes.
const WBUF_HIGH: usize = 256 * 1024;
/// How often the loop looks at keepalive, the cursor and the status.
const TICK: Duration = Duration::from_millis(100);
/// The cursor is handed to the store at most this often (the store commits it with its next group).
const PERSIST_EVERY: Duration = Duration::from_millis(200);
/// The retained state message is refreshed at most this often while lag changes (draining, offline).
const STATE_EVERY: Duration = Duration::from_secs(1);
/// The drain rate is measured over this much time (sliding) ...
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// ... from samples this far apart ...
const RATE_SAMPLE: Duration = Duration::from_millis(250);
/// ... once the samples span at least this much.
const RATE_MIN_SPAN: Duration = Duration::from_secs(1);
/// Inbound messages queued for local publishing.
const INBOUND_QUEUE: usize = 1024;
/// Receive Maximum we announce (v5): inbound messages in flight from the upstream.
const INBOUND_RECEIVE_MAXIMUM: u16 = 100;

/// Everything a bridge task needs.
pub(crate) struct Ctx {
    pub cfg: BridgeConfig,
    pub state_topic: String,
    pub store: Store,
    pub broker: Broker,
    pub shared: Arc<Shared>,
    pub cancel: CancellationToken,
    /// How long a stop may wait for in-flight acks (set by `Bridges::shutdown`).
    pub grace: Arc<parking_lot::Mutex<Duration>>,
}

/// How a connection ended.
enum End {
    Stopped,
    Lost(BridgeError),
}

/// What CONNACK told us about the upstream.
struct Upstream {
    window: usize,
    max_packet: usize,
    max_qos: QoS,
    retain_ok: bool,
    keepalive: Duration,
    session_present: bool,
}

struct Conn {
    rd: ReadHalf<Box<dyn Io>>,
    wr: WriteHalf<Box<dyn Io>>,
    rbuf: BytesMut,
    ack: ConnAck,
}

/// A token bucket for `rate_limit`.
struct Limiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    fn new(rate: u32) -> Limiter {
        let rate = f64::from(rate);
        let burst = (rate / 20.0).max(1.0);
        Limiter {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    fn ready(&mut self, now: Instant) -> bool {
        if self.tokens < 1.0 {
            self.refill(now);
        }
        self.tokens >= 1.0
    }

    fn spend(&mut self) {
        self.tokens -= 1.0;
    }

    fn next_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

struct Bridge {
    ctx: Ctx,
    name: String,
    rules: Arc<Rules>,
    window: Window,
    reader: Reader,
    current: Option<Batch>,
    reader_done: bool,
    limiter: Option<Limiter>,
    backoff: Backoff,
    inbound_tx: mpsc::Sender<Message>,
    state_tx: watch::Sender<Option<Bytes>>,
    status: BridgeStatus,
    persisted: u64,
    last_persist: Instant,
    last_state_pub: Instant,
    published: Option<(BridgeState, Option<String>, u64)>,
    /// `(when, delivered, lag_rows)` samples of the last [`RATE_WINDOW`], while connected.
    rate_samples: std::collections::VecDeque<(Instant, u64, u64)>,
    /// The cursor and the time of the first row after it, as last read from the log.
    oldest_at: Option<(u64, Option<i64>)>,
    skipped: u64,
    logged_error: Option<String>,
    backlog_started: Option<(Instant, u64)>,
    /// A window learned from a quota refusal (kept until the bridge restarts).
    learned_window: Option<usize>,
}

/// Runs a bridge until its token is cancelled.
pub(crate) async fn run(ctx: Ctx) {
    let name = ctx.cfg.name.clone();
    let cursor = loop {
        match ctx.store.cursor(&name) {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(bridge = %name, "bridge {name}: cannot read its cursor: {e}");
                {
                    let mut st = ctx.shared.status.lock();
                    st.last_error = Some(format!("store: {e}"));
                    st.last_error_ms = Some(now_ms());
                }
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    let rules = Arc::new(Rules::compile(&ctx.cfg.forward, &ctx.cfg.subscribe));
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (state_tx, state_rx) = watch::channel(None);
    let local = tokio::spawn(local_task(
        ctx.broker.clone(),
        name.clone(),
        ctx.state_topic.clone(),
        inbound_rx,
        state_rx,
    ));
    let reader = reader::spawn(name.clone(), ctx.store.clone(), rules.clone(), cursor);
    let status = ctx.shared.status.lock().clone();
    let now = Instant::now();
    let mut b = Bridge {
        name,
        rules,
        window: Window::new(cursor),
        reader,
        current: None,
        reader_done: false,
        limiter: ctx.cfg.rate_limit.map(Limiter::new),
        backoff: Backoff::new(ctx.cfg.reconnect_min, ctx.cfg.reconnect_max),
        inbound_tx,
        state_tx,
        status,
        persisted: cursor,
        last_persist: now,
        last_state_pub: now,
        published: None,
        rate_samples: std::collections::VecDeque::new(),
        oldest_at: None,
        skipped: 0,
        logged_error: None,
        backlog_started: None,
        learned_window: None,
        ctx,
    };
    b.main().await;
    b.persist(true);
    b.set_state(BridgeState::Stopped);
    b.refresh(true);
    tracing::info!(bridge = %b.name, cursor = b.window.cursor(), "bridge {}: stopped", b.name);
    let Bridge {
        inbound_tx,
        state_tx,
        ..
    } = b;
    drop(inbound_tx);
    drop(state_tx);
    // The local task publishes the final state and what is still queued, then ends.
    let _ = tokio::time::timeout(Duration::from_secs(2), local).await;
}

/// Publishes inbound messages and the retained state locally, off the connection loop, so a slow local
/// subscriber never delays acks or keepalive upstream.
async fn local_task(
    broker: Broker,
    name: String,
    state_topic: String,
    mut inbound: mpsc::Receiver<Message>,
    mut state: watch::Receiver<Option<Bytes>>,
) {
    let link = broker.link(&format!("bridge/{name}"));
    let mut state_open = true;
    loop {
        tokio::select! {
            m = inbound.recv() => match m {
                Some(m) => link.publish(m).await,
                None => break,
            },
            r = state.changed(), if state_open => {
                if r.is_err() {
                    state_open = false;
                }
                let doc = state.borrow_and_update().clone();
                if let Some(doc) = doc {
                    link.publish(Message::new(state_topic.as_str(), doc, QoS::AtLeastOnce, true)).await;
                }
            }
        }
    }
    // The final state, if it changed after the last publish.
    if state.has_changed().unwrap_or(true) {
        let doc = state.borrow_and_update().clone();
        if let Some(doc) = doc {
            link.publish(Message::new(
                state_topic.as_str(),
                doc,
                QoS::AtLeastOnce,
                true,
            ))
            .await;
        }
    }
}

impl Bridge {
    async fn main(&mut self) {
        loop {
            if self.ctx.cancel.is_cancelled() {
                return;
            }
            self.set_state(BridgeState::Connecting);
            self.refresh(false);
            let timeout = connect_timeout(&self.ctx.cfg);
            let attempt = tokio::select! {
                _ = self.ctx.cancel.cancelled() => return,
                r = tokio::time::timeout(timeout, connect(&self.ctx.cfg)) => r,
            };
            let err = match attempt {
                Ok(Ok(conn)) => match self.session(conn).await {
                    End::Stopped => return,
                    End::Lost(e) => {
                        tracing::warn!(bridge = %self.name, "bridge {}: connection lost: {e}", self.name);
                        self.logged_error = Some(e.to_string());
                        self.record_error(&e);
                        self.persist(true);
                        None
                    }
                },
                Ok(Err(e)) => Some(e),
                Err(_) => Some(BridgeError::ConnectTimeout(timeout)),
            };
            if let Some(e) = err {
                let text = e.to_string();
                if self.logged_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(bridge = %self.name, "bridge {}: cannot connect to {}: {text}; retrying with backoff", self.name, url_text(&self.ctx.cfg));
                    self.logged_error = Some(text);
                } else {
                    tracing::debug!(bridge = %self.name, "bridge {}: still cannot connect: {text}", self.name);
                }
                self.record_error(&e);
            }
            let delay = self.backoff.next_delay();
            self.set_state(BridgeState::Backoff);
            self.refresh(false);
            let until = Instant::now() + delay;
            while Instant::now() < until {
                let step = (until - Instant::now()).min(STATE_EVERY);
                tokio::select! {
                    _ = self.ctx.cancel.cancelled() => return,
                    _ = tokio::time::sleep(step) => {}
                }
                self.refresh(false);
            }
        }
    }

    fn record_error(&mut self, e: &BridgeError) {
        self.status.last_error = Some(e.to_string());
        self.status.last_error_ms = Some(now_ms());
    }

    fn set_state(&mut self, state: BridgeState) {
        if self.status.state != state {
            self.status.state = state;
            self.status.since_ms = now_ms();
        }
    }

    /// Hands the cursor to the store (which commits it with its next group) when it moved.
    fn persist(&mut self, force: bool) {
        let cursor = self.window.cursor();
        if cursor == self.persisted {
            return;
        }
        if !force && self.last_persist.elapsed() < PERSIST_EVERY {
            return;
        }
        match self.ctx.store.set_cursor(&self.name, cursor) {
            Ok(()) => self.persisted = cursor,
            Err(e) => {
                tracing::debug!(bridge = %self.name, "bridge {}: cursor not stored: {e}", self.name)
            }
        }
        self.last_persist = Instant::now();
    }

    /// Updates the shared status; publishes the retained state when the mode or error changed, or (not when
    /// live) when the lag changed and the last publish is a second old.
    fn refresh(&mut self, force: bool) {
        let now = Instant::now();
        let head = self.ctx.store.head();
        let cursor = self.window.cursor();
        let st = &mut self.status;
        st.cursor = cursor;
        st.head = head;
        st.lag_rows = head.saturating_sub(cursor);
        // The age of the oldest row not delivered: the first row after the cursor, read from the log (the
        // window and the read-ahead are empty during an outage). Looked up again only when the cursor moves.
        let oldest = if st.lag_rows == 0 {
            None
        } else {
            match self.oldest_at {
                Some((c, ts)) if c == cursor => ts,
                _ => {
                    let ts = self.ctx.store.oldest_ts_after(cursor);
                    self.oldest_at = Some((cursor, ts));
                    ts
                }
            }
        };
        st.lag_seconds =
            oldest.map_or(0.0, |ts| now_ms().saturating_sub(ts).max(0) as f64 / 1000.0);
        // Drain rate over a sliding window of samples, only while connected: a link that is down drains
        // nothing, and says so (0, no ETA) rather than decaying towards zero.
        if st.state.connected() {
            if self
                .rate_samples
                .back()
                .is_none_or(|s| now.saturating_duration_since(s.0) >= RATE_SAMPLE)
            {
                self.rate_samples
                    .push_back((now, self.window.delivered, st.lag_rows));
            }
            while self.rate_samples.len() > 2
                && now.saturating_duration_since(self.rate_samples[1].0) >= RATE_WINDOW
            {
                self.rate_samples.pop_front();
            }
        } else {
            self.rate_samples.clear();
        }
        let (rate, shrinking) = match self.rate_samples.front() {
            Some(&(t0, d0, l0)) if now.saturating_duration_since(t0) >= RATE_MIN_SPAN => (
                (self.window.delivered - d0) as f64
                    / now.saturating_duration_since(t0).as_secs_f64(),
                st.lag_rows < l0,
            ),
            _ => (0.0, false),
        };
        st.drain_rate = rate;
        // An ETA only while draining: connected, delivering, and the backlog getting smaller.
        st.eta_seconds = (st.state.connected() && rate > 0.0 && st.lag_rows > 0 && shrinking)
            .then(|| st.lag_rows as f64 / rate);
        st.inflight = self.window.len();
        st.window = self.window.limit();
        st.delivered = self.window.delivered;
        st.resent = self.window.resent;
        st.refused = self.window.refused;
        st.skipped = self.skipped;
        *self.ctx.shared.status.lock() = st.clone();

        let key = (st.state, st.last_error.clone(), st.lag_rows);
        let changed_mode = self
            .published
            .as_ref()
            .is_none_or(|(s, e, _)| *s != key.0 || *e != key.1);
        let lag_moved = self.published.as_ref().is_some_and(|(_, _, l)| *l != key.2)
            && st.state != BridgeState::Live
            && now.saturating_duration_since(self.last_state_pub) >= STATE_EVERY;
        if force || changed_mode || lag_moved {
            if let Ok(doc) = serde_json::to_vec(&*st) {
                let _ = self.state_tx.send(Some(Bytes::from(doc)));
            }
            self.published = Some(key);
            self.last_state_pub = now;
        }
    }

    /// Live or backlog, with hysteresis so a busy live stream does not flap.
    fn update_mode(&mut self, window: usize) {
        let lag = self.ctx.store.head().saturating_sub(self.window.cursor());
        let enter = (window + reader::BATCH_ROWS) as u64 * 2;
        let leave = (window + reader::BATCH_ROWS) as u64;
        match self.status.state {
            BridgeState::Live if lag > enter => {
                tracing::info!(bridge = %self.name, "bridge {}: draining a backlog of {lag} rows", self.name);
                self.backlog_started = Some((Instant::now(), self.window.delivered));
                self.set_state(BridgeState::Backlog);
            }
            BridgeState::Backlog if lag <= leave => {
                let (t, d) = self.backlog_started.take().unwrap_or((Instant::now(), 0));
                let n = self.window.delivered - d;
                let secs = t.elapsed().as_secs_f64();
                tracing::info!(bridge = %self.name, "bridge {}: backlog drained ({n} rows in {secs:.1}s, {:.0} rows/s)", self.name, n as f64 / secs.max(1e-3));
                self.set_state(BridgeState::Live);
            }
            BridgeState::Live | BridgeState::Backlog => {}
            _ => {
                if lag > leave {
                    tracing::info!(bridge = %self.name, "bridge {}: draining a backlog of {lag} rows", self.name);
                    self.backlog_started = Some((Instant::now(), self.window.delivered));
                    self.set_state(BridgeState::Backlog);
                } else {
                    self.set_state(BridgeState::Live);
                }
            }
        }
    }

    fn take_batch(&mut self, b: Batch) {
        self.skipped += b.expired + b.unroutable;
        self.current = Some(b);
    }

    /// Whether a row to forward is at hand, in the current batch or one already read ahead (never waits).
    /// An exhausted batch is dropped here, and the cursor may pass its tail (rows no rule matched).
    fn has_item(&mut self) -> bool {
        loop {
            match &self.current {
                Some(b) if !b.items.is_empty() => return true,
                Some(b) => {
                    let upto = b.upto;
                    self.current = None;
                    self.window.consumed(upto);
                }
                None => {}
            }
            match self.reader.rx.try_recv() {
                Ok(b) => self.take_batch(b),
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.reader_done = true;
                    return false;
                }
            }
        }
    }

    /// The next row to forward, if [`Bridge::has_item`].
    fn next_item(&mut self) -> Option<Item> {
        if !self.has_item() {
            return None;
        }
        self.current.as_mut()?.items.pop_front()
    }

    /// Encodes resends, then new rows, into `out` while the window, the rate limit and the buffer allow.
    fn fill(&mut self, up: &Upstream, protocol: Protocol, out: &mut BytesMut) {
        self.window.resend(protocol, out, WBUF_HIGH);
        while out.len() < WBUF_HIGH && self.window.room() && self.has_item() {
            if let Some(l) = &mut self.limiter {
                if !l.ready(Instant::now()) {
                    break;
                }
                l.spend();
            }
            let Some(mut item) = self.next_item() else {
                break;
            };
            let p = &mut item.publish;
            if p.qos > up.max_qos {
                p.qos = up.max_qos;
            }
            if !up.retain_ok {
                p.retain = false;
            }
            if up.max_packet < usize::MAX && codec::publish_encoded_len(p, protocol) > up.max_packet
            {
                tracing::warn!(bridge = %self.name, seq = item.seq, topic = %p.topic, "bridge {}: a message of {} bytes is larger than the upstream's maximum packet size ({}); skipped", self.name, p.payload.len(), up.max_packet);
                self.skipped += 1;
                self.window.consumed(item.seq);
                continue;
            }
            self.window.push(item.seq, item.publish, protocol, out);
        }
    }

    async fn session(&mut self, conn: Conn) -> End {
        let Conn {
            mut rd,
            mut wr,
            mut rbuf,
            ack,
        } = conn;
        let cfg = self.ctx.cfg.clone();
        let cfg = &cfg;
        let protocol = cfg.protocol;
        let p = &ack.properties;
        let v5 = protocol == Protocol::V5;
        // The upstream's Receive Maximum counts every QoS 1/2 PUBLISH in flight, the birth included: one
        // slot is kept for it (and for `offline` at stop), unless the upstream allows only one.
        let receive_max = if v5 {
            p.receive_maximum.map_or(usize::from(u16::MAX), usize::from)
        } else {
            usize::from(u16::MAX)
        };
        let control_qos = if receive_max > 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let up = Upstream {
            window: usize::from(cfg.inflight)
                .min(receive_max.saturating_sub(1).max(1))
                .min(self.learned_window.unwrap_or(usize::MAX)),
            max_packet: if v5 {
                p.maximum_packet_size.map_or(usize::MAX, |m| m as usize)
            } else {
                usize::MAX
            },
            max_qos: if v5 {
                p.maximum_qos
                    .and_then(QoS::from_u8)
                    .unwrap_or(QoS::ExactlyOnce)
            } else {
                QoS::ExactlyOnce
            },
            retain_ok: !v5 || p.retain_available != Some(0),
            keepalive: match p.server_keep_alive {
                Some(k) if v5 => Duration::from_secs(u64::from(k)),
                _ => cfg.keepalive,
            },
            session_present: ack.session_present,
        };
        let mut wbuf = BytesMut::with_capacity(WBUF_HIGH + 64 * 1024);
        self.window
            .reconnect(up.window, up.session_present, protocol, &mut wbuf);
        // What the last connection left unacknowledged goes first, before the birth.
        self.window.resend(protocol, &mut wbuf, WBUF_HIGH);
        self.backoff.reset();
        self.status.connects += 1;
        tracing::info!(
            bridge = %self.name,
            "bridge {}: connected to {} ({}, window {}{}{})",
            self.name,
            url_text(cfg),
            if v5 { "MQTT 5" } else { "MQTT 3.1.1" },
            self.window.limit(),
            if up.session_present { ", session resumed" } else { "" },
            if self.window.len() > 0 { format!(", resending {} unacknowledged", self.window.len()) } else { String::new() },
        );
        self.update_mode(up.window);
        self.refresh(false);

        // Birth: retained `online` on the status topic (the will says `offline`).
        let birth = if control_qos == QoS::AtMostOnce {
            0
        } else {
            self.window.control_pid()
        };
        codec::encode_publish(
            &Publish {
                dup: false,
                qos: control_qos,
                retain: up.retain_ok,
                topic: Arc::from(cfg.status_topic.as_str()),
                packet_id: birth,
                properties: Properties::default(),
                payload: Bytes::from_static(b"online"),
            },
            protocol,
            &mut wbuf,
        );
        let mut subscribe_pid = None;
        if !self.rules.subscribe.is_empty() {
            let pid = self.window.control_pid();
            subscribe_pid = Some(pid);
            let subs = self
                .rules
                .subscribe
                .iter()
                .map(|r| Subscription {
                    filter: r.filter.clone(),
                    qos: r.qos,
                    // Our own forwards never come back down (MQTT 5; 3.1.1 has no such option, and the
                    // inbound messages are not logged, so they cannot loop either way).
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                })
                .collect();
            codec::encode(
                &Packet::Subscribe(Subscribe {
                    packet_id: pid,
                    properties: Properties::default(),
                    subscriptions: subs,
                }),
                protocol,
                &mut wbuf,
            );
        }

        let mut inbound_qos2: HashSet<u16> = HashSet::new();
        let mut last_rx = Instant::now();
        let mut last_tx = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut need_flush = false;
        let mut stopping: Option<Instant> = None;
        let mut offline: Option<u16> = None;
        let mut offline_done = false;
        let mut refused_logged = false;
        let mut error_cleared = false;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let keepalive = up.keepalive;

        loop {
            if stopping.is_none() {
                self.fill(&up, protocol, &mut wbuf);
            } else {
                self.window.resend(protocol, &mut wbuf, WBUF_HIGH);
            }
            if let Some(deadline) = stopping {
                let now = Instant::now();
                if offline.is_none() && (self.window.outstanding() == 0 || now >= deadline) {
                    let pid = if control_qos == QoS::AtMostOnce {
                        // No acknowledgement will come for QoS 0: written is as good as it gets.
                        offline_done = true;
                        0
                    } else {
                        self.window.control_pid()
                    };
                    offline = Some(pid);
                    codec::encode_publish(
                        &Publish {
                            dup: false,
                            qos: control_qos,
                            retain: up.retain_ok,
                            topic: Arc::from(cfg.status_topic.as_str()),
                            packet_id: pid,
                            properties: Properties::default(),
                            payload: Bytes::from_static(b"offline"),
                        },
                        protocol,
                        &mut wbuf,
                    );
                }
                if offline_done || now >= deadline {
                    codec::encode(
                        &Packet::Disconnect(Disconnect::default()),
                        protocol,
                        &mut wbuf,
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        wr.write_all(&wbuf).await?;
                        wr.flush().await?;
                        wr.shutdown().await
                    })
                    .await;
                    return End::Stopped;
                }
            }
            let want_batch = stopping.is_none()
                && self.current.is_none()
                && !self.reader_done
                && self.window.room();
            let write_pending = !wbuf.is_empty() || need_flush;
            let limiter_at = self
                .limiter
                .as_ref()
                .filter(|_| stopping.is_none() && self.window.room() && self.current.is_some())
                .map(|l| l.next_at());
            if rbuf.capacity() - rbuf.len() < 4096 {
                rbuf.reserve(64 * 1024);
            }
            let deadline_sleep = stopping.unwrap_or_else(Instant::now);
            tokio::select! {
                biased;
                _ = self.ctx.cancel.cancelled(), if stopping.is_none() => {
                    let grace = *self.ctx.grace.lock();
                    stopping = Some(Instant::now() + grace);
                }
                r = rd.read_buf(&mut rbuf) => {
                    match r {
                        Ok(0) => return End::Lost(BridgeError::Closed),
                        Err(e) => return End::Lost(BridgeError::Io(e.to_string())),
                        Ok(_) => {}
                    }
                    last_rx = Instant::now();
                    loop {
                        let packet = match codec::decode(&mut rbuf, Some(protocol), u32::MAX) {
                            Ok(Some(p)) => p,
                            Ok(None) => break,
                            Err(e) => return End::Lost(BridgeError::Protocol(format!("undecodable packet from the upstream: {e}"))),
                        };
                        match packet {
                            Packet::PubAck(a) => match self.window.puback(a.packet_id, a.reason_code) {
                                Acked::Unknown => {
                                    if Some(a.packet_id) == offline {
                                        offline_done = true;
                                    }
                                    self.window.release_control(a.packet_id);
                                }
                                Acked::Refused(code) => self.refused(code, &a, &mut refused_logged),
                                Acked::Quota => return self.over_quota(),
                                _ => {}
                            },
                            Packet::PubRec(a) => match self.window.pubrec(a.packet_id, a.reason_code, protocol, &mut wbuf) {
                                Acked::Refused(code) => self.refused(code, &a, &mut refused_logged),
                                Acked::Quota => return self.over_quota(),
                                _ => {}
                            },
                            Packet::PubComp(a) => {
                                self.window.pubcomp(a.packet_id, a.reason_code);
                            }
                            Packet::SubAck(s) => {
                                if Some(s.packet_id) == subscribe_pid {
                                    self.window.release_control(s.packet_id);
                                    let rules = self.rules.clone();
                                    for (rule, code) in rules.subscribe.iter().zip(&s.reason_codes) {
                                        if *code >= 0x80 {
                                            let e = BridgeError::SubscribeRefused { filter: rule.filter.clone(), code: *code, text: reason_text(*code) };
                                            tracing::warn!(bridge = %self.name, "bridge {}: {e}", self.name);
                                            self.record_error(&e);
                                        }
                                    }
                                }
                            }
                            Packet::Publish(p) => {
                                let pid = p.packet_id;
                                let qos = p.qos;
                                let fresh = qos != QoS::ExactlyOnce || inbound_qos2.insert(pid);
                                if fresh {
                                    if let Some(msg) = self.inbound(p) {
                                        if let Err(mpsc::error::TrySendError::Full(msg)) = self.inbound_tx.try_send(msg) {
                                            // Back-pressure: the local broker is slower than the upstream.
                                            let _ = self.inbound_tx.send(msg).await;
                                        }
                                    }
                                }
                                let resp = PubResp { packet_id: pid, reason_code: 0, properties: Properties::default() };
                                match qos {
                                    QoS::AtMostOnce => {}
                                    QoS::AtLeastOnce => codec::encode(&Packet::PubAck(resp), protocol, &mut wbuf),
                                    QoS::ExactlyOnce => codec::encode(&Packet::PubRec(resp), protocol, &mut wbuf),
                                }
                            }
                            Packet::PubRel(r) => {
                                inbound_qos2.remove(&r.packet_id);
                                let resp = PubResp { packet_id: r.packet_id, reason_code: 0, properties: Properties::default() };
                                codec::encode(&Packet::PubComp(resp), protocol, &mut wbuf);
                            }
                            Packet::PingResp => ping_sent = None,
                            Packet::Disconnect(d) => {
                                if d.reason_code == reason::RECEIVE_MAXIMUM_EXCEEDED {
                                    let _ = self.over_quota();
                                }
                                return End::Lost(disconnect_error(&d, cfg));
                            }
                            Packet::UnsubAck(_) => {}
                            other => return End::Lost(BridgeError::Protocol(format!("unexpected packet from the upstream: {}", packet_name(&other)))),
                        }
                    }
                    if !error_cleared && self.window.delivered > 0 && self.status.last_error.is_some() {
                        // Connected and delivering: the previous failure is history.
                        self.status.last_error = None;
                        self.status.last_error_ms = None;
                        self.logged_error = None;
                        error_cleared = true;
                    }
                }
                r = write_some(&mut wr, &wbuf), if write_pending => {
                    match r {
                        Err(e) => return End::Lost(BridgeError::Io(e.to_string())),
                        Ok(0) => {
                            need_flush = false;
                            self.window.flushed();
                        }
                        Ok(n) => {
                            wbuf.advance(n);
                            last_tx = Instant::now();
                            if wbuf.is_empty() {
                                need_flush = true;
                            }
                        }
                    }
                }
                b = self.reader.rx.recv(), if want_batch => match b {
                    Some(b) => self.take_batch(b),
                    None => self.reader_done = true,
                },
                _ = tokio::time::sleep_until(limiter_at.unwrap_or_else(Instant::now)), if limiter_at.is_some() => {}
                _ = tokio::time::sleep_until(deadline_sleep), if stopping.is_some() => {}
                _ = tick.tick() => {
                    let now = Instant::now();
                    if !keepalive.is_zero() {
                        if ping_sent.is_none()
                            && (now.duration_since(last_tx) >= keepalive || now.duration_since(last_rx) >= keepalive)
                        {
                            codec::encode(&Packet::PingReq, protocol, &mut wbuf);
                            ping_sent = Some(now);
                        }
                        let limit = keepalive.mul_f64(1.5);
                        if ping_sent.is_some() && now.duration_since(last_rx) >= limit {
                            return End::Lost(BridgeError::KeepaliveTimeout(limit));
                        }
                    }
                    self.persist(false);
                    self.update_mode(up.window);
                    self.refresh(false);
                }
            }
        }
    }

    /// The upstream's in-flight quota is smaller than it said (or, in 3.1.1, than configured): the next
    /// connections use half the window. The unacknowledged rows are sent again then.
    fn over_quota(&mut self) -> End {
        let window = (self.window.limit() / 2).max(1);
        self.learned_window = Some(window);
        End::Lost(BridgeError::QuotaExceeded { window })
    }

    fn refused(&mut self, code: u8, a: &PubResp, logged: &mut bool) {
        if !*logged {
            let why = a
                .properties
                .reason_string
                .as_deref()
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            tracing::error!(bridge = %self.name, "bridge {}: the upstream refused a message ({}, reason 0x{code:02X}{why}); refused messages are counted and skipped (this is logged once per connection)", self.name, reason_text(code));
            *logged = true;
        }
    }

    /// An inbound PUBLISH mapped by the first matching subscribe rule, as a local message.
    fn inbound(&self, p: Publish) -> Option<Message> {
        let rule = self.rules.inbound_for(&p.topic)?;
        let topic = rule.template.render(&rule.filter, &p.topic)?;
        let mut msg = Message::new(topic, p.payload, p.qos, p.retain);
        let mut props = p.properties;
        props.topic_alias = None;
        props.subscription_identifiers.clear();
        msg.expires_at = props
            .message_expiry_interval
            .map(|s| std::time::Instant::now() + Duration::from_secs(u64::from(s)));
        msg.properties = props;
        Some(msg)
    }
}

/// One write of as much of `buf` as the socket takes, or a flush when it is empty (TLS and WebSocket buffer
/// inside the stream). Cancel-safe: a cancelled write wrote nothing.
async fn write_some(wr: &mut WriteHalf<Box<dyn Io>>, buf: &[u8]) -> std::io::Result<usize> {
    if buf.is_empty() {
        wr.flush().await?;
        Ok(0)
    } else {
        let n = wr.write(buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "the upstream connection accepts no more bytes",
            ));
        }
        Ok(n)
    }
}

/// The CONNACK wait: long enough for a slow 4G handshake, bounded so a blackholed link is noticed.
fn connect_timeout(cfg: &BridgeConfig) -> Duration {
    cfg.keepalive
        .clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// The URL for logs and status.
pub(crate) fn url_text(cfg: &BridgeConfig) -> String {
    use crate::config::BridgeScheme::*;
    let u = &cfg.url;
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    match u.scheme {
        Mqtt => format!("mqtt://{host}:{}", u.port),
        Mqtts => format!("mqtts://{host}:{}", u.port),
        Ws => format!("ws://{host}:{}{}", u.port, u.path),
        Wss => format!("wss://{host}:{}{}", u.port, u.path),
    }
}

/// Opens the transport, sends CONNECT (with the `offline` will) and waits for a successful CONNACK.
async fn connect(cfg: &BridgeConfig) -> Result<Conn, BridgeError> {
    let io = transport::connect(cfg).await?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let v5 = cfg.protocol == Protocol::V5;
    let mut props = Properties::default();
    if v5 {
        props.session_expiry_interval =
            Some(u32::try_from(cfg.session_expiry.as_secs()).unwrap_or(u32::MAX));
        props.receive_maximum = Some(INBOUND_RECEIVE_MAXIMUM);
    }
    let connect = Connect {
        protocol: cfg.protocol,
        clean_start: cfg.clean_start,
        keep_alive: u16::try_from(cfg.keepalive.as_secs()).unwrap_or(u16::MAX),
        client_id: cfg.client_id.clone(),
        will: Some(LastWill {
            topic: Arc::from(cfg.status_topic.as_str()),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: cfg.username.clone(),
        password: cfg
            .password
            .as_ref()
            .map(|p| Bytes::from(p.clone().into_bytes())),
        properties: props,
    };
    let mut out = BytesMut::new();
    codec::encode(&Packet::Connect(Box::new(connect)), cfg.protocol, &mut out);
    let io_err = |e: std::io::Error| BridgeError::Io(e.to_string());
    wr.write_all(&out).await.map_err(io_err)?;
    wr.flush().await.map_err(io_err)?;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let ack = loop {
        match codec::decode(&mut rbuf, Some(cfg.protocol), u32::MAX) {
            Ok(Some(Packet::ConnAck(ack))) => break ack,
            Ok(Some(other)) => {
                return Err(BridgeError::Protocol(format!(
                    "expected CONNACK, got {}",
                    packet_name(&other)
                )))
            }
            Ok(None) => {}
            Err(e) => {
                return Err(BridgeError::Protocol(format!(
                    "undecodable CONNACK ({e}); is this an MQTT {} broker?",
                    if v5 { "5" } else { "3.1.1" }
                )))
            }
        }
        if rd.read_buf(&mut rbuf).await.map_err(io_err)? == 0 {
            return Err(BridgeError::ClosedBeforeConnAck);
        }
    };
    if ack.reason_code != 0 {
        return Err(refusal(&ack, cfg));
    }
    Ok(Conn { rd, wr, rbuf, ack })
}

fn refusal(ack: &ConnAck, cfg: &BridgeConfig) -> BridgeError {
    let code = ack.reason_code;
    let hint = match code {
        reason::BAD_USER_NAME_OR_PASSWORD => format!(
            "; check the bridge's username{} and password",
            cfg.username
                .as_deref()
                .map(|u| format!(" (`{u}`)"))
                .unwrap_or_else(|| " (none is set)".into())
        ),
        reason::NOT_AUTHORIZED => format!(
            "; the upstream does not let `{}`{} connect (credentials, or its ACL)",
            cfg.client_id,
            cfg.username
                .as_deref()
                .map(|u| format!(" as user `{u}`"))
                .unwrap_or_default()
        ),
        reason::CLIENT_IDENTIFIER_NOT_VALID => {
            format!("; the client id `{}` is refused", cfg.client_id)
        }
        reason::UNSUPPORTED_PROTOCOL_VERSION => {
            "; set `protocol: \"3.1.1\"` for this upstream".to_string()
        }
        _ => String::new(),
    };
    let server = ack
        .properties
        .reason_string
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    BridgeError::Refused {
        code,
        text: reason_text(code),
        detail: format!("{server}{hint}"),
    }
}

fn disconnect_error(d: &Disconnect, cfg: &BridgeConfig) -> BridgeError {
    let server = d
        .properties
        .reason_string
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let text = match d.reason_code {
        reason::SESSION_TAKEN_OVER => format!(
            "another client connected with the same client id `{}` and took over the session; is a second gateway using it?",
            cfg.client_id
        ),
        code => reason_text(code).to_string(),
    };
    BridgeError::Disconnected {
        code: d.reason_code,
        text: format!("{text}{server}"),
    }
}

/// Human text for an MQTT 5 reason code (3.1.1 CONNACK codes arrive mapped to these).
pub(crate) fn reason_text(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x04 => "disconnect with will message",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9E => "shared subscriptions not supported",
        0x9F => "connection rate exceeded",
        0xA0 => "maximum connect time",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "unknown reason",
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}
