//! The validated, typed configuration. Everything here has passed `validate()`: the rest of the daemon never
//! re-checks it. The raw (serde) structs and the validation live beside this file.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::DeviceConfig;

use crate::broker::codec::QoS;

/// The whole configuration: the main file plus every device map it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the main file was read from (reload re-reads it).
    pub path: PathBuf,
    /// `gateway:`
    pub gateway: GatewayConfig,
    /// `broker:`
    pub broker: BrokerConfig,
    /// `storage:`
    pub storage: StorageConfig,
    /// `bridges:`
    pub bridges: Vec<BridgeConfig>,
    /// `api:`
    pub api: ApiConfig,
    /// `logging:`
    pub logging: LoggingConfig,
    /// Inline `devices:` of the main file, then those of every file matched by `device_maps:`, in that order.
    pub devices: Vec<DeviceSpec>,
}

/// `gateway:`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `{gateway}` in topic templates; default: the host name.
    pub id: String,
    /// Topic of the gateway's own retained status (`online`, will `offline`); default `{gateway}/status`.
    /// Stored with `{gateway}` already expanded.
    pub status_topic: String,
}

/// `broker:`
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// At least one listener (default: one TCP listener on 127.0.0.1:1883).
    pub listeners: Vec<ListenerConfig>,
    /// Connections beyond this are refused (CONNACK 0x89 server busy / v3 code 3). Default 10000.
    pub max_connections: usize,
    /// Largest packet accepted from a client; advertised in CONNACK (v5). Default 1 MiB.
    pub max_packet_size: u32,
    /// Receive Maximum the broker advertises, and the cap on its own in-flight window per client. Default 100.
    pub receive_maximum: u16,
    /// Messages queued per session (offline or behind a full window); overflow is dropped and counted.
    /// Default 10000.
    pub max_queued_messages: usize,
    /// Cap on the session expiry a client may ask for. Default 7 days. v3.1.1 persistent sessions use it too.
    pub max_session_expiry: Duration,
    /// Topic Alias Maximum the broker advertises (client -> broker aliases). Default 64.
    pub topic_alias_maximum: u16,
    /// Largest keepalive accepted; a larger one is lowered via Server Keep Alive (v5). `None`: any.
    pub max_keepalive: Option<u16>,
    /// Whether clients without credentials may connect. Default true.
    pub allow_anonymous: bool,
    /// `users:` name -> password (plain text or from env/file, resolved at load).
    pub users: Vec<UserConfig>,
    /// `acl:` rules, checked in order; the first match decides. Empty: everything allowed.
    pub acl: Vec<AclRule>,
    /// How often `$SYS/broker/...` topics are refreshed. Default 10 s; zero disables them.
    pub sys_interval: Duration,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Name used in logs and metrics (default: the bind address).
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// Transport.
    pub kind: ListenerKind,
}

/// A listener's transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls(TlsServerConfig),
    /// MQTT over WebSocket on `path` (default `/mqtt`).
    Ws {
        /// HTTP path.
        path: String,
    },
    /// MQTT over WebSocket over TLS.
    Wss {
        /// HTTP path.
        path: String,
        /// TLS settings.
        tls: TlsServerConfig,
    },
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerConfig {
    /// PEM certificate chain. Like every path here, a relative one was resolved against the main file's
    /// directory at load, and the file was checked to exist.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle to verify client certificates against.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `client_ca`).
    pub require_client_cert: bool,
}

/// One user of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// User name.
    pub username: String,
    /// Password, resolved from `password`, `password_file` or `${ENV}`.
    pub password: String,
}

/// One ACL rule. `%u` and `%c` in the filter stand for the user name and client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// Who the rule is for: a user name, or `None` for everyone (anonymous included).
    pub user: Option<String>,
    /// Topic filter the rule covers (`{gateway}` expanded at load; `%u`/`%c` left for the broker).
    pub filter: String,
    /// What it allows or denies.
    pub access: AclAccess,
    /// Allow (true) or deny (false).
    pub allow: bool,
}

