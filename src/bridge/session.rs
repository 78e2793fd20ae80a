//! One bridge's task: the thin async driver around the I/O-free [`Machine`]. It owns what does I/O — the
//! transport, the read-ahead channel, the timers, the local broker link, the store's cursor — and the
//! status; the machine decides every protocol step.
//!
//! The driver keeps wakeups few: one read takes every packet the socket holds, the machine answers them
//! all at once, and the reply is written in the same wakeup (one write for many PUBLISH packets).
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::machine::{url_text, Action, Machine, SEND_HIGH};
use super::reader::{self, Reader};
use super::rules::Rules;
use super::status::{BridgeState, BridgeStatus, Shared};
use super::transport::{self, Io, RecvLowat};
use super::BridgeError;
use crate::bridge::config::BridgeConfig;
use crate::broker::{Broker, Message};
use crate::mqtt::QoS;
use crate::store::{now_ms, Store};

/// How often the driver looks at keepalive, the cursor and the status.
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
/// How long the driver polls for acks before it sleeps, when the window is what holds rows back.
const SPIN: Duration = Duration::from_micros(200);
/// ... once a backlog has been draining this long (a burst of readings is over sooner) ...
const SPIN_AFTER: Duration = Duration::from_secs(1);
/// ... and after a poll that found nothing, only again after this many chances.
const SPIN_RETRY: u32 = 64;
/// While live, how long the bridge's thread lets acks gather before it answers a read that left messages in
/// flight (see [`Bridge::on_io`]).
const GATHER: Duration = Duration::from_micros(150);
/// ... when the bridge keeps up: its lag is at most this much of the log's recent input (a burst of readings
/// from hundreds of devices polled at the same second), not an outage's backlog.
const KEEPING_UP: Duration = Duration::from_secs(2);
/// ... and at most this many rows: a larger lag (the writer held up by a checkpoint or the cap's deletions, then
/// a big commit at once) is caught up at full speed, before it outgrows the rows the store keeps in memory.
const GATHER_MAX_LAG: u64 = 4096;
/// The smallest ack on the wire: a PUBACK (or PUBREC, PUBCOMP) is 4 bytes, more with an MQTT 5 reason code
/// or properties, and more again inside TLS or WebSocket framing.
const ACK_MIN_BYTES: usize = 4;
/// Inbound messages queued for local publishing.
const INBOUND_QUEUE: usize = 1024;

/// Everything a bridge task needs.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub cfg: BridgeConfig,
    pub state_topic: String,
    pub store: Store,
    pub broker: Broker,
    pub shared: Arc<Shared>,
    pub cancel: CancellationToken,
    /// How long a stop may wait for in-flight acks (set by `Bridges::shutdown`).
    pub grace: Arc<parking_lot::Mutex<Duration>>,
    /// Runs on a thread of its own, which may be put to sleep (see [`Bridge::gathering`]); on the shared
    /// runtime a sleep would hold up other tasks.
    pub own_thread: bool,
}

/// How a connection ended.
enum End {
    Stopped,
    Reconnect {
        after: Duration,
        error: BridgeError,
        was_up: bool,
    },
}

