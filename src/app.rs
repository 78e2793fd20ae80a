//! Builds the running daemon from a validated [`Config`]: the broker and its listeners, the store, the pipeline,
//! one supervised task per device, the bridges and the HTTP API. Owns reload (SIGHUP) and shutdown.
//!
//! Supervision: every adapter runs in its own task. If it returns an error or panics, the device is marked
//! `error` (published retained on its status topic), and the adapter is rebuilt and restarted after an
//! exponential backoff with jitter. The daemon itself never goes down because of an adapter.
//!
//! Reload: the new configuration is loaded and validated completely first; if anything is wrong, every error is
//! logged and nothing changes. Otherwise devices whose configuration is identical keep running untouched,
//! changed ones are restarted, removed ones stopped, new ones started; broker clients stay connected. Bridges,
//! broker users, ACLs, limits and listeners, `storage.record` and `storage.durability` are applied too. What
//! only a restart applies (see [`restart_notes`]: `api.*`, `storage.path` and the store's sizing and
//! commit settings, `logging.level`, `broker.sys_interval`) is kept as it runs, and the reload's answer
//! and log carry one note per such changed key.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::{
    AdapterContext, AdapterFactory, Backoff, Command, DeviceStatus, Reading, ReadingSink,
    StatusHandle,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod api_state;

use crate::bridge::Bridges;
use crate::broker::link::Link;
use crate::broker::{Broker, Message};
use crate::config::{self, AdapterRegistry, Config, ConfigErrors, DeviceSpec};
use crate::mqtt::QoS;
use crate::pipeline::{DeviceEntry, DeviceTable, LiveState, Pipeline, PipelineStats, Recorder};
use crate::recorder::StoreLink;
use crate::store::{StateKind, Store};

/// Capacity of the channel all adapters send readings into. When full, adapters wait (back-pressure).
const READING_CHANNEL: usize = 4096;
/// Capacity of each device's command channel. When full, the write request waits.
const COMMAND_CHANNEL: usize = 32;
/// Persistent sessions are snapshotted at most this often (and at every commit interval when longer).
const STATE_SAVE_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The adapters compiled into this build.
pub struct Registry {
    factories: Vec<Arc<dyn AdapterFactory>>,
}

impl Default for Registry {
    fn default() -> Self {
        let factories: Vec<Arc<dyn AdapterFactory>> = vec![
            #[cfg(feature = "sim")]
            Arc::new(fieldbridge_sim::SimFactory),
            #[cfg(feature = "modbus")]
            Arc::new(fieldbridge_modbus::ModbusFactory::default()),
            #[cfg(feature = "serial")]
            Arc::new(fieldbridge_serial::SerialFactory::new()),
            #[cfg(feature = "coap")]
            Arc::new(fieldbridge_coap::CoapFactory::new()),
        ];
        Registry { factories }
    }
}

impl Registry {
    /// Adds a factory (tests register their own adapters this way).
    pub fn with(mut self, factory: Arc<dyn AdapterFactory>) -> Registry {
        self.factories.push(factory);
        self
    }

    /// The factory serving `protocol`, shared.
    pub fn get(&self, protocol: &str) -> Option<Arc<dyn AdapterFactory>> {
        self.factories
            .iter()
            .find(|f| f.protocol() == protocol)
            .cloned()
    }
}

impl AdapterRegistry for Registry {
    fn factory(&self, protocol: &str) -> Option<&dyn AdapterFactory> {
        self.factories
            .iter()
            .find(|f| f.protocol() == protocol)
            .map(|f| f.as_ref())
    }

    fn protocols(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.protocol()).collect()
    }
}

/// Loads and validates a configuration file with this build's adapters.
pub fn load_config(path: &Path, registry: &Registry) -> Result<Config, ConfigErrors> {
    // The adapters built during validation are dropped: each device's supervisor builds its own, so that a
    // restart after a failure starts from a fresh adapter.
    config::load_with(path, registry).map(|(cfg, _adapters)| cfg)
}

