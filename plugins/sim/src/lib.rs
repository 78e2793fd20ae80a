//! Simulated devices (`protocol: sim`): the demo config, the tests and the benchmarks run on them, on any
//! machine, with no hardware.
//!
//! Each point follows a signal (sine, ramp, random walk, counter, square, constant) or holds a setpoint that
//! write-back changes and the next poll reads back. A device can be told to fail: `failure_rate` makes polls
//! fail with a transport error (so the offline/backoff path and the status topics can be shown), and
//! `exception_rate` makes single points fail with a device exception (bad quality). A `seed` makes all of it
//! reproducible. See [`config`] for every key.
//!
//! The adapter is a thin [`PollDevice`](fieldbridge_sdk::PollDevice) under the SDK's [`Poller`]: one poll group
//! per distinct poll interval. Going through the same scheduler as the real adapters is the point: what the demo
//! shows (intervals, offline after failures, recovery, write-back) is what a Modbus device would do.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::{
    Adapter, AdapterContext, AdapterError, AdapterFactory, ConfigError, DeviceConfig, PollPlan,
    PollStats, Poller, PollerSettings,
};
use futures::future::BoxFuture;

pub mod config;
mod device;

use device::SimDevice;

/// The `protocol:` value of simulated devices.
pub const PROTOCOL: &str = "sim";

/// Builds simulated devices. Register it in the core under [`PROTOCOL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SimFactory;

impl AdapterFactory for SimFactory {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn build(&self, device: &DeviceConfig) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        Ok(Box::new(SimAdapter::new(device)?))
    }
}

/// One simulated device, ready to run.
pub struct SimAdapter {
    poller: Poller,
    device: SimDevice,
}

impl std::fmt::Debug for SimAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAdapter")
            .field("poller", &self.poller)
            .finish_non_exhaustive()
    }
}

impl SimAdapter {
    /// Validates the device's sim settings (every problem, each at its node) and builds the adapter. No I/O.
    pub fn new(device: &DeviceConfig) -> Result<SimAdapter, Vec<ConfigError>> {
        let spec = config::validate(device)?;
        let plan = PollPlan::by_interval(device);
        let groups = plan.groups.iter().map(|g| g.points.clone()).collect();
        let names = device.points.iter().map(|p| p.name.clone()).collect();
        let settings = PollerSettings {
            // Probing a simulated device costs nothing, and the demo should show recovery within seconds
            // rather than after a minute of backoff.
            backoff_max: Duration::from_secs(10),
            ..PollerSettings::from_device(device)
        };
        Ok(SimAdapter {
            poller: Poller::for_device(device, plan).with_settings(settings),
            device: SimDevice::new(spec, names, groups),
        })
    }

    /// The poll counters, readable while the adapter runs.
    pub fn stats(&self) -> Arc<PollStats> {
        self.poller.stats()
    }
}

impl Adapter for SimAdapter {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        let SimAdapter { poller, device } = *self;
        Box::pin(poller.run(ctx, device))
    }
}
