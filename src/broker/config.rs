//! The broker's configuration (`broker:`): the typed form the broker runs with, and the raw form as written.
//! The validation that reads one into the other (`impl Cx` below: defaults, ranges, listeners, users, ACL,
//! the mosquitto password and ACL files, with file:line:col for every error) is here too; `config` calls
//! `Cx::broker` for the section.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fieldbridge_sdk::config::{
    format_duration, unknown_name_message, HumanDuration, HumanSize, Spanned,
};
use fieldbridge_sdk::{ConfigError, ConfigNode, Mark};
use serde::Deserialize;

use crate::confkit::{place, positive, topics, Cx};
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
    /// Bytes queued for one connected client (beside `max_queued_messages`; at least one message always fits):
    /// a full queue makes publishers wait, as a full count does. Default 16 MiB.
    pub max_queued_bytes: u64,
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
            max_queued_bytes: super::session::DEFAULT_MAX_QUEUE_BYTES,
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

// The section as written; the `impl Cx` block below turns it into the typed form above.

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
    pub max_queued_bytes: Option<Spanned<HumanSize>>,
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

/// Largest packet MQTT can express (the remaining-length field's maximum plus a small header).
const MQTT_MAX_PACKET: u64 = 268_435_455;

/// Default listener/API ports when `bind` gives only an address.
fn default_port(kind: ListenerProtocol) -> u16 {
    match kind {
        ListenerProtocol::Tcp => 1883,
        ListenerProtocol::Tls => 8883,
        ListenerProtocol::Ws => 8083,
        ListenerProtocol::Wss => 8084,
    }
}

