//! One bridge's upstream link as an I/O-free state machine: bytes, packets, rows and clock ticks go in,
//! [`Action`]s come out (bytes to send, the cursor that moved, inbound messages for the local broker, a
//! reconnect with its delay, the end of a stop). The driver in `session.rs` owns the socket, the timers, the
//! read-ahead and the status; every protocol rule lives here and is unit-tested packet by packet without a
//! broker (see the tests at the bottom).
//!
//! Phases: `down` (no transport: before the first connect and while backing off) → `connecting` (transport
//! up, CONNECT sent, CONNACK awaited until a deadline) → `up` (forwarding; `stopping` inside it once a stop
//! began) → `down` again on any failure, or `stopped`.
//!
//! Output is batched: every input encodes into one buffer, and the bytes leave as a single [`Action::Send`]
//! at the end of the call, so a read that carried twenty PUBACKs produces one write of twenty new PUBLISH
//! packets. The bytes the machine hands out are bounded by the window: new rows are encoded only while the
//! window has room, and the window never holds more than its limit.
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fieldbridge_sdk::Backoff;
use tokio::time::Instant;

use super::reader::{Batch, Item};
use super::rules::Rules;
use super::window::{Acked, Window};
use super::BridgeError;
use crate::bridge::config::BridgeConfig;
use crate::broker::Message;
use crate::mqtt::reason::text as reason_text;
use crate::mqtt::{
    self, reason, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Protocol, PubResp,
    Publish, QoS, RetainHandling, Subscribe, Subscription,
};

/// Stop encoding new rows into one send beyond this: one write syscall carries hundreds of publishes.
pub(crate) const SEND_HIGH: usize = 256 * 1024;

/// Windows at least this large refill in quarters (see [`Machine::holding_back`]); smaller ones on every ack.
const BATCHED_REFILL_FROM: usize = 64;
/// The longest new rows wait for a quarter of the window to free up.
const HOLD_MAX: Duration = Duration::from_millis(2);

/// The free places that let new rows out while acks are outstanding.
fn refill_step(limit: usize) -> usize {
    if limit >= BATCHED_REFILL_FROM {
        limit / 4
    } else {
        1
    }
}
/// Receive Maximum we announce (v5): inbound messages in flight from the upstream.
pub(crate) const INBOUND_RECEIVE_MAXIMUM: u16 = 100;
/// Inbound QoS 2 exchanges remembered at most (the upstream may not exceed our Receive Maximum).
const INBOUND_QOS2_MAX: usize = INBOUND_RECEIVE_MAXIMUM as usize;

/// What the driver must do, in order. `Reconnect` or `Stopped`, when present, is the last.
#[derive(Debug)]
pub(crate) enum Action {
    /// Bytes for the upstream, in order (any number of packets).
    Send(Bytes),
    /// CONNACK accepted: the link is up (the machine logged it).
    Connected,
    /// The cursor moved: every forwarded row up to this seq is delivered.
    Advance(u64),
    /// An inbound message, mapped by a subscribe rule, for the local broker.
    Deliver(Box<Message>),
    /// Not fatal, but worth showing in the status (a refused subscription).
    Warn(BridgeError),
    /// The link is over: drop the transport and connect again after `after`. `was_up`: it had been
    /// connected (CONNACK accepted), rather than failing to connect.
    Reconnect {
        after: Duration,
        error: BridgeError,
        was_up: bool,
    },
    /// The stop is complete: write what was sent (it ends with DISCONNECT when the link was up), close.
    Stopped,
}

/// What CONNACK told us about the upstream.
#[derive(Debug, Clone)]
struct Upstream {
    protocol: Protocol,
    max_packet: usize,
    max_qos: QoS,
    retain_ok: bool,
    keepalive: Duration,
}

/// The state of a connected link.
#[derive(Debug)]
struct Live {
    up: Upstream,
    inbound_qos2: HashSet<u16>,
    last_rx: Instant,
    last_tx: Instant,
    ping_sent: Option<Instant>,
    subscribe_pid: Option<u16>,
    /// A stop began: no new rows; `offline` goes out once the window is empty or at the deadline.
    stopping: Option<Instant>,
    offline: Option<u16>,
    offline_done: bool,
    /// The upstream cannot take `offline` under its Receive Maximum at the deadline: DISCONNECT with
    /// reason 0x04 makes it publish our will (`offline`) instead.
    will_on_disconnect: bool,
    refused_logged: bool,
}

#[derive(Debug)]
enum Phase {
    Down,
    Connecting { deadline: Instant },
    Up(Box<Live>),
    Stopped,
}

