//! A bridge's configuration (one entry of `bridges:`): the typed form the bridge runs with, and the raw form as
//! written, and the validation that reads one into the other (`impl Cx` below: url, TLS files, secrets,
//! timers, forward and subscribe rules, with file:line:col for every error); `config` calls `Cx::bridge` for
//! each entry of `bridges:` and checks that names are unique.
use std::path::PathBuf;
use std::time::Duration;

use fieldbridge_sdk::config::{format_duration, unknown_name_message, HumanDuration, Spanned};
use fieldbridge_sdk::{ConfigNode, NodeKind};
use serde::Deserialize;

use crate::confkit::{topics, Cx};
use crate::mqtt::yaml::{MqttVersion, QosRaw};
use crate::mqtt::{Protocol, QoS};

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

impl BridgeConfig {
    /// A bridge named `name` to `url` with every option at its documented default, as the configuration
    /// reads a `bridges:` entry that gives only `name` and `url` (gateway `gateway`): MQTT 5, client id
    /// `{gateway}-{name}`, keepalive 30 s, a persistent session of 1 hour, reconnect 1 s .. 60 s, 100 in
    /// flight, no rate limit, the whole gateway tree forwarded as is, no subscribe rule, birth and will on
    /// `{gateway}/status`. Code that builds a bridge (tests, benchmarks) starts here and changes what it needs,
    /// so a new option only touches this file.
    pub fn new(name: &str, url: BridgeUrl, gateway: &str) -> Self {
        BridgeConfig {
            name: name.to_string(),
            url,
            protocol: Protocol::V5,
            client_id: format!("{gateway}-{name}"),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            keepalive: DEFAULT_KEEPALIVE,
            clean_start: false,
            session_expiry: DEFAULT_SESSION_EXPIRY,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            inflight: DEFAULT_INFLIGHT,
            rate_limit: None,
            forward: vec![ForwardRule::whole_tree(gateway)],
            subscribe: Vec::new(),
            status_topic: format!("{gateway}/status"),
        }
    }
}

/// Defaults of the options [`BridgeConfig::new`] and the validation both use.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(3600);
const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(60);
/// Large enough for a far upstream: the drain of a backlog is at most `inflight` per round trip (100 in
/// flight over a 20 ms round trip drained at 4,100 msg/s against mosquitto's bridge's 105,000); 10,000 carry
/// 100,000 msg/s over 100 ms. An MQTT 5 upstream's Receive Maximum still caps it.
const DEFAULT_INFLIGHT: u16 = 10_000;

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

