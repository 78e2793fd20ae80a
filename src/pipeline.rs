//! The reading pipeline: `Reading` -> device-map rules (scale, offset, deadband, publish mode) -> topic +
//! payload -> the embedded broker (and the store); and the way back: `…/set` publishes -> `Command`s for
//! adapters -> results on `…/set/result` (and the MQTT 5 response topic).
//!
//! One task consumes the bounded reading channel every adapter writes to, so per-point state (last published
//! value, counters) needs no locks. The device table is shared with the supervisor, which swaps entries on
//! reload; a point's state is reset when its device's configuration changed.
//!
//! Memory: everything kept per point is sized by the configuration, never by traffic. Latest values (and, for
//! devices with on-change points, the publish rules' state) live in one slice per device, indexed by the
//! point's position in the device map; points are found by name through a sorted list of positions (4 bytes
//! a point, no per-point keys, no hash-table slack); the device's rules are shared with the configuration,
//! not copied.
//! State of devices a reload removed is dropped (the latest values by the supervisor, the pipeline's own
//! state at its next sweep).
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use fieldbridge_sdk::{Command, CommandError, DeviceStatus, Quality, Reading, Value};
use futures::future::BoxFuture;
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::link::Link;
use crate::broker::Message;
use crate::config::{
    Deadband, DeviceSpec, PayloadFormat, PointRules, PublishMode, TemplatePart, TopicTemplate,
};
use crate::mqtt::QoS;

/// Where published readings are logged (the store). The future resolves once the row is accepted by the
/// writer (not necessarily committed): it waits only when the store applies back-pressure (`when_full: block`).
pub trait Recorder: Send + Sync + 'static {
    /// Logs one published reading.
    fn record(&self, msg: &Message, reading: &Reading, num: Option<f64>) -> BoxFuture<'static, ()>;
    /// Whether a message on `topic` must be logged even if its point is not recorded (a bridge forwards it).
    fn must_log(&self, topic: &str) -> bool;
    /// Logs a message the gateway itself publishes that is not a reading: the answer to a write request
    /// (`…/set/result`, the MQTT 5 response topic), so a bridge whose forward rule matches sends it upstream.
    /// Called only when [`Recorder::must_log`] says so.
    fn record_message(&self, msg: &Message) -> BoxFuture<'static, ()>;
}

/// A device as the pipeline sees it: its rules, rendered topics and the adapter's command input.
#[derive(Debug)]
pub struct DeviceEntry {
    /// The device's configuration (its point rules are shared with the running configuration).
    pub spec: DeviceSpec,
    /// Changes whenever the device is (re)configured; per-point state is reset when it differs.
    pub generation: u64,
    /// Positions in `spec.points` (and in `topics`), sorted by point name: found by binary search.
    by_name: Box<[u32]>,
    /// Rendered topic of each point, in `spec.points` order.
    topics: Box<[Arc<str>]>,
    /// Write requests for the running adapter.
    pub commands: mpsc::Sender<Command>,
}

/// The shared device table.
pub type DeviceTable = Arc<RwLock<HashMap<Arc<str>, Arc<DeviceEntry>>>>;

/// Renders a topic template for one point.
pub fn render_topic(t: &TopicTemplate, gateway: &str, spec: &DeviceSpec, point: &str) -> String {
    let mut s = String::new();
    for part in &t.parts {
        match part {
            TemplatePart::Literal(l) => s.push_str(l),
            TemplatePart::Gateway => s.push_str(gateway),
            TemplatePart::Device => s.push_str(&spec.adapter.name),
            TemplatePart::Point => s.push_str(point),
            TemplatePart::Label(name) => {
                s.push_str(spec.labels.get(name).map_or("", String::as_str))
            }
        }
    }
    s
}

impl DeviceEntry {
    /// Builds the entry for a device, rendering every point's topic once.
    pub fn new(
        spec: DeviceSpec,
        gateway: &str,
        generation: u64,
        commands: mpsc::Sender<Command>,
    ) -> DeviceEntry {
        let topics = spec
            .points
            .iter()
            .map(|p| Arc::from(render_topic(&p.topic, gateway, &spec, &p.name)))
            .collect();
        let mut by_name: Vec<u32> = (0..spec.points.len() as u32).collect();
        by_name.sort_by(|&a, &b| {
            spec.points[a as usize]
                .name
                .cmp(&spec.points[b as usize].name)
        });
        DeviceEntry {
            spec,
            generation,
            by_name: by_name.into_boxed_slice(),
            topics,
            commands,
        }
    }

