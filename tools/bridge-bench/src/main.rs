//! Backlog drain benchmark (issue 4): N messages (100 bytes, QoS 1) are buffered while the upstream is down,
//! then the upstream (mosquitto) comes up and the backlog drains. Side by side, in the same run and against
//! the same upstream: fieldbridge's bridge (the backlog in the SQLite log) and mosquitto's own bridge (a
//! second mosquitto with `connection`, unlimited in-memory queue: `max_queued_messages 0`).
//!
//! A subscriber on the upstream (a raw client on the project's codec) counts what arrives: distinct
//! messages, duplicates, order (each payload starts with its sequence number), so "lost" is measured, not
//! assumed.
//!
//! Both halves are timed the same way: first to last arrival at the upstream subscriber, which runs on a
//! runtime thread of its own (it stands for the cloud). Rounds alternate which half goes first.
//!
//! Placement matters on a small VM: `taskset -c 0 bridge-bench --upstream-cpus 1 --sub-cpus 1` puts both
//! bridges on core 0 and the cloud (upstream and subscriber) on core 1, as two machines would be. Without
//! `--sub-cpus`, the subscriber shares the edge's core, and the upstream pays (in IPIs, counted per CPU in the
//! report) for waking it there whenever the edge leaves that core idle.
//!
//! `cargo run --release -p fieldbridge-bridge-bench -- --messages 300000 --rounds 5`
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use fieldbridge::bridge::{BridgeState, Bridges};
use fieldbridge::broker::Broker;
use fieldbridge::config::{
    BridgeConfig, BridgeUrl, BrokerConfig, Durability, ForwardRule, StorageConfig, Synchronous,
    WhenFull,
};
use fieldbridge::mqtt::{
    self, Connect, Packet, Properties, Protocol, PubResp, Publish, QoS, RetainHandling, Subscribe,
    Subscription,
};
use fieldbridge::store::{LogRecord, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

#[derive(Parser, Debug)]
#[command(about = "Backlog drain: fieldbridge bridge vs mosquitto bridge")]
struct Args {
    /// Messages buffered during the outage.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// fieldbridge's in-flight window (`inflight`; the daemon's default is 10,000).
    #[arg(long, default_value_t = 10_000)]
    inflight: u16,
    /// Topics the messages are spread over.
    #[arg(long, default_value_t = 10)]
    topics: u64,
    /// MQTT version fieldbridge speaks upstream: 5 or 311.
    #[arg(long, default_value = "5")]
    protocol: String,
    /// MQTT version of the edge mosquitto's bridge: 5 or 311 (default: the same as `--protocol`).
    #[arg(long)]
    edge_protocol: Option<String>,
    /// `max_inflight_messages` of the upstream mosquitto (its Receive Maximum for MQTT 5 clients; mosquitto's
    /// default is 20). Applies to both halves; 0 leaves mosquitto's default.
    #[arg(long, default_value_t = 0)]
    upstream_inflight: u32,
    /// `max_inflight_messages` of the edge mosquitto (its bridge's window); 0 leaves the default (20).
    #[arg(long, default_value_t = 0)]
    edge_inflight: u32,
    /// QoS of the counting subscriber on the upstream (1: mosquitto tracks an ack per message; 0: less
    /// upstream work, and mosquitto may then drop when the subscriber is slow, which is counted as lost).
    #[arg(long, default_value_t = 1)]
    sub_qos: u8,
    /// No subscriber on the upstream during fieldbridge's drain: measures what the bridge can push into
    /// mosquitto when mosquitto only has to acknowledge (delivery is then proven by the acks alone).
    #[arg(long)]
    no_sub: bool,
    /// Skip the mosquitto-bridge half.
    #[arg(long)]
    skip_mosquitto: bool,
    /// Skip fieldbridge's half (e.g. to trace mosquitto's bridge alone).
    #[arg(long, conflicts_with = "skip_mosquitto")]
    skip_fieldbridge: bool,
    /// Rounds of (fieldbridge, mosquitto bridge), alternating which goes first; each round prints its ratio.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Also measure a pipelined publisher straight into the upstream (its ceiling), once at the end.
    #[arg(long)]
    ceiling: bool,
    /// Runs the upstream mosquitto on these CPUs (`taskset -c`), e.g. `1` while the bench itself runs under
    /// `taskset -c 0`: the upstream then does not share its core with either bridge or the subscriber, as an
    /// upstream on another machine would not.
    #[arg(long)]
    upstream_cpus: Option<String>,
    /// Runs the upstream subscriber's thread on these CPUs (`taskset -p -c`), e.g. `1` to put it beside the
    /// upstream (the cloud's consumer on the cloud's core) rather than on the edge's; default: where the bench
    /// runs.
    #[arg(long)]
    sub_cpus: Option<String>,
    /// The upstream broker: `mosquitto` (single-threaded; on one core it is what limits both drains) or
    /// `rumqttd` (`cargo install rumqttd`; MQTT 3.1.1 only here).
    #[arg(long, default_value = "mosquitto")]
    upstream_broker: String,
    /// One-way delay in ms of the link between each bridge and the upstream (a proxy in the bench releases
    /// each direction's bytes this long after it read them, in order, with no bandwidth limit); 0: direct.
    /// The subscriber stays directly on the upstream.
    #[arg(long, default_value_t = 0)]
    link_delay_ms: u64,
    /// Seconds without progress after which the subscriber gives up (the rest counts as lost).
    #[arg(long, default_value_t = 15)]
    idle_secs: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A mosquitto process with a generated config; killed when dropped.
struct Mosquitto {
    child: Child,
    pid: u32,
}

/// The upstream mosquitto `name` on `port`: `--upstream-inflight`, and pinned to `--upstream-cpus` if given.
async fn upstream(dir: &Path, name: &str, port: u16, args: &Args) -> Mosquitto {
    if args.upstream_broker == "rumqttd" {
        return rumqttd(dir, name, port, args).await;
    }
    let extra = inflight_line(args.upstream_inflight);
    mosquitto(dir, name, port, &extra, args.upstream_cpus.as_deref()).await
}

/// A mosquitto with the bench's common settings and `extra`, on `cpus` (`taskset -c`) if given.
async fn mosquitto(
    dir: &Path,
    name: &str,
    port: u16,
    extra: &str,
    cpus: Option<&str>,
) -> Mosquitto {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\nlog_dest stderr\n\
             log_type error\nmax_queued_messages 0\n{extra}\n"
        ),
    )
    .expect("write mosquitto config");
    spawn_listening(
        "mosquitto",
        &["-c"],
        &conf,
        cpus,
        port,
        "apt-get install mosquitto",
    )
    .await
}