struct RunningDevice {
    spec: DeviceSpec,
    cancel: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// The running daemon.
pub struct App {
    /// The embedded broker.
    pub broker: Broker,
    /// The configuration in force.
    pub config: RwLock<Arc<Config>>,
    registry: Registry,
    pipeline: Arc<Pipeline>,
    link: Arc<Link>,
    readings: mpsc::Sender<Reading>,
    devices: Mutex<HashMap<Arc<str>, RunningDevice>>,
    generation: std::sync::atomic::AtomicU64,
    /// Cancelled to stop adapters (first step of shutdown).
    adapters_cancel: CancellationToken,
    /// Cancelled to stop the pipeline once adapters are down.
    pipeline_cancel: CancellationToken,
    tasks: TaskTracker,
    listener_stop: Mutex<CancellationToken>,
    /// The listeners' tasks: each ends once its socket is closed.
    listener_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The durable log.
    pub store: Store,
    store_link: Arc<StoreLink>,
    listener_addrs: RwLock<Vec<std::net::SocketAddr>>,
    /// The HTTP API, once listening (None when `api.bind` is disabled).
    api: Mutex<Option<crate::api::ApiServer>>,
    /// Cancelled first at shutdown, so the API stops answering before the store closes.
    api_stop: CancellationToken,
    /// Serializes reloads (SIGHUP and the API may ask at the same moment).
    reload_lock: tokio::sync::Mutex<()>,
    /// The configuration the daemon started with: what runs of the settings only a restart applies.
    started: Arc<Config>,
    /// The upstream bridges.
    pub bridges: Arc<Bridges>,
}

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] crate::broker::listener::ListenError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The HTTP API could not listen.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

impl App {
    /// Starts everything described by `cfg`.
    pub async fn start(cfg: Config, registry: Registry) -> Result<Arc<App>, StartError> {
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        let store = Store::open(&cfg.storage)?;
        let store_link = Arc::new(StoreLink::new(store.clone(), &cfg));
        let broker = Broker::new(cfg.broker.clone());
        broker.set_publish_hook(store_link.clone());
        // Retained messages and persistent sessions from the last run, before any client can connect.
        let restored = broker.restore(
            store.load_state(StateKind::Retained)?,
            store.load_state(StateKind::Session)?,
        );
        if restored != Default::default() {
            tracing::info!(
                retained = restored.retained,
                sessions = restored.sessions,
                messages = restored.messages,
                skipped = restored.skipped,
                "broker state restored"
            );
        }
        broker.persist_to(
            store_link.clone(),
            cfg.storage.commit_interval.max(STATE_SAVE_MIN_INTERVAL),
        );
        let listener_stop = CancellationToken::new();
        let mut bound = Vec::new();
        for l in &cfg.broker.listeners {
            bound.push(broker.bind(l).await?);
        }
        let listener_addrs: Vec<std::net::SocketAddr> =
            bound.iter().map(|b| b.local_addr()).collect();
        let listener_tasks: Vec<_> = bound
            .into_iter()
            .map(|b| broker.serve(b, listener_stop.clone()))
            .collect();
        broker.start_sys();

        let bridges = Arc::new(Bridges::start(
            &cfg.bridges,
            &cfg.gateway.id,
            store.clone(),
            broker.clone(),
        ));
        let link = Arc::new(broker.link("pipeline"));
        let pipeline = Arc::new(Pipeline {
            gateway: cfg.gateway.id.clone(),
            devices: DeviceTable::default(),
            recorder: Some(store_link.clone() as Arc<dyn Recorder>),
            stats: Arc::new(PipelineStats::default()),
            live: Arc::new(LiveState::default()),
        });
        let (tx, rx) = mpsc::channel(READING_CHANNEL);
        let app = Arc::new(App {
            broker: broker.clone(),
            config: RwLock::new(Arc::new(cfg.clone())),
            registry,
            pipeline: pipeline.clone(),
            link: link.clone(),
            readings: tx,
            devices: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(1),
            adapters_cancel: CancellationToken::new(),
            pipeline_cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            listener_stop: Mutex::new(listener_stop),
            listener_tasks: Mutex::new(listener_tasks),
            store,
            store_link,
            listener_addrs: RwLock::new(listener_addrs),
            api: Mutex::new(None),
            api_stop: CancellationToken::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            started: Arc::new(cfg.clone()),
            bridges,
        });
        if let Some(bind) = cfg.api.bind {
            match crate::api::serve(app.clone(), bind, app.api_stop.clone()).await {
                Ok(server) => *app.api.lock() = Some(server),
                Err(e) => {
                    // Stop what already runs, so a failed start leaves nothing listening.
                    app.listener_stop.lock().cancel();
                    app.broker.shutdown_token().cancel();
                    return Err(e.into());
                }
            }
        }

        // The gateway's own status: online now, offline when the daemon stops (published at shutdown).
        link.publish(Message::new(
            cfg.gateway.status_topic.as_str(),
            "online",
            QoS::AtLeastOnce,
            true,
        ))
        .await;

        let cmd_link = Arc::new(broker.link("commands"));
        cmd_link
            .subscribe(&pipeline.set_filter(), QoS::AtLeastOnce)
            .expect("the set filter is valid");
        app.tasks.spawn(pipeline.clone().run_readings(
            link.clone(),
            rx,
            app.pipeline_cancel.clone(),
        ));
        app.tasks.spawn(
            pipeline
                .clone()
                .run_commands(cmd_link, app.pipeline_cancel.clone()),
        );

        app.tasks
            .spawn(release_freed_memory(app.pipeline_cancel.clone()));

        for spec in &cfg.devices {
            app.start_device(spec.clone());
        }
        tracing::info!(
            gateway = %cfg.gateway.id,
            devices = cfg.devices.len(),
            "fieldbridge started"
        );
        Ok(app)
    }