    /// A point's position, rules and topic.
    pub fn point(&self, name: &str) -> Option<(usize, &PointRules, &Arc<str>)> {
        let points = &self.spec.points;
        let at = self
            .by_name
            .binary_search_by(|&i| points[i as usize].name.as_ref().cmp(name))
            .ok()?;
        let i = self.by_name[at] as usize;
        Some((i, points.get(i)?, self.topics.get(i)?))
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether the device has no points.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

/// What the publish rules remember of one point: the last published value and readings since.
#[derive(Debug, Default)]
struct PointState {
    last: Option<(Value, Quality)>,
    since_publish: u32,
}

/// The pipeline's state of one device's points, for one generation of its configuration.
struct DeviceState {
    generation: u64,
    points: Box<[PointState]>,
}

impl DeviceState {
    fn new(entry: &DeviceEntry) -> DeviceState {
        DeviceState {
            generation: entry.generation,
            points: (0..entry.len()).map(|_| PointState::default()).collect(),
        }
    }
}

/// Write requests that may wait for one device (see [`Pipeline::run_commands`]).
pub const COMMAND_QUEUE: usize = 256;

/// How often the pipeline drops the state of devices no longer configured.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Decimal places of a number's shortest representation (0.1 -> 1, 0.25 -> 2, 10 -> 0), capped at 9.
fn decimals(x: f64) -> i32 {
    let s = format!("{x}");
    s.split_once('.')
        .map_or(0, |(_, frac)| frac.len().min(9) as i32)
}

/// Applies `raw * scale + offset`. Integers stay integers when the transform is the identity; an integer
/// scaled by a decimal factor is rounded to the factor's precision (so 215 * 0.1 is 21.5, not
/// 21.500000000000004).
pub fn scale_value(raw: &Value, rules: &PointRules) -> Value {
    if rules.scale == 1.0 && rules.offset == 0.0 {
        return raw.clone();
    }
    let integral = matches!(raw, Value::Int(_) | Value::UInt(_) | Value::Bool(_));
    match raw.as_f64() {
        None => raw.clone(),
        Some(x) => {
            let v = x * rules.scale + rules.offset;
            if integral {
                let d = decimals(rules.scale).max(decimals(rules.offset));
                let f = 10f64.powi(d);
                Value::Float((v * f).round() / f)
            } else {
                Value::Float(v)
            }
        }
    }
}

/// The inverse of [`scale_value`] for write-back: `raw = (value - offset) / scale`, rounded to an integer when
/// the scaled value was produced from one.
pub fn unscale_value(v: &Value, rules: &PointRules) -> Value {
    if rules.scale == 1.0 && rules.offset == 0.0 {
        return v.clone();
    }
    match v.as_f64() {
        Some(x) if !matches!(v, Value::Bool(_)) => {
            let raw = (x - rules.offset) / rules.scale;
            if (raw - raw.round()).abs() < 1e-6 {
                Value::Int(raw.round() as i64)
            } else {
                Value::Float(raw)
            }
        }
        _ => v.clone(),
    }
}

/// Why a non-finite float reading is bad.
fn non_finite_reason(f: f64) -> &'static str {
    if f.is_nan() {
        "the device reported NaN (not a number)"
    } else if f > 0.0 {
        "the device reported +infinity"
    } else {
        "the device reported -infinity"
    }
}

fn changed(
    last: &Option<(Value, Quality)>,
    value: &Value,
    quality: &Quality,
    deadband: Option<Deadband>,
) -> bool {
    let Some((lv, lq)) = last else { return true };
    if lq != quality {
        return true;
    }
    match (lv.as_f64(), value.as_f64(), deadband) {
        // A NaN compares unequal to everything, so no difference to a NaN is ever `>=` a deadband: a change
        // to or from a non-finite value is a change, NaN to NaN (or the same infinity) is not.
        (Some(a), Some(b), _) if !a.is_finite() || !b.is_finite() => {
            !(a.is_nan() && b.is_nan()) && a != b
        }
        (Some(a), Some(b), Some(Deadband::Absolute(d))) => (b - a).abs() >= d,
        (Some(a), Some(b), Some(Deadband::Percent(p))) => {
            (b - a).abs() >= a.abs() * p / 100.0 && a != b
        }
        _ => lv != value,
    }
}

/// Writes a value as JSON.
fn json_value(out: &mut String, v: &Value) {
    match v {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Float(f) if f.is_finite() => {
            let _ = write!(out, "{f}");
        }
        Value::Float(_) => out.push_str("null"),
        Value::String(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        Value::Bytes(b) => {
            out.push('"');
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            out.push('"');
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
}

/// The payload of one reading.
pub fn payload(
    format: PayloadFormat,
    value: &Value,
    quality: &Quality,
    unit: Option<&str>,
    ts: SystemTime,
) -> Bytes {
    match format {
        PayloadFormat::Value => Bytes::from(value.to_string()),
        PayloadFormat::Json => {
            let mut s = String::with_capacity(96);
            s.push_str("{\"value\":");
            json_value(&mut s, value);
            if let Some(u) = unit {
                s.push_str(",\"unit\":");
                s.push_str(&serde_json::Value::String(u.to_string()).to_string());
            }
            let _ = write!(
                s,
                ",\"ts\":\"{}\",\"quality\":\"{}\"",
                rfc3339_ms(ts),
                quality.as_str()
            );
            if let Quality::Bad(reason) = quality {
                s.push_str(",\"reason\":");
                s.push_str(&serde_json::Value::String(reason.clone()).to_string());
            }
            s.push('}');
            Bytes::from(s)
        }
    }
}

/// Counters of the pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Readings received from adapters.
    pub readings: std::sync::atomic::AtomicU64,
    /// Readings published.
    pub published: std::sync::atomic::AtomicU64,
    /// Readings suppressed by on-change/deadband rules.
    pub suppressed: std::sync::atomic::AtomicU64,
    /// Readings for devices or points not (or no longer) configured.
    pub unknown: std::sync::atomic::AtomicU64,
    /// Write requests handled.
    pub commands: std::sync::atomic::AtomicU64,
}

/// The latest reading of a point (raw quality, scaled value), as the status API and the dashboard show it
/// (built on request from what [`LiveState`] keeps).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Latest {
    /// Scaled value.
    #[serde(serialize_with = "ser_value")]
    pub value: Value,
    /// `good`, `bad` or `stale`.
    pub quality: &'static str,
    /// Reason of a bad quality.
    pub reason: Option<String>,
    /// RFC 3339 timestamp of the reading.
    pub ts: String,
    /// Unit from the device map.
    pub unit: Option<String>,
    /// Topic it is published on.
    pub topic: Arc<str>,
}

fn ser_value<S: serde::Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Value::Bool(b) => s.serialize_bool(*b),
        Value::Int(i) => s.serialize_i64(*i),
        Value::UInt(u) => s.serialize_u64(*u),
        Value::Float(f) => s.serialize_f64(*f),
        Value::String(t) => s.serialize_str(t),
        Value::Bytes(_) => s.serialize_str(&v.to_string()),
    }
}

