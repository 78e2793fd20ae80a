//! The polling framework: adapters say how to read a group of points; the [`Poller`] decides when.
//!
//! Most field devices are request/response: nothing arrives unless asked. Every such adapter would otherwise
//! re-implement the same loop (intervals, timeouts, retries, offline detection, backoff, counters, write-back
//! between polls) and each would get a different corner wrong. So, like HiveMQ Edge's adapter SDK, the framework
//! owns the schedule and the adapter implements [`PollDevice`]: connect, read one group, write one point.
//!
//! Errors are split the way tokio-modbus splits them (`Result<Result<T, Exception>, Error>`):
//!
//! * the outer [`TransportError`] means the device could not be asked (connection refused, broken, no answer in
//!   time). The request is retried, and after [`PollerSettings::offline_after`] failed polls the device is
//!   reported [`DeviceStatus::Offline`] and reconnected with exponential backoff until it answers again;
//! * the inner, per-point [`DeviceException`] means the device answered "no" for that point (e.g. an illegal
//!   data address). That point's reading goes out with [`Quality::Bad`] and polling carries on: the device is
//!   fine, only the point is not.
//!
//! # Schedule
//!
//! Each [`PollGroup`] has its own timer. Ticks missed while a slow device kept the poller busy are skipped, not
//! bursted ([`MissedTickBehavior::Skip`]): a burst would only hammer a device that is already slow. The first
//! tick of each group is delayed by a random fraction ([`PollerSettings::jitter`]) of its interval so that a
//! gateway with hundreds of devices does not poll them all in the same millisecond after a restart.
//!
//! Reads and writes of one device are serialized in one task: many devices (Modbus RTU slaves, most PLCs) can
//! only handle one request at a time, and it makes "write, then read back" ordering obvious.
//!
//! # Bad readings carry no value
//!
//! [`Reading`] always has a value, but a point whose read raised an exception has none. The poller sends
//! [`NO_VALUE`] (a float NaN, which `serde_json` writes as `null`) rather than the last good value: a consumer
//! that ignores quality then sees a gap, not a flat line that looks like real data.
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::{
    AdapterContext, AdapterError, Backoff, Command, CommandError, DeviceConfig, DeviceStatus,
    Quality, Reading, Value,
};

/// Upper bound of the start jitter: spreading matters for fast groups; a 15-minute energy-meter group must not
/// leave its device without data (and `starting`) for minutes after every restart.
pub const MAX_START_JITTER: Duration = Duration::from_secs(10);

/// The value sent with a [`Quality::Bad`] reading: NaN, serialized by `serde_json` as `null`.
pub const NO_VALUE: Value = Value::Float(f64::NAN);

/// The device could not be asked: the request should be retried and, if that keeps failing, the device is
/// offline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Connecting failed, or the connection broke (refused, reset, port gone).
    #[error("{0}")]
    Connection(String),
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer arrived but could not be understood (framing, checksum, mismatched transaction id). The
    /// connection is no longer trusted.
    #[error("bad response: {0}")]
    Protocol(String),
}

impl TransportError {
    /// A connection failure with the given reason.
    pub fn connection(reason: impl Into<String>) -> Self {
        TransportError::Connection(reason.into())
    }

    /// Whether this is a timeout (counted apart in [`PollStats::timeouts`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, TransportError::Timeout(_))
    }
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        TransportError::Connection(e.to_string())
    }
}

/// The device answered, but refused to give one point's value (e.g. a Modbus exception response). The reading
/// goes out with [`Quality::Bad`] carrying this text; the device stays online.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeviceException {
    message: String,
}

impl DeviceException {
    /// An exception with the text put in the reading's quality (e.g. `illegal data address (0x02)`).
    pub fn new(message: impl Into<String>) -> Self {
        DeviceException {
            message: message.into(),
        }
    }

    /// The text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The result of reading one group: per point, the value or the device's refusal.
pub type GroupReading = Vec<(usize, Result<Value, DeviceException>)>;

/// One device, as the [`Poller`] drives it. Implementations do protocol work only: no timers, no retries, no
/// status — the poller adds those, identically for every protocol.
///
/// Points are named by their index in the poller's point list (the order of [`DeviceConfig::points`] when the
/// poller is built with [`Poller::for_device`]).
pub trait PollDevice: Send + 'static {
    /// (Re)connects. Called before the first request and again after every transport error (a timeout
    /// included): an existing connection must then be considered suspect (it may still deliver a late answer to
    /// the abandoned request) and replaced. A device without connections returns `Ok(())`.
    fn connect(&mut self) -> BoxFuture<'_, Result<(), TransportError>>;

    /// Reads one group of the [`PollPlan`]. The outer `Err` is a transport error (retried; the device may go
    /// offline); each inner `Err` is a device exception for that point (bad quality, polling continues). Points
    /// of the group missing from the answer are simply not published this round.
    fn read(&mut self, group: usize) -> BoxFuture<'_, Result<GroupReading, TransportError>>;

    /// Writes one point. The poller has already checked that the point exists and is writable.
    /// [`CommandError::Transport`] and [`CommandError::Timeout`] make the poller reconnect before the next
    /// request.
    fn write(&mut self, point: usize, value: Value) -> BoxFuture<'_, Result<(), CommandError>>;
}

/// Points read together at one interval. The adapter decides the grouping (Modbus, for instance, coalesces
/// neighbouring registers into one request per group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollGroup {
    /// How often the group is read. Must not be zero.
    pub interval: Duration,
    /// Indexes into the poller's point list.
    pub points: Vec<usize>,
}

/// What to read, and how often.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollPlan {
    /// The groups; [`PollDevice::read`] receives an index into this list.
    pub groups: Vec<PollGroup>,
}

