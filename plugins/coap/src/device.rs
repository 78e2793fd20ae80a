//! A running CoAP device: polled points through the SDK's [`Poller`] (which also carries every write), one
//! observation task per observed resource, and the device's paths on the shared ingest server.
//!
//! # Status
//!
//! Polled points decide the status when there are any (the poller's offline detection and backoff probing).
//! A device with only observed points is online while a registration succeeds and goes offline after
//! `retries + 1` consecutive registrations without an answer (each one already retransmitted per RFC 7252);
//! it comes back by itself at the next registration that is answered. A device with only ingest points goes
//! online at its first accepted message (we cannot tell silence from a dead device).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fieldbridge_sdk::poller::{
    DeviceException, GroupReading, PollDevice, PollGroup, PollPlan, PollPoint, Poller,
    PollerSettings, TransportError,
};
use fieldbridge_sdk::{
    Adapter, AdapterContext, AdapterError, Backoff, CommandError, DeviceStatus, Quality, Reading,
    ReadingSink, SharedPool, StatusHandle, Value,
};
use futures::future::BoxFuture;
use tokio::sync::Mutex;

use crate::client::{Client, ClientError, Response};
use crate::config::{CoapDevice, CoapPoint, Mode};
use crate::content::{encode_write, extract_all, Decoded, Extract};
use crate::ingest::{IngestPoint, IngestServer};

/// The device's client, created at the first use (name resolution happens there) and shared by the poller and
/// the observation tasks.
#[derive(Clone)]
struct ClientSlot {
    device: Arc<CoapDevice>,
    client: Arc<Mutex<Option<Client>>>,
}

impl ClientSlot {
    async fn get(&self) -> Result<Client, ClientError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let uri = self
            .device
            .uri
            .as_ref()
            .ok_or_else(|| ClientError::Resolve("(none)".into(), "no uri".into()))?;
        let c = Client::connect(&uri.authority(), self.device.transmission.clone()).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the client (the next use resolves the name again: a server whose address changed).
    async fn reset(&self) {
        *self.client.lock().await = None;
    }
}

/// One request of a poll group: a resource and the points it carries.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    query: Option<String>,
    points: Vec<usize>,
}

/// Groups points by resource (several points of one resource: one request, one decoding).
fn by_resource<'a>(points: impl Iterator<Item = (usize, &'a CoapPoint)>) -> Vec<Request> {
    let mut out: BTreeMap<(String, Option<String>), Vec<usize>> = BTreeMap::new();
    for (i, p) in points {
        out.entry((p.path.clone(), p.query.clone()))
            .or_default()
            .push(i);
    }
    out.into_iter()
        .map(|((path, query), points)| Request {
            path,
            query,
            points,
        })
        .collect()
}

fn decode_for(
    device: &CoapDevice,
    points: &[usize],
    resp: &Response,
) -> Vec<(usize, Result<Decoded, String>)> {
    if !resp.is_success() {
        let why = resp.describe();
        return points.iter().map(|&i| (i, Err(why.clone()))).collect();
    }
    let specs: Vec<&Extract> = points.iter().map(|&i| &device.points[i].extract).collect();
    extract_all(&resp.payload, resp.content_format, &specs)
        .into_iter()
        .zip(points)
        .map(|(r, &i)| {
            let r = match r {
                Ok(Some(d)) => Ok(d),
                Ok(None) => Err(format!(
                    "no SenML record named `{}`",
                    device.points[i].extract.senml_name
                )),
                Err(e) => Err(e.to_string()),
            };
            (i, r)
        })
        .collect()
}

struct CoapPollDevice {
    slot: ClientSlot,
    device: Arc<CoapDevice>,
    groups: Vec<Vec<Request>>,
}

fn transport(e: ClientError, bound: Duration) -> TransportError {
    match e {
        ClientError::Timeout(_) | ClientError::SeparateTimeout(_) => TransportError::Timeout(bound),
        ClientError::Block(m) => TransportError::Protocol(m),
        other => TransportError::Connection(other.to_string()),
    }
}