/// (device, point).
pub type PointKey = (Arc<str>, Arc<str>);

/// What is kept of a point's latest reading: 72 bytes, plus the reason while its quality is bad.
#[derive(Debug)]
struct Slot {
    value: Value,
    quality: Quality,
    ts: SystemTime,
}

/// The latest readings of one device, by point position, for one generation of its configuration.
#[derive(Debug)]
struct DeviceLive {
    entry: Arc<DeviceEntry>,
    points: Box<[Option<Slot>]>,
}

/// Live state shared with the API: latest value per point and status per device. Both are bounded by the
/// configured devices and points: the supervisor forgets a device when a reload removes it.
#[derive(Debug, Default)]
pub struct LiveState {
    latest: RwLock<HashMap<Arc<str>, DeviceLive>>,
    /// device -> status.
    pub status: RwLock<HashMap<Arc<str>, DeviceStatus>>,
}

impl LiveState {
    /// Keeps a point's latest reading; the device's slots start over when its configuration changed.
    fn set(&self, entry: &Arc<DeviceEntry>, index: usize, slot: Slot) {
        let mut latest = self.latest.write();
        let dev = match latest.get_mut(&entry.spec.adapter.name) {
            Some(d) if d.entry.generation == entry.generation => d,
            _ => {
                let fresh = DeviceLive {
                    entry: entry.clone(),
                    points: (0..entry.len()).map(|_| None).collect(),
                };
                latest.insert(entry.spec.adapter.name.clone(), fresh);
                latest
                    .get_mut(&entry.spec.adapter.name)
                    .expect("just inserted")
            }
        };
        if let Some(s) = dev.points.get_mut(index) {
            *s = Some(slot);
        }
    }

    /// Forgets a device (removed by a reload): its latest values and its status.
    pub fn forget(&self, device: &str) {
        self.latest.write().remove(device);
        self.status.write().remove(device);
    }

    /// The latest reading of every point read so far, as (device, point) -> what the API shows.
    pub fn latest(&self) -> Vec<(PointKey, Latest)> {
        let latest = self.latest.read();
        let mut out = Vec::new();
        for (name, dev) in latest.iter() {
            for (i, slot) in dev.points.iter().enumerate() {
                let (Some(s), Some(rules), Some(topic)) =
                    (slot, dev.entry.spec.points.get(i), dev.entry.topics.get(i))
                else {
                    continue;
                };
                out.push((
                    (name.clone(), rules.name.clone()),
                    Latest {
                        value: s.value.clone(),
                        quality: s.quality.as_str(),
                        reason: match &s.quality {
                            Quality::Bad(reason) => Some(reason.clone()),
                            _ => None,
                        },
                        ts: rfc3339_ms(s.ts),
                        unit: rules.unit.clone(),
                        topic: topic.clone(),
                    },
                ));
            }
        }
        out
    }
}

