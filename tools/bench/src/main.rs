//! fieldbridge-bench: a load generator on the project's MQTT codec and a side-by-side benchmark of the
//! embedded broker against Debian's mosquitto.
//!
//! `broker` starts each broker fresh for every measurement (a free loopback port, a generated config), runs the
//! same workload against each, and prints a comparison table (plain text, then Markdown for the README).
//! `load` runs one workload against a broker that is already running (for profiling it under `perf`).
//!
//! Not part of the test suite: nothing here asserts a duration; the numbers are the output.
#![forbid(unsafe_code)]

mod brokers;
mod client;
mod report;
mod sysload;
mod workloads;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fieldbridge::mqtt::QoS;

use brokers::{Flavor, Running, Setup};
use report::{fmt_ratio, median, mib, ratio, thousands, Better, Row, Sample};
use sysload::{CpuMark, CpuSplit};
use workloads::{LatencySpec, ThroughputResult, ThroughputSpec};

#[derive(Parser)]
#[command(
    name = "fieldbridge-bench",
    about = "Load generator and fieldbridge-vs-mosquitto broker benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start mosquitto and fieldbridge on free loopback ports, run every workload against each, print the table.
    Broker(BrokerArgs),
    /// Run one workload against a broker that is already listening (for profiling).
    Load(LoadArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// QoS 0, 1 publisher -> 1 subscriber.
    #[value(name = "qos0-1to1")]
    Qos0One,
    /// QoS 0, 10 publishers -> 1 subscriber.
    #[value(name = "qos0-10to1")]
    Qos0Ten,
    /// QoS 0, 10 publishers -> 1 subscriber, both brokers with their default limits.
    #[value(name = "qos0-10to1-defaults")]
    Qos0TenDefaults,
    /// QoS 1, 1 publisher -> 1 subscriber (mosquitto with unlimited queues).
    #[value(name = "qos1-1to1")]
    Qos1One,
    /// QoS 1, 10 publishers -> 1 subscriber (mosquitto with unlimited queues).
    #[value(name = "qos1-10to1")]
    Qos1Ten,
    /// QoS 1, 10 publishers -> 1 subscriber, mosquitto with Debian's default limits.
    #[value(name = "qos1-10to1-defaults")]
    Qos1TenDefaults,
    /// Latency p50/p99 at a fixed rate, QoS 0, 1 -> 1 (mosquitto unlimited with set_tcp_nodelay true).
    Latency,
    /// The same latency run against mosquitto with Debian's defaults (Nagle on).
    #[value(name = "latency-defaults")]
    LatencyDefaults,
    /// RSS idle and with N idle subscribed connections.
    Rss,
}

const ALL: [Scenario; 9] = [
    Scenario::Qos0One,
    Scenario::Qos0Ten,
    Scenario::Qos0TenDefaults,
    Scenario::Qos1One,
    Scenario::Qos1Ten,
    Scenario::Qos1TenDefaults,
    Scenario::Latency,
    Scenario::LatencyDefaults,
    Scenario::Rss,
];

impl Scenario {
    fn throughput(self) -> Option<(usize, QoS)> {
        match self {
            Scenario::Qos0One => Some((1, QoS::AtMostOnce)),
            Scenario::Qos0Ten | Scenario::Qos0TenDefaults => Some((10, QoS::AtMostOnce)),
            Scenario::Qos1One => Some((1, QoS::AtLeastOnce)),
            Scenario::Qos1Ten | Scenario::Qos1TenDefaults => Some((10, QoS::AtLeastOnce)),
            Scenario::Latency | Scenario::LatencyDefaults | Scenario::Rss => None,
        }
    }

    fn mosquitto(self) -> Flavor {
        match self {
            Scenario::Qos0TenDefaults | Scenario::Qos1TenDefaults | Scenario::LatencyDefaults => {
                Flavor::MosquittoDefaults
            }
            Scenario::Latency => Flavor::MosquittoLowLatency,
            _ => Flavor::MosquittoUnlimited,
        }
    }