/// Starts `program args conf` on `cpus` (`taskset -c`, which execs it: the child's pid is the broker's) and
/// waits until it listens on `port`.
async fn spawn_listening(
    program: &str,
    args: &[&str],
    conf: &Path,
    cpus: Option<&str>,
    port: u16,
    install: &str,
) -> Mosquitto {
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, program]);
            c
        }
        None => Command::new(program),
    };
    let child = cmd
        .args(args)
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is needed ({install}): {e}"));
    let pid = child.id().unwrap_or(0);
    for _ in 0..1000 {
        if TcpStream::connect(addr(port)).await.is_ok() {
            return Mosquitto { child, pid };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{program} ({}) did not listen on {port}", conf.display());
}

/// A rumqttd upstream (MQTT 3.1.1 listener on `port`), pinned to `--upstream-cpus` if given.
async fn rumqttd(dir: &Path, name: &str, port: u16, args: &Args) -> Mosquitto {
    assert_eq!(
        args.protocol, "311",
        "--upstream-broker rumqttd needs --protocol 311"
    );
    let inflight = if args.upstream_inflight > 0 {
        args.upstream_inflight
    } else {
        100
    };
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(
        &conf,
        format!(
            "id = 0\n[router]\nid = 0\nmax_connections = 100\nmax_outgoing_packet_count = 200\n\
             max_segment_size = 104857600\nmax_segment_count = 10\n\
             [v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 1\n\
             [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 20480\n\
             max_inflight_count = {inflight}\ndynamic_filters = true\n"
        ),
    )
    .expect("write rumqttd config");
    let cpus = args.upstream_cpus.as_deref();
    spawn_listening(
        "rumqttd",
        &["-q", "-c"],
        &conf,
        cpus,
        port,
        "cargo install rumqttd",
    )
    .await
}

impl Mosquitto {
    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(self.pid)
    }
}

