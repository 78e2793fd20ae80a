//! Test peers: a pymodbus device (TCP, RTU over TCP, RTU on a pty) and socat pty pairs, plus helpers to build
//! and run the adapter from YAML. Every wait is bounded and fails with a message naming what was awaited.
#![allow(dead_code)] // each test module uses a different part

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldbridge_modbus::ModbusFactory;
use fieldbridge_sdk::testkit::{device_config_from_yaml, TestHarness};
use fieldbridge_sdk::{AdapterFactory, DeviceStatus, Quality, Reading, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// Upper bound for anything a test waits for (a peer starting, a reading, a status). Generous: CI machines
/// are slow, and no test asserts a duration.
pub const WAIT: Duration = Duration::from_secs(30);

/// One request the peer received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Req {
    pub unit: u8,
    pub fc: u8,
    pub addr: u16,
    pub count: u16,
}

fn parse_req(s: &str) -> Option<Req> {
    let mut r = Req {
        unit: 0,
        fc: 0,
        addr: 0,
        count: 0,
    };
    for kv in s.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "unit" => r.unit = v.parse().ok()?,
            "fc" => r.fc = v.parse().ok()?,
            "addr" => r.addr = v.parse().ok()?,
            "count" => r.count = v.parse().ok()?,
            _ => {}
        }
    }
    Some(r)
}

/// A pymodbus device started for one test; killed when dropped.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::UnboundedReceiver<String>,
    requests: Arc<Mutex<Vec<Req>>>,
    stderr: Arc<Mutex<String>>,
    /// The TCP port it listens on (0 for serial).
    pub port: u16,
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/modbus_peer.py")
}

/// A free TCP port on 127.0.0.1 (for peers that must start after the adapter, or restart on the same port).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Peer {
    /// Modbus TCP on a port chosen by the OS.
    pub async fn tcp(image: &serde_json::Value) -> Peer {
        Peer::start(&["--tcp", "0"], image, &[]).await
    }

    /// Modbus TCP on a given port.
    pub async fn tcp_on(port: u16, image: &serde_json::Value) -> Peer {
        Peer::start(&["--tcp", &port.to_string()], image, &[]).await
    }

    /// Modbus TCP with extra peer arguments (e.g. `--ignore-writes`).
    pub async fn tcp_with(image: &serde_json::Value, extra: &[&str]) -> Peer {
        Peer::start(&["--tcp", "0"], image, extra).await
    }

    /// RTU framing over TCP on a port chosen by the OS.
    pub async fn rtu_over_tcp(image: &serde_json::Value) -> Peer {
        Peer::start(&["--rtu-over-tcp", "0"], image, &[]).await
    }

    /// RTU on a serial device (one end of a pty pair), 19200 8N1.
    pub async fn serial(path: &str, image: &serde_json::Value) -> Peer {
        Peer::start(&["--serial", path, "--baud", "19200"], image, &[]).await
    }

    async fn start(mode: &[&str], image: &serde_json::Value, extra: &[&str]) -> Peer {
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script())
            .args(mode)
            .args(extra)
            .arg("--image")
            .arg(image.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start the pymodbus peer (python3 {}): {e}. The Modbus tests need python3 with \
                 pymodbus 3.16+ (`pip install pymodbus`)",
                peer_script().display()
            )
        });
        let stdin = child.stdin.take().expect("peer stdin");
        let stdout = child.stdout.take().expect("peer stdout");
        let stderr_pipe = child.stderr.take().expect("peer stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr_pipe).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let mut s = stderr.lock().unwrap();
                    if s.len() < 64 * 1024 {
                        s.push_str(&l);
                        s.push('\n');
                    }
                }
            });
        }
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<u16, String>>();
        let (ans_tx, answers) = mpsc::unbounded_channel();
        {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if let Some(rest) = l.strip_prefix("READY ") {
                        let _ = ready_tx.send(Ok(rest.trim().parse().unwrap_or(0)));
                    } else if let Some(rest) = l.strip_prefix("REQ ") {
                        if let Some(r) = parse_req(rest) {
                            requests.lock().unwrap().push(r);
                        }
                    } else if l.starts_with("FATAL") {
                        let _ = ready_tx.send(Err(l));
                    } else {
                        let _ = ans_tx.send(l);
                    }
                }
                let _ = ready_tx.send(Err("the peer exited".into()));
            });
        }
        let port = match tokio::time::timeout(WAIT, ready_rx.recv()).await {
            Ok(Some(Ok(port))) => port,
            Ok(Some(Err(why))) => {
                // Give stderr a moment to be collected: bounded by the reader task seeing EOF.
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "the pymodbus peer failed to start ({why}); it needs python3 with pymodbus 3.16+ \
                     (`pip install pymodbus`). stderr:\n{}",
                    stderr.lock().unwrap()
                )
            }
            Ok(None) => panic!("the pymodbus peer's output closed before READY"),
            Err(_) => panic!(
                "the pymodbus peer did not print READY within {WAIT:?}; stderr:\n{}",
                stderr.lock().unwrap()
            ),
        };
        Peer {
            child,
            stdin,
            answers,
            requests,
            stderr,
            port,
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request whose log line has been read so far (may lag the device; see [`Peer::requests_synced`]).
    pub fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    /// Every request the device received before this call: a `ping` round trip through the same pipe as the
    /// request log guarantees the log is complete up to now.
    pub async fn requests_synced(&mut self) -> Vec<Req> {
        let a = self.command("ping".into()).await;
        assert_eq!(a, "PONG", "peer ping");
        self.requests()
    }

    async fn command(&mut self, line: String) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the peer");
        self.stdin.flush().await.expect("flush the peer's stdin");
        match tokio::time::timeout(WAIT, self.answers.recv()).await {
            Ok(Some(a)) if a.starts_with("ERR") => panic!("peer command `{line}` failed: {a}"),
            Ok(Some(a)) => a,
            Ok(None) => panic!(
                "the peer exited during `{line}`; stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
            Err(_) => panic!("no answer from the peer to `{line}` within {WAIT:?}"),
        }
    }

    /// Reads the server's memory (table: `co`, `di`, `hr`, `ir`).
    pub async fn get(&mut self, unit: u8, table: &str, addr: u16, count: u16) -> Vec<u16> {
        let a = self
            .command(format!("get {unit} {table} {addr} {count}"))
            .await;
        a.strip_prefix("VAL")
            .unwrap_or_else(|| panic!("unexpected peer answer {a}"))
            .split_whitespace()
            .map(|v| v.parse().expect("a number"))
            .collect()
    }

    /// Changes the server's memory.
    pub async fn set(&mut self, unit: u8, table: &str, addr: u16, values: &[u16]) {
        let vals: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let a = self
            .command(format!("set {unit} {table} {addr} {}", vals.join(" ")))
            .await;
        assert_eq!(a, "OK", "peer set");
    }

    /// Kills the peer and waits for it to be gone (so its port is free again).
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the peer did not exit after kill")
            .expect("wait for the peer");
    }
}

