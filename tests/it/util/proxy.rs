//! A TCP proxy between the gateway and its upstream that simulates a flaky 4G uplink on command:
//! pass bytes, stall (blackhole: stop forwarding both ways without closing anything), cut (close every live
//! connection, both sides), or go down (cut, and close new connections at once).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Forward nothing, close nothing: the peers see silence (their kernel buffers fill up).
    Stall,
    /// Close live connections and accept-then-close new ones (the link is down).
    Down,
}

struct Ctl {
    mode: watch::Sender<Mode>,
    cut: watch::Sender<u64>,
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    target: parking_lot::Mutex<SocketAddr>,
}

/// The proxy; its accept loop stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    ctl: Arc<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.ctl.cut.send_modify(|g| *g += 1);
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let ctl = Arc::new(Ctl {
            mode: watch::channel(Mode::Pass).0,
            cut: watch::channel(0).0,
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            target: parking_lot::Mutex::new(target),
        });
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.accepted.fetch_add(1, Ordering::Relaxed);
                if *c.mode.borrow() == Mode::Down {
                    drop(client);
                    continue;
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let target = *c.target.lock();
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pump(cr, sw, c.clone(), true));
                    let down = tokio::spawn(pump(sr, cw, c.clone(), false));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Proxy { addr, ctl, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_mode(&self, m: Mode) {
        if m == Mode::Down {
            self.cut();
        }
        self.ctl.mode.send_replace(m);
    }

    /// Closes every live connection (both sides); new connections are served per the mode.
    pub fn cut(&self) {
        self.ctl.cut.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded from the gateway to the upstream.
    pub fn bytes_up(&self) -> u64 {
        self.ctl.bytes_up.load(Ordering::Relaxed)
    }

    pub fn set_target(&self, addr: SocketAddr) {
        *self.ctl.target.lock() = addr;
    }
}

/// Waits until the mode is `Pass`; false if the connection must close (cut, or the link went down).
async fn wait_pass(mode: &mut watch::Receiver<Mode>, cut: &mut watch::Receiver<u64>) -> bool {
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Pass => return true,
            Mode::Down => return false,
            Mode::Stall => {
                tokio::select! {
                    r = mode.changed() => if r.is_err() { return false },
                    _ = cut.changed() => return false,
                }
            }
        }
    }
}

async fn pump(mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf, ctl: Arc<Ctl>, upward: bool) {
    let mut mode = ctl.mode.subscribe();
    let mut cut = ctl.cut.subscribe();
    cut.borrow_and_update();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !wait_pass(&mut mode, &mut cut).await {
            return;
        }
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = wr.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
            _ = cut.changed() => return,
        };
        // Bytes read while the link stalls are held, not forwarded, until it passes again.
        if !wait_pass(&mut mode, &mut cut).await {
            return;
        }
        tokio::select! {
            r = wr.write_all(&buf[..n]) => if r.is_err() { return },
            _ = cut.changed() => return,
        }
        if upward {
            ctl.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}