    fn fieldbridge(self) -> Flavor {
        match self.mosquitto() {
            Flavor::MosquittoDefaults => Flavor::FieldbridgeDefaults,
            _ => Flavor::FieldbridgeUnlimited,
        }
    }

    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

#[derive(Args, Debug, Clone)]
struct Workload {
    /// Messages per throughput run, over all publishers.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload size in bytes (at least 20: publisher id, sequence number, timestamp).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// QoS 1 in-flight window per publisher (fieldbridge's default Receive Maximum is 100).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Stop waiting for deliveries once the publishers are done and nothing arrived for this many seconds.
    #[arg(long, default_value_t = 3.0)]
    drain_secs: f64,
    /// Hard limit on one throughput run, in seconds.
    #[arg(long, default_value_t = 180)]
    deadline_secs: u64,
    /// Latency run: messages per second.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Latency run: measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10.0)]
    latency_secs: f64,
    /// Throughput runs: the subscriber holds back its PUBACKs for the first N ms (a slow consumer; 0 for the
    /// benchmark).
    #[arg(long, default_value_t = 0)]
    ack_hold_ms: u64,
    /// Idle subscribed connections for the RSS measurement.
    #[arg(long, default_value_t = 5000)]
    conns: usize,
}

#[derive(Args, Debug)]
struct BrokerArgs {
    #[command(flatten)]
    workload: Workload,
    /// Repetitions of every measurement; the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scenarios to run (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// The mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto_bin: PathBuf,
    /// The fieldbridge binary; by default the bench builds it (`cargo build --release -p fieldbridge`) and uses
    /// target/release/fieldbridge.
    #[arg(long)]
    fieldbridge_bin: Option<PathBuf>,
    /// Before each measurement, wait up to this long for other processes to go quiet (see --quiet-cpus).
    #[arg(long, default_value_t = 20)]
    quiet_wait_secs: u64,
    /// "Quiet": other processes keep fewer than this many CPUs busy (measured over 1 s).
    #[arg(long, default_value_t = 0.25)]
    quiet_cpus: f64,
    /// Keep the scratch directory (generated configs, broker logs) and print its path.
    #[arg(long)]
    keep: bool,
}

#[derive(Args, Debug)]
struct LoadArgs {
    #[command(flatten)]
    workload: Workload,
    /// The broker to load.
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// The workload (rss here only opens the idle connections and holds them for --hold-secs).
    #[arg(long)]
    scenario: Scenario,
    /// Repetitions.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// The broker's pid, to report its CPU time.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// rss: how long to hold the idle connections open.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: the load generator is a debug build; use `cargo run --release -p fieldbridge-bench`");
    }
    match cli.cmd {
        Cmd::Broker(args) => {
            let fieldbridge_bin = match &args.fieldbridge_bin {
                Some(p) => p.clone(),
                None => build_fieldbridge()?,
            };
            raise_nofile(args.workload.conns as u64 + 1024)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(broker_cmd(args, fieldbridge_bin))
        }
        Cmd::Load(args) => {
            raise_nofile(args.workload.conns as u64 + 1024)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(load_cmd(args))
        }
    }
}

