//! The reading pipeline end to end on a real App with simulated devices: scaling, deadbands, publish modes,
//! topic templates, payloads, status topics, write-back round trips, adapter restarts and reload.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge::app::{load_config, App, Registry};
use fieldbridge::mqtt::{Protocol, QoS};
use fieldbridge_sdk::{
    Adapter, AdapterContext, AdapterError, AdapterFactory, ConfigError, DeviceConfig,
};
use futures::future::BoxFuture;

use crate::util::client::{publish, sub, Client};
use crate::util::{wait_until, within};

/// Writes `yaml` (with `DB` replaced by a fresh database path) to a temp dir and starts an App from it.
pub async fn start_app(dir: &Path, yaml: &str, registry: Registry) -> Arc<App> {
    let path = dir.join("fieldbridge.yaml");
    std::fs::write(
        &path,
        yaml.replace("DB", &dir.join("fb.db").display().to_string()),
    )
    .unwrap();
    let cfg = load_config(&path, &registry).unwrap_or_else(|e| panic!("config invalid:\n{e}"));
    App::start(cfg, registry).await.expect("app starts")
}

const HEADER: &str = "
gateway: {id: gw}
broker:
  listeners: [{bind: \"127.0.0.1:0\"}]
api: {enabled: false}
storage: {path: DB, commit_interval: 5ms}
";

fn json(p: &[u8]) -> serde_json::Value {
    serde_json::from_slice(p)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(p)))
}

