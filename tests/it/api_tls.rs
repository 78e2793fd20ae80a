//! The HTTP API over TLS (`api.tls`), against the real daemon: curl (a peer that knows nothing of
//! fieldbridge) verifies the certificate against the test CA, the token rules hold over TLS, plain HTTP gets no
//! answer, and the CLI reaches the daemon by pinning the certificate the configuration names.
use std::path::Path;

use tokio::process::Command;

use crate::util::daemon::{binary, free_port, Daemon};
use crate::util::eventually;
use crate::util::peers::{require, run};
use crate::util::tls::{make_pki, TestPki};

fn config(dir: &Path, pki: &TestPki, mqtt: u16, api: u16) -> String {
    format!(
        r#"gateway:
  id: tls1
broker:
  listeners:
    - bind: 127.0.0.1:{mqtt}
api:
  bind: 127.0.0.1:{api}
  tls:
    cert: {cert}
    key: {key}
storage:
  path: {db}
  commit_interval: 10ms
devices:
  - name: boiler
    protocol: sim
    poll_interval: 100ms
    points:
      - name: count
        signal: counter
        initial: 0
        step: 1
        type: int
"#,
        cert = pki.server_cert().display(),
        key = pki.server_key().display(),
        db = dir.join("fb.db").display(),
    )
}

/// `curl` with the test CA; returns (exit code, HTTP status or "000", body).
async fn curl(pki: &TestPki, args: &[&str]) -> (i32, String, String) {
    let bin = require("curl", "apt-get install curl");
    let (code, out, _) = run(Command::new(bin)
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(pki.ca())
        .args(["-w", "\n%{http_code}"])
        .args(args))
    .await;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    (code, status.to_string(), body.to_string())
}

#[tokio::test]
async fn the_api_over_tls_verifies_refuses_plain_http_and_the_cli_pins_the_certificate() {
    let pki = make_pki();
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, api) = (free_port(), free_port());
    let cfg = dir.path().join("fb.yaml");
    std::fs::write(&cfg, config(dir.path(), &pki, mqtt, api)).unwrap();
    let _daemon = Daemon::start(&cfg, mqtt).await;
    let base = format!("https://127.0.0.1:{api}");

    // A read over TLS, verified against the CA by a peer.
    let url = format!("{base}/api/v1/devices");
    let devices = eventually("the API to answer over TLS", || async {
        let (code, status, body) = curl(&pki, &[&url]).await;
        (code == 0 && status == "200").then_some(body)
    })
    .await;
    assert!(devices.contains("boiler"), "{devices}");

    // State changes still need the token over TLS.
    let (_, status, _) = curl(&pki, &["-X", "POST", &format!("{base}/api/reload")]).await;
    assert_eq!(status, "401", "reload without a token");
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let (_, status, body) = curl(
        &pki,
        &["-X", "POST", "-H", &auth, &format!("{base}/api/reload")],
    )
    .await;
    assert_eq!(status, "200", "reload with the token: {body}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let (code, status, _) = curl(&pki, &[&format!("http://127.0.0.1:{api}/api/v1/devices")]).await;
    assert!(
        code != 0 && status == "000",
        "plain HTTP answered: exit {code}, status {status}"
    );

    // The CLI finds the daemon through the same file and pins the certificate it names.
    let (code, out, err) = run(Command::new(binary())
        .args(["status", "--config"])
        .arg(&cfg))
    .await;
    assert_eq!(code, 0, "fieldbridge status over TLS: {out}{err}");
    assert!(out.contains("boiler"), "{out}");

    // A configuration naming another certificate is refused by the CLI's pin, not silently trusted.
    let other = make_pki();
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        config(dir.path(), &other, mqtt, api).replace(
            &other.server_key().display().to_string(),
            &pki.server_key().display().to_string(),
        ),
    )
    .unwrap();
    let (code, out, err) = run(Command::new(binary())
        .args(["status", "--config"])
        .arg(&wrong))
    .await;
    assert_ne!(code, 0, "a foreign certificate was trusted: {out}");
    assert!(err.contains("api.tls.cert"), "{err}");
}
