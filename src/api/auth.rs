//! Who may use the API: the token, the `Host` check, and the limit on failed attempts.
//!
//! - **Token.** `api.token` when configured, else the contents of `api.token_file` (default `api-token` in
//!   the state directory, next to the log), generated at the first start: 32 random bytes as 64 hex digits,
//!   written with mode 0600. Sent as `Authorization: Bearer <token>`. Required for every request that is not
//!   `GET`/`HEAD` and, with `api.auth_reads: true`, for reads too. `/` (the dashboard page, which asks for the
//!   token itself) and `/health` (for supervisors) never need it. Compared in constant time.
//! - **Host.** A web page can make a browser talk to the API through DNS rebinding (its own name, resolved to
//!   127.0.0.1): the browser then sends that name in `Host`. Only the loopback names (`localhost`,
//!   `127.0.0.1`, `[::1]`), the listen address and `api.hosts` are accepted; anything else is 403 before any
//!   handler runs, for reads too (a rebinding page could otherwise read the history).
//! - **Failed attempts.** More than [`MAX_FAILURES`] wrong tokens from one address within
//!   [`FAILURE_WINDOW`] lock that address out (429, token or not) until the window ends. The table of
//!   addresses is bounded ([`MAX_TRACKED`]); when it is full, unknown addresses share one entry.
use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use subtle::ConstantTimeEq;

use crate::config::ApiConfig;

/// Failed attempts from one address tolerated within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// How long failed attempts are remembered (and how long a lockout lasts).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are tracked at once.
pub const MAX_TRACKED: usize = 4096;

/// Why the token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file exists but cannot be read, or cannot be created.
    #[error("API token file {path}: {source}")]
    TokenFile {
        /// The file (`api.token_file`).
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds no usable token (empty, too short, or not text).
    #[error("API token file {path}: expected one line of 16 to 256 printable characters")]
    BadToken {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// The peer address of a connection, put into each request's extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The API's gatekeeper: one per server.
pub struct Guard {
    token: String,
    auth_reads: bool,
    hosts: Vec<String>,
    port: u16,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("auth_reads", &self.auth_reads)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// The token in force: `api.token`, else the token file (created with a new random token if missing).
pub fn load_or_create_token(cfg: &ApiConfig) -> Result<String, AuthError> {
    if let Some(t) = &cfg.token {
        return Ok(t.clone());
    }
    let path = &cfg.token_file;
    let err = |source| AuthError::TokenFile {
        path: path.clone(),
        source,
    };
    match read_token_file(path) {
        Ok(t) => return Ok(t),
        Err(AuthError::TokenFile { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    let token = data_encoding::HEXLOWER.encode(&bytes);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(mut f) => {
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(err)?;
            tracing::info!(path = %path.display(), "HTTP API: generated a new API token");
            Ok(token)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token_file(path),
        Err(e) => Err(err(e)),
    }
}

/// Reads a token file (no larger than a token: the file is never echoed anywhere).
pub fn read_token_file(path: &Path) -> Result<String, AuthError> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|source| AuthError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut text = String::new();
    f.take(1024)
        .read_to_string(&mut text)
        .map_err(|_| AuthError::BadToken {
            path: path.to_path_buf(),
        })?;
    let t = text.trim();
    if t.len() < 16 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::BadToken {
            path: path.to_path_buf(),
        });
    }
    Ok(t.to_string())
}

impl Guard {
    /// A guard for a server listening on `local`.
    pub fn new(token: String, cfg: &ApiConfig, local: SocketAddr) -> Guard {
        let mut hosts: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "[::1]".into(),
            "::1".into(),
        ];
        let ip = local.ip();
        if !ip.is_unspecified() {
            hosts.push(match ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            });
        }
        hosts.extend(cfg.hosts.iter().map(|h| h.to_ascii_lowercase()));
        Guard {
            token,
            auth_reads: cfg.auth_reads,
            hosts,
            port: local.port(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `host` (a `Host` header value) names this server.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let (name, port) = split_host(&host);
        if let Some(p) = port {
            if p.parse::<u16>().ok() != Some(self.port) {
                return false;
            }
        }
        self.hosts.iter().any(|h| h == name)
    }

    /// Whether `headers` carry the token.
    pub fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(v) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some(given) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        else {
            return false;
        };
        bool::from(given.trim().as_bytes().ct_eq(self.token.as_bytes()))
    }

    fn locked_out(&self, ip: IpAddr, now: Instant) -> bool {
        let mut f = self.failures.lock();
        let key = self.key_for(&f, ip);
        match f.get(&key) {
            Some((start, _)) if now.duration_since(*start) >= FAILURE_WINDOW => {
                f.remove(&key);
                false
            }
            Some((_, n)) => *n >= MAX_FAILURES,
            None => false,
        }
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut f = self.failures.lock();
        if f.len() >= MAX_TRACKED {
            f.retain(|_, (start, _)| now.duration_since(*start) < FAILURE_WINDOW);
        }
        let key = self.key_for(&f, ip);
        let e = f.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) >= FAILURE_WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        if e.1 == MAX_FAILURES {
            tracing::warn!(peer = %ip, "HTTP API: too many failed token attempts; address locked out for {} s", FAILURE_WINDOW.as_secs());
        }
    }

    /// The table key for `ip`: itself, or the shared overflow entry when the table is full.
    fn key_for(&self, f: &HashMap<IpAddr, (Instant, u32)>, ip: IpAddr) -> IpAddr {
        if f.contains_key(&ip) || f.len() < MAX_TRACKED {
            ip
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }
}

/// `name[:port]` or `[v6][:port]`.
fn split_host(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        match host.find(']') {
            Some(end) => {
                let rest = &host[end + 1..];
                (&host[..=end], rest.strip_prefix(':'))
            }
            None => (host, None),
        }
    } else if host.matches(':').count() == 1 {
        let (n, p) = host.split_once(':').unwrap_or((host, ""));
        (n, Some(p))
    } else {
        (host, None)
    }
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    let mut r = super::reject(status, msg).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"fieldbridge\""),
        );
    }
    r
}

