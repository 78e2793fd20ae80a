//! One client connection: the CONNECT handshake, then an event loop over the socket, the session's outbound
//! queue, pending acknowledgements, keepalive, takeover and shutdown.
//!
//! Back-pressure without deadlock: when a publish cannot be queued for a connected QoS 1/2 subscriber whose
//! queue is full, this connection stops *reading* (TCP pushes back on the publisher) but keeps *writing* its
//! own outbound queue. Two clients publishing to each other therefore cannot block each other for good.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::futures::OwnedNotified;

use super::auth::{self, Action, ClientAcl};
use super::core::{
    outbound_for, AdmissionFuture, Broker, CommitFuture, HookRefusal, Metrics, EXPIRY_NEVER,
};
use super::message::Message;
use super::router::{parse_filter, SubOptions, Target};
use super::session::{Inflight, Outbound, Session, Stage};
use crate::mqtt::{
    self, reason, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Protocol, PubResp,
    Publish, QoS, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one socket write when the client has no keepalive.
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Smallest read reservation; idle connections hold no more than this.
const MIN_READ: usize = 512;
/// Largest read reservation.
const MAX_READ: usize = 64 * 1024;
/// Flush the write buffer once it holds this much.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Why the event loop ended.
#[derive(Debug)]
enum Exit {
    /// DISCONNECT with reason 0 (no will).
    Clean,
    /// DISCONNECT with 0x04 (v5): disconnect, but send the will.
    WithWill,
    /// The socket closed or failed without DISCONNECT.
    Io,
    /// A protocol violation: the v5 reason code to send before closing.
    Protocol(u8, String),
    /// Another connection took over the session.
    Takeover,
    /// The broker is stopping.
    Shutdown,
    /// No packet within 1.5x keepalive.
    KeepaliveTimeout,
    /// The broker disconnected the client itself (v5 reason code), e.g. a subscriber too slow to make room.
    Kicked(u8),
    /// A packet started and did not complete within `packet_timeout`.
    PacketTimeout,
}

/// A publish waiting for room in a subscriber's queue.
struct Blocked {
    msg: Arc<Message>,
    session: Arc<Session>,
    out: Outbound,
    space: Pin<Box<OwnedNotified>>,
    /// When the subscriber is disconnected for making no room: `max_publish_wait` after the message first had
    /// to wait, for all its subscribers together (a wait per stuck subscriber, one after another, held the
    /// publisher 16 s behind 16 of them).
    deadline: tokio::time::Instant,
    rest: std::vec::IntoIter<Target>,
    ack: Option<AckPlan>,
}

/// The acknowledgement owed for an incoming QoS 1/2 publish once it is routed.
struct AckPlan {
    pid: u16,
    qos: QoS,
    hook: Option<CommitFuture>,
}

/// A publish waiting for the log to admit it (the connection reads nothing meanwhile).
struct Admitting {
    admission: AdmissionFuture,
    msg: Arc<Message>,
    pid: u16,
    qos: QoS,
}

type AckFuture = BoxFuture<'static, (u16, QoS, Result<(), HookRefusal>)>;

/// Serves one accepted connection until it ends. `over_limit` makes it refuse the CONNECT with "server busy";
/// `allow_anonymous` is the listener's own setting (`None`: the broker's).
///
/// The handshake and the goodbye run boxed: they hold a decoded CONNECT, timers and buffers only briefly, and
/// an idle connection's task should not carry room for them (memory per idle connection is what a gateway
/// with thousands of clients pays).
pub(crate) async fn serve<S: Io>(
    broker: Broker,
    stream: S,
    peer: SocketAddr,
    over_limit: bool,
    allow_anonymous: Option<bool>,
) {
    let Some(mut conn) =
        Box::pin(handshake(broker, stream, peer, over_limit, allow_anonymous)).await
    else {
        return;
    };
    tracing::debug!(%peer, client_id = %conn.session.client_id, protocol = ?conn.protocol, "client connected");
    conn.resend_inflight();
    conn.pump();
    let exit = conn.run().await;
    Box::pin(conn.finish(peer, exit)).await;
}

/// Reads and answers the CONNECT; on success the connection, ready to run.
async fn handshake<S: Io>(
    broker: Broker,
    mut stream: S,
    peer: SocketAddr,
    over_limit: bool,
    allow_anonymous: Option<bool>,
) -> Option<Conn<S>> {
    let cfg = broker.config();
    let mut rbuf = BytesMut::with_capacity(MIN_READ);
    let connect = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut stream, &mut rbuf, cfg.max_packet_size, &broker)) => r,
        _ = broker.inner.shutdown.cancelled() => return None,
    };
    let connect = match connect {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return None;
        }
        Ok(Err(e)) => {
            Metrics::inc(&broker.inner.metrics.protocol_errors);
            tracing::debug!(%peer, error = %e.message, "bad CONNECT");
            // Answer a broken CONNECT with a CONNACK in the client's own version where the spec allows it: v5
            // takes any reason code; 3.1.1 only has codes for the version and the client id.
            let proto = mqtt::peek_connect_protocol(&rbuf);
            let answer = match (proto, e.reason_code) {
                (Some(Protocol::V5), code) => Some((Protocol::V5, code)),
                (
                    _,
                    code @ (reason::UNSUPPORTED_PROTOCOL_VERSION
                    | reason::CLIENT_IDENTIFIER_NOT_VALID),
                ) => Some((Protocol::V311, code)),
                _ => None,
            };
            if let Some((proto, code)) = answer {
                let mut out = BytesMut::new();
                refuse(&mut out, proto, code);
                let _ = stream.write_all(&out).await;
            }
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(c))) => c,
    };
    let protocol = connect.protocol;
    let mut out = BytesMut::new();
    if over_limit {
        Metrics::inc(&broker.inner.metrics.connections_refused);
        refuse(&mut out, protocol, reason::SERVER_BUSY);
        let _ = stream.write_all(&out).await;
        return None;
    }
    let accepted = match accept(&broker, connect, allow_anonymous, &mut out) {
        Ok(a) => a,
        Err(code) => {
            Metrics::inc(&broker.inner.metrics.connections_refused);
            tracing::debug!(%peer, code, "CONNECT refused");
            refuse(&mut out, protocol, code);
            let _ = stream.write_all(&out).await;
            return None;
        }
    };
    Metrics::inc(&broker.inner.metrics.clients_connected);
    let conn_rbuf_empty = rbuf.is_empty();
    let acl = ClientAcl::new(
        cfg.clone(),
        accepted.username.as_deref(),
        accepted.session.client_id.clone(),
    );
    let conn = Conn {
        acl,
        broker: broker.clone(),
        stream,
        rbuf,
        read_size: MIN_READ,
        wbuf: out,
        protocol,
        session: accepted.session,
        generation: accepted.generation,
        keepalive: accepted.keepalive,
        client_receive_max: accepted.client_receive_max,
        client_max_packet: accepted.client_max_packet,
        client_alias_max: accepted.client_alias_max,
        aliases: None,
        pending_acks: None,
        blocked: None,
        admitting: None,
        last_packet: Instant::now(),
        partial_since: None,
        pump_more: false,
        // Packets pipelined behind CONNECT (in the same segment) are handled before the first read.
        process_more: !conn_rbuf_empty,
        unacked_qos1: 0,
        retained_refusal_logged: false,
        subscription_refusal_logged: false,
        refused_v311: None,
        connect_expiry_zero: accepted.connect_expiry_zero,
        cfg,
    };
    conn.touch_keepalive();
    Some(conn)
}