struct Bridge {
    ctx: Ctx,
    name: String,
    machine: Machine,
    reader: Reader,
    reader_done: bool,
    inbound_tx: mpsc::Sender<Message>,
    state_tx: watch::Sender<Option<Bytes>>,
    status: BridgeStatus,
    persisted: u64,
    last_persist: Instant,
    last_state_pub: Instant,
    published: Option<(BridgeState, Option<String>, u64)>,
    /// `(when, delivered, lag_rows, head)` samples of the last [`RATE_WINDOW`], while connected.
    rate_samples: std::collections::VecDeque<(Instant, u64, u64, u64)>,
    /// Rows a second arriving in the log, over the last [`RATE_WINDOW`] while connected (see
    /// [`Bridge::keeping_up`]).
    arriving: f64,
    /// The cursor and the time of the first row after it, as last read from the log.
    oldest_at: Option<(u64, Option<i64>)>,
    logged_error: Option<String>,
    backlog_started: Option<(Instant, u64)>,
    /// A stop began (the machine was told).
    stopping: bool,
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
    let machine = Machine::new(&ctx.cfg, rules.clone(), cursor, Instant::now());
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
        machine,
        reader,
        reader_done: false,
        inbound_tx,
        state_tx,
        status,
        persisted: cursor,
        last_persist: now,
        last_state_pub: now,
        published: None,
        rate_samples: std::collections::VecDeque::new(),
        arriving: 0.0,
        oldest_at: None,
        logged_error: None,
        backlog_started: None,
        stopping: false,
        ctx,
    };
    b.main().await;
    b.persist(true);
    b.set_state(BridgeState::Stopped);
    b.refresh(true);
    tracing::info!(bridge = %b.name, cursor = b.machine.window().cursor(), "bridge {}: stopped", b.name);
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
    /// Connects, runs the link, backs off, again, until cancelled.
    async fn main(&mut self) {
        let mut cancel = std::pin::pin!(self.ctx.cancel.clone().cancelled_owned());
        loop {
            if self.ctx.cancel.is_cancelled() {
                return;
            }
            self.set_state(BridgeState::Connecting);
            self.refresh(false);
            let timeout = self.machine.connect_timeout();
            let attempt = tokio::select! {
                _ = &mut cancel => return,
                r = tokio::time::timeout(timeout, transport::connect(&self.ctx.cfg)) => r,
            };
            let end = match attempt {
                Ok(Ok((io, lowat))) => self.connection(io, lowat, cancel.as_mut()).await,
                Ok(Err(e)) => self.failed_to_connect(e),
                Err(_) => self.failed_to_connect(BridgeError::ConnectTimeout(timeout)),
            };
            let delay = match end {
                End::Stopped => return,
                End::Reconnect {
                    after,
                    error,
                    was_up,
                } => {
                    self.report_loss(&error, was_up);
                    after
                }
            };
            self.set_state(BridgeState::Backoff);
            self.refresh(false);
            let until = Instant::now() + delay;
            while Instant::now() < until {
                let step = (until - Instant::now()).min(STATE_EVERY);
                tokio::select! {
                    _ = &mut cancel => return,
                    _ = tokio::time::sleep(step) => {}
                }
                self.refresh(false);
            }
        }
    }

    fn failed_to_connect(&mut self, e: BridgeError) -> End {
        let actions = self.machine.on_closed(e, Instant::now());
        for a in actions {
            if let Action::Reconnect {
                after,
                error,
                was_up,
            } = a
            {
                return End::Reconnect {
                    after,
                    error,
                    was_up,
                };
            }
        }
        End::Stopped
    }

    /// One line per failure; a connection error repeated at every retry is logged once.
    fn report_loss(&mut self, e: &BridgeError, was_up: bool) {
        let text = e.to_string();
        if was_up {
            tracing::warn!(bridge = %self.name, "bridge {}: connection lost: {text}", self.name);
            self.persist(true);
        } else if self.logged_error.as_deref() != Some(text.as_str()) {
            tracing::warn!(bridge = %self.name, "bridge {}: cannot connect to {}: {text}; retrying with backoff", self.name, url_text(&self.ctx.cfg));
        } else {
            tracing::debug!(bridge = %self.name, "bridge {}: still cannot connect: {text}", self.name);
        }
        self.logged_error = Some(text);
        self.record_error(e);
    }

    /// Runs one transport until the link ends.
    async fn connection(
        &mut self,
        io: Box<dyn Io>,
        lowat: RecvLowat,
        mut cancel: std::pin::Pin<&mut WaitForCancellationFutureOwned>,
    ) -> End {
        let mut c = Link::new(io, lowat);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut wake = std::pin::pin!(tokio::time::sleep_until(Instant::now() + TICK));
        let mut out = Outcome::default();
        let mut spin_skip = 0u32;
        let first = self.machine.on_transport_up(Instant::now());
        self.apply(first, &mut c.wbuf, &mut out).await;
        loop {
            if let Some(end) = out.end.take() {
                if matches!(end, End::Stopped) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        c.io.write_all(&c.wbuf).await?;
                        c.io.flush().await?;
                        c.io.shutdown().await
                    })
                    .await;
                }
                return end;
            }
            if let Some(at) = self.machine.next_wakeup() {
                if at != wake.deadline() {
                    wake.as_mut().reset(at);
                }
            }
            c.lowat.set(self.ack_bytes_awaited(c.rbuf.len()));
            let want_rows = self.machine.wants_rows() && !self.reader_done;
            let write_pending = c.write_pending();
            tokio::select! {
                biased;
                _ = &mut cancel, if !self.stopping => {
                    self.stopping = true;
                    let grace = *self.ctx.grace.lock();
                    let a = self.machine.begin_stop(Instant::now(), grace);
                    self.apply(a, &mut c.wbuf, &mut out).await;
                }
                ev = io_ready(&mut c.io, &mut c.scratch, &c.wbuf, write_pending) => {
                    self.on_io(ev, &mut c, &mut out).await;
                    // Draining a backlog, with rows waiting for acks (a full window, or a large one refilling in
                    // quarters): when the upstream is near (a broker on the same host or LAN), the next acks come
                    // back within microseconds, sooner than a sleep and a wake-up of this thread cost (44 % of its
                    // time with 20 in flight), and each wake-up is paid by the upstream too (waking us cost a
                    // pinned mosquitto 1 µs per message). Poll for them a little while before sleeping. Not while
                    // keeping up with the log's input (acks gather instead: see `gathering`), and not after a poll
                    // that found nothing: a far upstream's acks take milliseconds, so polling is tried again only
                    // every SPIN_RETRY chances.
                    // A window large enough to refill in parts waits for its acks in the kernel instead (see
                    // `ack_bytes_awaited`): polling would find nothing before they are all there.
                    if out.end.is_none()
                        && !self.keeping_up()
                        && self.draining_for(SPIN_AFTER)
                        && self.machine.window_bound()
                        && self.ack_bytes_awaited(0) as usize <= ACK_MIN_BYTES
                    {
                        if spin_skip > 0 {
                            spin_skip -= 1;
                        } else {
                            let found = self.spin(&mut c, &mut out).await;
                            if !found {
                                spin_skip = SPIN_RETRY;
                            }
                        }
                    }
                }
                b = self.reader.rx.recv(), if want_rows => match b {
                    Some(b) => {
                        let a = self.machine.on_rows(b, Instant::now());
                        self.apply(a, &mut c.wbuf, &mut out).await;
                    }
                    None => self.reader_done = true,
                },
                _ = &mut wake => {
                    wake.as_mut().reset(Instant::now() + TICK);
                    let a = self.machine.on_tick(Instant::now());
                    self.apply(a, &mut c.wbuf, &mut out).await;
                }
                _ = tick.tick() => {
                    let a = self.machine.on_tick(Instant::now());
                    self.apply(a, &mut c.wbuf, &mut out).await;
                    self.persist(false);
                    self.update_mode();
                    self.refresh(false);
                }
            }
        }
    }

    /// Polls the transport for up to [`SPIN`] while rows wait for acks; whether anything arrived.
    async fn spin(&mut self, c: &mut Link, out: &mut Outcome) -> bool {
        let until = std::time::Instant::now() + SPIN;
        let mut found = false;
        while std::time::Instant::now() < until {
            // Deferred until the runtime has polled its sockets (without blocking).
            tokio::task::yield_now().await;
            let pending = c.write_pending();
            if let Some(ev) = io_ready(&mut c.io, &mut c.scratch, &c.wbuf, pending).now_or_never() {
                found = true;
                self.on_io(ev, c, out).await;
                if out.end.is_some() || !self.machine.window_bound() {
                    break;
                }
            }
        }
        found
    }

    /// The transport was ready: bytes read (answered in the same wakeup) or a write done.
    async fn on_io(&mut self, ev: Ready, c: &mut Link, out: &mut Outcome) {
        match ev {
            Ready::Read(r) => {
                let now = Instant::now();
                let a = match r {
                    Ok(0) => self.machine.on_closed(BridgeError::Closed, now),
                    Err(e) => self.machine.on_closed(BridgeError::Io(e.to_string()), now),
                    Ok(n) => {
                        c.rbuf.extend_from_slice(&c.scratch[..n]);
                        let closed = if self.gathering() {
                            gather(c).await
                        } else {
                            None
                        };
                        let mut a = self.machine.on_bytes(&mut c.rbuf, now);
                        if let Some(e) = closed {
                            a.extend(self.machine.on_closed(e, now));
                        }
                        a
                    }
                };
                self.apply(a, &mut c.wbuf, out).await;
                // Answer in the same wakeup: the acks just read freed the window for new rows.
                if !c.wbuf.is_empty() && out.end.is_none() {
                    if let Some(r) = write_some(&mut c.io, &c.wbuf).now_or_never() {
                        self.wrote(r, &mut c.wbuf, &mut c.need_flush, out).await;
                    }
                    // And the flush (immediate on TCP), rather than one more pass of the loop.
                    if c.need_flush && c.wbuf.is_empty() && out.end.is_none() {
                        if let Some(r) = write_some(&mut c.io, &c.wbuf).now_or_never() {
                            self.wrote(r, &mut c.wbuf, &mut c.need_flush, out).await;
                        }
                    }
                }
                self.clear_error_once_delivering();
            }
            Ready::Wrote(r) => self.wrote(r, &mut c.wbuf, &mut c.need_flush, out).await,
        }
    }

    /// Whether to let acks gather before answering the bytes just read: keeping up with the log's input, on the
    /// bridge's own thread, with messages in flight. Each round trip to an upstream that allows few messages
    /// in flight (mosquitto: 20) otherwise ends in a wake-up for every one to three PUBACKs (5,500 a second at
    /// 15,000 readings/s): the upstream writes each ack on its own, and its Nagle releases the ones it holds
    /// whenever our answer (which carries the TCP ACK) arrives. Answering a moment later lets it queue the acks
    /// of everything it received meanwhile, to be read in one go (1,550 wake-ups a second). That costs
    /// throughput (a window per ~0.5 ms: 37,000 messages a second against mosquitto's 20), so not while
    /// draining an outage's backlog (the spin in `connection` keeps the window moving there), and never on
    /// the shared runtime, where the sleep would hold up other tasks.
    fn gathering(&self) -> bool {
        self.ctx.own_thread
            && !self.stopping
            && self.machine.window().outstanding() > 0
            && self.keeping_up()
    }

    /// How many bytes the socket must hold before this thread is woken to read them: while draining a
    /// backlog with the window full, nothing can go out before the acks that free the next refill arrive,
    /// so their bytes (at least [`ACK_MIN_BYTES`] each) wake it once instead of every few acks doing so (on
    /// loopback, 0.06 wake-ups per message became 0.003, and our CPU per message fell from 4.4 to 1.5 µs).
    /// Never more than the acks outstanding will bring: `partial` bytes of a packet already read count
    /// against it. Otherwise 1: any byte. Also 1 while a PINGREQ is outstanding (its 2-byte answer must be
    /// seen), and while stopping.
    fn ack_bytes_awaited(&self, partial: usize) -> u32 {
        if self.stopping
            || self.status.state != BridgeState::Backlog
            || self.keeping_up()
            || self.machine.ping_outstanding()
        {
            return 1;
        }
        let bytes = (self.machine.acks_before_refill() * ACK_MIN_BYTES).saturating_sub(partial);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// Whether the bridge keeps up with the log's input: its lag is at most [`KEEPING_UP`] of the recent
    /// input and at most [`GATHER_MAX_LAG`] rows. An outage's backlog is not (after a reconnect the input
    /// is the live rate, the lag far larger).
    fn keeping_up(&self) -> bool {
        let lag = self.lag();
        self.arriving > 0.0
            && lag <= GATHER_MAX_LAG
            && lag as f64 <= self.arriving * KEEPING_UP.as_secs_f64()
    }

    /// Rows in the log after the cursor.
    fn lag(&self) -> u64 {
        self.ctx
            .store
            .head()
            .saturating_sub(self.machine.window().cursor())
    }

    /// A write (or flush, when `wbuf` is empty) completed.
    async fn wrote(
        &mut self,
        r: std::io::Result<usize>,
        wbuf: &mut BytesMut,
        need_flush: &mut bool,
        out: &mut Outcome,
    ) {
        let now = Instant::now();
        let a = match r {
            Err(e) => self.machine.on_closed(BridgeError::Io(e.to_string()), now),
            Ok(0) => {
                *need_flush = false;
                self.machine.on_flushed(now)
            }
            Ok(n) => {
                wbuf.advance(n);
                if wbuf.is_empty() {
                    *need_flush = true;
                }
                Vec::new()
            }
        };
        self.apply(a, wbuf, out).await;
    }

    /// Carries out the machine's actions.
    async fn apply(&mut self, actions: Vec<Action>, wbuf: &mut BytesMut, out: &mut Outcome) {
        for a in actions {
            match a {
                Action::Send(b) => wbuf.extend_from_slice(&b),
                Action::Connected => {
                    self.update_mode();
                    self.refresh(false);
                }
                Action::Advance(cursor) => {
                    self.status.cursor = cursor;
                    self.persist(false);
                }
                Action::Deliver(msg) => {
                    if let Err(mpsc::error::TrySendError::Full(msg)) =
                        self.inbound_tx.try_send(*msg)
                    {
                        // Back-pressure: the local broker is slower than the upstream.
                        let _ = self.inbound_tx.send(msg).await;
                    }
                }
                Action::Warn(e) => self.record_error(&e),
                Action::Reconnect {
                    after,
                    error,
                    was_up,
                } => {
                    out.end = Some(End::Reconnect {
                        after,
                        error,
                        was_up,
                    })
                }
                Action::Stopped => out.end = Some(End::Stopped),
            }
        }
    }

    /// Whether a backlog has been draining for at least `d`.
    fn draining_for(&self, d: Duration) -> bool {
        self.status.state == BridgeState::Backlog
            && self.backlog_started.is_some_and(|(t, _)| t.elapsed() >= d)
    }

    /// Connected and delivering: the previous failure is history.
    fn clear_error_once_delivering(&mut self) {
        if self.machine.connected()
            && self.machine.window().delivered > 0
            && self.status.last_error.is_some()
        {
            self.status.last_error = None;
            self.status.last_error_ms = None;
            self.logged_error = None;
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
        let cursor = self.machine.window().cursor();
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
        let cursor = self.machine.window().cursor();
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
                self.rate_samples.push_back((
                    now,
                    self.machine.window().delivered,
                    st.lag_rows,
                    head,
                ));
            }
            while self.rate_samples.len() > 2
                && now.saturating_duration_since(self.rate_samples[1].0) >= RATE_WINDOW
            {
                self.rate_samples.pop_front();
            }
        } else {
            self.rate_samples.clear();
        }
        let (rate, arriving) = match self.rate_samples.front() {
            Some(&(t0, d0, _, h0)) if now.saturating_duration_since(t0) >= RATE_MIN_SPAN => {
                let span = now.saturating_duration_since(t0).as_secs_f64();
                (
                    (self.machine.window().delivered - d0) as f64 / span,
                    head.saturating_sub(h0) as f64 / span,
                )
            }
            _ => (0.0, 0.0),
        };
        self.arriving = arriving;
        st.drain_rate = rate;
        st.eta_seconds = eta(
            &self.rate_samples,
            now,
            st.state.connected() && rate > 0.0,
            st.lag_rows,
            self.machine.window().delivered,
        )
        .map(|()| st.lag_rows as f64 / rate);
        st.inflight = self.machine.window().len();
        st.window = self.machine.window().limit();
        st.delivered = self.machine.window().delivered;
        st.resent = self.machine.window().resent;
        st.refused = self.machine.window().refused;
        st.skipped = self.machine.skipped;
        st.connects = self.machine.connects;
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
    /// Only once the CONNACK accepted the session: a transport that is up while the upstream has not answered
    /// (or is about to refuse) is still connecting, not live (the driver's first tick is immediate).
    fn update_mode(&mut self) {
        if !self.machine.connected() {
            return;
        }
        let window = self.machine.window().limit();
        let lag = self.lag();
        let enter = (window + reader::BATCH_ROWS) as u64 * 2;
        let leave = (window + reader::BATCH_ROWS) as u64;
        match self.status.state {
            BridgeState::Live if lag > enter => {
                // A burst of readings (hundreds of devices polled at the same second) crosses the threshold
                // every second: the start is a debug line, the end an info line only for a real backlog.
                tracing::debug!(bridge = %self.name, "bridge {}: draining a backlog of {lag} rows", self.name);
                self.backlog_started = Some((Instant::now(), self.machine.window().delivered));
                self.set_state(BridgeState::Backlog);
            }
            BridgeState::Backlog if lag <= leave => {
                let (t, d) = self.backlog_started.take().unwrap_or((Instant::now(), 0));
                let n = self.machine.window().delivered - d;
                let secs = t.elapsed().as_secs_f64();
                if secs >= BACKLOG_WORTH_LOGGING.as_secs_f64() {
                    tracing::info!(bridge = %self.name, "bridge {}: backlog drained ({n} rows in {secs:.1}s, {:.0} rows/s)", self.name, n as f64 / secs.max(1e-3));
                } else {
                    tracing::debug!(bridge = %self.name, "bridge {}: backlog drained ({n} rows in {secs:.1}s)", self.name);
                }
                self.set_state(BridgeState::Live);
            }
            BridgeState::Live | BridgeState::Backlog => {}
            _ => {
                if lag > leave {
                    tracing::info!(bridge = %self.name, "bridge {}: draining a backlog of {lag} rows", self.name);
                    self.backlog_started = Some((Instant::now(), self.machine.window().delivered));
                    self.set_state(BridgeState::Backlog);
                } else {
                    self.set_state(BridgeState::Live);
                }
            }
        }
    }
}

