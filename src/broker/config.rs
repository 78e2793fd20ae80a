//! The broker's configuration (`broker:`): the typed form the broker runs with, and the raw form as written.
//! `config::validate` reads one into the other (with file:line:col for every error).
use std::net::SocketAddr;
use std::time::Duration;

use fieldbridge_sdk::config::{HumanDuration, HumanSize, Spanned};
use serde::Deserialize;

use crate::net::TlsServerConfig;

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

// The section as written (see `config/raw.rs`); `config/validate.rs` turns it into the typed form above.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBroker {
    pub listeners: Option<Spanned<Vec<Spanned<RawListener>>>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_packet_size: Option<Spanned<HumanSize>>,
    pub receive_maximum: Option<Spanned<u16>>,
    pub max_queued_messages: Option<Spanned<usize>>,
    pub max_session_expiry: Option<Spanned<HumanDuration>>,
    pub topic_alias_maximum: Option<u16>,
    pub max_keepalive: Option<Spanned<HumanDuration>>,
    pub allow_anonymous: Option<bool>,
    pub users: Option<Vec<Spanned<RawUser>>>,
    pub acl: Option<Vec<Spanned<RawAcl>>>,
    /// mosquitto_passwd file (hashed passwords), beside `users`.
    pub password_file: Option<Spanned<String>>,
    /// mosquitto ACL file, after `acl`.
    pub acl_file: Option<Spanned<String>>,
    pub client_id_binding: Option<ClientIdBindingRaw>,
    pub sys_interval: Option<HumanDuration>,
    pub max_topic_levels: Option<Spanned<usize>>,
    pub max_topic_length: Option<Spanned<usize>>,
    pub max_publish_wait: Option<Spanned<HumanDuration>>,
    pub packet_timeout: Option<Spanned<HumanDuration>>,
    pub max_subscriptions_per_client: Option<Spanned<usize>>,
    pub max_retained_messages: Option<Spanned<usize>>,
    pub max_retained_bytes: Option<Spanned<HumanSize>>,
    pub max_offline_sessions: Option<Spanned<usize>>,
    pub max_offline_queued_bytes: Option<Spanned<HumanSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Option<Spanned<String>>,
    pub bind: Spanned<String>,
    pub protocol: Option<ListenerProtocol>,
    pub tls: Option<Spanned<RawTls>>,
    pub path: Option<Spanned<String>>,
    pub allow_anonymous: Option<bool>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClientIdBindingRaw {
    Strict,
    Off,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ListenerProtocol {
    Tcp,
    Tls,
    Ws,
    Wss,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
    pub require_client_cert: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUser {
    pub username: Spanned<String>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
}

/// `{allow: publish, topic: "…", user: bob}` or `{deny: all, topic: "#"}`: exactly one of `allow`/`deny`,
/// whose value says what it covers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcl {
    pub user: Option<Spanned<String>>,
    pub topic: Spanned<String>,
    pub allow: Option<AclAccessRaw>,
    pub deny: Option<AclAccessRaw>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AclAccessRaw {
    Publish,
    Subscribe,
    All,
}
