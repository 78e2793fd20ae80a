//! The local HTTP API: what an operator or a local app asks a running gateway.
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /` | a self-contained dashboard page (no external assets) polling the two endpoints below |
//! | `GET /health` | `200 {"status":"ok","store":"normal",…}`; `503 {"status":"degraded","reason":…}` while the store is damaged or stalled |
//! | `GET /api/status` | one [`StatusDoc`]: gateway, broker, store, bridges, devices, pipeline |
//! | `GET /api/devices` | [`DevicesDoc`]: configured devices with status and reason |
//! | `GET /api/points[?device=]` | [`PointsDoc`]: latest value of every point |
//! | `GET /api/history?device=&point=&topic=&from=&to=&limit=&order=` | [`HistoryDoc`]: logged rows |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /api/reload` | re-reads the configuration: `200` [`ReloadDoc`] (with a note per changed setting that only a restart applies), or `422` [`ErrorDoc`] listing every problem (positions and key paths; quoted file contents replaced by `…`) |
//! | `GET /api/openapi.json` | the OpenAPI 3.1 document of everything here |
//! | `GET /api/v1/history?…&cursor=&every=` | [`HistoryDoc`] with `next_cursor`, or with `every=1m` a [`BucketsDoc`] (count, min, max, avg, first, last per bucket; `order` applies, `limit`, `cursor` and `fields` are refused by name) |
//! | `GET /api/v1/latest?device=&point=&topic=` | [`LatestDoc`]: the last logged row of each matching topic |
//! | `GET /api/v1/devices`, `/api/v1/points`, `/api/v1/bridges`, `/api/v1/store` | as above, `points` with `writable` |
//! | `POST /api/v1/devices/{device}/points/{point}` | a write, executed as an MQTT `…/set` request: [`WriteDoc`]; `422` for a value the gateway refuses, `502`/`504` when the device refuses, cannot be reached or does not answer |
//!
//! Errors are JSON [`ErrorDoc`]s: `400` names the bad parameter and what was expected, `404` an unknown
//! device or point (v1: with the closest logged name) or endpoint, `405` names the endpoints, `401`/`403`/`429`
//! come from [`auth`] (token, `Host`, failed attempts), `408` a request body that did not arrive within
//! [`BODY_TIMEOUT`] (the connection is closed), `413` a body too large, `503` when the store is closing.
//!
//! # Robustness
//!
//! The API must never take the gateway down nor be used to starve it:
//! - at most [`MAX_CONNECTIONS`] connections at once. When they are all open, a new connection closes the
//!   one that has been idle longest (connected without a complete request yet, or kept alive after its
//!   answer), so idle or leaked connections can never lock another client out; only when every connection is
//!   busy with a request (each bounded in time) does a new one wait. Request heads are bounded to
//!   [`MAX_HEAD_BYTES`] and must arrive within [`HEADER_TIMEOUT`], which is also how long a kept-alive
//!   connection may stay idle; a request body (only the write reads one) must arrive within [`BODY_TIMEOUT`]
//!   (else `408` and the connection is closed). Memory stays bounded: a connection holds its read buffer
//!   (8 KiB, at most [`MAX_HEAD_BYTES`] while a head arrives) and a few KiB of state; measured on a debug
//!   build, 512 idle connections took 7 MiB, 512 each holding a 15 KB partial head 17 MiB (TLS adds rustls's
//!   buffers). Nothing else is allocated per connection (the router is shared);
//! - each connection runs in its own task, so even a bug that panics in a handler loses one connection;
//! - SQLite reads (status, history, metrics) run on the blocking pool, never on a runtime worker; history
//!   answers are capped at [`params::MAX_HISTORY_LIMIT`] rows;
//! - a reload runs in its own task, so a client that disconnects mid-reload cannot abort it half-applied, and
//!   reloads are serialized;
//! - every request must name this server in `Host` (DNS rebinding), state changes need the token, and failed
//!   attempts are limited per address (see [`auth`]); `POST` requests carrying a foreign `Origin` are refused
//!   as well; a write body is at most [`v1::MAX_WRITE_BODY`] bytes.
//!
//! Shutdown: cancelling the token stops accepting, lets in-flight requests finish (idle keep-alive
//! connections close at once) for up to [`SHUTDOWN_GRACE`], then drops what is left.
pub mod auth;
mod metrics;
pub mod model;
pub mod params;
mod snapshot;
mod state;
pub mod v1;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::store::WriterState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

