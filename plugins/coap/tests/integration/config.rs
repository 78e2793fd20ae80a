//! Configuration: every problem reported with its position; the example device maps pass.
use std::path::PathBuf;

use fieldbridge_coap::{validate, CoapFactory, Mode};
use fieldbridge_sdk::testkit::device_config_from_yaml;
use fieldbridge_sdk::AdapterFactory;

fn errors(yaml: &str) -> Vec<String> {
    match validate(&device_config_from_yaml(yaml)) {
        Ok(d) => panic!("expected errors, got {d:?}"),
        Err(errs) => errs
            .iter()
            .map(|e| format!("{}:{}: {}", e.mark.line, e.mark.col, e.message))
            .collect(),
    }
}

#[test]
fn every_problem_is_reported_at_its_place() {
    let errs = errors(
        "name: d\nprotocol: coap\nconnection:\n  uri: coaps://h\n  ack_timeout: 1ms\n  block_size: 100\n  \
         max_retransmit: 11\n  ingest: nowhere\npoints:\n  - {name: a, path: /a, mode: sometimes}\n  \
         - {name: b, path: /b, format: yaml}\n  - {name: c, path: /c, format: text, pointer: /x}\n  \
         - {name: d, path: /d, mode: ingest, writable: true}\n  - {name: e, pth: /e}\n",
    );
    let want = [
        ("4:8", "only coap://"),
        ("5:16", "ack_timeout"),
        ("6:15", "block_size"),
        ("7:19", "max_retransmit"),
        ("8:11", "not a listen address"),
        ("10:31", "unknown mode"),
        ("11:33", "unknown format"),
        ("12:48", "`pointer` applies to json and cbor"),
        ("13:5", "cannot be `writable: true`"),
        ("14:15", "pth"),
    ];
    assert!(
        !errs
            .iter()
            .any(|e| e.contains("no point has `mode: ingest`")),
        "a point rejected for another reason must not cascade: {errs:#?}"
    );
    for (at, needle) in want {
        assert!(
            errs.iter().any(|e| e.starts_with(at) && e.contains(needle)),
            "no `{needle}` at {at} in {errs:#?}"
        );
    }
}

#[test]
fn a_server_and_a_listener_are_required_when_used() {
    let errs = errors("name: d\nprotocol: coap\npoints:\n  - {name: a, path: /a}\n  - {name: b, path: /b, mode: ingest}\n");
    assert!(
        errs.iter().any(|e| e.contains("need the server")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("need the listener")),
        "{errs:?}"
    );
    let errs = errors("name: d\nprotocol: coap\nconnection: {uri: \"coap://h/x\"}\npoints:\n  - {name: a, path: /a}\n");
    assert!(errs[0].contains("the server only"), "{errs:?}");
}

#[test]
fn defaults() {
    let d = validate(&device_config_from_yaml(
        "name: d\nprotocol: coap\nconnection: {uri: \"coap://[::1]\"}\npoints:\n  - {name: a, path: \"s/t?x=1\", mode: observe}\n",
    ))
    .expect("valid");
    let u = d.uri.as_ref().expect("uri");
    assert_eq!((u.host.as_str(), u.port), ("::1", 5683));
    assert_eq!(d.transmission.max_retransmit, 4);
    assert_eq!(d.points[0].path, "/s/t");
    assert_eq!(d.points[0].query.as_deref(), Some("x=1"));
    assert_eq!(d.points[0].mode, Mode::Observe);
    assert_eq!(d.points[0].extract.senml_name, "a");
}

#[test]
fn the_example_device_map_builds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/devices");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config/devices") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("coap-") && name.ends_with(".yaml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        // The file is `devices:` then a list; each entry is fed through the same validation as the daemon.
        for chunk in text.split("\n  - name: ").skip(1) {
            let yaml: String = format!("name: {chunk}")
                .lines()
                .map(|l| l.strip_prefix("    ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            let cfg = device_config_from_yaml(&yaml);
            CoapFactory::new()
                .build(&cfg)
                .unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1, "no coap-*.yaml example in config/devices");
}