impl PollPlan {
    /// One group per distinct poll interval (a point's own interval, else the device's), in order of first
    /// appearance: the natural plan for devices where each point is a separate request anyway.
    pub fn by_interval(device: &DeviceConfig) -> PollPlan {
        let mut groups: Vec<PollGroup> = Vec::new();
        for (i, p) in device.points.iter().enumerate() {
            let interval = p.poll_interval.unwrap_or(device.poll_interval);
            match groups.iter_mut().find(|g| g.interval == interval) {
                Some(g) => g.points.push(i),
                None => groups.push(PollGroup {
                    interval,
                    points: vec![i],
                }),
            }
        }
        PollPlan { groups }
    }
}

/// A point as the poller knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollPoint {
    /// The point's name (put in readings, looked up for commands).
    pub name: Arc<str>,
    /// Whether writes are passed to the device.
    pub writable: bool,
}

/// Timing and failure handling.
#[derive(Debug, Clone, PartialEq)]
pub struct PollerSettings {
    /// Limit for one connect, read or write. Hitting it is a transport error.
    pub timeout: Duration,
    /// Extra attempts (each with a reconnect) of a failed poll before it counts as failed.
    pub retries: u32,
    /// First reconnect delay once offline.
    pub backoff_min: Duration,
    /// Longest reconnect delay once offline.
    pub backoff_max: Duration,
    /// The first poll of each group is delayed by a random fraction in `[0, jitter)` of its interval (of at most
    /// [`MAX_START_JITTER`]). Clamped to `0.0..=1.0`.
    pub jitter: f64,
    /// Consecutive failed polls (each after its retries) after which the device is reported offline and
    /// polling switches to reconnecting with backoff. Zero counts as one.
    pub offline_after: u32,
}

impl Default for PollerSettings {
    /// One-second timeout, no retries, offline at the first failed poll, reconnect every 1 s up to every 60 s,
    /// start spread over 10 % of the interval.
    fn default() -> Self {
        PollerSettings {
            timeout: Duration::from_secs(1),
            retries: 0,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            jitter: 0.1,
            offline_after: 1,
        }
    }
}

impl PollerSettings {
    /// The defaults with the device's `timeout` and `retries`. `offline_after` stays 1, so that the device map's
    /// `retries` means what it says: retries of a failed request before the device is marked offline.
    pub fn from_device(device: &DeviceConfig) -> Self {
        PollerSettings {
            timeout: device.timeout,
            retries: device.retries,
            ..PollerSettings::default()
        }
    }
}

/// Counters of one poller, shared with whoever holds the `Arc` (the core's metrics, the status API). Updated with
/// relaxed atomics: each counter is exact, but a reader may see one counter updated before another.
#[derive(Debug, Default)]
pub struct PollStats {
    /// Polls of a group that got an answer (even if some points were exceptions).
    pub polls_ok: AtomicU64,
    /// Polls of a group that failed after all retries.
    pub polls_failed: AtomicU64,
    /// Failed connects, reads and probes (every attempt, timeouts included).
    pub transport_errors: AtomicU64,
    /// The subset of `transport_errors` that were timeouts.
    pub timeouts: AtomicU64,
    /// Points read with a device exception.
    pub exceptions: AtomicU64,
    /// Readings handed to the output (good and bad).
    pub readings: AtomicU64,
    /// Writes the device accepted.
    pub writes_ok: AtomicU64,
    /// Writes refused, by the poller or by the device.
    pub writes_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`PollStats`] at one moment, for comparisons and display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // same fields as PollStats
pub struct PollStatsSnapshot {
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub transport_errors: u64,
    pub timeouts: u64,
    pub exceptions: u64,
    pub readings: u64,
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub last_error: Option<String>,
}

impl PollStats {
    /// The most recent problem of any kind (transport error, exception, failed write), as text.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// All counters at once.
    pub fn snapshot(&self) -> PollStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PollStatsSnapshot {
            polls_ok: get(&self.polls_ok),
            polls_failed: get(&self.polls_failed),
            transport_errors: get(&self.transport_errors),
            timeouts: get(&self.timeouts),
            exceptions: get(&self.exceptions),
            readings: get(&self.readings),
            writes_ok: get(&self.writes_ok),
            writes_failed: get(&self.writes_failed),
            last_error: self.last_error(),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn set_last_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }
}

/// Drives a [`PollDevice`] according to a [`PollPlan`]. See the module documentation.
#[derive(Debug)]
pub struct Poller {
    points: Vec<PollPoint>,
    plan: PollPlan,
    settings: PollerSettings,
    stats: Arc<PollStats>,
}

impl Poller {
    /// A poller for these points (indexes used by the plan and the device refer to this list).
    pub fn new(points: Vec<PollPoint>, plan: PollPlan, settings: PollerSettings) -> Self {
        Poller {
            points,
            plan,
            settings,
            stats: Arc::default(),
        }
    }

    /// A poller for a device map entry: its points (names, writable flags) in file order, the given plan, and
    /// [`PollerSettings::from_device`].
    pub fn for_device(device: &DeviceConfig, plan: PollPlan) -> Self {
        let points = device
            .points
            .iter()
            .map(|p| PollPoint {
                name: p.name.clone(),
                writable: p.writable,
            })
            .collect();
        Poller::new(points, plan, PollerSettings::from_device(device))
    }