pub use model::{
    BridgeView, BucketsDoc, CursorView, DeviceView, DevicesDoc, DropsView, ErrorDoc, HealthDoc,
    HistoryDoc, HistoryRow, LatestDoc, PipelineView, PointView, PointsDoc, ReloadDoc, SeriesView,
    StatusDoc, StoreView, WriteDoc,
};
pub use state::{ApiState, ReloadSummary};

use snapshot::Snapshot;

/// Connections open at once. A dashboard or two, a Prometheus scraper and the CLI need a handful; the cap keeps
/// a misbehaving client from exhausting the file descriptors (`LimitNOFILE=65536`, shared with up to 10,000
/// broker connections) and the memory the broker needs. Reaching it never locks a client out: the
/// longest-idle connection is closed to make room (see the module documentation).
pub const MAX_CONNECTIONS: usize = 512;
/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client has to send a complete request head after connecting (or after its previous answer, on a
/// kept-alive connection). Longer than the dashboard's poll interval (2 s), so its connection is reused.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to send a complete request body (a write's value, at most 4 KiB).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long in-flight requests may take to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The dashboard page: one file, inline CSS and JS, no external assets.
const DASHBOARD: &str = include_str!("dashboard.html");

/// A failure to start the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API token could not be read or created.
    #[error(transparent)]
    Token(#[from] auth::AuthError),
    /// `api.tls` could not be loaded.
    #[error("HTTP API TLS (`api.tls`): {0}")]
    Tls(String),
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr} for the HTTP API (`api.bind`): {source}")]
    Bind {
        /// The address from `api.bind`.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running API server.
#[derive(Debug)]
pub struct ApiServer {
    /// The address it listens on (the real port when `api.bind` asked for port 0).
    pub local_addr: SocketAddr,
    /// Ends after the shutdown token is cancelled and connections are closed.
    pub task: JoinHandle<()>,
}

/// The API server's bounds on its clients. [`Limits::default`] is what the daemon uses: [`MAX_CONNECTIONS`],
/// [`HEADER_TIMEOUT`], [`BODY_TIMEOUT`]; tests use smaller ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; at the limit a new one closes the longest-idle one.
    pub max_connections: usize,
    /// Time to send a complete request head (also how long a kept-alive connection may stay idle).
    pub header_timeout: Duration,
    /// Time to send a complete request body.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
        }
    }
}

/// Binds `bind` and serves the API on it until `shutdown` is cancelled. Returns once listening, so a bind
/// error is reported before the daemon says it started.
pub async fn serve(
    state: Arc<dyn ApiState>,
    bind: SocketAddr,
    shutdown: CancellationToken,
) -> Result<ApiServer, ApiError> {
    serve_with(state, bind, shutdown, Limits::default()).await
}

