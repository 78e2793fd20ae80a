//! The workloads, identical for every broker: throughput (N publishers -> 1 subscriber), latency at a fixed
//! rate, and idle subscribed connections. Each one checks what arrived (per-publisher sequence numbers in the
//! payload) and every wait in it is bounded.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use fieldbridge::mqtt::{self, Packet, QoS};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{push_puback, read_stamp, Client, PublishEncoder, MAX_PACKET, PROTO};

/// A write or read that makes no progress for this long fails the run.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages encoded per write by a throughput publisher (about 12 KiB of 100-byte publishes).
const BATCH: u64 = 100;

/// Distinguishes topics and client ids of successive runs against the same broker.
static RUN_ID: AtomicU64 = AtomicU64::new(1);

fn next_run_id() -> u64 {
    RUN_ID.fetch_add(1, Ordering::Relaxed)
}

/// A spawned task that is aborted when this is dropped, so an early error return leaves nothing running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Parameters of a throughput run.
#[derive(Debug, Clone, Copy)]
pub struct ThroughputSpec {
    pub publishers: usize,
    pub qos: QoS,
    /// Total over all publishers.
    pub messages: u64,
    pub payload: usize,
    /// QoS 1 in-flight window per publisher.
    pub window: usize,
    /// After the publishers are done, stop waiting once nothing arrived for this long.
    pub drain_idle: Duration,
    /// Hard bound on the whole run.
    pub deadline: Duration,
    /// The subscriber reads and counts but holds back its PUBACKs for this long after the start (a slow
    /// consumer: the broker's in-flight window towards it fills up). Zero for the benchmark.
    pub ack_hold: Duration,
}

/// What a throughput run measured.
#[derive(Debug, Clone, Default)]
pub struct ThroughputResult {
    pub sent: u64,
    /// Distinct (publisher, sequence) pairs the subscriber received.
    pub delivered: u64,
    pub duplicates: u64,
    /// Messages that arrived after a later message of the same publisher.
    pub reordered: u64,
    /// From the release of the publishers to the last delivery.
    pub elapsed: Duration,
    /// From the release of the publishers to the last publisher finishing (last write for QoS 0, last PUBACK
    /// for QoS 1).
    pub publish_elapsed: Duration,
    /// Delivered messages per second over `elapsed`.
    pub rate: f64,
    /// Why the subscriber stopped: "complete", "drained" (nothing more came) or "deadline".
    pub end: &'static str,
}

/// Per-publisher record of which sequence numbers arrived.
struct Seen {
    bits: Vec<u64>,
    max: Option<u64>,
}

impl Seen {
    fn new(n: u64) -> Self {
        Seen {
            bits: vec![0; n.div_ceil(64) as usize],
            max: None,
        }
    }
}

/// Counts, for the subscriber side of every workload.
struct Tally {
    seen: Vec<Seen>,
    delivered: u64,
    duplicates: u64,
    reordered: u64,
    foreign: u64,
}

impl Tally {
    fn new(publishers: usize, per_publisher: u64) -> Self {
        Tally {
            seen: (0..publishers).map(|_| Seen::new(per_publisher)).collect(),
            delivered: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
        }
    }

