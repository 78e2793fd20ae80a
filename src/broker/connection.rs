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
use tokio_util::sync::CancellationToken;

use super::auth::{self, Action};
use super::codec::{
    self, reason, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Protocol, PubResp,
    Publish, QoS, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use super::core::{
    outbound_for, AdmissionFuture, Broker, CommitFuture, HookRefusal, Metrics, EXPIRY_NEVER,
};
use super::message::Message;
use super::router::{parse_filter, SubOptions, Target};
use super::session::{Inflight, Outbound, Session, Stage};

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
}

/// A publish waiting for room in a subscriber's queue.
struct Blocked {
    msg: Arc<Message>,
    session: Arc<Session>,
    out: Outbound,
    space: Pin<Box<OwnedNotified>>,
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

/// Serves one accepted connection until it ends. `over_limit` makes it refuse the CONNECT with "server busy".
pub(crate) async fn serve<S>(broker: Broker, mut stream: S, peer: SocketAddr, over_limit: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let cfg = broker.config();
    let mut rbuf = BytesMut::with_capacity(MIN_READ);
    let connect = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut stream, &mut rbuf, cfg.max_packet_size, &broker)) => r,
        _ = broker.inner.shutdown.cancelled() => return,
    };
    let connect = match connect {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
        Ok(Err(e)) => {
            Metrics::inc(&broker.inner.metrics.protocol_errors);
            tracing::debug!(%peer, error = %e.message, "bad CONNECT");
            // Answer a broken CONNECT with a CONNACK in the client's own version where the spec allows it: v5
            // takes any reason code; 3.1.1 only has codes for the version and the client id.
            let proto = codec::peek_connect_protocol(&rbuf);
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
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(c))) => c,
    };
    let protocol = connect.protocol;
    let mut out = BytesMut::new();
    if over_limit {
        Metrics::inc(&broker.inner.metrics.connections_refused);
        refuse(&mut out, protocol, reason::SERVER_BUSY);
        let _ = stream.write_all(&out).await;
        return;
    }
    let accepted = match accept(&broker, connect, &mut out) {
        Ok(a) => a,
        Err(code) => {
            Metrics::inc(&broker.inner.metrics.connections_refused);
            tracing::debug!(%peer, code, "CONNECT refused");
            refuse(&mut out, protocol, code);
            let _ = stream.write_all(&out).await;
            return;
        }
    };
    Metrics::inc(&broker.inner.metrics.clients_connected);
    let mut conn = Conn {
        broker: broker.clone(),
        stream,
        rbuf,
        read_size: MIN_READ,
        wbuf: out,
        protocol,
        session: accepted.session,
        generation: accepted.generation,
        username: accepted.username,
        keepalive: accepted.keepalive,
        client_receive_max: accepted.client_receive_max,
        client_max_packet: accepted.client_max_packet,
        client_alias_max: accepted.client_alias_max,
        out_aliases: HashMap::new(),
        in_aliases: HashMap::new(),
        pending_acks: FuturesOrdered::new(),
        blocked: None,
        admitting: None,
        last_packet: Instant::now(),
        pump_more: false,
        process_more: false,
        refused_v311: None,
        connect_expiry_zero: accepted.connect_expiry_zero,
        max_packet_size: cfg.max_packet_size,
        receive_maximum: cfg.receive_maximum,
        topic_alias_maximum: cfg.topic_alias_maximum,
    };
    tracing::debug!(%peer, client_id = %conn.session.client_id, ?protocol, "client connected");
    conn.resend_inflight();
    conn.pump();
    let exit = conn.run(accepted.token).await;
    tracing::debug!(%peer, client_id = %conn.session.client_id, ?exit, "client disconnected");
    let clean = matches!(exit, Exit::Clean);
    let code = match &exit {
        Exit::Protocol(code, _) => Some(*code),
        Exit::Takeover => Some(reason::SESSION_TAKEN_OVER),
        Exit::Shutdown => Some(0x8B),
        Exit::KeepaliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
        _ => None,
    };
    if let Exit::Protocol(_, why) = &exit {
        Metrics::inc(&broker.inner.metrics.protocol_errors);
        tracing::debug!(client_id = %conn.session.client_id, why, "protocol error");
    }
    if let (Some(code), Protocol::V5) = (code, protocol) {
        conn.wbuf.clear();
        codec::encode(
            &Packet::Disconnect(Disconnect {
                reason_code: code,
                properties: Properties::default(),
            }),
            protocol,
            &mut conn.wbuf,
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), conn.stream.write_all(&conn.wbuf)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.stream.shutdown()).await;
    broker
        .inner
        .metrics
        .clients_connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let will = conn.session.state.lock().will.take();
    broker.detach(&conn.session, conn.generation, clean, will);
}