/// A backlog drained faster than this is a burst, not an outage: not worth an info line each time.
const BACKLOG_WORTH_LOGGING: Duration = Duration::from_secs(5);

/// One connection's transport and its buffers.
struct Link {
    io: Box<dyn Io>,
    /// The low-water mark of `io`'s socket (see [`Bridge::ack_bytes_awaited`]).
    lowat: RecvLowat,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    /// What one read takes.
    scratch: Vec<u8>,
    /// Encoded packets not yet written.
    wbuf: BytesMut,
    /// Whether the transport may hold written bytes back until flushed (TLS, WebSocket): QoS 0 rows
    /// complete only once flushed.
    need_flush: bool,
}

impl Link {
    fn new(io: Box<dyn Io>, lowat: RecvLowat) -> Link {
        Link {
            io,
            lowat,
            rbuf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0u8; READ_CHUNK],
            wbuf: BytesMut::with_capacity(SEND_HIGH + 64 * 1024),
            need_flush: false,
        }
    }

    /// Bytes to write, or a flush to finish.
    fn write_pending(&self) -> bool {
        !self.wbuf.is_empty() || self.need_flush
    }
}

/// How the current connection is to end, once the actions applied so far are carried out.
#[derive(Default)]
struct Outcome {
    end: Option<End>,
}