    fn record(&mut self, publisher: u32, seq: u64) {
        let Some(s) = self.seen.get_mut(publisher as usize) else {
            self.foreign += 1;
            return;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        let Some(w) = s.bits.get_mut(word) else {
            self.foreign += 1;
            return;
        };
        if *w & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        *w |= 1 << bit;
        self.delivered += 1;
        match s.max {
            Some(m) if seq < m => self.reordered += 1,
            _ => s.max = Some(seq),
        }
    }
}

/// Per-publisher message counts: `total` split as evenly as possible.
fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// N publishers -> 1 subscriber on `bench/{run}/{publisher}`, subscriber on `bench/{run}/+`.
pub async fn throughput(addr: SocketAddr, spec: ThroughputSpec) -> Result<ThroughputResult> {
    let run = next_run_id();
    let counts = split(spec.messages, spec.publishers);
    let per_pub_max = counts.iter().copied().max().unwrap_or(0);
    let expected: u64 = counts.iter().sum();

    let mut sub = Client::connect(addr, &format!("bench-sub-{run}")).await?;
    sub.subscribe(&format!("bench/{run}/+"), spec.qos).await?;

    let mut pubs = Vec::with_capacity(spec.publishers);
    for i in 0..spec.publishers {
        pubs.push(Client::connect(addr, &format!("bench-pub-{run}-{i}")).await?);
    }

    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let pubs_done: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let mut tasks = JoinSet::new();
    for (i, client) in pubs.into_iter().enumerate() {
        let topic: Arc<str> = Arc::from(format!("bench/{run}/{i}"));
        let enc = PublishEncoder::new(topic, spec.qos, spec.payload, i as u32);
        let go = go_rx.clone();
        let count = counts[i];
        let window = spec.window;
        tasks.spawn(async move {
            let start = wait_go(go).await?;
            match spec.qos {
                QoS::AtMostOnce => publish_qos0(client, enc, count, start).await,
                _ => publish_qos1(client, enc, count, window, start).await,
            }
        });
    }

    let mut sub_task = {
        let go = go_rx.clone();
        let done = pubs_done.clone();
        let qos = spec.qos;
        AbortOnDrop(tokio::spawn(async move {
            let start = wait_go(go).await?;
            subscribe_loop(
                sub,
                spec.publishers,
                per_pub_max,
                expected,
                qos,
                start,
                done,
                spec,
            )
            .await
            .map(|(tally, last, end)| (tally, last, end, start))
        }))
    };

    let start = Instant::now();
    go_tx
        .send(Some(start))
        .map_err(|_| anyhow!("workers gone before the start"))?;

    // Publishers must finish within the deadline too; a stalled one fails the run (and is aborted on drop).
    let mut sent = 0u64;
    let mut last_done = start;
    let pub_deadline = tokio::time::Instant::from_std(start + spec.deadline);
    while let Some(joined) = tokio::time::timeout_at(pub_deadline, tasks.join_next())
        .await
        .map_err(|_| anyhow!("publishers did not finish within {:?}", spec.deadline))?
    {
        let (n, finished) = joined.context("publisher task")??;
        sent += n;
        last_done = last_done.max(finished);
    }
    let _ = pubs_done.set(last_done);

    let (tally, last_delivery, end, start) =
        tokio::time::timeout(spec.deadline + Duration::from_secs(5), &mut sub_task.0)
            .await
            .map_err(|_| anyhow!("subscriber did not stop"))?
            .context("subscriber task")??;
    if tally.foreign > 0 {
        bail!(
            "{} messages the load generator did not send arrived",
            tally.foreign
        );
    }
    let elapsed = last_delivery.map_or(Duration::ZERO, |t| t.saturating_duration_since(start));
    Ok(ThroughputResult {
        sent,
        delivered: tally.delivered,
        duplicates: tally.duplicates,
        reordered: tally.reordered,
        elapsed,
        publish_elapsed: last_done.saturating_duration_since(start),
        rate: if elapsed.is_zero() {
            0.0
        } else {
            tally.delivered as f64 / elapsed.as_secs_f64()
        },
        end,
    })
}

async fn wait_go(mut go: watch::Receiver<Option<Instant>>) -> Result<Instant> {
    let v = tokio::time::timeout(STALL_TIMEOUT, go.wait_for(|v| v.is_some()))
        .await
        .map_err(|_| anyhow!("never started"))?
        .map_err(|_| anyhow!("start signal dropped"))?;
    v.ok_or_else(|| anyhow!("no start time"))
}

fn ns_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

async fn write_bounded<W: AsyncWriteExt + Unpin>(w: &mut W, buf: &[u8]) -> Result<()> {
    tokio::time::timeout(STALL_TIMEOUT, w.write_all(buf))
        .await
        .map_err(|_| anyhow!("write stalled for {STALL_TIMEOUT:?}"))??;
    Ok(())
}

/// QoS 0: encode batches and write them back to back; TCP is the only flow control.
async fn publish_qos0(
    client: Client,
    mut enc: PublishEncoder,
    count: u64,
    base: Instant,
) -> Result<(u64, Instant)> {
    // The read half stays alive (and unread: a broker sends nothing to a pure QoS 0 publisher).
    let (_rd, mut wr) = client.stream.into_split();
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut seq = 0;
    while seq < count {
        let n = BATCH.min(count - seq);
        let ts = ns_since(base);
        for _ in 0..n {
            enc.push(&mut wbuf, seq, ts);
            seq += 1;
        }
        write_bounded(&mut wr, &wbuf).await?;
        wbuf.clear();
    }
    wr.flush().await?;
    Ok((seq, Instant::now()))
}

/// QoS 1: at most `window` unacknowledged PUBLISHes; a reader task returns window slots as PUBACKs arrive.
async fn publish_qos1(
    client: Client,
    mut enc: PublishEncoder,
    count: u64,
    window: usize,
    base: Instant,
) -> Result<(u64, Instant)> {
    let Client { stream, mut rbuf } = client;
    let (mut rd, mut wr) = stream.into_split();
    let slots = Arc::new(Semaphore::new(window));
    let mut reader = {
        let slots = slots.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut acked = 0u64;
            let result: Result<Instant> = async {
                while acked < count {
                    let mut n = 0;
                    while let Some(p) = mqtt::decode(&mut rbuf, Some(PROTO), MAX_PACKET)? {
                        match p {
                            Packet::PubAck(_) => n += 1,
                            other => bail!("publisher got an unexpected {other:?}"),
                        }
                    }
                    if n > 0 {
                        acked += n;
                        slots.add_permits(n as usize);
                        continue;
                    }
                    rbuf.reserve(16 * 1024);
                    let r = tokio::time::timeout(STALL_TIMEOUT, rd.read_buf(&mut rbuf))
                        .await
                        .map_err(|_| anyhow!("no PUBACK for {STALL_TIMEOUT:?} ({acked}/{count} acknowledged)"))??;
                    if r == 0 {
                        bail!("the broker closed the publisher's connection ({acked}/{count} acknowledged)");
                    }
                }
                Ok(Instant::now())
            }
            .await;
            // Wake the writer if it is waiting for a slot that will never come.
            slots.close();
            result
        }))
    };
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut seq = 0u64;
    while seq < count {
        let Ok(first) = slots.acquire().await else {
            break; // the reader ended: its error is reported below
        };
        first.forget();
        let mut n = 1;
        while n < BATCH && seq + n < count {
            match slots.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let ts = ns_since(base);
        for _ in 0..n {
            enc.push(&mut wbuf, seq, ts);
            seq += 1;
        }
        write_bounded(&mut wr, &wbuf).await?;
        wbuf.clear();
    }
    let finished = tokio::time::timeout(STALL_TIMEOUT + Duration::from_secs(1), &mut reader.0)
        .await
        .map_err(|_| anyhow!("PUBACK reader did not stop"))??;
    let finished = finished?;
    Ok((seq, finished))
}

