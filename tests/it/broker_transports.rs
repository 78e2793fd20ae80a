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

/// Opens a WebSocket to `addr` by hand (so frames can be sent that no client library would send).
async fn raw_ws(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        crate::util::within("the handshake's answer", s.read_exact(&mut b))
            .await
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A client frame: `opcode` with FIN set or not, masked with the zero key (payload unchanged).
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend([0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Before any CONNECT, a WebSocket client streams continuation frames (FIN never set): the connection is
/// closed once the message passes `max_packet_size` (it was buffered up to tungstenite's 64 MiB: eight such
/// connections took the broker from 74 to 847 MB). And a text frame closes the connection (MQTT-6.0.0-1; it
/// was ignored).
#[tokio::test]
async fn websocket_messages_are_bounded_by_max_packet_size_and_text_frames_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tb = TestBroker::start_with(|c| {
        c.max_packet_size = 64 * 1024;
        c.listeners = vec![listener(
            "ws",
            ListenerKind::Ws {
                path: "/mqtt".into(),
            },
        )];
    })
    .await;
    let mut s = raw_ws(tb.addrs[0]).await;
    let chunk = vec![0x10u8; 16 * 1024];
    let mut sent = 0usize;
    let mut refused = false;
    // 8 MiB is more than the socket buffers hold: without the limit every write succeeds.
    for i in 0..512 {
        let opcode = if i == 0 { 2 } else { 0 };
        if s.write_all(&ws_frame(false, opcode, &chunk)).await.is_err() {
            refused = true;
            break;
        }
        sent += chunk.len();
    }
    // (How much was written before the reset depends on the sockets' buffers, not on the broker.)
    assert!(refused, "{sent} bytes of one unfinished message were taken");

    // A CONNECT in a text frame, then the same in a binary frame: the text frame ends the connection, so no
    // CONNACK ever comes.
    let mut connect = bytes::BytesMut::new();
    fieldbridge::mqtt::encode(
        &fieldbridge::mqtt::Packet::Connect(Box::new(crate::util::client::connect_packet(
            fieldbridge::mqtt::Protocol::V311,
            "ws-text",
            true,
        ))),
        fieldbridge::mqtt::Protocol::V311,
        &mut connect,
    );
    let mut s = raw_ws(tb.addrs[0]).await;
    s.write_all(&ws_frame(true, 1, &connect)).await.unwrap();
    let _ = s.write_all(&ws_frame(true, 2, &connect)).await;
    let mut rest = Vec::new();
    let _ = crate::util::within("the connection to close", s.read_to_end(&mut rest)).await;
    // A CONNACK would arrive as a binary frame: 0x82, length 4, then 0x20 0x02.
    assert!(
        !rest.windows(2).any(|w| w == [0x20, 0x02]),
        "a CONNACK came back: {rest:02x?}"
    );
}