/// Bytes read per wakeup at most: acks are 4-7 bytes each, so this is thousands of packets.
const READ_CHUNK: usize = 64 * 1024;

/// What the transport was ready for.
enum Ready {
    /// A read into the scratch buffer: `Ok(0)` is the end of the stream.
    Read(std::io::Result<usize>),
    /// A write (or flush) as [`write_some`] reports it.
    Wrote(std::io::Result<usize>),
}

/// Sleeps [`GATHER`] (blocking the bridge's own thread, so that nothing wakes it meanwhile), then reads what
/// arrived into `rbuf`. The end of the stream or an error, if met, is returned for the caller to handle after
/// the bytes before it.
async fn gather(c: &mut Link) -> Option<BridgeError> {
    std::thread::sleep(GATHER);
    // The runtime learns of the new bytes when it next polls its sockets (without blocking).
    tokio::task::yield_now().await;
    // Bounded: an upstream sending a flood of messages gets the rest read by the next pass of the loop.
    while c.rbuf.len() < READ_CHUNK * 4 {
        match io_ready(&mut c.io, &mut c.scratch, &[], false).now_or_never() {
            Some(Ready::Read(Ok(0))) => return Some(BridgeError::Closed),
            Some(Ready::Read(Ok(n))) => c.rbuf.extend_from_slice(&c.scratch[..n]),
            Some(Ready::Read(Err(e))) => return Some(BridgeError::Io(e.to_string())),
            Some(Ready::Wrote(_)) | None => return None,
        }
    }
    None
}