/// The subscriber: counts distinct deliveries per publisher, acknowledges QoS 1, and stops when everything
/// arrived, when the publishers are done and nothing came for `drain_idle`, or at the deadline.
#[allow(clippy::too_many_arguments)]
async fn subscribe_loop(
    client: Client,
    publishers: usize,
    per_pub: u64,
    expected: u64,
    qos: QoS,
    start: Instant,
    pubs_done: Arc<OnceLock<Instant>>,
    spec: ThroughputSpec,
) -> Result<(Tally, Option<Instant>, &'static str)> {
    let Client {
        mut stream,
        mut rbuf,
    } = client;
    let mut tally = Tally::new(publishers, per_pub);
    let mut acks = BytesMut::with_capacity(16 * 1024);
    let mut last_delivery = None;
    let mut last_read = start;
    let deadline = start + spec.deadline;
    let tick = Duration::from_millis(100);
    loop {
        if tally.delivered >= expected {
            return Ok((tally, last_delivery, "complete"));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok((tally, last_delivery, "deadline"));
        }
        if !acks.is_empty() && now >= start + spec.ack_hold {
            write_bounded(&mut stream, &acks).await?;
            acks.clear();
        }
        if let Some(&done) = pubs_done.get() {
            if now.saturating_duration_since(last_read.max(done)) >= spec.drain_idle {
                return Ok((tally, last_delivery, "drained"));
            }
        }
        rbuf.reserve(256 * 1024);
        let n = match tokio::time::timeout(tick, stream.read_buf(&mut rbuf)).await {
            Err(_) => continue,
            Ok(r) => r?,
        };
        if n == 0 {
            bail!(
                "the broker closed the subscriber's connection ({} delivered)",
                tally.delivered
            );
        }
        let now = Instant::now();
        last_read = now;
        let mut any = false;
        while let Some(p) = mqtt::decode(&mut rbuf, Some(PROTO), MAX_PACKET)? {
            match p {
                Packet::Publish(p) => {
                    if p.qos != QoS::AtMostOnce {
                        push_puback(&mut acks, p.packet_id);
                    }
                    if p.qos != qos {
                        bail!("delivered at QoS {:?}, subscribed at {:?}", p.qos, qos);
                    }
                    match read_stamp(&p.payload) {
                        Some(s) => tally.record(s.publisher, s.seq),
                        None => tally.foreign += 1,
                    }
                    any = true;
                }
                Packet::PingResp => {}
                other => bail!("subscriber got an unexpected {other:?}"),
            }
        }
        if any {
            last_delivery = Some(now);
        }
        if !acks.is_empty() && now >= start + spec.ack_hold {
            write_bounded(&mut stream, &acks).await?;
            acks.clear();
        }
    }
}

/// Parameters of the latency run.
#[derive(Debug, Clone, Copy)]
pub struct LatencySpec {
    pub rate: u64,
    pub duration: Duration,
    /// Messages sent before this much time has passed are not counted (connection warm-up).
    pub warmup: Duration,
    pub payload: usize,
}

/// What the latency run measured (microseconds).
#[derive(Debug, Clone, Default)]
pub struct LatencyResult {
    pub sent: u64,
    pub delivered: u64,
    pub samples: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The rate the publisher actually achieved.
    pub achieved_rate: f64,
}