/// What an ACL rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAccess {
    /// Publish only.
    Publish,
    /// Subscribe (and receive) only.
    Subscribe,
    /// Both.
    All,
}

/// `storage:`
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// SQLite database file. Default `/var/lib/fieldbridge/fieldbridge.db` (the demo uses a relative path).
    pub path: PathBuf,
    /// Group-commit interval. Default 20 ms.
    pub commit_interval: Duration,
    /// Group-commit row count: commit as soon as this many rows wait. Default 10000.
    pub commit_rows: usize,
    /// SQLite `synchronous`. Default `Full`.
    pub synchronous: Synchronous,
    /// Whether local QoS 1/2 publishes that are logged are acknowledged only after commit. Default `Strict`.
    pub durability: Durability,
    /// Cap on the database's real size on disk. Default 1 GiB.
    pub max_bytes: u64,
    /// History older than this is removed once every bridge has delivered it. `None`: kept until `max_bytes`.
    pub max_age: Option<Duration>,
    /// What happens to rows not yet delivered when `max_bytes` is reached. Default `DropOldest`.
    pub when_full: WhenFull,
    /// Extra filters whose local publishes are logged even when no bridge forwards them (history only).
    /// `{gateway}` expanded at load.
    pub record: Vec<String>,
}

/// SQLite `synchronous` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync at every commit (power-cut safe).
    Full,
    /// fsync at checkpoints only (WAL): faster, may lose the last commits on power loss.
    Normal,
}

/// When a logged local publish is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the row is committed.
    Strict,
    /// As soon as it is queued for the writer.
    Relaxed,
}

/// The policy when the log is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Remove the oldest undelivered rows to make room.
    DropOldest,
    /// Refuse the new rows.
    DropNewest,
    /// Slow local publishers and adapters until room is made.
    Block,
}

/// One upstream bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// Unique name; its cursor in the store is kept under this name.
    pub name: String,
    /// Parsed `url:`.
    pub url: BridgeUrl,
    /// MQTT version to speak upstream. Default `V5`.
    pub protocol: crate::broker::codec::Protocol,
    /// Default `{gateway}-{name}`; stored expanded.
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password (from `password`, `password_file` or `${ENV}`).
    pub password: Option<String>,
    /// PEM CA bundle; `None` with TLS: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Keepalive. Default 30 s.
    pub keepalive: Duration,
    /// Clean start. Default false (a persistent upstream session).
    pub clean_start: bool,
    /// Session expiry asked for (v5). Default 1 hour.
    pub session_expiry: Duration,
    /// Reconnect backoff bounds. Default 1 s .. 60 s.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
    /// In-flight window (never above the upstream's Receive Maximum). Default 100.
    pub inflight: u16,
    /// Messages per second while draining a backlog; `None`: no limit.
    pub rate_limit: Option<u32>,
    /// Local -> upstream rules.
    pub forward: Vec<ForwardRule>,
    /// Upstream -> local rules.
    pub subscribe: Vec<SubscribeRule>,
    /// Topic of the gateway birth/will published upstream; default `{gateway}/status`; stored expanded.
    pub status_topic: String,
}

/// A parsed bridge URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeUrl {
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub scheme: BridgeScheme,
    /// Host name (used for SNI).
    pub host: String,
    /// Port (default 1883 / 8883 / 80 / 443).
    pub port: u16,
    /// Path for WebSocket URLs (default `/mqtt`).
    pub path: String,
}

/// Transport of a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeScheme {
    /// `mqtt://`
    Mqtt,
    /// `mqtts://`
    Mqtts,
    /// `ws://`
    Ws,
    /// `wss://`
    Wss,
}