impl BridgeUrl {
    /// `mqtt://{host}:{port}`.
    pub fn mqtt(host: &str, port: u16) -> Self {
        BridgeUrl {
            scheme: BridgeScheme::Mqtt,
            host: host.to_string(),
            port,
            path: String::new(),
        }
    }
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

impl ForwardRule {
    /// The default when a bridge has no `forward:`: the whole gateway tree, topics unchanged, QoS 1.
    pub fn whole_tree(gateway: &str) -> Self {
        ForwardRule {
            filter: format!("{gateway}/#"),
            topic: "{topic}".into(),
            qos: None,
            retain: true,
        }
    }
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

// The section as written; the `impl Cx` block below turns it into the typed form above.

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

impl Cx<'_> {
    pub(crate) fn bridge(
        &mut self,
        node: &ConfigNode,
        gw: &str,
    ) -> Option<(BridgeConfig, Spanned<String>)> {
        let mut raw: RawBridge = self.read_req(node)?;
        let name = raw.name.clone();
        if name.value.is_empty()
            || !name
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.at(&name, format!("bridge name `{}` may only hold letters, digits, `-`, `_` and `.` (it names the bridge's cursor in the store)", name.value));
        }
        let url = match parse_bridge_url(&raw.url.value) {
            Ok(u) => Some(u),
            Err(m) => {
                self.at(&raw.url, m);
                None
            }
        };
        let (ca_file, client_cert) = self.bridge_tls(&raw, url.as_ref());
        let password = self.secret(raw.password.take(), raw.password_file.take(), "password");
        let client_id = self
            .gateway_topic_like(
                raw.client_id.as_ref(),
                "{gateway}-{name}",
                &[("gateway", gw), ("name", &name.value)],
            )
            .unwrap_or_default();
        let (keepalive, session_expiry, reconnect_min, reconnect_max) = self.bridge_timers(&raw);
        let inflight = match &raw.inflight {
            None => DEFAULT_INFLIGHT,
            Some(s) if s.value == 0 => {
                self.at(s, "inflight must be at least 1");
                DEFAULT_INFLIGHT
            }
            Some(s) => s.value,
        };
        let rate_limit = match &raw.rate_limit {
            Some(s) if s.value == 0 => {
                self.at(
                    s,
                    "rate_limit must be at least 1 message per second (leave it out for no limit)",
                );
                None
            }
            other => other.as_ref().map(|s| s.value),
        };
        let (forward, subscribe) = self.bridge_rules(&raw, gw);
        let status_topic = self
            .gateway_topic(
                raw.status_topic.as_ref(),
                "{gateway}/status",
                &[("gateway", gw)],
            )
            .unwrap_or_default();
        let url = url?;
        Some((
            BridgeConfig {
                name: name.value.clone(),
                url,
                protocol: raw.protocol.map_or(Protocol::V5, |p| p.value.0),
                client_id,
                username: raw.username,
                password,
                ca_file,
                client_cert,
                keepalive,
                clean_start: raw.clean_start.unwrap_or(false),
                session_expiry,
                reconnect_min,
                reconnect_max,
                inflight,
                rate_limit,
                forward,
                subscribe,
                status_topic,
            },
            name,
        ))
    }

