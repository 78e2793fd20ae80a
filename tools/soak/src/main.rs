//! `soak`: the daemon under field load for minutes to hours, sampled for CPU, memory and growth.
//!
//! Starts, on loopback ports picked at run time:
//! - `modbus-sim` with N devices (one TCP port each) x P holding registers whose values change every second;
//! - a mosquitto as the upstream "cloud", with a counting subscriber on `{gateway}/#`;
//! - the `fieldbridge` daemon with a generated configuration: the N devices polled every `--interval`, every
//!   register a point published on every poll, logged in the store, and forwarded upstream by a bridge.
//!
//! Every `--sample` it reads the daemon's CPU time (`/proc/PID/stat` utime + stime over wall time), RSS and
//! anonymous memory (`/proc/PID/status`, `smaps_rollup`), the store's and the log's sizes, the messages counted
//! upstream and the daemon's metrics (readings, bridge lag, store drops); prints a table row; at the end prints
//! the least-squares growth after `--warmup` and writes every sample to `--csv`. Ctrl-C ends the run early with
//! the same summary. Every child is stopped on exit (the daemon with SIGTERM, as systemd would).
//!
//! ```text
//! cargo build --release -p fieldbridge -p fieldbridge-modbus-sim -p fieldbridge-soak
//! target/release/soak --devices 500 --duration 1h --warmup 10m --csv soak.csv
//! ```
#![forbid(unsafe_code)]

mod counter;
mod procfs;
mod report;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use report::{Sample, Summary};

#[derive(Parser, Debug)]
#[command(
    about = "Soak benchmark: the fieldbridge daemon polling, publishing, logging and bridging N simulated Modbus devices"
)]
struct Args {
    /// Simulated Modbus TCP devices (one port each).
    #[arg(long, default_value_t = 500)]
    devices: u32,
    /// Holding registers (points) per device, read in one request.
    #[arg(long, default_value_t = 30)]
    points: u16,
    /// Poll interval of every device.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long the daemon runs (measured from its start).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Samples before this are left out of the growth slope and the after-warm-up figures.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Time between samples.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Write every sample (and the summary as `#` lines) to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The daemon binary. Default: `fieldbridge` next to this program.
    #[arg(long)]
    fieldbridge_bin: Option<PathBuf>,
    /// The simulator binary. Default: `modbus-sim` next to this program.
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// Simulator worker threads.
    #[arg(long, default_value_t = 1)]
    sim_threads: usize,
    /// An environment variable for the daemon, `NAME=VALUE` (repeatable), e.g. `MALLOC_ARENA_MAX=2`.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    envs: Vec<String>,
    /// A command the daemon is started under, split at spaces, e.g. `heaptrack -o /tmp/fb`: the samples are
    /// taken from the `fieldbridge` process below it.
    #[arg(long)]
    wrap: Option<String>,
    /// `storage.max_bytes` of the daemon's log.
    #[arg(long, default_value = "1GiB")]
    max_bytes: String,
    /// A line of YAML appended to the `storage:` section (repeatable), e.g. `cache_size: 2MiB`.
    #[arg(long = "storage", value_name = "KEY: VALUE")]
    storage_extra: Vec<String>,
    /// Work in this directory (config, database, logs) and keep it. Default: a temporary directory, removed.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const GATEWAY: &str = "soak";
/// Devices per generated device-map file (a map per cabinet, as an integrator would write them).
const DEVICES_PER_MAP: u32 = 100;

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(name))
}

