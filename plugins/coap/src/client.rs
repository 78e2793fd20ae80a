//! A CoAP client endpoint for one server: one UDP socket connected to the server, a dispatcher task that
//! matches incoming messages to exchanges, confirmable requests with RFC 7252 §4.2 retransmission, block-wise
//! GET (RFC 7959 Block2) up to a size bound, and Observe (RFC 7641) registrations.
//!
//! # Exchanges
//!
//! Every request is confirmable and carries a fresh random 8-byte token (so that a spoofed or stale answer
//! cannot be taken for ours, RFC 7252 §5.3.1). It is retransmitted after `ACK_TIMEOUT * rand(1,
//! ACK_RANDOM_FACTOR)`, doubling each time, at most `MAX_RETRANSMIT` times. An empty ACK means the server will
//! answer separately: we then wait up to `separate_timeout` for a response with our token (ACKing it when it is
//! confirmable). A RST ends the exchange.
//!
//! # Incoming messages nobody waits for
//!
//! A confirmable response or notification with an unknown token is answered with RST, which is how an
//! observation we abandoned (a re-registration, a stopped device) is cancelled at the server (RFC 7641 §3.6).
//! Retransmitted confirmable messages (same message id) are ACKed again but delivered once. An ACK or RST must
//! echo the message id of our request (RFC 7252 §4.2, §5.3.2), and a piggybacked response must also carry that
//! request's token: one that does not (an unknown message id, even with one of our tokens) is ignored silently
//! and counted, and the exchange goes on waiting (retransmitting) for a matching answer. Datagrams that do not
//! decode are counted and dropped. The socket is connected, so the kernel drops datagrams from any other
//! address.
//!
//! # Datagram size
//!
//! Datagrams are received up to the UDP maximum ([`wire::MAX_UDP_PAYLOAD`]): a server may ignore Block2 and
//! answer with the whole representation in one datagram. What bounds a representation is `max_body`, checked
//! the same way for one datagram as for a block-wise transfer ([`ClientError::TooLarge`]).
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wire::{self, opt, Block};

/// RFC 7252 §4.8 transmission parameters, and our bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmission {
    /// ACK_TIMEOUT: first retransmission timeout (before randomisation).
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR: the first timeout is `ack_timeout * rand(1, factor)`.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions after the first transmission.
    pub max_retransmit: u32,
    /// How long to wait for a separate response once the server acknowledged the request.
    pub separate_timeout: Duration,
    /// Preferred Block2 size (16 to 1024, a power of two), asked for in the first request.
    pub block_size: u16,
    /// Largest representation accepted, whether it comes in one datagram or block-wise (a transfer stops with
    /// an error past it).
    pub max_body: usize,
}

impl Default for Transmission {
    /// RFC 7252 defaults (2 s, 1.5, 4), 10 s for a separate response, 1024-byte blocks, 64 KiB bodies.
    fn default() -> Self {
        Transmission {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            separate_timeout: Duration::from_secs(10),
            block_size: 1024,
            max_body: 64 * 1024,
        }
    }
}

impl Transmission {
    /// MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2): the longest a request can go unanswered before giving up, plus the
    /// separate-response wait: the bound of one exchange.
    pub fn exchange_bound(&self) -> Duration {
        let spans = (1u64 << (self.max_retransmit.min(20) + 1)) - 1;
        self.ack_timeout
            .mul_f64(spans as f64 * self.ack_random_factor.max(1.0))
            + self.separate_timeout
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No ACK or response to any transmission.
    #[error("no answer after {0} transmissions")]
    Timeout(u32),
    /// The server acknowledged but did not send the response in time.
    #[error("acknowledged, but no response within {0:?}")]
    SeparateTimeout(Duration),
    /// The server answered with RST.
    #[error("the server reset the exchange")]
    Reset,
    /// The host name did not resolve.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    /// Socket trouble.
    #[error("socket: {0}")]
    Io(String),
    /// The representation exceeds `max_body`: `size` bytes (of a block-wise transfer stopped early: at least
    /// that many, `partial`) against the bound `max`.
    #[error(
        "representation of {}{size} bytes is larger than {max} bytes (max_body)",
        if *.partial { "at least " } else { "" }
    )]
    TooLarge {
        /// The representation's size in bytes; with `partial`, the bytes received when the transfer stopped.
        size: usize,
        /// Whether the transfer stopped before the end (the representation is larger still).
        partial: bool,
        /// `max_body`.
        max: usize,
    },
    /// The server broke the block-wise transfer.
    #[error("block-wise transfer: {0}")]
    Block(String),
    /// A request could not be encoded (too long).
    #[error("{0}")]
    Encode(String),
    /// The client was dropped.
    #[error("client stopped")]
    Closed,
}

