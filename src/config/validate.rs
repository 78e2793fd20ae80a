//! Raw structs -> typed [`Config`]: the whole load (the main file, device maps, the sections in order), the
//! gateway, API, logging and device sections (defaults, cross-key rules, duplicates, topic collisions) and the
//! adapters' own validation, with every problem collected (nothing stops at the first). The broker, store and
//! bridge sections are validated by their components (`Cx::broker`, `Cx::storage`, `Cx::bridge` in their
//! `config.rs`); [`Load`] adds the device sections' state to the shared [`Cx`].
//!
//! When a section (or a device, or a point) cannot be read at all, its errors are recorded and validation goes
//! on with the rest; the typed value built for it from defaults is never returned, because any error makes
//! the whole load fail.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::config::{unknown_name_message, EnvLookup, Spanned, POINT_CORE_KEYS};
use fieldbridge_sdk::{
    Adapter, ConfigError, ConfigNode, DeviceConfig, Mark, NodeKind, PointConfig,
};

use super::glob;
use super::raw::*;
use super::topics;
use super::types::*;
use super::{AdapterRegistry, ConfigErrors};
use crate::confkit::{io_msg, place, Cx};
use crate::mqtt::QoS;

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

/// One load: the generic state ([`Cx`], which the components' validation works on) and what only the
/// device sections need. It dereferences to its `Cx`, so `self.at(…)` and `self.broker(…)` read the same here.
pub(super) struct Load<'a> {
    cx: Cx<'a>,
    /// False once the gateway id was rejected: topics built from it are not checked again (one error, not one
    /// per point).
    gateway_ok: bool,
    /// `{gateway}/{device}/{point}`, parsed once and shared by every point that uses it (issue 15: a copy per
    /// point was 256 bytes of heap each).
    default_topic: Option<Arc<TopicTemplate>>,
}

impl<'a> std::ops::Deref for Load<'a> {
    type Target = Cx<'a>;
    fn deref(&self) -> &Cx<'a> {
        &self.cx
    }
}

impl std::ops::DerefMut for Load<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.cx
    }
}

impl<'a> Load<'a> {
    pub(super) fn new(base: PathBuf, env: EnvLookup<'a>) -> Self {
        Load {
            cx: Cx::new(base, env),
            gateway_ok: true,
            default_topic: topics::point_template("{gateway}/{device}/{point}", &[])
                .ok()
                .map(Arc::new),
        }
    }

    /// Runs the whole load.
    pub(super) fn load(
        mut self,
        path: &Path,
        registry: Option<&dyn AdapterRegistry>,
    ) -> Result<(Config, Vec<Box<dyn Adapter>>), ConfigErrors> {
        let Some(root) = self.read_yaml(path, None) else {
            return Err(ConfigErrors::new(self.cx.errors));
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
            return Err(ConfigErrors::new(self.cx.errors));
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