/// Builds the daemon in release mode (the bench depends on the library only, so `cargo run -p
/// fieldbridge-bench` alone would not build the binary) and returns its path.
fn build_fieldbridge() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building fieldbridge (cargo build --release -p fieldbridge --bin fieldbridge)...");
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "fieldbridge",
            "--bin",
            "fieldbridge",
        ])
        .current_dir(&root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building fieldbridge failed ({status})");
    }
    // This executable lives in <target>/<profile>/; the daemon in <target>/release/.
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?;
    let bin = target.join("release").join("fieldbridge");
    if !bin.exists() {
        bail!(
            "{} not found after the build; pass --fieldbridge-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// 5000 connections need more descriptors than the usual soft limit of 1024: raise it up to the hard limit.
fn raise_nofile(want: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(());
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard)?;
    if new < want {
        eprintln!("warning: RLIMIT_NOFILE hard limit is {hard}, {want} wanted; the connection count may fail");
    }
    Ok(())
}

fn throughput_spec(w: &Workload, publishers: usize, qos: QoS) -> ThroughputSpec {
    ThroughputSpec {
        publishers,
        qos,
        messages: w.messages,
        payload: w.payload,
        window: w.window,
        drain_idle: Duration::from_secs_f64(w.drain_secs),
        deadline: Duration::from_secs(w.deadline_secs),
        ack_hold: Duration::from_millis(w.ack_hold_ms),
    }
}

fn latency_spec(w: &Workload) -> LatencySpec {
    LatencySpec {
        rate: w.latency_rate,
        duration: Duration::from_secs_f64(w.latency_secs),
        warmup: Duration::from_secs(1),
        payload: w.payload,
    }
}

/// Time a fresh broker gets to settle before its RSS is read, and after the idle connections are up.
const SETTLE: Duration = Duration::from_secs(2);

/// Runs one scenario against one freshly started broker.
async fn measure(
    flavor: Flavor,
    setup: &Setup,
    scenario: Scenario,
    w: &Workload,
    tag: &str,
) -> Result<Sample> {
    let mut broker = Running::start(flavor, setup, tag).await?;
    let result = measure_on(&mut broker, scenario, w).await;
    let alive = broker.check_alive();
    let log = broker.log_tail();
    broker.stop().await?;
    match (result, alive) {
        (Ok(s), Ok(())) => Ok(s),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), _) => Err(e.context(log)),
    }
}

async fn measure_on(broker: &mut Running, scenario: Scenario, w: &Workload) -> Result<Sample> {
    let mark = CpuMark::now(broker.pid);
    if let Some((publishers, qos)) = scenario.throughput() {
        let spec = throughput_spec(w, publishers, qos);
        let result = workloads::throughput(broker.addr, spec).await?;
        return Ok(Sample::Throughput {
            result,
            cpu: mark.split(),
        });
    }
    match scenario {
        Scenario::Latency | Scenario::LatencyDefaults => {
            let result = workloads::latency(broker.addr, latency_spec(w)).await?;
            Ok(Sample::Latency {
                result,
                cpu: mark.split(),
            })
        }
        Scenario::Rss => {
            tokio::time::sleep(SETTLE).await;
            let idle_kib = broker.rss_kib()?;
            let idle_anon_kib = broker.anon_kib()?;
            let conns = workloads::idle_connections(broker.addr, w.conns, 50).await?;
            tokio::time::sleep(SETTLE).await;
            broker.check_alive()?;
            let conns_kib = broker.rss_kib()?;
            let conns_anon_kib = broker.anon_kib()?;
            let n = conns.len();
            drop(conns);
            Ok(Sample::Memory {
                idle_kib,
                conns_kib,
                idle_anon_kib,
                conns_anon_kib,
                conns: n,
                cpu: mark.split(),
            })
        }
        Scenario::Qos0One
        | Scenario::Qos0Ten
        | Scenario::Qos0TenDefaults
        | Scenario::Qos1One
        | Scenario::Qos1Ten
        | Scenario::Qos1TenDefaults => unreachable!("throughput scenarios are handled above"),
    }
}

fn describe_cpu(c: &CpuSplit) -> String {
    format!(
        "CPU: broker {:.2}s, load generator {:.2}s, other processes {:.2}s (avg {:.2} CPUs busy elsewhere) over {:.1}s",
        c.broker_secs,
        c.bench_secs,
        c.other_secs,
        c.other_cores(),
        c.wall_secs
    )
}