impl ClientError {
    /// Whether the server did not answer at all (counts towards `offline`).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout(_) | ClientError::SeparateTimeout(_)
        )
    }
}

/// A response, reassembled when block-wise.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The code (2.05, 4.04, …).
    pub code: MessageClass,
    /// Content-Format option.
    pub content_format: Option<u16>,
    /// The representation.
    pub payload: Vec<u8>,
    /// Max-Age option (seconds); RFC 7252 default 60 when absent.
    pub max_age: Option<u32>,
    /// Observe sequence number, in notifications.
    pub observe: Option<u32>,
}

impl Response {
    fn from_packet(p: &Packet) -> Response {
        Response {
            code: p.header.code,
            content_format: wire::uint_option(p, opt::CONTENT_FORMAT).map(|c| c as u16),
            payload: p.payload.clone(),
            max_age: wire::uint_option(p, opt::MAX_AGE),
            observe: wire::uint_option(p, opt::OBSERVE),
        }
    }

    /// 2.xx.
    pub fn is_success(&self) -> bool {
        wire::is_success(self.code)
    }

    /// `4.04 Not Found`, plus the diagnostic payload when the server sent text.
    pub fn describe(&self) -> String {
        let mut s = wire::code_name(self.code);
        if !self.is_success() && !self.payload.is_empty() {
            if let Ok(t) = std::str::from_utf8(&self.payload) {
                let t: String = t.chars().take(200).collect();
                s.push_str(": ");
                s.push_str(t.trim());
            }
        }
        s
    }
}

/// Counters of one client.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Datagrams that did not decode.
    pub malformed: AtomicU64,
    /// Retransmissions of requests.
    pub retransmissions: AtomicU64,
    /// RSTs sent (unknown tokens: abandoned observations, stray messages).
    pub resets_sent: AtomicU64,
    /// Messages dropped because the exchange's queue was full.
    pub dropped: AtomicU64,
    /// ACKs and RSTs ignored: their message id is none we wait an answer for, or (a piggybacked response) their
    /// token is not that of the request with their message id (RFC 7252 §4.2, §5.3.2).
    pub ignored: AtomicU64,
}

#[derive(Debug)]
enum Event {
    Ack,
    Reset,
    Message(Packet),
}

/// How many message ids of received confirmable messages are remembered for duplicate detection.
const RECENT_CON: usize = 64;
/// Queue of one exchange or observation (notifications beyond it are dropped and counted; the next one
/// carries the current state anyway).
const EXCHANGE_QUEUE: usize = 16;

#[derive(Default)]
struct Table {
    next_mid: u16,
    by_token: HashMap<Vec<u8>, mpsc::Sender<Event>>,
    by_mid: HashMap<u16, Vec<u8>>,
    recent_con: VecDeque<u16>,
}

struct Inner {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    tx: Transmission,
    table: Arc<Mutex<Table>>,
    stats: Arc<ClientStats>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A client for one server. Cheap to clone; the socket closes when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.inner.peer)
            .finish_non_exhaustive()
    }
}