impl PollDevice for CoapPollDevice {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.slot
                .get()
                .await
                .map(|_| ())
                .map_err(|e| TransportError::Connection(e.to_string()))
        })
    }

    fn read(&mut self, group: usize) -> BoxFuture<'_, Result<GroupReading, TransportError>> {
        Box::pin(async move {
            let mut out = GroupReading::new();
            let Some(requests) = self.groups.get(group) else {
                return Ok(out);
            };
            let client = self
                .slot
                .get()
                .await
                .map_err(|e| TransportError::Connection(e.to_string()))?;
            let bound = self.device.transmission.exchange_bound();
            for r in requests {
                let resp = match client.get(&r.path, r.query.as_deref()).await {
                    Ok(resp) => resp,
                    Err(e @ ClientError::TooLarge { .. }) => {
                        // The device answered; this resource is just too big for our bound.
                        for &i in &r.points {
                            out.push((i, Err(DeviceException::new(e.to_string()))));
                        }
                        continue;
                    }
                    Err(e) => {
                        if matches!(e, ClientError::Resolve(..) | ClientError::Io(_)) {
                            self.slot.reset().await;
                        }
                        return Err(transport(e, bound));
                    }
                };
                for (i, v) in decode_for(&self.device, &r.points, &resp) {
                    out.push((i, v.map(|d| d.value).map_err(DeviceException::new)));
                }
            }
            Ok(out)
        })
    }

    fn write(&mut self, point: usize, value: Value) -> BoxFuture<'_, Result<(), CommandError>> {
        Box::pin(async move {
            let Some(p) = self.device.points.get(point) else {
                return Err(CommandError::UnknownPoint(point.to_string()));
            };
            let (payload, cf) =
                encode_write(&value, p.write_format).map_err(CommandError::InvalidValue)?;
            let client = self
                .slot
                .get()
                .await
                .map_err(|e| CommandError::Transport(e.to_string()))?;
            match client
                .send(p.method, &p.path, p.query.as_deref(), &payload, Some(cf))
                .await
            {
                Ok(resp) if resp.is_success() => Ok(()),
                Ok(resp) => Err(CommandError::Device(resp.describe())),
                Err(e) if e.is_timeout() => Err(CommandError::Timeout),
                Err(ClientError::Encode(m)) => Err(CommandError::InvalidValue(m)),
                Err(e) => Err(CommandError::Transport(e.to_string())),
            }
        })
    }
}

/// The adapter for one validated device.
pub(crate) struct CoapAdapter {
    pub(crate) device: Arc<CoapDevice>,
    pub(crate) ingest: SharedPool<IngestServer>,
}

impl CoapAdapter {
    fn poller(&self, groups: &[(Duration, Vec<Request>)]) -> Poller {
        let points = self
            .device
            .points
            .iter()
            .map(|p| PollPoint {
                name: p.name.clone(),
                writable: p.writable,
            })
            .collect();
        let plan = PollPlan {
            groups: groups
                .iter()
                .map(|(interval, reqs)| PollGroup {
                    interval: *interval,
                    points: reqs.iter().flat_map(|r| r.points.clone()).collect(),
                })
                .collect(),
        };
        let t = &self.device.transmission;
        let most = groups.iter().map(|(_, r)| r.len()).max().unwrap_or(1);
        let blocks = t.max_body / usize::from(t.block_size.max(16)) + 1;
        // Each exchange bounds itself (retransmissions, separate response); this is only a safety net for a
        // whole group, block-wise transfers included.
        let safety = t
            .exchange_bound()
            .saturating_mul(u32::try_from(most.saturating_mul(blocks) + 2).unwrap_or(u32::MAX))
            .max(Duration::from_secs(30));
        let settings = PollerSettings {
            timeout: safety,
            retries: self.device.retries,
            ..PollerSettings::default()
        };
        Poller::new(points, plan, settings)
    }
}