/// The pipeline's shared handles.
pub struct Pipeline {
    /// `{gateway}`.
    pub gateway: String,
    /// The device table (the supervisor updates it).
    pub devices: DeviceTable,
    /// Where readings are logged.
    pub recorder: Option<Arc<dyn Recorder>>,
    /// Counters.
    pub stats: Arc<PipelineStats>,
    /// Latest values and device statuses.
    pub live: Arc<LiveState>,
}

impl Pipeline {
    /// Consumes readings until the channel closes or `cancel` fires (then drains what is queued).
    pub async fn run_readings(
        self: Arc<Self>,
        link: Arc<Link>,
        mut rx: mpsc::Receiver<Reading>,
        cancel: CancellationToken,
    ) {
        let mut state: HashMap<Arc<str>, DeviceState> = HashMap::new();
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reading = tokio::select! {
                biased;
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = sweep.tick() => {
                    // Devices a reload removed: their state goes (readings still queued for them are unknown).
                    let devices = self.devices.read();
                    state.retain(|name, _| devices.contains_key(name));
                    continue;
                }
                _ = cancel.cancelled() => {
                    rx.close();
                    while let Some(r) = rx.recv().await {
                        self.handle(&link, &mut state, r).await;
                    }
                    break;
                }
            };
            self.handle(&link, &mut state, reading).await;
        }
    }

    async fn handle(
        &self,
        link: &Link,
        state: &mut HashMap<Arc<str>, DeviceState>,
        mut r: Reading,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.readings.fetch_add(1, Relaxed);
        let entry = self.devices.read().get(&r.device).cloned();
        let Some(entry) = entry else {
            self.stats.unknown.fetch_add(1, Relaxed);
            return;
        };
        let Some((index, rules, topic)) = entry.point(&r.point) else {
            self.stats.unknown.fetch_add(1, Relaxed);
            return;
        };
        let value = scale_value(&r.value, rules);
        if let (Value::Float(f), Quality::Good) = (&value, &r.quality) {
            if !f.is_finite() {
                // JSON has no NaN or infinity, and many meters say "not available" with a NaN: such a
                // reading is bad and says why, rather than a `null` marked good.
                r.quality = Quality::Bad(non_finite_reason(*f).into());
            }
        }
        self.live.set(
            &entry,
            index,
            Slot {
                value: value.clone(),
                quality: r.quality.clone(),
                ts: r.ts,
            },
        );
        // Publish-every-poll points need no memory of what was published (the common case: no state kept,
        // no lookup); the state of on-change points is kept per device.
        if rules.publish != PublishMode::EveryPoll {
            let dev = match state.get_mut(&r.device) {
                Some(d) if d.generation == entry.generation => d,
                _ => {
                    state.insert(r.device.clone(), DeviceState::new(&entry));
                    state.get_mut(&r.device).expect("just inserted")
                }
            };
            let Some(st) = dev.points.get_mut(index) else {
                return;
            };
            let publish = match rules.publish {
                PublishMode::EveryPoll => true,
                PublishMode::OnChange => changed(&st.last, &value, &r.quality, rules.deadband),
                PublishMode::OnChangeOrEvery(n) => {
                    changed(&st.last, &value, &r.quality, rules.deadband)
                        || st.since_publish + 1 >= n
                }
            };
            if !publish {
                st.since_publish += 1;
                self.stats.suppressed.fetch_add(1, Relaxed);
                return;
            }
            st.since_publish = 0;
            st.last = Some((value.clone(), r.quality.clone()));
        }
        let body = payload(
            rules.payload,
            &value,
            &r.quality,
            rules.unit.as_deref(),
            r.ts,
        );
        let msg = Message::new(topic.clone(), body, rules.qos, rules.retain);
        if let Some(rec) = &self.recorder {
            if rules.record || rec.must_log(topic) {
                let num = if r.quality == Quality::Good {
                    value.as_f64()
                } else {
                    None
                };
                rec.record(&msg, &r, num).await;
            }
        }
        link.publish(msg).await;
        self.stats.published.fetch_add(1, Relaxed);
    }

    /// Publishes a device's status (retained) on `{gateway}/{device}/status`.
    pub async fn publish_status(&self, link: &Link, device: &str, status: &DeviceStatus) {
        self.live
            .status
            .write()
            .insert(device.into(), status.clone());
        let mut s = format!("{{\"status\":\"{}\"", status.as_str());
        if let Some(reason) = status.reason() {
            s.push_str(",\"reason\":");
            s.push_str(&serde_json::Value::String(reason.to_string()).to_string());
        }
        let _ = write!(s, ",\"ts\":\"{}\"}}", rfc3339_ms(SystemTime::now()));
        let topic = format!("{}/{}/status", self.gateway, device);
        link.publish(Message::new(topic, s, QoS::AtLeastOnce, true))
            .await;
    }

    /// The topic filter of write requests.
    pub fn set_filter(&self) -> String {
        format!("{}/+/+/set", self.gateway)
    }

    /// Serves write requests arriving on the link until `cancel` fires.
    ///
    /// Each device has a queue and a task of its own: a device's writes run one after another in the order
    /// they arrived (so the last command is the one the device keeps), and a slow device does not hold up
    /// writes to the others. A queue holds at most [`COMMAND_QUEUE`] writes; more are answered with an error
    /// at once. Requests for a device that does not exist are answered without a queue, so made-up device
    /// names cannot make the gateway start tasks.
    pub async fn run_commands(self: Arc<Self>, link: Arc<Link>, cancel: CancellationToken) {
        let mut queues: HashMap<Arc<str>, mpsc::Sender<Arc<Message>>> = HashMap::new();
        loop {
            let received = tokio::select! {
                r = link.recv() => r,
                _ = cancel.cancelled() => break,
            };
            let msg = received.msg;
            let device = msg
                .topic
                .split('/')
                .nth(1)
                .and_then(|d| self.devices.read().get_key_value(d).map(|(k, _)| k.clone()));
            let Some(device) = device else {
                // Unknown device (or a malformed topic): `execute` says which, without touching an adapter.
                let this = self.clone();
                let link = link.clone();
                tokio::spawn(async move { this.serve(&link, &msg).await });
                continue;
            };
            if queues.len() > self.devices.read().len() {
                // Devices removed by a reload: dropping the sender ends their task once its queue is done.
                let devices = self.devices.read();
                queues.retain(|name, _| devices.contains_key(name));
            }
            let queue = queues.entry(device).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                tokio::spawn(self.clone().device_commands(link.clone(), rx));
                tx
            });
            if let Err(e) = queue.try_send(msg) {
                let msg = e.into_inner();
                let this = self.clone();
                let link = link.clone();
                tokio::spawn(async move {
                    let busy = CommandError::Transport(format!(
                        "{COMMAND_QUEUE} writes are already waiting for this device; try again later"
                    ));
                    this.answer(&link, &msg, Err(busy)).await;
                });
            }
        }
    }

    /// Executes one device's write requests in the order they were queued.
    async fn device_commands(
        self: Arc<Self>,
        link: Arc<Link>,
        mut rx: mpsc::Receiver<Arc<Message>>,
    ) {
        while let Some(msg) = rx.recv().await {
            self.serve(&link, &msg).await;
        }
    }

    /// Executes one write request and answers it.
    async fn serve(&self, link: &Link, msg: &Message) {
        let result = self.execute(msg).await;
        self.answer(link, msg, result).await;
    }

    /// Counts an answered write request and publishes its answer.
    async fn answer(&self, link: &Link, msg: &Message, result: Result<(), CommandError>) {
        self.stats
            .commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.reply(link, msg, result).await;
    }

    async fn execute(&self, msg: &Message) -> Result<(), CommandError> {
        let mut parts = msg.topic.split('/');
        let (Some(device), Some(point)) = (parts.nth(1), parts.next()) else {
            return Err(CommandError::UnknownPoint(msg.topic.to_string()));
        };
        let entry = self.devices.read().get(device).cloned();
        let Some(entry) = entry else {
            return Err(CommandError::UnknownPoint(format!("{device}/{point}")));
        };
        let Some((_, rules, _)) = entry.point(point) else {
            return Err(CommandError::UnknownPoint(point.to_string()));
        };
        if !rules.writable {
            return Err(CommandError::ReadOnly(point.to_string()));
        }
        let value = parse_command_value(&msg.payload)?;
        refuse_non_finite(&value)?;
        let raw = unscale_value(&value, rules);
        refuse_non_finite(&raw)?;
        let (tx, rx) = oneshot::channel();
        let cmd = Command {
            point: rules.name.clone(),
            value: raw,
            reply: tx,
        };
        entry
            .commands
            .send(cmd)
            .await
            .map_err(|_| CommandError::Transport("the device's adapter is not running".into()))?;
        match tokio::time::timeout(std::time::Duration::from_secs(30), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CommandError::Transport(
                "the adapter dropped the request".into(),
            )),
            Err(_) => Err(CommandError::Timeout),
        }
    }

    /// In-process publishes bypass the broker's publish hook (that is what keeps a bridge's inbound traffic
    /// from being logged and sent back up). An answer to a command is the gateway's own message, not inbound
    /// traffic: it is logged like a reading when a forward (or record) filter matches, so a command that came
    /// through a bridge is answered upstream. No loop: only this answer is logged, never the request, and what
    /// comes back down through a subscribe rule is again in-process, so never logged.
    async fn log_reply(&self, msg: &Message) {
        if let Some(rec) = &self.recorder {
            if rec.must_log(&msg.topic) {
                rec.record_message(msg).await;
            }
        }
    }

    async fn reply(&self, link: &Link, request: &Message, result: Result<(), CommandError>) {
        let body = match &result {
            Ok(()) => format!(
                "{{\"ok\":true,\"ts\":\"{}\"}}",
                rfc3339_ms(SystemTime::now())
            ),
            Err(e) => format!(
                "{{\"ok\":false,\"error\":{},\"ts\":\"{}\"}}",
                serde_json::Value::String(e.to_string()),
                rfc3339_ms(SystemTime::now())
            ),
        };
        let body = Bytes::from(body);
        let mut msg = Message::new(
            format!("{}/result", request.topic),
            body.clone(),
            QoS::AtLeastOnce,
            false,
        );
        msg.properties.correlation_data = request.properties.correlation_data.clone();
        self.log_reply(&msg).await;
        link.publish(msg).await;
        if let Some(rt) = &request.properties.response_topic {
            let mut resp = Message::new(rt.as_str(), body, QoS::AtLeastOnce, false);
            resp.properties.correlation_data = request.properties.correlation_data.clone();
            self.log_reply(&resp).await;
            link.publish(resp).await;
        }
    }
}