    /// A bridge's `ca_file`, `client_cert` and `client_key`: existing files, on a TLS url only.
    fn bridge_tls(
        &mut self,
        raw: &RawBridge,
        url: Option<&BridgeUrl>,
    ) -> (Option<PathBuf>, Option<(PathBuf, PathBuf)>) {
        let tls = url.map(|u| matches!(u.scheme, BridgeScheme::Mqtts | BridgeScheme::Wss));
        // TLS files on a plain url: that one error says it all (no "not found", no "needs client_key").
        let plain = tls == Some(false);
        let tls_only = |cx: &mut Self, s: &Option<Spanned<String>>, key: &str, what: &str| {
            s.as_ref().map(|s| {
                if plain {
                    cx.at(
                        s,
                        format!("`{key}` needs a TLS url (`mqtts://` or `wss://`)"),
                    );
                    cx.resolve(&s.value)
                } else {
                    cx.existing_file(s, what)
                }
            })
        };
        let ca_file = tls_only(self, &raw.ca_file, "ca_file", "CA file");
        let cert = tls_only(self, &raw.client_cert, "client_cert", "certificate file");
        let key = tls_only(self, &raw.client_key, "client_key", "key file");
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            _ if plain => None,
            (Some(_), None) => {
                if let Some(c) = &raw.client_cert {
                    self.at(c, "`client_cert` needs `client_key` too");
                }
                None
            }
            (None, Some(_)) => {
                if let Some(k) = &raw.client_key {
                    self.at(k, "`client_key` needs `client_cert` too");
                }
                None
            }
            (None, None) => None,
        };
        (ca_file, client_cert)
    }

    /// A bridge's `keepalive`, `session_expiry`, `reconnect_min` and `reconnect_max`, within what MQTT can
    /// express and in order.
    fn bridge_timers(&mut self, raw: &RawBridge) -> (Duration, Duration, Duration, Duration) {
        let keepalive = match &raw.keepalive {
            None => DEFAULT_KEEPALIVE,
            Some(s) => {
                if s.value.0.as_secs() > 65_535 || s.value.0.subsec_nanos() != 0 {
                    self.at(
                        s,
                        "keepalive must be a whole number of seconds up to 65535s (18h12m15s)",
                    );
                }
                s.value.0
            }
        };
        let session_expiry = match &raw.session_expiry {
            None => DEFAULT_SESSION_EXPIRY,
            Some(s) => {
                if s.value.0.as_secs() > u32::MAX as u64 {
                    self.at(
                        s,
                        "session_expiry is too long for MQTT (at most 4294967295s)",
                    );
                }
                s.value.0
            }
        };
        let reconnect_min = raw
            .reconnect_min
            .as_ref()
            .map_or(DEFAULT_RECONNECT_MIN, |s| s.value.0);
        let reconnect_max = raw
            .reconnect_max
            .as_ref()
            .map_or(DEFAULT_RECONNECT_MAX, |s| s.value.0);
        if let Some(s) = raw.reconnect_min.as_ref().filter(|s| s.value.0.is_zero()) {
            self.at(
                s,
                "reconnect_min must be longer than 0 (a broken upstream would be hammered)",
            );
        }
        if reconnect_max < reconnect_min {
            let msg = format!(
                "reconnect_max ({}) is shorter than reconnect_min ({})",
                format_duration(reconnect_max),
                format_duration(reconnect_min)
            );
            match (&raw.reconnect_max, &raw.reconnect_min) {
                (Some(s), _) => self.at(s, msg),
                (None, Some(s)) => self.at(s, msg),
                (None, None) => {}
            }
        }
        (keepalive, session_expiry, reconnect_min, reconnect_max)
    }

    /// A bridge's `forward` rules (default: the whole gateway tree) and `subscribe` rules.
    fn bridge_rules(
        &mut self,
        raw: &RawBridge,
        gw: &str,
    ) -> (Vec<ForwardRule>, Vec<SubscribeRule>) {
        let forward = match &raw.forward {
            None => vec![ForwardRule::whole_tree(gw)],
            Some(rules) => rules
                .iter()
                .filter_map(|r| self.forward_rule(r, gw))
                .collect(),
        };
        let subscribe: Vec<SubscribeRule> = raw
            .subscribe
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| self.subscribe_rule(r, gw))
            .collect();
        (forward, subscribe)
    }

    /// Like `gateway_topic`, for strings that are not topics (client ids): expanded, non-empty.
    fn gateway_topic_like(
        &mut self,
        given: Option<&Spanned<String>>,
        default: &str,
        known: &[(&str, &str)],
    ) -> Option<String> {
        let text = given.map_or(default, |s| s.value.as_str());
        match topics::expand(text, known) {
            Ok(t) => Some(t),
            Err(m) => {
                if let Some(s) = given {
                    self.at(s, m.replace("topic template", "template"));
                }
                None
            }
        }
    }

    /// A bridge rule as a mapping: a bare string is shorthand for `{filter: <string>}`.
    fn rule_parts(node: &ConfigNode) -> ConfigNode {
        if let NodeKind::String(_) = node.kind {
            let key = ConfigNode {
                kind: NodeKind::String("filter".into()),
                mark: node.mark.clone(),
                path: format!("{}.filter", node.path),
            };
            // The value keeps its own path: the user wrote `forward[0]`, not `forward[0].filter`.
            return ConfigNode {
                kind: NodeKind::Map(vec![(key, node.clone())]),
                mark: node.mark.clone(),
                path: node.path.clone(),
            };
        }
        node.clone()
    }

    /// The part forward and subscribe rules share: the filter (`{gateway}` expanded, valid) and the target
    /// template (default `{topic}`; `{1}`.. within the filter's wildcards).
    fn rule_filter_topic(
        &mut self,
        filter: &Spanned<String>,
        topic: Option<&Spanned<String>>,
        gw: &str,
    ) -> (String, String) {
        let expanded = topics::expand_gateway(&filter.value, gw);
        if let Err(m) = topics::check_filter(&expanded) {
            self.at(filter, m);
        }
        let target = topic.map_or_else(
            || "{topic}".to_string(),
            |t| topics::expand_gateway(&t.value, gw),
        );
        if let (Some(t), Err(m)) = (
            topic,
            topics::check_rule_template(&target, topics::wildcard_count(&expanded)),
        ) {
            self.at(t, m);
        }
        (expanded, target)
    }

    fn forward_rule(&mut self, node: &ConfigNode, gw: &str) -> Option<ForwardRule> {
        let raw: RawForward = self.read_req(&Self::rule_parts(node))?;
        let (filter, topic) = self.rule_filter_topic(&raw.filter, raw.topic.as_ref(), gw);
        Some(ForwardRule {
            filter,
            topic,
            qos: raw.qos.map(|q| q.0),
            retain: raw.retain.unwrap_or(true),
        })
    }

    fn subscribe_rule(&mut self, node: &ConfigNode, gw: &str) -> Option<SubscribeRule> {
        let raw: RawSubscribe = self.read_req(&Self::rule_parts(node))?;
        let (filter, topic) = self.rule_filter_topic(&raw.filter, raw.topic.as_ref(), gw);
        Some(SubscribeRule {
            filter,
            topic,
            qos: raw.qos.map_or(QoS::AtLeastOnce, |q| q.0),
        })
    }
}

