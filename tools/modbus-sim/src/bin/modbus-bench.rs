//! `modbus-bench`: polls N simulated Modbus TCP devices x R registers through the real adapter (factory,
//! shared lines, poller, decoder) and reports the adapter process's CPU, RSS and the request and reading
//! rates. The simulator runs in its own process (`modbus-sim`, started from the same directory), so the CPU
//! figure is the adapter's alone. Readings go to a counting sink: the pipeline, broker and store are not part
//! of this measurement.
//!
//! ```text
//! cargo build --release -p fieldbridge-modbus-sim
//! target/release/modbus-bench --devices 500 --registers 30 --interval 1s --duration 60s
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use fieldbridge_modbus::ModbusFactory;
use fieldbridge_sdk::testkit::device_config_from_yaml;
use fieldbridge_sdk::{
    AdapterContext, AdapterFactory, DeviceStatus, Quality, ReadingSink, StatusHandle,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark: N Modbus TCP devices x R registers polled through the fieldbridge adapter"
)]
struct Args {
    /// Devices (one simulator port each).
    #[arg(long, default_value_t = 500)]
    devices: u16,
    /// Registers per device (u16 points, contiguous: one request per device per poll).
    #[arg(long, default_value_t = 30)]
    registers: u16,
    /// Poll interval.
    #[arg(long, default_value = "1s")]
    interval: String,
    /// Measurement duration (after a warm-up of one full round).
    #[arg(long, default_value = "60s")]
    duration: String,
    /// First simulator port.
    #[arg(long, default_value_t = 15020)]
    base_port: u16,
    /// Simulator worker threads.
    #[arg(long, default_value_t = 1)]
    sim_threads: usize,
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(") ").context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let interval =
        fieldbridge_sdk::config::parse_duration(&args.interval).map_err(anyhow::Error::msg)?;
    let duration =
        fieldbridge_sdk::config::parse_duration(&args.duration).map_err(anyhow::Error::msg)?;
    let sim_path: PathBuf = std::env::current_exe()?.with_file_name("modbus-sim");
    let mut sim = Command::new(&sim_path)
        .args(["--base-port", &args.base_port.to_string()])
        .args(["--ports", &args.devices.to_string()])
        .args(["--registers", &args.registers.to_string()])
        .args(["--threads", &args.sim_threads.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", sim_path.display()))?;
    let mut sim_in = sim.stdin.take().context("sim stdin")?;
    let mut sim_out = BufReader::new(sim.stdout.take().context("sim stdout")?).lines();
    match tokio::time::timeout(Duration::from_secs(30), sim_out.next_line()).await {
        Ok(Ok(Some(l))) if l == "READY" => {}
        other => bail!("the simulator did not start: {other:?}"),
    }
    let mut sim_requests = async || -> anyhow::Result<u64> {
        sim_in.write_all(b"count\n").await?;
        let line = tokio::time::timeout(Duration::from_secs(10), sim_out.next_line())
            .await??
            .context("sim closed")?;
        Ok(line
            .strip_prefix("REQUESTS ")
            .context("sim answer")?
            .parse()?)
    };

    let factory = ModbusFactory::new();
    let (tx, mut rx) = mpsc::channel::<fieldbridge_sdk::Reading>(8192);
    let good = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    {
        let (good, bad) = (good.clone(), bad.clone());
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                if r.quality == Quality::Good {
                    good.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let cancel = CancellationToken::new();
    let mut statuses = Vec::new();
    let mut command_senders = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..args.devices {
        let mut yaml = format!(
            "name: dev{i}\nprotocol: modbus\npoll_interval: {}ms\ntimeout: 1s\nconnection:\n  tcp: \"127.0.0.1:{}\"\npoints:\n",
            interval.as_millis(),
            args.base_port + i
        );
        for r in 0..args.registers {
            yaml.push_str(&format!(
                "  - {{name: r{r}, address: {}}}\n",
                40001 + u32::from(r)
            ));
        }
        let cfg = device_config_from_yaml(&yaml);
        let adapter = factory.build(&cfg).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (status, status_rx) = StatusHandle::new();
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let ctx = AdapterContext {
            device: cfg.name.clone(),
            output: ReadingSink::new(tx.clone()),
            status,
            commands: cmd_rx,
            cancel: cancel.child_token(),
        };
        statuses.push(status_rx);
        command_senders.push(cmd_tx);
        tasks.push(tokio::spawn(adapter.run(ctx)));
    }
    drop(tx);

    // Warm-up: every device answered once (connections open, buffers sized).
    let round = u64::from(args.devices) * u64::from(args.registers);
    let warm = Instant::now();
    while good.load(Ordering::Relaxed) < round {
        if warm.elapsed() > Duration::from_secs(30) {
            bail!(
                "warm-up: only {} of {round} readings in 30 s",
                good.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tck = clk_tck();
    let (cpu0, t0, good0, bad0, req0) = (
        cpu_ticks()?,
        Instant::now(),
        good.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        sim_requests().await?,
    );
    tokio::time::sleep(duration).await;
    let (cpu1, t1, good1, bad1, req1) = (
        cpu_ticks()?,
        Instant::now(),
        good.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        sim_requests().await?,
    );

    let wall = (t1 - t0).as_secs_f64();
    let cpu_pct = (cpu1 - cpu0) as f64 / tck as f64 / wall * 100.0;
    let readings = good1 - good0;
    let expected = round as f64 * wall / interval.as_secs_f64();
    let online = statuses
        .iter()
        .filter(|s| *s.borrow() == DeviceStatus::Online)
        .count();
    println!("devices            {}", args.devices);
    println!("registers/device   {}", args.registers);
    println!("interval           {interval:?}");
    println!("measured           {wall:.1} s");
    println!("cpu (one core)     {cpu_pct:.2} %");
    println!(
        "rss                {:.1} MiB (peak {:.1} MiB)",
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
    println!("requests/s         {:.1}", (req1 - req0) as f64 / wall);
    println!(
        "readings/s         {:.1} (expected {:.1}, {:.2} %)",
        readings as f64 / wall,
        expected / wall,
        readings as f64 / expected * 100.0
    );
    println!("bad readings       {}", bad1 - bad0);
    println!("devices online     {online}/{}", args.devices);

    cancel.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    drop(command_senders);
    drop(sim_in);
    let _ = sim.kill().await;
    Ok(())
}