#[tokio::test]
async fn scaling_units_templates_payloads_and_status_topics() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{HEADER}
devices:
  - name: boiler
    protocol: sim
    labels: {{site: north}}
    poll_interval: 20ms
    topic: \"{{site}}/{{device}}/{{point}}\"
    points:
      - {{name: temp, signal: constant, initial: 215, type: int, scale: 0.1, unit: \"°C\"}}
      - {{name: raw, signal: constant, initial: 7, type: int, payload: value, topic: \"plain/{{gateway}}/{{point}}\"}}
      - {{name: offset, signal: constant, initial: 6050, type: int, scale: 0.01, offset: -40}}
"
    );
    let app = start_app(dir.path(), &yaml, Registry::default()).await;
    let addr = app.listener_addrs()[0];
    let mut c = Client::connect(addr, Protocol::V5, "watch", true).await;
    c.subscribe(vec![
        sub("north/#", QoS::AtMostOnce),
        sub("plain/#", QoS::AtMostOnce),
        sub("gw/#", QoS::AtLeastOnce),
    ])
    .await;
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    while ![
        "north/boiler/temp",
        "plain/gw/raw",
        "north/boiler/offset",
        "gw/boiler/status",
        "gw/status",
    ]
    .iter()
    .all(|t| seen.contains_key(*t))
    {
        let m = c.recv_publish().await;
        seen.insert(m.topic.to_string(), m.payload.to_vec());
    }
    let temp = json(&seen["north/boiler/temp"]);
    assert_eq!(temp["value"], 21.5, "215 * 0.1 published exactly");
    assert_eq!(temp["unit"], "°C");
    assert_eq!(temp["quality"], "good");
    let ts = temp["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == 24,
        "RFC 3339 with ms: {ts}"
    );
    assert_eq!(seen["plain/gw/raw"], b"7");
    assert_eq!(json(&seen["north/boiler/offset"])["value"], 20.5);
    assert_eq!(json(&seen["gw/boiler/status"])["status"], "online");
    assert_eq!(seen["gw/status"], b"online");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn deadband_and_publish_modes() {
    let dir = tempfile::tempdir().unwrap();
    // A ramp 0..1000 with step 10 per poll: every_poll publishes each; a deadband of 25 publishes every 3rd;
    // on_change of a constant publishes once (retained, so a subscriber that comes later still sees it);
    // on_change_or_every 5 republishes a constant every 5 readings.
    let yaml = format!(
        "{HEADER}
devices:
  - name: d
    protocol: sim
    poll_interval: 10ms
    points:
      - {{name: every, signal: ramp, min: 0, max: 100000, step: 10, type: int}}
      - {{name: band, signal: ramp, min: 0, max: 100000, step: 10, type: int, deadband: 25}}
      - {{name: once, signal: constant, initial: 1, type: int, publish: on_change, retain: true}}
      - {{name: heartbeat, signal: constant, initial: 2, type: int, publish: {{on_change_or_every: 5}}}}
"
    );
    let app = start_app(dir.path(), &yaml, Registry::default()).await;
    let mut c = Client::connect(app.listener_addrs()[0], Protocol::V311, "watch", true).await;
    c.subscribe(vec![sub("gw/d/+", QoS::AtMostOnce)]).await;
    let mut values: HashMap<String, Vec<f64>> = HashMap::new();
    while values.get("every").map_or(0, Vec::len) < 31 {
        let m = c.recv_publish().await;
        let point = m.topic.rsplit('/').next().unwrap().to_string();
        if point == "status" {
            continue;
        }
        values
            .entry(point)
            .or_default()
            .push(json(&m.payload)["value"].as_f64().unwrap());
    }
    app.shutdown(Duration::from_secs(5)).await;
    let every = &values["every"];
    assert!(
        every.windows(2).all(|w| w[1] - w[0] == 10.0),
        "every poll: {every:?}"
    );
    let band = &values["band"];
    assert!(band.len() >= 5, "{band:?}");
    assert!(
        band.windows(2).all(|w| w[1] - w[0] >= 25.0),
        "deadband 25 respected: {band:?}"
    );
    assert!(
        band.len() < every.len(),
        "deadband suppresses: {} vs {}",
        band.len(),
        every.len()
    );
    assert_eq!(
        values["once"],
        vec![1.0],
        "on_change publishes a constant once"
    );
    let hb = values["heartbeat"].len();
    // The ramp published 31 readings; a 1-in-5 heartbeat over the same time publishes about 6.
    assert!((3..=10).contains(&hb), "on_change_or_every: {hb}");
}

#[tokio::test]
async fn write_back_round_trip_with_results_and_mqtt5_response_topic() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{HEADER}
devices:
  - name: boiler
    protocol: sim
    poll_interval: 20ms
    points:
      - {{name: setpoint, signal: setpoint, initial: 600, min: 0, max: 1000, type: int, scale: 0.1, writable: true, publish: on_change}}
      - {{name: temp, signal: constant, initial: 1, type: int, publish: on_change}}
"
    );
    let app = start_app(dir.path(), &yaml, Registry::default()).await;
    let addr = app.listener_addrs()[0];
    let mut c = Client::connect(addr, Protocol::V5, "operator", true).await;
    c.subscribe(vec![
        sub("gw/boiler/+", QoS::AtLeastOnce),
        sub("gw/boiler/+/set/result", QoS::AtLeastOnce),
        sub("replies/#", QoS::AtLeastOnce),
    ])
    .await;
    // First reading: 60.0.
    loop {
        let m = c.recv_publish().await;
        if &*m.topic == "gw/boiler/setpoint" {
            assert_eq!(json(&m.payload)["value"], 60.0);
            break;
        }
    }
    // A write with a JSON body, as MQTT 5 request/response.
    let mut req = publish(
        "gw/boiler/setpoint/set",
        "{\"value\": 65.5}",
        QoS::AtLeastOnce,
        0,
    );
    req.properties.response_topic = Some("replies/op1".into());
    req.properties.correlation_data = Some(bytes::Bytes::from_static(b"req-42"));
    assert_eq!(c.publish(req).await, 0);
    let (mut result, mut reply, mut readback) = (None, None, None);
    while result.is_none() || reply.is_none() || readback.is_none() {
        let m = c.recv_publish().await;
        match &*m.topic {
            "gw/boiler/setpoint/set/result" => result = Some(json(&m.payload)),
            "replies/op1" => {
                assert_eq!(
                    m.properties.correlation_data.as_deref(),
                    Some(&b"req-42"[..])
                );
                reply = Some(json(&m.payload));
            }
            "gw/boiler/setpoint" => readback = Some(json(&m.payload)["value"].clone()),
            _ => {}
        }
    }
    assert_eq!(result.unwrap()["ok"], true);
    assert_eq!(reply.unwrap()["ok"], true);
    assert_eq!(
        readback.unwrap(),
        65.5,
        "inverse scaling wrote 655; it reads back as 65.5"
    );

    // Errors are answered, not ignored: read-only point, unknown point, out of range, bad payload.
    for (topic, payload, want) in [
        ("gw/boiler/temp/set", "3", "read-only"),
        ("gw/boiler/nope/set", "3", "unknown point"),
        ("gw/boiler/setpoint/set", "5000", "invalid value"),
        ("gw/boiler/setpoint/set", "{\"v\":1}", "invalid value"),
        ("gw/boiler/setpoint/set", "NaN", "not a finite number"),
        ("gw/boiler/setpoint/set", "-inf", "not a finite number"),
        ("gw/boiler/setpoint/set", "1e400", "not a finite number"),
    ] {
        c.publish(publish(topic, payload, QoS::AtLeastOnce, 0))
            .await;
        let res = loop {
            let m = c.recv_publish().await;
            if m.topic.ends_with("/set/result") {
                assert_eq!(&*m.topic, format!("{topic}/result"));
                break json(&m.payload);
            }
        };
        assert_eq!(res["ok"], false, "{topic} {payload}");
        let err = res["error"].as_str().unwrap();
        assert!(err.contains(want), "{topic} {payload}: {err}");
    }
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn device_failures_show_in_status_and_readings_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{HEADER}
devices:
  - name: flaky
    protocol: sim
    poll_interval: 20ms
    connection: {{failure_rate: 1.0}}
    points:
      - {{name: x, signal: constant, initial: 1}}
  - name: good
    protocol: sim
    poll_interval: 20ms
    points:
      - {{name: y, signal: counter, initial: 0, type: int}}
"
    );
    let app = start_app(dir.path(), &yaml, Registry::default()).await;
    let mut c = Client::connect(app.listener_addrs()[0], Protocol::V311, "watch", true).await;
    c.subscribe(vec![sub("gw/+/status", QoS::AtLeastOnce)])
        .await;
    let mut statuses = HashMap::new();
    while statuses.len() < 2 {
        let m = c.recv_publish().await;
        let v = json(&m.payload);
        if v["status"] != "starting" {
            statuses.insert(m.topic.to_string(), v);
        }
    }
    assert_eq!(statuses["gw/flaky/status"]["status"], "offline");
    assert!(statuses["gw/flaky/status"]["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(statuses["gw/good/status"]["status"], "online");
    // Readings are in the history: the counter's rows carry device, point and the numeric value.
    wait_until("readings committed", || {
        app.store
            .query(&fieldbridge::store::HistoryQuery {
                device: Some("good".into()),
                point: Some("y".into()),
                ..Default::default()
            })
            .map(|rows| rows.len() >= 3)
            .unwrap_or(false)
    })
    .await;
    let rows = app
        .store
        .query(&fieldbridge::store::HistoryQuery {
            device: Some("good".into()),
            point: Some("y".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(rows
        .iter()
        .all(|r| r.num.is_some() && &*r.topic == "gw/good/y"));
    app.shutdown(Duration::from_secs(5)).await;
}

/// An adapter that panics on its first runs and then works: the supervisor must restart it.
struct Crashy {
    runs: Arc<std::sync::atomic::AtomicU32>,
}

struct CrashyAdapter {
    run: u32,
}

impl AdapterFactory for Crashy {
    fn protocol(&self) -> &'static str {
        "crashy"
    }
    fn build(&self, _device: &DeviceConfig) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(CrashyAdapter { run }))
    }
}

impl Adapter for CrashyAdapter {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(async move {
            // Run 0 is the validation build in `load_config`; runs 1 and 2 fail, run 3 works.
            match self.run {
                1 => panic!("simulated adapter bug"),
                2 => Err(AdapterError::Fatal("simulated fatal error".into())),
                _ => {
                    ctx.status.set(fieldbridge_sdk::DeviceStatus::Online);
                    ctx.cancel.cancelled().await;
                    Ok(())
                }
            }
        })
    }
}

#[tokio::test]
async fn a_panicking_adapter_is_restarted_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{HEADER}
devices:
  - name: crashy
    protocol: crashy
    points: [{{name: p}}]
"
    );
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let registry = Registry::default().with(Arc::new(Crashy { runs: runs.clone() }));
    let app = start_app(dir.path(), &yaml, registry).await;
    let mut c = Client::connect(app.listener_addrs()[0], Protocol::V311, "watch", true).await;
    c.subscribe(vec![sub("gw/crashy/status", QoS::AtLeastOnce)])
        .await;
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("online") {
        let m = c.recv_publish().await;
        let v = json(&m.payload);
        seen.push(v["status"].as_str().unwrap().to_string());
        if v["status"] == "error" {
            assert!(v["reason"].as_str().unwrap().contains("simulated"), "{v}");
        }
    }
    assert!(
        seen.iter().filter(|s| *s == "error").count() >= 1,
        "{seen:?}"
    );
    assert!(runs.load(std::sync::atomic::Ordering::SeqCst) >= 4);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn reload_adds_changes_removes_devices_while_unchanged_ones_never_miss_a_reading() {
    let dir = tempfile::tempdir().unwrap();
    let device = |name: &str, initial: i64| {
        format!(
            "  - name: {name}
    protocol: sim
    poll_interval: 10ms
    points:
      - {{name: n, signal: counter, initial: {initial}, type: int}}
"
        )
    };
    let yaml1 = format!(
        "{HEADER}devices:\n{}{}{}",
        device("steady", 0),
        device("changed", 0),
        device("removed", 0)
    );
    let app = start_app(dir.path(), &yaml1, Registry::default()).await;
    let mut c = Client::connect(app.listener_addrs()[0], Protocol::V311, "counter", true).await;
    c.subscribe(vec![sub("gw/+/n", QoS::AtMostOnce)]).await;
    let mut t = Tracker::default();
    while t.last.len() < 3 {
        let m = c.recv_publish().await;
        t.on_message(&m);
    }
    // Reload: `changed` gets a new initial value (restart), `removed` goes, `added` comes, `steady` stays.
    let yaml2 = format!(
        "{HEADER}devices:\n{}{}{}",
        device("steady", 0),
        device("changed", 1000),
        device("added", 5000)
    );
    std::fs::write(
        dir.path().join("fieldbridge.yaml"),
        yaml2.replace("DB", &dir.path().join("fb.db").display().to_string()),
    )
    .unwrap();
    let summary = within("reload", app.reload()).await.expect("valid config");
    assert_eq!(summary.unchanged, vec!["steady"]);
    assert_eq!(summary.restarted, vec!["changed"]);
    assert_eq!(summary.added, vec!["added"]);
    assert_eq!(summary.removed, vec!["removed"]);
    let mut saw_added = false;
    let mut saw_changed_restart = false;
    let mut steady_after = 0;
    while !(saw_added && saw_changed_restart && steady_after >= 20) {
        let m = c.recv_publish().await;
        let dev = m.topic.split('/').nth(1).unwrap().to_string();
        let v = json(&m.payload)["value"].as_i64().unwrap();
        saw_added |= dev == "added" && v >= 5000;
        saw_changed_restart |= dev == "changed" && v >= 1000;
        if dev == "steady" {
            steady_after += 1;
        }
        t.on_message(&m);
    }
    assert_eq!(
        t.gaps, 0,
        "the unchanged device never missed a reading across the reload"
    );

    // Lines added above the devices (a comment, a new key) move them in the file, nothing more: no restart
    // (a device's position in the file counted as a change).
    let yaml3 = format!(
        "# comment\n{HEADER}  # another\ndevices:\n{}{}{}",
        device("steady", 0),
        device("changed", 1000),
        device("added", 5000)
    );
    std::fs::write(
        dir.path().join("fieldbridge.yaml"),
        yaml3.replace("DB", &dir.path().join("fb.db").display().to_string()),
    )
    .unwrap();
    let summary = within("reload", app.reload()).await.expect("valid config");
    assert_eq!(summary.unchanged, vec!["steady", "changed", "added"]);
    assert!(summary.restarted.is_empty(), "{:?}", summary.restarted);

    // A reload that fails validation changes nothing.
    std::fs::write(
        dir.path().join("fieldbridge.yaml"),
        "gateway: {id: gw}\nbroker: {bogus: 1}\n",
    )
    .unwrap();
    let errors = app.reload().await.expect_err("invalid config refused");
    assert!(
        errors.to_string().contains("fieldbridge.yaml:2:"),
        "{errors}"
    );
    let before = t.last["steady"];
    while t.last["steady"] <= before + 5 {
        let m = c.recv_publish().await;
        t.on_message(&m);
    }
    assert_eq!(t.gaps, 0);
    app.shutdown(Duration::from_secs(5)).await;
}

