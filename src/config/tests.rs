//! Loader tests. The invalid-configuration fixtures live in `tests/fixtures/config/invalid/`: one YAML file per
//! problem, with a sibling `.expected` holding the exact report `fieldbridge check` prints for it (run from the
//! repository root). `FIELDBRIDGE_BLESS=1 cargo test -p fieldbridge --lib config::tests` rewrites the
//! `.expected` files from the current output (`FIELDBRIDGE_BLESS=<part of a name>` only the matching ones);
//! review the diff before committing it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldbridge_sdk::{
    Adapter, AdapterContext, AdapterError, AdapterFactory, ConfigError, DeviceConfig,
};
use futures::future::BoxFuture;
use serde::Deserialize;

use super::*;
use crate::mqtt::{Protocol, QoS};

/// An adapter that does nothing: the loader only needs something to return.
struct Idle;

impl Adapter for Idle {
    fn run(self: Box<Self>, _ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A strict test protocol, shaped like a real one: `connection: {host, port}`, points `{address, type}`.
struct TestFactory;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TestConnection {
    host: String,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
#[allow(dead_code)]
enum TestType {
    U16,
    I16,
    F32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TestPoint {
    address: u16,
    #[serde(rename = "type", default)]
    kind: Option<TestType>,
}

impl AdapterFactory for TestFactory {
    fn protocol(&self) -> &'static str {
        "test"
    }

    fn build(&self, device: &DeviceConfig) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if let Err(e) = device.connection.deserialize_all::<TestConnection>() {
            errors.extend(e);
        }
        for p in device.points.iter() {
            if let Err(e) = p.spec.deserialize_all::<TestPoint>() {
                errors.extend(e);
            }
        }
        if errors.is_empty() {
            Ok(Box::new(Idle))
        } else {
            Err(errors)
        }
    }
}

/// The adapters of this build (sim, modbus, … by feature) plus the strict `test` protocol, for the unit tests
/// that show adapter errors joining the report without depending on a real adapter's rules.
struct TestRegistry {
    real: crate::app::Registry,
    test: TestFactory,
}

impl AdapterRegistry for TestRegistry {
    fn factory(&self, protocol: &str) -> Option<&dyn AdapterFactory> {
        match protocol {
            "test" => Some(&self.test),
            p => self.real.factory(p),
        }
    }

    fn protocols(&self) -> Vec<&'static str> {
        let mut p = self.real.protocols();
        p.push("test");
        p
    }
}

fn registry() -> TestRegistry {
    TestRegistry {
        real: crate::app::Registry::default(),
        test: TestFactory,
    }
}

fn test_env(name: &str) -> Option<String> {
    match name {
        "FB_TEST_SECRET" => Some("s3cret".into()),
        _ => None,
    }
}

/// A main configuration file holding `text`, in a temporary directory that lives as long as the returned guard.
fn main_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("fb.yaml");
    std::fs::write(&main, text).unwrap();
    (dir, main)
}

fn load_fixture(path: &Path) -> Result<(Config, Vec<Box<dyn Adapter>>), ConfigErrors> {
    let reg = registry();
    let loaded = Loader::new().registry(&reg).env(test_env).load(path);
    loaded
}