/// Waits until the transport has bytes to read, or (when `write_pending`) takes some of `wbuf` (a flush when
/// it is empty). One task owns the stream and polls both directions itself: no `split` halves, whose lock
/// every read and write would take. Cancel-safe: nothing is read or written unless it resolves.
fn io_ready<'a>(
    io: &'a mut Box<dyn Io>,
    scratch: &'a mut [u8],
    wbuf: &'a [u8],
    write_pending: bool,
) -> impl std::future::Future<Output = Ready> + 'a {
    std::future::poll_fn(move |cx| {
        let mut rb = ReadBuf::new(&mut *scratch);
        if let Poll::Ready(r) = Pin::new(&mut **io).poll_read(cx, &mut rb) {
            return Poll::Ready(Ready::Read(r.map(|()| rb.filled().len())));
        }
        if write_pending {
            if let Poll::Ready(r) = poll_write_some(&mut **io, cx, wbuf) {
                return Poll::Ready(Ready::Wrote(r));
            }
        }
        Poll::Pending
    })
}

/// One write of as much of `buf` as the socket takes, or a flush when it is empty (TLS and WebSocket buffer
/// inside the stream): `Ok(0)` is a completed flush.
fn poll_write_some(
    io: &mut dyn Io,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<std::io::Result<usize>> {
    if buf.is_empty() {
        return Pin::new(io).poll_flush(cx).map_ok(|()| 0);
    }
    match Pin::new(io).poll_write(cx, buf) {
        Poll::Ready(Ok(0)) => Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the upstream connection accepts no more bytes",
        ))),
        r => r,
    }
}

