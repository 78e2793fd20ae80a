//! The validated, typed configuration. Everything here has passed `validate()`: the rest of the daemon never
//! re-checks it. The raw (serde) structs and the validation of the gateway, API, logging and device sections
//! live beside this file; the broker, store and bridge sections (raw form, validation, typed form) live next
//! to those components (`broker/config.rs`, `store/config.rs`, `bridge/config.rs`), their typed forms
//! re-exported here.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use fieldbridge_sdk::DeviceConfig;

use crate::mqtt::QoS;

pub use crate::bridge::config::{
    BridgeConfig, BridgeScheme, BridgeUrl, ForwardRule, SubscribeRule,
};
pub use crate::broker::config::{
    AclAccess, AclRule, AclWho, BrokerConfig, BrokerLimits, ClientIdBinding, ListenerConfig,
    ListenerKind, Password, UserConfig,
};
pub use crate::net::TlsServerConfig;
pub use crate::store::config::{Durability, StorageConfig, Synchronous, WhenFull};

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