impl Cx<'_> {
    pub(crate) fn broker(&mut self, node: Option<&ConfigNode>, gw: &str) -> BrokerConfig {
        let mut raw: RawBroker = self.read(node).unwrap_or_default();
        let listeners = self.broker_listeners(raw.listeners.as_ref());

        let max_connections = positive(
            self,
            raw.max_connections.as_ref(),
            10_000,
            "max_connections",
        );
        let (max_packet_size, receive_maximum, max_session_expiry, max_keepalive) =
            self.broker_sizes(&raw);
        let max_queued_messages = raw.max_queued_messages.as_ref().map_or(10_000, |s| s.value);

        let limits = self.broker_limits(&raw);
        let users = self.broker_users(
            raw.users.take().unwrap_or_default(),
            raw.password_file.as_ref(),
        );
        let acl = self.broker_acl(
            raw.acl.take().unwrap_or_default(),
            raw.acl_file.as_ref(),
            &users,
            gw,
        );

        let cfg = BrokerConfig {
            listeners,
            max_connections,
            max_packet_size,
            receive_maximum,
            max_queued_messages,
            max_session_expiry,
            topic_alias_maximum: raw.topic_alias_maximum.unwrap_or(64),
            max_keepalive,
            allow_anonymous: raw.allow_anonymous.unwrap_or(true),
            users,
            acl,
            client_id_binding: match raw.client_id_binding {
                None | Some(ClientIdBindingRaw::Strict) => ClientIdBinding::Strict,
                Some(ClientIdBindingRaw::Off) => ClientIdBinding::Off,
            },
            sys_interval: raw.sys_interval.map_or(Duration::from_secs(10), |d| d.0),
            limits,
        };
        self.anonymous_warnings(&cfg, raw.listeners.as_ref(), node);
        cfg
    }

    /// `broker.listeners`: each listener, with unique addresses and names; one TCP listener on 127.0.0.1:1883
    /// when the key is absent.
    fn broker_listeners(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<RawListener>>>>,
    ) -> Vec<ListenerConfig> {
        let mut listeners = Vec::new();
        match raw {
            None => listeners.push(ListenerConfig {
                name: "127.0.0.1:1883".into(),
                bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883),
                kind: ListenerKind::Tcp,
                allow_anonymous: None,
            }),
            Some(list) if list.value.is_empty() => self.at(
                list,
                "at least one listener is needed (the broker is the heart of the gateway)",
            ),
            Some(list) => {
                let mut names: HashMap<String, Mark> = HashMap::new();
                let mut binds: HashMap<SocketAddr, Mark> = HashMap::new();
                for l in &list.value {
                    let Some(cfg) = self.listener(l) else {
                        continue;
                    };
                    match binds.get(&cfg.bind) {
                        Some(first) => self.at(
                            &l.value.bind,
                            format!(
                                "address {} is already used by the listener at {}",
                                cfg.bind,
                                place(first, &l.value.bind.mark)
                            ),
                        ),
                        None => {
                            binds.insert(cfg.bind, l.value.bind.mark.clone());
                        }
                    }
                    let name_mark = l
                        .value
                        .name
                        .as_ref()
                        .map_or(&l.value.bind.mark, |n| &n.mark)
                        .clone();
                    match names.get(&cfg.name) {
                        Some(first) if l.value.name.is_some() => {
                            let n = l.value.name.as_ref().map(|n| {
                                n.error(format!(
                                    "duplicate listener name `{}` (first defined at {})",
                                    cfg.name,
                                    place(first, &n.mark)
                                ))
                            });
                            if let Some(e) = n {
                                self.push(e);
                            }
                        }
                        Some(_) => {}
                        None => {
                            names.insert(cfg.name.clone(), name_mark);
                        }
                    }
                    listeners.push(cfg);
                }
            }
        }

        listeners
    }

    /// `broker.max_packet_size`, `receive_maximum`, `max_session_expiry` and `max_keepalive`, within what MQTT
    /// can express.
    fn broker_sizes(&mut self, raw: &RawBroker) -> (u32, u16, Duration, Option<u16>) {
        let max_packet_size = match &raw.max_packet_size {
            None => 1 << 20,
            Some(s) if s.value.0 < 16 || s.value.0 > MQTT_MAX_PACKET => {
                self.at(s, format!("max_packet_size must be between 16B and {MQTT_MAX_PACKET}B (the MQTT maximum, about 256MiB), found {}", s.value));
                1 << 20
            }
            Some(s) => s.value.0 as u32,
        };
        let receive_maximum = match &raw.receive_maximum {
            None => 100,
            Some(s) if s.value == 0 => {
                self.at(
                    s,
                    "receive_maximum must be at least 1 (0 is a protocol error in MQTT 5)",
                );
                100
            }
            Some(s) => s.value,
        };
        let max_session_expiry = match &raw.max_session_expiry {
            None => Duration::from_secs(7 * 86_400),
            Some(s) => {
                if s.value.0.as_secs() > u32::MAX as u64 {
                    self.at(
                        s,
                        format!(
                            "max_session_expiry is at most {} (the MQTT maximum)",
                            format_duration(Duration::from_secs(u32::MAX as u64))
                        ),
                    );
                }
                s.value.0
            }
        };
        let max_keepalive = raw.max_keepalive.as_ref().and_then(|s| {
            let secs = s.value.0.as_secs();
            if s.value.0.subsec_nanos() != 0 || secs == 0 || secs > 65_535 {
                self.at(
                    s,
                    "max_keepalive must be a whole number of seconds from 1s to 65535s (18h12m15s)",
                );
                None
            } else {
                Some(secs as u16)
            }
        });

        (
            max_packet_size,
            receive_maximum,
            max_session_expiry,
            max_keepalive,
        )
    }

    /// `broker.users` and `broker.password_file`: unique names, each with a password.
    fn broker_users(
        &mut self,
        raw: Vec<Spanned<RawUser>>,
        password_file: Option<&Spanned<String>>,
    ) -> Vec<UserConfig> {
        let mut users: Vec<UserConfig> = Vec::new();
        let mut user_marks: HashMap<String, Mark> = HashMap::new();
        for u in raw {
            let Spanned {
                value: u,
                mark,
                path,
            } = u;
            if u.username.value.is_empty() {
                self.at(&u.username, "username cannot be empty");
            }
            if let Some(first) = user_marks.get(&u.username.value) {
                self.at(
                    &u.username,
                    format!(
                        "duplicate user `{}` (first defined at {})",
                        u.username.value,
                        place(first, &u.username.mark)
                    ),
                );
                continue;
            }
            user_marks.insert(u.username.value.clone(), u.username.mark.clone());
            let had = u.password.is_some() || u.password_file.is_some();
            let password = self.secret(u.password, u.password_file, "password");
            if !had {
                self.push(ConfigError {
                    mark,
                    path,
                    message: "a user needs `password` or `password_file`".into(),
                });
            }
            users.push(UserConfig {
                username: u.username.value,
                password: Password::Plain(password.unwrap_or_default()),
            });
        }
        if let Some(f) = password_file {
            self.password_file(f, &mut users, &user_marks);
        }

        users
    }

    /// `broker.acl` then `broker.acl_file`, in mosquitto's evaluation order; users must exist.
    fn broker_acl(
        &mut self,
        raw: Vec<Spanned<RawAcl>>,
        acl_file: Option<&Spanned<String>>,
        users: &[UserConfig],
        gw: &str,
    ) -> Vec<AclRule> {
        let mut acl = Vec::new();
        for rule in raw {
            let Spanned {
                value: r,
                mark,
                path,
            } = rule;
            let (access, allow) = match (r.allow, r.deny) {
                (Some(a), None) => (a, true),
                (None, Some(a)) => (a, false),
                (Some(_), Some(_)) => {
                    self.push(ConfigError {
                        mark,
                        path,
                        message: "an ACL rule has `allow` or `deny`, not both".into(),
                    });
                    continue;
                }
                (None, None) => {
                    self.push(ConfigError {
                        mark,
                        path,
                        message: "an ACL rule needs `allow: publish|subscribe|all` or `deny: publish|subscribe|all`".into(),
                    });
                    continue;
                }
            };
            if let Some(user) = &r.user {
                if !users.iter().any(|u| u.username == user.value) {
                    let names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
                    let msg = if names.is_empty() {
                        format!(
                            "unknown user `{}`: no users are defined in `broker.users`",
                            user.value
                        )
                    } else {
                        unknown_name_message("user", &user.value, &names)
                    };
                    self.at(user, msg);
                }
            }
            let filter = topics::expand_gateway(&r.topic.value, gw);
            if let Err(m) = topics::check_filter(&filter) {
                self.at(&r.topic, m);
            }
            acl.push(AclRule {
                who: r.user.map_or(AclWho::Everyone, |u| AclWho::User(u.value)),
                filter,
                access: match access {
                    AclAccessRaw::Publish => AclAccess::Publish,
                    AclAccessRaw::Subscribe => AclAccess::Subscribe,
                    AclAccessRaw::All => AclAccess::All,
                },
                allow,
            });
        }

        if let Some(f) = acl_file {
            if let Some(rules) = self.acl_file(f) {
                acl.extend(rules);
            }
        }

        acl
    }

    fn file_errors(&mut self, file: &str, errors: Vec<crate::broker::auth::FileError>) {
        for e in errors {
            self.push(ConfigError {
                mark: Mark {
                    file: file.into(),
                    line: e.line,
                    col: e.col,
                },
                path: String::new(),
                message: e.message,
            });
        }
    }

    /// `broker.password_file`: mosquitto_passwd users, appended to `users` (a name in both is an error).
    fn password_file(
        &mut self,
        f: &Spanned<String>,
        users: &mut Vec<UserConfig>,
        yaml_users: &HashMap<String, Mark>,
    ) {
        use crate::broker::auth::passwd;
        let Some((file, text)) = self.read_bounded(f, "password file", passwd::MAX_FILE_BYTES)
        else {
            return;
        };
        match passwd::parse(&text) {
            Err(errors) => self.file_errors(&file, errors),
            Ok(entries) => {
                for e in entries {
                    if let Some(first) = yaml_users.get(&e.username) {
                        let mark = Mark {
                            file: file.as_str().into(),
                            line: e.line,
                            col: 1,
                        };
                        let message = format!(
                            "user `{}` is also defined in `broker.users` (at {})",
                            e.username,
                            place(first, &mark)
                        );
                        self.push(ConfigError {
                            mark,
                            path: String::new(),
                            message,
                        });
                        continue;
                    }
                    users.push(UserConfig {
                        username: e.username,
                        password: e.password,
                    });
                }
            }
        }
    }

    /// `broker.acl_file`: mosquitto ACL rules, in mosquitto's evaluation order.
    fn acl_file(&mut self, f: &Spanned<String>) -> Option<Vec<AclRule>> {
        use crate::broker::auth::aclfile;
        let (file, text) = self.read_bounded(f, "ACL file", aclfile::MAX_FILE_BYTES)?;
        match aclfile::parse(&text) {
            Ok(rules) => Some(rules),
            Err(errors) => {
                self.file_errors(&file, errors);
                None
            }
        }
    }

    /// A listener on a non-loopback address that lets anonymous clients in is allowed, but worth a warning.
    fn anonymous_warnings(
        &mut self,
        cfg: &BrokerConfig,
        raw: Option<&Spanned<Vec<Spanned<RawListener>>>>,
        node: Option<&ConfigNode>,
    ) {
        for (i, l) in cfg.listeners.iter().enumerate() {
            if !crate::broker::auth::exposed_to_anonymous(cfg, l) {
                continue;
            }
            let (name, addr) = (&l.name, l.bind);
            // Listeners are validated in order, one each, when the load has no errors (the only case where
            // warnings are shown).
            let at = raw
                .and_then(|list| list.value.get(i))
                .map(|l| (l.mark.clone(), l.path.clone()));
            let (mark, path) = match (at, node) {
                (Some(at), _) => at,
                (None, Some(n)) => (n.mark.clone(), n.path.clone()),
                (None, None) => (Mark::file(""), "broker".to_string()),
            };
            self.warnings.push(ConfigError {
                mark,
                path,
                message: format!(
                    "listener `{name}` on {addr} is reachable from the network and accepts anonymous clients; set `allow_anonymous: false` on it (or on the broker) and define users"
                ),
            });
        }
    }

    fn listener(&mut self, l: &Spanned<RawListener>) -> Option<ListenerConfig> {
        let raw = &l.value;
        let proto = raw.protocol.unwrap_or(ListenerProtocol::Tcp);
        let bind = self.bind(&raw.bind, default_port(proto));
        let tls = match (&raw.tls, proto) {
            (Some(t), ListenerProtocol::Tls | ListenerProtocol::Wss) => Some(self.tls(t)),
            (Some(t), _) => {
                self.at(
                    t,
                    "`tls` is only used with `protocol: tls` or `protocol: wss`",
                );
                None
            }
            (None, ListenerProtocol::Tls | ListenerProtocol::Wss) => {
                self.at(
                    l,
                    "this listener needs a `tls:` section with `cert` and `key`",
                );
                None
            }
            (None, _) => None,
        };
        let path = match (&raw.path, proto) {
            (Some(p), ListenerProtocol::Ws | ListenerProtocol::Wss) => {
                if !p.value.starts_with('/') {
                    self.at(p, "a WebSocket path starts with `/`, like `/mqtt`");
                }
                p.value.clone()
            }
            (Some(p), _) => {
                self.at(
                    p,
                    "`path` is only used with `protocol: ws` or `protocol: wss`",
                );
                String::new()
            }
            (None, _) => "/mqtt".to_string(),
        };
        let bind = bind?;
        let kind = match proto {
            ListenerProtocol::Tcp => ListenerKind::Tcp,
            ListenerProtocol::Ws => ListenerKind::Ws { path },
            ListenerProtocol::Tls => ListenerKind::Tls(tls?),
            ListenerProtocol::Wss => ListenerKind::Wss { path, tls: tls? },
        };
        Some(ListenerConfig {
            name: raw
                .name
                .as_ref()
                .map_or_else(|| bind.to_string(), |n| n.value.clone()),
            bind,
            kind,
            allow_anonymous: raw.allow_anonymous,
        })
    }

    pub(crate) fn tls(&mut self, t: &Spanned<RawTls>) -> TlsServerConfig {
        let cert = self.existing_file(&t.value.cert, "certificate file");
        let key = self.existing_file(&t.value.key, "key file");
        let client_ca = t
            .value
            .client_ca
            .as_ref()
            .map(|c| self.existing_file(c, "CA file"));
        let require = t.value.require_client_cert.as_ref();
        if let (Some(r), None) = (require, &client_ca) {
            if r.value {
                self.at(
                    r,
                    "`require_client_cert` needs `client_ca` to verify client certificates against",
                );
            }
        }
        TlsServerConfig {
            cert,
            key,
            client_ca,
            require_client_cert: require.is_some_and(|r| r.value),
        }
    }
}