async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet_size: u32,
    broker: &Broker,
) -> Result<Option<Connect>, DecodeError> {
    loop {
        match mqtt::decode(rbuf, None, max_packet_size)? {
            Some(Packet::Connect(c)) => return Ok(Some(*c)),
            Some(_) => {
                return Err(DecodeError {
                    reason_code: reason::PROTOCOL_ERROR,
                    message: "first packet is not CONNECT".into(),
                })
            }
            None => {}
        }
        rbuf.reserve(MIN_READ);
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => {
                broker
                    .inner
                    .metrics
                    .bytes_received
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

fn refuse(out: &mut BytesMut, protocol: Protocol, code: u8) {
    mqtt::encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: code,
            properties: Properties::default(),
        }),
        protocol,
        out,
    );
}

struct Accepted {
    session: Arc<Session>,
    generation: u64,
    username: Option<String>,
    keepalive: Option<Duration>,
    client_receive_max: u16,
    client_max_packet: u32,
    client_alias_max: u16,
    connect_expiry_zero: bool,
}

/// Validates the CONNECT, attaches the session and writes the CONNACK into `out`.
fn accept(
    broker: &Broker,
    connect: Connect,
    allow_anonymous: Option<bool>,
    out: &mut BytesMut,
) -> Result<Accepted, u8> {
    let cfg = broker.config();
    let v5 = connect.protocol == Protocol::V5;
    if connect.properties.authentication_method.is_some() {
        return Err(reason::BAD_AUTHENTICATION_METHOD);
    }
    auth::authenticate(
        &cfg.users,
        allow_anonymous.unwrap_or(cfg.allow_anonymous),
        connect.username.as_deref(),
        connect.password.as_deref(),
    )?;
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            // 3.1.1 §3.1.3-8: an empty client id requires clean session.
            return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
        }
        let id = format!("fb-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        id.into()
    } else {
        connect.client_id.as_str().into()
    };
    if let Some(will) = &connect.will {
        if !mqtt::valid_topic_name(&will.topic) || !within_topic_limits(&will.topic, &cfg.limits) {
            return Err(reason::TOPIC_NAME_INVALID);
        }
        if !auth::authorize(
            &cfg.acl,
            connect.username.as_deref(),
            &client_id,
            Action::Publish,
            &will.topic,
        ) {
            return Err(reason::NOT_AUTHORIZED);
        }
    }
    let max_expiry = u32::try_from(cfg.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
    let (expiry, expiry_capped) = if v5 {
        let asked = connect.properties.session_expiry_interval.unwrap_or(0);
        if asked > max_expiry {
            (max_expiry, true)
        } else {
            (asked, false)
        }
    } else if connect.clean_start {
        (0, false)
    } else {
        // 3.1.1 persistent sessions never expire by the spec; the configured cap keeps a gateway's memory
        // bounded when clients vanish for good.
        (max_expiry, false)
    };
    let expiry = if expiry == u32::MAX {
        EXPIRY_NEVER
    } else {
        expiry
    };

    if expiry != 0 && !broker.may_keep_session(&client_id) {
        tracing::warn!(%client_id, "persistent session refused: max_offline_sessions reached");
        return Err(reason::QUOTA_EXCEEDED);
    }
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if let Some(max) = cfg.max_keepalive {
        if keep_alive == 0 || keep_alive > max {
            keep_alive = max;
        }
        // 5.0 §3.2.2.3.14: with a server-side limit in force, say which keepalive applies.
        server_keep_alive = Some(keep_alive);
    }
    let (session, present, generation) = broker.attach(
        &client_id,
        connect.clean_start,
        connect.protocol,
        connect.username.as_deref(),
    )?;
    {
        let mut st = session.state.lock();
        st.expiry_secs = expiry;
        st.version += 1;
        st.will = connect.will.map(Box::new);
    }
    let mut props = Properties::default();
    if v5 {
        if cfg.receive_maximum != u16::MAX {
            props.receive_maximum = Some(cfg.receive_maximum);
        }
        props.maximum_packet_size = Some(cfg.max_packet_size);
        if cfg.topic_alias_maximum > 0 {
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        }
        props.assigned_client_identifier = assigned;
        if expiry_capped {
            props.session_expiry_interval = Some(expiry);
        }
        props.server_keep_alive = server_keep_alive;
    }
    mqtt::encode(
        &Packet::ConnAck(ConnAck {
            session_present: present,
            reason_code: reason::SUCCESS,
            properties: props,
        }),
        connect.protocol,
        out,
    );
    Ok(Accepted {
        session,
        generation,
        username: connect.username,
        keepalive: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
        // Our own in-flight window toward the client: its Receive Maximum (v5), capped by ours. A 3.1.1 client
        // announces none; without the cap a slow one would collect up to 65535 unacknowledged messages.
        client_receive_max: connect
            .properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(cfg.receive_maximum)
            .max(1),
        client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
        client_alias_max: if v5 {
            connect.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        },
        connect_expiry_zero: expiry == 0,
    })
}

