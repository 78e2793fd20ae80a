//! Client transports to the upstream: TCP, TLS (rustls, ring provider, SNI from the URL host, the configured
//! CA or the system roots, optional client certificate) and WebSocket (subprotocol `mqtt`, over TCP or TLS).
//! Everything ends as one boxed byte stream the session reads and writes like TCP.
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::BridgeError;
use crate::bridge::config::{BridgeConfig, BridgeScheme};
use crate::net::{crypto_provider, load_certs, load_key, WsIo};

/// A connected byte stream to the upstream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Builds the TLS client configuration. Done at every connect, not once: a CA or client certificate rotated
/// on disk is picked up by the next reconnect without a reload.
pub(crate) fn tls_config(cfg: &BridgeConfig) -> Result<rustls::ClientConfig, BridgeError> {
    let tls = |m: String| BridgeError::Tls(m);
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(ca) => {
            for c in load_certs(ca).map_err(|e| tls(e.to_string()))? {
                roots
                    .add(c)
                    .map_err(|e| tls(format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(tls(format!(
                    "no system root certificates found (install ca-certificates, or set ca_file){why}"
                )));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &cfg.client_cert {
        Some((cert, key)) => {
            let certs = load_certs(cert).map_err(|e| tls(e.to_string()))?;
            let key = load_key(key).map_err(|e| tls(e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| tls(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The receive low-water mark (`SO_RCVLOWAT`) of the TCP socket under a transport: the kernel wakes a reader
/// only once this many bytes are queued (or the stream ended). Set only when it changes.
pub(crate) struct RecvLowat {
    fd: Option<std::os::fd::RawFd>,
    current: u32,
}

impl RecvLowat {
    /// No socket to tune (TLS, WebSocket, or a test's duplex pipe).
    pub(crate) fn none() -> RecvLowat {
        RecvLowat {
            fd: None,
            current: 1,
        }
    }

    fn of(tcp: &TcpStream) -> RecvLowat {
        use std::os::fd::AsRawFd;
        RecvLowat {
            fd: Some(tcp.as_raw_fd()),
            current: 1,
        }
    }

    /// Wakes the reader only once `bytes` (at least 1) are queued. The caller keeps the transport, and so
    /// the socket, alive for as long as this value.
    pub(crate) fn set(&mut self, bytes: u32) {
        let bytes = bytes.max(1);
        let Some(fd) = self.fd else { return };
        if bytes == self.current {
            return;
        }
        if set_rcvlowat(fd, bytes) {
            self.current = bytes;
        } else {
            // Not supported here: leave it, and do not try again.
            self.fd = None;
        }
    }
}

#[allow(unsafe_code)]
fn set_rcvlowat(fd: std::os::fd::RawFd, bytes: u32) -> bool {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is the open socket of a transport the caller holds; the option value is a c_int read
    // by the kernel during the call, passed with its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Opens the transport for `cfg.url` (without any MQTT), with the low-water mark of its TCP socket.
pub(crate) async fn connect(cfg: &BridgeConfig) -> Result<(Box<dyn Io>, RecvLowat), BridgeError> {
    let url = &cfg.url;
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| BridgeError::Connect(format!("{}:{}: {e}", url.host, url.port)))?;
    // Many small publishes are coalesced by the session itself; Nagle would only add latency to acks.
    let _ = tcp.set_nodelay(true);
    // Only on plain TCP do the socket's bytes map to MQTT packets: TLS and WebSocket layers read ahead into
    // buffers of their own, so bytes the acks outstanding bring could already be out of the socket, and a
    // low-water mark could wait for bytes that never come.
    Ok(match url.scheme {
        BridgeScheme::Mqtt => {
            let lowat = RecvLowat::of(&tcp);
            (Box::new(tcp), lowat)
        }
        BridgeScheme::Mqtts => (Box::new(tls(cfg, tcp).await?), RecvLowat::none()),
        BridgeScheme::Ws => (Box::new(ws(cfg, "ws", tcp).await?), RecvLowat::none()),
        BridgeScheme::Wss => {
            let t = tls(cfg, tcp).await?;
            (Box::new(ws(cfg, "wss", t).await?), RecvLowat::none())
        }
    })
}

async fn tls(
    cfg: &BridgeConfig,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BridgeError> {
    let config = tls_config(cfg)?;
    let name = ServerName::try_from(cfg.url.host.clone()).map_err(|e| {
        BridgeError::Tls(format!(
            "`{}` is not a valid TLS server name: {e}",
            cfg.url.host
        ))
    })?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| BridgeError::Tls(format!("handshake with {}: {e}", cfg.url.host)))
}

async fn ws<S: Io>(
    cfg: &BridgeConfig,
    scheme: &str,
    stream: S,
) -> Result<WsClientIo<S>, BridgeError> {
    let url = &cfg.url;
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let text = format!("{scheme}://{host}:{}{}", url.port, url.path);
    let mut req = text
        .as_str()
        .into_client_request()
        .map_err(|e| BridgeError::WebSocket(format!("{text}: {e}")))?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| BridgeError::WebSocket(format!("{text}: {e}")))?;
    Ok(WsIo::new(ws))
}

/// The MQTT byte stream in WebSocket binary frames: the same adapter the broker's listeners use.
pub(crate) type WsClientIo<S> = WsIo<S>;