impl Cx<'_> {
    fn broker_limits(&mut self, raw: &RawBroker) -> BrokerLimits {
        let d = BrokerLimits::default();
        let mut ranged = |s: Option<&Spanned<usize>>, default: usize, max: usize, key: &str| match s
        {
            None => default,
            Some(s) if s.value == 0 || s.value > max => {
                self.at(
                    s,
                    format!("{key} must be between 1 and {max}, found {}", s.value),
                );
                default
            }
            Some(s) => s.value,
        };
        let max_topic_levels = ranged(
            raw.max_topic_levels.as_ref(),
            d.max_topic_levels,
            1024,
            "max_topic_levels",
        );
        let max_topic_length = ranged(
            raw.max_topic_length.as_ref(),
            d.max_topic_length,
            65_535,
            "max_topic_length",
        );
        let max_subscriptions_per_client = ranged(
            raw.max_subscriptions_per_client.as_ref(),
            d.max_subscriptions_per_client,
            1_000_000,
            "max_subscriptions_per_client",
        );
        let max_retained_messages = ranged(
            raw.max_retained_messages.as_ref(),
            d.max_retained_messages,
            10_000_000,
            "max_retained_messages",
        );
        let max_offline_sessions = ranged(
            raw.max_offline_sessions.as_ref(),
            d.max_offline_sessions,
            1_000_000,
            "max_offline_sessions",
        );
        let mut duration = |s: Option<&Spanned<fieldbridge_sdk::config::HumanDuration>>,
                            default: Duration,
                            key: &str| match s {
            None => default,
            Some(s) if s.value.0.is_zero() || s.value.0 > Duration::from_secs(3600) => {
                self.at(
                    s,
                    format!(
                        "{key} must be more than 0s and at most 1h, found {}",
                        s.value
                    ),
                );
                default
            }
            Some(s) => s.value.0,
        };
        let max_publish_wait = duration(
            raw.max_publish_wait.as_ref(),
            d.max_publish_wait,
            "max_publish_wait",
        );
        let packet_timeout = duration(
            raw.packet_timeout.as_ref(),
            d.packet_timeout,
            "packet_timeout",
        );
        let mut size = |s: Option<&Spanned<fieldbridge_sdk::config::HumanSize>>,
                        default: u64,
                        key: &str| match s {
            None => default,
            Some(s) if s.value.0 == 0 => {
                self.at(s, format!("{key} must be more than 0B"));
                default
            }
            Some(s) => s.value.0,
        };
        let max_retained_bytes = size(
            raw.max_retained_bytes.as_ref(),
            d.max_retained_bytes,
            "max_retained_bytes",
        );
        let max_offline_queued_bytes = size(
            raw.max_offline_queued_bytes.as_ref(),
            d.max_offline_queued_bytes,
            "max_offline_queued_bytes",
        );
        let max_queued_bytes = size(
            raw.max_queued_bytes.as_ref(),
            d.max_queued_bytes,
            "max_queued_bytes",
        );
        BrokerLimits {
            max_topic_levels,
            max_topic_length,
            max_publish_wait,
            packet_timeout,
            max_subscriptions_per_client,
            max_retained_messages,
            max_retained_bytes,
            max_offline_sessions,
            max_offline_queued_bytes,
            max_queued_bytes,
        }
    }
}