    /// The pipeline's counters.
    pub fn pipeline_stats(&self) -> Arc<PipelineStats> {
        self.pipeline.stats.clone()
    }

    /// The addresses the MQTT listeners are bound to (after port 0 was resolved), in configuration order.
    pub fn listener_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listener_addrs.read().clone()
    }

    /// Where the HTTP API listens (the real port when `api.bind` used port 0).
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.lock().as_ref().map(|s| s.local_addr)
    }

    /// Latest values and device statuses.
    pub fn live(&self) -> Arc<LiveState> {
        self.pipeline.live.clone()
    }

    fn start_device(&self, spec: DeviceSpec) {
        let name = spec.adapter.name.clone();
        let Some(factory) = self.registry.get(&spec.adapter.protocol) else {
            // Validation guarantees a factory; a build without the adapter feature would have failed there.
            tracing::error!(device = %name, protocol = %spec.adapter.protocol, "no adapter for protocol");
            return;
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL);
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gateway = self.config.read().gateway.id.clone();
        let entry = Arc::new(DeviceEntry::new(spec.clone(), &gateway, generation, cmd_tx));
        self.pipeline.devices.write().insert(name.clone(), entry);
        let cancel = self.adapters_cancel.child_token();
        let done = tokio::spawn(supervise(
            factory,
            spec.clone(),
            ReadingSink::new(self.readings.clone()),
            cmd_rx,
            self.pipeline.clone(),
            self.link.clone(),
            cancel.clone(),
        ));
        self.devices
            .lock()
            .insert(name, RunningDevice { spec, cancel, done });
    }

    async fn stop_device(&self, name: &str) {
        let running = self.devices.lock().remove(name);
        if let Some(r) = running {
            r.cancel.cancel();
            let _ = r.done.await;
        }
    }

    /// Clears what a removed device leaves behind: its retained status and its live values.
    async fn forget_device(&self, name: &str) {
        self.pipeline.live.forget(name);
        let topic = format!("{}/{}/status", self.config.read().gateway.id, name);
        // An empty retained payload clears the retained status (MQTT 3.3.1.3).
        self.link
            .publish(Message::new(
                topic,
                bytes::Bytes::new(),
                QoS::AtLeastOnce,
                true,
            ))
            .await;
    }

    /// Applies a new, already validated configuration. Returns what changed (for logs and tests).
    pub async fn apply(&self, new: Config) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        let old_specs: HashMap<Arc<str>, DeviceSpec> = self
            .devices
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.spec.clone()))
            .collect();
        let new_names: std::collections::HashSet<Arc<str>> =
            new.devices.iter().map(|d| d.adapter.name.clone()).collect();
        for name in old_specs.keys() {
            if !new_names.contains(name) {
                self.stop_device(name).await;
                self.pipeline.devices.write().remove(name);
                self.forget_device(name).await;
                summary.removed.push(name.to_string());
            }
        }
        // The gateway id can change topics of every device: treat it as a change of all of them.
        let old_gateway = self.config.read().gateway.clone();
        let gateway_changed = old_gateway != new.gateway;
        *self.config.write() = Arc::new(new.clone());
        if old_gateway.status_topic != new.gateway.status_topic {
            // The gateway's retained status moves: cleared where it was, `online` where it is now (and
            // `offline` goes there at shutdown).
            self.link
                .publish(Message::new(
                    old_gateway.status_topic.as_str(),
                    bytes::Bytes::new(),
                    QoS::AtLeastOnce,
                    true,
                ))
                .await;
            self.link
                .publish(Message::new(
                    new.gateway.status_topic.as_str(),
                    "online",
                    QoS::AtLeastOnce,
                    true,
                ))
                .await;
        }
        for spec in &new.devices {
            match old_specs.get(&spec.adapter.name) {
                Some(old) if *old == *spec && !gateway_changed => {
                    summary.unchanged.push(spec.adapter.name.to_string())
                }
                Some(_) => {
                    self.stop_device(&spec.adapter.name).await;
                    self.start_device(spec.clone());
                    summary.restarted.push(spec.adapter.name.to_string());
                }
                None => {
                    self.start_device(spec.clone());
                    summary.added.push(spec.adapter.name.to_string());
                }
            }
        }
        self.store_link.configure(&new);
        self.bridges.reload(&new.bridges, &new.gateway.id).await;
        // Also when a listener is down since the last reload could not bind it: tried again.
        let listeners_changed = self.broker.config().listeners != new.broker.listeners
            || self.listener_addrs.read().len() != new.broker.listeners.len();
        self.broker.update_config(new.broker.clone());
        if listeners_changed {
            let stop = std::mem::take(&mut *self.listener_stop.lock());
            stop.cancel();
            // The new listeners may take the old ones' addresses: wait until those sockets are closed.
            let old = std::mem::take(&mut *self.listener_tasks.lock());
            for t in old {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
            let fresh = CancellationToken::new();
            let mut addrs = Vec::new();
            let mut tasks = Vec::new();
            for (i, l) in new.broker.listeners.iter().enumerate() {
                match self.broker.bind(l).await {
                    Ok(b) => {
                        addrs.push(b.local_addr());
                        tasks.push(self.broker.serve(b, fresh.clone()));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "listener not restarted after reload");
                        summary.notes.push(format!(
                            "broker.listeners[{i}] is not listening: {e}; fix it and reload (or restart)"
                        ));
                    }
                }
            }
            *self.listener_addrs.write() = addrs;
            *self.listener_tasks.lock() = tasks;
            *self.listener_stop.lock() = fresh;
        }
        summary
            .notes
            .splice(0..0, restart_notes(&self.started, &new));
        for note in &summary.notes {
            tracing::warn!("reload: {note}");
        }
        tracing::info!(
            added = summary.added.len(),
            removed = summary.removed.len(),
            restarted = summary.restarted.len(),
            unchanged = summary.unchanged.len(),
            "configuration reloaded"
        );
        summary
    }

    /// Re-reads the configuration file; on any error logs every problem and keeps the running configuration.
    pub async fn reload(&self) -> Result<ReloadSummary, ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self.config.read().path.clone();
        match load_config(&path, &self.registry) {
            Ok(cfg) => Ok(self.apply(cfg).await),
            Err(errors) => {
                for e in &errors.errors {
                    tracing::error!("reload refused: {e}");
                }
                tracing::error!(
                    "reload refused: {} problem(s); the running configuration is kept",
                    errors.len()
                );
                Err(errors)
            }
        }
    }

    /// Stops adapters, drains the pipeline, publishes the gateway's offline status and stops the broker, all
    /// within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.api_stop.cancel();
        let api = self.api.lock().take();
        if let Some(s) = api {
            let _ = tokio::time::timeout_at(deadline, s.task).await;
        }
        self.adapters_cancel.cancel();
        let handles: Vec<_> = self.devices.lock().drain().map(|(_, r)| r.done).collect();
        let _ = tokio::time::timeout_at(deadline, futures::future::join_all(handles)).await;
        self.pipeline_cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout_at(deadline, self.tasks.wait()).await;
        let status_topic = self.config.read().gateway.status_topic.clone();
        self.link
            .publish(Message::new(
                status_topic,
                "offline",
                QoS::AtLeastOnce,
                true,
            ))
            .await;
        // Bridges after the pipeline (everything it logged may still go up), before the store closes.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.bridges.shutdown(left).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.broker.shutdown(left).await;
        // The broker's state as the clients left it (persistent sessions are offline now).
        let changes = self.broker.state_changes();
        if !changes.is_empty() {
            crate::broker::persist::StateSink::save(&*self.store_link, changes).await;
        }
        // Last: everything the pipeline and the broker handed to the store is committed before we exit.
        if let Err(e) = self.store.shutdown().await {
            tracing::error!(error = %e, "closing the store");
        }
        tracing::info!("fieldbridge stopped");
    }
}