/// A local -> upstream rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRule {
    /// Local topic filter (`{gateway}` expanded at load).
    pub filter: String,
    /// Remote topic template: `{topic}` the whole local topic, `{1}`.. the wildcard captures, `{gateway}`.
    /// Default `{topic}`. `{gateway}` is already expanded; `{1}`.. never exceed the filter's wildcards
    /// (checked at load).
    pub topic: String,
    /// QoS upstream; `None`: QoS 1, or 2 for a QoS 2 message (the cursor moves only on PUBACK/PUBCOMP). An
    /// explicit `qos: 0` sends at QoS 0: the cursor then moves once the bytes are written, so such rows may be
    /// lost on a cut. Forwards are logged whatever the QoS.
    pub qos: Option<QoS>,
    /// Pass the retain flag through. Default true.
    pub retain: bool,
}

/// An upstream -> local rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRule {
    /// Remote topic filter (`{gateway}` expanded at load).
    pub filter: String,
    /// Local topic template (`{topic}`, `{1}`.., `{gateway}`). Default `{topic}`. `{gateway}` is already
    /// expanded; `{1}`.. never exceed the filter's wildcards (checked at load).
    pub topic: String,
    /// Subscription QoS. Default 1.
    pub qos: QoS,
}

/// `api:`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Where the HTTP API listens; `None` disables it. Default 127.0.0.1:8080.
    pub bind: Option<SocketAddr>,
}

/// `logging:`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// An `EnvFilter` directive, e.g. `info` or `info,fieldbridge::bridge=debug`. Default `info`.
    pub level: String,
}

/// One device: what the adapter gets, plus how the core maps its readings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// What the adapter factory gets (name, protocol, connection node, timing, points' adapter parts).
    pub adapter: DeviceConfig,
    /// `labels:` usable as `{label}` in topic templates.
    pub labels: BTreeMap<String, String>,
    /// The mapping rules of each point, in the same order as `adapter.points`.
    pub points: Vec<PointRules>,
}

/// How the core turns one point's readings into messages (and commands back into raw values).
#[derive(Debug, Clone, PartialEq)]
pub struct PointRules {
    /// Point name.
    pub name: Arc<str>,
    /// `published = raw * scale + offset`. Default 1.
    pub scale: f64,
    /// See `scale`. Default 0.
    pub offset: f64,
    /// Changes smaller than this are not published (with on-change modes).
    pub deadband: Option<Deadband>,
    /// When to publish.
    pub publish: PublishMode,
    /// Unit put in JSON payloads.
    pub unit: Option<String>,
    /// Topic template (the point's, else the device's, else `{gateway}/{device}/{point}`).
    pub topic: TopicTemplate,
    /// Payload format.
    pub payload: PayloadFormat,
    /// QoS of the published message. Default 0 (readings are logged regardless).
    pub qos: QoS,
    /// Retain flag. Default false.
    pub retain: bool,
    /// Whether `…/set` is accepted.
    pub writable: bool,
    /// Whether readings are written to the store's history. Default true.
    pub record: bool,
}

/// A deadband.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// Absolute change in published (scaled) units.
    Absolute(f64),
    /// Percent of the last published value's magnitude.
    Percent(f64),
}

/// When a point's readings are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// Every reading.
    EveryPoll,
    /// Only when the value (beyond the deadband) or the quality changed.
    OnChange,
    /// On change, and at least every N readings.
    OnChangeOrEvery(u32),
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    /// Literal text and placeholders, in order.
    pub parts: Vec<TemplatePart>,
}

/// A piece of a topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text as written.
    Literal(String),
    /// `{gateway}`
    Gateway,
    /// `{device}`
    Device,
    /// `{point}`
    Point,
    /// `{name}` of a label defined on the device.
    Label(String),
}

/// Payload format of readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// `{"value":21.5,"unit":"°C","ts":"2026-11-22T02:00:00.123Z","quality":"good"}`
    Json,
    /// The bare value as text.
    Value,
}