    /// Replaces the settings (builder style).
    pub fn with_settings(mut self, settings: PollerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &PollerSettings {
        &self.settings
    }

    /// The counters; keep the `Arc` to read them while the poller runs.
    pub fn stats(&self) -> Arc<PollStats> {
        self.stats.clone()
    }

    /// Runs until `ctx.cancel` is cancelled (returns `Ok` promptly, even mid-request or while the output is
    /// full), the output closes ([`AdapterError::Closed`]), or the plan is invalid ([`AdapterError::Fatal`]: a
    /// bug in the adapter, not in the device). Transport errors and exceptions never end the run.
    pub async fn run<D: PollDevice>(
        self,
        ctx: AdapterContext,
        device: D,
    ) -> Result<(), AdapterError> {
        self.check_plan()?;
        let cancel = ctx.cancel.clone();
        let mut run = Run::new(self, ctx, device);
        match cancel.run_until_cancelled(run.main()).await {
            Some(result) => result,
            None => Ok(()),
        }
    }

    fn check_plan(&self) -> Result<(), AdapterError> {
        for (g, group) in self.plan.groups.iter().enumerate() {
            if group.interval.is_zero() {
                return Err(AdapterError::Fatal(format!(
                    "poll plan: group {g} has a zero interval"
                )));
            }
            if let Some(p) = group.points.iter().find(|&&p| p >= self.points.len()) {
                return Err(AdapterError::Fatal(format!(
                    "poll plan: group {g} names point {p}, but there are {} points",
                    self.points.len()
                )));
            }
        }
        Ok(())
    }
}

/// The state of one run. Cancellation is handled outside (the whole `main` future is dropped), which is why no
/// method here has to watch the token.
struct Run<D> {
    /// Looked up by name only for write requests (rare): a scan, not a per-device hash table (which cost
    /// 1.6 KB a device, heaptrack at 500 devices).
    points: Vec<PollPoint>,
    plan: PollPlan,
    settings: PollerSettings,
    stats: Arc<PollStats>,
    ctx: AdapterContext,
    device: D,
    connected: bool,
    /// Consecutive failed polls.
    failures: u32,
    /// Whether we have told the world the device is online (`Some(true)`), offline (`Some(false)`), or nothing
    /// yet. Kept locally so that each change is logged once.
    online: Option<bool>,
    offline_reason: String,
    backoff: Backoff,
    commands_open: bool,
}

impl<D: PollDevice> Run<D> {
    fn new(poller: Poller, ctx: AdapterContext, device: D) -> Self {
        let backoff = Backoff::new(poller.settings.backoff_min, poller.settings.backoff_max);
        Run {
            points: poller.points,
            plan: poller.plan,
            settings: poller.settings,
            stats: poller.stats,
            ctx,
            device,
            connected: false,
            failures: 0,
            online: None,
            offline_reason: String::new(),
            backoff,
            commands_open: true,
        }
    }

    fn offline_after(&self) -> u32 {
        self.settings.offline_after.max(1)
    }