pub use crate::api::ReloadSummary;

/// The settings a reload does not apply, each with how to show its values (`None`: not shown, a secret).
/// The API server, the store, the log filter and the `$SYS` publisher are set up once at start.
type RestartKey = (&'static str, fn(&Config) -> Option<String>);

const RESTART_ONLY: &[RestartKey] = &[
    ("api.bind", |c| {
        Some(c.api.bind.map_or("disabled".to_string(), |a| a.to_string()))
    }),
    ("api.token", |_| None),
    ("api.token_file", |c| {
        Some(c.api.token_file.display().to_string())
    }),
    ("api.auth_reads", |c| Some(c.api.auth_reads.to_string())),
    ("api.hosts", |c| Some(format!("{:?}", c.api.hosts))),
    ("api.tls", |c| {
        Some(
            c.api
                .tls
                .as_ref()
                .map_or("none".to_string(), |t| t.cert.display().to_string()),
        )
    }),
    ("storage.path", |c| {
        Some(c.storage.path.display().to_string())
    }),
    ("storage.max_bytes", |c| {
        Some(c.storage.max_bytes.to_string())
    }),
    ("storage.synchronous", |c| {
        Some(format!("{:?}", c.storage.synchronous).to_lowercase())
    }),
    ("storage.commit_interval", |c| {
        Some(humantime::format_duration(c.storage.commit_interval).to_string())
    }),
    ("storage.commit_rows", |c| {
        Some(c.storage.commit_rows.to_string())
    }),
    ("storage.max_age", |c| {
        Some(c.storage.max_age.map_or("none".to_string(), |d| {
            humantime::format_duration(d).to_string()
        }))
    }),
    ("storage.when_full", |c| {
        Some(format!("{:?}", c.storage.when_full))
    }),
    ("logging.level", |c| Some(c.logging.level.clone())),
    ("broker.sys_interval", |c| {
        Some(humantime::format_duration(c.broker.sys_interval).to_string())
    }),
];

/// One note per setting that differs between `running` (what the daemon started with) and `new` but is
/// applied only at the next restart: `api.bind changed (127.0.0.1:8080 → 127.0.0.1:9090): takes effect at
/// the next restart`.
pub fn restart_notes(running: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    for (key, show) in RESTART_ONLY {
        let differs = match *key {
            // Secrets and values whose text could hide a difference: compared as values.
            "api.token" => running.api.token != new.api.token,
            "api.tls" => running.api.tls != new.api.tls,
            "api.hosts" => running.api.hosts != new.api.hosts,
            _ => show(running) != show(new),
        };
        if !differs {
            continue;
        }
        notes.push(match (show(running), show(new)) {
            (Some(a), Some(b)) if a != b => {
                format!("{key} changed ({a} → {b}): takes effect at the next restart")
            }
            _ => format!("{key} changed: takes effect at the next restart"),
        });
    }
    notes
}

/// Gives memory the allocator keeps after a burst back to the system, every [`crate::mem::TRIM_EVERY`].
async fn release_freed_memory(cancel: CancellationToken) {
    let mut every = tokio::time::interval(crate::mem::TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {
                let t = std::time::Instant::now();
                let gave = crate::mem::release_freed();
                tracing::debug!(gave, took_us = t.elapsed().as_micros() as u64, "malloc_trim");
            }
        }
    }
}