/// Follows each device's counter; counts gaps in the `steady` device's sequence.
#[derive(Default)]
struct Tracker {
    last: HashMap<String, i64>,
    gaps: u32,
}

impl Tracker {
    fn on_message(&mut self, m: &fieldbridge::mqtt::Publish) {
        let dev = m.topic.split('/').nth(1).unwrap().to_string();
        let v = json(&m.payload)["value"].as_i64().unwrap();
        if dev == "steady" {
            if let Some(prev) = self.last.get(&dev) {
                if v != prev + 1 {
                    self.gaps += 1;
                }
            }
        }
        self.last.insert(dev, v);
    }
}

/// An adapter that records the values of the write requests it receives, in order, and answers each after
/// letting other tasks run (as a device round trip would); with `hold`, it never answers.
struct Recording {
    seen: Arc<parking_lot::Mutex<Vec<i64>>>,
    hold: bool,
}

impl AdapterFactory for Recording {
    fn protocol(&self) -> &'static str {
        "recording"
    }
    fn build(&self, _device: &DeviceConfig) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        Ok(Box::new(RecordingAdapter {
            seen: self.seen.clone(),
            hold: self.hold,
        }))
    }
}

struct RecordingAdapter {
    seen: Arc<parking_lot::Mutex<Vec<i64>>>,
    hold: bool,
}

