//! Peers and helpers.
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fieldbridge_coap::CoapFactory;
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