    async fn main(&mut self) -> Result<(), AdapterError> {
        let now = Instant::now();
        let jitter = self.settings.jitter.clamp(0.0, 1.0);
        let mut timers: Vec<Interval> = self
            .plan
            .groups
            .iter()
            .map(|g| {
                let offset = if jitter > 0.0 {
                    g.interval
                        .min(MAX_START_JITTER)
                        .mul_f64(jitter * rand::random_range(0.0..1.0f64))
                } else {
                    Duration::ZERO
                };
                let mut t = tokio::time::interval_at(now + offset, g.interval);
                t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                t
            })
            .collect();
        // While offline, the most frequently polled group doubles as the probe: its extra read is the least
        // surprising one.
        let probe = (0..self.plan.groups.len()).min_by_key(|&g| self.plan.groups[g].interval);

        loop {
            if let (true, Some(probe)) = (self.failures >= self.offline_after(), probe) {
                self.wait_backoff().await;
                if self.poll(probe, 1).await? {
                    for (g, t) in timers.iter_mut().enumerate() {
                        if g == probe {
                            t.reset();
                        } else {
                            // Everything else is stale after an outage: read it now.
                            t.reset_immediately();
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                group = next_tick(&mut timers) => {
                    let attempts = self.settings.retries.saturating_add(1);
                    self.poll(group, attempts).await?;
                }
                cmd = self.ctx.commands.recv(), if self.commands_open => match cmd {
                    Some(cmd) => self.write(cmd).await,
                    // The core dropped its sender: keep polling, just stop listening.
                    None => self.commands_open = false,
                },
            }
        }
    }

    /// Sleeps one backoff delay, answering commands meanwhile (they are refused: the device is offline).
    async fn wait_backoff(&mut self) {
        let wake = Instant::now() + self.backoff.next_delay();
        let sleep = tokio::time::sleep_until(wake);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                cmd = self.ctx.commands.recv(), if self.commands_open => match cmd {
                    Some(cmd) => self.write(cmd).await,
                    None => self.commands_open = false,
                },
            }
        }
    }

    /// Polls one group with up to `attempts` tries, publishes the readings and updates status and counters.
    /// Returns whether the poll succeeded.
    async fn poll(&mut self, group: usize, attempts: u32) -> Result<bool, AdapterError> {
        let mut last_err = None;
        for _ in 0..attempts.max(1) {
            match self.attempt(group).await {
                Ok(values) => {
                    PollStats::bump(&self.stats.polls_ok);
                    self.failures = 0;
                    self.backoff.reset();
                    self.set_online();
                    self.publish(values).await?;
                    return Ok(true);
                }
                Err(e) => last_err = Some(e),
            }
        }
        PollStats::bump(&self.stats.polls_failed);
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.offline_after() {
            let reason = last_err.map_or_else(|| "poll failed".to_owned(), |e| e.to_string());
            self.set_offline(reason);
        }
        Ok(false)
    }

    /// One connect-if-needed plus read, each under the timeout.
    async fn attempt(&mut self, group: usize) -> Result<GroupReading, TransportError> {
        let timeout = self.settings.timeout;
        if !self.connected {
            let r = tokio::time::timeout(timeout, self.device.connect())
                .await
                .unwrap_or(Err(TransportError::Timeout(timeout)));
            if let Err(e) = r {
                self.transport_error(&e);
                return Err(e);
            }
            self.connected = true;
        }
        let r = tokio::time::timeout(timeout, self.device.read(group))
            .await
            .unwrap_or(Err(TransportError::Timeout(timeout)));
        if let Err(e) = &r {
            self.connected = false;
            self.transport_error(e);
        }
        r
    }

    fn transport_error(&mut self, e: &TransportError) {
        PollStats::bump(&self.stats.transport_errors);
        if e.is_timeout() {
            PollStats::bump(&self.stats.timeouts);
        }
        self.stats.set_last_error(e.to_string());
        tracing::debug!(device = %self.ctx.device, error = %e, "transport error");
    }

    async fn publish(&mut self, values: GroupReading) -> Result<(), AdapterError> {
        let ts = SystemTime::now();
        for (point, result) in values {
            let Some(p) = self.points.get(point) else {
                return Err(AdapterError::Fatal(format!(
                    "device returned point index {point}, but there are {} points",
                    self.points.len()
                )));
            };
            let (value, quality) = match result {
                Ok(v) => (v, Quality::Good),
                Err(exc) => {
                    PollStats::bump(&self.stats.exceptions);
                    self.stats
                        .set_last_error(format!("point `{}`: {exc}", p.name));
                    (NO_VALUE, Quality::Bad(exc.message))
                }
            };
            let reading = Reading {
                device: self.ctx.device.clone(),
                point: p.name.clone(),
                value,
                quality,
                ts,
            };
            // Back-pressure: waits while the pipeline is full (cancellation still ends the run promptly,
            // because the whole run future is dropped on cancel).
            self.ctx.output.send(reading).await?;
            PollStats::bump(&self.stats.readings);
        }
        Ok(())
    }

    async fn write(&mut self, cmd: Command) {
        let result = self.try_write(&cmd.point, cmd.value).await;
        match &result {
            Ok(()) => PollStats::bump(&self.stats.writes_ok),
            Err(e) => {
                PollStats::bump(&self.stats.writes_failed);
                self.stats
                    .set_last_error(format!("write `{}`: {e}", cmd.point));
            }
        }
        // The requester may have given up (its own timeout); nothing to do then.
        let _ = cmd.reply.send(result);
    }

    async fn try_write(&mut self, point: &str, value: Value) -> Result<(), CommandError> {
        let Some(index) = self.points.iter().position(|p| &*p.name == point) else {
            return Err(CommandError::UnknownPoint(point.to_owned()));
        };
        if !self.points[index].writable {
            return Err(CommandError::ReadOnly(point.to_owned()));
        }
        if self.online == Some(false) {
            // Failing fast beats making the requester wait a full timeout for a device known to be down.
            return Err(CommandError::Transport(format!(
                "device offline: {}",
                self.offline_reason
            )));
        }
        let timeout = self.settings.timeout;
        if !self.connected {
            match tokio::time::timeout(timeout, self.device.connect()).await {
                Ok(Ok(())) => self.connected = true,
                Ok(Err(e)) => {
                    self.transport_error(&e);
                    return Err(CommandError::Transport(e.to_string()));
                }
                Err(_) => {
                    self.transport_error(&TransportError::Timeout(timeout));
                    return Err(CommandError::Timeout);
                }
            }
        }
        let result = tokio::time::timeout(timeout, self.device.write(index, value))
            .await
            .unwrap_or(Err(CommandError::Timeout));
        if matches!(
            result,
            Err(CommandError::Transport(_) | CommandError::Timeout)
        ) {
            self.connected = false;
        }
        result
    }

    fn set_online(&mut self) {
        if self.online != Some(true) {
            self.online = Some(true);
            tracing::info!(device = %self.ctx.device, "device online");
            self.ctx.status.set(DeviceStatus::Online);
        }
    }

    fn set_offline(&mut self, reason: String) {
        // The status follows the current failure (a device that was refusing connections and now answers
        // garbage must not go on saying "connection refused"), but only a change is published and logged: a
        // probe failing for the same reason as the last one does neither, so the retained status message is
        // not re-published (nor the log filled) on every probe.
        if self.online != Some(false) {
            self.online = Some(false);
            tracing::warn!(device = %self.ctx.device, reason = %reason, "device offline");
        } else if reason != self.offline_reason {
            tracing::warn!(
                device = %self.ctx.device,
                reason = %reason,
                previous = %self.offline_reason,
                "device still offline, for another reason"
            );
        } else {
            return;
        }
        self.ctx.status.set(DeviceStatus::Offline(reason.clone()));
        self.offline_reason = reason;
    }
}

/// Waits for the next tick of any group timer and returns that group.
fn next_tick(timers: &mut [Interval]) -> impl Future<Output = usize> + '_ {
    std::future::poll_fn(move |cx| {
        for (i, t) in timers.iter_mut().enumerate() {
            if t.poll_tick(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
}

impl fmt::Display for PollStatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "polls ok {}, failed {}, transport errors {} ({} timeouts), exceptions {}, readings {}, writes ok {}, \
             failed {}",
            self.polls_ok,
            self.polls_failed,
            self.transport_errors,
            self.timeouts,
            self.exceptions,
            self.readings,
            self.writes_ok,
            self.writes_failed
        )?;
        if let Some(e) = &self.last_error {
            write!(f, ", last error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler is tested against a scripted in-process device on tokio's paused clock, so every timing
    //! assertion is exact and no test waits in real time.
    use std::collections::HashSet;

    use tokio::sync::{mpsc, Notify};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::testkit::TestHarness;
    use crate::{ReadingSink, StatusHandle};

    const T: Duration = Duration::from_secs(600);

    #[derive(Default)]
    struct Script {
        /// Reads fail with this reason while set.
        fail: Option<&'static str>,
        /// Connects fail with this reason while set.
        fail_connect: Option<&'static str>,
        /// The next N reads fail.
        fail_next: u32,
        /// Reads never answer while set.
        hang: bool,
        /// Delay of each read, popped from the front (then zero).
        delays: Vec<Duration>,
        /// Points that answer with an exception.
        exceptions: HashSet<usize>,
        /// The answer to writes (`None`: accepted).
        write_error: Option<CommandError>,
        // What happened.
        reads: Vec<(Instant, usize)>,
        connects: u32,
        writes: Vec<(usize, Value)>,
        counter: i64,
    }

    #[derive(Clone)]
    struct Fake {
        script: Arc<Mutex<Script>>,
        groups: Vec<Vec<usize>>,
        read_started: Arc<Notify>,
    }

    impl Fake {
        fn new(plan: &PollPlan) -> Self {
            Fake {
                script: Arc::default(),
                groups: plan.groups.iter().map(|g| g.points.clone()).collect(),
                read_started: Arc::default(),
            }
        }

        fn with<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
            f(&mut self.script.lock().unwrap())
        }
    }

    impl PollDevice for Fake {
        fn connect(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
            let r = self.with(|s| {
                s.connects += 1;
                match s.fail_connect {
                    Some(e) => Err(TransportError::connection(e)),
                    None => Ok(()),
                }
            });
            Box::pin(async move { r })
        }

        fn read(&mut self, group: usize) -> BoxFuture<'_, Result<GroupReading, TransportError>> {
            let points = self.groups[group].clone();
            let (hang, delay, outcome) = self.with(|s| {
                s.reads.push((Instant::now(), group));
                let delay = if s.delays.is_empty() {
                    Duration::ZERO
                } else {
                    s.delays.remove(0)
                };
                let outcome = if let Some(e) = s.fail {
                    Err(TransportError::connection(e))
                } else if s.fail_next > 0 {
                    s.fail_next -= 1;
                    Err(TransportError::connection("hiccup"))
                } else {
                    s.counter += 1;
                    let n = s.counter;
                    Ok(points
                        .iter()
                        .map(|&p| {
                            if s.exceptions.contains(&p) {
                                (p, Err(DeviceException::new("illegal data address")))
                            } else {
                                (p, Ok(Value::Int(n)))
                            }
                        })
                        .collect())
                };
                (s.hang, delay, outcome)
            });
            self.read_started.notify_one();
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(delay).await;
                outcome
            })
        }

        fn write(&mut self, point: usize, value: Value) -> BoxFuture<'_, Result<(), CommandError>> {
            let r = self.with(|s| {
                s.writes.push((point, value));
                s.write_error.clone().map_or(Ok(()), Err)
            });
            Box::pin(async move { r })
        }
    }