impl Adapter for CoapAdapter {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(async move {
            let device = self.device.clone();
            // Ingest: the shared listener and our paths on it, both held for as long as we run.
            let _ingest = match device.ingest {
                Some(addr) => {
                    let lease = acquire_listener(&self.ingest, addr).await.map_err(|e| {
                        let msg = format!("cannot listen for CoAP ingest on {addr}: {e}");
                        ctx.status.set(DeviceStatus::Error(msg.clone()));
                        AdapterError::Fatal(msg)
                    })?;
                    let mut paths: BTreeMap<String, Vec<IngestPoint>> = BTreeMap::new();
                    for p in device.points.iter().filter(|p| p.mode == Mode::Ingest) {
                        paths.entry(p.path.clone()).or_default().push(IngestPoint {
                            name: p.name.clone(),
                            extract: p.extract.clone(),
                        });
                    }
                    let guard = lease
                        .register(
                            ctx.device.clone(),
                            ctx.output.clone(),
                            ctx.status.clone(),
                            paths.into_iter().collect(),
                        )
                        .map_err(|e| {
                            ctx.status.set(DeviceStatus::Error(e.to_string()));
                            AdapterError::Fatal(e.to_string())
                        })?;
                    Some((lease, guard))
                }
                None => None,
            };

            let slot = ClientSlot {
                device: device.clone(),
                client: Arc::default(),
            };
            let mut intervals: BTreeMap<Duration, Vec<(usize, &CoapPoint)>> = BTreeMap::new();
            for (i, p) in device.points.iter().enumerate() {
                if p.mode == Mode::Poll {
                    intervals.entry(p.interval).or_default().push((i, p));
                }
            }
            let groups: Vec<(Duration, Vec<Request>)> = intervals
                .into_iter()
                .map(|(iv, pts)| (iv, by_resource(pts.into_iter())))
                .collect();
            let has_polls = !groups.is_empty();
            let poller = self.poller(&groups);
            let observed = by_resource(
                device
                    .points
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.mode == Mode::Observe),
            );
            let observers = futures::future::join_all(observed.into_iter().map(|r| {
                observe_loop(
                    slot.clone(),
                    device.clone(),
                    r,
                    ctx.device.clone(),
                    ctx.output.clone(),
                    (!has_polls).then(|| ctx.status.clone()),
                )
            }));
            let cancel = ctx.cancel.clone();
            let poll_device = CoapPollDevice {
                slot: slot.clone(),
                device: device.clone(),
                groups: groups.into_iter().map(|(_, r)| r).collect(),
            };
            let poll = poller.run(ctx, poll_device);
            tokio::pin!(poll);
            tokio::pin!(observers);
            // The poller ends on cancel (Ok), a closed pipeline or a plan bug; observers only on a closed
            // pipeline (they are dropped on cancel).
            tokio::select! {
                r = &mut poll => r,
                errs = &mut observers => {
                    match errs.into_iter().find_map(Result::err) {
                        Some(e) => Err(e),
                        None => cancel.run_until_cancelled(poll).await.unwrap_or(Ok(())),
                    }
                }
            }
        })
    }
}

/// How long a device waits for its listener's address to be released by a listener that is stopping.
const REBIND_WAIT: Duration = Duration::from_secs(2);