/// Removes an exchange's token (and message id) from the table when dropped.
struct Registration {
    table: Arc<Mutex<Table>>,
    token: Vec<u8>,
    mid: u16,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        t.by_token.remove(&self.token);
        if t.by_mid.get(&self.mid) == Some(&self.token) {
            t.by_mid.remove(&self.mid);
        }
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Resolves `authority` (`host:port`) and opens a socket connected to it. Must run inside a tokio runtime.
    pub async fn connect(authority: &str, tx: Transmission) -> Result<Client, ClientError> {
        let peer = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| ClientError::Resolve(authority.to_owned(), e.to_string()))?
            .next()
            .ok_or_else(|| ClientError::Resolve(authority.to_owned(), "no address".into()))?;
        let local: SocketAddr = if peer.is_ipv6() {
            "[::]:0"
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0u16; 8], 0)))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        socket
            .connect(peer)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let socket = Arc::new(socket);
        let table = Arc::new(Mutex::new(Table {
            next_mid: rand::random(),
            ..Table::default()
        }));
        let stats = Arc::new(ClientStats::default());
        let stop = CancellationToken::new();
        tokio::spawn(dispatch(
            socket.clone(),
            table.clone(),
            stats.clone(),
            stop.clone(),
        ));
        Ok(Client {
            inner: Arc::new(Inner {
                socket,
                peer,
                tx,
                table,
                stats,
                stop,
            }),
        })
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The transmission parameters.
    pub fn transmission(&self) -> &Transmission {
        &self.inner.tx
    }

    /// The counters.
    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    /// Sends `req` as a confirmable request and waits for its response (see the module docs). Returns the
    /// response and the registration (kept alive by observers).
    async fn exchange(
        &self,
        mut req: Packet,
    ) -> Result<(Packet, Registration, mpsc::Receiver<Event>), ClientError> {
        let (tx, mut rx) = mpsc::channel(EXCHANGE_QUEUE);
        let token: [u8; 8] = rand::random();
        let reg = {
            let mut t = lock(&self.inner.table);
            let mid = t.next_mid;
            t.next_mid = t.next_mid.wrapping_add(1);
            t.by_token.insert(token.to_vec(), tx);
            t.by_mid.insert(mid, token.to_vec());
            Registration {
                table: self.inner.table.clone(),
                token: token.to_vec(),
                mid,
            }
        };
        req.header.set_version(1);
        req.header.set_type(MessageType::Confirmable);
        req.header.message_id = reg.mid;
        req.set_token(token.to_vec());
        let bytes = wire::encode(&req).map_err(|e| ClientError::Encode(e.to_string()))?;
        let p = &self.inner.tx;
        let factor = p.ack_random_factor.max(1.0);
        let mut wait = p.ack_timeout.mul_f64(rand::random_range(1.0..=factor));
        let transmissions = p.max_retransmit.saturating_add(1);
        let mut acked = false;
        'send: for attempt in 0..transmissions {
            if attempt > 0 {
                self.inner
                    .stats
                    .retransmissions
                    .fetch_add(1, Ordering::Relaxed);
            }
            // A send error (ICMP unreachable from an earlier datagram, a route flap) is a lost transmission.
            let _ = self.inner.socket.send(&bytes).await;
            let deadline = Instant::now() + wait;
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Message(m))) => return Ok((m, reg, rx)),
                Ok(Some(Event::Ack)) => {
                    acked = true;
                    break 'send;
                }
                Ok(Some(Event::Reset)) => return Err(ClientError::Reset),
                Ok(None) => return Err(ClientError::Closed),
                Err(_) => {}
            }
            wait = wait.saturating_mul(2);
        }
        if !acked {
            return Err(ClientError::Timeout(transmissions));
        }
        let deadline = Instant::now() + p.separate_timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Message(m))) => return Ok((m, reg, rx)),
                Ok(Some(Event::Ack)) => continue,
                Ok(Some(Event::Reset)) => return Err(ClientError::Reset),
                Ok(None) => return Err(ClientError::Closed),
                Err(_) => return Err(ClientError::SeparateTimeout(p.separate_timeout)),
            }
        }
    }

    fn block2_request(&self, path: &str, query: Option<&str>, num: u32, szx: u8) -> Packet {
        let mut req = wire::request(RequestType::Get, path, query);
        req.add_option(
            CoapOption::Block2,
            Block {
                num,
                more: false,
                szx,
            }
            .to_bytes(),
        );
        req
    }

    fn preferred_szx(&self) -> u8 {
        Block::szx_for(self.inner.tx.block_size).unwrap_or(6)
    }

    /// GET with block-wise transfer: the whole representation (up to `max_body`), or the error response.
    pub async fn get(&self, path: &str, query: Option<&str>) -> Result<Response, ClientError> {
        let req = self.block2_request(path, query, 0, self.preferred_szx());
        let (first, _reg, _rx) = self.exchange(req).await?;
        self.complete(path, query, &first).await
    }

    /// Fetches the remaining blocks of a response whose Block2 says more follow (RFC 7959 §2.4; for
    /// notifications §3.4: the rest is fetched with plain GETs).
    async fn complete(
        &self,
        path: &str,
        query: Option<&str>,
        first: &Packet,
    ) -> Result<Response, ClientError> {
        let mut resp = Response::from_packet(first);
        let max = self.inner.tx.max_body;
        let too_large = |size: usize, partial: bool| ClientError::TooLarge { size, partial, max };
        let Some(b) = wire::block2(first).filter(|b| b.more) else {
            // The whole representation in one datagram (a server that ignored our Block2, or a small one).
            if resp.payload.len() > max {
                return Err(too_large(resp.payload.len(), false));
            }
            return Ok(resp);
        };
        if !resp.is_success() {
            return Ok(resp);
        }
        if b.num != 0 {
            return Err(ClientError::Block(format!(
                "the first block has number {}",
                b.num
            )));
        }
        let etag = first.get_first_option(CoapOption::ETag).cloned();
        let mut szx = b.szx;
        let mut body = first.payload.clone();
        if body.len() != b.size() {
            return Err(ClientError::Block(format!(
                "block 0 carries {} bytes, announced {}",
                body.len(),
                b.size()
            )));
        }
        loop {
            if body.len() > max {
                return Err(too_large(body.len(), true));
            }
            let size = 1usize << (szx + 4);
            let num = u32::try_from(body.len() / size).map_err(|_| too_large(body.len(), true))?;
            let (p, _reg, _rx) = self
                .exchange(self.block2_request(path, query, num, szx))
                .await?;
            if !wire::is_success(p.header.code) {
                return Ok(Response::from_packet(&p));
            }
            let nb = wire::block2(&p)
                .ok_or_else(|| ClientError::Block(format!("block {num} came without Block2")))?;
            if (nb.num as usize).saturating_mul(nb.size()) != body.len() {
                return Err(ClientError::Block(format!(
                    "asked for the block at byte {}, got block {} of {} bytes",
                    body.len(),
                    nb.num,
                    nb.size()
                )));
            }
            if p.get_first_option(CoapOption::ETag).cloned() != etag {
                return Err(ClientError::Block(
                    "the representation changed during the transfer (ETag)".into(),
                ));
            }
            if nb.more && p.payload.len() != nb.size() {
                return Err(ClientError::Block(format!(
                    "block {} carries {} bytes, announced {}",
                    nb.num,
                    p.payload.len(),
                    nb.size()
                )));
            }
            body.extend_from_slice(&p.payload);
            // The server may lower the block size (§2.4); the next offset stays the byte count.
            szx = nb.szx;
            if !nb.more {
                break;
            }
        }
        if body.len() > max {
            return Err(too_large(body.len(), false));
        }
        resp.payload = body;
        Ok(resp)
    }

    /// A PUT or POST with a payload (one datagram: at most `block_size` bytes).
    pub async fn send(
        &self,
        method: RequestType,
        path: &str,
        query: Option<&str>,
        payload: &[u8],
        content_format: Option<u16>,
    ) -> Result<Response, ClientError> {
        if payload.len() > usize::from(self.inner.tx.block_size) {
            return Err(ClientError::Encode(format!(
                "payload of {} bytes is longer than block_size {}",
                payload.len(),
                self.inner.tx.block_size
            )));
        }
        let mut req = wire::request(method, path, query);
        if let Some(cf) = content_format {
            req.add_option(CoapOption::ContentFormat, wire::uint_bytes(u32::from(cf)));
        }
        req.payload = payload.to_vec();
        let (p, _reg, _rx) = self.exchange(req).await?;
        Ok(Response::from_packet(&p))
    }

    /// Registers an observation. Returns the first response (complete) and, if the server accepted the
    /// registration (the response carries Observe), the observation delivering the following notifications.
    pub async fn observe(
        &self,
        path: &str,
        query: Option<&str>,
    ) -> Result<(Response, Option<Observation>), ClientError> {
        let mut req = self.block2_request(path, query, 0, self.preferred_szx());
        // Observe (6) must precede Block2 (23): coap-lite keeps options sorted by number.
        req.add_option(CoapOption::Observe, Vec::new());
        let (first, reg, rx) = self.exchange(req).await?;
        let seq = wire::uint_option(&first, opt::OBSERVE);
        let resp = self.complete(path, query, &first).await?;
        let obs = match seq {
            Some(seq) if resp.is_success() => Some(Observation {
                client: self.clone(),
                _reg: reg,
                rx,
                path: path.to_owned(),
                query: query.map(str::to_owned),
                last: Some((seq, Instant::now())),
            }),
            _ => None,
        };
        Ok((resp, obs))
    }
}