/// A token bucket for `rate_limit`.
#[derive(Debug)]
struct Limiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    fn new(rate: u32, now: Instant) -> Limiter {
        let rate = f64::from(rate);
        let burst = (rate / 20.0).max(1.0);
        Limiter {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn ready(&mut self, now: Instant) -> bool {
        if self.tokens < 1.0 {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
            self.last = now;
        }
        self.tokens >= 1.0
    }

    fn next_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Machine {
    name: String,
    cfg: BridgeConfig,
    rules: Arc<Rules>,
    window: Window,
    /// Rows read ahead, not yet in the window, and the seq every row of their batch is read up to.
    rows: VecDeque<Item>,
    batch_upto: Option<u64>,
    limiter: Option<Limiter>,
    backoff: Backoff,
    /// A window learned from a quota refusal (kept until the bridge restarts).
    learned_window: Option<usize>,
    phase: Phase,
    out: BytesMut,
    actions: Vec<Action>,
    reported: u64,
    /// Rows not sent: expired, unroutable, larger than the upstream's maximum packet size.
    pub skipped: u64,
    /// Successful connections.
    pub connects: u64,
    /// Since when new rows wait for the window to free up a quarter (see [`Machine::holding_back`]).
    held_since: Option<Instant>,
}

impl Machine {
    /// A machine whose rows up to `cursor` are delivered; nothing happens until the driver connects.
    pub(crate) fn new(cfg: &BridgeConfig, rules: Arc<Rules>, cursor: u64, now: Instant) -> Machine {
        Machine {
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            rules,
            window: Window::new(cursor),
            rows: VecDeque::new(),
            batch_upto: None,
            limiter: cfg.rate_limit.map(|r| Limiter::new(r, now)),
            backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
            learned_window: None,
            phase: Phase::Down,
            out: BytesMut::new(),
            actions: Vec::new(),
            reported: cursor,
            skipped: 0,
            connects: 0,
            held_since: None,
        }
    }

    /// The in-flight window (cursor, counters).
    pub(crate) fn window(&self) -> &Window {
        &self.window
    }

    /// CONNACK accepted and not stopped.
    pub(crate) fn connected(&self) -> bool {
        matches!(self.phase, Phase::Up(_))
    }

    /// Whether the machine takes another batch of rows ([`Machine::on_rows`]): one is held at a time.
    pub(crate) fn wants_rows(&self) -> bool {
        self.batch_upto.is_none()
            && match &self.phase {
                Phase::Up(l) => l.stopping.is_none(),
                Phase::Stopped => false,
                _ => true,
            }
    }

    /// How long the transport, the CONNECT and the CONNACK may take together: long enough for a slow 4G
    /// handshake, bounded so a blackholed link is noticed.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.cfg
            .keepalive
            .clamp(Duration::from_secs(2), Duration::from_secs(30))
    }

    /// The earliest time [`Machine::on_tick`] has something to do beyond the driver's regular tick: the
    /// rate limiter's next token while rows wait, the end of a refill hold, a stop or CONNACK deadline.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Connecting { deadline } => Some(*deadline),
            Phase::Up(l) => {
                let limiter = self
                    .limiter
                    .as_ref()
                    .filter(|_| l.stopping.is_none() && !self.rows.is_empty() && self.window.room())
                    .map(Limiter::next_at);
                let hold = self
                    .held_since
                    .filter(|_| l.stopping.is_none() && self.holding_back())
                    .map(|t| t + HOLD_MAX);
                [limiter, l.stopping, hold].into_iter().flatten().min()
            }
            _ => None,
        }
    }

    /// The transport is open: CONNECT (with the `offline` will) goes out.
    pub(crate) fn on_transport_up(&mut self, now: Instant) -> Vec<Action> {
        if let Phase::Stopped = self.phase {
            return self.finish(now);
        }
        let cfg = &self.cfg;
        let mut props = Properties::default();
        if cfg.protocol == Protocol::V5 {
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
        self.out.clear();
        mqtt::encode(
            &Packet::Connect(Box::new(connect)),
            cfg.protocol,
            &mut self.out,
        );
        self.phase = Phase::Connecting {
            deadline: now + self.connect_timeout(),
        };
        self.finish(now)
    }

    /// Bytes read from the transport: every complete packet in `buf` is handled (and removed).
    pub(crate) fn on_bytes(&mut self, buf: &mut BytesMut, now: Instant) -> Vec<Action> {
        if let Phase::Up(l) = &mut self.phase {
            l.last_rx = now;
        }
        // Bounded: each packet either ends the link or is consumed from `buf`.
        loop {
            if matches!(self.phase, Phase::Down | Phase::Stopped) {
                break;
            }
            match mqtt::decode(buf, Some(self.cfg.protocol), u32::MAX) {
                Ok(Some(p)) => self.packet(p, now),
                Ok(None) => break,
                Err(e) => {
                    let error = if matches!(self.phase, Phase::Connecting { .. }) {
                        BridgeError::Protocol(format!(
                            "undecodable CONNACK ({e}); is this an MQTT {} broker?",
                            if self.cfg.protocol == Protocol::V5 {
                                "5"
                            } else {
                                "3.1.1"
                            }
                        ))
                    } else {
                        BridgeError::Protocol(format!("undecodable packet from the upstream: {e}"))
                    };
                    self.lost(error);
                    break;
                }
            }
        }
        self.finish(now)
    }

    /// One packet from the upstream. The driver feeds whole reads through [`Machine::on_bytes`] (one
    /// answer for all their packets); this is the packet-level door the unit tests use.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn on_packet(&mut self, p: Packet, now: Instant) -> Vec<Action> {
        if let Phase::Up(l) = &mut self.phase {
            l.last_rx = now;
        }
        self.packet(p, now);
        self.finish(now)
    }

    /// The transport failed or closed (or could not be opened).
    pub(crate) fn on_closed(&mut self, error: BridgeError, now: Instant) -> Vec<Action> {
        let error = match (&self.phase, error) {
            (Phase::Connecting { .. }, BridgeError::Closed) => BridgeError::ClosedBeforeConnAck,
            (_, e) => e,
        };
        self.lost(error);
        self.finish(now)
    }

    /// A batch from the read-ahead (call only when [`Machine::wants_rows`]).
    pub(crate) fn on_rows(&mut self, batch: Batch, now: Instant) -> Vec<Action> {
        self.skipped += batch.expired + batch.unroutable;
        if batch.items.is_empty() {
            self.window.consumed(batch.upto);
        } else {
            self.rows = batch.items;
            self.batch_upto = Some(batch.upto);
        }
        self.finish(now)
    }

    /// Everything sent so far reached the socket: QoS 0 rows are complete.
    pub(crate) fn on_flushed(&mut self, now: Instant) -> Vec<Action> {
        self.window.flushed();
        self.finish(now)
    }

    /// Time passed: CONNACK deadline, keepalive (PINGREQ, and a link silent for 1.5 × keepalive with a
    /// PINGREQ outstanding is declared dead), the rate limiter, the stop deadline.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        match &mut self.phase {
            Phase::Connecting { deadline } if now >= *deadline => {
                let timeout = self.connect_timeout();
                self.lost(BridgeError::ConnectTimeout(timeout));
            }
            Phase::Up(l) if !l.up.keepalive.is_zero() => {
                let ka = l.up.keepalive;
                if l.ping_sent.is_none()
                    && (now.saturating_duration_since(l.last_tx) >= ka
                        || now.saturating_duration_since(l.last_rx) >= ka)
                {
                    mqtt::encode(&Packet::PingReq, l.up.protocol, &mut self.out);
                    l.ping_sent = Some(now);
                }
                let limit = ka.mul_f64(1.5);
                if l.ping_sent.is_some() && now.saturating_duration_since(l.last_rx) >= limit {
                    self.lost(BridgeError::KeepaliveTimeout(limit));
                }
            }
            _ => {}
        }
        self.finish(now)
    }

    /// Stop: no new rows; the in-flight ones get up to `grace` for their acks, then `offline` and
    /// DISCONNECT go out. Without a link the stop is immediate.
    pub(crate) fn begin_stop(&mut self, now: Instant, grace: Duration) -> Vec<Action> {
        match &mut self.phase {
            Phase::Up(l) => {
                if l.stopping.is_none() {
                    l.stopping = Some(now + grace);
                }
            }
            Phase::Stopped => {}
            _ => {
                self.phase = Phase::Stopped;
                self.actions.push(Action::Stopped);
            }
        }
        self.finish(now)
    }

    fn packet(&mut self, p: Packet, now: Instant) {
        match &self.phase {
            Phase::Connecting { .. } => match p {
                Packet::ConnAck(ack) => self.connack(ack, now),
                other => self.lost(BridgeError::Protocol(format!(
                    "expected CONNACK, got {}",
                    packet_name(&other)
                ))),
            },
            Phase::Up(_) => self.live_packet(p),
            Phase::Down | Phase::Stopped => {}
        }
    }

    fn connack(&mut self, ack: ConnAck, now: Instant) {
        if ack.reason_code != 0 {
            let e = refusal(&ack, &self.cfg);
            self.lost(e);
            return;
        }
        let protocol = self.cfg.protocol;
        let v5 = protocol == Protocol::V5;
        let p = &ack.properties;
        // The upstream's Receive Maximum counts every QoS 1/2 PUBLISH in flight, the birth and `offline`
        // included: the window checks rows and those together against it.
        let quota = match p.receive_maximum {
            Some(r) if v5 => usize::from(r),
            _ => usize::MAX,
        };
        let limit = usize::from(self.cfg.inflight)
            .min(quota)
            .min(self.learned_window.unwrap_or(usize::MAX));
        let up = Upstream {
            protocol,
            max_packet: match p.maximum_packet_size {
                Some(m) if v5 => m as usize,
                _ => usize::MAX,
            },
            max_qos: match p.maximum_qos.and_then(QoS::from_u8) {
                Some(q) if v5 => q,
                _ => QoS::ExactlyOnce,
            },
            retain_ok: !v5 || p.retain_available != Some(0),
            keepalive: match p.server_keep_alive {
                Some(k) if v5 => Duration::from_secs(u64::from(k)),
                _ => self.cfg.keepalive,
            },
        };
        self.out.clear();
        self.window
            .reconnect(limit, quota, ack.session_present, protocol, &mut self.out);
        // The birth's identifier is taken first, so the resends leave its slot of the Receive Maximum.
        let birth = self.window.control_pid(true);
        // What the last connection left unacknowledged goes first, before the birth.
        self.window.resend(protocol, &mut self.out, SEND_HIGH);
        self.backoff.reset();
        self.connects += 1;
        tracing::info!(
            bridge = %self.name,
            "bridge {}: connected to {} ({}, window {}{}{})",
            self.name,
            url_text(&self.cfg),
            if v5 { "MQTT 5" } else { "MQTT 3.1.1" },
            self.window.limit(),
            if ack.session_present { ", session resumed" } else { "" },
            if self.window.len() > 0 { format!(", resending {} unacknowledged", self.window.len()) } else { String::new() },
        );
        // Birth: retained `online` on the status topic (the will says `offline`).
        mqtt::encode_publish(
            &status_publish(&self.cfg.status_topic, birth, up.retain_ok, b"online"),
            protocol,
            &mut self.out,
        );
        let subscribe_pid = (!self.rules.subscribe.is_empty()).then(|| {
            let pid = self.window.control_pid(false);
            mqtt::encode(
                &Packet::Subscribe(self.subscribe(pid)),
                protocol,
                &mut self.out,
            );
            pid
        });
        self.phase = Phase::Up(Box::new(Live {
            up,
            inbound_qos2: HashSet::new(),
            last_rx: now,
            last_tx: now,
            ping_sent: None,
            subscribe_pid,
            stopping: None,
            offline: None,
            offline_done: false,
            will_on_disconnect: false,
            refused_logged: false,
        }));
        self.actions.push(Action::Connected);
    }

    fn subscribe(&self, pid: u16) -> Subscribe {
        let subscriptions = self
            .rules
            .subscribe
            .iter()
            .map(|r| Subscription {
                filter: r.filter.clone(),
                qos: r.qos,
                // Our own forwards never come back down (MQTT 5; 3.1.1 has no such option, and inbound
                // messages are not logged, so they cannot loop either way).
                no_local: true,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            })
            .collect();
        Subscribe {
            packet_id: pid,
            properties: Properties::default(),
            subscriptions,
        }
    }

    fn live_packet(&mut self, p: Packet) {
        let Phase::Up(l) = &mut self.phase else {
            return;
        };
        let protocol = l.up.protocol;
        match p {
            Packet::PubAck(a) => match self.window.puback(a.packet_id, a.reason_code) {
                Acked::Unknown => {
                    if l.offline == Some(a.packet_id) {
                        l.offline_done = true;
                    }
                    self.window.release_control(a.packet_id);
                }
                Acked::Refused(code) => refused(&self.name, code, &a, &mut l.refused_logged),
                Acked::Quota => self.over_quota(),
                Acked::Delivered | Acked::Released => {}
            },
            Packet::PubRec(a) => {
                match self
                    .window
                    .pubrec(a.packet_id, a.reason_code, protocol, &mut self.out)
                {
                    Acked::Refused(code) => refused(&self.name, code, &a, &mut l.refused_logged),
                    Acked::Quota => self.over_quota(),
                    _ => {}
                }
            }
            Packet::PubComp(a) => {
                self.window.pubcomp(a.packet_id, a.reason_code);
            }
            Packet::SubAck(s) => {
                if Some(s.packet_id) == l.subscribe_pid {
                    self.window.release_control(s.packet_id);
                    for (rule, code) in self.rules.subscribe.iter().zip(&s.reason_codes) {
                        if *code >= 0x80 {
                            let e = BridgeError::SubscribeRefused {
                                filter: rule.filter.clone(),
                                code: *code,
                                text: reason_text(*code),
                            };
                            tracing::warn!(bridge = %self.name, "bridge {}: {e}", self.name);
                            self.actions.push(Action::Warn(e));
                        }
                    }
                }
            }
            Packet::Publish(p) => {
                let pid = p.packet_id;
                let qos = p.qos;
                let fresh = qos != QoS::ExactlyOnce || l.inbound_qos2.insert(pid);
                if l.inbound_qos2.len() > INBOUND_QOS2_MAX {
                    self.lost(BridgeError::Protocol(format!(
                        "the upstream exceeded our Receive Maximum ({INBOUND_RECEIVE_MAXIMUM}) with QoS 2 messages"
                    )));
                    return;
                }
                if fresh {
                    if let Some(msg) = inbound(&self.rules, p) {
                        self.actions.push(Action::Deliver(Box::new(msg)));
                    }
                }
                let resp = PubResp {
                    packet_id: pid,
                    reason_code: 0,
                    properties: Properties::default(),
                };
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        mqtt::encode(&Packet::PubAck(resp), protocol, &mut self.out)
                    }
                    QoS::ExactlyOnce => {
                        mqtt::encode(&Packet::PubRec(resp), protocol, &mut self.out)
                    }
                }
            }
            Packet::PubRel(r) => {
                l.inbound_qos2.remove(&r.packet_id);
                let resp = PubResp {
                    packet_id: r.packet_id,
                    reason_code: 0,
                    properties: Properties::default(),
                };
                mqtt::encode(&Packet::PubComp(resp), protocol, &mut self.out);
            }
            Packet::PingResp => l.ping_sent = None,
            Packet::Disconnect(d) => {
                if d.reason_code == reason::RECEIVE_MAXIMUM_EXCEEDED {
                    self.over_quota();
                } else {
                    let e = disconnect_error(&d, &self.cfg);
                    self.lost(e);
                }
            }
            Packet::UnsubAck(_) => {}
            other => self.lost(BridgeError::Protocol(format!(
                "unexpected packet from the upstream: {}",
                packet_name(&other)
            ))),
        }
    }

    /// The upstream's in-flight quota is smaller than it said (or, in 3.1.1, than configured): the next
    /// connections use half the window. The unacknowledged rows are sent again then.
    fn over_quota(&mut self) {
        let window = (self.window.limit() / 2).max(1);
        self.learned_window = Some(window);
        self.lost(BridgeError::QuotaExceeded { window });
    }

    /// The link ended: back to `down` with a reconnect delay, or `stopped` when a stop was under way.
    fn lost(&mut self, error: BridgeError) {
        let (was_up, stopping) = match &self.phase {
            Phase::Up(l) => (true, l.stopping.is_some()),
            Phase::Stopped => return,
            _ => (false, false),
        };
        // Bytes not yet handed out belong to the dead link; unacknowledged rows are resent on the next one.
        self.out.clear();
        if stopping {
            self.phase = Phase::Stopped;
            self.actions.push(Action::Stopped);
            return;
        }
        self.phase = Phase::Down;
        let after = self.backoff.next_delay();
        self.actions.push(Action::Reconnect {
            after,
            error,
            was_up,
        });
    }

    /// Ends every input: new rows into the window (or the stop's next step), then the output.
    fn finish(&mut self, now: Instant) -> Vec<Action> {
        if let Phase::Up(l) = &self.phase {
            let stopping = l.stopping.is_some();
            let protocol = l.up.protocol;
            self.window.resend(protocol, &mut self.out, SEND_HIGH);
            if stopping {
                self.stop_step(now);
            } else {
                self.fill(now);
            }
        }
        if !self.out.is_empty() {
            if let Phase::Up(l) = &mut self.phase {
                l.last_tx = now;
            }
            self.actions.push(Action::Send(self.out.split().freeze()));
        }
        let cursor = self.window.cursor();
        if cursor != self.reported {
            self.reported = cursor;
            self.actions.push(Action::Advance(cursor));
        }
        // The end of the link, if any, comes last: everything before it is still to be carried out.
        if let Some(i) = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Stopped | Action::Reconnect { .. }))
        {
            let end = self.actions.remove(i);
            self.actions.push(end);
        }
        std::mem::take(&mut self.actions)
    }

    /// Rows are ready but the window has no place for them, or holds them back for a quarter: only acks can
    /// move the link on.
    pub(crate) fn window_bound(&self) -> bool {
        !self.rows.is_empty()
            && self.window.outstanding() > 0
            && self.window.free() < refill_step(self.window.limit())
    }

    /// While [`Machine::window_bound`]: the acks still needed before new rows may go out (at most those
    /// outstanding); 0 otherwise.
    pub(crate) fn acks_before_refill(&self) -> usize {
        if !self.window_bound() {
            return 0;
        }
        refill_step(self.window.limit())
            .saturating_sub(self.window.free())
            .min(self.window.outstanding())
    }

    /// A PINGREQ awaits its PINGRESP.
    pub(crate) fn ping_outstanding(&self) -> bool {
        matches!(&self.phase, Phase::Up(l) if l.ping_sent.is_some())
    }

    /// With a large window (>= 64) and acks outstanding, new rows wait until a quarter of the window is
    /// free, so they go out as one large write rather than one small write per ack read: each small write
    /// costs the upstream a wake-up and a PUBACK segment of its own (the README's drain section has the
    /// measurements). The wait is bounded by [`HOLD_MAX`]: a peer with Nagle on (mosquitto) may hold its
    /// next PUBACKs until our delayed TCP ACK (up to 40 ms). Small windows refill at once: holding back a
    /// window of 20 in quarters ran into exactly that stall (1,400 msg/s instead of 70,000).
    pub(crate) fn holding_back(&self) -> bool {
        self.window_bound() && self.window.free() > 0
    }

    /// Encodes new rows while the window, the rate limit and the send size allow.
    fn fill(&mut self, now: Instant) {
        let Phase::Up(l) = &self.phase else {
            return;
        };
        let up = l.up.clone();
        if self.holding_back() {
            let since = *self.held_since.get_or_insert(now);
            if now.saturating_duration_since(since) < HOLD_MAX {
                return;
            }
        }
        self.held_since = None;
        while self.out.len() < SEND_HIGH && self.window.room() {
            if self.rows.is_empty() {
                break;
            }
            if let Some(l) = &mut self.limiter {
                if !l.ready(now) {
                    break;
                }
                l.tokens -= 1.0;
            }
            let Some(mut item) = self.rows.pop_front() else {
                break;
            };
            let p = &mut item.publish;
            if p.qos > up.max_qos {
                p.qos = up.max_qos;
            }
            if !up.retain_ok {
                p.retain = false;
            }
            if !mqtt::valid_topic_name(&p.topic) {
                // Logged by an older version, or a rule's template made it so: an upstream refuses it as
                // malformed and drops the connection, every time (the backlog would never move again).
                tracing::warn!(bridge = %self.name, seq = item.seq, topic = %p.topic.escape_debug(), "bridge {}: a message's topic contains a control character or a Unicode non-character, which an upstream refuses as malformed; skipped", self.name);
                self.skipped += 1;
                self.window.consumed(item.seq);
                continue;
            }
            if up.max_packet < usize::MAX
                && mqtt::publish_encoded_len(p, up.protocol) > up.max_packet
            {
                tracing::warn!(bridge = %self.name, seq = item.seq, topic = %p.topic, "bridge {}: a message of {} bytes is larger than the upstream's maximum packet size ({}); skipped", self.name, p.payload.len(), up.max_packet);
                self.skipped += 1;
                self.window.consumed(item.seq);
                continue;
            }
            self.window
                .push(item.seq, item.publish, up.protocol, &mut self.out);
        }
        if self.rows.is_empty() {
            if let Some(upto) = self.batch_upto.take() {
                // The batch is used up: the cursor may pass its tail (rows no rule matched).
                self.window.consumed(upto);
            }
        }
    }

    /// A stop in progress: `offline` once nothing is in flight (or at the deadline), then DISCONNECT.
    fn stop_step(&mut self, now: Instant) {
        let Phase::Up(l) = &mut self.phase else {
            return;
        };
        let deadline = l.stopping.unwrap_or(now);
        let protocol = l.up.protocol;
        if l.offline.is_none() && (self.window.outstanding() == 0 || now >= deadline) {
            if self.window.quota_free() {
                let pid = self.window.control_pid(true);
                l.offline = Some(pid);
                mqtt::encode_publish(
                    &status_publish(&self.cfg.status_topic, pid, l.up.retain_ok, b"offline"),
                    protocol,
                    &mut self.out,
                );
            } else {
                // Only at the deadline, with the Receive Maximum full: the upstream publishes our will.
                l.offline = Some(0);
                l.offline_done = true;
                l.will_on_disconnect = true;
            }
        }
        if l.offline_done || now >= deadline {
            let d = Disconnect {
                reason_code: if l.will_on_disconnect {
                    reason::DISCONNECT_WITH_WILL
                } else {
                    0
                },
                properties: Properties::default(),
            };
            mqtt::encode(&Packet::Disconnect(d), protocol, &mut self.out);
            self.phase = Phase::Stopped;
            self.actions.push(Action::Stopped);
        }
    }
}