fn describe(s: &Sample) -> String {
    match s {
        Sample::Throughput { result: r, cpu } => format!(
            "{} msg/s, delivered {}/{} (dup {}, reordered {}), {:.2}s to last delivery, publishers done at \
             {:.2}s, end: {}; broker {:.2} CPU-s per 1M sent; {}",
            thousands(r.rate),
            r.delivered,
            r.sent,
            r.duplicates,
            r.reordered,
            r.elapsed.as_secs_f64(),
            r.publish_elapsed.as_secs_f64(),
            r.end,
            if r.sent > 0 {
                cpu.broker_secs * 1e6 / r.sent as f64
            } else {
                0.0
            },
            describe_cpu(cpu)
        ),
        Sample::Latency { result: l, cpu } => format!(
            "p50 {:.0}us p90 {:.0}us p99 {:.0}us p99.9 {:.0}us max {:.0}us; {} samples, delivered {}/{}, \
             achieved {} msg/s; {}",
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            l.samples,
            l.delivered,
            l.sent,
            thousands(l.achieved_rate),
            describe_cpu(cpu)
        ),
        Sample::Memory {
            idle_kib,
            conns_kib,
            idle_anon_kib,
            conns_anon_kib,
            conns,
            cpu,
        } => format!(
            "RSS idle {} (anonymous {}), with {conns} subscribed connections {} (anonymous {}); {:.1} KiB RSS \
             per connection; {}",
            mib(*idle_kib as f64),
            mib(*idle_anon_kib as f64),
            mib(*conns_kib as f64),
            mib(*conns_anon_kib as f64),
            (*conns_kib as f64 - *idle_kib as f64) / (*conns).max(1) as f64,
            describe_cpu(cpu)
        ),
        Sample::Failed(e) => format!("FAILED: {e}"),
    }
}

/// Samples of one scenario, per broker side.
#[derive(Default)]
struct Collected {
    mosquitto: Vec<Sample>,
    fieldbridge: Vec<Sample>,
}

async fn broker_cmd(args: BrokerArgs, fieldbridge_bin: PathBuf) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let scenarios: Vec<Scenario> = if args.only.is_empty() {
        ALL.to_vec()
    } else {
        ALL.iter()
            .copied()
            .filter(|s| args.only.contains(s))
            .collect()
    };
    let scratch = tempfile::Builder::new()
        .prefix("fieldbridge-bench-")
        .tempdir()?;
    let setup = Setup {
        mosquitto_bin: args.mosquitto_bin.clone(),
        fieldbridge_bin: fieldbridge_bin.clone(),
        dir: scratch.path().to_path_buf(),
        nofile: args.workload.conns as u64 + 1024,
        max_connections: args.workload.conns + 100,
    };
    let env = environment(&setup);
    eprintln!("{env}");
    let started = Instant::now();

    let mut collected: Vec<(Scenario, Collected)> = Vec::new();
    for &scenario in &scenarios {
        let mut c = Collected::default();
        for run in 0..args.runs {
            // Alternate which broker goes first, so neither always gets the cooler machine.
            let order = if run % 2 == 0 {
                [scenario.mosquitto(), scenario.fieldbridge()]
            } else {
                [scenario.fieldbridge(), scenario.mosquitto()]
            };
            for flavor in order {
                let load =
                    sysload::wait_quiet(Duration::from_secs(args.quiet_wait_secs), args.quiet_cpus)
                        .await;
                if load >= args.quiet_cpus {
                    eprintln!(
                        "note: other processes keep {load:.2} CPUs busy; measuring anyway (see the CPU split)"
                    );
                }
                let tag = format!(
                    "{}-{}-{run}",
                    scenario.name(),
                    if flavor.is_mosquitto() { "mosq" } else { "fb" }
                );
                let sample = match measure(flavor, &setup, scenario, &args.workload, &tag).await {
                    Ok(s) => s,
                    Err(e) => Sample::Failed(format!("{e:#}")),
                };
                eprintln!(
                    "[{}] run {}/{} {flavor}: {}",
                    scenario.name(),
                    run + 1,
                    args.runs,
                    describe(&sample)
                );
                if flavor.is_mosquitto() {
                    c.mosquitto.push(sample);
                } else {
                    c.fieldbridge.push(sample);
                }
            }
        }
        collected.push((scenario, c));
    }

    let rows = table(&collected, &args.workload, args.runs);
    println!();
    println!("{env}");
    println!(
        "Every ratio is fieldbridge's advantage (>1 = fieldbridge better): fieldbridge/mosquitto for throughput, \
         mosquitto/fieldbridge for latency and RSS. Medians of {} run(s); delivered counts are the worst run.",
        args.runs
    );
    println!(
        "Configurations: mosquitto with max_inflight_messages 0, max_queued_messages 0, max_queued_bytes 0 (no \
         limits; plus set_tcp_nodelay true for the latency rows) vs fieldbridge with max_queued_messages \
         1000000000; rows marked \"defaults\" run both brokers as shipped (mosquitto: 20 in flight, 1000 queued, \
         Nagle on; fieldbridge: 10000 queued per session)."
    );
    println!();
    print!("{}", report::render_text(&rows));
    println!();
    println!("Per-run details:");
    for (scenario, c) in &collected {
        for (side, samples) in [("mosquitto", &c.mosquitto), ("fieldbridge", &c.fieldbridge)] {
            for (i, s) in samples.iter().enumerate() {
                println!(
                    "  {:<20} {side:<11} run {}: {}",
                    scenario.name(),
                    i + 1,
                    describe(s)
                );
            }
        }
    }
    println!();
    println!("Markdown:");
    println!();
    print!("{}", report::render_markdown(&rows));
    println!();
    println!("(total bench time {:.0}s)", started.elapsed().as_secs_f64());
    if args.keep {
        let kept = scratch.keep();
        println!("scratch directory kept: {}", kept.display());
    }
    Ok(())
}