/// [`serve`] with other [`Limits`].
pub async fn serve_with(
    state: Arc<dyn ApiState>,
    bind: SocketAddr,
    shutdown: CancellationToken,
    limits: Limits,
) -> Result<ApiServer, ApiError> {
    let cfg = state.config().api.clone();
    let token = auth::load_or_create_token(&cfg)?;
    let tls = match &cfg.tls {
        Some(t) => Some(crate::net::tls_acceptor(t).map_err(|e| ApiError::Tls(e.to_string()))?),
        None => None,
    };
    let bind_err = |source| ApiError::Bind { addr: bind, source };
    let listener = TcpListener::bind(bind).await.map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    let guard = Arc::new(auth::Guard::new(token, &cfg, local_addr));
    let app = router_with(state, guard, limits);
    let task = tokio::spawn(accept_loop(listener, app, tls, limits, shutdown));
    tracing::info!(addr = %local_addr, "HTTP API listening");
    Ok(ApiServer { local_addr, task })
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let table = Arc::new(Conns::default());
    let mut conns = JoinSet::new();
    'accept: loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning on the error.
                    tracing::warn!(error = %e, "HTTP API: accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Room for it: a free slot, or the longest-idle connection closed. Only when every connection is in
        // the middle of a request (each bounded by the timeouts and the handlers' own bounds) does it wait.
        loop {
            let changed = table.changed.notified();
            if table.make_room(limits.max_connections) {
                break;
            }
            tokio::select! {
                _ = changed => {}
                _ = shutdown.cancelled() => break 'accept,
            }
        }
        while let Some(done) = conns.try_join_next() {
            log_conn_end(done);
        }
        let _ = stream.set_nodelay(true);
        let slot = table.open();
        let svc = Tracked {
            inner: TowerToHyperService::new(app.clone()),
            table: table.clone(),
            id: slot.id,
            peer,
        };
        let stop = shutdown.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let evicted = slot.close.clone();
            let serve = async move {
                match tls {
                    None => serve_conn(TokioIo::new(stream), svc, limits, stop).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                                .await;
                        match handshake {
                            Ok(Ok(s)) => serve_conn(TokioIo::new(s), svc, limits, stop).await,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "HTTP API: TLS handshake failed")
                            }
                            Err(_) => tracing::debug!("HTTP API: TLS handshake timed out"),
                        }
                    }
                }
            };
            // Closed to make room: it was idle (no request in progress), so dropping it cuts nothing.
            tokio::select! {
                _ = serve => {}
                _ = evicted.cancelled() => {
                    tracing::debug!(%peer, "HTTP API: idle connection closed to make room for a new one");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = conns.join_next().await {
            log_conn_end(done);
        }
    })
    .await;
    conns.abort_all();
    tracing::debug!("HTTP API stopped");
}

