//! Test peers: socat pty pairs with stable link names (so a pair can disappear and come back on the same
//! path, like a USB adapter on `/dev/serial/by-id/…`), the device's end of the line, and helpers to run the
//! adapter from YAML. Every wait is bounded and fails with a message naming what was awaited.
#![allow(dead_code)] // each test module uses a different part

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::testkit::{device_config_from_yaml, TestHarness};
use fieldbridge_sdk::{AdapterFactory, DeviceStatus, Quality, Reading, Value};
use fieldbridge_serial::{SerialFactory, StatsSnapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_serial::SerialStream;

/// Upper bound for anything a test waits for. Generous: CI machines are slow, and no test asserts a duration.
pub const WAIT: Duration = Duration::from_secs(20);

/// A socat pty pair whose ends are symlinks `a` (the device's side) and `b` (the adapter's side) in a
/// private directory. Killed when dropped.
pub struct Pty {
    _dir: tempfile::TempDir,
    child: Option<Child>,
    /// The device's end.
    pub a: PathBuf,
    /// The adapter's end (put it in `connection.port`).
    pub b: PathBuf,
}

impl Pty {
    /// A fresh pair: `socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B`, once both links exist.
    pub async fn new() -> Pty {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let mut pty = Pty {
            _dir: dir,
            child: None,
            a,
            b,
        };
        pty.start().await;
        pty
    }

    /// The adapter's end as a string.
    pub fn port(&self) -> String {
        self.b.display().to_string()
    }

    /// (Re)starts socat on the same link paths.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "socat already running");
        let child = Command::new("socat")
            .args([
                "-d",
                "-d",
                &format!("pty,raw,echo=0,link={}", self.a.display()),
                &format!("pty,raw,echo=0,link={}", self.b.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start socat (the serial tests need it: apt-get install socat): {e}")
            });
        self.child = Some(child);
        let (a, b) = (self.a.clone(), self.b.clone());
        wait_until("both pty links", || a.exists() && b.exists()).await;
    }

    /// Kills socat (both ptys disappear, as when a USB adapter is unplugged) and removes its links.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            tokio::time::timeout(WAIT, c.wait())
                .await
                .expect("socat did not exit after kill")
                .expect("wait for socat");
        }
        // socat removes its links on a clean exit, not after SIGKILL.
        let _ = std::fs::remove_file(&self.a);
        let _ = std::fs::remove_file(&self.b);
    }
}

/// Polls `cond` every 10 ms until it holds; panics after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The device's end of the line.
pub struct DeviceEnd {
    port: SerialStream,
    buf: Vec<u8>,
}

impl DeviceEnd {
    /// Opens the device's end of a pair.
    pub fn open(path: &Path) -> DeviceEnd {
        use tokio_serial::SerialPortBuilderExt as _;
        let port = tokio_serial::new(path.display().to_string(), 9600)
            .open_native_async()
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        DeviceEnd {
            port,
            buf: Vec::new(),
        }
    }

    /// Sends bytes, as the device would.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.port
            .write_all(bytes.as_ref())
            .await
            .expect("device write");
        self.port.flush().await.expect("device flush");
    }

    /// Reads until the bytes received so far contain `needle`; returns everything up to and including it.
    pub async fn read_until(&mut self, needle: &[u8]) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.buf.windows(needle.len()).position(|w| w == needle) {
                let rest = self.buf.split_off(i + needle.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            let mut chunk = [0u8; 256];
            match tokio::time::timeout_at(deadline, self.port.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                Ok(r) => panic!("device end read failed: {r:?}"),
                Err(_) => panic!(
                    "nothing matching {:?} within {WAIT:?} (got {:?})",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.buf.len() < n {
            let mut chunk = [0u8; 256];
            match tokio::time::timeout_at(deadline, self.port.read(&mut chunk)).await {
                Ok(Ok(k)) if k > 0 => self.buf.extend_from_slice(&chunk[..k]),
                Ok(r) => panic!("device end read failed: {r:?}"),
                Err(_) => panic!(
                    "fewer than {n} bytes within {WAIT:?} (got {:02x?})",
                    self.buf
                ),
            }
        }
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }
}

/// A running adapter with its factory (for the counters).
pub struct Running {
    pub h: TestHarness,
    pub factory: SerialFactory,
    pub name: String,
}

impl Running {
    /// The device's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.factory
            .stats(&self.name)
            .expect("stats registered at build")
            .snapshot()
    }

    /// Waits until the counters satisfy `pred`.
    pub async fn wait_stats(
        &self,
        what: &str,
        pred: impl Fn(&StatsSnapshot) -> bool,
    ) -> StatsSnapshot {
        let stats = self.factory.stats(&self.name).expect("stats");
        let s2 = stats.clone();
        wait_until(what, move || pred(&s2.snapshot())).await;
        stats.snapshot()
    }

    /// Waits for the device to be online.
    pub async fn online(&mut self) {
        self.h
            .wait_status(|s| *s == DeviceStatus::Online, WAIT)
            .await;
    }

    /// Waits for the next good reading of `point` and returns its value.
    pub async fn value(&mut self, point: &str) -> Value {
        let r = self
            .h
            .wait_for(|r| &*r.point == point && r.quality == Quality::Good, WAIT)
            .await;
        r.value
    }

    /// Waits for the next reading of `point`, good or not.
    pub async fn reading(&mut self, point: &str) -> Reading {
        self.h.wait_for(|r| &*r.point == point, WAIT).await
    }
}

/// Builds the adapter for a device written in YAML and starts it.
pub fn start(yaml: &str) -> Running {
    let cfg = device_config_from_yaml(yaml);
    let factory = SerialFactory::new();
    let adapter = factory
        .build(&cfg)
        .unwrap_or_else(|e| panic!("device config rejected: {e:#?}"));
    Running {
        h: TestHarness::start(&cfg.name, adapter),
        factory,
        name: cfg.name.to_string(),
    }
}

/// The configuration errors of a device written in YAML, as `line:col: path: message` strings.
pub fn config_errors(yaml: &str) -> Vec<String> {
    let cfg = device_config_from_yaml(yaml);
    match SerialFactory::new().build(&cfg) {
        Ok(_) => panic!("config accepted, expected errors"),
        Err(e) => e
            .iter()
            .map(|e| format!("{}:{}: {}: {}", e.mark.line, e.mark.col, e.path, e.message))
            .collect(),
    }
}

/// `Arc<str>` helper.
pub fn s(v: &str) -> Arc<str> {
    Arc::from(v)
}