fn environment(setup: &Setup) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fb_version = std::process::Command::new(&setup.fieldbridge_bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{} vs {fb_version}; {cpu}, {cores} CPU(s), Linux {}; load generator in the same machine (loopback)",
        brokers::mosquitto_version(&setup.mosquitto_bin),
        kernel.trim()
    )
}

fn throughputs(v: &[Sample]) -> Vec<&ThroughputResult> {
    v.iter()
        .filter_map(|s| match s {
            Sample::Throughput { result, .. } => Some(result),
            _ => None,
        })
        .collect()
}

fn failures(v: &[Sample]) -> usize {
    v.iter().filter(|s| matches!(s, Sample::Failed(_))).count()
}

/// "123,456 msg/s", or how many runs failed.
fn cell(value: Option<f64>, fmt: impl Fn(f64) -> String, samples: &[Sample]) -> String {
    let failed = failures(samples);
    match value {
        Some(v) if failed == 0 => fmt(v),
        Some(v) => format!("{} ({failed} run(s) failed)", fmt(v)),
        None if failed > 0 => "FAILED".into(),
        None => "n/a".into(),
    }
}

fn delivered_cell(samples: &[Sample]) -> String {
    let tps = throughputs(samples);
    let Some(worst) = tps.iter().min_by(|a, b| {
        let fa = a.delivered as f64 / a.sent.max(1) as f64;
        let fb = b.delivered as f64 / b.sent.max(1) as f64;
        fa.total_cmp(&fb)
    }) else {
        return if failures(samples) > 0 {
            "FAILED".into()
        } else {
            "n/a".into()
        };
    };
    let mut s = format!(
        "{}/{} ({:.1}%)",
        thousands(worst.delivered as f64),
        thousands(worst.sent as f64),
        100.0 * worst.delivered as f64 / worst.sent.max(1) as f64
    );
    let dups: u64 = tps.iter().map(|r| r.duplicates).sum();
    if dups > 0 {
        let _ = write!(s, ", {dups} dup");
    }
    s
}

fn all_delivered(samples: &[Sample]) -> bool {
    failures(samples) == 0
        && !samples.is_empty()
        && throughputs(samples).iter().all(|r| r.delivered == r.sent)
}

fn met(r: Option<f64>, min: f64, extra: bool) -> String {
    match r {
        Some(r) if r >= min && extra => "yes".into(),
        Some(_) => "NO".into(),
        None => "n/a".into(),
    }
}