async fn serve_conn<I>(io: I, svc: Tracked, limits: Limits, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP API connection");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

/// The open connections, as far as making room needs to know them: whether each is in the middle of a
/// request, and since when it has been idle.
#[derive(Default)]
struct Conns {
    table: parking_lot::Mutex<ConnTable>,
    /// Signalled when a connection ends or becomes idle: room may be made now.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct ConnTable {
    next_id: u64,
    /// Advances at every accept and at the end of every request: orders the idle connections by age.
    clock: u64,
    open: HashMap<u64, ConnEntry>,
    /// Entries told to close and not gone yet.
    closing: usize,
}

struct ConnEntry {
    /// Requests in progress (body being read, handler running, answer being sent).
    in_flight: u32,
    /// `clock` when it last became idle: when it was accepted, or when its last answer was sent.
    idle_since: u64,
    /// Cancelled to close it.
    close: CancellationToken,
}

/// A connection's entry in [`Conns`], removed when dropped (however its task ends).
struct ConnSlot {
    table: Arc<Conns>,
    id: u64,
    close: CancellationToken,
}

impl Conns {
    /// Registers a new connection (idle: it has not sent a request yet).
    fn open(self: &Arc<Self>) -> ConnSlot {
        let mut t = self.table.lock();
        let id = t.next_id;
        t.next_id += 1;
        t.clock += 1;
        let close = CancellationToken::new();
        let entry = ConnEntry {
            in_flight: 0,
            idle_since: t.clock,
            close: close.clone(),
        };
        t.open.insert(id, entry);
        ConnSlot {
            table: self.clone(),
            id,
            close,
        }
    }

    /// Whether one more connection may be served now: there is a free slot, or the longest-idle connection
    /// was just told to close. False when every connection is busy with a request.
    fn make_room(&self, max: usize) -> bool {
        let mut t = self.table.lock();
        if t.open.len() - t.closing < max {
            return true;
        }
        let oldest = t
            .open
            .values()
            .filter(|c| c.in_flight == 0 && !c.close.is_cancelled())
            .min_by_key(|c| c.idle_since)
            .map(|c| c.close.clone());
        match oldest {
            Some(close) => {
                close.cancel();
                t.closing += 1;
                true
            }
            None => false,
        }
    }

    /// A request begins on connection `id`; it is busy until the guard is dropped (with the answer's body).
    fn begin(self: &Arc<Self>, id: u64) -> RequestGuard {
        if let Some(c) = self.table.lock().open.get_mut(&id) {
            c.in_flight += 1;
        }
        RequestGuard {
            table: self.clone(),
            id,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut t = self.table.table.lock();
        if let Some(c) = t.open.remove(&self.id) {
            if c.close.is_cancelled() {
                t.closing -= 1;
            }
        }
        drop(t);
        self.table.changed.notify_one();
    }
}

/// A request in progress on a connection (see [`Conns::begin`]).
struct RequestGuard {
    table: Arc<Conns>,
    id: u64,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut t = self.table.table.lock();
        t.clock += 1;
        let now = t.clock;
        if let Some(c) = t.open.get_mut(&self.id) {
            c.in_flight = c.in_flight.saturating_sub(1);
            c.idle_since = now;
        }
        drop(t);
        self.table.changed.notify_one();
    }
}

/// The router as one connection's hyper service: gives each request the peer's address ([`auth::Peer`]), and
/// marks the connection busy from each request's head to the end of its answer.
#[derive(Clone)]
struct Tracked {
    /// The shared router (a clone is a reference count: nothing is built per connection).
    inner: TowerToHyperService<Router>,
    table: Arc<Conns>,
    id: u64,
    peer: SocketAddr,
}

type TrackedFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<axum::http::Response<TrackedBody>, std::convert::Infallible>,
            > + Send,
    >,
>;

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::http::Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = TrackedFuture;

    fn call(&self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(auth::Peer(self.peer));
        let guard = self.table.begin(self.id);
        let answer = hyper::service::Service::call(&self.inner, req);
        Box::pin(async move {
            let res = answer.await?;
            Ok(res.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// An answer's body, holding its request's [`RequestGuard`] until hyper has sent it (or dropped it).
struct TrackedBody {
    body: axum::body::Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn log_conn_end(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            tracing::error!("HTTP API: a request handler panicked; its connection was dropped");
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
struct Ctx {
    state: Arc<dyn ApiState>,
    /// Serializes reloads: two at once would interleave device restarts.
    reload: Arc<tokio::sync::Mutex<()>>,
    /// The server's bounds (the write reads its body within `body_timeout`).
    limits: Limits,
}

/// The API's routes behind `guard`, without a listener (for tests with `tower::ServiceExt::oneshot`, or
/// another server).
pub fn router(state: Arc<dyn ApiState>, guard: Arc<auth::Guard>) -> Router {
    router_with(state, guard, Limits::default())
}

fn router_with(state: Arc<dyn ApiState>, guard: Arc<auth::Guard>, limits: Limits) -> Router {
    let ctx = Ctx {
        state,
        reload: Arc::new(tokio::sync::Mutex::new(())),
        limits,
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/health", get(health))
        .route("/api/status", get(status))
        .route("/api/devices", get(devices))
        .route("/api/points", get(points))
        .route("/api/history", get(history))
        .route("/api/reload", post(reload))
        .route("/metrics", get(metrics_page))
        .merge(v1::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(guard, auth::check))
        .with_state(ctx)
}

/// Listed in 404 and 405 answers, so a typo is answered with the right path.
const ENDPOINTS: &str = concat!(
    "GET /, /health, /api/status, /api/devices, /api/points, /api/history, /metrics, /api/openapi.json, ",
    "/api/v1/history, /api/v1/latest, /api/v1/devices, /api/v1/points, /api/v1/bridges, /api/v1/store; ",
    "POST /api/reload, /api/v1/devices/{device}/points/{point}"
);

/// A refused request: the status and the message of its [`ErrorDoc`].
pub(crate) struct Reject {
    status: StatusCode,
    message: String,
    /// Close the connection after the answer (the rest of the request cannot be read in time).
    close: bool,
}

impl Reject {
    /// The same refusal, closing the connection after it.
    fn closing(mut self) -> Reject {
        self.close = true;
        self
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorDoc {
                error: self.message,
                errors: Vec::new(),
            }),
        )
            .into_response();
        if self.close {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

pub(crate) fn reject(status: StatusCode, msg: impl Into<String>) -> Reject {
    Reject {
        status,
        message: msg.into(),
        close: false,
    }
}

fn bad_request(msg: impl Into<String>) -> Reject {
    reject(StatusCode::BAD_REQUEST, msg)
}

async fn not_found(uri: axum::http::Uri) -> Reject {
    reject(
        StatusCode::NOT_FOUND,
        format!("no endpoint {}; endpoints: {ENDPOINTS}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Reject {
    reject(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}; endpoints: {ENDPOINTS}",
            uri.path()
        ),
    )
}

/// The query pairs, or a 400 naming what could not be decoded.
fn pairs(
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, Reject> {
    q.map(|Query(p)| p)
        .map_err(|e| bad_request(format!("invalid query string: {}", e.body_text())))
}

/// Runs blocking work (SQLite) off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Reject> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "HTTP API: a blocking task failed");
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (see the daemon's log)",
        )
    })
}

/// The answer to a failed history read of the log at `log`.
fn store_error(e: StoreError, log: &std::path::Path) -> Reject {
    match e {
        StoreError::Invalid(m) => bad_request(m),
        StoreError::NoSuch(m) => reject(StatusCode::NOT_FOUND, m),
        StoreError::Closed => reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is closed (fieldbridge is stopping)",
        ),
        e => {
            // SQLite's own words: `StoreError::Sqlite`'s text already begins with "store query failed".
            let why = match &e {
                StoreError::Sqlite(inner) => inner.to_string(),
                other => other.to_string(),
            };
            let msg = format!(
                "reading the history from the log {} failed: {why}",
                log.display()
            );
            tracing::warn!("HTTP API: {msg}");
            reject(StatusCode::INTERNAL_SERVER_ERROR, msg)
        }
    }
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Everything is inline and fetched from this origin: forbid anything else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn health(State(ctx): State<Ctx>) -> Response {
    let (state, reason) = ctx.state.store_health();
    let reason = match state {
        WriterState::Degraded => Some(format!(
            "store damaged: {}; new messages are refused — restart fieldbridge to move the file aside and \
             salvage it",
            reason.unwrap_or_default()
        )),
        WriterState::Stalled => Some(format!(
            "store cannot write: {}; retrying (free space or fix permissions; it recovers by itself)",
            reason.unwrap_or_default()
        )),
        // A full disk within the last minute, recovered from by evicting: the store says why.
        WriterState::Normal | WriterState::Full => reason,
    };
    let code = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let doc = HealthDoc {
        status: if reason.is_some() { "degraded" } else { "ok" }.into(),
        reason,
        store: snapshot::writer_state(state).into(),
        uptime_secs: ctx.state.uptime().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    (code, Json(doc)).into_response()
}

async fn status(State(ctx): State<Ctx>) -> Result<Response, Reject> {
    let doc = blocking(move || Snapshot::take(&*ctx.state).into_doc()).await?;
    Ok(Json(doc).into_response())
}

async fn devices(State(ctx): State<Ctx>) -> Response {
    let cfg = ctx.state.config();
    let devices = snapshot::device_views(&cfg, &ctx.state.live());
    Json(DevicesDoc { devices }).into_response()
}

async fn points(
    State(ctx): State<Ctx>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Reject> {
    let pairs = pairs(q)?;
    let p = params::check_params(&pairs, &["device"]).map_err(|e| bad_request(e.0))?;
    let cfg = ctx.state.config();
    if let Some(d) = p.get("device") {
        if !cfg.devices.iter().any(|x| &*x.adapter.name == *d) {
            return Err(bad_request(format!(
                "parameter `device`: no device `{d}` is configured"
            )));
        }
    }
    let live = ctx.state.live();
    let latest = live.latest();
    let mut points: Vec<PointView> = latest
        .iter()
        // Points of devices removed by a reload keep their last value in the live table: not shown.
        .filter(|((dev, _), _)| cfg.devices.iter().any(|x| x.adapter.name == *dev))
        .filter(|((dev, _), _)| p.get("device").is_none_or(|d| **dev == **d))
        .map(|((dev, point), l)| PointView {
            device: dev.to_string(),
            point: point.to_string(),
            value: serde_json::to_value(l)
                .ok()
                .and_then(|mut v| v.get_mut("value").map(serde_json::Value::take))
                .unwrap_or_default(),
            unit: l.unit.clone(),
            quality: l.quality.to_string(),
            reason: l.reason.clone(),
            ts: l.ts.clone(),
            topic: l.topic.to_string(),
            writable: point_rules(&cfg, dev, point).is_some_and(|r| r.writable),
        })
        .collect();
    drop(latest);
    points.sort_by(|a, b| (&a.device, &a.point).cmp(&(&b.device, &b.point)));
    Ok(Json(PointsDoc { points }).into_response())
}

async fn history(
    State(ctx): State<Ctx>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Reject> {
    let pairs = pairs(q)?;
    let mut q = params::history_query(&pairs, SystemTime::now()).map_err(|e| bad_request(e.0))?;
    let limit = q.limit;
    // One row more than asked tells whether there is more.
    q.limit += 1;
    let state = ctx.state.clone();
    let rows = blocking(move || state.query(&q)).await?;
    // Before v1, an unknown name meant no rows; v1 answers 404 with the closest name.
    let rows = match rows {
        Err(StoreError::NoSuch(_)) => Vec::new(),
        r => r.map_err(|e| store_error(e, &ctx.state.store_path()))?,
    };
    let more = rows.len() > limit;
    let rows = rows.into_iter().take(limit).map(HistoryRow::from).collect();
    Ok(Json(HistoryDoc {
        rows,
        limit,
        more,
        next_cursor: None,
    })
    .into_response())
}

async fn metrics_page(State(ctx): State<Ctx>) -> Result<Response, Reject> {
    let text = blocking(move || metrics::render(&Snapshot::take(&*ctx.state))).await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// Whether a browser sent this request from another site: its `Origin` names a different host than `Host`.
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host)
}

async fn reload(State(ctx): State<Ctx>, headers: HeaderMap) -> Result<Response, Reject> {
    if cross_origin(&headers) {
        return Err(reject(
            StatusCode::FORBIDDEN,
            "cross-origin reload refused: use `fieldbridge reload`, curl, or a page served by this API",
        ));
    }
    let state = ctx.state.clone();
    let lock = ctx.reload.clone();
    let task = tokio::spawn(async move {
        let _serialized = lock.lock().await;
        state.reload().await
    });
    let result = task.await.map_err(|e| {
        tracing::error!(error = %e, "HTTP API: reload task failed");
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload failed (see the daemon's log)",
        )
    })?;
    Ok(match result {
        // The notes name every changed setting a reload cannot apply (`api.bind`, `storage.path`, …: see
        // `App::apply`), and listeners that could not be bound again.
        Ok(s) => Json(ReloadDoc {
            added: s.added,
            removed: s.removed,
            restarted: s.restarted,
            unchanged: s.unchanged,
            notes: s.notes,
        })
        .into_response(),
        Err(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ErrorDoc {
                error: format!(
                    "the configuration has {} problem(s); the running configuration is kept",
                    errors.len()
                ),
                errors: errors.errors.iter().map(redacted).collect(),
            }),
        )
            .into_response(),
    })
}

/// A device or point the log has not seen yet but the configuration names has simply no rows yet: not a typo.
fn unless_configured<T: Default>(
    r: Result<T, StoreError>,
    cfg: &crate::config::Config,
    device: Option<&str>,
    point: Option<&str>,
) -> Result<T, StoreError> {
    match r {
        Err(StoreError::NoSuch(m)) => {
            let dev_ok = device.is_none_or(|d| cfg.devices.iter().any(|x| &*x.adapter.name == d));
            let point_ok = point.is_none_or(|p| {
                cfg.devices
                    .iter()
                    .filter(|x| device.is_none_or(|d| &*x.adapter.name == d))
                    .any(|x| x.points.iter().any(|r| &*r.name == p))
            });
            if dev_ok && point_ok {
                Ok(T::default())
            } else {
                Err(StoreError::NoSuch(m))
            }
        }
        r => r,
    }
}

/// The mapping rules of `device`/`point` in the configuration in force.
fn point_rules<'a>(
    cfg: &'a crate::config::Config,
    device: &str,
    point: &str,
) -> Option<&'a crate::config::PointRules> {
    cfg.devices
        .iter()
        .find(|d| &*d.adapter.name == device)
        .and_then(|d| d.points.iter().find(|p| &*p.name == point))
}

/// A configuration problem as the API shows it: position, key path and message, with every quoted fragment
/// of the message that is not a key of that path replaced by `…`. Messages quote what they found (a value, a
/// line of a file that is not YAML — a device map symlinked to a secret would be echoed), and the API answers
/// whoever holds the token, not only who can read the files: `fieldbridge check` on the host shows them whole.
fn redacted(e: &fieldbridge_sdk::config::ConfigError) -> String {
    // A key path is shown when its keys look like keys; a "key" that is a line of a file that is not YAML
    // (`root:$6$…`) is content, and hidden like the rest.
    let plain = |k: &str| {
        !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    };
    let keys: Vec<&str> = e.path.split(['.', '[', ']']).filter(|k| plain(k)).collect();
    let path: String = {
        let mut out = String::new();
        let mut seg = String::new();
        let flush = |seg: &mut String, out: &mut String| {
            if !seg.is_empty() {
                out.push_str(if plain(seg) { seg } else { "…" });
                seg.clear();
            }
        };
        for c in e.path.chars() {
            if matches!(c, '.' | '[' | ']') {
                flush(&mut seg, &mut out);
                out.push(c);
            } else {
                seg.push(c);
            }
        }
        flush(&mut seg, &mut out);
        out
    };
    let mut msg = String::with_capacity(e.message.len());
    let mut rest = e.message.as_str();
    while let Some(open) = rest.find(['`', '"', '\'']) {
        let q = rest[open..].chars().next().unwrap_or('`');
        msg.push_str(&rest[..open + 1]);
        let after = &rest[open + 1..];
        match after.find(q) {
            Some(close) => {
                let inner = &after[..close];
                if keys.contains(&inner) {
                    msg.push_str(inner);
                } else {
                    msg.push('…');
                }
                msg.push(q);
                rest = &after[close + 1..];
            }
            None => {
                msg.push('…');
                rest = "";
            }
        }
    }
    msg.push_str(rest);
    let shown = if path.is_empty() {
        format!("{}: {msg}", e.mark)
    } else {
        format!("{}: {path}: {msg}", e.mark)
    };
    shown.chars().take(1000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_check() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(!cross_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(!cross_origin(&h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(cross_origin(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(cross_origin(&h));
    }

    /// A failed history read says what failed and where, once (the store's error text already began with
    /// "store query failed").
    #[test]
    fn a_failed_read_names_the_log_once() {
        let log = std::path::Path::new("/var/lib/fieldbridge/fieldbridge.db");
        let r = store_error(
            StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows),
            log,
        );
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            r.message,
            "reading the history from the log /var/lib/fieldbridge/fieldbridge.db failed: \
             Query returned no rows"
        );
        let r = store_error(StoreError::Damaged("disk I/O error".into()), log);
        assert!(
            r.message
                .starts_with("reading the history from the log /var/lib/fieldbridge/fieldbridge.db failed: store damaged"),
            "{}",
            r.message
        );
    }

    /// At the limit, the longest-idle connection makes room; busy ones never do, and none is asked to close
    /// twice.
    #[test]
    fn room_is_made_by_the_longest_idle_connection() {
        let t = Arc::new(Conns::default());
        let busy = t.open();
        let _request = t.begin(busy.id);
        let idle = t.open();
        let newer = t.open();
        assert!(t.make_room(4), "a free slot");
        assert_eq!(t.table.lock().closing, 0, "nothing closed for it");
        assert!(t.make_room(3), "the longest idle makes room");
        assert!(idle.close.is_cancelled());
        assert!(!busy.close.is_cancelled() && !newer.close.is_cancelled());
        drop(idle);
        let _fourth = t.open();
        assert!(t.make_room(3));
        assert!(newer.close.is_cancelled(), "then the next longest idle");
        drop(newer);
        let only_busy = t.open();
        let _r = t.begin(only_busy.id);
        let _fifth = t.open();
        // busy, _fourth (idle), only_busy (busy), _fifth (idle): _fourth goes first, then _fifth, then none.
        assert!(t.make_room(3));
        assert!(t.make_room(2));
        assert!(!t.make_room(2), "every connection left is busy");
    }
}