/// Runs one device's adapter until cancelled, restarting it with backoff after errors and panics.
async fn supervise(
    factory: Arc<dyn AdapterFactory>,
    spec: DeviceSpec,
    output: ReadingSink,
    mut commands: mpsc::Receiver<Command>,
    pipeline: Arc<Pipeline>,
    link: Arc<Link>,
    cancel: CancellationToken,
) {
    let name = spec.adapter.name.clone();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut last_status: Option<DeviceStatus> = None;
    loop {
        let adapter = match factory.build(&spec.adapter) {
            Ok(a) => a,
            Err(errors) => {
                for e in errors {
                    tracing::error!(device = %name, "{e}");
                }
                return;
            }
        };
        let (status, mut status_rx) = StatusHandle::new();
        let (tx, rx) = mpsc::channel(COMMAND_CHANNEL);
        let run_cancel = cancel.child_token();
        let ctx = AdapterContext {
            device: name.clone(),
            output: output.clone(),
            status: status.clone(),
            commands: rx,
            cancel: run_cancel.clone(),
        };
        let mut run = tokio::spawn(adapter.run(ctx));
        let outcome = loop {
            tokio::select! {
                r = &mut run => break r,
                changed = status_rx.changed() => {
                    if changed.is_ok() {
                        let s = status_rx.borrow_and_update().clone();
                        report_status(&pipeline, &link, &name, &s, &mut last_status).await;
                        if s == DeviceStatus::Online {
                            backoff.reset();
                        }
                    }
                }
                Some(cmd) = commands.recv() => {
                    if let Err(mpsc::error::SendError(cmd)) = tx.send(cmd).await {
                        let _ = cmd.reply.send(Err(fieldbridge_sdk::CommandError::Transport("adapter restarting".into())));
                    }
                }
            }
        };
        let reason = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(fieldbridge_sdk::AdapterError::Closed(_))) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(join) if join.is_panic() => Some(format!("adapter panicked: {}", panic_text(join))),
            Err(join) => Some(format!("adapter task failed: {join}")),
        };
        if cancel.is_cancelled() || reason.is_none() {
            return;
        }
        let reason = reason.unwrap_or_default();
        let delay = backoff.next_delay();
        tracing::warn!(device = %name, error = %reason, retry_in = ?delay, "adapter failed; restarting");
        report_status(
            &pipeline,
            &link,
            &name,
            &DeviceStatus::Error(reason),
            &mut last_status,
        )
        .await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

fn panic_text(join: tokio::task::JoinError) -> String {
    let payload = join.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

async fn report_status(
    pipeline: &Pipeline,
    link: &Link,
    device: &str,
    status: &DeviceStatus,
    last: &mut Option<DeviceStatus>,
) {
    if last.as_ref() == Some(status) {
        return;
    }
    match status {
        // The adapters log these themselves, with more to say (the port, the previous reason): a second line
        // here only at debug level.
        DeviceStatus::Online => tracing::debug!(device, "device online"),
        DeviceStatus::Offline(reason) => {
            tracing::debug!(device, reason = %reason, "device offline")
        }
        DeviceStatus::Error(reason) => tracing::warn!(device, reason = %reason, "device error"),
        DeviceStatus::Starting => {}
    }
    *last = Some(status.clone());
    pipeline.publish_status(link, device, status).await;
}