/// Parses `mqtt://host[:port]`, `mqtts://…`, `ws://host[:port][/path]`, `wss://…`.
pub(crate) fn parse_bridge_url(url: &str) -> Result<BridgeUrl, String> {
    let bad = |why: &str| Err(format!("invalid bridge url `{url}`: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("expected `mqtt://`, `mqtts://`, `ws://` or `wss://` followed by a host");
    };
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" | "tcp" => (BridgeScheme::Mqtt, 1883),
        "mqtts" | "ssl" | "tls" => (BridgeScheme::Mqtts, 8883),
        "ws" => (BridgeScheme::Ws, 80),
        "wss" => (BridgeScheme::Wss, 443),
        other => {
            return Err(format!("invalid bridge url `{url}`: ")
                + &unknown_name_message("scheme", other, &["mqtt", "mqtts", "ws", "wss"]))
        }
    };
    if rest.contains(['?', '#']) {
        return bad("query strings and fragments are not supported");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return bad("put credentials in `username` and `password`, not in the url");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return bad("unbalanced `[` in an IPv6 address");
        };
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return bad("expected `:port` after `]`"),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("the host is missing");
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return bad("the host contains spaces");
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return bad("port 0 is not a port to connect to"),
            Ok(p) => p,
            Err(_) => return bad("the port must be a number from 1 to 65535"),
        },
    };
    let path = match scheme {
        BridgeScheme::Ws | BridgeScheme::Wss => {
            if path.is_empty() {
                "/mqtt".to_string()
            } else {
                path.to_string()
            }
        }
        BridgeScheme::Mqtt | BridgeScheme::Mqtts => {
            if !path.is_empty() && path != "/" {
                return bad("a path is only meaningful with `ws://` or `wss://`");
            }
            String::new()
        }
    };
    Ok(BridgeUrl {
        scheme,
        host: host.to_string(),
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_bridge_url("mqtts://broker.example.com").unwrap();
        assert_eq!(
            (u.scheme, u.port, u.path.as_str()),
            (BridgeScheme::Mqtts, 8883, "")
        );
        let u = parse_bridge_url("wss://h:8084").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8084, "/mqtt"));
        let u = parse_bridge_url("ws://[::1]/ws").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 80, "/ws")
        );
        assert_eq!(parse_bridge_url("mqtt://h").unwrap().port, 1883);
        assert_eq!(parse_bridge_url("wss://h").unwrap().port, 443);
        assert!(parse_bridge_url("http://h")
            .unwrap_err()
            .contains("unknown scheme `http`"));
        assert!(parse_bridge_url("mqtt://h:99999").is_err());
        assert!(parse_bridge_url("mqtt://u:p@h").is_err());
        assert!(parse_bridge_url("mqtt://h/path").is_err());
        assert!(parse_bridge_url("broker.example.com").is_err());
        assert!(parse_bridge_url("mqtt://:1883").is_err());
    }
}