impl Adapter for RecordingAdapter {
    fn run(
        self: Box<Self>,
        mut ctx: AdapterContext,
    ) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(async move {
            ctx.status.set(fieldbridge_sdk::DeviceStatus::Online);
            let mut held = Vec::new();
            loop {
                let cmd = tokio::select! {
                    c = ctx.commands.recv() => c,
                    _ = ctx.cancel.cancelled() => return Ok(()),
                };
                let Some(cmd) = cmd else { return Ok(()) };
                let v = match cmd.value {
                    fieldbridge_sdk::Value::Int(v) => v,
                    fieldbridge_sdk::Value::UInt(v) => v as i64,
                    fieldbridge_sdk::Value::Float(v) => v as i64,
                    other => panic!("unexpected value {other:?}"),
                };
                self.seen.lock().push(v);
                if self.hold {
                    held.push(cmd.reply);
                    continue;
                }
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                let _ = cmd.reply.send(Ok(()));
            }
        })
    }
}

/// A device's write requests reach it in the order they were published, so the last command is the value
/// the device keeps (they used to run on a task each and overtook one another: 1 2 21 3 … 30 23 … 29).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_devices_writes_run_in_the_order_they_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{HEADER}
devices:
  - name: valve
    protocol: recording
    points: [{{name: sp, type: int, writable: true}}]
