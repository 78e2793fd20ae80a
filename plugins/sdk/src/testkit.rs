//! A test kit for adapters: run an adapter against a fake core and look at what comes out.
//!
//! [`TestHarness`] builds an [`AdapterContext`] and keeps the other ends of its channels, so a test can wait for
//! readings and status changes, send write commands and cancel, each bounded by a timeout. The helpers panic
//! with a description of what was awaited when the timeout expires: in a test that is the useful outcome, and
//! it keeps test code free of `unwrap` chains. Timeouts are meant as upper bounds only; with tokio's paused
//! clock (`#[tokio::test(start_paused = true)]`) they cost no real time.
//!
//! [`device_config_from_yaml`] turns a device-map entry written in YAML into a [`DeviceConfig`] with real
//! line/column positions (through [`crate::config::parse_yaml`], the same parser the core uses), so adapter
//! tests can assert where a configuration error is reported.
//!
//! It is not behind a feature: it is small, has no extra dependencies, and every adapter crate wants it.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{parse_duration, parse_yaml, POINT_CORE_KEYS};
use crate::{
    Adapter, AdapterContext, AdapterError, AdapterFactory, Command, CommandError, ConfigError,
    ConfigNode, DeviceConfig, DeviceStatus, NodeKind, PointConfig, Reading, ReadingSink,
    StatusHandle, Value,
};

/// Default capacity of the reading channel: small, so that back-pressure shows up in tests that do not read.
pub const DEFAULT_CAPACITY: usize = 64;

/// The core's side of one adapter run.
#[derive(Debug)]
pub struct TestHarness {
    device: Arc<str>,
    readings: mpsc::Receiver<Reading>,
    status: watch::Receiver<DeviceStatus>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), AdapterError>>>,
}

impl TestHarness {
    /// A harness and the context to hand to the code under test (which the test runs itself).
    pub fn new(device: &str) -> (TestHarness, AdapterContext) {
        TestHarness::with_capacity(device, DEFAULT_CAPACITY)
    }