/// CPU seconds (user + system) used so far by the threads of `pid`, except those whose name starts with
/// `skip` (the bench's own threads). Clock ticks
/// are taken as 100 per second (Linux's USER_HZ).
fn cpu_secs(pid: u32, skip: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so fields are counted after the last `)`.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !skip.is_empty()
            && head
                .split_once('(')
                .is_some_and(|(_, comm)| comm.starts_with(skip))
        {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line: 12 and 13 after `) state`.
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / 100.0
}

/// Context switches of the threads of `pid` so far: `(voluntary, involuntary)`. For the upstream, the first
/// is how often it ran dry of input and slept, the second how often the scheduler took its core away.
fn switches(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let field = |s: &str, name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .fold((0, 0), |(v, n), s| {
            (
                v + field(&s, "voluntary_ctxt_switches:"),
                n + field(&s, "nonvoluntary_ctxt_switches:"),
            )
        })
}

/// Interrupts per CPU so far from `/proc/interrupts`: rescheduling (`RES`) and function-call (`CAL`) IPIs,
/// `[RES cpu0, RES cpu1, .., CAL cpu0, ..]`. On a VM each IPI is paid by the CPU that sends it.
fn ipis() -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let mut out = Vec::new();
    for name in ["RES:", "CAL:"] {
        if let Some(l) = text.lines().find(|l| l.trim_start().starts_with(name)) {
            out.extend(
                l.trim_start()[name.len()..]
                    .split_whitespace()
                    .map_while(|v| v.parse::<u64>().ok()),
            );
        }
    }
    out
}

/// [`ipis`] since `before`, per message, as text.
fn ipis_since(before: &[u64], n: u64) -> String {
    let now = ipis();
    let per: Vec<String> = now
        .iter()
        .zip(before)
        .map(|(a, b)| format!("{:.3}", (a - b) as f64 / n as f64))
        .collect();
    let half = per.len() / 2;
    format!(
        "RES {} CAL {}",
        per[..half].join("/"),
        per[half..].join("/")
    )
}

/// [`switches`] since `before`.
fn switches_since(pid: u32, before: (u64, u64)) -> (u64, u64) {
    let now = switches(pid);
    (now.0 - before.0, now.1 - before.1)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A minimal MQTT 3.1.1 client on the project's codec.
struct Raw {
    stream: TcpStream,
    rbuf: BytesMut,
}

impl Raw {
    async fn connect(port: u16, client_id: &str) -> Raw {
        let stream = TcpStream::connect(addr(port)).await.expect("connect");
        stream.set_nodelay(true).ok();
        let mut c = Raw {
            stream,
            rbuf: BytesMut::with_capacity(1 << 20),
        };
        let connect = Connect {
            protocol: Protocol::V311,
            clean_start: true,
            keep_alive: 300,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) if a.reason_code == 0 => c,
            other => panic!("CONNACK expected, got {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        mqtt::encode(p, Protocol::V311, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) =
                mqtt::decode(&mut self.rbuf, Some(Protocol::V311), u32::MAX).expect("decode")
            {
                return Some(p);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 65536 {
                self.rbuf.reserve(1 << 20);
            }
            if self.stream.read_buf(&mut self.rbuf).await.ok()? == 0 {
                return None;
            }
        }
    }
}

/// What the upstream subscriber saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Counts what arrives on the upstream, shared with the waiter.
type Shared = Arc<std::sync::Mutex<Seen>>;

/// Subscribes to `filter` (at `--sub-qos`) and counts payloads `0..messages` (see [`wait_sub`]), on the
/// subscriber's thread (`--sub-cpus`).
async fn subscriber(port: u16, filter: &str, args: &Args) -> (tokio::task::JoinHandle<()>, Shared) {
    let (n, topics, qos) = (args.messages, args.topics, args.sub_qos);
    let shared: Shared = Arc::default();
    let out = shared.clone();
    let filter = filter.to_string();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    // On its own runtime thread: the subscriber stands for the cloud, and must not share (or slow down) the
    // runtime fieldbridge's bridge runs on, as it does not share mosquitto's event loop in the other half.
    let task = sub_runtime(args.sub_cpus.as_deref()).spawn(async move {
        let c = subscribe_raw(port, &filter, qos).await;
        let _ = ready_tx.send(());
        count(c, n, topics, out).await;
    });
    ready_rx.await.expect("the subscriber connected");
    (task, shared)
}

/// A link with `delay` each way to the upstream on `up_port`, listening on the returned port: for each
/// connection accepted, one to the upstream, and bytes released `delay` after they were read. Runs on a
/// runtime thread of its own (`bench-link`, not counted as edge CPU).
fn delay_link(up_port: u16, delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the link");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("link address").port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("link runtime");
    std::thread::Builder::new()
        .name("bench-link".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("link listener");
                while let Ok((a, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let Ok(b) = TcpStream::connect(addr(up_port)).await else {
                            return; // the upstream is down: the bridge sees the link close
                        };
                        a.set_nodelay(true).ok();
                        b.set_nodelay(true).ok();
                        let (ar, aw) = a.into_split();
                        let (br, bw) = b.into_split();
                        tokio::join!(delayed(ar, bw, delay), delayed(br, aw, delay));
                    });
                }
            })
        })
        .expect("link thread");
    port
}

