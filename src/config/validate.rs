//! Raw structs -> typed [`Config`]: defaults, cross-key rules, file checks, duplicates, topic collisions and
//! the adapters' own validation, with every problem collected (nothing stops at the first).
//!
//! When a section (or a device, or a point) cannot be read at all, its errors are recorded and validation goes
//! on with the rest; the typed value built for it from defaults is never returned, because any error makes
//! the whole load fail.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::config::{
    format_duration, parse_yaml_with, unknown_name_message, EnvLookup, ParseOptions, Spanned,
    POINT_CORE_KEYS,
};
use fieldbridge_sdk::{
    Adapter, ConfigError, ConfigNode, DeviceConfig, Mark, NodeKind, PointConfig,
};
use serde::de::DeserializeOwned;

use super::glob;
use super::raw::*;
use super::topics;
use super::types::*;
use super::{AdapterRegistry, ConfigErrors};
use crate::mqtt::{Protocol, QoS};

/// The main file's top-level keys, in the order the annotated example documents them.
const MAIN_KEYS: &[&str] = &[
    "gateway",
    "broker",
    "storage",
    "bridges",
    "api",
    "logging",
    "device_maps",
    "devices",
];

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

/// The collected state of one load.
pub(super) struct Cx<'a> {
    errors: Vec<ConfigError>,
    /// Positions that already have a parse-level error (an unset `${VAR}`, an unsupported tag): later errors at
    /// the same place are consequences, not news.
    noted: HashSet<Mark>,
    base: PathBuf,
    env: EnvLookup<'a>,
    /// Warnings (never a reason to refuse the load).
    warnings: Vec<ConfigError>,
    /// False once the gateway id was rejected: topics built from it are not checked again (one error, not one
    /// per point).
    gateway_ok: bool,
    /// `{gateway}/{device}/{point}`, parsed once and shared by every point that uses it (issue 15: a copy per
    /// point was 256 bytes of heap each).
    default_topic: Option<Arc<TopicTemplate>>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(base: PathBuf, env: EnvLookup<'a>) -> Self {
        Cx {
            errors: Vec::new(),
            noted: HashSet::new(),
            base,
            env,
            gateway_ok: true,
            warnings: Vec::new(),
            default_topic: topics::point_template("{gateway}/{device}/{point}", &[])
                .ok()
                .map(Arc::new),
        }
    }

    fn push(&mut self, e: ConfigError) {
        if !self.noted.contains(&e.mark) {
            self.errors.push(e);
        }
    }

    fn extend(&mut self, errors: impl IntoIterator<Item = ConfigError>) {
        for e in errors {
            self.push(e);
        }
    }

    fn at<T>(&mut self, s: &Spanned<T>, message: impl Into<String>) {
        self.push(s.error(message));
    }

    fn at_node(&mut self, n: &ConfigNode, message: impl Into<String>) {
        self.push(n.error(message));
    }

    /// Reads an optional section: its defaults when absent, the part that could be read (bad optional keys
    /// left at their defaults, their errors recorded) when present.
    fn read<T: DeserializeOwned + Default>(&mut self, node: Option<&ConfigNode>) -> Option<T> {
        match node {
            None => Some(T::default()),
            Some(n) => self.read_req(n),
        }
    }

    /// Reads a node; `None` when not even a partial value could be built (errors recorded either way), so the
    /// checks that follow still run on whatever was readable.
    fn read_req<T: DeserializeOwned>(&mut self, node: &ConfigNode) -> Option<T> {
        let (value, errors) = node.deserialize_partial::<T>();
        self.extend(errors);
        value
    }

    /// Reads and parses one YAML file. `reference` is where a device map was named (its errors go there).
    fn read_yaml(
        &mut self,
        path: &Path,
        reference: Option<&Spanned<String>>,
    ) -> Option<ConfigNode> {
        let file = path.display().to_string();
        let text = match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    self.push(ConfigError {
                        mark: Mark::file(file.as_str()),
                        path: String::new(),
                        message: "the file is not valid UTF-8".into(),
                    });
                    return None;
                }
            },
            Err(e) => {
                match reference {
                    Some(r) => self.at(
                        r,
                        format!("cannot read device map `{file}`: {}", io_msg(&e)),
                    ),
                    None => self.push(ConfigError {
                        mark: Mark::file(file.as_str()),
                        path: String::new(),
                        message: format!("cannot read the configuration file: {}", io_msg(&e)),
                    }),
                }
                return None;
            }
        };
        let env = self.env;
        let options = ParseOptions { env: Some(env) };
        match parse_yaml_with(&file, &text, &options) {
            Ok(parsed) => {
                for e in parsed.errors {
                    self.noted.insert(e.mark.clone());
                    self.errors.push(e);
                }
                Some(parsed.root)
            }
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        glob::resolve(&self.base, p)
    }

    /// A path that must name an existing file (TLS material): checked now, so a typo fails `check`, not the
    /// first TLS handshake.
    fn existing_file(&mut self, s: &Spanned<String>, what: &str) -> PathBuf {
        let p = self.resolve(&s.value);
        if !p.is_file() {
            let msg = if p.as_os_str() == s.value.as_str() {
                format!("{what} `{}` not found", s.value)
            } else {
                format!(
                    "{what} `{}` not found (looked for `{}`)",
                    s.value,
                    p.display()
                )
            };
            self.at(s, msg);
        }
        p
    }

    /// `password` or `password_file` (never both); the file's trailing newline is not part of the secret.
    fn secret(
        &mut self,
        value: Option<Spanned<String>>,
        file: Option<Spanned<String>>,
        key: &str,
    ) -> Option<String> {
        match (value, file) {
            (Some(_), Some(f)) => {
                self.at(&f, format!("set either `{key}` or `{key}_file`, not both"));
                None
            }
            (Some(v), None) => Some(v.value),
            (None, Some(f)) => {
                let p = self.resolve(&f.value);
                match std::fs::read_to_string(&p) {
                    Ok(s) => {
                        let s = s.trim_end_matches(['\n', '\r']).to_string();
                        if s.is_empty() {
                            self.at(&f, format!("{key} file `{}` is empty", p.display()));
                        }
                        Some(s)
                    }
                    Err(e) => {
                        self.at(
                            &f,
                            format!("cannot read {key} file `{}`: {}", p.display(), io_msg(&e)),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }

    /// Runs the whole load.
    pub(super) fn load(
        mut self,
        path: &Path,
        registry: Option<&dyn AdapterRegistry>,
    ) -> Result<(Config, Vec<Box<dyn Adapter>>), ConfigErrors> {
        let Some(root) = self.read_yaml(path, None) else {
            return Err(ConfigErrors::new(self.errors));
        };
        let sections = self.sections(&root);
        let get = |k: &str| sections.get(k).copied();

        let gateway = self.gateway(get("gateway"));
        let broker = self.broker(get("broker"), &gateway.id);
        let storage = self.storage(get("storage"), &gateway.id);
        let api = self.api(get("api"), &storage);
        let logging = self.logging(get("logging"));

        let mut bridges = Vec::new();
        if let Some(list) = get("bridges").and_then(|n| self.list(n)) {
            let mut names: HashMap<String, Mark> = HashMap::new();
            for node in list {
                if let Some((b, name)) = self.bridge(node, &gateway.id) {
                    if let Some(first) = names.get(&b.name) {
                        self.at(
                            &name,
                            format!(
                                "duplicate bridge name `{}` (first defined at {})",
                                b.name,
                                place(first, &name.mark)
                            ),
                        );
                    } else {
                        names.insert(b.name.clone(), name.mark.clone());
                    }
                    bridges.push(b);
                }
            }
        }

        // Devices: inline ones first, then each device map in the order listed (glob matches sorted). A map's
        // devices are validated as soon as its file is read, and its YAML tree dropped before the next file:
        // holding every map's tree until the end doubled the daemon's heap at start-up (about 1 KB a point),
        // memory the allocator then kept.
        let mut devices = Vec::new();
        if let Some(list) = get("devices").and_then(|n| self.list(n)) {
            for node in list {
                if let Some(d) = self.device(node, &gateway.id) {
                    devices.push(d);
                }
            }
        }
        if let Some(maps) = get("device_maps") {
            let maps = maps.clone();
            self.device_maps(&maps, &gateway.id, &mut devices);
        }
        let devices: Vec<DeviceOut> = devices.into_iter().filter(|d| d.enabled).collect();
        self.cross_device_checks(&devices, &gateway);

        let mut adapters = Vec::new();
        if let Some(registry) = registry {
            let protocols = registry.protocols();
            for d in &devices {
                match registry.factory(&d.protocol.value) {
                    None => self.at(
                        &d.protocol,
                        unknown_name_message("protocol", &d.protocol.value, &protocols),
                    ),
                    Some(factory) => match factory.build(&d.spec.adapter) {
                        Ok(a) => adapters.push(a),
                        Err(errors) => self.extend(errors),
                    },
                }
            }
        }

        if !self.errors.is_empty() {
            return Err(ConfigErrors::new(self.errors));
        }
        Ok((
            Config {
                path: path.to_path_buf(),
                gateway,
                broker,
                storage,
                bridges,
                api,
                logging,
                warnings: {
                    let mut w = std::mem::take(&mut self.warnings);
                    w.sort();
                    w
                },
                devices: devices.into_iter().map(|d| d.spec).collect(),
            },
            adapters,
        ))
    }

    /// The main file's sections by key; unknown keys are reported, `x-` keys (anchor holders) skipped.
    fn sections<'n>(&mut self, root: &'n ConfigNode) -> HashMap<&'static str, &'n ConfigNode> {
        let mut out = HashMap::new();
        let entries = match &root.kind {
            NodeKind::Null => return out,
            NodeKind::Map(e) => e,
            _ => {
                self.at_node(
                    root,
                    format!(
                        "expected a mapping of sections (gateway, broker, …), found {}",
                        root.type_name()
                    ),
                );
                return out;
            }
        };
        for (k, v) in entries {
            let key = k.as_str().unwrap_or("");
            if key.starts_with("x-") {
                continue;
            }
            match MAIN_KEYS.iter().find(|m| **m == key) {
                Some(m) => {
                    if !v.is_null() {
                        out.insert(*m, v);
                    }
                }
                None => self.at_node(k, unknown_name_message("key", &key_name(k), MAIN_KEYS)),
            }
        }
        out
    }

    /// A list node's items (null: none).
    fn list<'n>(&mut self, node: &'n ConfigNode) -> Option<&'n [ConfigNode]> {
        match &node.kind {
            NodeKind::Seq(items) => Some(items),
            NodeKind::Null => None,
            _ => {
                self.at_node(node, format!("expected a list, found {}", node.type_name()));
                None
            }
        }
    }

    fn gateway(&mut self, node: Option<&ConfigNode>) -> GatewayConfig {
        let raw: RawGateway = self.read(node).unwrap_or_default();
        let id = match raw.id {
            Some(id) => {
                if let Err(m) = topics::check_name("gateway id", &id.value, true) {
                    self.at(&id, m);
                    self.gateway_ok = false;
                }
                id.value
            }
            None => default_gateway_id(),
        };
        let status_topic = self
            .gateway_topic(
                raw.status_topic.as_ref(),
                "{gateway}/status",
                &[("gateway", &id)],
            )
            .unwrap_or_default();
        GatewayConfig { id, status_topic }
    }

    /// Expands a topic template whose placeholders are all known now and checks the result is a topic name.
    fn gateway_topic(
        &mut self,
        given: Option<&Spanned<String>>,
        default: &str,
        known: &[(&str, &str)],
    ) -> Option<String> {
        let text = given.map_or(default, |s| s.value.as_str());
        match topics::expand(text, known).and_then(|t| topics::check_topic_name(&t).map(|()| t)) {
            Ok(t) => Some(t),
            Err(m) => {
                // A default only fails through the gateway id, which is reported already.
                if let Some(s) = given {
                    self.at(s, m);
                }
                None
            }
        }
    }

    fn bind(&mut self, s: &Spanned<String>, default_port: u16) -> Option<SocketAddr> {
        let text = s.value.trim();
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        if let Ok(ip) = text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Some(SocketAddr::new(ip, default_port));
        }
        if let Some(port) = text.strip_prefix("localhost:") {
            if let Ok(p) = port.parse::<u16>() {
                return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
            }
        }
        if text == "localhost" {
            return Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                default_port,
            ));
        }
        self.at(
            s,
            format!("invalid bind address `{text}`: expected `IP:port`, like `127.0.0.1:{default_port}`, `0.0.0.0:{default_port}` or `[::]:{default_port}`"),
        );
        None
    }

    fn broker(&mut self, node: Option<&ConfigNode>, gw: &str) -> BrokerConfig {
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

    /// Reads a file named by `s` whole, refusing one larger than `max` bytes or not UTF-8.
    fn read_bounded(
        &mut self,
        s: &Spanned<String>,
        what: &str,
        max: u64,
    ) -> Option<(String, String)> {
        use std::io::Read;
        let p = self.resolve(&s.value);
        let shown = p.display().to_string();
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&p).and_then(|f| f.take(max + 1).read_to_end(&mut bytes));
        if let Err(e) = read {
            self.at(s, format!("cannot read {what} `{shown}`: {}", io_msg(&e)));
            return None;
        }
        if bytes.len() as u64 > max {
            self.at(s, format!("{what} `{shown}` is larger than {max} bytes"));
            return None;
        }
        match String::from_utf8(bytes) {
            Ok(t) => Some((shown, t)),
            Err(_) => {
                self.at(s, format!("{what} `{shown}` is not valid UTF-8"));
                None
            }
        }
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

    fn tls(&mut self, t: &Spanned<RawTls>) -> TlsServerConfig {
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

    fn storage(&mut self, node: Option<&ConfigNode>, gw: &str) -> StorageConfig {
        let raw: RawStorage = self.read(node).unwrap_or_default();
        let path = raw.path.as_ref().map_or_else(
            || PathBuf::from("/var/lib/fieldbridge/fieldbridge.db"),
            |p| self.resolve(&p.value),
        );
        let commit_interval = match &raw.commit_interval {
            None => Duration::from_millis(20),
            Some(s) if s.value.0.is_zero() => {
                self.at(
                    s,
                    "commit_interval must be longer than 0 (it is the group-commit window)",
                );
                Duration::from_millis(20)
            }
            Some(s) => s.value.0,
        };
        let commit_rows = positive(self, raw.commit_rows.as_ref(), 10_000, "commit_rows");
        let max_bytes = match &raw.max_bytes {
            None => 1 << 30,
            Some(s) if s.value.0 == 0 => {
                self.at(s, "max_bytes must be larger than 0");
                1 << 30
            }
            Some(s) => s.value.0,
        };
        let max_age = match &raw.max_age {
            Some(s) if s.value.0.is_zero() => {
                self.at(
                    s,
                    "max_age must be longer than 0 (leave it out to keep history until max_bytes)",
                );
                None
            }
            other => other.as_ref().map(|s| s.value.0),
        };
        let record = self.filters(raw.record.as_deref().unwrap_or_default(), gw);
        StorageConfig {
            path,
            commit_interval,
            commit_rows,
            synchronous: match raw.synchronous.unwrap_or(SynchronousRaw::Full) {
                SynchronousRaw::Full => Synchronous::Full,
                SynchronousRaw::Normal => Synchronous::Normal,
            },
            durability: match raw.durability.unwrap_or(DurabilityRaw::Strict) {
                DurabilityRaw::Strict => Durability::Strict,
                DurabilityRaw::Relaxed => Durability::Relaxed,
            },
            max_bytes,
            max_age,
            when_full: match raw.when_full.unwrap_or(WhenFullRaw::DropOldest) {
                WhenFullRaw::DropOldest => WhenFull::DropOldest,
                WhenFullRaw::DropNewest => WhenFull::DropNewest,
                WhenFullRaw::Block => WhenFull::Block,
            },
            record,
        }
    }

    fn filters(&mut self, list: &[Spanned<String>], gw: &str) -> Vec<String> {
        let mut out = Vec::new();
        for f in list {
            let filter = topics::expand_gateway(&f.value, gw);
            match topics::check_filter(&filter) {
                Ok(()) => out.push(filter),
                Err(m) => self.at(f, m),
            }
        }
        out
    }

    fn api(&mut self, node: Option<&ConfigNode>, storage: &StorageConfig) -> ApiConfig {
        let raw: RawApi = self.read(node).unwrap_or_default();
        let bind = match &raw.bind {
            None => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)),
            Some(b) => self.bind(b, 8080),
        };
        let token = raw.token.as_ref().and_then(|t| {
            let v = t.value.trim();
            if v.len() < 16 || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                self.at(
                    t,
                    "the token must be 16 to 256 printable ASCII characters (no spaces)",
                );
                None
            } else {
                Some(v.to_string())
            }
        });
        let token_file = match &raw.token_file {
            Some(f) => self.resolve(&f.value),
            None => storage
                .path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("api-token"),
        };
        let mut hosts = Vec::new();
        for h in raw.hosts.iter().flatten() {
            let v = h.value.trim();
            if v.is_empty() || v.len() > 253 || v.contains(['/', ' ', '@', '?', '#']) {
                self.at(
                    h,
                    "expected a host name or an IP address, without scheme or path",
                );
            } else {
                hosts.push(v.to_ascii_lowercase());
            }
        }
        let tls = raw.tls.as_ref().map(|t| self.tls(t));
        ApiConfig {
            bind: if raw.enabled == Some(false) {
                None
            } else {
                bind
            },
            token,
            token_file,
            auth_reads: raw.auth_reads.unwrap_or(false),
            hosts,
            tls,
        }
    }

    fn logging(&mut self, node: Option<&ConfigNode>) -> LoggingConfig {
        let raw: RawLogging = self.read(node).unwrap_or_default();
        let Some(level) = raw.level else {
            return LoggingConfig {
                level: "info".into(),
            };
        };
        const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
        for directive in level
            .value
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            let lvl = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
            let bare = !directive.contains('=');
            if LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
                continue;
            }
            // A bare word is a target name to tracing, so `infoo` would silently mean "everything from a module
            // named infoo": treat a near-miss of a level as the typo it is.
            if !bare || fieldbridge_sdk::config::did_you_mean(lvl, LEVELS.iter().copied()).is_some()
            {
                self.at(&level, unknown_name_message("log level", lvl, LEVELS));
                return LoggingConfig {
                    level: "info".into(),
                };
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level.value) {
            self.at(&level, format!("invalid log filter `{}`: {e}", level.value));
        }
        LoggingConfig { level: level.value }
    }

    fn bridge(&mut self, node: &ConfigNode, gw: &str) -> Option<(BridgeConfig, Spanned<String>)> {
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
        let url = match topics::parse_bridge_url(&raw.url.value) {
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
            None => 100,
            Some(s) if s.value == 0 => {
                self.at(s, "inflight must be at least 1");
                100
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
            None => Duration::from_secs(30),
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
            None => Duration::from_secs(3600),
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
            .map_or(Duration::from_secs(1), |s| s.value.0);
        let reconnect_max = raw
            .reconnect_max
            .as_ref()
            .map_or(Duration::from_secs(60), |s| s.value.0);
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
            None => vec![ForwardRule {
                filter: format!("{gw}/#"),
                topic: "{topic}".into(),
                qos: None,
                retain: true,
            }],
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

    /// Reads every device map named in `device_maps`, returning their device nodes in order.
    /// Reads the device maps `node` lists and validates their devices into `out`, one file at a time.
    fn device_maps(&mut self, node: &ConfigNode, gw: &str, out: &mut Vec<DeviceOut>) {
        let Some(entries) = self.read_req::<Vec<Spanned<String>>>(node) else {
            return;
        };
        let mut seen: HashSet<PathBuf> = HashSet::new();
        for entry in &entries {
            let files = if glob::is_glob(&entry.value) {
                match glob::glob(&self.base, &entry.value) {
                    Ok(files) => files,
                    Err(e) => {
                        self.at(
                            entry,
                            format!("cannot list device maps `{}`: {}", entry.value, io_msg(&e)),
                        );
                        continue;
                    }
                }
            } else {
                vec![self.resolve(&entry.value)]
            };
            for file in files {
                // A file named twice (say `devices/a.yaml` and `devices/*.yaml`) is loaded once, not reported as
                // a copy of its own devices.
                if !seen.insert(file.clone()) {
                    continue;
                }
                let Some(root) = self.read_yaml(&file, Some(entry)) else {
                    continue;
                };
                let root_stripped = strip_x_keys(&root);
                if root_stripped.is_null() {
                    continue;
                }
                drop(root);
                let Some(map) = self.read_req::<RawDeviceMap>(&root_stripped) else {
                    continue;
                };
                drop(root_stripped);
                for node in map.devices.unwrap_or_default() {
                    if let Some(d) = self.device(&node, gw) {
                        out.push(d);
                    }
                }
            }
        }
    }

    fn device(&mut self, node: &ConfigNode, gw: &str) -> Option<DeviceOut> {
        let raw: RawDevice = self.read_req(node)?;
        let mut names_ok = self.gateway_ok;
        if let Err(m) = topics::check_name("device name", &raw.name.value, false) {
            self.at(&raw.name, m);
            names_ok = false;
        }
        let (labels, labels_ok) = self.labels(raw.labels.as_ref());
        names_ok &= labels_ok;
        let label_names: Vec<&str> = labels.keys().map(String::as_str).collect();

        // Device-level defaults for its points. A bad device template is reported once, here.
        let device_topic = match &raw.topic {
            None => Some(None),
            Some(t) => match topics::point_template(&t.value, &label_names) {
                Ok(tpl) => Some(Some((Arc::new(tpl), t.mark.clone(), t.path.clone()))),
                Err(m) => {
                    self.at(t, m);
                    None
                }
            },
        };
        if let Some(p) = &raw.publish {
            if p.value == PublishRaw::OnChangeOrEvery(0) {
                self.at(p, "`on_change_or_every` needs a count of at least 1");
            }
        }
        let poll_interval = self.nonzero(
            raw.poll_interval.as_ref(),
            Duration::from_secs(1),
            "poll_interval",
        );
        let timeout = self.nonzero(raw.timeout.as_ref(), Duration::from_secs(1), "timeout");

        let mut point_names: HashMap<String, Mark> = HashMap::new();
        let mut points = Vec::new();
        let mut rules = Vec::new();
        let mut topics_out = Vec::new();
        for pnode in raw.points.as_deref().unwrap_or_default() {
            let Some((pc, pr, topic)) =
                self.point(pnode, &raw, device_topic.as_ref(), &labels, gw, names_ok)
            else {
                continue;
            };
            if let Some(first) = point_names.get(pc.name.as_ref()) {
                let e = pnode
                    .get("name")
                    .map_or_else(|| pnode.error(""), |n| n.error(""));
                self.push(ConfigError {
                    message: format!(
                        "duplicate point name `{}` in device `{}` (first defined at {})",
                        pc.name,
                        raw.name.value,
                        place(first, &e.mark)
                    ),
                    ..e
                });
                continue;
            }
            point_names.insert(
                pc.name.to_string(),
                pnode
                    .get("name")
                    .map_or(pnode.mark.clone(), |n| n.mark.clone()),
            );
            if let Some(t) = topic {
                topics_out.push(t);
            }
            points.push(pc);
            rules.push(pr);
        }

        let connection = raw.connection.clone().unwrap_or_else(|| {
            ConfigNode::null(node.mark.clone(), child_path(&node.path, "connection"))
        });
        Some(DeviceOut {
            enabled: raw.enabled.unwrap_or(true),
            name: raw.name.clone(),
            protocol: raw.protocol.clone(),
            topics: topics_out,
            spec: DeviceSpec {
                adapter: DeviceConfig {
                    name: Arc::from(raw.name.value.as_str()),
                    protocol: raw.protocol.value.clone(),
                    connection,
                    poll_interval,
                    timeout,
                    retries: raw.retries.unwrap_or(2),
                    points: points.into(),
                },
                labels,
                points: rules.into(),
            },
        })
    }

    fn nonzero(
        &mut self,
        s: Option<&Spanned<fieldbridge_sdk::config::HumanDuration>>,
        default: Duration,
        key: &str,
    ) -> Duration {
        match s {
            None => default,
            Some(s) if s.value.0.is_zero() => {
                self.at(s, format!("{key} must be longer than 0"));
                default
            }
            Some(s) => s.value.0,
        }
    }

    /// `labels:` — names usable as `{name}` in topic templates; values are text (numbers are taken as written).
    /// The flag is false when a value was rejected: it is kept (so templates naming it do not also fail) but
    /// topics rendered from it are not checked again.
    fn labels(&mut self, node: Option<&ConfigNode>) -> (BTreeMap<String, String>, bool) {
        let mut out = BTreeMap::new();
        let mut ok = true;
        let Some(node) = node else { return (out, ok) };
        let entries = match &node.kind {
            NodeKind::Null => return (out, ok),
            NodeKind::Map(e) => e,
            _ => {
                self.at_node(
                    node,
                    format!(
                        "expected a mapping of label names to values, found {}",
                        node.type_name()
                    ),
                );
                return (out, false);
            }
        };
        for (k, v) in entries {
            let name = key_name(k);
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                self.at_node(k, format!("label name `{name}` must start with a letter or `_` and hold only letters, digits, `_` and `-` (it is used as `{{{name}}}`)"));
                continue;
            }
            if ["gateway", "device", "point"].contains(&name.as_str()) {
                self.at_node(
                    k,
                    format!("label `{name}` would hide the built-in `{{{name}}}` placeholder"),
                );
                continue;
            }
            let value = match &v.kind {
                NodeKind::String(s) => s.clone(),
                NodeKind::Int(i) => i.to_string(),
                NodeKind::Float(f) => f.to_string(),
                NodeKind::Bool(b) => b.to_string(),
                _ => {
                    self.at_node(
                        v,
                        format!("expected a label value (text), found {}", v.type_name()),
                    );
                    continue;
                }
            };
            if let Some(c) = value
                .chars()
                .find(|c| matches!(c, '+' | '#') || c.is_control())
            {
                self.at_node(v, format!("label value `{value}` contains `{c}`; label values are used in topics, which cannot hold wildcards"));
                ok = false;
            }
            out.insert(name, value);
        }
        (out, ok)
    }

    /// One point: the core's keys become [`PointRules`], the rest the adapter's `spec`.
    #[allow(clippy::type_complexity)]
    fn point(
        &mut self,
        node: &ConfigNode,
        dev: &RawDevice,
        device_topic: Option<&Option<(Arc<TopicTemplate>, Mark, String)>>,
        labels: &BTreeMap<String, String>,
        gw: &str,
        names_ok: bool,
    ) -> Option<(PointConfig, PointRules, Option<TopicUse>)> {
        let NodeKind::Map(entries) = &node.kind else {
            self.at_node(
                node,
                format!(
                    "expected a mapping (a point with at least a `name`), found {}",
                    node.type_name()
                ),
            );
            return None;
        };
        let (core, mut spec): (Vec<_>, Vec<_>) = entries
            .iter()
            .cloned()
            .partition(|(k, _)| k.as_str().is_some_and(|k| POINT_CORE_KEYS.contains(&k)));
        // The adapter's part is kept for the device's lifetime (adapters are rebuilt from it): without the
        // growth slack, 160 bytes per key instead of 640 for a one-key spec (heaptrack: 9.6 MB at 15,000
        // points).
        spec.shrink_to_fit();
        let core = ConfigNode {
            kind: NodeKind::Map(core),
            mark: node.mark.clone(),
            path: node.path.clone(),
        };
        let spec = ConfigNode {
            kind: NodeKind::Map(spec),
            mark: node.mark.clone(),
            path: node.path.clone(),
        };
        let raw: RawPoint = self.read_req(&core)?;
        let mut names_ok = names_ok;
        if let Err(m) = topics::check_name("point name", &raw.name.value, false) {
            self.at(&raw.name, m);
            names_ok = false;
        }

        let (scale, offset, deadband, publish) = self.point_values(&raw, dev);

        let label_names: Vec<&str> = labels.keys().map(String::as_str).collect();
        // (template, where it was written) — `None` when the applicable template is broken (already reported).
        let topic: Option<(Arc<TopicTemplate>, Mark, String)> = match &raw.topic {
            Some(t) => match topics::point_template(&t.value, &label_names) {
                Ok(tpl) => Some((Arc::new(tpl), t.mark.clone(), t.path.clone())),
                Err(m) => {
                    self.at(t, m);
                    None
                }
            },
            None => match device_topic {
                Some(Some(t)) => Some(t.clone()),
                Some(None) => {
                    let tpl = self.default_topic.clone()?;
                    Some((tpl, raw.name.mark.clone(), raw.name.path.clone()))
                }
                None => None,
            },
        };
        let mut topic_use = None;
        if let (Some((tpl, mark, path)), true) = (&topic, names_ok) {
            let rendered = topics::render(tpl, gw, &dev.name.value, &raw.name.value, labels);
            match topics::check_topic_name(&rendered) {
                Ok(()) => {
                    topic_use = Some(TopicUse {
                        topic: rendered,
                        mark: mark.clone(),
                        path: path.clone(),
                        point: format!("{}.{}", dev.name.value, raw.name.value),
                    })
                }
                Err(m) => self.push(ConfigError {
                    mark: mark.clone(),
                    path: path.clone(),
                    message: m,
                }),
            }
        }

        let poll_interval = match &raw.poll_interval {
            Some(s) if s.value.0.is_zero() => {
                self.at(s, "poll_interval must be longer than 0");
                None
            }
            other => other.as_ref().map(|s| s.value.0),
        };
        let writable = raw.writable.unwrap_or(false);
        let name: Arc<str> = Arc::from(raw.name.value.as_str());
        let rules = PointRules {
            name: name.clone(),
            scale,
            offset,
            deadband,
            publish,
            unit: raw.unit.clone(),
            topic: topic
                .map(|t| t.0)
                .unwrap_or_else(|| Arc::new(TopicTemplate { parts: Vec::new() })),
            payload: match raw.payload.or(dev.payload).unwrap_or(PayloadRaw::Json) {
                PayloadRaw::Json => PayloadFormat::Json,
                PayloadRaw::Value => PayloadFormat::Value,
            },
            qos: raw.qos.or(dev.qos).map_or(QoS::AtMostOnce, |q| q.0),
            retain: raw.retain.or(dev.retain).unwrap_or(false),
            writable,
            record: raw.record.or(dev.record).unwrap_or(true),
        };
        Some((
            PointConfig {
                name,
                writable,
                poll_interval,
                spec,
            },
            rules,
            topic_use,
        ))
    }

    /// A point's `scale`, `offset`, `deadband` and `publish` mode (the device's when the point has none).
    fn point_values(
        &mut self,
        raw: &RawPoint,
        dev: &RawDevice,
    ) -> (f64, f64, Option<Deadband>, PublishMode) {
        let scale = match &raw.scale {
            None => 1.0,
            Some(s) if !s.value.is_finite() || s.value == 0.0 => {
                self.at(s, "scale must be a finite number other than 0 (0 would publish every reading as 0)");
                1.0
            }
            Some(s) => s.value,
        };
        let offset = match &raw.offset {
            None => 0.0,
            Some(s) if !s.value.is_finite() => {
                self.at(s, "offset must be a finite number");
                0.0
            }
            Some(s) => s.value,
        };
        let deadband = raw.deadband.as_ref().and_then(|d| {
            let (v, kind) = match d.value {
                DeadbandRaw::Absolute(v) => (v, Deadband::Absolute(v)),
                DeadbandRaw::Percent(v) => (v, Deadband::Percent(v)),
            };
            if !v.is_finite() || v < 0.0 {
                self.at(d, "deadband must be a positive number or percentage");
                None
            } else {
                Some(kind)
            }
        });
        let publish_raw = raw.publish.as_ref().or(dev.publish.as_ref());
        if let Some(p) = &raw.publish {
            if p.value == PublishRaw::OnChangeOrEvery(0) {
                self.at(p, "`on_change_or_every` needs a count of at least 1");
            }
        }
        let publish = match publish_raw.map(|p| p.value) {
            Some(PublishRaw::EveryPoll) => PublishMode::EveryPoll,
            Some(PublishRaw::OnChange) => PublishMode::OnChange,
            Some(PublishRaw::OnChangeOrEvery(n)) => PublishMode::OnChangeOrEvery(n.max(1)),
            // A deadband only means something when publishing on change.
            None if deadband.is_some() => PublishMode::OnChange,
            None => PublishMode::EveryPoll,
        };
        if let (Some(d), Some(p)) = (&raw.deadband, publish_raw) {
            if p.value == PublishRaw::EveryPoll {
                self.at(d, format!(
                    "`deadband` has no effect with `publish: every_poll` (set at {}); use `on_change` or `{{on_change_or_every: N}}`",
                    place(&p.mark, &d.mark)
                ));
            }
        }
        (scale, offset, deadband, publish)
    }

    /// Duplicate device names, and published topics that collide with each other or with the gateway's own
    /// topics (status, write-back).
    fn cross_device_checks(&mut self, devices: &[DeviceOut], gateway: &GatewayConfig) {
        let mut names: HashMap<&str, &Mark> = HashMap::new();
        for d in devices {
            match names.get(d.name.value.as_str()) {
                Some(first) => {
                    let msg = format!(
                        "duplicate device name `{}` (first defined at {})",
                        d.name.value,
                        place(first, &d.name.mark)
                    );
                    self.at(&d.name, msg);
                }
                None => {
                    names.insert(&d.name.value, &d.name.mark);
                }
            }
        }
        let gw = &gateway.id;
        let mut reserved: HashMap<String, String> = HashMap::new();
        reserved.insert(
            gateway.status_topic.clone(),
            "the gateway's status topic".into(),
        );
        for d in devices {
            let dev = &d.name.value;
            reserved.insert(
                format!("{gw}/{dev}/status"),
                format!("the status topic of device `{dev}`"),
            );
            for p in d.spec.adapter.points.iter() {
                let pt = &p.name;
                reserved.insert(
                    format!("{gw}/{dev}/{pt}/set"),
                    format!("the write topic of point `{dev}.{pt}`"),
                );
                reserved.insert(
                    format!("{gw}/{dev}/{pt}/set/result"),
                    format!("the write-result topic of point `{dev}.{pt}`"),
                );
            }
        }
        let mut used: HashMap<&str, &TopicUse> = HashMap::new();
        for d in devices {
            for t in &d.topics {
                if let Some(what) = reserved.get(&t.topic) {
                    let msg = format!("point `{}` would publish on `{}`, which is {what}; rename the point or give it a `topic`", t.point, t.topic);
                    self.push(ConfigError {
                        mark: t.mark.clone(),
                        path: t.path.clone(),
                        message: msg,
                    });
                } else if let Some(first) = used.get(t.topic.as_str()) {
                    let msg = format!(
                        "point `{}` would publish on `{}`, like point `{}` (at {})",
                        t.point,
                        t.topic,
                        first.point,
                        place(&first.mark, &t.mark)
                    );
                    self.push(ConfigError {
                        mark: t.mark.clone(),
                        path: t.path.clone(),
                        message: msg,
                    });
                } else {
                    used.insert(&t.topic, t);
                }
            }
        }
    }
}

/// A validated device, with what the cross-device checks need.
struct DeviceOut {
    enabled: bool,
    name: Spanned<String>,
    protocol: Spanned<String>,
    topics: Vec<TopicUse>,
    spec: DeviceSpec,
}

/// A point's rendered topic and where its template was written.
struct TopicUse {
    topic: String,
    mark: Mark,
    path: String,
    point: String,
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
        }
    }
}