/// 1 publisher -> 1 subscriber at QoS 0 and a fixed rate; latency is the time from just before the publisher's
/// write to just after the subscriber's read returned the message (same process, same clock).
pub async fn latency(addr: SocketAddr, spec: LatencySpec) -> Result<LatencyResult> {
    let run = next_run_id();
    let total = (spec.rate as f64 * (spec.warmup + spec.duration).as_secs_f64()) as u64;
    let warmup_msgs = (spec.rate as f64 * spec.warmup.as_secs_f64()) as u64;
    let mut sub = Client::connect(addr, &format!("bench-lat-sub-{run}")).await?;
    let topic = format!("bench/{run}/lat");
    sub.subscribe(&topic, QoS::AtMostOnce).await?;
    let publisher = Client::connect(addr, &format!("bench-lat-pub-{run}")).await?;
    let base = Instant::now();
    let deadline = base + spec.warmup + spec.duration + Duration::from_secs(30);

    let rate = spec.rate;
    let payload = spec.payload;
    let mut pub_task = AbortOnDrop(tokio::spawn(async move {
        let (_rd, mut wr) = publisher.stream.into_split();
        let mut enc = PublishEncoder::new(Arc::from(topic.as_str()), QoS::AtMostOnce, payload, 0);
        let mut wbuf = BytesMut::with_capacity(16 * 1024);
        // 1 ms ticks; each tick sends whatever the schedule says is due, so a late tick catches up in a batch.
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0u64;
        while sent < total {
            tick.tick().await;
            let due = ((base.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
            if due <= sent {
                continue;
            }
            let ts = ns_since(base);
            for seq in sent..due {
                enc.push(&mut wbuf, seq, ts);
            }
            sent = due;
            write_bounded(&mut wr, &wbuf).await?;
            wbuf.clear();
            if Instant::now() > deadline {
                bail!("latency publisher ran past its deadline");
            }
        }
        Ok::<_, anyhow::Error>((sent, base.elapsed()))
    }));

    let Client {
        mut stream,
        mut rbuf,
    } = sub;
    let mut tally = Tally::new(1, total);
    let mut lat_ns: Vec<u64> = Vec::with_capacity(total as usize);
    let mut last_read = Instant::now();
    loop {
        if tally.delivered >= total {
            break;
        }
        let now = Instant::now();
        if now >= deadline
            || (pub_task.0.is_finished() && now.duration_since(last_read) > Duration::from_secs(2))
        {
            break;
        }
        rbuf.reserve(64 * 1024);
        let n = match tokio::time::timeout(Duration::from_millis(100), stream.read_buf(&mut rbuf))
            .await
        {
            Err(_) => continue,
            Ok(r) => r?,
        };
        if n == 0 {
            bail!("the broker closed the latency subscriber's connection");
        }
        let t = ns_since(base);
        last_read = Instant::now();
        while let Some(p) = mqtt::decode(&mut rbuf, Some(PROTO), MAX_PACKET)? {
            let Packet::Publish(p) = p else {
                bail!("latency subscriber got an unexpected {p:?}");
            };
            let s = read_stamp(&p.payload).ok_or_else(|| anyhow!("foreign payload"))?;
            tally.record(s.publisher, s.seq);
            if s.seq >= warmup_msgs {
                lat_ns.push(t.saturating_sub(s.ts_ns));
            }
        }
    }
    let (sent, pub_elapsed) = tokio::time::timeout(Duration::from_secs(5), &mut pub_task.0)
        .await
        .map_err(|_| anyhow!("latency publisher did not finish"))???;
    if lat_ns.is_empty() {
        bail!("no latency samples");
    }
    lat_ns.sort_unstable();
    let pct = |q: f64| -> f64 {
        let i = ((lat_ns.len() as f64 * q).ceil() as usize).clamp(1, lat_ns.len()) - 1;
        lat_ns[i] as f64 / 1000.0
    };
    Ok(LatencyResult {
        sent,
        delivered: tally.delivered,
        samples: lat_ns.len(),
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: *lat_ns.last().unwrap_or(&0) as f64 / 1000.0,
        achieved_rate: sent as f64 / pub_elapsed.as_secs_f64(),
    })
}

/// Opens `n` connections, each subscribed to its own topic, and returns them (they stay open while held).
pub async fn idle_connections(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
) -> Result<Vec<Client>> {
    let run = next_run_id();
    stream::iter(0..n)
        .map(|i| async move {
            let mut c = Client::connect(addr, &format!("bench-idle-{run}-{i}"))
                .await
                .with_context(|| format!("idle connection {i}"))?;
            c.subscribe(&format!("bench/{run}/idle/{i}"), QoS::AtLeastOnce)
                .await?;
            Ok::<_, anyhow::Error>(c)
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}