/// A free loopback port (released again at once: a small race with other programs, acceptable for a
/// benchmark; the start fails loudly if it is lost).
fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` consecutive free ports below the ephemeral range (outgoing connections never take them).
fn free_port_block(n: u32) -> anyhow::Result<u16> {
    let span = 32_000u32
        .checked_sub(n + 10_000)
        .context("too many devices for one port block")?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    for attempt in 0..20u32 {
        let base = 10_000 + (seed.wrapping_add(attempt.wrapping_mul(7919)) % span);
        let all_free = (base..base + n).all(|p| StdListener::bind(("127.0.0.1", p as u16)).is_ok());
        if all_free {
            return Ok(base as u16);
        }
    }
    bail!("no block of {n} free ports found in 20 attempts")
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

async fn wait_listening(port: u16, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if TcpStream::connect(addr(port)).await.is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited ({st}) before listening on {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on {port} within 60 s")
}

/// The daemon's configuration: main file + one device map per [`DEVICES_PER_MAP`] devices.
fn write_config(dir: &Path, args: &Args, ports: &Ports) -> anyhow::Result<PathBuf> {
    let maps = dir.join("devices");
    std::fs::create_dir_all(&maps)?;
    let mut points = String::new();
    for r in 0..args.points {
        let _ = writeln!(
            points,
            "      - {{name: r{r}, address: {}}}",
            40001 + u32::from(r)
        );
    }
    let interval_ms = args.interval.as_millis();
    for chunk in 0..args.devices.div_ceil(DEVICES_PER_MAP) {
        let mut y = String::from("devices:\n");
        for i in chunk * DEVICES_PER_MAP..((chunk + 1) * DEVICES_PER_MAP).min(args.devices) {
            let _ = write!(
                y,
                "  - name: dev{i}\n    protocol: modbus\n    poll_interval: {interval_ms}ms\n    timeout: 1s\n    connection: {{tcp: \"127.0.0.1:{}\"}}\n    points:\n{points}",
                u32::from(ports.modbus_base) + i
            );
        }
        std::fs::write(maps.join(format!("cabinet-{chunk:03}.yaml")), y)?;
    }
    let mut storage_extra = String::new();
    for l in &args.storage_extra {
        let _ = writeln!(storage_extra, "  {l}");
    }
    let main = format!(
        "gateway:\n  id: {GATEWAY}\nbroker:\n  listeners:\n    - bind: 127.0.0.1:{broker}\napi:\n  bind: 127.0.0.1:{api}\n\
         storage:\n  path: ./soak.db\n  max_bytes: {max_bytes}\n{storage_extra}logging:\n  level: info\n\
         bridges:\n  - name: cloud\n    url: mqtt://127.0.0.1:{up}\n    forward: [\"{{gateway}}/#\"]\n\
         device_maps:\n  - devices/*.yaml\n",
        broker = ports.broker,
        api = ports.api,
        up = ports.upstream,
        max_bytes = args.max_bytes,
    );
    let path = dir.join("soak.yaml");
    std::fs::write(&path, main)?;
    Ok(path)
}

struct Ports {
    modbus_base: u16,
    broker: u16,
    api: u16,
    upstream: u16,
}

/// `GET /metrics` from the daemon's API (bounded: 8 MiB, 5 s) -> sums of the series we follow.
#[derive(Debug, Default, Clone, Copy)]
struct Metrics {
    readings: u64,
    lag_rows: u64,
    store_dropped: u64,
}

async fn scrape(api: u16) -> anyhow::Result<Metrics> {
    let fetch = async {
        let mut s = TcpStream::connect(addr(api)).await?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{api}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut body = Vec::new();
        (&mut s).take(8 << 20).read_to_end(&mut body).await?;
        anyhow::Ok(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("metrics: timeout")??;
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("metrics: {}", text.lines().next().unwrap_or(""));
    }
    let mut m = Metrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        let v = value.parse::<f64>().unwrap_or(0.0) as u64;
        match name {
            "fieldbridge_pipeline_readings_total" => m.readings += v,
            "fieldbridge_bridge_lag_rows" => m.lag_rows += v,
            "fieldbridge_store_dropped_total" => m.store_dropped += v,
            _ => {}
        }
    }
    Ok(m)
}

/// The processes of one run; each is stopped when this is dropped (kill_on_drop), the daemon first with
/// SIGTERM by [`Run::stop`].
struct Run {
    sim: Child,
    sim_in: Option<tokio::process::ChildStdin>,
    upstream: Child,
    daemon: Child,
    daemon_pid: u32,
}

impl Run {
    /// SIGTERM to the daemon and up to 20 s for it to stop (its grace period is 10 s); then the peers.
    async fn stop(mut self) -> String {
        let mut note = String::new();
        let t = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.daemon_pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(20), self.daemon.wait()).await {
            Ok(Ok(st)) => {
                let _ = write!(
                    note,
                    "daemon stopped on SIGTERM in {:.2} s ({st})",
                    t.elapsed().as_secs_f64()
                );
            }
            _ => {
                let _ = self.daemon.kill().await;
                note.push_str("daemon did not stop within 20 s of SIGTERM: killed");
            }
        }
        drop(self.sim_in.take());
        if tokio::time::timeout(Duration::from_secs(5), self.sim.wait())
            .await
            .is_err()
        {
            let _ = self.sim.kill().await;
        }
        let _ = self.upstream.kill().await;
        note
    }
}

async fn start(args: &Args, dir: &Path, ports: &Ports) -> anyhow::Result<Run> {
    let sim_bin = match &args.sim_bin {
        Some(p) => p.clone(),
        None => sibling("modbus-sim")?,
    };
    let mut sim = Command::new(&sim_bin)
        .args(["--base-port", &ports.modbus_base.to_string()])
        .args(["--ports", &args.devices.to_string()])
        .args(["--registers", &args.points.to_string()])
        .args(["--threads", &args.sim_threads.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("sim.log"))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "start {} (cargo build --release -p fieldbridge-modbus-sim)",
                sim_bin.display()
            )
        })?;
    let sim_in = sim.stdin.take();
    let mut sim_out = BufReader::new(sim.stdout.take().context("sim stdout")?).lines();
    match tokio::time::timeout(Duration::from_secs(60), sim_out.next_line()).await {
        Ok(Ok(Some(l))) if l == "READY" => {}
        other => bail!(
            "the simulator did not start: {other:?} (see {}/sim.log)",
            dir.display()
        ),
    }
    // Keep reading the simulator's stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = sim_out.next_line().await {} });

    let conf = dir.join("upstream.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            ports.upstream
        ),
    )?;
    let mut upstream = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("upstream.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("mosquitto is needed as the upstream: apt-get install mosquitto")?;
    wait_listening(ports.upstream, "mosquitto", &mut upstream).await?;

    let config = write_config(dir, args, ports)?;
    let bin = match &args.fieldbridge_bin {
        Some(p) => p.clone(),
        None => sibling("fieldbridge")?,
    };
    let mut words: Vec<String> = args
        .wrap
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    words.push(bin.display().to_string());
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..])
        .arg("run")
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("daemon.out"))?)
        .stderr(std::fs::File::create(dir.join("daemon.log"))?)
        .kill_on_drop(true);
    for e in &args.envs {
        let (k, v) = e
            .split_once('=')
            .with_context(|| format!("--env {e}: NAME=VALUE"))?;
        cmd.env(k, v);
    }
    let mut daemon = cmd.spawn().with_context(|| format!("start {}", words[0]))?;
    let child_pid = daemon.id().context("daemon pid")?;
    let daemon_pid = if args.wrap.is_some() {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(p) = procfs::find_descendant(child_pid, &bin) {
                break p;
            }
            if Instant::now() > until {
                bail!("no {} process under the wrapper after 30 s", bin.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        child_pid
    };
    wait_listening(ports.api, "the daemon's API", &mut daemon)
        .await
        .with_context(|| format!("see {}/daemon.log", dir.display()))?;
    Ok(Run {
        sim,
        sim_in,
        upstream,
        daemon,
        daemon_pid,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.devices == 0 || args.points == 0 || args.sample.is_zero() || args.interval.is_zero() {
        bail!("--devices, --points, --sample and --interval must be above 0");
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("soak-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let ports = Ports {
        modbus_base: free_port_block(args.devices)?,
        broker: free_port()?,
        api: free_port()?,
        upstream: free_port()?,
    };
    let mut csv = match &args.csv {
        Some(p) => {
            let mut f =
                std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
            use std::io::Write as _;
            writeln!(f, "{}", Sample::CSV_HEADER)?;
            Some(f)
        }
        None => None,
    };
    println!(
        "soak: {} devices x {} points every {:?}, {:?} (warm-up {:?}, sample every {:?}); work dir {}",
        args.devices,
        args.points,
        args.interval,
        args.duration,
        args.warmup,
        args.sample,
        dir.display()
    );
    let started = Instant::now();
    let run = start(&args, &dir, &ports).await?;
    let pid = run.daemon_pid;
    println!(
        "daemon pid {pid}; modbus ports {}..{}, broker {}, api {}, upstream mosquitto {}",
        ports.modbus_base,
        u32::from(ports.modbus_base) + args.devices - 1,
        ports.broker,
        ports.api,
        ports.upstream
    );

    let count = Arc::new(AtomicU64::new(0));
    let counter = {
        let count = count.clone();
        let filter = format!("{GATEWAY}/#");
        let up = addr(ports.upstream);
        tokio::spawn(async move {
            if let Err(e) = counter::run(up, &filter, count).await {
                eprintln!("upstream counter stopped: {e:#}");
            }
        })
    };

    let db = dir.join("soak.db");
    let wal = dir.join("soak.db-wal");
    let log = dir.join("daemon.log");
    let mut samples: Vec<Sample> = Vec::new();
    let (cpu0, machine0) = (
        procfs::cpu_secs(pid).unwrap_or(0.0),
        procfs::machine_busy_secs(),
    );
    let (mut prev_t, mut prev_cpu, mut prev_machine) =
        (started.elapsed().as_secs_f64(), cpu0, machine0);
    let (mut prev_up, mut prev_readings) = (0u64, 0u64);
    let warmup = args.warmup.as_secs_f64();
    let mut warm_mark: Option<(f64, f64)> = None;
    let mut warm_threads = None;
    println!("{}", Sample::TABLE_HEADER);
    let mut tick = tokio::time::interval(args.sample);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ended_early = None;
    while started.elapsed() < args.duration {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => { ended_early = Some("interrupted"); break; }
            _ = sigterm.recv() => { ended_early = Some("terminated"); break; }
        }
        let t = started.elapsed().as_secs_f64();
        let (Some(cpu), Some(mem)) = (procfs::cpu_secs(pid), procfs::mem(pid)) else {
            ended_early = Some("the daemon exited");
            break;
        };
        let machine = procfs::machine_busy_secs();
        let m = scrape(ports.api).await.unwrap_or_else(|e| {
            eprintln!("metrics: {e:#}");
            Metrics::default()
        });
        let up = count.load(Ordering::Relaxed);
        let dt = (t - prev_t).max(1e-9);
        let s = Sample {
            t,
            cpu_pct: (cpu - prev_cpu) / dt * 100.0,
            machine_cores: (machine - prev_machine) / dt,
            rss_kib: mem.rss,
            anon_kib: mem.anon,
            file_kib: mem.file,
            rollup_anon_kib: mem.rollup_anon,
            hwm_kib: mem.hwm,
            threads: mem.threads,
            upstream: up,
            upstream_rate: up.saturating_sub(prev_up) as f64 / dt,
            readings_rate: m.readings.saturating_sub(prev_readings) as f64 / dt,
            lag_rows: m.lag_rows,
            store_dropped: m.store_dropped,
            db_bytes: procfs::file_len(&db) + procfs::file_len(&wal),
            log_bytes: procfs::file_len(&log),
        };
        if warm_mark.is_none() && t >= warmup {
            warm_mark = Some((t, cpu));
            warm_threads = Some(procfs::threads(pid));
        }
        println!("{}", s.row());
        if let Some(f) = csv.as_mut() {
            use std::io::Write as _;
            writeln!(f, "{}", s.csv())?;
        }
        (prev_t, prev_cpu, prev_machine, prev_up, prev_readings) =
            (t, cpu, machine, up, m.readings);
        samples.push(s);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_end = procfs::cpu_secs(pid).unwrap_or(prev_cpu);
    let by_thread = match (&warm_mark, &warm_threads) {
        (Some((t, _)), Some(before)) if wall > *t => Some(report::thread_table(
            before,
            &procfs::threads(pid),
            wall - t,
        )),
        _ => None,
    };
    let summary = Summary {
        samples: &samples,
        warmup,
        devices: args.devices,
        points: u32::from(args.points),
        interval_s: args.interval.as_secs_f64(),
        daemon_cpu_s: cpu_end - cpu0,
        machine_busy_s: procfs::machine_busy_secs() - machine0,
        wall_s: wall,
        after_warmup_cpu_pct: warm_mark
            .filter(|(t, _)| wall > *t)
            .map(|(t, c)| (cpu_end - c) / (wall - t) * 100.0),
    }
    .render();
    counter.abort();
    let stop_note = run.stop().await;
    let mut text = summary;
    if let Some(table) = by_thread {
        text.push_str(&table);
    }
    if let Some(why) = ended_early {
        let _ = writeln!(text, "ended early: {why}");
    }
    let _ = writeln!(text, "{stop_note}");
    print!("\n{text}");
    if let Some(f) = csv.as_mut() {
        use std::io::Write as _;
        for l in text.lines() {
            writeln!(f, "# {l}")?;
        }
    }
    if let Some(p) = &args.csv {
        println!("csv: {}", p.display());
    }
    Ok(())
}