/// The shared listener for `addr`. When the last device of a listener stops and a new one (a reload) binds the
/// same address at once, the old socket closes a moment later (its task ends asynchronously): "address in use"
/// is retried for a bounded time before it is an error (which the core then retries with backoff).
async fn acquire_listener(
    pool: &SharedPool<IngestServer>,
    addr: std::net::SocketAddr,
) -> std::io::Result<fieldbridge_sdk::Lease<IngestServer>> {
    let deadline = tokio::time::Instant::now() + REBIND_WAIT;
    loop {
        match pool.acquire(
            &addr.to_string(),
            |_| Ok(()),
            |stop| IngestServer::bind(addr, stop),
        ) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Sends the readings of one response (bad quality for a point whose value could not be had).
async fn publish(
    device: &CoapDevice,
    name: &Arc<str>,
    output: &ReadingSink,
    points: &[usize],
    resp: &Response,
) -> Result<(), AdapterError> {
    let now = SystemTime::now();
    for (i, r) in decode_for(device, points, resp) {
        let (value, quality, ts) = match r {
            Ok(d) => (d.value, Quality::Good, d.ts.unwrap_or(now)),
            Err(why) => (fieldbridge_sdk::poller::NO_VALUE, Quality::Bad(why), now),
        };
        output
            .send(Reading {
                device: name.clone(),
                point: device.points[i].name.clone(),
                value,
                quality,
                ts,
            })
            .await?;
    }
    Ok(())
}

/// Keeps one resource observed: register, publish every notification, re-register when notifications stop
/// for longer than Max-Age plus `observe_grace` (a server that restarted forgot us; a lost registration), when
/// the server ends the observation (an error notification), or after a failure (with backoff). A server that
/// does not support Observe is polled at the points' interval instead.
async fn observe_loop(
    slot: ClientSlot,
    device: Arc<CoapDevice>,
    r: Request,
    name: Arc<str>,
    output: ReadingSink,
    status: Option<StatusHandle>,
) -> Result<(), AdapterError> {
    let interval = r
        .points
        .iter()
        .map(|&i| device.points[i].interval)
        .min()
        .unwrap_or(Duration::from_secs(10));
    let mut backoff = Backoff::new(
        device
            .transmission
            .ack_timeout
            .max(Duration::from_millis(200)),
        Duration::from_secs(60),
    );
    let mut failures: u32 = 0;
    let mut online: Option<bool> = None;
    let set = |online: &mut Option<bool>, up: bool, why: &str| {
        if *online == Some(up) {
            return;
        }
        *online = Some(up);
        if up {
            tracing::info!(device = %name, path = %r.path, "observation registered; device online");
        } else {
            tracing::warn!(device = %name, path = %r.path, reason = %why, "device offline");
        }
        if let Some(s) = &status {
            s.set(if up {
                DeviceStatus::Online
            } else {
                DeviceStatus::Offline(why.to_owned())
            });
        }
    };
    loop {
        let attempt = async {
            let client = slot.get().await?;
            client.observe(&r.path, r.query.as_deref()).await
        }
        .await;
        let (first, obs) = match attempt {
            Ok(x) => x,
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures > device.retries {
                    set(&mut online, false, &e.to_string());
                }
                if matches!(e, ClientError::Resolve(..) | ClientError::Io(_)) {
                    slot.reset().await;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        failures = 0;
        backoff.reset();
        set(&mut online, true, "");
        publish(&device, &name, &output, &r.points, &first).await?;
        let Some(mut obs) = obs else {
            if first.is_success() {
                tracing::debug!(device = %name, path = %r.path, "server does not support Observe; polling");
            }
            tokio::time::sleep(interval).await;
            continue;
        };
        let mut max_age = first.max_age.unwrap_or(60);
        loop {
            let silence = Duration::from_secs(u64::from(max_age)) + device.observe_grace;
            match tokio::time::timeout(silence, obs.next()).await {
                Err(_) => {
                    tracing::info!(device = %name, path = %r.path, ?silence, "no notification in time; re-registering");
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!(device = %name, path = %r.path, error = %e, "notification could not be completed; re-registering");
                    break;
                }
                Ok(Some(Ok(resp))) => {
                    publish(&device, &name, &output, &r.points, &resp).await?;
                    if !resp.is_success() {
                        // An error notification ends the observation (RFC 7641 §3.2); retry after a pause.
                        tokio::time::sleep(backoff.next_delay()).await;
                        break;
                    }
                    max_age = resp.max_age.unwrap_or(60);
                }
            }
        }
    }
}
