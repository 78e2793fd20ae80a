//! Strict-durability ingest from a real client (issue 9): a paho-mqtt burst is acknowledged in full, and
//! every acknowledged message is in the log.
use tokio::process::Command;

use crate::util::daemon::{free_port, Daemon};
use crate::util::peers::{require_python_module, scripts_dir};

#[tokio::test]
async fn a_paho_burst_of_60000_qos1_is_all_acknowledged_and_all_logged() {
    const COUNT: usize = 60_000;
    let python = require_python_module("paho.mqtt.client", "paho-mqtt");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = dir.path().join("fb.db");
    let cfg = format!(
        "gateway: {{id: gw}}
broker:
  listeners: [{{bind: \"127.0.0.1:{port}\"}}]
api: {{enabled: false}}
storage:
  path: {}
  durability: strict
  record: [\"burst/#\"]
",
        db.display()
    );
    let path = dir.path().join("fb.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut daemon = Daemon::start(&path, port).await;
    // Bounded by the script itself: it gives up when acknowledgments stop for 30 s.
    let output = Command::new(&python)
        .arg(scripts_dir().join("paho_burst.py"))
        .args([&port.to_string(), &COUNT.to_string(), "burst"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(600), output)
        .await
        .expect("paho burst finished")
        .expect("run python");
    let (code, out, err) = (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert_eq!(code, 0, "paho burst: {out} {err}");
    assert!(out.starts_with(&format!("ACKED {COUNT} ")), "{out}");
    eprintln!("{}", out.trim_end());
    assert!(out.trim_end().ends_with("FAILED 0"), "{out}");
    // A clean stop commits what is queued; every acknowledged message must be there anyway.
    daemon.signal("-TERM").await;
    assert_eq!(daemon.wait().await, Some(0));
    let rows = logged_rows(&db);
    assert_eq!(rows, COUNT as u64, "rows logged for burst/#");
}

fn logged_rows(db: &std::path::Path) -> u64 {
    let storage = fieldbridge::config::StorageConfig {
        path: db.to_path_buf(),
        commit_interval: std::time::Duration::from_millis(20),
        commit_rows: 1000,
        synchronous: fieldbridge::config::Synchronous::Full,
        durability: fieldbridge::config::Durability::Strict,
        max_bytes: 1 << 30,
        max_age: None,
        when_full: fieldbridge::config::WhenFull::DropOldest,
        record: vec![],
    };
    let store = fieldbridge::store::Store::open(&storage).expect("reopen");
    // Nothing else is logged in this configuration (no devices, no bridges).
    store.stats().rows
}
