//! Helpers shared by the integration tests: an in-process broker on a free loopback port, a raw MQTT client on
//! the project's own codec (for flows the CLI clients cannot express), and peer-process helpers.
#![allow(dead_code)]

pub mod client;
pub mod daemon;
pub mod peers;
pub mod proxy;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use fieldbridge::broker::Broker;
use fieldbridge::config::{BrokerConfig, ListenerConfig, ListenerKind};
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker config for tests: one TCP listener on a free loopback port.
pub fn broker_config() -> BrokerConfig {
    BrokerConfig {
        listeners: vec![ListenerConfig {
            name: "test".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            kind: ListenerKind::Tcp,
            allow_anonymous: None,
        }],
        max_connections: 10_000,
        max_packet_size: 1024 * 1024,
        receive_maximum: 100,
        max_queued_messages: 1000,
        max_session_expiry: Duration::from_secs(7 * 86400),
        topic_alias_maximum: 16,
        max_keepalive: None,
        allow_anonymous: true,
        users: vec![],
        acl: vec![],
        client_id_binding: Default::default(),
        sys_interval: Duration::ZERO,
        limits: Default::default(),
    }
}

/// A broker serving on a loopback port, stopped when dropped.
pub struct TestBroker {
    pub broker: Broker,
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in configuration order.
    pub addrs: Vec<SocketAddr>,
    stop: CancellationToken,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let mut cfg = broker_config();
        f(&mut cfg);
        let listeners = cfg.listeners.clone();
        let broker = Broker::new(cfg);
        let stop = CancellationToken::new();
        let mut addrs = Vec::new();
        for l in &listeners {
            let bound = broker.bind(l).await.expect("bind loopback");
            addrs.push(bound.local_addr());
            broker.serve(bound, stop.clone());
        }
        TestBroker {
            broker,
            addr: addrs[0],
            addrs,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop.cancel();
        self.broker.shutdown_token().cancel();
    }
}

/// Waits until `cond` holds, checking every few milliseconds; fails the test after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let step = Duration::from_millis(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(step).await;
    }
}

/// Awaits `fut`, failing the test after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A free loopback port below Linux's ephemeral range (32768–60999), so that no socket bound to port 0 by a
/// test running in parallel (a broker, a client) can take it between this check and the daemon's bind. Ports
/// are handed out in turn within the process; each is checked free (TCP and UDP) before it is returned.
pub fn free_low_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 97) % 10_000;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (base - 20_000 + n) % 12_000) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if tcp && udp {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000")
}

/// Polls `f` until it returns `Some`, failing the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(WAIT, what, || {
        let fut = f();
        async move { fut.await.ok_or_else(String::new) }
    })
    .await
}

/// Polls `f` until it returns `Ok`, failing the test after `limit` with the last `Err` (what was seen). The
/// one place the integration tests poll a condition they cannot be notified of (a status, a port, a file).
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what} {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
