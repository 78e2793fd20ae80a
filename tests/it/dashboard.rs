//! Issue 10: the dashboard in a real headless chromium (Debian's `chromium`, driven by python playwright from
//! `peers/dashboard.py`) against the demo configuration: it loads, shows the demo's devices, a value that
//! changes, charts with points, device detail, fits a phone screen, and a write that round-trips to the
//! simulated device. Screenshots go to `target/test-artifacts/`.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge::api::{self, ApiState};
use fieldbridge::app::{load_config, App, Registry};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::util::peers::{require, require_python_module, scripts_dir, Peer};

/// The demo configuration, moved to free ports and a temp dir (the test serves the API itself on port 0).
fn demo_config(dir: &std::path::Path) -> PathBuf {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml"))
        .expect("config/demo.yaml");
    let text = demo
        .replace("bind: 127.0.0.1:1883", "bind: 127.0.0.1:0")
        .replace("api:\n  bind: 127.0.0.1:8080", "api:\n  enabled: false")
        .replace("path: ./fieldbridge-demo.db", "path: ./demo.db");
    assert_ne!(text, demo);
    assert!(
        text.contains("enabled: false"),
        "the demo's api section moved"
    );
    let path = dir.join("demo.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    require("chromium", "apt-get install chromium");
    let py = require_python_module("playwright", "playwright");
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let registry = Registry::default();
    let cfg = load_config(&config, &registry).unwrap_or_else(|e| panic!("demo config: {e}"));
    let app = App::start(cfg, registry).await.expect("the demo starts");
    let stop = CancellationToken::new();
    let state: Arc<dyn ApiState> = app.clone();
    let server = api::serve(state, "127.0.0.1:0".parse().unwrap(), stop.clone())
        .await
        .unwrap();
    let token = std::fs::read_to_string(dir.path().join("api-token"))
        .unwrap()
        .trim()
        .to_string();
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&shots).unwrap();

    let mut peer = Peer::spawn(
        Command::new(py)
            .arg(scripts_dir().join("dashboard.py"))
            .arg(format!("http://{}/", server.local_addr))
            .arg(&token)
            .arg(&shots),
    );
    let mut lines = Vec::new();
    // Chromium's start and the chart refresh take a while: a bounded number of lines, each within WAIT x 6.
    for _ in 0..20 {
        let line = tokio::time::timeout(Duration::from_secs(60), peer.lines.next_line())
            .await
            .expect("the driver answers")
            .expect("driver output")
            .unwrap_or_else(|| panic!("the driver ended early: {lines:#?}"));
        let done = line == "DONE";
        assert!(!line.starts_with("TIMEOUT"), "{line}: {lines:#?}");
        lines.push(line);
        if done {
            break;
        }
    }
    let get = |tag: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{tag} ")))
            .unwrap_or_else(|| panic!("no {tag} in {lines:#?}"))
            .to_string()
    };
    assert_eq!(get("DEVICES"), "boiler,line-1,compressor", "{lines:#?}");
    let value = get("VALUE");
    let (a, b) = value.split_once(" -> ").unwrap();
    assert_ne!(a, b);
    let chart: Vec<u64> = get("CHART")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(chart[0] >= 1 && chart[1] >= 1, "{lines:#?}");
    assert!(get("FLOW").parse::<u32>().unwrap() >= 1);
    assert!(get("DETAIL").contains("last error"), "{lines:#?}");
    let width: Vec<u32> = get("WIDTH")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        width[0] <= width[1],
        "the page is wider than a phone: {width:?}"
    );
    assert!(get("NOTOKEN").contains("token"));
    assert_eq!(get("WRITE"), "ok");
    assert_eq!(get("READBACK"), "61.5");
    assert_eq!(get("STORED"), "True");
    assert!(get("ERRORS").starts_with("0 "), "{lines:#?}");
    assert!(shots.join("dashboard.png").is_file());
    // The write went through the command path: it is in the live table and was answered on …/set/result.
    let live = app.live();
    let v = live
        .latest()
        .iter()
        .find(|((d, p), _)| &**d == "boiler" && &**p == "setpoint")
        .map(|(_, l)| serde_json::to_value(l).unwrap()["value"].clone());
    assert_eq!(v, Some(serde_json::json!(61.5)));

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server.task).await;
    app.shutdown(Duration::from_secs(5)).await;
}