/// Copies `r` to `w`, each chunk written `delay` after it was read.
async fn delayed(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            if tx
                .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// The runtime the upstream subscribers run on (one thread of its own, on `cpus` if given: the first call's
/// choice holds for the run).
fn sub_runtime(cpus: Option<&str>) -> &'static tokio::runtime::Handle {
    static RT: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("subscriber runtime");
        let handle = rt.handle().clone();
        let cpus = cpus.map(str::to_string);
        let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("bench-sub".into())
            .spawn(move || {
                if let Some(cpus) = cpus {
                    pin_this_thread(&cpus);
                }
                let _ = pinned_tx.send(());
                rt.block_on(std::future::pending::<()>())
            })
            .expect("subscriber thread");
        let _ = pinned_rx.recv();
        handle
    })
}

/// Moves the calling thread to `cpus` (`taskset -p -c cpus TID`; the thread's id from `/proc/thread-self`).
fn pin_this_thread(cpus: &str) {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .expect("a thread id")
        .to_string();
    let ok = std::process::Command::new("taskset")
        .args(["-p", "-c", cpus, &tid])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -p -c {cpus} {tid} failed");
}

async fn subscribe_raw(port: u16, filter: &str, qos: u8) -> Raw {
    let mut c = Raw::connect(
        port,
        &format!("bench-sub-{}", filter.trim_end_matches("/#")),
    )
    .await;
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: filter.into(),
            qos: QoS::from_u8(qos).unwrap_or(QoS::AtLeastOnce),
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }],
    }))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(_)) => {}
        other => panic!("SUBACK expected, got {other:?}"),
    }
    c
}