/// [`poll_write_some`] as a future.
async fn write_some(io: &mut Box<dyn Io>, buf: &[u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_write_some(&mut **io, cx, buf)).await
}

/// Whether an ETA is shown: only while draining — connected and delivering, and shrinking *now*: against the
/// newest sample at least [`RATE_MIN_SPAN`] old, the lag is smaller and something was delivered. (Against the
/// window's oldest sample, a link gone silent after a drain still looked shrinking, and an ETA was shown while
/// the backlog grew.) Samples are (time, delivered, lag rows, head).
fn eta(
    samples: &std::collections::VecDeque<(Instant, u64, u64, u64)>,
    now: Instant,
    draining: bool,
    lag: u64,
    delivered: u64,
) -> Option<()> {
    let shrinking = samples
        .iter()
        .rev()
        .find(|s| now.saturating_duration_since(s.0) >= RATE_MIN_SPAN)
        .is_some_and(|&(_, d, l, _)| lag < l && delivered > d);
    (draining && lag > 0 && shrinking).then_some(())
}

#[cfg(test)]
mod tests {
    use super::eta;

    /// A drain, then a link gone silent: the ETA is shown while the backlog shrinks and gone one second after
    /// deliveries stop, though the rate window's oldest sample still has a larger lag than now.
    #[test]
    fn an_eta_only_while_the_backlog_shrinks_now() {
        let t0 = tokio::time::Instant::now();
        let ms = |m: u64| t0 + std::time::Duration::from_millis(m);
        // (time, delivered, lag, head): draining from 500 down to 10, then stalled with the lag growing.
        let samples: std::collections::VecDeque<_> = [
            (ms(0), 0, 500, 500),
            (ms(1000), 250, 260, 510),
            (ms(2000), 510, 10, 520),
            (ms(3000), 510, 60, 570),
        ]
        .into_iter()
        .collect();
        assert!(eta(&samples, ms(2100), true, 10, 515).is_some(), "draining");
        assert!(
            eta(&samples, ms(3500), true, 90, 510).is_none(),
            "silent, growing"
        );
        assert!(
            eta(&samples, ms(3500), false, 5, 520).is_none(),
            "not connected"
        );
    }

    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// What arrives while acks gather is all read, in order, and an end of stream behind it is reported after
    /// the bytes, not instead of them (the caller decodes the bytes first: the last acks before a close still
    /// move the cursor).
    #[tokio::test]
    async fn gather_reads_what_arrived_and_reports_the_end_after_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let mut c = Link::new(Box::new(ours), RecvLowat::none());
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in sent.chunks(10_000) {
            peer.write_all(chunk).await.unwrap();
        }
        peer.shutdown().await.unwrap();
        drop(peer);
        // Bounded: every pass takes what arrived; the end comes after the bytes.
        let mut end = None;
        for _ in 0..10_000 {
            end = gather(&mut c).await;
            if end.is_some() {
                break;
            }
        }
        assert!(
            matches!(end, Some(BridgeError::Closed)),
            "the end of the stream was not reported: {end:?}"
        );
        assert_eq!(c.rbuf.len(), sent.len(), "bytes lost or repeated");
        assert!(c.rbuf[..] == sent[..], "bytes out of order");
    }
}