/// NaN, the infinities and numbers beyond `f64` (`1e400`, as text) are never written to a device: adapters
/// would encode them as the bit patterns of NaN/infinity (a meter's "not available") or print `NaN` to a
/// serial line, and report success.
fn refuse_non_finite(v: &Value) -> Result<(), CommandError> {
    let bad = match v {
        Value::Float(f) => !f.is_finite(),
        Value::String(s) => s.trim().parse::<f64>().is_ok_and(|f| !f.is_finite()),
        _ => false,
    };
    if bad {
        return Err(CommandError::InvalidValue(format!(
            "{v} is not a finite number"
        )));
    }
    Ok(())
}

/// Parses a write request: JSON `{"value": x}`, a JSON scalar, or bare text (`21.5`, `true`, `on`).
pub fn parse_command_value(payload: &[u8]) -> Result<Value, CommandError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| CommandError::InvalidValue("payload is not UTF-8".into()))?
        .trim();
    if text.is_empty() {
        return Err(CommandError::InvalidValue("empty payload".into()));
    }
    let json: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let v = match json {
        Some(serde_json::Value::Object(mut o)) => o.remove("value").ok_or_else(|| {
            CommandError::InvalidValue("JSON object without a `value` key".into())
        })?,
        Some(other) => other,
        None => {
            return Ok(match text {
                "on" | "ON" | "On" => Value::Bool(true),
                "off" | "OFF" | "Off" => Value::Bool(false),
                _ => Value::String(text.to_string()),
            })
        }
    };
    match v {
        serde_json::Value::Bool(b) => Ok(Value::Bool(b)),
        serde_json::Value::Number(n) => Ok(if let Some(i) = n.as_i64() {
            Value::Int(i)
        } else if let Some(u) = n.as_u64() {
            Value::UInt(u)
        } else {
            Value::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        serde_json::Value::String(s) => Ok(Value::String(s)),
        other => Err(CommandError::InvalidValue(format!(
            "unsupported JSON value {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(scale: f64, offset: f64) -> PointRules {
        PointRules {
            name: "p".into(),
            scale,
            offset,
            deadband: None,
            publish: PublishMode::EveryPoll,
            unit: None,
            topic: Arc::new(TopicTemplate { parts: vec![] }),
            payload: PayloadFormat::Json,
            qos: QoS::AtMostOnce,
            retain: false,
            writable: true,
            record: true,
        }
    }

    fn device(name: &str, points: &[&str]) -> DeviceSpec {
        use fieldbridge_sdk::config::{ConfigNode, Mark};
        use fieldbridge_sdk::{DeviceConfig, PointConfig};
        let node = || ConfigNode::null(Mark::file("t.yaml"), "");
        DeviceSpec {
            adapter: DeviceConfig {
                name: name.into(),
                protocol: "sim".into(),
                connection: node(),
                poll_interval: std::time::Duration::from_secs(1),
                timeout: std::time::Duration::from_secs(1),
                retries: 0,
                points: points
                    .iter()
                    .map(|p| PointConfig {
                        name: (*p).into(),
                        writable: false,
                        poll_interval: None,
                        spec: node(),
                    })
                    .collect(),
            },
            labels: Default::default(),
            points: points
                .iter()
                .map(|p| PointRules {
                    name: (*p).into(),
                    unit: Some("V".into()),
                    topic: Arc::new(TopicTemplate {
                        parts: vec![
                            TemplatePart::Gateway,
                            TemplatePart::Literal("/".into()),
                            TemplatePart::Device,
                            TemplatePart::Literal("/".into()),
                            TemplatePart::Point,
                        ],
                    }),
                    ..rules(1.0, 0.0)
                })
                .collect(),
        }
    }

    fn slot(v: i64) -> Slot {
        Slot {
            value: Value::Int(v),
            quality: Quality::Good,
            ts: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn entry_finds_points_by_name_with_their_topic() {
        let (tx, _rx) = mpsc::channel(1);
        let e = DeviceEntry::new(device("m1", &["a", "b", "c"]), "gw", 1, tx);
        let (i, rules, topic) = e.point("b").unwrap();
        assert_eq!((i, &*rules.name, &**topic), (1, "b", "gw/m1/b"));
        assert!(e.point("d").is_none());
        assert_eq!(e.len(), 3);
        // Names out of order in the device map (the lookup sorts its own index).
        let names = ["r7", "a", "zz", "r10", "b2", "r1", "m"];
        let e = DeviceEntry::new(device("m2", &names), "gw", 1, e.commands.clone());
        for (want, n) in names.iter().enumerate() {
            let (i, rules, topic) = e.point(n).unwrap();
            assert_eq!((i, &*rules.name), (want, *n));
            assert_eq!(&**topic, format!("gw/m2/{n}"));
        }
        for missing in ["", "r", "r70", "zzz", "0"] {
            assert!(e.point(missing).is_none(), "{missing}");
        }
    }

    #[test]
    fn live_values_are_one_slot_per_point_and_start_over_with_a_new_generation() {
        let (tx, _rx) = mpsc::channel(1);
        let live = LiveState::default();
        let g1 = Arc::new(DeviceEntry::new(
            device("m1", &["a", "b"]),
            "gw",
            1,
            tx.clone(),
        ));
        let other = Arc::new(DeviceEntry::new(device("m2", &["x"]), "gw", 2, tx.clone()));
        // Many readings of the same points keep one value each.
        for v in 0..100 {
            live.set(&g1, 0, slot(v));
            live.set(&g1, 1, slot(-v));
        }
        live.set(&other, 0, slot(7));
        let mut l = live.latest();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        let got: Vec<(&str, &str, Value, &str)> = l
            .iter()
            .map(|((d, p), v)| (&**d, &**p, v.value.clone(), &*v.topic))
            .collect();
        assert_eq!(
            got,
            vec![
                ("m1", "a", Value::Int(99), "gw/m1/a"),
                ("m1", "b", Value::Int(-99), "gw/m1/b"),
                ("m2", "x", Value::Int(7), "gw/m2/x"),
            ]
        );
        assert_eq!(l[0].1.unit.as_deref(), Some("V"));
        assert_eq!(l[0].1.ts, "1970-01-01T00:00:00.000Z");
        // Reconfigured with other points: the old values are not shown under the new configuration.
        let g3 = Arc::new(DeviceEntry::new(device("m1", &["b", "z"]), "gw", 3, tx));
        live.set(&g3, 1, slot(5));
        let mut l = live.latest();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<(&str, &str)> = l.iter().map(|((d, p), _)| (&**d, &**p)).collect();
        assert_eq!(names, vec![("m1", "z"), ("m2", "x")]);
        live.forget("m1");
        let l = live.latest();
        assert_eq!(l.len(), 1);
        assert_eq!(&*l[0].0 .0, "m2");
    }

    #[test]
    fn scaling_rounds_integer_sources_and_inverts() {
        let r = rules(0.1, 0.0);
        assert_eq!(scale_value(&Value::Int(215), &r), Value::Float(21.5));
        assert_eq!(unscale_value(&Value::Float(21.5), &r), Value::Int(215));
        let r = rules(0.01, -40.0);
        assert_eq!(scale_value(&Value::UInt(6050), &r), Value::Float(20.5));
        assert_eq!(unscale_value(&Value::Float(20.5), &r), Value::Int(6050));
        assert_eq!(scale_value(&Value::Int(3), &rules(1.0, 0.0)), Value::Int(3));
        assert_eq!(
            scale_value(&Value::String("x".into()), &r),
            Value::String("x".into())
        );
    }

    #[test]
    fn deadbands() {
        let last = Some((Value::Float(100.0), Quality::Good));
        assert!(!changed(
            &last,
            &Value::Float(100.4),
            &Quality::Good,
            Some(Deadband::Absolute(0.5))
        ));
        assert!(changed(
            &last,
            &Value::Float(100.5),
            &Quality::Good,
            Some(Deadband::Absolute(0.5))
        ));
        assert!(!changed(
            &last,
            &Value::Float(101.9),
            &Quality::Good,
            Some(Deadband::Percent(2.0))
        ));
        assert!(changed(
            &last,
            &Value::Float(102.0),
            &Quality::Good,
            Some(Deadband::Percent(2.0))
        ));
        assert!(changed(
            &last,
            &Value::Float(100.0),
            &Quality::Bad("x".into()),
            Some(Deadband::Absolute(5.0))
        ));
        assert!(!changed(&last, &Value::Float(100.0), &Quality::Good, None));
        assert!(changed(&None, &Value::Float(100.0), &Quality::Good, None));
    }

    /// A meter that starts on NaN ("not available") and then reads numbers, or drops to NaN and back: every
    /// switch between NaN and a number is a change, whatever the deadband; NaN after NaN is not.
    #[test]
    fn changes_to_and_from_nan_pass_any_deadband() {
        let nan = Value::Float(f64::NAN);
        let good = Quality::Good;
        for db in [
            None,
            Some(Deadband::Absolute(0.5)),
            Some(Deadband::Percent(2.0)),
        ] {
            let was_nan = Some((nan.clone(), good.clone()));
            let was_25 = Some((Value::Float(25.0), good.clone()));
            assert!(changed(&was_nan, &Value::Float(25.0), &good, db), "{db:?}");
            assert!(changed(&was_25, &nan, &good, db), "{db:?}");
            assert!(!changed(&was_nan, &nan, &good, db), "{db:?}");
            let inf = Value::Float(f64::INFINITY);
            assert!(changed(&was_25, &inf, &good, db), "{db:?}");
            assert!(!changed(
                &Some((inf.clone(), good.clone())),
                &inf,
                &good,
                db
            ));
            assert!(changed(
                &Some((inf, good.clone())),
                &Value::Float(f64::NEG_INFINITY),
                &good,
                db
            ));
        }
    }

    #[test]
    fn json_payload_shape() {
        let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_312_800_123);
        let p = payload(
            PayloadFormat::Json,
            &Value::Float(21.5),
            &Quality::Good,
            Some("°C"),
            ts,
        );
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            "{\"value\":21.5,\"unit\":\"°C\",\"ts\":\"2026-11-22T02:00:00.123Z\",\"quality\":\"good\"}"
        );
        let p = payload(
            PayloadFormat::Value,
            &Value::Bool(true),
            &Quality::Good,
            None,
            ts,
        );
        assert_eq!(&p[..], b"true");
        let p = payload(
            PayloadFormat::Json,
            &Value::Int(1),
            &Quality::Bad("IllegalDataAddress".into()),
            None,
            ts,
        );
        assert!(std::str::from_utf8(&p)
            .unwrap()
            .ends_with("\"quality\":\"bad\",\"reason\":\"IllegalDataAddress\"}"));
    }

    #[test]
    fn command_values() {
        assert_eq!(parse_command_value(b"21.5").unwrap(), Value::Float(21.5));
        assert_eq!(
            parse_command_value(b"{\"value\": 7}").unwrap(),
            Value::Int(7)
        );
        assert_eq!(parse_command_value(b"true").unwrap(), Value::Bool(true));
        assert_eq!(parse_command_value(b"on").unwrap(), Value::Bool(true));
        assert_eq!(
            parse_command_value(b"\"abc\"").unwrap(),
            Value::String("abc".into())
        );
        assert!(parse_command_value(b"").is_err());
        for bad in ["NaN", "nan", "inf", "-Infinity", "1e400", "-1e309"] {
            let v = parse_command_value(bad.as_bytes()).unwrap();
            let e = refuse_non_finite(&v).unwrap_err().to_string();
            assert!(e.contains("not a finite number"), "{bad}: {e}");
        }
        for fine in ["21.5", "-3", "1e300", "abc", "on"] {
            refuse_non_finite(&parse_command_value(fine.as_bytes()).unwrap()).unwrap();
        }
        assert!(parse_command_value(b"{\"v\":1}").is_err());
    }
}
