//! The ingest server: a CoAP listener where devices POST or PUT readings to mapped paths.
//!
//! One server per listen address, shared by every device whose `connection.ingest` names that address. It is
//! a resource of the factory's [`SharedPool`](fieldbridge_sdk::SharedPool): bound when the first such device
//! starts, closed when the last one stops, so a reload that keeps the address keeps the socket, and one that
//! changes it moves it. Each running device registers its paths ([`IngestServer::register`]); the guard it
//! keeps removes them when it stops.
//!
//! # Answers
//!
//! - `2.04 Changed`: the payload was decoded for the points mapped to the path and the readings were handed
//!   to the pipeline.
//! - `4.00 Bad Request` (the payload does not decode, or a SenML pack names none of the mapped points),
//!   `4.02 Bad Option` (a critical option we do not understand), `4.04 Not Found` (no point is mapped to the
//!   path), `4.05 Method Not Allowed` (not POST/PUT), `4.13 Request Entity Too Large` (Block1 uploads are not
//!   accepted), `4.15 Unsupported Content-Format`: each with a diagnostic payload (text) saying why.
//! - `5.03 Service Unavailable`: the pipeline did not take the readings within [`PIPELINE_WAIT`]; the device
//!   should retry later. Nothing is dropped silently.
//!
//! # Duplicates and malformed datagrams
//!
//! A confirmable request is retransmitted when our ACK is lost. Requests are remembered by (peer, message id)
//! for `EXCHANGE_LIFETIME` (247 s, RFC 7252 §4.8.2) in a bounded cache ([`DEDUP_CAPACITY`] entries, oldest
//! evicted first): a duplicate gets the cached answer again and produces no reading. Datagrams that are not
//! CoAP (or longer than [`wire::MAX_DATAGRAM`]) are counted and dropped without an answer; ACK and RST
//! messages are ignored; a CoAP ping (empty CON) gets RST.
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use coap_lite::{MessageClass, MessageType, Packet, RequestType, ResponseType};
use fieldbridge_sdk::{DeviceStatus, Quality, Reading, ReadingSink, StatusHandle};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::content::{extract_all, ContentError, Extract};
use crate::wire::{self, opt};

/// EXCHANGE_LIFETIME with the RFC 7252 defaults.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// Requests remembered for duplicate detection.
pub const DEDUP_CAPACITY: usize = 4096;
/// How long a message waits for room in the pipeline before the device is told 5.03.
pub const PIPELINE_WAIT: Duration = Duration::from_secs(1);
/// Longest diagnostic payload.
const MAX_DIAGNOSTIC: usize = 200;

/// Counters of one ingest server.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Requests answered 2.04.
    pub accepted: AtomicU64,
    /// Readings handed to the pipeline.
    pub readings: AtomicU64,
    /// Retransmitted requests answered from the cache.
    pub duplicates: AtomicU64,
    /// Datagrams that were not CoAP (dropped, no answer).
    pub malformed: AtomicU64,
    /// Requests answered with 4.xx or 5.xx.
    pub rejected: AtomicU64,
    /// ACK, RST and responses nobody asked for (ignored).
    pub ignored: AtomicU64,
}

impl IngestStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One ingest point of a device.
#[derive(Debug, Clone)]
pub struct IngestPoint {
    /// Point name.
    pub name: Arc<str>,
    /// What to pick from the payload.
    pub extract: Extract,
}

#[derive(Clone)]
struct Route {
    owner: u64,
    device: Arc<str>,
    sink: ReadingSink,
    status: StatusHandle,
    points: Vec<IngestPoint>,
}

type Routes = Arc<Mutex<HashMap<String, Route>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bound ingest listener.
pub struct IngestServer {
    local: SocketAddr,
    routes: Routes,
    stats: Arc<IngestStats>,
    next_owner: AtomicU64,
}

impl std::fmt::Debug for IngestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestServer")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// Removes a device's paths from the server when dropped.
pub struct RouteGuard {
    routes: Routes,
    owner: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        lock(&self.routes).retain(|_, r| r.owner != self.owner);
    }
}

/// Why a device's paths cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ingest path {path} on {listen} is already mapped by device `{other}`")]
pub struct RouteConflict {
    /// The path.
    pub path: String,
    /// The listener.
    pub listen: SocketAddr,
    /// The device holding it.
    pub other: String,
}