fn positive(cx: &mut Cx<'_>, s: Option<&Spanned<usize>>, default: usize, key: &str) -> usize {
    match s {
        None => default,
        Some(s) if s.value == 0 => {
            cx.at(s, format!("{key} must be at least 1"));
            default
        }
        Some(s) => s.value,
    }
}

/// The root without its `x-…` keys, which exist only to hold YAML anchors.
fn strip_x_keys(root: &ConfigNode) -> ConfigNode {
    match &root.kind {
        NodeKind::Map(entries) => ConfigNode {
            kind: NodeKind::Map(
                entries
                    .iter()
                    .filter(|(k, _)| !k.as_str().is_some_and(|k| k.starts_with("x-")))
                    .cloned()
                    .collect(),
            ),
            mark: root.mark.clone(),
            path: root.path.clone(),
        },
        _ => root.clone(),
    }
}

fn key_name(k: &ConfigNode) -> String {
    match &k.kind {
        NodeKind::String(s) => s.clone(),
        NodeKind::Int(i) => i.to_string(),
        NodeKind::Bool(b) => b.to_string(),
        NodeKind::Float(f) => f.to_string(),
        _ => "~".into(),
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Where `first` is, seen from `here`: `line 8, column 15` in the same file, the full `file:line:col` across
/// files.
fn place(first: &Mark, here: &Mark) -> String {
    if first.file == here.file {
        format!("line {}, column {}", first.line, first.col)
    } else {
        first.to_string()
    }
}

/// An I/O error in a few words, without the `(os error 2)` noise.
fn io_msg(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "file not found".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "it is a directory".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

/// The host name, the default gateway id (what an integrator would name the box anyway).
fn default_gateway_id() -> String {
    let candidates = [
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        std::fs::read_to_string("/etc/hostname").ok(),
        std::env::var("HOSTNAME").ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|s| s.trim().to_string())
        .find(|s| topics::check_name("gateway id", s, true).is_ok())
        .unwrap_or_else(|| "fieldbridge".to_string())
}
