//! Peers and helpers.
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use coap_lite::{MessageType, Packet, ResponseType};
use fieldbridge_coap::{wire, CoapFactory};
use fieldbridge_sdk::testkit::device_config_from_yaml;
use fieldbridge_sdk::{AdapterFactory, TestHarness};

/// Bound of every wait in these tests (never a fixed sleep).
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` until it gives a value, failing the test after [`WAIT`]: the one place these tests poll a state
/// they cannot be notified of (a listener started, a socket closed, a path registered).
pub async fn poll_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port free on 127.0.0.1 right now for UDP and for TCP: libcoap's server listens on both at the number given.
pub fn free_udp_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a probe socket");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 in 100 tries")
}

/// A child process killed (and reaped) when dropped.
pub struct Peer {
    child: Child,
    /// The UDP port it serves.
    pub port: u16,
}

impl Peer {
    /// Kills the peer now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(cmd: &mut Command, what: &str, package: &str) -> Child {
    cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {what}: {e}. This test needs it: install {package}")
    })
}

/// Waits until a CoAP server answers a GET on `path` (checked with coap-client-notls, bounded).
fn wait_ready(port: u16, path: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = coap_client(&[
            "-m",
            "get",
            "-B",
            "1",
            &format!("coap://127.0.0.1:{port}{path}"),
        ]);
        if out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CoAP server on port {port} did not answer within {WAIT:?}"
        );
    }
}

/// libcoap's example server on 127.0.0.1:`port` with dynamic resources (PUT creates them).
pub fn libcoap_server(port: u16) -> Peer {
    let child = spawn(
        Command::new("coap-server-notls")
            .args([
                "-A",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-d",
                "20",
                "-v",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "coap-server-notls",
        "libcoap3-bin (apt-get install libcoap3-bin)",
    );
    let peer = Peer { child, port };
    wait_ready(port, "/.well-known/core");
    peer
}

/// Runs coap-client-notls.
pub fn coap_client(args: &[&str]) -> Output {
    Command::new("coap-client-notls")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run coap-client-notls: {e}. Install libcoap3-bin (apt-get install libcoap3-bin)")
        })
}

/// The scripted aiocoap server (see its docstring) on 127.0.0.1:`port`.
pub fn aiocoap_server(port: u16, args: &[&str]) -> Peer {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aiocoap_server.py");
    let mut child = spawn(
        Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "python3 with aiocoap",
        "python3 and aiocoap (python3 -m pip install aiocoap)",
    );
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(WAIT) {
        Ok(line) if line.trim() == "ready" => Peer { child, port },
        other => {
            let _ = child.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut err);
            panic!(
                "aiocoap server did not start ({other:?}); it needs python3 -m pip install aiocoap. stderr:\n{err}"
            )
        }
    }
}

/// Builds the adapter for a device written in YAML (protocol coap) with `factory` and starts it.
pub fn start(factory: &CoapFactory, yaml: &str) -> TestHarness {
    let cfg = device_config_from_yaml(yaml);
    let adapter = factory
        .build(&cfg)
        .unwrap_or_else(|e| panic!("device config rejected: {e:#?}"));
    TestHarness::start(&cfg.name, adapter)
}

/// Fast retransmission settings for tests (the RFC defaults take 93 s to give up).
pub const FAST: &str = "ack_timeout: 200ms\n  max_retransmit: 2";

/// A CoAP server scripted on a raw UDP socket (127.0.0.1, a port the OS picks), for answers that real servers do
/// not give: a piggybacked ACK with the wrong message id, a whole large representation in one datagram (Block2
/// ignored). `answer` gets each request that decodes and returns the messages to send back, in order (encoded
/// without a size limit). Returns the server's address and the count of requests received. The task ends with
/// the test's runtime.
pub async fn scripted_server<F>(mut answer: F) -> (SocketAddr, Arc<AtomicU32>)
where
    F: FnMut(&Packet) -> Vec<Packet> + Send + 'static,
{
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    let seen = Arc::new(AtomicU32::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; wire::MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(req) = wire::decode(&buf[..n]) else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            for p in answer(&req) {
                let bytes = p.to_bytes_unlimited().expect("encode the scripted answer");
                sock.send_to(&bytes, from)
                    .await
                    .expect("send the scripted answer");
            }
        }
    });
    (addr, seen)
}

/// A 2.05 Content response to the confirmable `req`, piggybacked on an ACK with message id `mid` (the request's
/// own for a correct one).
pub fn piggybacked(req: &Packet, mid: u16, payload: &[u8], content_format: Option<u16>) -> Packet {
    assert_eq!(req.header.get_type(), MessageType::Confirmable, "{req:?}");
    let mut p = wire::response_to(req, ResponseType::Content, payload);
    p.header.message_id = mid;
    if let Some(cf) = content_format {
        p.add_option(
            coap_lite::CoapOption::ContentFormat,
            wire::uint_bytes(u32::from(cf)),
        );
    }
    p
}

/// A JSON document `{"pad":"xxx…","value":42}` of exactly `len` bytes (at least 21).
pub fn json_of_len(len: usize) -> Vec<u8> {
    let frame = r#"{"pad":"","value":42}"#.len();
    let doc = format!(r#"{{"pad":"{}","value":42}}"#, "x".repeat(len - frame));
    assert_eq!(doc.len(), len);
    doc.into_bytes()
}