"
    );
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let registry = Registry::default().with(Arc::new(Recording {
        seen: seen.clone(),
        hold: false,
    }));
    let app = start_app(dir.path(), &yaml, registry).await;
    let mut c = Client::connect(app.listener_addrs()[0], Protocol::V311, "op", true).await;
    const N: i64 = 200;
    for v in 1..=N {
        // QoS 0, pipelined: nothing paces the requests but their order on the connection.
        c.send(fieldbridge::mqtt::Packet::Publish(publish(
            "gw/valve/sp/set",
            &v.to_string(),
            QoS::AtMostOnce,
            0,
        )))
        .await;
    }
    wait_until("every write reaches the adapter", || {
        seen.lock().len() as i64 >= N
    })
    .await;
    let got = seen.lock().clone();
    let want: Vec<i64> = (1..=N).collect();
    assert_eq!(got, want, "writes reached the device out of order");
    app.shutdown(Duration::from_secs(5)).await;
}

/// A device that never answers holds at most a bounded queue of writes; the rest are answered with an
/// error at once, and other devices' writes still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_stuck_device_are_bounded_and_do_not_hold_up_others() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{HEADER}
devices:
  - name: stuck
    protocol: recording
    points: [{{name: sp, type: int, writable: true}}]
  - name: boiler
    protocol: sim
    poll_interval: 20ms
    points:
      - {{name: setpoint, signal: setpoint, initial: 1, min: 0, max: 100, type: int, writable: true, publish: on_change}}
