//! A minimal HTTP/1.1 client for the daemon's API (hyper's connection API: one connection per request, no
//! pool). When the API serves TLS (`api.tls`), the client pins the certificate the configuration names: the
//! CLI runs next to the daemon and reads the same file, so it trusts exactly that certificate, whatever its
//! issuer and names. Its errors are written for the operator at the terminal: the first thing they need to
//! know is whether the daemon is running at all.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    DigitallySignedStruct, SignatureScheme,
};

use crate::api::ErrorDoc;

/// Largest answer read: a history query at its row cap is a few tens of megabytes.
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address (the daemon is not running, or the API is elsewhere or disabled).
    #[error("cannot reach fieldbridge at {addr}: {reason} — is it running? is `api.bind` set?")]
    Unreachable {
        /// Where we looked.
        addr: SocketAddr,
        /// `connection refused`, `timed out`, …
        reason: String,
    },
    /// The daemon accepted the connection but did not answer in time.
    #[error("fieldbridge at {addr} did not answer within {} s", .timeout.as_secs())]
    Timeout {
        /// Where we asked.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
    /// The HTTP exchange failed (connection reset, malformed answer).
    #[error("talking to fieldbridge at {addr}: {detail}")]
    Http {
        /// Where we asked.
        addr: SocketAddr,
        /// What went wrong.
        detail: String,
    },
    /// The answer is not what a fieldbridge API sends (something else listens on that port?).
    #[error(
        "unexpected answer from {addr} (HTTP {status}): {detail} — is that fieldbridge's API?"
    )]
    BadAnswer {
        /// Where we asked.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// What could not be understood.
        detail: String,
    },
    /// The API refused the request (a bad parameter, an invalid configuration…).
    #[error("{}", .doc.error)]
    Api {
        /// The HTTP status (400, 422, …).
        status: u16,
        /// The API's explanation.
        doc: ErrorDoc,
    },
}

/// The daemon's API at one address.
#[derive(Debug, Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    timeout: Duration,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ApiClient {
    /// A client for the API at `addr`; every request (connect included) must complete within `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> ApiClient {
        ApiClient {
            addr,
            timeout,
            token: None,
            tls: None,
        }
    }

    /// The same client, speaking TLS with `config` (see [`pinned_tls`]).
    pub fn with_tls(mut self, config: Option<Arc<rustls::ClientConfig>>) -> ApiClient {
        self.tls = config;
        self
    }

    /// The same client, sending `token` as `Authorization: Bearer`.
    pub fn with_token(mut self, token: Option<String>) -> ApiClient {
        self.token = token;
        self
    }

    /// The address asked.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request; returns the status and the body, whatever the status.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.request_with_body(method, path_and_query, Bytes::new())
            .await
    }

    /// Sends one request with a body; returns the status and the body, whatever the status.
    pub async fn request_with_body(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let addr = self.addr;
        let exchange = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| ClientError::Unreachable {
                    addr,
                    reason: io_reason(&e),
                })?;
            match &self.tls {
                None => self.exchange(stream, method, path_and_query, body).await,
                Some(config) => {
                    let name = ServerName::IpAddress(addr.ip().into());
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, stream)
                        .await
                        .map_err(|e| ClientError::Http {
                            addr,
                            detail: format!("TLS: {e}"),
                        })?;
                    self.exchange(stream, method, path_and_query, body).await
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr,
                timeout: self.timeout,
            }),
        }
    }

    /// One request and its answer over an open connection.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let addr = self.addr;
        let http = |e: hyper::Error| ClientError::Http {
            addr,
            detail: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // The connection is driven next to the request; it ends when the answer has been read.
        let conn = tokio::spawn(conn);
        let mut req = Request::builder();
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, addr.to_string())
            .header(
                hyper::header::USER_AGENT,
                concat!("fieldbridge/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| ClientError::Http {
                addr,
                detail: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                addr,
                detail: format!("reading the answer: {e}"),
            })?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    }

    /// `GET`s a JSON document; a non-2xx answer becomes [`ClientError::Api`].
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, ClientError> {
        let (status, body) = self.request(Method::GET, path_and_query).await?;
        self.decode(status, &body)
    }

    /// `POST`s (no body) and decodes the JSON answer; a non-2xx answer becomes [`ClientError::Api`].
    pub async fn post_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.request(Method::POST, path).await?;
        self.decode(status, &body)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        status: StatusCode,
        body: &[u8],
    ) -> Result<T, ClientError> {
        let bad = |detail: String| ClientError::BadAnswer {
            addr: self.addr,
            status: status.as_u16(),
            detail,
        };
        if !status.is_success() {
            return match serde_json::from_slice::<ErrorDoc>(body) {
                Ok(doc) if !doc.error.is_empty() => Err(ClientError::Api {
                    status: status.as_u16(),
                    doc,
                }),
                _ => Err(bad(snippet(body))),
            };
        }
        serde_json::from_slice(body).map_err(|e| bad(format!("{e} in {}", snippet(body))))
    }
}

/// The start of a body, for error messages.
/// A TLS client configuration that trusts exactly the first certificate of `cert_file` (the `api.tls.cert`
/// the daemon serves), with the handshake's signatures checked as usual.
pub fn pinned_tls(cert_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let certs = crate::net::load_certs(cert_file).map_err(|e| e.to_string())?;
    let provider = crate::net::crypto_provider();
    let pinned = Pinned {
        cert: certs
            .into_iter()
            .next()
            .expect("load_certs refuses an empty file"),
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts the one certificate it pins.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not the one `api.tls.cert` names".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty body".into();
    }
    let mut s: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        s.push('…');
    }
    format!("`{s}`")
}

/// A connect error as a short phrase: "connection refused" reads better than "Connection refused (os error
/// 111)" in the middle of a sentence.
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        TimedOut => "timed out".into(),
        AddrNotAvailable => "address not available".into(),
        PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved characters).
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(encode_query_value("a/+/#"), "a%2F%2B%2F%23");
        assert_eq!(
            encode_query_value("2026-11-22T03:00:00+01:00"),
            "2026-11-22T03%3A00%3A00%2B01%3A00"
        );
        assert_eq!(encode_query_value("°C"), "%C2%B0C");
    }

    #[tokio::test]
    async fn refused_connection_is_explained() {
        // A port that was just free: bind, note it, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = ApiClient::new(addr, Duration::from_secs(5));
        let e = c
            .get_json::<serde_json::Value>("/health")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot reach fieldbridge at {addr}: connection refused — is it running? is `api.bind` set?")
        );
    }
}
