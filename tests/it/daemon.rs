//! The `fieldbridge` binary as users run it: the demo config, `check`, SIGHUP reload, and the durability promise
//! under `kill -9`.
use std::path::Path;

use fieldbridge::mqtt::{Protocol, QoS};
use tokio::process::Command;

use crate::util::client::{publish, sub, Client};
use crate::util::daemon::{binary, free_port, Daemon};
use crate::util::peers::{mosquitto_pub, mosquitto_sub, run, Peer};

#[tokio::test]
async fn demo_config_publishes_sim_readings_status_and_accepts_writes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml")).unwrap();
    let cfg = demo
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{port}"))
        .replace(
            "bind: 127.0.0.1:8080",
            &format!("bind: 127.0.0.1:{}", free_port()),
        )
        .replace(
            "./fieldbridge-demo.db",
            &dir.path().join("demo.db").display().to_string(),
        );
    assert_ne!(cfg, demo, "the demo config still has the expected shape");
    let path = dir.path().join("demo.yaml");
    std::fs::write(&path, cfg).unwrap();
    let _daemon = Daemon::start(&path, port).await;
    let p = port.to_string();
    let mut sub = Peer::spawn(mosquitto_sub().args(["-h", "127.0.0.1", "-p", &p, "-t", "#", "-v"]));
    let mut seen = std::collections::HashMap::new();
    while ![
        "demo/status",
        "demo/boiler/status",
        "demo/boiler/flow_temp",
        "demo/boiler/setpoint",
    ]
    .iter()
    .all(|t| seen.contains_key(*t))
    {
        let line = sub.line().await;
        let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
        seen.insert(topic.to_string(), payload.to_string());
    }
    assert_eq!(seen["demo/status"], "online");
    assert!(
        seen["demo/boiler/status"].contains("\"status\":\"online\""),
        "{}",
        seen["demo/boiler/status"]
    );
    assert!(
        seen["demo/boiler/flow_temp"].contains("\"unit\":\"°C\""),
        "{}",
        seen["demo/boiler/flow_temp"]
    );
    // A write with mosquitto_pub, as the demo's comments say; the setpoint reads back.
    let (code, _, err) = run(mosquitto_pub().args([
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "demo/boiler/setpoint/set",
        "-m",
        "65",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    sub.line_where(|l| {
        l.starts_with("demo/boiler/setpoint/set/result ") && l.contains("\"ok\":true")
    })
    .await;
    sub.line_where(|l| l.starts_with("demo/boiler/setpoint ") && l.contains("\"value\":65"))
        .await;
}

#[tokio::test]
async fn check_accepts_the_shipped_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    for cfg in [
        "config/demo.yaml",
        "config/broker.yaml",
        "config/fieldbridge.yaml",
    ] {
        let (code, out, err) = run(Command::new(binary())
            .current_dir(root)
            .args(["check", "--config", cfg]))
        .await;
        assert_eq!(code, 0, "{cfg}: {out}{err}");
        assert!(out.contains(": ok ("), "{out}");
    }
}

#[tokio::test]
async fn acknowledged_publishes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = dir.path().join("fb.db");
    // A long commit interval: if PUBACK were sent before the commit, kill -9 right after it would lose rows.
    let cfg = format!(
        "gateway: {{id: gw}}
broker:
  listeners: [{{bind: \"127.0.0.1:{port}\"}}]
api: {{enabled: false}}
storage:
  path: {}
  commit_interval: 300ms
  durability: strict
  record: [\"keep/#\"]
",
        db.display()
    );
    let path = dir.path().join("fb.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut daemon = Daemon::start(&path, port).await;
    let mut c = Client::connect(daemon.mqtt, Protocol::V311, "producer", true).await;
    for i in 0..40 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        assert_eq!(
            c.publish(publish(&format!("keep/{i}"), &format!("v{i}"), qos, 0))
                .await,
            0
        );
    }
    daemon.signal("-KILL").await;
    daemon.wait().await;
    let storage = fieldbridge::config::StorageConfig {
        path: db.clone(),
        commit_interval: std::time::Duration::from_millis(20),
        commit_rows: 1000,
        synchronous: fieldbridge::config::Synchronous::Full,
        durability: fieldbridge::config::Durability::Strict,
        max_bytes: 1 << 30,
        max_age: None,
        when_full: fieldbridge::config::WhenFull::DropOldest,
        record: vec![],
    };
    let store = fieldbridge::store::Store::open(&storage).expect("reopen after kill -9");
    let rows = store
        .query(&fieldbridge::store::HistoryQuery {
            topic: Some("keep/#".into()),
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    let mut topics: Vec<String> = rows.iter().map(|r| r.topic.to_string()).collect();
    topics.sort_by_key(|t| t[5..].parse::<u32>().unwrap());
    assert_eq!(
        topics,
        (0..40).map(|i| format!("keep/{i}")).collect::<Vec<_>>(),
        "every acknowledged publish"
    );
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_file_keeps_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!(
        "gateway: {{id: gw}}
broker:
  listeners: [{{bind: \"127.0.0.1:{port}\"}}]
api: {{enabled: false}}
storage: {{path: {}}}
devices:
  - name: first
    protocol: sim
    poll_interval: 20ms
    points: [{{name: n, signal: counter, initial: 0, type: int}}]
",
        dir.path().join("fb.db").display()
    );
    let path = dir.path().join("fb.yaml");
    std::fs::write(&path, &base).unwrap();
    let mut daemon = Daemon::start(&path, port).await;
    let mut c = Client::connect(daemon.mqtt, Protocol::V311, "watch", true).await;
    c.subscribe(vec![sub("gw/+/n", QoS::AtMostOnce)]).await;
    assert_eq!(&*c.recv_publish().await.topic, "gw/first/n");

    // Broken: refused with the position, and the daemon keeps running with the old config.
    std::fs::write(
        &path,
        format!("{base}  - name: second\n    protocol: nope\n"),
    )
    .unwrap();
    daemon.signal("-HUP").await;
    let refused = daemon.log_line("reload refused").await;
    assert!(refused.contains("fb.yaml:12:15"), "{refused}");
    assert_eq!(
        &*c.recv_publish().await.topic,
        "gw/first/n",
        "still publishing"
    );
    // Valid: the new device appears (the broken reload in between did not stop anything).
    let added = format!(
        "{base}  - name: second
    protocol: sim
    poll_interval: 20ms
    points: [{{name: n, signal: counter, initial: 100, type: int}}]
"
    );
    std::fs::write(&path, added).unwrap();
    daemon.signal("-HUP").await;
    loop {
        let m = c.recv_publish().await;
        if &*m.topic == "gw/second/n" {
            break;
        }
    }
}

#[tokio::test]
async fn check_reports_each_invalid_fixture_exactly_with_exit_64() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/config/invalid");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for yaml in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let expected = std::fs::read_to_string(yaml.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{} has no .expected", yaml.display()));
        let rel = yaml.strip_prefix(root).unwrap();
        let (code, out, _) = run(Command::new(binary())
            .current_dir(root)
            .arg("check")
            .arg("--config")
            .arg(rel))
        .await;
        assert_eq!(code, 64, "{}", rel.display());
        assert_eq!(out.trim_end(), expected.trim_end(), "{}", rel.display());
        checked += 1;
    }
    assert!(checked >= 40, "fixtures found: {checked}");
}

#[tokio::test]
async fn modbus_probe_reads_and_writes_a_pymodbus_device() {
    let py = crate::util::peers::require_python_module("pymodbus", "pymodbus==3.16.1");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/modbus/tests/peers/modbus_peer.py");
    // f32 123.456 = 0x42F6E979 (ABCD) at holding register 0; register 10 is writable.
    let image = r#"{"1": {"hr": {"0": [17142, 59769, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}}}"#;
    let mut peer = Peer::spawn(
        Command::new(py)
            .arg(script)
            .args(["--image", image, "--tcp", "0"]),
    );
    let ready = peer.line_where(|l| l.starts_with("READY ")).await;
    let port = ready.trim_start_matches("READY ").trim().to_string();
    let tcp = format!("127.0.0.1:{port}");
    let (code, out, err) =
        run(Command::new(binary())
            .args(["modbus", "read", "--tcp", &tcp, "--type", "f32", "40001"]))
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("40001 ") && out.contains(": 123.456") && out.contains("42F6 E979"),
        "{out}"
    );
    // Word-swapped order decodes the same registers differently: proof the order flag reaches the decoder.
    let (_, swapped, _) = run(Command::new(binary()).args([
        "modbus", "read", "--tcp", &tcp, "--type", "f32", "--order", "CDAB", "40001",
    ]))
    .await;
    assert!(!swapped.contains("123.456"), "{swapped}");
    let (code, out, err) = run(Command::new(binary()).args([
        "modbus", "write", "--tcp", &tcp, "--type", "i16", "--verify", "40011", "-1234",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) =
        run(Command::new(binary())
            .args(["modbus", "read", "--tcp", &tcp, "--type", "i16", "40011"]))
        .await;
    assert!(out.contains(": -1234"), "{out}");
    // Unreachable device: exit 69 with the reason.
    let (code, _, err) =
        run(Command::new(binary()).args(["modbus", "read", "--tcp", "127.0.0.1:1", "40001"])).await;
    assert_eq!(code, 69, "{err}");
}

/// SIGHUP applies what it can and logs, per key, what only a restart applies (it used to say nothing).
#[tokio::test]
async fn sighup_logs_each_setting_that_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = dir.path().join("fb.db");
    let cfg = |api: &str, max: &str| {
        format!(
            "gateway: {{id: gw}}
broker:
  listeners: [{{bind: \"127.0.0.1:{port}\"}}]
api: {api}
storage: {{path: {}, max_bytes: {max}}}
devices:
  - name: first
    protocol: sim
    poll_interval: 20ms
    points: [{{name: n, signal: counter, initial: 0, type: int}}]
",
            db.display()
        )
    };
    let path = dir.path().join("fb.yaml");
    std::fs::write(&path, cfg("{enabled: false}", "64MiB")).unwrap();
    let mut daemon = Daemon::start(&path, port).await;
    let api_port = free_port();
    std::fs::write(
        &path,
        cfg(&format!("{{bind: \"127.0.0.1:{api_port}\"}}"), "128MiB"),
    )
    .unwrap();
    daemon.signal("-HUP").await;
    let bind = daemon.log_line("api.bind changed").await;
    assert!(
        bind.contains(&format!(
            "reload: api.bind changed (disabled → 127.0.0.1:{api_port}): takes effect at the next restart"
        )),
        "{bind}"
    );
    let max = daemon.log_line("storage.max_bytes changed").await;
    assert!(
        max.contains(
            "reload: storage.max_bytes changed (67108864 → 134217728): takes effect at the next restart"
        ),
        "{max}"
    );
}

/// `fieldbridge reload --config FILE` with a YAML syntax error says what `check` says (file:line:col) and
/// exits 64 like it; it used to exit 1 with "cannot find the API address".
#[tokio::test]
async fn reload_with_a_yaml_syntax_error_exits_64_like_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "gateway:\n  id: gw\ndevices:\n  - name: boiler\n    protocol: sim\n   points: []\n",
    )
    .unwrap();
    let (check_code, check_out, _) = run(Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path))
    .await;
    assert_eq!(check_code, 64, "{check_out}");
    let (code, out, err) = run(Command::new(binary())
        .arg("reload")
        .arg("--config")
        .arg(&path)
        .env_remove("FIELDBRIDGE_TOKEN"))
    .await;
    assert_eq!(code, 64, "{out}{err}");
    assert_eq!(out, check_out, "the problems as `check` prints them");
    assert!(
        out.starts_with(&format!("{}:6:4: ", path.display())) && out.contains("YAML syntax error"),
        "{out}"
    );
    assert!(
        err.contains("reload refused") && err.contains("keeps its running configuration"),
        "{err}"
    );
}