struct Conn<S> {
    acl: ClientAcl,
    broker: Broker,
    stream: S,
    rbuf: BytesMut,
    read_size: usize,
    wbuf: BytesMut,
    protocol: Protocol,
    session: Arc<Session>,
    generation: u64,
    keepalive: Option<Duration>,
    client_receive_max: u16,
    client_max_packet: u32,
    client_alias_max: u16,
    /// Topic aliases both ways; most clients use none.
    aliases: Option<Box<Aliases>>,
    /// Acknowledgements waiting for their commit, in order; created on first use (an empty `FuturesOrdered`
    /// still allocates) and dropped when drained.
    pending_acks: Option<Box<FuturesOrdered<AckFuture>>>,
    blocked: Option<Box<Blocked>>,
    admitting: Option<Box<Admitting>>,
    last_packet: Instant,
    /// When the first byte of a packet not yet complete arrived (`packet_timeout`).
    partial_since: Option<Instant>,
    pump_more: bool,
    process_more: bool,
    /// Incoming QoS 1 publishes not yet acknowledged (with `incoming_qos2`: the client's quota in use).
    unacked_qos1: usize,
    retained_refusal_logged: bool,
    subscription_refusal_logged: bool,
    /// MQTT 3.1.1 has no negative PUBACK: a publish the log refused closes the connection instead of being
    /// acknowledged (the client then resends it on its next connection).
    refused_v311: Option<Box<str>>,
    connect_expiry_zero: bool,
    /// The broker's configuration as it was at CONNECT (a reload applies to new connections).
    cfg: Arc<crate::broker::config::BrokerConfig>,
}

#[derive(Default)]
struct Aliases {
    outbound: HashMap<Arc<str>, u16>,
    inbound: HashMap<u16, Arc<str>>,
}