"
    );
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let registry = Registry::default().with(Arc::new(Recording {
        seen: seen.clone(),
        hold: true,
    }));
    let app = start_app(dir.path(), &yaml, registry).await;
    let mut c = Client::connect(app.listener_addrs()[0], Protocol::V311, "op", true).await;
    c.subscribe(vec![
        sub("gw/+/sp/set/result", QoS::AtMostOnce),
        sub("gw/boiler/setpoint/set/result", QoS::AtMostOnce),
    ])
    .await;
    let queue = fieldbridge::pipeline::COMMAND_QUEUE as i64;
    // One write is with the adapter, `queue` wait; the rest are refused.
    let n = queue + 1 + 40;
    for v in 1..=n {
        c.send(fieldbridge::mqtt::Packet::Publish(publish(
            "gw/stuck/sp/set",
            &v.to_string(),
            QoS::AtMostOnce,
            0,
        )))
        .await;
    }
    // The other device is served meanwhile.
    c.send(fieldbridge::mqtt::Packet::Publish(publish(
        "gw/boiler/setpoint/set",
        "7",
        QoS::AtMostOnce,
        0,
    )))
    .await;
    // 40 refusals (41 if the first write had not yet left the queue for the adapter when the last ones
    // arrived) and the other device's answer, in any order.
    let (mut busy, mut boiler) = (0, false);
    while busy < 40 || !boiler {
        let m = c.recv_publish().await;
        let r = json(&m.payload);
        if &*m.topic == "gw/boiler/setpoint/set/result" {
            assert_eq!(r["ok"], true, "{r}");
            boiler = true;
            continue;
        }
        assert_eq!(&*m.topic, "gw/stuck/sp/set/result");
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["error"].as_str().unwrap().contains("already waiting"),
            "{r}"
        );
        busy += 1;
    }
    assert_eq!(
        seen.lock().len(),
        1,
        "the stuck device got one write at a time"
    );
    app.shutdown(Duration::from_secs(5)).await;
}