/// Counts payloads `0..n` as they arrive (acknowledging them in one write per read).
async fn count(mut c: Raw, n: u64, topics: u64, out: Shared) {
    {
        let mut seen = Seen::default();
        let mut got = vec![false; n as usize];
        let mut last_per_topic = vec![-1i64; topics as usize];
        let mut acks = BytesMut::new();
        loop {
            // Decode everything buffered, then ack it in one write.
            while let Some(p) =
                mqtt::decode(&mut c.rbuf, Some(Protocol::V311), u32::MAX).expect("decode")
            {
                if let Packet::Publish(p) = p {
                    let now = Instant::now();
                    seen.first.get_or_insert(now);
                    seen.last = Some(now);
                    let i: u64 = std::str::from_utf8(&p.payload[..10])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("payload starts with its number");
                    if p.qos != QoS::AtMostOnce {
                        mqtt::encode(
                            &Packet::PubAck(PubResp {
                                packet_id: p.packet_id,
                                reason_code: 0,
                                properties: Properties::default(),
                            }),
                            Protocol::V311,
                            &mut acks,
                        );
                    }
                    let slot = &mut got[i as usize];
                    if *slot {
                        seen.duplicates += 1;
                        continue;
                    }
                    *slot = true;
                    seen.distinct += 1;
                    let t = (i % topics) as usize;
                    if (i as i64) < last_per_topic[t] {
                        seen.out_of_order += 1;
                    }
                    last_per_topic[t] = i as i64;
                }
            }
            *out.lock().unwrap() = seen.clone();
            if !acks.is_empty() {
                if c.stream.write_all(&acks).await.is_err() {
                    return;
                }
                acks.clear();
            }
            if seen.distinct == n {
                return;
            }
            if c.rbuf.capacity() - c.rbuf.len() < 65536 {
                c.rbuf.reserve(1 << 20);
            }
            // The caller bounds the whole wait; a dead connection ends it.
            match c.stream.read_buf(&mut c.rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Waits until the subscriber has all `n` messages, or nothing new arrived for `idle` (what is missing then
/// is lost), or 15 minutes passed.
async fn wait_sub(sub: (tokio::task::JoinHandle<()>, Shared), idle: Duration, n: u64) -> Seen {
    let (task, seen) = sub;
    let overall = Instant::now() + Duration::from_secs(900);
    let mut last = (0, Instant::now());
    loop {
        let s = seen.lock().unwrap().clone();
        if s.distinct >= n || task.is_finished() {
            task.abort();
            return s;
        }
        let now = Instant::now();
        let total = s.distinct + s.duplicates;
        if total != last.0 {
            last = (total, now);
        } else if now.duration_since(last.1) >= idle || now > overall {
            task.abort();
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn payload(i: u64, size: usize) -> Bytes {
    let mut s = format!("{i:010}");
    while s.len() < size {
        s.push('x');
    }
    s.truncate(size.max(10));
    Bytes::from(s)
}

struct Report {
    name: &'static str,
    drain_secs: f64,
    rate: f64,
    /// CPU seconds the edge side (fieldbridge's threads, or the edge mosquitto) used during the drain.
    cpu_secs: f64,
    /// CPU seconds the upstream mosquitto used during the drain (its work per message depends on how the
    /// bridge's packets arrive: many small segments cost it more than a few large ones).
    up_cpu_secs: f64,
    /// Context switches of the upstream mosquitto during the drain: (slept for want of input, preempted).
    up_switches: (u64, u64),
    /// IPIs per message during the drain, per CPU ([`ipis_since`]).
    ipis: String,
    seen: Seen,
    n: u64,
    rss_mib: f64,
    note: String,
}

async fn run_fieldbridge(args: &Args, dir: &Path, up_port: u16, link_port: u16) -> Report {
    let n = args.messages;
    let storage = StorageConfig {
        path: dir.join("bench.db"),
        commit_interval: Duration::from_millis(20),
        commit_rows: 10_000,
        synchronous: Synchronous::Full,
        durability: Durability::Strict,
        max_bytes: 8 << 30,
        max_age: None,
        when_full: WhenFull::DropOldest,
        record: Vec::new(),
    };
    let store = Store::open(&storage).expect("open store");
    let broker = Broker::new(broker_config());
    // During the outage the bridge points at a port nobody listens on; once the upstream and its subscriber
    // are ready, a reload points it at the upstream (from its cursor), so no message can arrive before the
    // subscription does.
    let mut cfg = BridgeConfig {
        protocol: if args.protocol == "311" {
            Protocol::V311
        } else {
            Protocol::V5
        },
        client_id: "bench-fieldbridge".into(),
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_millis(400),
        inflight: args.inflight,
        forward: vec![ForwardRule {
            filter: "gw/#".into(),
            topic: "fb/{topic}".into(),
            qos: None,
            retain: true,
        }],
        ..BridgeConfig::new("cloud", BridgeUrl::mqtt("127.0.0.1", free_port()), "gw")
    };
    // The bridge exists before the outage's data (its cursor starts at the head).
    let bridges = Bridges::start(
        std::slice::from_ref(&cfg),
        "gw",
        store.clone(),
        broker.clone(),
    );
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        let recs: Vec<LogRecord> = (i..end)
            .map(|k| {
                let mut r = LogRecord::new(
                    format!("gw/dev{}/v", k % args.topics),
                    payload(k, args.payload),
                );
                r.qos = 1;
                r
            })
            .collect();
        // Awaiting each commit keeps the fill's own memory bounded, so RSS shows the bridge, not the queue.
        store
            .append_batch(recs)
            .await
            .expect("append")
            .await
            .expect("commit");
        i = end;
    }
    let head = store.flush().await.expect("flush");
    eprintln!(
        "fieldbridge: {n} messages logged during the outage in {:.2}s ({:.0}/s); state: {}",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64(),
        bridges.statuses()[0].state
    );
    let rss_full = rss_mib(std::process::id());

    let up = upstream(dir, "upstream-fb", up_port, args).await;
    let sub = if args.no_sub {
        None
    } else {
        Some(subscriber(up_port, "fb/#", args).await)
    };
    let rss_before = rss_mib(std::process::id());
    let cpu_before = cpu_secs(std::process::id(), "bench-");
    let up_cpu_before = cpu_secs(up.pid, "");
    let up_switches_before = switches(up.pid);
    let ipis_before = ipis();
    cfg.url.port = link_port;
    bridges.reload(std::slice::from_ref(&cfg), "gw").await;
    let t_up = Instant::now();
    // Connected?
    let mut t_conn = None;
    let mut t_done = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        let st = &bridges.statuses()[0];
        if t_conn.is_none() && matches!(st.state, BridgeState::Live | BridgeState::Backlog) {
            t_conn = Some(Instant::now());
        }
        if st.cursor >= head {
            t_done = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let t_conn = t_conn.unwrap_or(t_up);
    let t_done = t_done.expect("fieldbridge did not drain within 15 minutes");
    let rss_after = rss_mib(std::process::id());
    let cpu = cpu_secs(std::process::id(), "bench-") - cpu_before;
    let (seen, drain) = match sub {
        // Timed like mosquitto's bridge below: first to last arrival at the upstream subscriber.
        Some(sub) => {
            let seen = wait_sub(sub, Duration::from_secs(args.idle_secs), n).await;
            (seen.clone(), arrival_span(&seen))
        }
        // From connected to the cursor at the head (the status is refreshed every 100 ms).
        None => (
            Seen {
                distinct: bridges.statuses()[0].delivered,
                ..Seen::default()
            },
            t_done.duration_since(t_conn).as_secs_f64(),
        ),
    };
    let up_cpu = cpu_secs(up.pid, "") - up_cpu_before;
    let up_switches = switches_since(up.pid, up_switches_before);
    let ipis = ipis_since(&ipis_before, n);
    let st = bridges.statuses()[0].clone();
    bridges.shutdown(Duration::from_secs(2)).await;
    up.stop().await;
    drop(store);
    Report {
        name: "fieldbridge",
        drain_secs: drain,
        rate: seen.distinct as f64 / drain,
        cpu_secs: cpu,
        up_cpu_secs: up_cpu,
        up_switches,
        ipis,
        seen,
        n,
        rss_mib: rss_after,
        note: format!(
            "window {}, resent {}, connects {}; RSS {rss_full:.0} MiB after the fill, {rss_before:.0} before and {rss_after:.0} after the drain{}",
            st.window,
            st.resent,
            st.connects,
            if args.no_sub { "; no subscriber: received = acknowledged by mosquitto" } else { "" }
        ),
    }
}

async fn run_mosquitto_bridge(args: &Args, dir: &Path, up_port: u16, link_port: u16) -> Report {
    let n = args.messages;
    let edge_port = free_port();
    let edge = mosquitto(
        dir,
        "edge",
        edge_port,
        &format!(
            "connection cloud\naddress 127.0.0.1:{link_port}\ntopic gw/# out 1 \"\" mq/\ncleansession false\n\
             restart_timeout 1\nbridge_protocol_version {}\nnotifications false\ntry_private false\n{}",
            edge_protocol(args),
            inflight_line(args.edge_inflight)
        ),
        None,
    )
    .await;
    // Publish the outage's messages into the edge broker, pipelined, QoS 1.
    let t = Instant::now();
    let acked = publish_all(edge_port, n, args.topics, args.payload, "").await;
    eprintln!(
        "mosquitto bridge: {acked}/{n} messages accepted by the edge broker during the outage in {:.2}s; edge RSS {:.0} MiB",
        t.elapsed().as_secs_f64(),
        edge.rss_mib()
    );
    let rss_full = edge.rss_mib();
    let up = upstream(dir, "upstream-mq", up_port, args).await;
    let cpu_before = cpu_secs(edge.pid, "");
    let up_cpu_before = cpu_secs(up.pid, "");
    let up_switches_before = switches(up.pid);
    let ipis_before = ipis();
    let sub = subscriber(up_port, "mq/#", args).await;
    let seen = wait_sub(sub, Duration::from_secs(args.idle_secs), n).await;
    let cpu = cpu_secs(edge.pid, "") - cpu_before;
    let up_cpu = cpu_secs(up.pid, "") - up_cpu_before;
    let up_switches = switches_since(up.pid, up_switches_before);
    let ipis = ipis_since(&ipis_before, n);
    let drain = arrival_span(&seen);
    let rss = edge.rss_mib().max(rss_full);
    edge.stop().await;
    up.stop().await;
    Report {
        name: "mosquitto bridge",
        drain_secs: drain,
        rate: seen.distinct as f64 / drain,
        cpu_secs: cpu,
        up_cpu_secs: up_cpu,
        up_switches,
        ipis,
        seen,
        n,
        rss_mib: rss,
        note: format!(
            "edge mosquitto: max_queued_messages 0, max_inflight_messages {}, bridge QoS 1, {}",
            if args.edge_inflight == 0 {
                "20 (default)".to_string()
            } else {
                args.edge_inflight.to_string()
            },
            edge_protocol(args)
        ),
    }
}

/// The edge mosquitto's bridge speaks the protocol fieldbridge's does (`--protocol`), or `--edge-protocol`:
/// the upstream's work per message differs between MQTT 5 and 3.1.1, and both halves share that upstream.
fn edge_protocol(args: &Args) -> &'static str {
    let p = args
        .edge_protocol
        .as_deref()
        .unwrap_or(args.protocol.as_str());
    if p == "311" {
        "mqttv311"
    } else {
        "mqttv50"
    }
}

/// First to last arrival at the upstream subscriber, in seconds.
fn arrival_span(seen: &Seen) -> f64 {
    match (seen.first, seen.last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-3),
        _ => f64::NAN,
    }
}

fn inflight_line(n: u32) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("max_inflight_messages {n}\n")
    }
}

/// Publishes `n` QoS 1 messages on `{prefix}gw/dev{i % topics}/v` as fast as the broker takes them
/// (pipelined, no window); returns how many were acknowledged.
async fn publish_all(port: u16, n: u64, topics: u64, size: usize, prefix: &str) -> u64 {
    let c = Raw::connect(port, &format!("bench-pub{prefix}")).await;
    let (mut rd, mut wr) = c.stream.into_split();
    let reader = tokio::spawn(async move {
        let mut acked = 0u64;
        let mut buf = BytesMut::with_capacity(1 << 20);
        while acked < n {
            if buf.capacity() - buf.len() < 65536 {
                buf.reserve(1 << 20);
            }
            if rd.read_buf(&mut buf).await.map_or(true, |r| r == 0) {
                break;
            }
            while let Some(p) =
                mqtt::decode(&mut buf, Some(Protocol::V311), u32::MAX).expect("decode")
            {
                if matches!(p, Packet::PubAck(_)) {
                    acked += 1;
                }
            }
        }
        acked
    });
    let mut out = BytesMut::with_capacity(1 << 20);
    for i in 0..n {
        // MQTT 3.1.1 brokers keep no state for inbound QoS 1, so identifiers may repeat while in flight.
        let pid = (i % 65_000 + 1) as u16;
        mqtt::encode_publish(
            &Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: Arc::from(format!("{prefix}gw/dev{}/v", i % topics)),
                packet_id: pid,
                properties: Properties::default(),
                payload: payload(i, size),
            },
            Protocol::V311,
            &mut out,
        );
        if out.len() > 256 * 1024 {
            wr.write_all(&out).await.expect("publish");
            out.clear();
        }
    }
    wr.write_all(&out).await.expect("publish");
    reader.await.unwrap_or(0)
}

/// The upstream's own ceiling in this run: a pipelined publisher straight into it, same subscriber.
async fn run_ceiling(args: &Args, dir: &Path, up_port: u16) -> Report {
    let n = args.messages;
    let up = upstream(dir, "upstream-direct", up_port, args).await;
    let sub = subscriber(up_port, "direct/#", args).await;
    let t = Instant::now();
    let _acked = publish_all(up_port, n, args.topics, args.payload, "direct/").await;
    let t_acked = t.elapsed().as_secs_f64();
    let seen = wait_sub(sub, Duration::from_secs(args.idle_secs), n).await;
    let drain = match seen.last {
        Some(b) => b.duration_since(t).as_secs_f64().max(1e-3),
        None => f64::NAN,
    };
    up.stop().await;
    Report {
        name: "direct (ceiling)",
        drain_secs: drain,
        rate: seen.distinct as f64 / drain,
        cpu_secs: f64::NAN,
        up_cpu_secs: f64::NAN,
        up_switches: (0, 0),
        ipis: String::new(),
        seen,
        n,
        rss_mib: 0.0,
        note: format!("a pipelined publisher straight into the upstream (acked in {t_acked:.2}s): what this mosquitto can take here"),
    }
}

fn broker_config() -> BrokerConfig {
    BrokerConfig {
        listeners: vec![],
        max_connections: 10,
        max_packet_size: 1 << 20,
        receive_maximum: 100,
        max_queued_messages: 1000,
        max_session_expiry: Duration::from_secs(86400),
        topic_alias_maximum: 0,
        max_keepalive: None,
        allow_anonymous: true,
        users: vec![],
        acl: vec![],
        client_id_binding: Default::default(),
        sys_interval: Duration::ZERO,
        limits: Default::default(),
    }
}

fn print(r: &Report) {
    let lost = r.n - r.seen.distinct;
    println!(
        "{:<18} drained {:>8} msgs in {:>7.2}s = {:>9.0} msg/s | edge CPU {:>5.2}s = {:>5.2} µs/msg | upstream CPU {:>5.2} µs/msg, {:>5.3} sleeps and {:>5.3} preemptions/msg | IPIs/msg {} | received {:>8}, lost {:>7}, duplicates {:>6}, out of order {:>5} | peak RSS {:>6.0} MiB | {}",
        r.name, r.n, r.drain_secs, r.rate, r.cpu_secs, r.cpu_secs * 1e6 / r.n as f64, r.up_cpu_secs * 1e6 / r.n as f64, r.up_switches.0 as f64 / r.n as f64, r.up_switches.1 as f64 / r.n as f64, r.ipis, r.seen.distinct, lost, r.seen.duplicates, r.seen.out_of_order, r.rss_mib, r.note
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let dir: PathBuf = tempfile::tempdir().expect("tempdir").keep();
    let up_port = free_port();
    let link_port = match args.link_delay_ms {
        0 => up_port,
        ms => delay_link(up_port, Duration::from_millis(ms)),
    };
    println!(
        "backlog drain: {} messages of {} bytes, QoS 1, {} topics, {} round(s); upstream {} on 127.0.0.1:{up_port}, link delay {} ms each way",
        args.messages, args.payload, args.topics, args.rounds, args.upstream_broker, args.link_delay_ms
    );
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        if args.skip_mosquitto {
            print(&run_fieldbridge(&args, &dir, up_port, link_port).await);
            let _ = std::fs::remove_file(dir.join("bench.db"));
            continue;
        }
        if args.skip_fieldbridge {
            print(&run_mosquitto_bridge(&args, &dir, up_port, link_port).await);
            continue;
        }
        // Alternate which half goes first, so a change in the machine's load during a round does not always
        // favour the same side.
        let (fb, mq) = if round % 2 == 1 {
            let fb = run_fieldbridge(&args, &dir, up_port, link_port).await;
            (
                fb,
                run_mosquitto_bridge(&args, &dir, up_port, link_port).await,
            )
        } else {
            let mq = run_mosquitto_bridge(&args, &dir, up_port, link_port).await;
            (run_fieldbridge(&args, &dir, up_port, link_port).await, mq)
        };
        for f in ["bench.db", "bench.db-wal", "bench.db-shm"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        println!("--- round {round}");
        print(&fb);
        print(&mq);
        if mq.rate.is_finite() && mq.rate > 0.0 {
            let r = fb.rate / mq.rate;
            println!("ratio (fieldbridge / mosquitto bridge): {r:.2}");
            ratios.push(r);
        }
    }
    if args.ceiling {
        print(&run_ceiling(&args, &dir, up_port).await);
    }
    if !ratios.is_empty() {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 0 {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        println!("ratios: {} | median {median:.2}", list.join(", "));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
