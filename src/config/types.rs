//! The validated, typed configuration. Everything here has passed `validate()`: the rest of the daemon never
//! re-checks it. The raw (serde) structs and the validation live beside this file.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::DeviceConfig;

use crate::mqtt::QoS;

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
    /// Things that are allowed but probably not meant (a listener open to the network that accepts anonymous
    /// clients): `fieldbridge check` prints them, the daemon logs them; they never fail a load.
    pub warnings: Vec<fieldbridge_sdk::ConfigError>,
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
    /// Whether clients without credentials may connect (listeners may say otherwise). Default true.
    pub allow_anonymous: bool,
    /// `users:` (plain text or from env/file, resolved at load), then the users of `password_file`
    /// (mosquitto_passwd hashes).
    pub users: Vec<UserConfig>,
    /// `acl:` rules, then those of `acl_file` (in mosquitto's order), checked in order; the first match
    /// decides. Empty: everything allowed.
    pub acl: Vec<AclRule>,
    /// Whether a client id in use by another user's session may be taken over. Default strict (refused).
    pub client_id_binding: ClientIdBinding,
    /// How often `$SYS/broker/...` topics are refreshed. Default 10 s; zero disables them.
    pub sys_interval: Duration,
    /// What one client (and all of them together) can make the broker hold or wait for.
    pub limits: BrokerLimits,
}

/// The broker's resource limits, with defaults sized for a Raspberry Pi that real deployments do not hit.
/// Every refusal is counted in the broker's metrics and logged once per client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLimits {
    /// Levels in a topic name or filter; deeper ones are refused (PUBLISH: disconnect 0x90, SUBSCRIBE: 0x8F).
    /// Default 128.
    pub max_topic_levels: usize,
    /// Bytes in a topic name or filter. Default 4096.
    pub max_topic_length: usize,
    /// How long a publisher waits for room in a connected subscriber's full queue. A subscriber that makes no
    /// room within it is disconnected (v5 0x97) and its session continues offline. Default 1 s.
    pub max_publish_wait: Duration,
    /// Time allowed from the first byte of a packet to its last, whatever the keepalive. Default 30 s.
    pub packet_timeout: Duration,
    /// Subscriptions one session may hold; more are refused with SUBACK 0x97 (v5) / 0x80. Default 1000.
    pub max_subscriptions_per_client: usize,
    /// Retained messages held; a new retained topic beyond it is not retained (the message is still
    /// delivered). Default 10000.
    pub max_retained_messages: usize,
    /// Bytes of retained messages (topic + payload) held. Default 64 MiB.
    pub max_retained_bytes: u64,
    /// Persistent sessions kept while their clients are away; a new persistent session beyond it is refused
    /// (CONNACK 0x97 / 3.1.1 code 3). Default 1000.
    pub max_offline_sessions: usize,
    /// Bytes queued for all offline sessions together; beyond it deliveries to offline sessions are dropped and
    /// counted. Default 64 MiB.
    pub max_offline_queued_bytes: u64,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            max_topic_levels: 128,
            max_topic_length: 4096,
            max_publish_wait: Duration::from_secs(1),
            packet_timeout: Duration::from_secs(30),
            max_subscriptions_per_client: 1000,
            max_retained_messages: 10_000,
            max_retained_bytes: 64 << 20,
            max_offline_sessions: 1000,
            max_offline_queued_bytes: 64 << 20,
        }
    }
}

/// The documented defaults: one TCP listener on 127.0.0.1:1883, no users, no ACL.
impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listeners: vec![ListenerConfig {
                name: "127.0.0.1:1883".into(),
                bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
                kind: ListenerKind::Tcp,
                allow_anonymous: None,
            }],
            max_connections: 10_000,
            max_packet_size: 1 << 20,
            receive_maximum: 100,
            max_queued_messages: 10_000,
            max_session_expiry: Duration::from_secs(7 * 86_400),
            topic_alias_maximum: 64,
            max_keepalive: None,
            allow_anonymous: true,
            users: Vec::new(),
            acl: Vec::new(),
            client_id_binding: ClientIdBinding::Strict,
            sys_interval: Duration::from_secs(10),
            limits: BrokerLimits::default(),
        }
    }
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
    /// Overrides the broker's `allow_anonymous` for this listener.
    pub allow_anonymous: Option<bool>,
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
    /// Password: plain text resolved from `password`, `password_file` or `${ENV}`, or a hash from the broker's
    /// mosquitto-format `password_file`.
    pub password: Password,
}

/// A user's secret as the broker checks it (see `broker::auth::verify`).
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// The password itself.
    Plain(String),
    /// mosquitto_passwd `$6$`: SHA-512 of the password followed by the salt.
    Sha512 {
        /// Salt.
        salt: Vec<u8>,
        /// Digest (64 bytes).
        hash: Vec<u8>,
    },
    /// mosquitto_passwd `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// Iteration count.
        iterations: u32,
        /// Salt.
        salt: Vec<u8>,
        /// Derived key (64 bytes).
        hash: Vec<u8>,
    },
}

/// Secrets stay out of logs and error messages.
impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Password::Plain(_) => "Plain(..)",
            Password::Sha512 { .. } => "Sha512(..)",
            Password::Pbkdf2Sha512 { .. } => "Pbkdf2Sha512(..)",
        })
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Password {
        Password::Plain(s.to_string())
    }
}

impl From<String> for Password {
    fn from(s: String) -> Password {
        Password::Plain(s)
    }
}

/// Whether a client id stays with the user whose session holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIdBinding {
    /// A client id in use by a session (connected or persisted) of another user is refused (CONNACK 0x85 /
    /// 3.1.1 return code 2). The same user takes over as usual.
    #[default]
    Strict,
    /// Anyone may take over any client id (mosquitto's behaviour).
    Off,
}

/// Who an ACL rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclWho {
    /// Every client, anonymous ones included (YAML rules without `user`, `pattern` lines).
    Everyone,
    /// Clients without a user name (`topic` lines before any `user` line in an `acl_file`).
    Anonymous,
    /// One user.
    User(String),
}

/// One ACL rule. `%u` and `%c` in the filter stand for the user name and client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// Who the rule is for.
    pub who: AclWho,
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
    pub protocol: crate::mqtt::Protocol,
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
    /// The API token, when configured (`api.token`, usually `${VAR}`). Default: none, the token is read from
    /// (or generated into) `token_file`.
    pub token: Option<String>,
    /// Where the generated token is kept (mode 0600). Default `api-token` next to the store's database (the
    /// state directory).
    pub token_file: PathBuf,
    /// Whether reads (GET) need the token too. Default false: state-changing requests always need it.
    pub auth_reads: bool,
    /// Host names (or addresses) accepted in the `Host` header besides the loopback names and the listen
    /// address: what a browser connects to when the API is reached by name. Default none.
    pub hosts: Vec<String>,
    /// Serve the API over TLS. Default: plain HTTP.
    pub tls: Option<TlsServerConfig>,
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
    /// The mapping rules of each point, in the same order as `adapter.points`. Shared like `adapter.points`.
    pub points: Arc<[PointRules]>,
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
    pub topic: Arc<TopicTemplate>,
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