impl IngestServer {
    /// Binds `addr` and starts serving until `stop` is cancelled. Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr, stop: CancellationToken) -> io::Result<IngestServer> {
        let std_socket = std::net::UdpSocket::bind(addr)?;
        std_socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std_socket)?;
        let local = socket.local_addr()?;
        let routes: Routes = Arc::default();
        let stats = Arc::new(IngestStats::default());
        tracing::info!(listen = %local, "CoAP ingest listening");
        tokio::spawn(serve(socket, routes.clone(), stats.clone(), stop));
        Ok(IngestServer {
            local,
            routes,
            stats,
            next_owner: AtomicU64::new(1),
        })
    }

    /// The bound address (the real port when the configuration said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters.
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// Maps `paths` (each with its points) to a device's output. Refused if another running device maps one of
    /// the paths; nothing is registered then.
    pub fn register(
        &self,
        device: Arc<str>,
        sink: ReadingSink,
        status: StatusHandle,
        paths: Vec<(String, Vec<IngestPoint>)>,
    ) -> Result<RouteGuard, RouteConflict> {
        let owner = self.next_owner.fetch_add(1, Ordering::Relaxed);
        let mut routes = lock(&self.routes);
        for (path, _) in &paths {
            if let Some(r) = routes.get(path) {
                return Err(RouteConflict {
                    path: path.clone(),
                    listen: self.local,
                    other: r.device.to_string(),
                });
            }
        }
        for (path, points) in paths {
            routes.insert(
                path,
                Route {
                    owner,
                    device: device.clone(),
                    sink: sink.clone(),
                    status: status.clone(),
                    points,
                },
            );
        }
        Ok(RouteGuard {
            routes: self.routes.clone(),
            owner,
        })
    }
}

/// Answers remembered per (peer, message id), bounded and expiring.
struct DedupCache {
    answers: HashMap<(SocketAddr, u16), Vec<u8>>,
    order: VecDeque<((SocketAddr, u16), Instant)>,
}

impl DedupCache {
    fn new() -> Self {
        DedupCache {
            answers: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            if now.duration_since(*at) < EXCHANGE_LIFETIME && self.order.len() <= DEDUP_CAPACITY {
                break;
            }
            self.answers.remove(key);
            self.order.pop_front();
        }
    }

    fn get(&mut self, key: &(SocketAddr, u16), now: Instant) -> Option<&Vec<u8>> {
        self.expire(now);
        self.answers.get(key)
    }

    fn insert(&mut self, key: (SocketAddr, u16), answer: Vec<u8>, now: Instant) {
        if self.answers.insert(key, answer).is_none() {
            self.order.push_back((key, now));
        }
        self.expire(now);
    }
}