/// What `fieldbridge check` does: this build's adapters, nothing else, so each `.expected` is exactly what the
/// command prints for its fixture.
fn check_like_the_cli(path: &Path) -> Result<(Config, Vec<Box<dyn Adapter>>), ConfigErrors> {
    let reg = crate::app::Registry::default();
    let loaded = Loader::new().registry(&reg).env(test_env).load(path);
    loaded
}

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e} (tests run from the package root)"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs every fixture the way `fieldbridge check` does (the fixtures' `${FB_TEST_SECRET}` aside). Core fixtures
/// use `protocol: sim` with the smallest valid sim points; adapter fixtures (`modbus_*.yaml`, …) come from each
/// adapter's author. All need the default features.
#[test]
#[cfg(all(feature = "sim", feature = "modbus"))]
fn invalid_fixtures_report_exactly_the_expected_errors() {
    // `FIELDBRIDGE_BLESS=1` rewrites every `.expected`; `FIELDBRIDGE_BLESS=modbus_` only those of fixtures whose
    // name contains `modbus_` (so one author does not rewrite another's by accident).
    let bless = std::env::var("FIELDBRIDGE_BLESS").ok();
    let mut failures = Vec::new();
    let files = fixtures("tests/fixtures/config/invalid");
    assert!(files.len() >= 30, "fixtures missing: {files:?}");
    for file in &files {
        let expected_path = file.with_extension("expected");
        let actual = match check_like_the_cli(file) {
            Ok(_) => "(loaded without errors)".to_string(),
            Err(e) => e.to_string(),
        };
        if let Some(filter) = &bless {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            if filter == "1" || name.contains(filter.as_str()) {
                std::fs::write(&expected_path, format!("{actual}\n")).unwrap();
                continue;
            }
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| format!("(missing {})", expected_path.display()));
        if expected.trim_end() != actual {
            failures.push(format!(
                "--- {}\nexpected:\n{}\nactual:\n{actual}\n",
                file.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_expected_file_has_its_fixture() {
    for entry in std::fs::read_dir("tests/fixtures/config/invalid").unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "expected") {
            assert!(
                p.with_extension("yaml").is_file(),
                "{} has no fixture",
                p.display()
            );
        }
    }
}

#[test]
fn shipped_configs_load() {
    for name in ["config/broker.yaml"] {
        if let Err(e) = load_fixture(Path::new(name)) {
            panic!("{name}:\n{e}");
        }
    }
    // The annotated file loads the example device maps of every protocol (`devices/*.yaml`); their protocol
    // keys are each adapter's business, so only the core's part is checked here.
    if let Err(e) = Loader::new()
        .env(test_env)
        .load(Path::new("config/fieldbridge.yaml"))
    {
        panic!("config/fieldbridge.yaml:\n{e}");
    }
}

#[test]
#[cfg(feature = "sim")]
fn demo_config_shape() {
    let (c, adapters) = load_fixture(Path::new("config/demo.yaml")).unwrap();
    assert_eq!(c.broker.listeners[0].bind.to_string(), "127.0.0.1:1883");
    assert_eq!(
        c.api.bind.map(|b| b.to_string()).as_deref(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(c.storage.path, PathBuf::from("config/fieldbridge-demo.db"));
    assert!(c.bridges.is_empty());
    assert_eq!(adapters.len(), c.devices.len());
    assert!(c.devices.iter().all(|d| d.adapter.protocol == "sim"));
    assert!(c
        .devices
        .iter()
        .flat_map(|d| d.points.iter())
        .any(|p| p.writable));
    // Points without a `topic:` share one parsed default template, not a copy each (issue 15).
    let defaults: Vec<_> = c.devices.iter().flat_map(|d| d.points.iter()).collect();
    assert!(defaults.len() > 2);
    assert!(defaults
        .iter()
        .all(|p| std::sync::Arc::ptr_eq(&p.topic, &defaults[0].topic)));
}

#[test]
fn broker_config_is_broker_only() {
    let c = load(Path::new("config/broker.yaml")).unwrap();
    assert!(c.devices.is_empty());
    assert!(c.bridges.is_empty());
    assert_eq!(c.broker.listeners.len(), 1);
    assert_eq!(c.broker.listeners[0].bind.to_string(), "127.0.0.1:1883");
    assert!(c.storage.path.is_relative());
}

#[test]
fn minimal_config_gets_every_default() {
    let c = load(Path::new("tests/fixtures/config/valid/minimal.yaml")).unwrap();
    assert!(!c.gateway.id.is_empty());
    assert_eq!(c.gateway.status_topic, format!("{}/status", c.gateway.id));
    let b = &c.broker;
    assert_eq!(b.listeners.len(), 1);
    assert_eq!(b.listeners[0].bind.to_string(), "127.0.0.1:1883");
    assert_eq!(b.listeners[0].kind, ListenerKind::Tcp);
    assert_eq!(b.max_connections, 10_000);
    assert_eq!(b.max_packet_size, 1 << 20);
    assert_eq!(b.receive_maximum, 100);
    assert_eq!(b.max_queued_messages, 10_000);
    assert_eq!(b.max_session_expiry, Duration::from_secs(7 * 86_400));
    assert_eq!(b.topic_alias_maximum, 64);
    assert_eq!(b.max_keepalive, None);
    assert!(b.allow_anonymous);
    assert!(b.users.is_empty() && b.acl.is_empty());
    assert_eq!(b.sys_interval, Duration::from_secs(10));
    let s = &c.storage;
    assert_eq!(s.path, PathBuf::from("/var/lib/fieldbridge/fieldbridge.db"));
    assert_eq!(s.commit_interval, Duration::from_millis(20));
    assert_eq!(s.commit_rows, 10_000);
    assert_eq!(s.synchronous, Synchronous::Full);
    assert_eq!(s.durability, Durability::Strict);
    assert_eq!(s.max_bytes, 1 << 30);
    assert_eq!(s.max_age, None);
    assert_eq!(s.when_full, WhenFull::DropOldest);
    assert!(s.record.is_empty());
    assert_eq!(
        c.api.bind.map(|b| b.to_string()).as_deref(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(c.logging.level, "info");
    assert!(c.bridges.is_empty() && c.devices.is_empty());
}

#[test]
fn full_config_arrives_typed() {
    let (c, adapters) = load_fixture(Path::new("tests/fixtures/config/valid/full.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = Path::new("tests/fixtures/config/valid");
    assert_eq!(c.gateway.id, "site1/gw");
    assert_eq!(c.gateway.status_topic, "site1/gw/state");

    let b = &c.broker;
    assert_eq!(b.listeners[0].name, "plain");
    assert_eq!(b.listeners[0].bind.to_string(), "0.0.0.0:1883");
    assert_eq!(b.listeners[1].name, "127.0.0.1:8883");
    assert_eq!(
        b.listeners[1].kind,
        ListenerKind::Tls(TlsServerConfig {
            cert: dir.join("certs/server.pem"),
            key: dir.join("certs/server.key"),
            client_ca: Some(dir.join("certs/ca.pem")),
            require_client_cert: true,
        })
    );
    assert_eq!(b.listeners[2].kind, ListenerKind::Ws { path: "/ws".into() });
    assert_eq!(b.listeners[2].bind.to_string(), "[::1]:9001");
    assert_eq!(b.max_connections, 50);
    assert_eq!(b.max_packet_size, 256 * 1024);
    assert_eq!(b.receive_maximum, 20);
    assert_eq!(b.max_queued_messages, 500);
    assert_eq!(b.max_session_expiry, Duration::from_secs(86_400));
    assert_eq!(b.topic_alias_maximum, 10);
    assert_eq!(b.max_keepalive, Some(600));
    assert!(!b.allow_anonymous);
    assert_eq!(
        b.users,
        vec![
            UserConfig {
                username: "dashboard".into(),
                password: "s3cret".into()
            },
            UserConfig {
                username: "ops".into(),
                password: "s3cret-from-file".into()
            },
        ]
    );
    assert_eq!(
        b.acl[0],
        AclRule {
            who: AclWho::User("dashboard".into()),
            filter: "site1/gw/#".into(),
            access: AclAccess::Subscribe,
            allow: true
        }
    );
    assert_eq!(
        b.acl[2],
        AclRule {
            who: AclWho::Everyone,
            filter: "#".into(),
            access: AclAccess::All,
            allow: false
        }
    );
    assert_eq!(b.sys_interval, Duration::ZERO);

    let s = &c.storage;
    assert_eq!(s.path, dir.join("data/fb.db"));
    assert_eq!(s.commit_interval, Duration::from_millis(50));
    assert_eq!(s.commit_rows, 500);
    assert_eq!(s.synchronous, Synchronous::Normal);
    assert_eq!(s.durability, Durability::Relaxed);
    assert_eq!(s.max_bytes, 512 << 20);
    assert_eq!(s.max_age, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(s.when_full, WhenFull::Block);
    assert_eq!(
        s.record,
        vec!["site1/gw/+/status".to_string(), "local/#".into()]
    );

    let cloud = &c.bridges[0];
    assert_eq!(
        cloud.url,
        BridgeUrl {
            scheme: BridgeScheme::Mqtts,
            host: "broker.example.com".into(),
            port: 8883,
            path: String::new()
        }
    );
    assert_eq!(cloud.protocol, Protocol::V311);
    assert_eq!(cloud.client_id, "site1/gw-cloud");
    assert_eq!(cloud.username.as_deref(), Some("gw1"));
    assert_eq!(cloud.password.as_deref(), Some("s3cret-from-file"));
    assert_eq!(cloud.ca_file, Some(dir.join("certs/ca.pem")));
    assert_eq!(cloud.client_cert, None);
    assert_eq!(cloud.keepalive, Duration::from_secs(60));
    assert!(cloud.clean_start);
    assert_eq!(cloud.session_expiry, Duration::from_secs(7200));
    assert_eq!(cloud.reconnect_min, Duration::from_millis(500));
    assert_eq!(cloud.reconnect_max, Duration::from_secs(120));
    assert_eq!(cloud.inflight, 10);
    assert_eq!(cloud.rate_limit, Some(200));
    assert_eq!(
        cloud.forward,
        vec![
            ForwardRule {
                filter: "site1/gw/#".into(),
                topic: "{topic}".into(),
                qos: None,
                retain: true
            },
            ForwardRule {
                filter: "local/+/alarm".into(),
                topic: "alarms/site1/gw/{1}".into(),
                qos: Some(QoS::AtLeastOnce),
                retain: false
            },
        ]
    );
    assert_eq!(
        cloud.subscribe,
        vec![SubscribeRule {
            filter: "cmd/site1/gw/+/+/set".into(),
            topic: "site1/gw/{1}/{2}/set".into(),
            qos: QoS::ExactlyOnce
        }]
    );
    assert_eq!(cloud.status_topic, "site1/gw/status");
    let ws = &c.bridges[1];
    assert_eq!(
        (ws.url.scheme, ws.url.port, ws.url.path.as_str()),
        (BridgeScheme::Ws, 8080, "/mqtt")
    );
    assert!(ws.forward.is_empty());
    assert_eq!(ws.protocol, Protocol::V5);
    assert_eq!(ws.keepalive, Duration::from_secs(30));

    assert_eq!(
        c.api.bind.map(|b| b.to_string()).as_deref(),
        Some("0.0.0.0:9090")
    );
    assert_eq!(c.logging.level, "info,fieldbridge::bridge=debug");

    // Inline devices first (the disabled one left out), then the device maps.
    let names: Vec<&str> = c.devices.iter().map(|d| &*d.adapter.name).collect();
    assert_eq!(names, ["boiler", "meter-1", "meter-2"]);
    assert_eq!(adapters.len(), 3);

    let boiler = &c.devices[0];
    assert_eq!(boiler.adapter.protocol, "test");
    assert_eq!(boiler.adapter.poll_interval, Duration::from_millis(250));
    assert_eq!(boiler.adapter.timeout, Duration::from_secs(2));
    assert_eq!(boiler.adapter.retries, 5);
    assert_eq!(
        boiler.adapter.connection.get("host").unwrap().as_str(),
        Some("10.0.0.5")
    );
    assert_eq!(boiler.labels.get("floor").map(String::as_str), Some("2"));
    let t = &boiler.points[0];
    assert_eq!((t.scale, t.offset), (0.1, -5.0));
    assert_eq!(t.deadband, Some(Deadband::Percent(2.0)));
    assert_eq!(t.publish, PublishMode::OnChange);
    assert_eq!(t.unit.as_deref(), Some("°C"));
    assert_eq!(
        t.topic.parts,
        vec![
            TemplatePart::Label("site".into()),
            TemplatePart::Literal("/".into()),
            TemplatePart::Device,
            TemplatePart::Literal("/".into()),
            TemplatePart::Point,
        ]
    );
    assert_eq!(t.qos, QoS::AtLeastOnce);
    assert_eq!(t.payload, PayloadFormat::Json);
    assert!(!t.retain && !t.writable && t.record);
    let sp = &boiler.points[1];
    assert_eq!(sp.publish, PublishMode::OnChangeOrEvery(10));
    assert_eq!(sp.payload, PayloadFormat::Value);
    assert!(sp.retain && sp.writable && !sp.record);
    let spc = &boiler.adapter.points[1];
    assert!(spc.writable);
    assert_eq!(spc.poll_interval, Some(Duration::from_secs(10)));
    // The adapter sees its keys only, with their positions and paths.
    let spec_keys: Vec<&str> = spc
        .spec
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_str().unwrap())
        .collect();
    assert_eq!(spec_keys, ["address"]);
    assert_eq!(
        spc.spec.get("address").unwrap().path,
        "devices[0].points[1].address"
    );
    let temp_spec: Vec<&str> = boiler.adapter.points[0]
        .spec
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_str().unwrap())
        .collect();
    assert_eq!(temp_spec, ["address", "type"]);

    let m1 = &c.devices[1];
    assert_eq!(m1.adapter.poll_interval, Duration::from_secs(5));
    assert_eq!(m1.points[0].deadband, Some(Deadband::Absolute(0.5)));
    assert_eq!(m1.points[0].publish, PublishMode::OnChange);
    assert_eq!(
        m1.adapter.connection.mark.file.as_ref(),
        "tests/fixtures/config/valid/devices/meters.yaml"
    );
    // No connection written: a null node placed at the device, for the adapter's "missing key" errors.
    assert_eq!(c.devices[2].adapter.points.len(), 0);
}

#[test]
fn missing_main_file_is_an_entry() {
    let e = load(Path::new("tests/fixtures/config/no-such-file.yaml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tests/fixtures/config/no-such-file.yaml: cannot read the configuration file: file not found"
    );
}

#[test]
fn env_comes_from_the_loader() {
    let (_dir, main) =
        main_file("gateway:\n  id: ${GW_ID:-fallback}\nbroker:\n  max_connections: ${MAXC}\n");
    let vars: HashMap<&str, &str> = [("MAXC", "7")].into();
    let (c, _) = Loader::new()
        .env(|k| vars.get(k).map(|v| v.to_string()))
        .load(&main)
        .unwrap();
    assert_eq!(c.gateway.id, "fallback");
    assert_eq!(c.broker.max_connections, 7);
}

#[test]
fn unknown_protocols_need_a_registry() {
    // Without a registry, protocol parts are not checked (and no adapters are built).
    let (c, adapters) = Loader::new()
        .env(test_env)
        .load(Path::new(
            "tests/fixtures/config/invalid/unknown_protocol.yaml",
        ))
        .unwrap();
    assert_eq!(c.devices.len(), 1);
    assert!(adapters.is_empty());
}

#[test]
fn errors_display_one_per_line_sorted() {
    let m = |file: &str, line| fieldbridge_sdk::Mark {
        file: file.into(),
        line,
        col: 1,
    };
    let e = ConfigErrors::new(vec![
        ConfigError {
            mark: m("b.yaml", 1),
            path: "x".into(),
            message: "two".into(),
        },
        ConfigError {
            mark: m("a.yaml", 9),
            path: String::new(),
            message: "one".into(),
        },
        ConfigError {
            mark: m("a.yaml", 9),
            path: String::new(),
            message: "one".into(),
        },
    ]);
    assert_eq!(e.len(), 2);
    assert_eq!(e.to_string(), "a.yaml:9:1: one\nb.yaml:1:1: x: two");
}

#[test]
fn adapter_errors_join_the_report() {
    let (_dir, main) = main_file("devices:\n  - name: m\n    protocol: test\n    connection: {host: h, prot: 1}\n    points:\n      - {name: a, address: 70000}\n      - {name: b, adress: 1, scael: 2}\n      - {name: c, address: x, qos: 5}\n");
    let reg = registry();
    let Err(e) = Loader::new().registry(&reg).load(&main) else {
        panic!("expected errors");
    };
    let file = main.display();
    let lines: Vec<String> = e.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        [
            format!("{file}:4:27: devices[0].connection.prot: unknown key `prot`, did you mean `port`? expected one of: host, port"),
            format!("{file}:6:28: devices[0].points[0].address: expected an integer from 0 to 65535, found 70000"),
            format!("{file}:7:9: devices[0].points[1]: missing required key `address`"),
            format!("{file}:7:19: devices[0].points[1].adress: unknown key `adress`, did you mean `address`? expected one of: address, type"),
            format!("{file}:7:30: devices[0].points[1].scael: unknown key `scael`, did you mean `scale`? expected one of: address, type"),
            format!("{file}:8:28: devices[0].points[2].address: expected an integer, found a string"),
            format!("{file}:8:36: devices[0].points[2].qos: expected a QoS of 0, 1 or 2, found 5"),
        ]
    );
}

#[test]
fn disabled_devices_are_type_checked_but_not_built() {
    let (_dir, main) = main_file("devices:\n  - {name: a, protocol: nope, enabled: false, retries: many}\n  - {name: a, protocol: test, connection: {host: h}, enabled: false}\n");
    let reg = registry();
    let Err(e) = Loader::new().registry(&reg).load(&main) else {
        panic!("expected errors");
    };
    assert_eq!(e.len(), 1, "{e}");
    assert!(e.errors[0].message.contains("expected an integer"), "{e}");
}

/// The SDK's list of core point keys (what adapters never see) and the core's point struct must agree, or a
/// key would reach neither or both.
#[test]
fn core_point_keys_match_the_raw_point() {
    let mut yaml = String::from("name: p\n");
    for key in fieldbridge_sdk::config::POINT_CORE_KEYS {
        let value = match *key {
            "name" => continue,
            "scale" | "offset" | "deadband" | "qos" => "1",
            "publish" => "on_change",
            "payload" => "json",
            "retain" | "writable" | "record" => "true",
            "poll_interval" => "1s",
            _ => "text",
        };
        yaml.push_str(&format!("{key}: {value}\n"));
    }
    let node = fieldbridge_sdk::config::parse_yaml("p.yaml", &yaml).unwrap();
    let (raw, errors) = node.deserialize_partial::<super::raw::RawPoint>();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(raw.is_some());
    let extra = fieldbridge_sdk::config::parse_yaml("p.yaml", "name: p\naddress: 1\n").unwrap();
    assert!(extra.deserialize::<super::raw::RawPoint>().is_err());
}

/// `BridgeConfig::new` (what tests and benchmarks build bridges from) gives exactly what the configuration
/// gives a `bridges:` entry with only `name` and `url`.
#[test]
fn a_bridge_with_only_name_and_url_is_bridge_config_new() {
    let (_dir, main) = main_file(
        "gateway:\n  id: gw7\nbridges:\n  - name: cloud\n    url: mqtt://127.0.0.1:18830\n",
    );
    let (c, _) = Loader::new().load(&main).unwrap();
    let expected = crate::bridge::config::BridgeConfig::new(
        "cloud",
        crate::bridge::config::BridgeUrl::mqtt("127.0.0.1", 18830),
        "gw7",
    );
    assert_eq!(c.bridges, vec![expected]);
}