/// A socat pty pair: two connected serial devices. Killed when dropped.
pub struct PtyPair {
    _child: Child,
    /// One end (give it to the device).
    pub a: String,
    /// The other end (give it to the adapter).
    pub b: String,
}

impl PtyPair {
    /// A fresh pair from `socat -d -d pty,raw,echo=0 pty,raw,echo=0`.
    pub async fn new() -> PtyPair {
        let mut child = Command::new("socat")
            .args(["-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start socat (the RTU tests need it: apt-get install socat): {e}")
            });
        let stderr = child.stderr.take().expect("socat stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut ptys = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(i) = l.find("PTY is ") {
                    ptys.push(l[i + 7..].trim().to_owned());
                }
                if l.contains("starting data transfer loop") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(found, Ok(true)) && ptys.len() == 2,
            "socat did not report two ptys and its transfer loop within {WAIT:?} (got {ptys:?})"
        );
        // Keep draining socat's log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        PtyPair {
            _child: child,
            a: ptys[0].clone(),
            b: ptys[1].clone(),
        }
    }
}

/// A factory with its own line registry, so that tests running in parallel never share (or count) each
/// other's lines.
pub fn factory() -> ModbusFactory {
    ModbusFactory::with_registry(fieldbridge_modbus::LineRegistry::new())
}

/// Builds the adapter for a device written in YAML (protocol modbus) and starts it.
pub fn start(factory: &ModbusFactory, yaml: &str) -> TestHarness {
    let cfg = device_config_from_yaml(yaml);
    let adapter = factory
        .build(&cfg)
        .unwrap_or_else(|e| panic!("device config rejected: {e:#?}"));
    TestHarness::start(&cfg.name, adapter)
}

/// Collects the next good-or-bad reading of each named point (the first poll after `h` starts).
pub async fn first_readings(h: &mut TestHarness, names: &[&str]) -> Vec<Reading> {
    let mut out: Vec<Option<Reading>> = vec![None; names.len()];
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let missing: Vec<&str> = names
            .iter()
            .zip(&out)
            .filter(|(_, r)| r.is_none())
            .map(|(n, _)| *n)
            .collect();
        let Some(r) = h.try_next_reading(left).await else {
            panic!(
                "no readings for {missing:?} within {WAIT:?} (status {:?})",
                h.status()
            );
        };
        if let Some(i) = names.iter().position(|n| **n == *r.point) {
            if out[i].is_none() {
                out[i] = Some(r);
            }
        }
    }
    out.into_iter().map(|r| r.expect("filled")).collect()
}

/// Waits for a good reading of `point` satisfying `pred`.
pub async fn wait_value(
    h: &mut TestHarness,
    point: &str,
    pred: impl Fn(&Value) -> bool,
) -> Reading {
    h.wait_for(
        |r| &*r.point == point && r.quality == Quality::Good && pred(&r.value),
        WAIT,
    )
    .await
}

/// The readings published so far that are marked good (taken from the harness).
pub fn good_readings(h: &mut TestHarness) -> Vec<Reading> {
    h.take_readings()
        .into_iter()
        .filter(|r| r.quality == Quality::Good)
        .collect()
}

/// Waits for the device to be offline.
pub async fn wait_offline(h: &mut TestHarness) -> DeviceStatus {
    h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), WAIT)
        .await
}

/// Waits for the device to be online.
pub async fn wait_online(h: &mut TestHarness) -> DeviceStatus {
    h.wait_status(|s| matches!(s, DeviceStatus::Online), WAIT)
        .await
}
