//! Configuration checks: every problem reported, each at the key or value that causes it; the example device
//! maps in `config/devices/` pass.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_modbus::{validate, Endpoint, ModbusFactory, Table};
use fieldbridge_sdk::config::{parse_duration, parse_yaml, POINT_CORE_KEYS};
use fieldbridge_sdk::testkit::device_config_from_yaml;
use fieldbridge_sdk::{AdapterFactory, ConfigNode, DeviceConfig, NodeKind, PointConfig};

/// `line:col: path: message` of every error, for compact assertions.
fn errors(yaml: &str) -> Vec<String> {
    let cfg = device_config_from_yaml(yaml);
    match validate(&cfg) {
        Ok(d) => panic!("expected errors, got a valid device {d:?}"),
        Err(errs) => errs
            .iter()
            .map(|e| format!("{}:{}: {}: {}", e.mark.line, e.mark.col, e.path, e.message))
            .collect(),
    }
}

/// Asserts an error containing `needle` located where `at_text` first appears in the YAML (so the expected
/// line and column are computed, not counted by hand). `key: |value` locates `value` after `key: `.
fn assert_one(yaml: &str, at_text: &str, needle: &str) {
    let (prefix, target) = at_text.split_once('|').unwrap_or(("", at_text));
    let whole = format!("{prefix}{target}");
    let (line, col) = yaml
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find(&whole).map(|c| (i + 1, c + 1 + prefix.len())))
        .unwrap_or_else(|| panic!("`{whole}` is not in the yaml"));
    let at = format!("{line}:{col}:");
    let errs = errors(yaml);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&at) && e.contains(needle)),
        "no error at {at} containing {needle:?}: {errs:#?}"
    );
}

const HEAD: &str = "name: d\nprotocol: modbus\nconnection:\n  tcp: 127.0.0.1:502\npoints:\n";

fn with_point(point: &str) -> String {
    format!("{HEAD}  - {point}\n")
}

#[test]
fn point_errors_are_positioned() {
    // Line 6 is the point; columns count from 1.
    assert_one(
        &with_point("{name: a, adress: 40001}"),
        "adress",
        "did you mean `address`",
    );
    assert_one(
        &with_point("{name: a, address: 40001, type: flaot}"),
        "flaot",
        "unknown type `flaot`",
    );
    assert_one(&with_point("{name: a, address: 40000}"), "40000", "1-based");
    assert_one(
        &with_point("{name: a, address: 20001}"),
        "20001",
        "leading digit",
    );
    assert_one(
        &with_point("{name: a, address: 1, type: f32}"),
        "f32",
        "coil holds a single bit",
    );
    assert_one(
        &with_point("{name: a, address: 40001, type: bool}"),
        "bool",
        "type: bit",
    );
    assert_one(
        &with_point("{name: a, address: 40001, type: bit}"),
        "bit}",
        "needs `bit: 0..15`",
    );
    assert_one(
        &with_point("{name: a, address: 40001, type: bit, bit: 16}"),
        "bit: |16",
        "0 to 15",
    );
    assert_one(
        &with_point("{name: a, address: 40001, bit: 3}"),
        "bit: |3",
        "only applies to `type: bit`",
    );
    assert_one(
        &with_point("{name: a, address: 40001, type: string}"),
        "string",
        "needs `length:`",
    );
    assert_one(
        &with_point("{name: a, address: 40001, type: u16, length: 2}"),
        "length: |2",
        "fixed size",
    );
    assert_one(
        &with_point("{name: a, address: 40001, type: string, length: 2, order: CDAB}"),
        "CDAB",
        "AB",
    );
    assert_one(
        &with_point("{name: a, address: 1, order: ABCD}"),
        "ABCD",
        "does not apply to coils",
    );
    assert_one(
        &with_point("{name: a, address: 40001, order: ACBD}"),
        "ACBD",
        "unknown byte/word order",
    );
    assert_one(
        &with_point("{name: a, address: 30001, writable: true}"),
        "{",
        "read-only",
    );
    assert_one(
        &with_point("{name: a, address: 10001, writable: true}"),
        "{",
        "read-only",
    );
    assert_one(
        &with_point("{name: a, address: 40001, verify: true}"),
        "verify: |true",
        "not `writable: true`",
    );
    assert_one(
        &with_point("{name: a, address: 40001, table: input_register}"),
        "input_register",
        "contradicts",
    );
    assert_one(
        &with_point("{name: a, address: 465535, type: f64}"),
        "465535",
        "past the last address",
    );
    assert_one(&with_point("{name: a}"), "{", "address");
}