impl<S: Io> Conn<S> {
    async fn run(&mut self) -> Exit {
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        // The wake-up for new deliveries, takeovers, shutdown and an expired keepalive (see `Session::wake`).
        let session = self.session.clone();
        // The timer for the packet in progress and the publish waiting for room, created the first time one
        // is due: an idle connection carries none (its keepalive is watched by the broker's sweeper).
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            // Registered before the checks below, so a wake-up between them and the wait is not lost.
            let wake = session.wake.notified();
            tokio::pin!(wake);
            if let Some(exit) = self.ended() {
                return exit;
            }
            if !self.wbuf.is_empty() {
                if let Err(exit) = self.flush().await {
                    return exit;
                }
            }
            if let Some(why) = self.refused_v311.take() {
                return Exit::Protocol(reason::UNSPECIFIED_ERROR, why.into());
            }
            if self.process_more && self.may_process() {
                self.process_more = false;
                if let Err(exit) = self.process_buffered() {
                    return exit;
                }
                continue;
            }
            if self.pump_more {
                self.pump();
                continue;
            }
            let reading = self.may_process();
            let mut due = None;
            if let (true, Some(since)) = (reading, self.partial_since) {
                due = Some(since + self.cfg.limits.packet_timeout);
            }
            if let Some(b) = &self.blocked {
                due = Some(due.map_or(b.deadline.into_std(), |d: Instant| {
                    d.min(b.deadline.into_std())
                }));
            }
            if let Some(due) = due.map(tokio::time::Instant::from_std) {
                match &mut timer {
                    Some(t) if due < t.deadline() => t.as_mut().reset(due),
                    Some(_) => {}
                    None => timer = Some(Box::pin(tokio::time::sleep_until(due))),
                }
            }
            tokio::select! {
                biased;
                Some((pid, qos, result)) = next_ack(&mut self.pending_acks), if self.acks_pending() > 0 => {
                    self.write_ack(pid, qos, result);
                    if self.acks_pending() == 0 {
                        self.pending_acks = None;
                    }
                    // A 3.1.1 client held at its quota may have more packets buffered.
                    self.process_more |= !self.rbuf.is_empty();
                }
                _ = wait_space(&mut self.blocked), if self.blocked.is_some() => {
                    self.unblock(false);
                    self.after_unblock();
                }
                r = wait_admission(&mut self.admitting), if self.admitting.is_some() => {
                    let a = self.admitting.take().expect("guarded");
                    self.admitted(a.msg, a.pid, a.qos, r.map(Some));
                    self.process_more = self.blocked.is_none();
                    self.restart_partial_clock();
                }
                r = read_some(&mut self.stream, &mut self.rbuf, self.read_size), if reading => {
                    match r {
                        Ok(0) | Err(_) => return Exit::Io,
                        Ok(n) => {
                            self.broker.inner.metrics.bytes_received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            self.last_packet = Instant::now();
                            self.touch_keepalive();
                            self.read_size = if n >= self.read_size {
                                (self.read_size * 2).min(MAX_READ)
                            } else if n < self.read_size / 4 {
                                (self.read_size / 2).max(MIN_READ)
                            } else {
                                self.read_size
                            };
                            if let Err(exit) = self.process_buffered() {
                                return exit;
                            }
                            if self.rbuf.is_empty() && self.blocked.is_none() {
                                // Give the memory back: idle connections should cost next to nothing.
                                self.rbuf = BytesMut::new();
                            }
                        }
                    }
                }
                _ = &mut wake => {
                    if let Some(exit) = self.ended() {
                        return exit;
                    }
                    if let Some(ka) = self.keepalive {
                        if Instant::now() >= self.last_packet + ka {
                            return Exit::KeepaliveTimeout;
                        }
                    }
                    self.pump();
                }
                _ = sleep_opt(&mut timer), if timer.is_some() => {
                    let now = Instant::now();
                    if self.blocked.as_ref().is_some_and(|b| now >= b.deadline.into_std()) {
                        self.unblock(true);
                        self.after_unblock();
                    }
                    if let (true, Some(since)) = (self.may_process(), self.partial_since) {
                        if now >= since + self.cfg.limits.packet_timeout {
                            return Exit::PacketTimeout;
                        }
                    }
                    // Re-armed above from what is still due.
                    if let Some(t) = &mut timer {
                        t.as_mut().reset(far);
                    }
                }
            }
        }
    }

    /// Why the connection must end now, if it must: another connection took the session over, the broker
    /// disconnected it (see `Broker::evict_slow`) or discarded the session, or the broker shuts down.
    fn ended(&self) -> Option<Exit> {
        let shutdown = self.broker.inner.shutdown.is_cancelled();
        if shutdown {
            Some(Exit::Shutdown)
        } else if self.session.live.load(std::sync::atomic::Ordering::Acquire) != self.generation {
            Some(Exit::Takeover)
        } else {
            None
        }
    }

    /// Tells the broker's sweeper when this connection's keepalive runs out (after the packet just read).
    fn touch_keepalive(&self) {
        if let Some(ka) = self.keepalive {
            let due = self
                .last_packet
                .saturating_duration_since(self.broker.inner.started)
                + ka;
            self.session.keepalive_deadline.store(
                (due.as_millis() as u64).max(1),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    fn after_unblock(&mut self) {
        if self.blocked.is_none() {
            self.process_more = true;
            self.restart_partial_clock();
        }
    }

    /// After the event loop: tell the client why (v5), close, and hand the session back to the broker.
    async fn finish(mut self, peer: SocketAddr, exit: Exit) {
        tracing::debug!(%peer, client_id = %self.session.client_id, ?exit, "client disconnected");
        let exit = match exit {
            Exit::Takeover => {
                let mut st = self.session.state.lock();
                match st.kicked {
                    Some((generation, code)) if generation == self.generation => {
                        st.kicked = None;
                        Exit::Kicked(code)
                    }
                    _ => Exit::Takeover,
                }
            }
            other => other,
        };
        if matches!(exit, Exit::PacketTimeout) {
            Metrics::inc(&self.broker.inner.metrics.packet_timeouts);
        }
        let clean = matches!(exit, Exit::Clean);
        let code = match &exit {
            Exit::Protocol(code, _) => Some(*code),
            Exit::Kicked(code) => Some(*code),
            Exit::Takeover => Some(reason::SESSION_TAKEN_OVER),
            Exit::Shutdown => Some(0x8B),
            Exit::KeepaliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            _ => None,
        };
        if let Exit::Protocol(_, why) = &exit {
            Metrics::inc(&self.broker.inner.metrics.protocol_errors);
            tracing::debug!(client_id = %self.session.client_id, why, "protocol error");
        }
        if let (Some(code), Protocol::V5) = (code, self.protocol) {
            self.wbuf.clear();
            mqtt::encode(
                &Packet::Disconnect(Disconnect {
                    reason_code: code,
                    properties: Properties::default(),
                }),
                self.protocol,
                &mut self.wbuf,
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(&self.wbuf))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        self.broker
            .inner
            .metrics
            .clients_connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // Only while this connection is the session's: after a takeover the will there is the new
        // connection's (the broker sent this one's at the takeover).
        let will = {
            let mut st = self.session.state.lock();
            if st.generation == self.generation {
                st.will.take().map(|w| *w)
            } else {
                None
            }
        };
        self.broker
            .detach(&self.session, self.generation, clean, will);
    }

    /// Whether the next packet may be taken: nothing is waiting for room or for the log, and a 3.1.1 client
    /// (which has no Receive Maximum to break) is within the broker's window; TCP holds the rest back.
    fn may_process(&self) -> bool {
        self.blocked.is_none()
            && self.admitting.is_none()
            && (self.v5() || self.acks_pending() < usize::from(self.cfg.receive_maximum))
    }

    /// While the connection was not reading, a partly received packet could not progress: its clock restarts.
    fn restart_partial_clock(&mut self) {
        if self.partial_since.is_some() {
            self.partial_since = Some(Instant::now());
        }
    }

    async fn flush(&mut self) -> Result<(), Exit> {
        let limit = self
            .keepalive
            .unwrap_or(DEFAULT_WRITE_TIMEOUT)
            .max(Duration::from_secs(5));
        match tokio::time::timeout(limit, self.stream.write_all(&self.wbuf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Exit::Io),
            Err(_) => return Err(Exit::Io),
        }
        if let Err(_e) = self.stream.flush().await {
            return Err(Exit::Io);
        }
        self.broker
            .inner
            .metrics
            .bytes_sent
            .fetch_add(self.wbuf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if self.wbuf.capacity() > 4 * WRITE_HIGH_WATER {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        Ok(())
    }

    fn encode(&mut self, packet: Packet) {
        mqtt::encode(&packet, self.protocol, &mut self.wbuf);
    }

    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    /// Decodes and handles every complete packet in the read buffer, stopping early when a publish blocks.
    fn process_buffered(&mut self) -> Result<(), Exit> {
        let mut decoded = false;
        while self.may_process() {
            let packet = match mqtt::decode(
                &mut self.rbuf,
                Some(self.protocol),
                self.cfg.max_packet_size,
            ) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Err(Exit::Protocol(e.reason_code, e.message)),
            };
            decoded = true;
            self.handle(packet)?;
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                // Let the loop flush before decoding on: bounded memory for pipelined clients.
                self.process_more = true;
                break;
            }
        }
        if self.rbuf.is_empty() {
            self.partial_since = None;
        } else if decoded || self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
        if !self.process_more {
            self.pump();
        }
        Ok(())
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(r) => {
                let done = self
                    .session
                    .state
                    .lock()
                    .complete(r.packet_id, Stage::AwaitAck);
                // Refill the window at once, so queued messages follow their acks in order.
                if done {
                    self.pump();
                }
                Ok(())
            }
            Packet::PubRec(r) => {
                let known = {
                    let mut st = self.session.state.lock();
                    if r.reason_code >= 0x80 {
                        st.complete(r.packet_id, Stage::AwaitRec);
                        return Ok(());
                    }
                    st.received(r.packet_id)
                };
                let code = if known || !self.v5() {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.encode(Packet::PubRel(resp(r.packet_id, code)));
                Ok(())
            }
            Packet::PubRel(r) => {
                let known = self.session.state.lock().incoming_qos2.remove(&r.packet_id);
                let code = if known || !self.v5() {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.encode(Packet::PubComp(resp(r.packet_id, code)));
                Ok(())
            }
            Packet::PubComp(r) => {
                if self
                    .session
                    .state
                    .lock()
                    .complete(r.packet_id, Stage::AwaitComp)
                {
                    self.pump();
                }
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.encode(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => Err(Exit::Protocol(
                reason::PROTOCOL_ERROR,
                "second CONNECT".into(),
            )),
            Packet::Auth(_) => Err(Exit::Protocol(
                reason::PROTOCOL_ERROR,
                "AUTH without an authentication method".into(),
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Exit::Protocol(
                    reason::PROTOCOL_ERROR,
                    "server-to-client packet from a client".into(),
                ))
            }
        }
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Exit> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.connect_expiry_zero && expiry != 0 {
                return Err(Exit::Protocol(
                    reason::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after 0 on CONNECT".into(),
                ));
            }
            let mut st = self.session.state.lock();
            st.expiry_secs = expiry;
            st.version += 1;
        }
        if d.reason_code == reason::DISCONNECT_WITH_WILL {
            Err(Exit::WithWill)
        } else {
            Err(Exit::Clean)
        }
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Exit> {
        Metrics::inc(&self.broker.inner.metrics.messages_received);
        let topic: Arc<str> = match p.properties.topic_alias {
            Some(alias) if self.v5() => {
                if alias == 0 || alias > self.cfg.topic_alias_maximum {
                    return Err(Exit::Protocol(
                        reason::TOPIC_ALIAS_INVALID,
                        format!("topic alias {alias} out of range"),
                    ));
                }
                if p.topic.is_empty() {
                    match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                        Some(t) => t.clone(),
                        None => {
                            return Err(Exit::Protocol(
                                reason::PROTOCOL_ERROR,
                                format!("unknown topic alias {alias}"),
                            ))
                        }
                    }
                } else {
                    self.aliases
                        .get_or_insert_default()
                        .inbound
                        .insert(alias, p.topic.clone());
                    p.topic.clone()
                }
            }
            _ => {
                if p.topic.is_empty() {
                    return Err(Exit::Protocol(
                        reason::PROTOCOL_ERROR,
                        "empty topic without an alias".into(),
                    ));
                }
                p.topic.clone()
            }
        };
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Exit::Protocol(
                reason::PROTOCOL_ERROR,
                "subscription identifier in a client PUBLISH".into(),
            ));
        }
        if !within_topic_limits(&topic, &self.cfg.limits) {
            Metrics::inc(&self.broker.inner.metrics.refused_topic_limits);
            return Err(Exit::Protocol(
                reason::TOPIC_NAME_INVALID,
                format!(
                    "topic over max_topic_levels ({}) or max_topic_length ({})",
                    self.cfg.limits.max_topic_levels, self.cfg.limits.max_topic_length
                ),
            ));
        }
        let cfg = self.broker.config();
        let pid = p.packet_id;
        let qos = p.qos;
        let qos2_retry =
            qos == QoS::ExactlyOnce && self.session.state.lock().incoming_qos2.contains(&pid);
        if qos != QoS::AtMostOnce && !qos2_retry {
            // 5.0 §3.3.4: the client may have at most Receive Maximum QoS 1/2 publishes unacknowledged (QoS 2
            // until PUBCOMP). A 3.1.1 client has no such quota: it is held back by not reading (`may_process`).
            let in_use = self.unacked_qos1 + self.session.state.lock().incoming_qos2.len();
            if self.v5() && in_use >= usize::from(self.cfg.receive_maximum) {
                return Err(Exit::Protocol(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded".into(),
                ));
            }
            if qos == QoS::AtLeastOnce {
                self.unacked_qos1 += 1;
            }
        }
        self.acl.refresh(&cfg, || self.session.who());
        // `$SYS/…` is the broker's own (MQTT 5 §4.7.2 reserves `$` topics for the server): a client could
        // otherwise retain a fake `$SYS/broker/version` or statistics. Refused like an ACL denial (mosquitto
        // drops such publishes too).
        let reserved = topic.as_ref() == "$SYS" || topic.starts_with("$SYS/");
        if reserved || !self.acl.may_publish(&topic) {
            Metrics::inc(&self.broker.inner.metrics.denied_publishes);
            let refusal = HookRefusal {
                reason_code: reason::NOT_AUTHORIZED,
                reason: "not authorized".into(),
            };
            if qos != QoS::AtMostOnce {
                self.write_ack(pid, qos, Err(refusal));
            }
            return Ok(());
        }
        if qos2_retry {
            // A retransmission of a QoS 2 publish we already have: acknowledge, do not deliver twice.
            self.encode(Packet::PubRec(resp(pid, reason::SUCCESS)));
            return Ok(());
        }
        let msg = Arc::new(Message::from_publish(p, topic, Some(self.session.id)));
        if qos == QoS::ExactlyOnce {
            self.session.state.lock().incoming_qos2.insert(pid);
        }
        match self.broker.hook().and_then(|h| h.on_publish(&msg)) {
            None => self.admitted(msg, pid, qos, Ok(None)),
            Some(mut admission) => {
                // Usually the log takes the message at once; only a full writer queue makes us wait.
                let waker = futures::task::noop_waker();
                let mut cx = std::task::Context::from_waker(&waker);
                match admission.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(r) => self.admitted(msg, pid, qos, r.map(Some)),
                    std::task::Poll::Pending => {
                        self.admitting = Some(Box::new(Admitting {
                            admission,
                            msg,
                            pid,
                            qos,
                        }))
                    }
                }
            }
        }
        Ok(())
    }

    /// Routes a publish once the log has admitted it (or refused it: local delivery still happens, and the
    /// client's acknowledgement carries the refusal in MQTT 5).
    fn admitted(
        &mut self,
        msg: Arc<Message>,
        pid: u16,
        qos: QoS,
        log: Result<Option<CommitFuture>, HookRefusal>,
    ) {
        let ack = (qos != QoS::AtMostOnce).then(|| AckPlan {
            pid,
            qos,
            hook: match log {
                Ok(commit) => commit,
                Err(refusal) => Some(Box::pin(async move { Err(refusal) })),
            },
        });
        let (targets, refused) = self.broker.targets(&msg);
        if refused && !self.retained_refusal_logged {
            self.retained_refusal_logged = true;
            tracing::warn!(client_id = %self.session.client_id, topic = %msg.topic, "retained message not stored: max_retained_messages or max_retained_bytes reached (logged once per client)");
        }
        self.deliver_all(msg, targets.into_iter(), ack, None);
    }

    /// Delivers to each target until one is full; then parks the rest in `blocked`, until `deadline` (set when
    /// the message first waits; a subscriber still full after it is disconnected at once).
    fn deliver_all(
        &mut self,
        msg: Arc<Message>,
        mut rest: std::vec::IntoIter<Target>,
        ack: Option<AckPlan>,
        deadline: Option<tokio::time::Instant>,
    ) {
        while let Some(target) = rest.next() {
            let (session, out) = outbound_for(target, &msg);
            // Fast path without registering for a wake-up; only a full queue pays for the notification.
            let Some(out) = self.broker.try_deliver(&session, out) else {
                continue;
            };
            let mut space = Box::pin(session.space_waiter().notified_owned());
            space.as_mut().enable();
            // Offer again now that a wake-up cannot be missed.
            if let Some(out) = self.broker.try_deliver(&session, out) {
                self.blocked = Some(Box::new(Blocked {
                    msg,
                    session,
                    out,
                    space,
                    deadline: deadline.unwrap_or_else(|| {
                        tokio::time::Instant::now() + self.cfg.limits.max_publish_wait
                    }),
                    rest,
                    ack,
                }));
                return;
            }
        }
        if let Some(ack) = ack {
            self.queue_ack(ack);
        }
    }

    /// Offers the parked delivery again. `timed_out`: the subscriber made no room within `max_publish_wait`,
    /// so it is disconnected (its session goes offline and takes the message within its offline limits, or
    /// drops it, counted) — this publisher never waits longer than that on one subscriber.
    fn unblock(&mut self, timed_out: bool) {
        let Some(b) = self.blocked.take() else {
            return;
        };
        if timed_out {
            self.broker.evict_slow(&b.session);
        }
        let mut space = Box::pin(b.session.space_waiter().notified_owned());
        space.as_mut().enable();
        match self.broker.try_deliver(&b.session, b.out) {
            Some(_) if timed_out => {
                // An in-process consumer (no connection to close) that is stuck: drop, counted.
                Metrics::inc(&self.broker.inner.metrics.dropped_queue_full);
                b.session.state.lock().dropped += 1;
                self.deliver_all(b.msg, b.rest, b.ack, Some(b.deadline));
            }
            Some(out) => {
                self.blocked = Some(Box::new(Blocked { out, space, ..*b }));
            }
            None => self.deliver_all(b.msg, b.rest, b.ack, Some(b.deadline)),
        }
    }

    fn queue_ack(&mut self, ack: AckPlan) {
        let AckPlan { pid, qos, hook } = ack;
        match hook {
            None if self.acks_pending() == 0 => self.write_ack(pid, qos, Ok(())),
            None => self
                .pending_acks
                .get_or_insert_with(Default::default)
                .push_back(Box::pin(async move { (pid, qos, Ok(())) })),
            Some(fut) => self
                .pending_acks
                .get_or_insert_with(Default::default)
                .push_back(Box::pin(async move { (pid, qos, fut.await) })),
        }
    }

    fn acks_pending(&self) -> usize {
        self.pending_acks.as_ref().map_or(0, |a| a.len())
    }

    fn write_ack(&mut self, pid: u16, qos: QoS, result: Result<(), HookRefusal>) {
        if qos == QoS::AtLeastOnce {
            self.unacked_qos1 = self.unacked_qos1.saturating_sub(1);
        }
        let mut r = resp(pid, reason::SUCCESS);
        if let Err(refusal) = result {
            if !self.v5() && refusal.reason_code != reason::NOT_AUTHORIZED {
                // The log refused it (store degraded, full, failing) and 3.1.1 has no way to say "not
                // stored": never acknowledge it; close instead. (A publish the ACL denies is acknowledged
                // positively, as 3.1.1 allows and other brokers do.)
                self.refused_v311.get_or_insert(refusal.reason.into());
                return;
            }
            if self.v5() {
                r.reason_code = refusal.reason_code;
                r.properties.reason_string = Some(refusal.reason);
            }
            if qos == QoS::ExactlyOnce && self.v5() {
                // A failed PUBREC ends the QoS 2 exchange: no PUBREL will follow.
                self.session.state.lock().incoming_qos2.remove(&pid);
            }
        }
        match qos {
            QoS::AtLeastOnce => self.encode(Packet::PubAck(r)),
            QoS::ExactlyOnce => self.encode(Packet::PubRec(r)),
            QoS::AtMostOnce => {}
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let sub_id = s.properties.subscription_identifiers.first().copied();
        if sub_id == Some(0) {
            return Err(Exit::Protocol(
                reason::PROTOCOL_ERROR,
                "subscription identifier 0".into(),
            ));
        }
        let cfg = self.broker.config();
        self.acl.refresh(&cfg, || self.session.who());
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut retained = Vec::new();
        for sub in s.subscriptions {
            let parsed = parse_filter(&sub.filter);
            if !mqtt::valid_topic_filter(&sub.filter) {
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            if !within_topic_limits(&sub.filter, &self.cfg.limits) {
                Metrics::inc(&self.broker.inner.metrics.refused_topic_limits);
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let at_quota = {
                let st = self.session.state.lock();
                st.subscriptions.len() >= self.cfg.limits.max_subscriptions_per_client
                    && !st.subscriptions.contains_key(&sub.filter)
            };
            if at_quota {
                Metrics::inc(&self.broker.inner.metrics.refused_subscriptions);
                if !self.subscription_refusal_logged {
                    self.subscription_refusal_logged = true;
                    tracing::warn!(client_id = %self.session.client_id, max = self.cfg.limits.max_subscriptions_per_client, "subscription refused: max_subscriptions_per_client reached (logged once per client)");
                }
                codes.push(reason::QUOTA_EXCEEDED);
                continue;
            }
            if parsed.group.is_some() && sub.no_local && self.v5() {
                return Err(Exit::Protocol(
                    reason::PROTOCOL_ERROR,
                    "no-local on a shared subscription".into(),
                ));
            }
            // The whole filter must be readable; `$share/<group>/` is judged on the filter behind it.
            if !self.acl.may_subscribe(parsed.filter) {
                codes.push(reason::NOT_AUTHORIZED);
                continue;
            }
            let opts = SubOptions {
                qos: sub.qos,
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                retain_handling: sub.retain_handling,
                id: sub_id,
            };
            let existed = self.broker.inner.router.write().subscribe(
                &self.session,
                &sub.filter,
                opts.clone(),
            );
            {
                let mut st = self.session.state.lock();
                st.subscriptions.insert(sub.filter.clone(), opts);
                st.version += 1;
            }
            codes.push(sub.qos as u8);
            let send = match sub.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            // Retained messages are not sent for shared subscriptions (5.0 §4.8.2).
            if send && parsed.group.is_none() {
                retained.push((parsed.filter.to_string(), sub.qos));
            }
        }
        self.encode(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
        for (filter, qos) in retained {
            self.broker
                .queue_retained(&self.session, &filter, qos, sub_id);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let removed = {
                let mut st = self.session.state.lock();
                st.version += 1;
                st.subscriptions.remove(filter).is_some()
            };
            self.broker
                .inner
                .router
                .write()
                .unsubscribe(self.session.id, filter);
            codes.push(if removed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.encode(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
    }

    /// After (re)attaching: resend unacknowledged messages with DUP, and PUBRELs, in their original order.
    fn resend_inflight(&mut self) {
        let now = Instant::now();
        let inflight: VecDeque<Inflight> = self.session.state.lock().inflight.clone();
        for i in inflight {
            // Sent under another user's rights (a takeover with `client_id_binding: off`) or an older ACL:
            // checked again, and dropped (counted) if this client may not read it.
            if i.stage != Stage::AwaitComp && !self.acl.may_read(&i.out.msg.topic) {
                self.session.state.lock().complete(i.pid, i.stage);
                Metrics::inc(&self.broker.inner.metrics.denied_deliveries);
                continue;
            }
            match i.stage {
                Stage::AwaitComp => self.encode(Packet::PubRel(resp(i.pid, reason::SUCCESS))),
                Stage::AwaitAck | Stage::AwaitRec => {
                    let p = self.build_publish(&i.out, i.pid, true, now, false);
                    mqtt::encode_publish(&p, self.protocol, &mut self.wbuf);
                }
            }
        }
    }

    /// Moves messages from the session queue to the wire, within the client's receive window.
    fn pump(&mut self) {
        self.pump_more = false;
        let now = Instant::now();
        let window = usize::from(self.client_receive_max);
        let mut sent = 0u64;
        let mut freed = false;
        let session = self.session.clone();
        self.acl.refresh_from(
            &self.broker.inner.cfg_generation,
            &self.broker.inner.cfg,
            || session.who(),
        );
        let mut st = session.state.lock();
        if st.generation != self.generation {
            return;
        }
        while let Some(front) = st.queue.front() {
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let out = st.pop_queued().expect("front exists");
            freed = true;
            if out.msg.expired(now) {
                Metrics::inc(&self.broker.inner.metrics.dropped_expired);
                continue;
            }
            // Every delivery (live, retained, shared, queued offline) is checked against the receiver's read
            // rights on the concrete topic, whatever filter brought it here.
            if !self.acl.may_read(&out.msg.topic) {
                Metrics::inc(&self.broker.inner.metrics.denied_deliveries);
                continue;
            }
            let pid = if out.qos == QoS::AtMostOnce {
                0
            } else {
                st.alloc_pid()
            };
            let p = self.build_publish(&out, pid, false, now, false);
            if mqtt::publish_encoded_len(&p, self.protocol) > self.client_max_packet as usize {
                // 5.0 §3.1.2.11.4: discard, as if delivered.
                Metrics::inc(&self.broker.inner.metrics.dropped_too_large);
                continue;
            }
            let p = if self.client_alias_max > 0 {
                self.build_publish(&out, pid, false, now, true)
            } else {
                p
            };
            mqtt::encode_publish(&p, self.protocol, &mut self.wbuf);
            sent += 1;
            if out.qos != QoS::AtMostOnce {
                let stage = if out.qos == QoS::AtLeastOnce {
                    Stage::AwaitAck
                } else {
                    Stage::AwaitRec
                };
                st.inflight.push_back(Inflight { pid, out, stage });
                st.version += 1;
            }
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                self.pump_more = !st.queue.is_empty();
                break;
            }
        }
        drop(st);
        if sent > 0 {
            self.broker
                .inner
                .metrics
                .messages_sent
                .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        }
        if freed {
            self.session.notify_space();
        }
    }

    fn build_publish(
        &mut self,
        out: &Outbound,
        pid: u16,
        dup: bool,
        now: Instant,
        alias: bool,
    ) -> Publish {
        let msg = &out.msg;
        let mut topic = msg.topic.clone();
        let properties = if self.v5() {
            let mut props = msg.properties.clone();
            props.message_expiry_interval = msg.remaining_expiry(now);
            props.subscription_identifiers.clone_from(&out.sub_ids);
            if alias {
                let out = &mut self.aliases.get_or_insert_default().outbound;
                if let Some(a) = out.get(&msg.topic) {
                    props.topic_alias = Some(*a);
                    topic = Arc::from("");
                } else if out.len() < usize::from(self.client_alias_max) {
                    let a = out.len() as u16 + 1;
                    out.insert(msg.topic.clone(), a);
                    props.topic_alias = Some(a);
                }
            }
            props
        } else {
            Properties::default()
        };
        Publish {
            dup,
            qos: out.qos,
            retain: out.retain,
            topic,
            packet_id: pid,
            properties,
            payload: msg.payload.clone(),
        }
    }
}

fn resp(packet_id: u16, reason_code: u8) -> PubResp {
    PubResp {
        packet_id,
        reason_code,
        properties: Properties::default(),
    }
}

async fn wait_admission(
    admitting: &mut Option<Box<Admitting>>,
) -> Result<CommitFuture, HookRefusal> {
    match admitting {
        Some(a) => a.admission.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn next_ack(
    acks: &mut Option<Box<FuturesOrdered<AckFuture>>>,
) -> Option<(u16, QoS, Result<(), HookRefusal>)> {
    match acks {
        Some(a) => a.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the blocking subscriber's queue may have room (its deadline is on the connection's timer).
async fn wait_space(blocked: &mut Option<Box<Blocked>>) {
    match blocked {
        Some(b) => b.space.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Reads what the client sent. On streams that can tell readiness (TCP), the buffer is reserved only once
/// data is there: an idle connection holds no read buffer at all.
async fn read_some<S: Io>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    size: usize,
) -> std::io::Result<usize> {
    if rbuf.is_empty() {
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await;
    }
    if rbuf.capacity() - rbuf.len() < MIN_READ / 2 {
        rbuf.reserve(size);
    }
    stream.read_buf(rbuf).await
}

/// A client's byte stream: TCP, TLS, WebSocket, or an in-memory pipe.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready when a read will likely find data. Streams that cannot tell (TLS, WebSocket: their own
    /// buffers decide) are always ready. A poll function, not a future: the socket keeps the waker in its
    /// own slot, so an idle connection's task holds no waiter node for it.
    fn poll_read_ready(&self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
}

impl Io for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // An error shows up again on the read that follows.
        tokio::net::TcpStream::poll_read_ready(self, cx).map(|_| ())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for tokio_rustls::server::TlsStream<S> {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for crate::net::WsIo<S> {}
impl Io for tokio::io::DuplexStream {}

/// `max_topic_levels` and `max_topic_length` for a topic name or filter (a `$share/{group}/` prefix counts).
fn within_topic_limits(topic: &str, limits: &crate::broker::config::BrokerLimits) -> bool {
    topic.len() <= limits.max_topic_length
        && topic.bytes().filter(|&b| b == b'/').count() < limits.max_topic_levels
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::broker::config::BrokerConfig;

    pub(crate) fn config() -> BrokerConfig {
        BrokerConfig::default()
    }

    /// What an idle connection costs is mostly its task's future and its session: guard both against silent
    /// growth (an inline `Properties`, timer or waiter node adds a hundred bytes or more per connection).
    #[tokio::test]
    async fn an_idle_connection_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_client, (stream, peer)) = (client.unwrap(), accepted.unwrap());
        let broker = Broker::new(config());
        let fut = serve(broker, stream, peer, false, None);
        let future = std::mem::size_of_val(&fut);
        let session = std::mem::size_of::<Session>();
        assert!(future <= 784, "serve future: {future} bytes");
        assert!(session <= 384, "session: {session} bytes");
    }
}