fn table(collected: &[(Scenario, Collected)], w: &Workload, runs: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let _ = runs;
    for (scenario, c) in collected {
        if let Some((publishers, qos)) = scenario.throughput() {
            let m = median(throughputs(&c.mosquitto).iter().map(|r| r.rate).collect());
            let f = median(throughputs(&c.fieldbridge).iter().map(|r| r.rate).collect());
            let r = ratio(m, f, Better::Higher);
            let qos_n = qos as u8;
            let mosq_note = match scenario.mosquitto() {
                Flavor::MosquittoDefaults => ", both brokers at defaults",
                _ => "",
            };
            let (target, ok) = match scenario {
                Scenario::Qos0One | Scenario::Qos0Ten => (">= 2x".to_string(), met(r, 2.0, true)),
                Scenario::Qos1Ten => (
                    ">= 1.5x, all delivered".to_string(),
                    met(r, 1.5, all_delivered(&c.fieldbridge)),
                ),
                Scenario::Qos1TenDefaults => (
                    "fieldbridge: all delivered".to_string(),
                    if all_delivered(&c.fieldbridge) {
                        "yes"
                    } else {
                        "NO"
                    }
                    .to_string(),
                ),
                _ => ("-".to_string(), "-".to_string()),
            };
            rows.push(Row {
                metric: format!("QoS {qos_n} {publishers}->1 throughput{mosq_note} (msg/s)"),
                mosquitto: cell(m, thousands, &c.mosquitto),
                fieldbridge: cell(f, thousands, &c.fieldbridge),
                ratio: fmt_ratio(r),
                target,
                met: ok,
            });
            rows.push(Row {
                metric: format!("QoS {qos_n} {publishers}->1 delivered/sent{mosq_note}"),
                mosquitto: delivered_cell(&c.mosquitto),
                fieldbridge: delivered_cell(&c.fieldbridge),
                ratio: String::new(),
                target: String::new(),
                met: String::new(),
            });
            let per_m = |v: &[Sample]| {
                median(
                    v.iter()
                        .filter_map(|s| match s {
                            Sample::Throughput { result, cpu } if result.sent > 0 => {
                                Some(cpu.broker_secs * 1e6 / result.sent as f64)
                            }
                            _ => None,
                        })
                        .collect(),
                )
            };
            let (m, f) = (per_m(&c.mosquitto), per_m(&c.fieldbridge));
            rows.push(Row {
                metric: format!(
                    "QoS {qos_n} {publishers}->1 broker CPU-s per 1M messages sent{mosq_note}"
                ),
                mosquitto: cell(m, |v| format!("{v:.2}"), &c.mosquitto),
                fieldbridge: cell(f, |v| format!("{v:.2}"), &c.fieldbridge),
                ratio: fmt_ratio(ratio(m, f, Better::Lower)),
                target: "-".into(),
                met: "-".into(),
            });
            continue;
        }
        match scenario {
            Scenario::Latency | Scenario::LatencyDefaults => {
                let defaults = *scenario == Scenario::LatencyDefaults;
                let lats = |v: &[Sample]| -> Vec<workloads::LatencyResult> {
                    v.iter()
                        .filter_map(|s| match s {
                            Sample::Latency { result, .. } => Some(result.clone()),
                            _ => None,
                        })
                        .collect()
                };
                let (lm, lf) = (lats(&c.mosquitto), lats(&c.fieldbridge));
                for (name, get, target) in [
                    (
                        "p50",
                        (|l: &workloads::LatencyResult| l.p50_us)
                            as fn(&workloads::LatencyResult) -> f64,
                        None,
                    ),
                    ("p99", |l: &workloads::LatencyResult| l.p99_us, Some(1.0)),
                ] {
                    let m = median(lm.iter().map(get).collect());
                    let f = median(lf.iter().map(get).collect());
                    let r = ratio(m, f, Better::Lower);
                    rows.push(Row {
                        metric: format!(
                            "latency {name} at {} msg/s, QoS 0 1->1{} (us)",
                            thousands(w.latency_rate as f64),
                            if defaults {
                                ", both brokers at defaults"
                            } else {
                                ""
                            }
                        ),
                        mosquitto: cell(m, |v| format!("{v:.0}"), &c.mosquitto),
                        fieldbridge: cell(f, |v| format!("{v:.0}"), &c.fieldbridge),
                        ratio: fmt_ratio(r),
                        target: match target {
                            Some(_) if !defaults => "<= mosquitto".into(),
                            _ => "-".into(),
                        },
                        met: match target {
                            Some(t) if !defaults => met(r, t, true),
                            _ => "-".into(),
                        },
                    });
                }
            }
            Scenario::Rss => {
                #[derive(Clone, Copy)]
                enum Field {
                    Idle,
                    Conns,
                    IdleAnon,
                    ConnsAnon,
                }
                let mem = |v: &[Sample], field: Field| -> Option<f64> {
                    median(
                        v.iter()
                            .filter_map(|s| match s {
                                Sample::Memory {
                                    idle_kib,
                                    conns_kib,
                                    idle_anon_kib,
                                    conns_anon_kib,
                                    ..
                                } => Some(match field {
                                    Field::Idle => *idle_kib,
                                    Field::Conns => *conns_kib,
                                    Field::IdleAnon => *idle_anon_kib,
                                    Field::ConnsAnon => *conns_anon_kib,
                                } as f64),
                                _ => None,
                            })
                            .collect(),
                    )
                };
                let n = thousands(w.conns as f64);
                for (field, metric, target) in [
                    (
                        Field::Idle,
                        "RSS idle".to_string(),
                        Some(("<= mosquitto", 1.0)),
                    ),
                    (
                        Field::Conns,
                        format!("RSS with {n} idle subscribed connections"),
                        Some(("<= 2x mosquitto (ratio >= 0.5x)", 0.5)),
                    ),
                    (
                        Field::IdleAnon,
                        "anonymous memory idle (heap, stacks)".to_string(),
                        None,
                    ),
                    (
                        Field::ConnsAnon,
                        format!("anonymous memory with {n} idle subscribed connections"),
                        None,
                    ),
                ] {
                    let (m, f) = (mem(&c.mosquitto, field), mem(&c.fieldbridge, field));
                    let r = ratio(m, f, Better::Lower);
                    rows.push(Row {
                        metric,
                        mosquitto: cell(m, mib, &c.mosquitto),
                        fieldbridge: cell(f, mib, &c.fieldbridge),
                        ratio: fmt_ratio(r),
                        target: target.map_or("-".into(), |(t, _)| t.into()),
                        met: target.map_or("-".into(), |(_, min)| met(r, min, true)),
                    });
                }
            }
            _ => {}
        }
    }
    rows
}

async fn load_cmd(args: LoadArgs) -> Result<()> {
    for i in 0..args.repeat {
        let started = Instant::now();
        let mark = CpuMark::now(args.broker_pid.unwrap_or(0));
        let sample = if let Some((publishers, qos)) = args.scenario.throughput() {
            let spec = throughput_spec(&args.workload, publishers, qos);
            let result = workloads::throughput(args.addr, spec).await?;
            Sample::Throughput {
                result,
                cpu: mark.split(),
            }
        } else if matches!(args.scenario, Scenario::Latency | Scenario::LatencyDefaults) {
            let result = workloads::latency(args.addr, latency_spec(&args.workload)).await?;
            Sample::Latency {
                result,
                cpu: mark.split(),
            }
        } else {
            let conns = workloads::idle_connections(args.addr, args.workload.conns, 50).await?;
            println!(
                "{} idle subscribed connections open; holding them {}s",
                conns.len(),
                args.hold_secs
            );
            tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
            continue;
        };
        println!(
            "[{}] {}/{}: {} ({:.1}s)",
            args.scenario.name(),
            i + 1,
            args.repeat,
            describe(&sample),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