/// A meter's f32 reading "not available" (NaN) through a real Modbus device (pymodbus): with a deadband, the
/// changes NaN -> 25.0 -> NaN -> 35.0 are all published (a NaN compared unequal to everything, so no
/// difference to it passed the deadband and a point that started on NaN stayed there), and a NaN is a bad
/// reading that says why (it was `"value":null` marked good).
#[tokio::test]
async fn nan_readings_are_bad_and_changes_to_and_from_them_pass_the_deadband() {
    let py = crate::util::peers::require_python_module("pymodbus", "pymodbus==3.16.1");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/modbus/tests/peers/modbus_peer.py");
    // Holding registers 0..1: f32 NaN (0x7FC0 0x0000).
    let image = r#"{"1": {"hr": {"0": [32704, 0, 0, 0]}}}"#;
    let mut peer = crate::util::peers::Peer::spawn(
        tokio::process::Command::new(py)
            .arg(script)
            .args(["--image", image, "--tcp", "0"]),
    );
    let ready = peer.line_where(|l| l.starts_with("READY ")).await;
    let port = ready.trim_start_matches("READY ").trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    // `hi` is the float's high word, writable: the test changes the float through it.
    let yaml = format!(
        "{HEADER}
devices:
  - name: meter
    protocol: modbus
    poll_interval: 20ms
    connection: {{tcp: \"127.0.0.1:{port}\"}}
    points:
      - {{name: flow, address: 40001, type: f32, deadband: 0.5, publish: on_change}}
      - {{name: hi, address: 40001, type: u16, writable: true, publish: on_change}}
"
    );
    let app = start_app(dir.path(), &yaml, Registry::default()).await;
    let mut c = Client::connect(app.listener_addrs()[0], Protocol::V311, "watch", true).await;
    c.subscribe(vec![
        sub("gw/meter/flow", QoS::AtMostOnce),
        sub("gw/meter/hi/set/result", QoS::AtMostOnce),
    ])
    .await;
    let first = loop {
        let m = c.recv_publish().await;
        if &*m.topic == "gw/meter/flow" {
            break json(&m.payload);
        }
    };
    assert_eq!(first["value"], serde_json::Value::Null, "{first}");
    assert_eq!(first["quality"], "bad", "{first}");
    assert!(first["reason"].as_str().unwrap().contains("NaN"), "{first}");
    // 0x41C8 0x0000 = 25.0, 0x7FC0 = NaN again, 0x420C 0x0000 = 35.0.
    for (hi, want) in [
        (0x41C8, serde_json::json!(25.0)),
        (0x7FC0, serde_json::Value::Null),
        (0x420C, serde_json::json!(35.0)),
    ] {
        c.send(fieldbridge::mqtt::Packet::Publish(publish(
            "gw/meter/hi/set",
            &hi.to_string(),
            QoS::AtMostOnce,
            0,
        )))
        .await;
        let got = loop {
            let m = c.recv_publish().await;
            if &*m.topic == "gw/meter/flow" {
                break json(&m.payload);
            }
            assert_eq!(
                json(&m.payload)["ok"],
                true,
                "write failed: {:?}",
                m.payload
            );
        };
        assert_eq!(
            got["value"].as_f64(),
            want.as_f64(),
            "after writing {hi:#x}: {got}"
        );
        let quality = if want.is_null() { "bad" } else { "good" };
        assert_eq!(got["quality"], quality, "{got}");
    }
    app.shutdown(Duration::from_secs(5)).await;
}

/// A reload that adds a listener keeps the existing one on its address: the old socket is closed before the
/// same address is bound again (awaited, not retried on "address in use").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rebinds_a_listener_on_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let (p, q) = (
        crate::util::daemon::free_port(),
        crate::util::daemon::free_port(),
    );
    let yaml = |listeners: &str| {
        format!(
            "gateway: {{id: gw}}\nbroker:\n  listeners: [{listeners}]\napi: {{enabled: false}}\n\
             storage: {{path: DB}}\n"
        )
    };
    let one = yaml(&format!("{{bind: \"127.0.0.1:{p}\"}}"));
    let app = start_app(dir.path(), &one, Registry::default()).await;
    let two = yaml(&format!(
        "{{bind: \"127.0.0.1:{p}\"}}, {{name: second, bind: \"127.0.0.1:{q}\"}}"
    ));
    std::fs::write(
        dir.path().join("fieldbridge.yaml"),
        two.replace("DB", &dir.path().join("fb.db").display().to_string()),
    )
    .unwrap();
    let summary = within("reload", app.reload()).await.expect("valid config");
    assert!(summary.notes.is_empty(), "{:?}", summary.notes);
    for port in [p, q] {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let c = Client::connect(addr, Protocol::V311, &format!("c{port}"), true).await;
        c.disconnect().await;
    }
    app.shutdown(Duration::from_secs(5)).await;
}
