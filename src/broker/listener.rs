//! Listeners: accept loops that hand each connection to its own task, under a connection limit.
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::broker::config::{ListenerConfig, ListenerKind};

use super::connection;
use super::core::Broker;
use crate::net;

/// A listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding failed (address in use, permission).
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("listener `{name}`: {source}")]
    Tls {
        /// Listener name.
        name: String,
        /// Cause.
        source: crate::net::TransportError,
    },
}

/// How accepted sockets are turned into an MQTT byte stream.
#[derive(Clone)]
enum Accept {
    Tcp,
    Tls(TlsAcceptor),
    Ws(Arc<str>),
    Wss(Arc<str>, TlsAcceptor),
}

/// Bound on the TLS and WebSocket handshakes of one connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listener; [`Broker::serve`] runs it.
#[derive(Debug)]
pub struct Bound {
    name: String,
    /// The listener's own `allow_anonymous` (`None`: the broker's, read at each CONNECT).
    anonymous: Option<bool>,
    listener: TcpListener,
    accept: Accept,
}

impl std::fmt::Debug for Accept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accept::Tcp => "tcp",
            Accept::Tls(_) => "tls",
            Accept::Ws(_) => "ws",
            Accept::Wss(..) => "wss",
        })
    }
}

impl Bound {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }
}

impl Broker {
    /// Binds a listener without serving it yet, so bind errors are reported before anything starts.
    pub async fn bind(&self, cfg: &ListenerConfig) -> Result<Bound, ListenError> {
        let tls = |t| {
            net::tls_acceptor(t).map_err(|source| ListenError::Tls {
                name: cfg.name.clone(),
                source,
            })
        };
        let accept = match &cfg.kind {
            ListenerKind::Tcp => Accept::Tcp,
            ListenerKind::Tls(t) => Accept::Tls(tls(t)?),
            ListenerKind::Ws { path } => Accept::Ws(path.as_str().into()),
            ListenerKind::Wss { path, tls: t } => Accept::Wss(path.as_str().into(), tls(t)?),
        };
        let listener = TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| ListenError::Bind {
                name: cfg.name.clone(),
                addr: cfg.bind,
                source,
            })?;
        Ok(Bound {
            name: cfg.name.clone(),
            anonymous: cfg.allow_anonymous,
            listener,
            accept,
        })
    }

    /// Serves a bound listener until the broker shuts down or `stop` is cancelled. The handle completes when
    /// the listening socket is closed (so its address can be bound again).
    pub fn serve(
        &self,
        bound: Bound,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let broker = self.clone();
        let shutdown = self.inner.shutdown.clone();
        tracing::info!(listener = %bound.name, addr = %bound.local_addr(), kind = ?bound.accept, "MQTT listener started");
        self.inner.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = bound.listener.accept() => r,
                    _ = shutdown.cancelled() => break,
                    _ = stop.cancelled() => break,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        broker.spawn_connection(stream, peer, bound.accept.clone(), bound.anonymous)
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = %bound.name, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
            tracing::info!(listener = %bound.name, "MQTT listener stopped");
        })
    }

    fn spawn_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        accept: Accept,
        anonymous: Option<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        // The slot is given back when the task ends, however it ends (a panicking connection included).
        let (slot, over_limit) = Slot::take(self, self.config().max_connections);
        let broker = self.clone();
        // One task type per transport: a single async block over all of them would size every plain TCP
        // connection's task for the largest arm (TLS + WebSocket handshakes and streams, ~11 KB instead of
        // ~2.6 KB per idle connection).
        match accept {
            Accept::Tcp => {
                self.inner.tasks.spawn(async move {
                    let _slot = slot;
                    connection::serve(broker, stream, peer, over_limit, anonymous).await;
                });
            }
            other => {
                self.inner.tasks.spawn(Box::pin(async move {
                    let _slot = slot;
                    if let Err(e) =
                        serve_wrapped(broker, stream, peer, over_limit, other, anonymous).await
                    {
                        tracing::debug!(%peer, error = %e, "handshake failed");
                    }
                }));
            }
        }
    }

    /// Serves one client over any byte stream (an in-process transport, a test or fuzz harness) exactly as a
    /// TCP connection is served, outside the connection limit.
    pub async fn serve_stream<S: connection::Io>(&self, stream: S) {
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        connection::serve(self.clone(), stream, peer, false, None).await;
    }
}

/// One of `max_connections`, held by a connection's task: an RAII permit, given back on drop.
struct Slot(Broker);

impl Slot {
    /// Takes a slot, and says whether it is beyond `max` (the connection then refuses the CONNECT as busy).
    fn take(broker: &Broker, max: usize) -> (Slot, bool) {
        let open = broker.inner.connections.fetch_add(1, Ordering::Relaxed) + 1;
        (Slot(broker.clone()), open > max)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inner.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// TLS and WebSocket connections: the handshake, then the same connection loop as TCP.
/// The largest WebSocket message a client may send: one packet of `max_packet_size`, plus room for a few
/// small packets a client may put in the same message (a PUBACK or two, a PINGREQ).
fn ws_max(b: &Broker) -> usize {
    b.config().max_packet_size as usize + 4096
}

async fn serve_wrapped(
    b: Broker,
    stream: TcpStream,
    peer: SocketAddr,
    over_limit: bool,
    accept: Accept,
    anonymous: Option<bool>,
) -> Result<(), String> {
    match accept {
        Accept::Tcp => connection::serve(b, stream, peer, over_limit, anonymous).await,
        Accept::Tls(tls) => {
            let s = timeout(HANDSHAKE_TIMEOUT, tls.accept(stream))
                .await
                .map_err(|_| "TLS handshake timed out".to_string())?
                .map_err(|e| e.to_string())?;
            connection::serve(b, s, peer, over_limit, anonymous).await;
        }
        Accept::Ws(path) => {
            let s = timeout(HANDSHAKE_TIMEOUT, net::ws_accept(stream, &path, ws_max(&b)))
                .await
                .map_err(|_| "WebSocket handshake timed out".to_string())?
                .map_err(|e| e.to_string())?;
            connection::serve(b, s, peer, over_limit, anonymous).await;
        }
        Accept::Wss(path, tls) => {
            let s = timeout(HANDSHAKE_TIMEOUT, tls.accept(stream))
                .await
                .map_err(|_| "TLS handshake timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let s = timeout(HANDSHAKE_TIMEOUT, net::ws_accept(s, &path, ws_max(&b)))
                .await
                .map_err(|_| "WebSocket handshake timed out".to_string())?
                .map_err(|e| e.to_string())?;
            connection::serve(b, s, peer, over_limit, anonymous).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::config::BrokerConfig;

    /// The connection limit counts slots, and a connection task that panics still gives its slot back (the
    /// count is an RAII permit, not a decrement at the end of the happy path).
    #[tokio::test]
    async fn a_panicking_connection_frees_its_slot() {
        let broker = Broker::new(BrokerConfig::default());
        let open = || broker.inner.connections.load(Ordering::Relaxed);
        let (calm, over) = Slot::take(&broker, 1);
        assert!(!over);
        let (doomed, over) = Slot::take(&broker, 1);
        assert!(over, "the second slot is beyond a limit of one");
        assert_eq!(open(), 2);
        let task = tokio::spawn(async move {
            let _slot = doomed;
            panic!("a connection task fails");
        });
        let joined = task.await;
        assert!(joined.is_err_and(|e| e.is_panic()));
        assert_eq!(open(), 1, "the panicking task's slot is free again");
        drop(calm);
        assert_eq!(open(), 0);
    }
}