async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet_size: u32,
    broker: &Broker,
) -> Result<Option<Connect>, DecodeError> {
    loop {
        match codec::decode(rbuf, None, max_packet_size)? {
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
    codec::encode(
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
    token: CancellationToken,
    username: Option<String>,
    keepalive: Option<Duration>,
    client_receive_max: u16,
    client_max_packet: u32,
    client_alias_max: u16,
    connect_expiry_zero: bool,
}

/// Validates the CONNECT, attaches the session and writes the CONNACK into `out`.
fn accept(broker: &Broker, connect: Connect, out: &mut BytesMut) -> Result<Accepted, u8> {
    let cfg = broker.config();
    let v5 = connect.protocol == Protocol::V5;
    if connect.properties.authentication_method.is_some() {
        return Err(reason::BAD_AUTHENTICATION_METHOD);
    }
    auth::authenticate(
        &cfg.users,
        cfg.allow_anonymous,
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
        if !codec::valid_topic_name(&will.topic) {
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

    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if let Some(max) = cfg.max_keepalive {
        if keep_alive == 0 || keep_alive > max {
            keep_alive = max;
            server_keep_alive = Some(max);
        }
    }
    let (session, present, token, generation) =
        broker.attach(&client_id, connect.clean_start, connect.protocol);
    {
        let mut st = session.state.lock();
        st.expiry_secs = expiry;
        st.will = connect.will;
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
    codec::encode(
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
        token,
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
    broker: Broker,
    stream: S,
    rbuf: BytesMut,
    read_size: usize,
    wbuf: BytesMut,
    protocol: Protocol,
    session: Arc<Session>,
    generation: u64,
    username: Option<String>,
    keepalive: Option<Duration>,
    client_receive_max: u16,
    client_max_packet: u32,
    client_alias_max: u16,
    out_aliases: HashMap<Arc<str>, u16>,
    in_aliases: HashMap<u16, Arc<str>>,
    pending_acks: FuturesOrdered<AckFuture>,
    blocked: Option<Blocked>,
    admitting: Option<Admitting>,
    last_packet: Instant,
    pump_more: bool,
    process_more: bool,
    /// MQTT 3.1.1 has no negative PUBACK: a publish the log refused closes the connection instead of being
    /// acknowledged (the client then resends it on its next connection).
    refused_v311: Option<String>,
    connect_expiry_zero: bool,
    max_packet_size: u32,
    receive_maximum: u16,
    topic_alias_maximum: u16,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    async fn run(&mut self, takeover: CancellationToken) -> Exit {
        let shutdown = self.broker.inner.shutdown.clone();
        let far = Duration::from_secs(86400 * 365);
        let keepalive = self.keepalive;
        let ka_sleep = tokio::time::sleep(keepalive.unwrap_or(far));
        tokio::pin!(ka_sleep);
        loop {
            if !self.wbuf.is_empty() {
                if let Err(exit) = self.flush().await {
                    return exit;
                }
            }
            if let Some(why) = self.refused_v311.take() {
                return Exit::Protocol(reason::UNSPECIFIED_ERROR, why);
            }
            if self.process_more && self.blocked.is_none() && self.admitting.is_none() {
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
            let reading = self.blocked.is_none() && self.admitting.is_none();
            if reading && self.rbuf.capacity() - self.rbuf.len() < MIN_READ / 2 {
                self.rbuf.reserve(self.read_size);
            }
            tokio::select! {
                biased;
                _ = takeover.cancelled() => return Exit::Takeover,
                _ = shutdown.cancelled() => return Exit::Shutdown,
                Some((pid, qos, result)) = self.pending_acks.next(), if !self.pending_acks.is_empty() => {
                    self.write_ack(pid, qos, result);
                }
                _ = wait_space(&mut self.blocked), if self.blocked.is_some() => {
                    self.unblock();
                    self.process_more = self.blocked.is_none();
                }
                r = wait_admission(&mut self.admitting), if self.admitting.is_some() => {
                    let a = self.admitting.take().expect("guarded");
                    self.admitted(a.msg, a.pid, a.qos, r.map(Some));
                    self.process_more = self.blocked.is_none();
                }
                r = self.stream.read_buf(&mut self.rbuf), if reading => {
                    match r {
                        Ok(0) | Err(_) => return Exit::Io,
                        Ok(n) => {
                            self.broker.inner.metrics.bytes_received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            self.last_packet = Instant::now();
                            if self.rbuf.capacity() == self.rbuf.len() {
                                self.read_size = (self.read_size * 2).min(MAX_READ);
                            }
                            if let Err(exit) = self.process_buffered() {
                                return exit;
                            }
                            if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * MIN_READ && self.blocked.is_none() {
                                // Give the memory back: idle connections should cost next to nothing.
                                self.rbuf = BytesMut::new();
                                self.read_size = MIN_READ;
                            }
                        }
                    }
                }
                _ = self.session.wake.notified() => self.pump(),
                _ = &mut ka_sleep => {
                    let ka = keepalive.unwrap_or(far);
                    let deadline = self.last_packet + ka;
                    if Instant::now() >= deadline {
                        return Exit::KeepaliveTimeout;
                    }
                    ka_sleep.as_mut().reset(tokio::time::Instant::from_std(deadline));
                }
            }
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
        codec::encode(&packet, self.protocol, &mut self.wbuf);
    }

    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    /// Decodes and handles every complete packet in the read buffer, stopping early when a publish blocks.
    fn process_buffered(&mut self) -> Result<(), Exit> {
        while self.blocked.is_none() {
            let packet =
                match codec::decode(&mut self.rbuf, Some(self.protocol), self.max_packet_size) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => return Err(Exit::Protocol(e.reason_code, e.message)),
                };
            self.handle(packet)?;
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                // Let the loop flush before decoding on: bounded memory for pipelined clients.
                self.process_more = true;
                return Ok(());
            }
        }
        self.pump();
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
            self.session.state.lock().expiry_secs = expiry;
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
                if alias == 0 || alias > self.topic_alias_maximum {
                    return Err(Exit::Protocol(
                        reason::TOPIC_ALIAS_INVALID,
                        format!("topic alias {alias} out of range"),
                    ));
                }
                if p.topic.is_empty() {
                    match self.in_aliases.get(&alias) {
                        Some(t) => t.clone(),
                        None => {
                            return Err(Exit::Protocol(
                                reason::PROTOCOL_ERROR,
                                format!("unknown topic alias {alias}"),
                            ))
                        }
                    }
                } else {
                    self.in_aliases.insert(alias, p.topic.clone());
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
        let cfg = self.broker.config();
        let pid = p.packet_id;
        let qos = p.qos;
        if !auth::authorize(
            &cfg.acl,
            self.username.as_deref(),
            &self.session.client_id,
            Action::Publish,
            &topic,
        ) {
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
        if qos == QoS::ExactlyOnce && self.session.state.lock().incoming_qos2.contains(&pid) {
            // A retransmission of a QoS 2 publish we already have: acknowledge, do not deliver twice.
            self.encode(Packet::PubRec(resp(pid, reason::SUCCESS)));
            return Ok(());
        }
        if qos != QoS::AtMostOnce && self.pending_acks.len() >= usize::from(self.receive_maximum) {
            return Err(Exit::Protocol(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "receive maximum exceeded".into(),
            ));
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
                        self.admitting = Some(Admitting {
                            admission,
                            msg,
                            pid,
                            qos,
                        })
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
        let targets = self.broker.targets(&msg);
        self.deliver_all(msg, targets.into_iter(), ack);
    }

    /// Delivers to each target until one is full; then parks the rest in `blocked`.
    fn deliver_all(
        &mut self,
        msg: Arc<Message>,
        mut rest: std::vec::IntoIter<Target>,
        ack: Option<AckPlan>,
    ) {
        while let Some(target) = rest.next() {
            let (session, out) = outbound_for(target, &msg);
            // Fast path without registering for a wake-up; only a full queue pays for the notification.
            let Some(out) = self.broker.try_deliver(&session, out) else {
                continue;
            };
            let mut space = Box::pin(session.space.clone().notified_owned());
            space.as_mut().enable();
            // Offer again now that a wake-up cannot be missed.
            if let Some(out) = self.broker.try_deliver(&session, out) {
                self.blocked = Some(Blocked {
                    msg,
                    session,
                    out,
                    space,
                    rest,
                    ack,
                });
                return;
            }
        }
        if let Some(ack) = ack {
            self.queue_ack(ack);
        }
    }

    fn unblock(&mut self) {
        let Some(b) = self.blocked.take() else {
            return;
        };
        let mut space = Box::pin(b.session.space.clone().notified_owned());
        space.as_mut().enable();
        match self.broker.try_deliver(&b.session, b.out) {
            Some(out) => {
                self.blocked = Some(Blocked { out, space, ..b });
            }
            None => self.deliver_all(b.msg, b.rest, b.ack),
        }
    }

    fn queue_ack(&mut self, ack: AckPlan) {
        let AckPlan { pid, qos, hook } = ack;
        match hook {
            None if self.pending_acks.is_empty() => self.write_ack(pid, qos, Ok(())),
            None => self
                .pending_acks
                .push_back(Box::pin(async move { (pid, qos, Ok(())) })),
            Some(fut) => self
                .pending_acks
                .push_back(Box::pin(async move { (pid, qos, fut.await) })),
        }
    }

    fn write_ack(&mut self, pid: u16, qos: QoS, result: Result<(), HookRefusal>) {
        let mut r = resp(pid, reason::SUCCESS);
        if let Err(refusal) = result {
            if !self.v5() && refusal.reason_code != reason::NOT_AUTHORIZED {
                // The log refused it (store degraded, full, failing) and 3.1.1 has no way to say "not
                // stored": never acknowledge it; close instead. (A publish the ACL denies is acknowledged
                // positively, as 3.1.1 allows and other brokers do.)
                self.refused_v311.get_or_insert(refusal.reason);
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
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut retained = Vec::new();
        for sub in s.subscriptions {
            let parsed = parse_filter(&sub.filter);
            if !codec::valid_topic_filter(&sub.filter) {
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            if parsed.group.is_some() && sub.no_local && self.v5() {
                return Err(Exit::Protocol(
                    reason::PROTOCOL_ERROR,
                    "no-local on a shared subscription".into(),
                ));
            }
            if !auth::authorize(
                &cfg.acl,
                self.username.as_deref(),
                &self.session.client_id,
                Action::Subscribe,
                parsed.filter,
            ) {
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
            self.session
                .state
                .lock()
                .subscriptions
                .insert(sub.filter.clone(), opts);
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
            let removed = self
                .session
                .state
                .lock()
                .subscriptions
                .remove(filter)
                .is_some();
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
            match i.stage {
                Stage::AwaitComp => self.encode(Packet::PubRel(resp(i.pid, reason::SUCCESS))),
                Stage::AwaitAck | Stage::AwaitRec => {
                    let p = self.build_publish(&i.out, i.pid, true, now, false);
                    codec::encode_publish(&p, self.protocol, &mut self.wbuf);
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
        let mut st = session.state.lock();
        if st.generation != self.generation {
            return;
        }
        while let Some(front) = st.queue.front() {
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let out = st.queue.pop_front().expect("front exists");
            freed = true;
            if out.msg.expired(now) {
                Metrics::inc(&self.broker.inner.metrics.dropped_expired);
                continue;
            }
            let pid = if out.qos == QoS::AtMostOnce {
                0
            } else {
                st.alloc_pid()
            };
            let p = self.build_publish(&out, pid, false, now, false);
            if codec::publish_encoded_len(&p, self.protocol) > self.client_max_packet as usize {
                // 5.0 §3.1.2.11.4: discard, as if delivered.
                Metrics::inc(&self.broker.inner.metrics.dropped_too_large);
                continue;
            }
            let p = if self.client_alias_max > 0 {
                self.build_publish(&out, pid, false, now, true)
            } else {
                p
            };
            codec::encode_publish(&p, self.protocol, &mut self.wbuf);
            sent += 1;
            if out.qos != QoS::AtMostOnce {
                let stage = if out.qos == QoS::AtLeastOnce {
                    Stage::AwaitAck
                } else {
                    Stage::AwaitRec
                };
                st.inflight.push_back(Inflight { pid, out, stage });
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
            self.session.space.notify_waiters();
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
                if let Some(a) = self.out_aliases.get(&msg.topic) {
                    props.topic_alias = Some(*a);
                    topic = Arc::from("");
                } else if self.out_aliases.len() < usize::from(self.client_alias_max) {
                    let a = self.out_aliases.len() as u16 + 1;
                    self.out_aliases.insert(msg.topic.clone(), a);
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

async fn wait_admission(admitting: &mut Option<Admitting>) -> Result<CommitFuture, HookRefusal> {
    match admitting {
        Some(a) => a.admission.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn wait_space(blocked: &mut Option<Blocked>) {
    match blocked {
        Some(b) => b.space.as_mut().await,
        None => std::future::pending().await,
    }
}