async fn serve(
    socket: UdpSocket,
    routes: Routes,
    stats: Arc<IngestStats>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
    let mut cache = DedupCache::new();
    let mut next_mid: u16 = rand::random();
    loop {
        let (n, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let Ok(p) = wire::decode(&buf[..n]) else {
            IngestStats::bump(&stats.malformed);
            continue;
        };
        let kind = p.header.get_type();
        let answer = match (kind, p.header.code) {
            (MessageType::Confirmable, MessageClass::Empty) => {
                wire::empty(MessageType::Reset, p.header.message_id)
            }
            (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Request(_)) => {
                let key = (peer, p.header.message_id);
                let now = Instant::now();
                if let Some(bytes) = cache.get(&key, now) {
                    IngestStats::bump(&stats.duplicates);
                    let _ = socket.send_to(bytes, peer).await;
                    continue;
                }
                let (code, diag) = handle(&p, &routes, &stats).await;
                if wire::is_success(MessageClass::Response(code)) {
                    IngestStats::bump(&stats.accepted);
                } else {
                    IngestStats::bump(&stats.rejected);
                }
                let mut resp = wire::response_to(&p, code, diag.as_bytes());
                if kind == MessageType::NonConfirmable {
                    resp.header.message_id = next_mid;
                    next_mid = next_mid.wrapping_add(1);
                }
                if let Ok(bytes) = wire::encode(&resp) {
                    let _ = socket.send_to(&bytes, peer).await;
                    cache.insert(key, bytes, now);
                }
                continue;
            }
            (MessageType::Confirmable, MessageClass::Response(_)) => {
                IngestStats::bump(&stats.ignored);
                wire::empty(MessageType::Reset, p.header.message_id)
            }
            _ => {
                IngestStats::bump(&stats.ignored);
                continue;
            }
        };
        if let Ok(bytes) = wire::encode(&answer) {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
    tracing::info!(listen = ?socket.local_addr().ok(), "CoAP ingest stopped");
}

/// Options a request may carry here; any other critical option is refused (RFC 7252 §5.4.1).
const UNDERSTOOD: &[u16] = &[
    opt::IF_MATCH,
    opt::URI_HOST,
    opt::IF_NONE_MATCH,
    opt::URI_PORT,
    opt::URI_PATH,
    opt::URI_QUERY,
    opt::BLOCK2,
];

fn short(mut s: String) -> String {
    if s.len() > MAX_DIAGNOSTIC {
        let mut end = MAX_DIAGNOSTIC;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The checks a request passes before its path is looked up: method, Block1, critical options. Returns the
/// path, or the answer. Pure (fuzzed with the datagram decoder).
pub fn check_request(p: &Packet) -> Result<String, (ResponseType, String)> {
    let MessageClass::Request(method) = p.header.code else {
        return Err((ResponseType::BadRequest, "not a request".into()));
    };
    if !matches!(method, RequestType::Post | RequestType::Put) {
        return Err((
            ResponseType::MethodNotAllowed,
            format!("{method:?} not allowed: devices POST or PUT readings here"),
        ));
    }
    if p.get_first_option(coap_lite::CoapOption::Block1).is_some() {
        return Err((
            ResponseType::RequestEntityTooLarge,
            "block-wise uploads are not accepted: send the reading in one datagram".into(),
        ));
    }
    for (&number, _) in p.options() {
        if wire::is_critical(number) && !UNDERSTOOD.contains(&number) {
            return Err((
                ResponseType::BadOption,
                format!("critical option {number} not understood"),
            ));
        }
    }
    Ok(wire::uri_path(p))
}

async fn handle(p: &Packet, routes: &Routes, stats: &IngestStats) -> (ResponseType, String) {
    let path = match check_request(p) {
        Ok(path) => path,
        Err(answer) => return answer,
    };
    let Some(route) = lock(routes).get(&path).cloned() else {
        return (
            ResponseType::NotFound,
            short(format!("no point is mapped to {path}")),
        );
    };
    let cf = wire::uint_option(p, opt::CONTENT_FORMAT).map(|c| c as u16);
    let specs: Vec<&Extract> = route.points.iter().map(|p| &p.extract).collect();
    let results = extract_all(&p.payload, cf, &specs);
    let mut readings = Vec::with_capacity(results.len());
    let now = SystemTime::now();
    for (point, r) in route.points.iter().zip(results) {
        match r {
            Ok(Some(d)) => readings.push(Reading {
                device: route.device.clone(),
                point: point.name.clone(),
                value: d.value,
                quality: Quality::Good,
                ts: d.ts.unwrap_or(now),
            }),
            Ok(None) => {}
            Err(e @ (ContentError::UnsupportedFormat(_) | ContentError::WrongFormat { .. })) => {
                return (
                    ResponseType::UnsupportedContentFormat,
                    short(format!("point `{}`: {e}", point.name)),
                );
            }
            Err(e) => {
                return (
                    ResponseType::BadRequest,
                    short(format!("point `{}`: {e}", point.name)),
                )
            }
        }
    }
    if readings.is_empty() {
        let names: Vec<&str> = route
            .points
            .iter()
            .map(|p| p.extract.senml_name.as_str())
            .collect();
        return (
            ResponseType::BadRequest,
            short(format!(
                "no SenML record names a point mapped to {path} (expected {})",
                names.join(", ")
            )),
        );
    }
    let n = readings.len() as u64;
    for r in readings {
        match tokio::time::timeout(PIPELINE_WAIT, route.sink.send(r)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                return (
                    ResponseType::ServiceUnavailable,
                    "gateway busy: retry later".into(),
                )
            }
        }
    }
    stats.readings.fetch_add(n, Ordering::Relaxed);
    if route.status.get() != DeviceStatus::Online {
        tracing::info!(device = %route.device, "device online (ingest)");
        route.status.set(DeviceStatus::Online);
    }
    (ResponseType::Changed, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_cache_is_bounded() {
        let mut c = DedupCache::new();
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for mid in 0..(DEDUP_CAPACITY as u16 + 10) {
            c.insert((peer, mid), vec![1], now);
        }
        assert_eq!(c.answers.len(), DEDUP_CAPACITY);
        assert!(c.get(&(peer, 0), now).is_none(), "oldest evicted");
        assert!(c.get(&(peer, 20), now).is_some());
        assert!(
            c.get(&(peer, 20), now + EXCHANGE_LIFETIME).is_none(),
            "expired"
        );
    }
}
