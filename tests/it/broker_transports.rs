//! TLS and WebSocket listeners against real clients: mosquitto_pub/sub over TLS (server verified against a test
//! CA, and mutual TLS), paho-mqtt over ws:// and wss://.
use fieldbridge::config::{ListenerConfig, ListenerKind, TlsServerConfig};

use crate::util::peers::{
    mosquitto_pub, mosquitto_sub, require_python_module, run, scripts_dir, Peer,
};
use crate::util::tls::make_pki;
use crate::util::{wait_until, TestBroker};

fn listener(name: &str, kind: ListenerKind) -> ListenerConfig {
    ListenerConfig {
        name: name.into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        kind,
        allow_anonymous: None,
    }
}

#[tokio::test]
async fn tls_listener_with_mosquitto_clients_and_client_certificates() {
    let pki = make_pki();
    let tls = TlsServerConfig {
        cert: pki.server_cert(),
        key: pki.server_key(),
        client_ca: None,
        require_client_cert: false,
    };
    let mtls = TlsServerConfig {
        client_ca: Some(pki.ca()),
        require_client_cert: true,
        ..tls.clone()
    };
    let tb = TestBroker::start_with(|c| {
        c.listeners = vec![
            listener("tls", ListenerKind::Tls(tls)),
            listener("mtls", ListenerKind::Tls(mtls)),
        ];
    })
    .await;
    let tls_port = tb.addrs[0].port().to_string();
    let mtls_port = tb.addrs[1].port().to_string();
    let ca = pki.ca().display().to_string();

    let mut sub = Peer::spawn(mosquitto_sub().args([
        "-h",
        "localhost",
        "-p",
        &tls_port,
        "--cafile",
        &ca,
        "-t",
        "secure/#",
        "-C",
        "2",
        "-v",
    ]));
    wait_until("TLS subscriber", || tb.broker.stats().subscriptions == 1).await;
    let (code, _, err) = run(mosquitto_pub().args([
        "-h",
        "localhost",
        "-p",
        &tls_port,
        "--cafile",
        &ca,
        "-q",
        "1",
        "-t",
        "secure/a",
        "-m",
        "tls-ok",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(sub.line().await, "secure/a tls-ok");

    // Mutual TLS: without a client certificate the handshake fails; with one it works.
    let (code, _, _) = run(mosquitto_pub().args([
        "-h",
        "localhost",
        "-p",
        &mtls_port,
        "--cafile",
        &ca,
        "-t",
        "secure/b",
        "-m",
        "nocert",
    ]))
    .await;
    assert_ne!(code, 0, "a client without a certificate is refused");
    let (code, _, err) = run(mosquitto_pub().args([
        "-h",
        "localhost",
        "-p",
        &mtls_port,
        "--cafile",
        &ca,
        "--cert",
        &pki.client_cert().display().to_string(),
        "--key",
        &pki.client_key().display().to_string(),
        "-q",
        "1",
        "-t",
        "secure/b",
        "-m",
        "mtls-ok",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(sub.line().await, "secure/b mtls-ok");
}

#[tokio::test]
async fn websocket_and_secure_websocket_with_paho() {
    let py = require_python_module("paho.mqtt.client", "paho-mqtt");
    let pki = make_pki();
    let tls = TlsServerConfig {
        cert: pki.server_cert(),
        key: pki.server_key(),
        client_ca: None,
        require_client_cert: false,
    };
    let tb = TestBroker::start_with(|c| {
        c.listeners = vec![
            listener(
                "ws",
                ListenerKind::Ws {
                    path: "/mqtt".into(),
                },
            ),
            listener(
                "wss",
                ListenerKind::Wss {
                    path: "/mqtt".into(),
                    tls,
                },
            ),
        ];
    })
    .await;
    for (i, secure) in [(0, false), (1, true)] {
        let mut cmd = tokio::process::Command::new(&py);
        cmd.arg(scripts_dir().join("paho_ws.py"))
            .arg(tb.addrs[i].port().to_string())
            .arg("/mqtt");
        if secure {
            cmd.arg(pki.ca());
        }
        let mut peer = Peer::spawn(&mut cmd);
        assert_eq!(
            peer.line().await,
            "GOT ws/hello over-websocket",
            "secure={secure}"
        );
        assert_eq!(peer.wait().await, 0);
    }
}
