//! A running Modbus device: the [`PollDevice`] the SDK's poller drives, and the [`Adapter`] around it.
//!
//! The poller owns the schedule, retries, offline detection and backoff; this file only turns a poll group
//! into Modbus requests (the coalesced plan) and a command into a write.
//!
//! # Timeouts
//!
//! The device's `timeout` bounds each Modbus request once the shared line is ours, not the wait for the line:
//! on a busy RS-485 bus a device may queue behind its neighbours for longer than its own timeout, and that
//! must not mark it offline. The poller's own timeout (which covers a whole group, queueing included) is set
//! to a generous safety net derived from the number of requests, so it only fires if something is truly
//! stuck.
//!
//! # Rejected merged reads
//!
//! Coalescing can put an unmapped register inside a request (a hole allowed by `max_gap`, or a point that
//! does not exist on this firmware). Devices answer that with `IllegalDataAddress` for the whole request. Then
//! the request is split into one request per point, for good (logged once), so only the point that is really
//! missing reads bad.
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::poller::{
    DeviceException, GroupReading, PollDevice, PollGroup, PollPlan, PollPoint, Poller,
    PollerSettings, TransportError,
};
use fieldbridge_sdk::{Adapter, AdapterContext, AdapterError, CommandError, DeviceStatus, Value};
use futures::future::BoxFuture;
use tokio_modbus::ExceptionCode;

use crate::config::ModbusDevice;
use crate::ops::{self, Data, Target};
use crate::plan::{PlanGroup, ReadRequest};
use crate::transport::{exception_name, LineLease, LineRegistry};

/// One request of the plan and whether the device made us split it.
#[derive(Debug, Clone)]
struct Slot {
    request: ReadRequest,
    split: Option<Vec<ReadRequest>>,
}

/// The [`PollDevice`] of one Modbus device on a shared line.
pub(crate) struct ModbusPollDevice {
    line: LineLease,
    device: Arc<ModbusDevice>,
    groups: Vec<Vec<Slot>>,
}

impl ModbusPollDevice {
    pub(crate) fn new(line: LineLease, device: Arc<ModbusDevice>, plan: &[PlanGroup]) -> Self {
        let groups = plan
            .iter()
            .map(|g| {
                g.requests
                    .iter()
                    .map(|r| Slot {
                        request: r.clone(),
                        split: None,
                    })
                    .collect()
            })
            .collect();
        ModbusPollDevice {
            line,
            device,
            groups,
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            line: &self.line,
            unit: self.device.unit,
            timeout: self.device.timeout,
            delay: self.device.inter_request_delay,
        }
    }

    async fn read_group(&mut self, group: usize) -> Result<GroupReading, TransportError> {
        let mut out = GroupReading::new();
        let Some(slots) = self.groups.get(group) else {
            return Ok(out);
        };
        let mut slots = slots.clone();
        for slot in &mut slots {
            if let Some(parts) = &slot.split {
                for part in parts {
                    self.read_request(part, &mut out).await?;
                }
                continue;
            }
            match self.read_request(&slot.request, &mut out).await? {
                Some(exc) if slot.request.is_merged() && is_range_rejection(exc) => {
                    let r = &slot.request;
                    tracing::info!(
                        device = %self.device.name,
                        table = %r.table,
                        start = r.start,
                        count = r.count,
                        exception = %exception_name(exc),
                        "device rejected a merged read; reading its points separately from now on"
                    );
                    // Drop the bad readings of the merged request; the split reads say which point is bad.
                    let members: Vec<usize> = r.members.iter().map(|m| m.point).collect();
                    out.retain(|(p, _)| !members.contains(p));
                    let parts = r.split();
                    for part in &parts {
                        self.read_request(part, &mut out).await?;
                    }
                    slot.split = Some(parts);
                }
                _ => {}
            }
        }
        self.groups[group] = slots;
        Ok(out)
    }

