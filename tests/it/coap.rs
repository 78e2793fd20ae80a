//! CoAP end to end through the daemon: a reading POSTed by coap-client to the ingest listener and a value
//! polled from libcoap's server reach MQTT; a write from MQTT lands on the CoAP server (issue 11).
use std::process::Stdio;

use tokio::process::Command;

use crate::daemon::{free_port, Daemon};
use crate::util::peers::{mosquitto_pub, mosquitto_sub, run, Peer};
use crate::util::WAIT;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn coap_client(args: &[&str]) -> (i32, String) {
    let out = Command::new("coap-client-notls")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("coap-client-notls: {e}; install libcoap3-bin"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn coap_readings_reach_mqtt_and_writes_reach_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, ingest, server_port) = (free_port(), free_udp_port(), free_udp_port());
    let _server = Peer::spawn(
        Command::new("coap-server-notls")
            .args([
                "-A",
                "127.0.0.1",
                "-p",
                &server_port.to_string(),
                "-d",
                "10",
            ])
            .stdout(Stdio::piped()),
    );
    let level = format!("coap://127.0.0.1:{server_port}/level");
    // The server may need a moment to bind: retry the PUT that creates the resource (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    while coap_client(&["-m", "put", "-B", "1", "-e", "3", &level])
        .await
        .0
        != 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "coap-server-notls did not start"
        );
    }
    let cfg = format!(
        "gateway: {{id: gw}}
broker:
  listeners: [{{bind: \"127.0.0.1:{mqtt}\"}}]
api: {{enabled: false}}
storage:
  path: {db}
devices:
  - name: meter
    protocol: coap
    connection: {{ingest: \"127.0.0.1:{ingest}\"}}
    points:
      - {{name: power, path: /power, mode: ingest, unit: W}}
  - name: sensor
    protocol: coap
    poll_interval: 200ms
    connection: {{uri: \"coap://127.0.0.1:{server_port}\", ack_timeout: 200ms, max_retransmit: 2}}
    points:
      - {{name: level, path: /level, writable: true}}
",
        db = dir.path().join("fb.db").display()
    );
    let path = dir.path().join("fb.yaml");
    std::fs::write(&path, cfg).unwrap();
    let _daemon = Daemon::start(&path, mqtt).await;
    let p = mqtt.to_string();
    let mut sub =
        Peer::spawn(mosquitto_sub().args(["-h", "127.0.0.1", "-p", &p, "-t", "gw/#", "-v"]));
    // Polled from libcoap's server.
    sub.line_where(|l| l.starts_with("gw/sensor/level ") && l.contains("\"value\":3"))
        .await;
    // POSTed by a device; the listener answers 2.04 once the adapter runs (retry until then, bounded).
    let power = format!("coap://127.0.0.1:{ingest}/power");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, out) = coap_client(&["-m", "post", "-B", "1", "-e", "1500", &power]).await;
        if code == 0 && !out.contains("4.") && !out.contains("5.") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest never accepted: {out}"
        );
    }
    let line = sub.line_where(|l| l.starts_with("gw/meter/power ")).await;
    assert!(
        line.contains("\"value\":1500") && line.contains("\"unit\":\"W\""),
        "{line}"
    );
    // MQTT write -> PUT on the server, read back with libcoap's client.
    let (code, _, err) = run(mosquitto_pub().args([
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "gw/sensor/level/set",
        "-m",
        "9",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    sub.line_where(|l| l.starts_with("gw/sensor/level/set/result ") && l.contains("\"ok\":true"))
        .await;
    let (code, out) = coap_client(&["-m", "get", &level]).await;
    assert_eq!((code, out.trim()), (0, "9"));
}