    fn points(names: &[&str], writable: &[&str]) -> Vec<PollPoint> {
        names
            .iter()
            .map(|n| PollPoint {
                name: Arc::from(*n),
                writable: writable.contains(n),
            })
            .collect()
    }

    fn settings() -> PollerSettings {
        PollerSettings {
            timeout: Duration::from_secs(1),
            retries: 0,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            jitter: 0.0,
            offline_after: 1,
        }
    }

    fn one_group(interval_secs: u64, points: Vec<usize>) -> PollPlan {
        PollPlan {
            groups: vec![PollGroup {
                interval: Duration::from_secs(interval_secs),
                points,
            }],
        }
    }

    /// Starts a poller over `fake` and returns the harness, the stats and the start instant.
    fn start(poller: Poller, fake: &Fake) -> (TestHarness, Arc<PollStats>, Instant) {
        let stats = poller.stats();
        let fake = fake.clone();
        let t0 = Instant::now();
        (
            TestHarness::spawn("dev", move |ctx| poller.run(ctx, fake)),
            stats,
            t0,
        )
    }

    fn read_times(fake: &Fake, t0: Instant, group: usize) -> Vec<Duration> {
        fake.with(|s| {
            s.reads
                .iter()
                .filter(|(_, g)| *g == group)
                .map(|(t, _)| *t - t0)
                .collect()
        })
    }