    /// Like [`TestHarness::new`] with a chosen reading channel capacity (1 to test back-pressure).
    pub fn with_capacity(device: &str, capacity: usize) -> (TestHarness, AdapterContext) {
        let device: Arc<str> = Arc::from(device);
        let (tx, readings) = mpsc::channel(capacity);
        let (status_handle, status) = StatusHandle::new();
        let (commands, commands_rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let ctx = AdapterContext {
            device: device.clone(),
            output: ReadingSink::new(tx),
            status: status_handle,
            commands: commands_rx,
            cancel: cancel.clone(),
        };
        let harness = TestHarness {
            device,
            readings,
            status,
            commands,
            cancel,
            task: None,
        };
        (harness, ctx)
    }

    /// Spawns `run(ctx)` on the current runtime; [`TestHarness::stop`] cancels it and returns its result.
    pub fn spawn<F, Fut>(device: &str, run: F) -> TestHarness
    where
        F: FnOnce(AdapterContext) -> Fut,
        Fut: Future<Output = Result<(), AdapterError>> + Send + 'static,
    {
        let (mut harness, ctx) = TestHarness::new(device);
        harness.task = Some(tokio::spawn(run(ctx)));
        harness
    }

    /// Spawns an adapter.
    pub fn start(device: &str, adapter: Box<dyn Adapter>) -> TestHarness {
        TestHarness::spawn(device, move |ctx| adapter.run(ctx))
    }

    /// Builds an adapter with `factory` (returning the configuration errors if that fails) and spawns it.
    pub fn build(
        factory: &dyn AdapterFactory,
        device: &DeviceConfig,
    ) -> Result<TestHarness, Vec<ConfigError>> {
        let adapter = factory.build(device)?;
        Ok(TestHarness::start(&device.name, adapter))
    }

    /// The device name in the context.
    pub fn device(&self) -> &Arc<str> {
        &self.device
    }

    /// The next reading; panics if none arrives within `timeout` or the adapter dropped its output.
    pub async fn next_reading(&mut self, timeout: Duration) -> Reading {
        match tokio::time::timeout(timeout, self.readings.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("{}: the adapter dropped its output", self.device),
            Err(_) => panic!(
                "{}: no reading within {timeout:?} (status {:?})",
                self.device,
                self.status()
            ),
        }
    }

    /// The next reading, or `None` if none arrives within `timeout` (or the output is closed).
    pub async fn try_next_reading(&mut self, timeout: Duration) -> Option<Reading> {
        tokio::time::timeout(timeout, self.readings.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips readings until one matches `pred`; panics if none does within `timeout` (overall, not per reading).
    pub async fn wait_for(
        &mut self,
        mut pred: impl FnMut(&Reading) -> bool,
        timeout: Duration,
    ) -> Reading {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = 0usize;
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, self.readings.recv()).await {
                Ok(Some(r)) if pred(&r) => return r,
                Ok(Some(r)) => {
                    skipped += 1;
                    last = Some(r);
                }
                Ok(None) => panic!(
                    "{}: the adapter dropped its output before a matching reading ({skipped} skipped, last \
                     {last:?})",
                    self.device
                ),
                Err(_) => panic!(
                    "{}: no matching reading within {timeout:?} ({skipped} skipped, last {last:?}, status {:?})",
                    self.device,
                    self.status()
                ),
            }
        }
    }

    /// Every reading already queued, without waiting.
    pub fn take_readings(&mut self) -> Vec<Reading> {
        let mut out = Vec::new();
        while let Ok(r) = self.readings.try_recv() {
            out.push(r);
        }
        out
    }

    /// The current status.
    pub fn status(&self) -> DeviceStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status matches `pred` (checked against the current status first); panics after
    /// `timeout`.
    pub async fn wait_status(
        &mut self,
        mut pred: impl FnMut(&DeviceStatus) -> bool,
        timeout: Duration,
    ) -> DeviceStatus {
        let result = tokio::time::timeout(timeout, self.status.wait_for(|s| pred(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match result {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => panic!("{}: the adapter dropped its status handle", self.device),
            Err(_) => panic!(
                "{}: status did not match within {timeout:?} (it is {:?})",
                self.device,
                self.status()
            ),
        }
    }

    /// Sends a write command and waits (up to 60 s, panicking after) for the adapter's answer. Panics if the
    /// adapter drops the command without answering: the core treats that as a bug too.
    pub async fn write(&self, point: &str, value: Value) -> Result<(), CommandError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command {
            point: Arc::from(point),
            value,
            reply,
        };
        let limit = Duration::from_secs(60);
        let answer = tokio::time::timeout(limit, async {
            self.commands.send(cmd).await.unwrap_or_else(|_| {
                panic!("{}: the adapter dropped its command input", self.device)
            });
            rx.await
        })
        .await;
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => panic!(
                "{}: the adapter dropped the write command for `{point}` without answering",
                self.device
            ),
            Err(_) => panic!(
                "{}: no answer to the write of `{point}` within {limit:?}",
                self.device
            ),
        }
    }

    /// Cancels the adapter's token (what the core does on shutdown or reload).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The adapter's cancellation token.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Cancels a spawned adapter and returns its result; panics if it does not stop within `timeout` or
    /// panicked, or if nothing was spawned.
    pub async fn stop(mut self, timeout: Duration) -> Result<(), AdapterError> {
        self.cancel.cancel();
        let task = self.task.take().unwrap_or_else(|| {
            panic!(
                "{}: stop() needs a harness made by spawn/start/build",
                self.device
            )
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => panic!("{}: the adapter task failed: {e}", self.device),
            Err(_) => panic!(
                "{}: the adapter did not stop within {timeout:?} of cancellation",
                self.device
            ),
        }
    }

    /// Waits for a spawned adapter to end by itself (without cancelling it), returning its result; panics after
    /// `timeout`.
    pub async fn join(mut self, timeout: Duration) -> Result<(), AdapterError> {
        let task = self.task.take().unwrap_or_else(|| {
            panic!(
                "{}: join() needs a harness made by spawn/start/build",
                self.device
            )
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => panic!("{}: the adapter task failed: {e}", self.device),
            Err(_) => panic!(
                "{}: the adapter did not end within {timeout:?}",
                self.device
            ),
        }
    }
}

impl Drop for TestHarness {
    /// A failing test must not leave the adapter polling in the background of the next one.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Builds a [`DeviceConfig`] from one device-map entry in YAML, the way the core splits it, so adapter tests
/// can check their validation errors at real positions (file `test.yaml`, paths relative to the entry, e.g.
/// `points[1].signal`):
///
/// - `name` (required), `protocol` (default `test`), `connection` (a null node when absent);
/// - `poll_interval` and `timeout` (durations like `500ms`, default 1 s), `retries` (default 0);
/// - `points`: each point's `name`, `writable` and `poll_interval` are taken out, and every key the core owns
///   ([`crate::config::POINT_CORE_KEYS`]: scale, unit, topic, …) is removed; the rest is the point's `spec`.
///
/// Other device keys (labels, topics) are ignored. Panics on malformed input: this is test scaffolding; the
/// core's loader is what validates real files.
pub fn device_config_from_yaml(yaml: &str) -> DeviceConfig {
    let root = parse_yaml("test.yaml", yaml).unwrap_or_else(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("device yaml does not parse:\n{}", list.join("\n"))
    });
    if root.as_map().is_none() {
        panic!(
            "{}: device yaml: expected a mapping, found {}",
            root.mark,
            root.type_name()
        );
    }
    let string = |n: &ConfigNode| {
        n.as_str()
            .unwrap_or_else(|| panic!("{}: expected a string, found {}", n.mark, n.type_name()))
            .to_owned()
    };
    let name = root
        .get("name")
        .map(string)
        .unwrap_or_else(|| panic!("device yaml: `name` is required"));
    let protocol = root
        .get("protocol")
        .map_or_else(|| "test".to_owned(), string);
    let connection = root
        .get("connection")
        .cloned()
        .unwrap_or_else(|| ConfigNode::null(root.mark.clone(), "connection"));
    let poll_interval = root
        .get("poll_interval")
        .map_or(Duration::from_secs(1), node_duration);
    let timeout = root
        .get("timeout")
        .map_or(Duration::from_secs(1), node_duration);
    let retries = match root.get("retries").map(|n| (n, &n.kind)) {
        None => 0,
        Some((n, NodeKind::Int(i))) => {
            u32::try_from(*i).unwrap_or_else(|_| panic!("{}: retries out of range", n.mark))
        }
        Some((n, _)) => panic!("{}: `retries` must be an integer", n.mark),
    };
    let points = match root.get("points") {
        None => Vec::new(),
        Some(n) if n.is_null() => Vec::new(),
        Some(n) => n
            .as_seq()
            .unwrap_or_else(|| panic!("{}: `points` must be a list", n.mark))
            .iter()
            .map(point_from_node)
            .collect(),
    };
    DeviceConfig {
        name: Arc::from(name),
        protocol,
        connection,
        poll_interval,
        timeout,
        retries,
        points: points.into(),
    }
}

fn point_from_node(node: &ConfigNode) -> PointConfig {
    let entries = node
        .as_map()
        .unwrap_or_else(|| panic!("{}: a point must be a mapping", node.mark));
    let name = node
        .get("name")
        .and_then(ConfigNode::as_str)
        .unwrap_or_else(|| panic!("{}: a point needs a string `name`", node.mark));
    let writable = match node.get("writable").map(|n| (n, &n.kind)) {
        None => false,
        Some((_, NodeKind::Bool(b))) => *b,
        Some((n, _)) => panic!("{}: `writable` must be a boolean", n.mark),
    };
    let poll_interval = node.get("poll_interval").map(node_duration);
    let spec_entries = entries
        .iter()
        .filter(|(k, _)| !k.as_str().is_some_and(|k| POINT_CORE_KEYS.contains(&k)))
        .cloned()
        .collect();
    PointConfig {
        name: Arc::from(name),
        writable,
        poll_interval,
        spec: ConfigNode {
            kind: NodeKind::Map(spec_entries),
            mark: node.mark.clone(),
            path: node.path.clone(),
        },
    }
}

fn node_duration(node: &ConfigNode) -> Duration {
    let text = match &node.kind {
        NodeKind::String(s) => s.clone(),
        NodeKind::Int(i) => i.to_string(),
        _ => panic!(
            "{}: expected a duration, found {}",
            node.mark,
            node.type_name()
        ),
    };
    parse_duration(&text).unwrap_or_else(|e| panic!("{}: {e}", node.mark))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_config_splits_core_keys() {
        let d = device_config_from_yaml(
            "name: m1\nprotocol: sim\npoll_interval: 500ms\nretries: 2\npoints:\n  - name: t\n    writable: true\n    \
             poll_interval: 2s\n    unit: °C\n    signal: sine\n",
        );
        assert_eq!(&*d.name, "m1");
        assert_eq!(d.protocol, "sim");
        assert_eq!(d.poll_interval, Duration::from_millis(500));
        assert_eq!(d.retries, 2);
        assert!(d.connection.is_null());
        let p = &d.points[0];
        assert!(p.writable);
        assert_eq!(p.poll_interval, Some(Duration::from_secs(2)));
        let NodeKind::Map(spec) = &p.spec.kind else {
            panic!()
        };
        assert_eq!(spec.len(), 1, "{spec:?}");
        assert_eq!(p.spec.get("signal").unwrap().path, "points[0].signal");
    }

    #[tokio::test(start_paused = true)]
    async fn harness_round_trip() {
        let (mut h, mut ctx) = TestHarness::new("d");
        let task = tokio::spawn(async move {
            ctx.status.set(DeviceStatus::Online);
            ctx.output
                .send(Reading {
                    device: ctx.device.clone(),
                    point: Arc::from("p"),
                    value: Value::Int(1),
                    quality: crate::Quality::Good,
                    ts: std::time::SystemTime::now(),
                })
                .await
                .unwrap();
            let cmd = ctx.commands.recv().await.unwrap();
            let _ = cmd
                .reply
                .send(Err(CommandError::ReadOnly(cmd.point.to_string())));
            ctx.cancel.cancelled().await;
        });
        let s = h
            .wait_status(|s| *s == DeviceStatus::Online, Duration::from_secs(5))
            .await;
        assert_eq!(s, DeviceStatus::Online);
        assert_eq!(
            h.next_reading(Duration::from_secs(5)).await.value,
            Value::Int(1)
        );
        assert_eq!(
            h.write("p", Value::Int(2)).await,
            Err(CommandError::ReadOnly("p".into()))
        );
        h.cancel();
        task.await.unwrap();
        assert!(h.try_next_reading(Duration::from_secs(1)).await.is_none());
    }
}