#[test]
fn offset_addressing_needs_a_table() {
    let yaml = "name: d\nprotocol: modbus\nconnection:\n  tcp: 127.0.0.1:502\n  addressing: offset\npoints:\n  - {name: a, address: 5}\n  - {name: b, address: 40001, table: holding_register}\n  - {name: c, address: \"0xZZ\", table: coil}\n";
    let errs = errors(yaml);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("7:5") && e.contains("missing `table:`")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("9:24") && e.contains("hex")),
        "{errs:#?}"
    );
    // 40001 is a fine offset (below 65536): no error for b.
    assert!(!errs.iter().any(|e| e.starts_with("8:")), "{errs:#?}");
}

#[test]
fn connection_errors_are_positioned() {
    let p = "points:\n  - {name: a, address: 40001}\n";
    let conn = |c: &str| format!("name: d\nprotocol: modbus\nconnection:\n{c}{p}");
    assert_one(
        &format!("name: d\nprotocol: modbus\n{p}"),
        "name",
        "needs a `connection:`",
    );
    assert_one(&conn("  unit: 1\n"), "unit", "missing transport");
    assert_one(
        &conn("  tcp: a:1\n  serial: /dev/x\n"),
        "/dev/x",
        "conflicts with `tcp`",
    );
    assert_one(
        &conn("  tcp: a:1\n  baud: 9600\n"),
        "9600",
        "only applies to `serial:`",
    );
    assert_one(&conn("  tcp: \"a:99999\"\n"), "\"a:99999", "not a port");
    assert_one(
        &conn("  tcp: \"tcp://a:502\"\n"),
        "\"tcp:",
        "without a scheme",
    );
    assert_one(
        &conn("  serial: /dev/x\n  unit: 0\n"),
        "unit: |0",
        "1 to 247",
    );
    assert_one(
        &conn("  serial: /dev/x\n  parity: mark\n"),
        "mark",
        "unknown parity",
    );
    assert_one(
        &conn("  serial: /dev/x\n  stop_bits: 3\n"),
        "stop_bits: |3",
        "1 or 2",
    );
    assert_one(
        &conn("  tcp: a:1\n  max_registers: 200\n"),
        "200",
        "1 to 125",
    );
    assert_one(
        &conn("  tcp: a:1\n  max_coils: 0\n"),
        "max_coils: |0",
        "1 to 2000",
    );
    assert_one(
        &conn("  tcp: a:1\n  adressing: offset\n"),
        "adressing",
        "did you mean `addressing`",
    );
    assert_one(
        &conn("  tcp: a:1\n  inter_request_delay: soon\n"),
        "soon",
        "duration",
    );
    // A point wider than the device's request limit.
    assert_one(
        "name: d\nprotocol: modbus\nconnection:\n  tcp: a:1\n  max_registers: 2\npoints:\n  - {name: a, address: 40001, type: f64}\n",
        "f64",
        "at most 2",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = "name: d\nprotocol: modbus\nconnection:\n  tcp: a:1\n  baud: 9600\npoints:\n  - {name: a, address: 40000}\n  - {name: b, address: 1, type: f32}\n  - {name: c, address: 30001, writable: true}\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn defaults_and_normalisation() {
    let cfg = device_config_from_yaml(
        "name: d\nprotocol: modbus\ntimeout: 250ms\nconnection:\n  tcp: 10.0.0.5\npoints:\n  - {name: a, address: 40001}\n  - {name: b, address: 3}\n",
    );
    let d = validate(&cfg).expect("valid");
    assert_eq!(d.endpoint, Endpoint::Tcp("10.0.0.5:502".into()));
    assert_eq!(d.unit, 1);
    assert_eq!(d.timeout, Duration::from_millis(250));
    assert_eq!(
        (d.points[0].table, d.points[0].offset),
        (Table::HoldingRegister, 0)
    );
    assert_eq!((d.points[1].table, d.points[1].offset), (Table::Coil, 2));
    let cfg = device_config_from_yaml(
        "name: s\nprotocol: modbus\nconnection:\n  serial: /dev/ttyUSB0\npoints:\n  - {name: a, address: 40001}\n",
    );
    let Endpoint::Serial(s) = validate(&cfg).expect("valid").endpoint else {
        panic!("serial")
    };
    assert_eq!((s.baud, s.data_bits, s.stop_bits), (9600, 8, 1));
    let tuned = device_config_from_yaml(
        "name: s\nprotocol: modbus\nconnection:\n  serial: /dev/ttyUSB0\n  baud: 19200\n  parity: even\n  frame_gap: 5ms\n  inter_request_delay: 20ms\n  unit: 247\n  max_gap: 8\npoints:\n  - {name: a, address: 40001}\n",
    );
    let d = validate(&tuned).expect("valid");
    let Endpoint::Serial(s) = &d.endpoint else {
        panic!("serial")
    };
    assert_eq!((s.baud, s.frame_gap), (19200, Duration::from_millis(5)));
    assert_eq!(d.inter_request_delay, Duration::from_millis(20));
    assert_eq!((d.unit, d.limits.max_gap), (247, 8));
    // The factory builds without I/O (a port that does not exist is fine until the adapter runs).
    assert!(ModbusFactory::new().build(&cfg).is_ok());
}

/// What the core does with a device-map entry: split off the core's keys. Enough of it to feed the example
/// files through the adapter's validation.
fn device_from_node(node: &ConfigNode) -> DeviceConfig {
    let s = |k: &str| match node.get(k).map(|n| &n.kind) {
        Some(NodeKind::String(s)) => Some(s.clone()),
        _ => None,
    };
    let dur = |k: &str, d: Duration| s(k).map_or(d, |t| parse_duration(&t).expect("duration"));
    let points = match node.get("points").map(|n| &n.kind) {
        Some(NodeKind::Seq(items)) => items
            .iter()
            .map(|p| {
                let NodeKind::Map(entries) = &p.kind else { panic!("{}: point", p.mark) };
                let name = match p.get("name").map(|n| &n.kind) {
                    Some(NodeKind::String(s)) => s.clone(),
                    _ => panic!("{}: name", p.mark),
                };
                PointConfig {
                    name: Arc::from(name),
                    writable: matches!(p.get("writable").map(|n| &n.kind), Some(NodeKind::Bool(true))),
                    poll_interval: match p.get("poll_interval").map(|n| &n.kind) {
                        Some(NodeKind::String(t)) => Some(parse_duration(t).expect("duration")),
                        _ => None,
                    },
                    spec: ConfigNode {
                        kind: NodeKind::Map(
                            entries
                                .iter()
                                .filter(|(k, _)| {
                                    !matches!(&k.kind, NodeKind::String(s) if POINT_CORE_KEYS.contains(&s.as_str()))
                                })
                                .cloned()
                                .collect(),
                        ),
                        mark: p.mark.clone(),
                        path: p.path.clone(),
                    },
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    DeviceConfig {
        name: Arc::from(s("name").expect("device name")),
        protocol: s("protocol").expect("protocol"),
        connection: node.get("connection").cloned().expect("connection"),
        poll_interval: dur("poll_interval", Duration::from_secs(1)),
        timeout: dur("timeout", Duration::from_secs(1)),
        retries: 0,
        points: points.into(),
    }
}

#[test]
fn the_example_device_maps_are_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/devices");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config/devices") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let root =
            parse_yaml(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e:#?}"));
        let Some(NodeKind::Seq(devices)) = root.get("devices").map(|n| &n.kind) else {
            panic!("{}: no `devices:` list", path.display())
        };
        for d in devices {
            let cfg = device_from_node(d);
            if cfg.protocol != "modbus" {
                continue;
            }
            let dev = validate(&cfg).unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()));
            assert!(!dev.points.is_empty());
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected the energy meter and the boiler examples, found {seen} modbus devices"
    );
}

#[test]
fn the_energy_meter_example_is_read_in_few_requests() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/devices/energy-meter-sdm630.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let root = parse_yaml("meter.yaml", &text).expect("yaml");
    let Some(NodeKind::Seq(devices)) = root.get("devices").map(|n| &n.kind) else {
        panic!("devices")
    };
    let dev = validate(&device_from_node(&devices[0])).expect("valid");
    let plan = dev.plan();
    let per_group: Vec<(Duration, Vec<(u16, u16)>)> = plan
        .iter()
        .map(|g| {
            (
                g.interval,
                g.requests.iter().map(|r| (r.start, r.count)).collect(),
            )
        })
        .collect();
    assert_eq!(
        per_group,
        vec![
            (Duration::from_secs(5), vec![(0, 18), (52, 2), (70, 2)]),
            (Duration::from_secs(60), vec![(72, 4)]),
        ]
    );
}