    fn secs(v: &[f64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn groups_poll_at_their_own_intervals() {
        let plan = PollPlan {
            groups: vec![
                PollGroup {
                    interval: Duration::from_secs(1),
                    points: vec![0, 1],
                },
                PollGroup {
                    interval: Duration::from_secs(3),
                    points: vec![2],
                },
            ],
        };
        let fake = Fake::new(&plan);
        let (mut h, stats, t0) = start(
            Poller::new(points(&["a", "b", "c"], &[]), plan, settings()),
            &fake,
        );
        for _ in 0..3 {
            h.wait_for(|r| &*r.point == "c", T).await;
        }
        assert_eq!(read_times(&fake, t0, 1), secs(&[0.0, 3.0, 6.0]));
        assert_eq!(
            read_times(&fake, t0, 0),
            secs(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        assert_eq!(h.status(), DeviceStatus::Online);
        let snap = stats.snapshot();
        assert_eq!(
            (snap.polls_ok, snap.polls_failed, snap.transport_errors),
            (10, 0, 0)
        );
        assert_eq!(
            fake.with(|s| s.connects),
            1,
            "one connection for the whole run"
        );
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn start_jitter_spreads_the_first_poll_within_the_interval() {
        let plan = one_group(10, vec![0]);
        let fake = Fake::new(&plan);
        let s = PollerSettings {
            jitter: 0.5,
            ..settings()
        };
        let (mut h, _, t0) = start(Poller::new(points(&["a"], &[]), plan, s), &fake);
        h.next_reading(T).await;
        h.next_reading(T).await;
        let times = read_times(&fake, t0, 0);
        assert!(times[0] < Duration::from_secs(5), "{times:?}");
        assert_eq!(times[1] - times[0], Duration::from_secs(10));
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn missed_ticks_are_skipped_not_bursted() {
        let plan = one_group(1, vec![0]);
        let fake = Fake::new(&plan);
        fake.with(|s| s.delays = vec![Duration::from_millis(3500)]);
        let s = PollerSettings {
            timeout: Duration::from_secs(10),
            ..settings()
        };
        let (mut h, _, t0) = start(Poller::new(points(&["a"], &[]), plan, s), &fake);
        for _ in 0..4 {
            h.next_reading(T).await;
        }
        // The slow first read ends at 3.5 s: one catch-up read then, and back on the 1 s grid, instead of the
        // three reads in a row that a burst would make.
        assert_eq!(read_times(&fake, t0, 0), secs(&[0.0, 3.5, 4.0, 5.0]));
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn offline_after_failures_then_back_online_with_backoff() {
        let plan = one_group(1, vec![0]);
        let fake = Fake::new(&plan);
        let s = PollerSettings {
            retries: 1,
            offline_after: 2,
            ..settings()
        };
        let (mut h, stats, t0) = start(Poller::new(points(&["a"], &[]), plan, s), &fake);
        h.next_reading(T).await;
        assert_eq!(h.status(), DeviceStatus::Online);

        fake.with(|s| s.fail = Some("connection reset"));
        let st = h
            .wait_status(|s| matches!(s, DeviceStatus::Offline(_)), T)
            .await;
        assert_eq!(st, DeviceStatus::Offline("connection reset".into()));
        let snap = stats.snapshot();
        // Two polls of two attempts each; every attempt after a failure reconnects first.
        assert_eq!((snap.polls_failed, snap.transport_errors), (2, 4));
        assert_eq!(snap.last_error.as_deref(), Some("connection reset"));
        assert_eq!(fake.with(|s| s.connects), 1 + 3);

        // Let a few probes fail, then bring the device back.
        let went_offline = Instant::now();
        while fake.with(|s| s.reads.len()) < 1 + 4 + 4 {
            fake.read_started.notified().await;
        }
        fake.with(|s| s.fail = None);
        let r = h.next_reading(T).await;
        assert_eq!(r.quality, Quality::Good);
        assert_eq!(h.status(), DeviceStatus::Online);

        // Probes came with growing delays: each in [cap/2, cap], cap = 1 s, 2 s, 4 s, 8 s (the maximum).
        let probes: Vec<Duration> = read_times(&fake, t0, 0)
            .into_iter()
            .filter(|t| *t > went_offline - t0)
            .collect();
        let mut prev = went_offline - t0;
        for (i, p) in probes.iter().enumerate() {
            let cap = Duration::from_secs(1 << i.min(3));
            let gap = *p - prev;
            assert!(
                gap >= cap / 2 && gap <= cap,
                "probe {i}: gap {gap:?}, cap {cap:?} ({probes:?})"
            );
            prev = *p;
        }
        assert_eq!(probes.len(), 5, "4 failed probes, then the good one");

        // Back on schedule afterwards.
        let before = Instant::now();
        h.next_reading(T).await;
        assert_eq!(Instant::now() - before, Duration::from_secs(1));
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_down_at_start_comes_back_by_itself() {
        let plan = one_group(1, vec![0]);
        let fake = Fake::new(&plan);
        fake.with(|s| s.fail_connect = Some("connection refused"));
        let (mut h, stats, _) = start(Poller::new(points(&["a"], &[]), plan, settings()), &fake);
        assert_eq!(h.status(), DeviceStatus::Starting);
        h.wait_status(
            |s| *s == DeviceStatus::Offline("connection refused".into()),
            T,
        )
        .await;
        assert_eq!(stats.snapshot().polls_ok, 0);
        fake.with(|s| s.fail_connect = None);
        let r = h.next_reading(T).await;
        assert_eq!((r.value, r.quality), (Value::Int(1), Quality::Good));
        assert_eq!(h.status(), DeviceStatus::Online);
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_offline_reason_follows_the_current_failure() {
        const WRONG_UNIT: &str = "answer from unit 2, expected unit 1";
        let plan = one_group(1, vec![0]);
        let fake = Fake::new(&plan);
        fake.with(|s| s.fail_connect = Some("connection refused"));
        let (mut h, _, _) = start(Poller::new(points(&["a"], &["a"]), plan, settings()), &fake);
        h.wait_status(
            |s| *s == DeviceStatus::Offline("connection refused".into()),
            T,
        )
        .await;
        // Something answers on the port now, but every answer is wrong: the reason must say so.
        fake.with(|s| {
            s.fail_connect = None;
            s.fail = Some(WRONG_UNIT);
        });
        h.wait_status(|s| *s == DeviceStatus::Offline(WRONG_UNIT.into()), T)
            .await;
        // A write is refused with the current reason too.
        assert_eq!(
            h.write("a", Value::Int(1)).await,
            Err(CommandError::Transport(format!(
                "device offline: {WRONG_UNIT}"
            )))
        );
        // And back: the port refuses again (every failed read reconnects first).
        fake.with(|s| s.fail_connect = Some("connection refused"));
        h.wait_status(
            |s| *s == DeviceStatus::Offline("connection refused".into()),
            T,
        )
        .await;
        fake.with(|s| {
            s.fail_connect = None;
            s.fail = None;
        });
        h.wait_status(|s| *s == DeviceStatus::Online, T).await;
        h.stop(T).await.unwrap();
    }

    const LOG_CHILD_ENV: &str = "FIELDBRIDGE_SDK_OFFLINE_LOG_CHILD";

    /// Prints every event of level INFO and above as `LOG <level> field=value ...` on stdout.
    struct PrintEvents;

    impl tracing::Subscriber for PrintEvents {
        fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
            *metadata.level() <= tracing::Level::INFO
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn fmt::Debug) {
                    self.0.push_str(&format!(" {}={v:?}", f.name()));
                }
            }
            let mut line = Fields(format!("LOG {}", event.metadata().level()));
            event.record(&mut line);
            println!("{}", line.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Not a test on its own: the child process of `a_new_offline_reason_is_logged_once` (a process of its
    /// own, because `tracing` caches per-callsite interest process-wide, so a subscriber scoped to one test
    /// thread can miss events while other tests run). Prints the log, then `PROBES <n>`.
    #[test]
    fn offline_log_child() {
        if std::env::var_os(LOG_CHILD_ENV).is_none() {
            return;
        }
        tracing::subscriber::set_global_default(PrintEvents).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let plan = one_group(1, vec![0]);
            let fake = Fake::new(&plan);
            fake.with(|s| s.fail_connect = Some("connection refused"));
            let (mut h, _, _) = start(Poller::new(points(&["a"], &[]), plan, settings()), &fake);
            h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), T)
                .await;
            fake.with(|s| {
                s.fail_connect = None;
                s.fail = Some("answer from unit 2, expected unit 1");
            });
            // Seven probes started: at least six failed for the new reason.
            while fake.with(|s| s.reads.len()) < 7 {
                fake.read_started.notified().await;
            }
            h.stop(T).await.unwrap();
            println!("PROBES {}", fake.with(|s| s.reads.len()));
        });
    }

    #[test]
    fn a_new_offline_reason_is_logged_once() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "poller::tests::offline_log_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(LOG_CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let probes: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("PROBES "))
            .expect("child output")
            .parse()
            .unwrap();
        assert!(probes >= 7, "{text}");
        // The test harness may print its `test ... ` header on the line of the first event.
        let offline: Vec<&str> = text
            .lines()
            .filter_map(|l| l.find("LOG ").map(|i| &l[i..]))
            .filter(|l| l.starts_with("LOG WARN") && l.contains("offline"))
            .collect();
        assert_eq!(offline.len(), 2, "{text}");
        assert!(
            offline[0].contains("message=device offline")
                && offline[0].contains("reason=connection refused"),
            "{text}"
        );
        assert!(
            offline[1].contains("message=device still offline, for another reason")
                && offline[1].contains("reason=answer from unit 2, expected unit 1")
                && offline[1].contains("previous=connection refused"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_hides_a_single_failure() {
        let plan = one_group(1, vec![0]);
        let fake = Fake::new(&plan);
        fake.with(|s| s.fail_next = 1);
        let s = PollerSettings {
            retries: 1,
            ..settings()
        };
        let (mut h, stats, t0) = start(Poller::new(points(&["a"], &[]), plan, s), &fake);
        h.next_reading(T).await;
        assert_eq!(h.status(), DeviceStatus::Online);
        let snap = stats.snapshot();
        assert_eq!(
            (snap.polls_ok, snap.polls_failed, snap.transport_errors),
            (1, 0, 1)
        );
        // The retry came at once, on a fresh connection.
        assert_eq!(read_times(&fake, t0, 0), secs(&[0.0, 0.0]));
        assert_eq!(fake.with(|s| s.connects), 2);
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn exceptions_give_bad_quality_and_polling_goes_on() {
        let plan = one_group(1, vec![0, 1]);
        let fake = Fake::new(&plan);
        fake.with(|s| {
            s.exceptions.insert(1);
        });
        let (mut h, stats, _) = start(
            Poller::new(points(&["ok", "bad"], &[]), plan, settings()),
            &fake,
        );
        for round in 1..=3 {
            let good = h.next_reading(T).await;
            assert_eq!(
                (&*good.point, good.value, good.quality),
                ("ok", Value::Int(round), Quality::Good)
            );
            let bad = h.next_reading(T).await;
            assert_eq!(&*bad.point, "bad");
            assert_eq!(bad.quality, Quality::Bad("illegal data address".into()));
            assert!(matches!(bad.value, Value::Float(f) if f.is_nan()));
        }
        assert_eq!(h.status(), DeviceStatus::Online);
        let snap = stats.snapshot();
        assert_eq!(
            (snap.exceptions, snap.polls_ok, snap.transport_errors),
            (3, 3, 0)
        );
        assert_eq!(
            snap.last_error.as_deref(),
            Some("point `bad`: illegal data address")
        );
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_is_a_transport_error_and_forces_a_reconnect() {
        let plan = one_group(1, vec![0]);
        let fake = Fake::new(&plan);
        let s = PollerSettings {
            timeout: Duration::from_secs(2),
            ..settings()
        };
        let (mut h, stats, _) = start(Poller::new(points(&["a"], &[]), plan, s), &fake);
        h.next_reading(T).await;
        fake.with(|s| s.hang = true);
        let st = h
            .wait_status(|s| matches!(s, DeviceStatus::Offline(_)), T)
            .await;
        assert_eq!(st, DeviceStatus::Offline("no answer within 2s".into()));
        let snap = stats.snapshot();
        assert_eq!((snap.timeouts, snap.transport_errors), (1, 1));
        fake.with(|s| s.hang = false);
        h.next_reading(T).await;
        assert_eq!(h.status(), DeviceStatus::Online);
        assert!(stats.snapshot().timeouts >= 1);
        assert_eq!(
            fake.with(|s| s.connects),
            2,
            "reconnected after the timeout"
        );
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn writes_are_served_between_polls() {
        let plan = one_group(10, vec![0, 1]);
        let fake = Fake::new(&plan);
        let (mut h, stats, t0) = start(
            Poller::new(points(&["ro", "sp"], &["sp"]), plan, settings()),
            &fake,
        );
        h.next_reading(T).await;
        h.next_reading(T).await;

        assert_eq!(h.write("sp", Value::Float(21.5)).await, Ok(()));
        assert_eq!(
            h.write("ro", Value::Int(1)).await,
            Err(CommandError::ReadOnly("ro".into()))
        );
        assert_eq!(
            h.write("nope", Value::Int(1)).await,
            Err(CommandError::UnknownPoint("nope".into()))
        );
        fake.with(|s| s.write_error = Some(CommandError::Device("illegal data value".into())));
        assert_eq!(
            h.write("sp", Value::Int(99)).await,
            Err(CommandError::Device("illegal data value".into()))
        );
        // Writes did not wait for the next poll, and only writable points reached the device.
        assert_eq!(Instant::now() - t0, Duration::ZERO);
        assert_eq!(
            fake.with(|s| s.writes.clone()),
            vec![(1, Value::Float(21.5)), (1, Value::Int(99))]
        );
        let snap = stats.snapshot();
        assert_eq!((snap.writes_ok, snap.writes_failed), (1, 3));

        // An offline device refuses writes at once instead of making the caller wait for a timeout.
        fake.with(|s| s.fail = Some("gone"));
        h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), T)
            .await;
        assert_eq!(
            h.write("sp", Value::Int(1)).await,
            Err(CommandError::Transport("device offline: gone".into()))
        );
        h.stop(T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_a_hanging_read_promptly() {
        let plan = one_group(1, vec![0]);
        let fake = Fake::new(&plan);
        fake.with(|s| s.hang = true);
        let s = PollerSettings {
            timeout: Duration::from_secs(3600),
            ..settings()
        };
        let (h, _, t0) = start(Poller::new(points(&["a"], &[]), plan, s), &fake);
        fake.read_started.notified().await;
        h.stop(Duration::from_secs(1)).await.unwrap();
        assert!(Instant::now() - t0 < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_output_blocks_polling_and_loses_nothing() {
        let plan = one_group(1, vec![0]);
        let fake = Fake::new(&plan);
        let poller = Poller::new(points(&["a"], &[]), plan, settings());
        let (mut h, ctx) = TestHarness::with_capacity("dev", 1);
        let task = tokio::spawn(poller.run(ctx, fake.clone()));
        // Nobody reads for a while: the poller must wait, not drop or pile up reads.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            fake.with(|s| s.reads.len()) <= 3,
            "polling went on while the output was full"
        );
        for n in 1..=10 {
            assert_eq!(h.next_reading(T).await.value, Value::Int(n));
        }
        // Cancellation still works while blocked on a full output.
        tokio::time::sleep(Duration::from_secs(30)).await;
        h.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_output_ends_the_run() {
        let plan = one_group(1, vec![0]);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let (status, _status_rx) = StatusHandle::new();
        let (_cmd_tx, commands) = mpsc::channel(1);
        let ctx = AdapterContext {
            device: Arc::from("dev"),
            output: ReadingSink::new(tx),
            status,
            commands,
            cancel: CancellationToken::new(),
        };
        let fake = Fake::new(&plan);
        let r = Poller::new(points(&["a"], &[]), plan, settings())
            .run(ctx, fake)
            .await;
        assert!(matches!(r, Err(AdapterError::Closed(_))), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_plan_is_fatal() {
        for plan in [one_group(1, vec![0, 5]), one_group(0, vec![0])] {
            let fake = Fake::new(&PollPlan::default());
            let poller = Poller::new(points(&["a"], &[]), plan, settings());
            let h = TestHarness::spawn("dev", move |ctx| poller.run(ctx, fake));
            let r = h.join(T).await;
            assert!(matches!(r, Err(AdapterError::Fatal(_))), "{r:?}");
        }
    }

    #[test]
    fn plan_by_interval_groups_points_sharing_an_interval() {
        let point = |name: &str, secs: Option<u64>| crate::PointConfig {
            name: Arc::from(name),
            writable: false,
            poll_interval: secs.map(Duration::from_secs),
            spec: crate::ConfigNode::null(
                crate::Mark {
                    file: Arc::from("t"),
                    line: 1,
                    col: 1,
                },
                "",
            ),
        };
        let device = DeviceConfig {
            name: Arc::from("d"),
            protocol: "test".into(),
            connection: point("x", None).spec,
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            retries: 3,
            points: vec![
                point("a", None),
                point("b", Some(5)),
                point("c", None),
                point("d", Some(5)),
            ]
            .into(),
        };
        let plan = PollPlan::by_interval(&device);
        assert_eq!(
            plan.groups,
            vec![
                PollGroup {
                    interval: Duration::from_secs(1),
                    points: vec![0, 2]
                },
                PollGroup {
                    interval: Duration::from_secs(5),
                    points: vec![1, 3]
                },
            ]
        );
        let poller = Poller::for_device(&device, plan);
        assert_eq!(poller.settings().timeout, Duration::from_secs(2));
        assert_eq!(poller.settings().retries, 3);
    }
}