/// A live observation: the notifications of one resource. Dropping it forgets the token, so the server's next
/// confirmable notification is answered with RST and the server drops us.
pub struct Observation {
    client: Client,
    _reg: Registration,
    rx: mpsc::Receiver<Event>,
    path: String,
    query: Option<String>,
    last: Option<(u32, Instant)>,
}

impl std::fmt::Debug for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observation")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// RFC 7641 §3.4: whether notification `v2` (received at `t2`) is newer than `v1` (received at `t1`).
pub fn is_fresher(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || t2 > t1 + Duration::from_secs(128)
}

impl Observation {
    /// The next notification (complete, block-wise if needed), skipping reordered stale ones. `None` when the
    /// client stopped. A non-2.xx notification ends the observation at the server: the caller re-registers.
    pub async fn next(&mut self) -> Option<Result<Response, ClientError>> {
        loop {
            let p = match self.rx.recv().await? {
                Event::Message(p) => p,
                Event::Ack | Event::Reset => continue,
            };
            let now = Instant::now();
            if let Some(seq) = wire::uint_option(&p, opt::OBSERVE) {
                if let Some((last, at)) = self.last {
                    if !is_fresher(last, at, seq, now) {
                        continue;
                    }
                }
                self.last = Some((seq & 0x00FF_FFFF, now));
            }
            return Some(
                self.client
                    .complete(&self.path, self.query.as_deref(), &p)
                    .await,
            );
        }
    }
}