/// The middleware: `Host`, then (where needed) the token, with the failed-attempt limit.
pub async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match host {
        Some(h) if guard.host_allowed(h) => {}
        _ => {
            return refuse(
                StatusCode::FORBIDDEN,
                "this API answers only to its own names (`Host` must be localhost, the listen address, or \
                 one of `api.hosts`)",
            )
        }
    }
    let path = req.uri().path();
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let open = reads && (path == "/" || path == "/health");
    if open || (reads && !guard.auth_reads) {
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<Peer>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
    let now = Instant::now();
    if guard.locked_out(ip, now) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed token attempts from this address; try again in a minute",
        );
    }
    if !guard.token_ok(req.headers()) {
        // Only a wrong token is a guess. A request without one (a scraper, a dashboard tab before the token
        // is pasted) is refused but not counted: it must not lock the token's holder out.
        let guessed = req.headers().contains_key(header::AUTHORIZATION);
        if guessed {
            guard.failed(ip, now);
        }
        let why = if guessed {
            "wrong API token"
        } else {
            "this request needs the API token: `Authorization: Bearer <token>` (the token is in the state \
             directory's `api-token` file, or `api.token`)"
        };
        return refuse(StatusCode::UNAUTHORIZED, why);
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        let cfg = ApiConfig {
            bind: None,
            token: Some("0123456789abcdef".into()),
            token_file: "x".into(),
            auth_reads: false,
            hosts: vec!["gw.plant.local".into()],
            tls: None,
        };
        Guard::new(
            "0123456789abcdef".into(),
            &cfg,
            "127.0.0.1:8080".parse().unwrap(),
        )
    }

    #[test]
    fn hosts() {
        let g = guard();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "gw.plant.local:8080",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1:9090",
            "localhost.evil.example",
            "",
            "127.0.0.1.nip.io:8080",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn lockout_after_failures_then_window() {
        let g = guard();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(!g.locked_out(ip, t0));
            g.failed(ip, t0);
        }
        assert!(g.locked_out(ip, t0));
        assert!(!g.locked_out("127.0.0.3".parse().unwrap(), t0));
        assert!(!g.locked_out(ip, t0 + FAILURE_WINDOW));
    }

    #[test]
    fn token_compare() {
        let g = guard();
        let mut h = HeaderMap::new();
        assert!(!g.token_ok(&h));
        h.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdeX".parse().unwrap(),
        );
        assert!(!g.token_ok(&h));
        h.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef".parse().unwrap(),
        );
        assert!(g.token_ok(&h));
    }
}