    /// Reads one request and appends its points' results; returns the exception if the device refused it.
    async fn read_request(
        &self,
        r: &ReadRequest,
        out: &mut GroupReading,
    ) -> Result<Option<ExceptionCode>, TransportError> {
        match ops::read(self.target(), r.table, r.start, r.count).await? {
            Ok(data) => {
                for m in &r.members {
                    let p = &self.device.points[m.point];
                    out.push((m.point, decode(&data, usize::from(m.at), p)));
                }
                Ok(None)
            }
            Err(exc) => {
                let name = exception_name(exc);
                for m in &r.members {
                    out.push((m.point, Err(DeviceException::new(name.clone()))));
                }
                Ok(Some(exc))
            }
        }
    }
}

fn decode(
    data: &Data,
    at: usize,
    p: &crate::config::ModbusPoint,
) -> Result<Value, DeviceException> {
    data.decode(at, &p.format).map_err(DeviceException::new)
}

/// Exceptions that mean "this range is not all readable" (some devices say IllegalDataValue for a count
/// they do not like).
fn is_range_rejection(exc: ExceptionCode) -> bool {
    matches!(
        exc,
        ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
    )
}

impl PollDevice for ModbusPollDevice {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        // The line itself replaces a connection that failed (see `transport`); here we only make sure one
        // exists, so that a dead unit on a shared bus does not reopen the port under its neighbours.
        Box::pin(async move { self.line.ensure_connected(self.device.timeout).await })
    }

    fn read(&mut self, group: usize) -> BoxFuture<'_, Result<GroupReading, TransportError>> {
        Box::pin(self.read_group(group))
    }

    fn write(&mut self, point: usize, value: Value) -> BoxFuture<'_, Result<(), CommandError>> {
        Box::pin(async move {
            let Some(p) = self.device.points.get(point) else {
                return Err(CommandError::UnknownPoint(point.to_string()));
            };
            ops::write(self.target(), p.table, p.offset, &p.format, &value, p.write).await
        })
    }
}

/// The adapter for one validated device.
pub(crate) struct ModbusAdapter {
    pub(crate) device: Arc<ModbusDevice>,
    pub(crate) registry: LineRegistry,
}

impl ModbusAdapter {
    /// The poller for this device: its points, its plan, and settings whose timeout is only a safety net
    /// (see the module docs).
    fn poller(&self, plan: &[PlanGroup]) -> Poller {
        let points = self
            .device
            .points
            .iter()
            .map(|p| PollPoint {
                name: p.name.clone(),
                writable: p.writable,
            })
            .collect();
        let poll_plan = PollPlan {
            groups: plan
                .iter()
                .map(|g| PollGroup {
                    interval: g.interval,
                    points: g.points(),
                })
                .collect(),
        };
        let most_requests = plan
            .iter()
            .map(|g| g.requests.iter().map(|r| r.split().len()).sum::<usize>())
            .max()
            .unwrap_or(1);
        let per_request = self.device.timeout + self.device.inter_request_delay;
        // Each request (and its split fallback, and a read-back) bounded by its own timeout, plus queueing
        // behind the neighbours on a shared line.
        let safety = per_request
            .saturating_mul(u32::try_from(most_requests * 2 + 2).unwrap_or(u32::MAX))
            .max(Duration::from_secs(30));
        let settings = PollerSettings {
            timeout: safety,
            retries: self.device.retries,
            ..PollerSettings::default()
        };
        Poller::new(points, poll_plan, settings)
    }
}

impl Adapter for ModbusAdapter {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(async move {
            let line = match self.registry.acquire(&self.device.endpoint) {
                Ok(line) => line,
                Err(conflict) => {
                    // Usually a reload that changed the port settings while the old device still holds the
                    // port: the core restarts us with backoff, and the port is ours once the old one stops.
                    let msg = conflict.to_string();
                    ctx.status.set(DeviceStatus::Error(msg.clone()));
                    return Err(AdapterError::Fatal(msg));
                }
            };
            let plan = self.device.plan();
            let poller = self.poller(&plan);
            let device = ModbusPollDevice::new(line, self.device.clone(), &plan);
            poller.run(ctx, device).await
        })
    }
}