async fn dispatch(
    socket: Arc<UdpSocket>,
    table: Arc<Mutex<Table>>,
    stats: Arc<ClientStats>,
    stop: CancellationToken,
) {
    // Room for the largest UDP datagram, so that none is truncated: a response longer than MAX_DATAGRAM is
    // legitimate (a server that ignores Block2), and max_body decides about its representation.
    let mut buf = vec![0u8; wire::MAX_UDP_PAYLOAD];
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv(&mut buf) => match r {
                Ok(n) => n,
                // ICMP errors for earlier sends surface here; the exchange's own timeout handles the loss.
                Err(_) => continue,
            },
        };
        let p = match wire::decode_up_to(&buf[..n], wire::MAX_UDP_PAYLOAD) {
            Ok(p) => p,
            Err(_) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let mid = p.header.message_id;
        let mut reply = None;
        {
            let mut t = lock(&table);
            match p.header.get_type() {
                MessageType::Acknowledgement | MessageType::Reset => {
                    let event = match (p.header.get_type(), p.header.code) {
                        (MessageType::Reset, _) => Event::Reset,
                        (_, MessageClass::Empty) => Event::Ack,
                        _ => Event::Message(p.clone()),
                    };
                    // RFC 7252 §4.2, §5.3.2: an ACK or RST answers the message id of our confirmable request,
                    // and a piggybacked response carries that request's token as well. Anything else (an
                    // unknown message id, even with one of our tokens) is rejected by ignoring it silently: the
                    // exchange keeps waiting and retransmitting.
                    let token = t.by_mid.get(&mid).filter(|tok| match event {
                        Event::Message(_) => tok.as_slice() == p.get_token(),
                        Event::Ack | Event::Reset => true,
                    });
                    match token.and_then(|tok| t.by_token.get(tok)) {
                        Some(tx) => {
                            if tx.try_send(event).is_err() {
                                stats.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => {
                            stats.ignored.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                kind @ (MessageType::Confirmable | MessageType::NonConfirmable) => {
                    let is_response = matches!(p.header.code, MessageClass::Response(_));
                    let known = is_response && t.by_token.contains_key(p.get_token());
                    if kind == MessageType::Confirmable {
                        let dup = t.recent_con.contains(&mid);
                        reply = Some(if known {
                            wire::empty(MessageType::Acknowledgement, mid)
                        } else {
                            wire::empty(MessageType::Reset, mid)
                        });
                        if !dup {
                            if t.recent_con.len() == RECENT_CON {
                                t.recent_con.pop_front();
                            }
                            t.recent_con.push_back(mid);
                        }
                        if known && !dup {
                            deliver(&t, &p, &stats);
                        }
                    } else if known {
                        deliver(&t, &p, &stats);
                    } else if is_response {
                        reply = Some(wire::empty(MessageType::Reset, mid));
                    }
                }
            }
        }
        if let Some(r) = reply {
            if r.header.get_type() == MessageType::Reset {
                stats.resets_sent.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(bytes) = wire::encode(&r) {
                let _ = socket.send(&bytes).await;
            }
        }
    }
}

fn deliver(t: &Table, p: &Packet, stats: &ClientStats) {
    if let Some(tx) = t.by_token.get(p.get_token()) {
        if tx.try_send(Event::Message(p.clone())).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness() {
        let t = Instant::now();
        assert!(is_fresher(1, t, 2, t));
        assert!(!is_fresher(2, t, 1, t));
        assert!(is_fresher((1 << 24) - 1, t, 3, t), "wrap-around");
        assert!(
            is_fresher(5, t, 1, t + Duration::from_secs(200)),
            "old enough"
        );
    }

    #[test]
    fn exchange_bound_follows_the_rfc() {
        // MAX_TRANSMIT_WAIT = 2 s * (2^5 - 1) * 1.5 = 93 s, plus the separate-response wait.
        let t = Transmission::default();
        assert_eq!(t.exchange_bound(), Duration::from_secs(93 + 10));
    }
}