fn status_publish(topic: &str, pid: u16, retain: bool, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: Arc::from(topic),
        packet_id: pid,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

fn refused(name: &str, code: u8, a: &PubResp, logged: &mut bool) {
    if !*logged {
        let why = a
            .properties
            .reason_string
            .as_deref()
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        tracing::error!(bridge = %name, "bridge {name}: the upstream refused a message ({}, reason 0x{code:02X}{why}); refused messages are counted and skipped (this is logged once per connection)", reason_text(code));
        *logged = true;
    }
}

/// An inbound PUBLISH mapped by the first matching subscribe rule, as a local message.
fn inbound(rules: &Rules, p: Publish) -> Option<Message> {
    let rule = rules.inbound_for(&p.topic)?;
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

/// The URL for logs and status.
pub(crate) fn url_text(cfg: &BridgeConfig) -> String {
    use crate::bridge::config::BridgeScheme::*;
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

#[cfg(test)]
pub(super) mod tests {
    //! The link driven packet by packet, no socket, no broker: what goes out for what comes in.
    use super::*;
    use crate::bridge::config::{BridgeUrl, ForwardRule, SubscribeRule};
    use crate::mqtt::{decode, SubAck};

    /// A bridge to 127.0.0.1:1883 forwarding `gw/#` (also the starting point of the driver's tests).
    pub(in crate::bridge) fn cfg() -> BridgeConfig {
        BridgeConfig {
            keepalive: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            forward: vec![ForwardRule {
                filter: "gw/#".into(),
                topic: "up/{topic}".into(),
                qos: None,
                retain: true,
            }],
            ..BridgeConfig::new("cloud", BridgeUrl::mqtt("127.0.0.1", 1883), "gw")
        }
    }

    fn machine(cfg: &BridgeConfig, now: Instant) -> Machine {
        let rules = Arc::new(Rules::compile(&cfg.forward, &cfg.subscribe));
        Machine::new(cfg, rules, 0, now)
    }

    /// The packets of every `Send`, in order.
    fn sent(actions: &[Action]) -> Vec<Packet> {
        let mut v = Vec::new();
        for a in actions {
            if let Action::Send(b) = a {
                let mut buf = BytesMut::from(&b[..]);
                loop {
                    // The decoder is the broker's: it takes CONNECT only as the first packet it sees.
                    let connect = buf.first().is_some_and(|b| b >> 4 == 1);
                    let protocol = (!connect).then_some(Protocol::V5);
                    match decode(&mut buf, protocol, u32::MAX).unwrap() {
                        Some(p) => v.push(p),
                        None => break,
                    }
                }
                assert!(buf.is_empty(), "a partial packet was sent");
            }
        }
        v
    }

    fn publishes(actions: &[Action]) -> Vec<Publish> {
        sent(actions)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn advanced(actions: &[Action]) -> Option<u64> {
        actions.iter().rev().find_map(|a| match a {
            Action::Advance(c) => Some(*c),
            _ => None,
        })
    }

    fn reconnect(actions: &[Action]) -> Option<(&BridgeError, Duration, bool)> {
        actions.iter().find_map(|a| match a {
            Action::Reconnect {
                after,
                error,
                was_up,
            } => Some((error, *after, *was_up)),
            _ => None,
        })
    }

    fn connack(receive_maximum: Option<u16>, session_present: bool) -> Packet {
        Packet::ConnAck(ConnAck {
            session_present,
            reason_code: 0,
            properties: Properties {
                receive_maximum,
                ..Properties::default()
            },
        })
    }

    fn puback(pid: u16) -> Packet {
        Packet::PubAck(PubResp {
            packet_id: pid,
            reason_code: 0,
            properties: Properties::default(),
        })
    }

    /// Rows `from..=to` on `gw/d/v`, payload = the seq.
    fn rows(from: u64, to: u64) -> Batch {
        Batch {
            items: (from..=to)
                .map(|seq| Item {
                    seq,
                    publish: Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: Arc::from("up/gw/d/v"),
                        packet_id: 0,
                        properties: Properties::default(),
                        payload: Bytes::from(seq.to_string()),
                    },
                })
                .collect(),
            upto: to,
            expired: 0,
            unroutable: 0,
        }
    }

    fn seq_of(p: &Publish) -> u64 {
        std::str::from_utf8(&p.payload).unwrap().parse().unwrap()
    }

    /// Connected with the given Receive Maximum; returns the birth's packet identifier.
    fn up(m: &mut Machine, rm: Option<u16>, now: Instant) -> u16 {
        let a = m.on_transport_up(now);
        assert!(matches!(sent(&a)[..], [Packet::Connect(_)]));
        let a = m.on_packet(connack(rm, false), now);
        assert!(a.iter().any(|a| matches!(a, Action::Connected)));
        let birth = publishes(&a)
            .into_iter()
            .find(|p| &*p.topic == "gw/status")
            .expect("birth");
        assert_eq!(&birth.payload[..], b"online");
        assert!(birth.retain && birth.qos == QoS::AtLeastOnce);
        birth.packet_id
    }

    /// Connected with Receive Maximum `rm`, the birth acknowledged, rows `1..=n` handed over: the machine and
    /// the rows it sent at once.
    fn sending(rm: u16, n: u64, t0: Instant) -> (Machine, Vec<Publish>) {
        let mut m = machine(&cfg(), t0);
        let birth = up(&mut m, Some(rm), t0);
        m.on_packet(puback(birth), t0);
        let first = publishes(&m.on_rows(rows(1, n), t0));
        (m, first)
    }

    #[test]
    fn connect_carries_the_will_and_a_refused_connack_backs_off() {
        let t0 = Instant::now();
        let c = cfg();
        let mut m = machine(&c, t0);
        let a = m.on_transport_up(t0);
        match &sent(&a)[..] {
            [Packet::Connect(c)] => {
                let will = c.will.as_ref().expect("will");
                assert_eq!(
                    (&*will.topic, &will.payload[..]),
                    ("gw/status", &b"offline"[..])
                );
                assert!(will.retain);
                assert_eq!(c.keep_alive, 10);
                assert_eq!(c.properties.receive_maximum, Some(INBOUND_RECEIVE_MAXIMUM));
            }
            other => panic!("{other:?}"),
        }
        let refused = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: reason::BAD_USER_NAME_OR_PASSWORD,
            properties: Properties::default(),
        });
        let a = m.on_packet(refused, t0);
        let (e, after, was_up) = reconnect(&a).expect("reconnect");
        assert!(matches!(e, BridgeError::Refused { code: 0x86, .. }), "{e}");
        assert!(e.to_string().contains("username"), "{e}");
        assert!(!was_up);
        assert!(after >= c.reconnect_min / 2 && after <= c.reconnect_min);
        assert!(!m.connected());
        // The next attempt: no CONNACK before the deadline.
        m.on_transport_up(t0);
        assert!(reconnect(&m.on_tick(t0 + Duration::from_secs(1))).is_none());
        let a = m.on_tick(t0 + m.connect_timeout());
        let (e, after, _) = reconnect(&a).expect("connect timeout");
        assert!(matches!(e, BridgeError::ConnectTimeout(_)), "{e}");
        assert!(after >= c.reconnect_min, "the backoff grows: {after:?}");
        // And a transport closed before CONNACK says so.
        m.on_transport_up(t0);
        let a = m.on_closed(BridgeError::Closed, t0);
        assert!(matches!(
            reconnect(&a),
            Some((BridgeError::ClosedBeforeConnAck, _, false))
        ));
        assert_eq!(m.connects, 0);
    }

    #[test]
    fn rows_fill_the_receive_maximum_with_the_birth_and_the_cursor_moves_in_order() {
        let t0 = Instant::now();
        let mut m = machine(&cfg(), t0);
        let birth = up(&mut m, Some(4), t0);
        assert_eq!(m.window().limit(), 4);
        let a = m.on_rows(rows(1, 10), t0);
        let p = publishes(&a);
        assert_eq!(
            p.iter().map(seq_of).collect::<Vec<_>>(),
            [1, 2, 3],
            "3 rows + the birth = 4"
        );
        assert!(p.iter().all(|p| !p.dup && p.qos == QoS::AtLeastOnce));
        // The birth's ack frees its slot for row 4.
        let a = m.on_packet(puback(birth), t0);
        assert_eq!(publishes(&a).iter().map(seq_of).collect::<Vec<_>>(), [4]);
        assert_eq!(advanced(&a), None);
        // An ack out of order does not move the cursor; the front's does, past both.
        let a = m.on_packet(puback(p[1].packet_id), t0);
        assert_eq!(advanced(&a), None);
        assert_eq!(m.window().cursor(), 0);
        let a = m.on_packet(puback(p[0].packet_id), t0);
        assert_eq!(advanced(&a), Some(2));
        assert_eq!(publishes(&a).iter().map(seq_of).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn many_acks_in_one_read_are_answered_with_one_send() {
        let t0 = Instant::now();
        let (mut m, first) = sending(20, 100, t0);
        assert_eq!(first.len(), 20);
        let mut buf = BytesMut::new();
        for p in &first[..10] {
            mqtt::encode(&puback(p.packet_id), Protocol::V5, &mut buf);
        }
        let a = m.on_bytes(&mut buf, t0);
        assert!(buf.is_empty());
        let sends = a.iter().filter(|a| matches!(a, Action::Send(_))).count();
        assert_eq!(sends, 1, "one send for ten acks");
        assert_eq!(publishes(&a).len(), 10);
        assert_eq!(advanced(&a), Some(10));
    }

    #[test]
    fn a_large_window_refills_in_quarters_and_waits_at_most_hold_max() {
        let t0 = Instant::now();
        let (mut m, first) = sending(100, 1000, t0);
        assert_eq!(first.len(), 100);
        assert_eq!(m.acks_before_refill(), 25, "a quarter of a full window");
        // 24 acks free less than a quarter: nothing goes out, and the machine asks to be woken.
        let mut a = Vec::new();
        for p in &first[..24] {
            a.extend(m.on_packet(puback(p.packet_id), t0));
        }
        assert_eq!(m.acks_before_refill(), 1);
        assert!(
            publishes(&a).is_empty(),
            "refilled before a quarter was free"
        );
        assert_eq!(
            advanced(&a),
            Some(24),
            "the cursor moves while new rows wait"
        );
        assert!(m.holding_back());
        assert_eq!(m.next_wakeup(), Some(t0 + HOLD_MAX));
        // The 25th frees a quarter: 25 rows in one send.
        let a = m.on_packet(puback(first[24].packet_id), t0);
        assert_eq!(a.iter().filter(|a| matches!(a, Action::Send(_))).count(), 1);
        assert_eq!(
            publishes(&a).iter().map(seq_of).collect::<Vec<_>>(),
            (101..=125).collect::<Vec<_>>()
        );
        assert!(!m.holding_back());
        assert_eq!(m.acks_before_refill(), 25, "full again");
        // One ack, then silence: the freed place is used once HOLD_MAX has passed, not later.
        let t1 = t0 + Duration::from_millis(10);
        assert!(publishes(&m.on_packet(puback(first[25].packet_id), t1)).is_empty());
        assert!(publishes(&m.on_tick(t1 + HOLD_MAX / 2)).is_empty());
        assert_eq!(m.next_wakeup(), Some(t1 + HOLD_MAX));
        let a = m.on_tick(t1 + HOLD_MAX);
        assert_eq!(publishes(&a).iter().map(seq_of).collect::<Vec<_>>(), [126]);
    }

    #[test]
    fn a_small_window_refills_on_every_ack() {
        let t0 = Instant::now();
        let (m0, _) = sending(20, 0, t0);
        assert!(!m0.window_bound(), "no rows yet");
        assert_eq!(m0.acks_before_refill(), 0, "nothing waits for acks");
        let (mut m, first) = sending(20, 100, t0);
        assert_eq!(first.len(), 20);
        assert!(m.window_bound(), "rows ready, the window full");
        assert_eq!(m.acks_before_refill(), 1, "one ack lets a row out");
        let a = m.on_packet(puback(first[0].packet_id), t0);
        assert_eq!(publishes(&a).iter().map(seq_of).collect::<Vec<_>>(), [21]);
        assert!(!m.holding_back());
        assert!(m.window_bound());
    }

    #[test]
    fn reconnect_resends_unacknowledged_rows_first_with_dup_and_their_ids() {
        let t0 = Instant::now();
        let mut m = machine(&cfg(), t0);
        let birth = up(&mut m, Some(10), t0);
        m.on_packet(puback(birth), t0);
        let first = publishes(&m.on_rows(rows(1, 5), t0));
        m.on_packet(puback(first[0].packet_id), t0);
        m.on_packet(puback(first[2].packet_id), t0);
        let a = m.on_closed(BridgeError::Closed, t0);
        let (e, _, was_up) = reconnect(&a).expect("reconnect");
        assert!(matches!(e, BridgeError::Closed) && was_up);
        assert_eq!(m.window().cursor(), 1);
        m.on_transport_up(t0);
        let a = m.on_packet(connack(Some(10), true), t0);
        let p = publishes(&a);
        // 2, 4, 5 again (3 was acknowledged), in order, DUP, same identifiers; then the birth.
        assert_eq!(
            p.iter().map(|p| &*p.topic).collect::<Vec<_>>(),
            ["up/gw/d/v", "up/gw/d/v", "up/gw/d/v", "gw/status"]
        );
        for (again, orig) in p[..3].iter().zip([&first[1], &first[3], &first[4]]) {
            assert!(again.dup);
            assert_eq!(again.packet_id, orig.packet_id);
            assert_eq!(again.payload, orig.payload);
        }
        assert_eq!(m.window().resent, 3);
        for p in &p[..3] {
            m.on_packet(puback(p.packet_id), t0);
        }
        assert_eq!(m.window().cursor(), 5);
        assert_eq!(m.connects, 2);
    }

    #[test]
    fn a_stalled_link_is_given_up_and_nothing_unacknowledged_counts_as_delivered() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.keepalive = Duration::from_secs(2);
        let mut m = machine(&c, t0);
        let birth = up(&mut m, None, t0);
        m.on_packet(puback(birth), t0);
        assert_eq!(publishes(&m.on_rows(rows(1, 5), t0)).len(), 5);
        // Silence: a PINGREQ after one keepalive, the link declared dead at 1.5 keepalive.
        let a = m.on_tick(t0 + Duration::from_secs(2));
        assert!(matches!(sent(&a)[..], [Packet::PingReq]));
        assert!(reconnect(&a).is_none());
        let a = m.on_tick(t0 + Duration::from_secs(3));
        let (e, _, was_up) = reconnect(&a).expect("keepalive timeout");
        assert!(matches!(e, BridgeError::KeepaliveTimeout(_)), "{e}");
        assert!(was_up);
        assert_eq!(m.window().cursor(), 0);
        assert_eq!(m.window().delivered, 0);
        // A PINGRESP in time keeps the link.
        let t1 = t0 + Duration::from_secs(10);
        m.on_transport_up(t1);
        m.on_packet(connack(None, true), t1);
        m.on_tick(t1 + Duration::from_secs(2));
        m.on_packet(Packet::PingResp, t1 + Duration::from_millis(2500));
        assert!(reconnect(&m.on_tick(t1 + Duration::from_secs(3))).is_none());
        assert!(m.connected());
    }

    #[test]
    fn a_stop_waits_for_the_window_then_says_offline_and_disconnects() {
        let t0 = Instant::now();
        let mut m = machine(&cfg(), t0);
        let birth = up(&mut m, Some(10), t0);
        m.on_packet(puback(birth), t0);
        let p = publishes(&m.on_rows(rows(1, 3), t0));
        let a = m.begin_stop(t0, Duration::from_secs(5));
        assert!(
            publishes(&a).is_empty(),
            "offline waits for the in-flight rows"
        );
        assert!(!m.wants_rows());
        m.on_packet(puback(p[0].packet_id), t0);
        m.on_packet(puback(p[1].packet_id), t0);
        let a = m.on_packet(puback(p[2].packet_id), t0);
        assert_eq!(advanced(&a), Some(3));
        let offline = publishes(&a).pop().expect("offline");
        assert_eq!(
            (&*offline.topic, &offline.payload[..]),
            ("gw/status", &b"offline"[..])
        );
        assert!(offline.retain);
        let a = m.on_packet(puback(offline.packet_id), t0);
        assert!(matches!(sent(&a)[..], [Packet::Disconnect(ref d)] if d.reason_code == 0));
        assert!(matches!(a.last(), Some(Action::Stopped)));
        // Stopping without a link is immediate.
        let mut m = machine(&cfg(), t0);
        let a = m.begin_stop(t0, Duration::from_secs(5));
        assert!(matches!(a[..], [Action::Stopped]));
    }

    #[test]
    fn a_stop_deadline_with_the_receive_maximum_full_leaves_offline_to_the_will() {
        let t0 = Instant::now();
        let mut m = machine(&cfg(), t0);
        let birth = up(&mut m, Some(3), t0);
        m.on_packet(puback(birth), t0);
        assert_eq!(publishes(&m.on_rows(rows(1, 9), t0)).len(), 3);
        m.begin_stop(t0, Duration::from_secs(2));
        assert!(sent(&m.on_tick(t0 + Duration::from_secs(1))).is_empty());
        let a = m.on_tick(t0 + Duration::from_secs(2));
        assert!(publishes(&a).is_empty(), "no slot for `offline`");
        assert!(
            matches!(sent(&a)[..], [Packet::Disconnect(ref d)] if d.reason_code == reason::DISCONNECT_WITH_WILL)
        );
        assert!(matches!(a.last(), Some(Action::Stopped)));
        assert_eq!(
            m.window().cursor(),
            0,
            "unacknowledged rows stay undelivered"
        );
    }

    #[test]
    fn subscribe_rules_subscribe_without_echo_and_map_inbound_messages() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.subscribe = vec![
            SubscribeRule {
                filter: "cmd/gw/+/+/set".into(),
                topic: "gw/{1}/{2}/set".into(),
                qos: QoS::AtLeastOnce,
            },
            SubscribeRule {
                filter: "forbidden/#".into(),
                topic: "{topic}".into(),
                qos: QoS::ExactlyOnce,
            },
        ];
        let mut m = machine(&c, t0);
        m.on_transport_up(t0);
        let a = m.on_packet(connack(None, false), t0);
        let sub = sent(&a)
            .into_iter()
            .find_map(|p| match p {
                Packet::Subscribe(s) => Some(s),
                _ => None,
            })
            .expect("SUBSCRIBE after CONNACK");
        assert_eq!(sub.subscriptions.len(), 2);
        assert!(sub.subscriptions.iter().all(|s| s.no_local));
        let a = m.on_packet(
            Packet::SubAck(SubAck {
                packet_id: sub.packet_id,
                properties: Properties::default(),
                reason_codes: vec![1, reason::NOT_AUTHORIZED],
            }),
            t0,
        );
        assert!(matches!(
            &a[..],
            [Action::Warn(BridgeError::SubscribeRefused { filter, code: 0x87, .. })] if filter == "forbidden/#"
        ));
        // QoS 1 inbound: delivered mapped, PUBACK.
        let inbound = |pid: u16, qos: QoS, topic: &str| {
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: Arc::from(topic),
                packet_id: pid,
                properties: Properties::default(),
                payload: Bytes::from_static(b"21.5"),
            })
        };
        let a = m.on_packet(
            inbound(7, QoS::AtLeastOnce, "cmd/gw/boiler/setpoint/set"),
            t0,
        );
        match &a[..] {
            [Action::Deliver(msg), Action::Send(_)] => {
                assert_eq!(&*msg.topic, "gw/boiler/setpoint/set");
                assert_eq!(&msg.payload[..], b"21.5");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(sent(&a)[..], [Packet::PubAck(ref r)] if r.packet_id == 7));
        // QoS 2 sent twice before PUBREL: delivered once, PUBREC both times; PUBREL gets PUBCOMP.
        let q2 = || inbound(8, QoS::ExactlyOnce, "cmd/gw/meter/reset/set");
        let a = m.on_packet(q2(), t0);
        assert_eq!(
            a.iter().filter(|a| matches!(a, Action::Deliver(_))).count(),
            1
        );
        let a = m.on_packet(q2(), t0);
        assert_eq!(
            a.iter().filter(|a| matches!(a, Action::Deliver(_))).count(),
            0
        );
        assert!(matches!(sent(&a)[..], [Packet::PubRec(ref r)] if r.packet_id == 8));
        let rel = Packet::PubRel(PubResp {
            packet_id: 8,
            reason_code: 0,
            properties: Properties::default(),
        });
        assert!(
            matches!(sent(&m.on_packet(rel, t0))[..], [Packet::PubComp(ref r)] if r.packet_id == 8)
        );
        // A message no rule maps is acknowledged and dropped.
        let a = m.on_packet(inbound(9, QoS::AtLeastOnce, "elsewhere/x"), t0);
        assert!(!a.iter().any(|a| matches!(a, Action::Deliver(_))));
        assert!(matches!(sent(&a)[..], [Packet::PubAck(_)]));
    }

    #[test]
    fn a_quota_refusal_reconnects_with_half_the_window() {
        let t0 = Instant::now();
        let mut m = machine(&cfg(), t0);
        let birth = up(&mut m, Some(40), t0);
        m.on_packet(puback(birth), t0);
        let p = publishes(&m.on_rows(rows(1, 50), t0));
        assert_eq!(p.len(), 40);
        let quota = Packet::PubAck(PubResp {
            packet_id: p[0].packet_id,
            reason_code: reason::QUOTA_EXCEEDED,
            properties: Properties::default(),
        });
        let a = m.on_packet(quota, t0);
        assert!(matches!(
            reconnect(&a),
            Some((BridgeError::QuotaExceeded { window: 20 }, _, true))
        ));
        m.on_transport_up(t0);
        let a = m.on_packet(connack(Some(40), true), t0);
        assert_eq!(m.window().limit(), 20);
        assert_eq!(
            publishes(&a).iter().filter(|p| p.dup).count(),
            20,
            "resent within the learned window"
        );
        assert_eq!(m.window().cursor(), 0);
    }
}
