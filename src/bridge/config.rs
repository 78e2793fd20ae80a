//! A bridge's configuration (one entry of `bridges:`): the typed form the bridge runs with, and the raw form as
//! written. `config::validate` reads one into the other (with file:line:col for every error).
use std::path::PathBuf;
use std::time::Duration;

use fieldbridge_sdk::config::{HumanDuration, Spanned};
use fieldbridge_sdk::ConfigNode;
use serde::Deserialize;

use crate::mqtt::yaml::{MqttVersion, QosRaw};
use crate::mqtt::QoS;

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

// The section as written (see `config/raw.rs`); `config/validate.rs` turns it into the typed form above.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBridge {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub protocol: Option<Spanned<MqttVersion>>,
    pub client_id: Option<Spanned<String>>,
    pub username: Option<String>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    pub keepalive: Option<Spanned<HumanDuration>>,
    pub clean_start: Option<bool>,
    pub session_expiry: Option<Spanned<HumanDuration>>,
    pub reconnect_min: Option<Spanned<HumanDuration>>,
    pub reconnect_max: Option<Spanned<HumanDuration>>,
    pub inflight: Option<Spanned<u16>>,
    pub rate_limit: Option<Spanned<u32>>,
    pub forward: Option<Vec<ConfigNode>>,
    pub subscribe: Option<Vec<ConfigNode>>,
    pub status_topic: Option<Spanned<String>>,
}

/// A forward rule written out; a bare string is the same as `{filter: <string>}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForward {
    pub filter: Spanned<String>,
    pub topic: Option<Spanned<String>>,
    pub qos: Option<QosRaw>,
    pub retain: Option<bool>,
}

/// A subscribe rule written out; a bare string is the same as `{filter: <string>}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubscribe {
    pub filter: Spanned<String>,
    pub topic: Option<Spanned<String>>,
    pub qos: Option<QosRaw>,
}
