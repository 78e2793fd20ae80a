//! CoAP end to end through the daemon: a reading POSTed by coap-client to the ingest listener and a value
//! polled from libcoap's server reach MQTT; a write from MQTT lands on the CoAP server (issue 11).
use std::process::Stdio;

use tokio::process::Command;

use crate::util::daemon::{free_port, Daemon};
use crate::util::peers::{mosquitto_pub, mosquitto_sub, run, Peer};
use crate::util::WAIT;

fn free_udp_port() -> u16 {
    crate::util::free_low_port()
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

/// POSTs `payload` to `uri` once and returns the response's code (`2.04`, `4.04`, ...), or what coap-client said
/// when nothing answered. coap-client exits 0 and prints nothing both for a 2.04 and for no answer at all (a
/// request that reached a socket being closed by a reload), so the code is read from its `-v 6` trace of the
/// response (`v:1 t:ACK c:2.04 i:...`), never inferred from silence.
async fn coap_post(uri: &str, payload: &str) -> Result<String, String> {
    let (_, out) = coap_client(&["-v", "6", "-m", "post", "-B", "1", "-e", payload, uri]).await;
    response_code(&out).ok_or(out)
}

/// The code of the first response in a coap-client `-v 6` trace (the request's own line says `c:POST`).
fn response_code(trace: &str) -> Option<String> {
    trace.lines().find_map(|l| {
        let code = l.split_whitespace().find_map(|w| w.strip_prefix("c:"))?;
        let b = code.as_bytes();
        (b.len() == 4 && b[0].is_ascii_digit() && b[1] == b'.').then(|| code.to_string())
    })
}

/// POSTs until the answer is 2.04 (the listener answers once the adapter runs), within `WAIT`.
async fn post_until_changed(uri: &str, payload: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = coap_post(uri, payload).await;
        if answer.as_deref() == Ok("2.04") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never accepted: {answer:?}"
        );
    }
}

/// Reads `sub` until a line `want` holds for (within three times `WAIT`); on failure, says which lines `keep`
/// held for and what the daemon logged.
async fn expect_line(
    sub: &mut Peer,
    daemon: &mut Daemon,
    what: &str,
    want: impl Fn(&str) -> bool,
    keep: impl Fn(&str) -> bool,
) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT * 3, async {
        loop {
            let l = sub.line().await;
            if want(&l) {
                return;
            }
            if keep(&l) {
                seen.push(l);
            }
        }
    })
    .await;
    if found.is_err() {
        panic!(
            "{what} did not reach MQTT within {:?}; MQTT saw {seen:#?}; the daemon logged {:#?}",
            WAIT * 3,
            daemon.log_so_far()
        );
    }
}

/// `line_where` waits per line, and the polled point publishes all the time: bound the whole wait.
/// Three times the usual wait: this test runs beside the whole suite, and a device that missed its first polls
/// backs off before it tries again.
async fn within<T>(f: impl std::future::Future<Output = T>, what: &str) -> T {
    let limit = WAIT * 3;
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not reach MQTT within {limit:?}"))
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
    // The server may need a moment to bind: PUT the resource until a GET reads it back (bounded). coap-client
    // exits 0 even when nothing answered (it only warns), so its exit code does not say the PUT landed: under
    // load the first PUT went out before the server listened, and every poll then got 4.04.
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        coap_client(&["-m", "put", "-B", "1", "-e", "3", &level]).await;
        let (code, out) = coap_client(&["-m", "get", "-B", "1", &level]).await;
        if code == 0 && out.trim() == "3" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "coap-server-notls did not take the resource: {out}"
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
    connection: {{uri: \"coap://127.0.0.1:{server_port}\", ack_timeout: 1s, max_retransmit: 4}}
    points:
      - {{name: level, path: /level, writable: true}}
",
        db = dir.path().join("fb.db").display()
    );
    let path = dir.path().join("fb.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut daemon = Daemon::start(&path, mqtt).await;
    let p = mqtt.to_string();
    let mut sub =
        Peer::spawn(mosquitto_sub().args(["-h", "127.0.0.1", "-p", &p, "-t", "gw/#", "-v"]));
    // Polled from libcoap's server.
    expect_line(
        &mut sub,
        &mut daemon,
        "the polled reading",
        |l| l.starts_with("gw/sensor/level ") && l.contains("\"value\":3"),
        |_| true,
    )
    .await;
    // POSTed by a device.
    let power = format!("coap://127.0.0.1:{ingest}/power");
    post_until_changed(&power, "1500", "ingest").await;
    let line = within(
        sub.line_where(|l| l.starts_with("gw/meter/power ")),
        "the ingested reading",
    )
    .await;
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
    within(
        sub.line_where(|l| {
            l.starts_with("gw/sensor/level/set/result ") && l.contains("\"ok\":true")
        }),
        "the write result",
    )
    .await;
    let (code, out) = coap_client(&["-m", "get", &level]).await;
    assert_eq!((code, out.trim()), (0, "9"));

    // Reload (SIGHUP) with the ingest point moved: the meter restarts on the same listen address (its socket
    // is released with the old adapter and bound again by the new one), the old path is gone.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("path: /power,", "path: /power2,")).unwrap();
    daemon.signal("-HUP").await;
    let power2 = format!("coap://127.0.0.1:{ingest}/power2");
    post_until_changed(&power2, "1600", "the reloaded ingest path").await;
    expect_line(
        &mut sub,
        &mut daemon,
        "the reading sent after the reload",
        |l| l.starts_with("gw/meter/power ") && l.contains("\"value\":1600"),
        |l| l.starts_with("gw/meter/"),
    )
    .await;
    let answer = coap_post(&power, "1").await;
    assert_eq!(
        answer.as_deref(),
        Ok("4.04"),
        "the old path must be gone after the reload"
    );
}
