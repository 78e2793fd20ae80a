//! `coap-bench`: the CoAP adapter under the load of issue 11: 1,000 observed resources (each notifying once a
//! second) and 1,000 confirmable ingest POSTs a second, through the real adapter (factory, client, observation
//! tasks, shared ingest listener, decoders), with readings going to a counting sink. The peer (`coap-peer`,
//! started from the same directory) runs in its own process, so the CPU figure is the adapter's alone.
//!
//! ```text
//! cargo build --release -p fieldbridge-coap-bench
//! target/release/coap-bench --observables 1000 --notify-interval 1s --ingest-rate 1000 --duration 30s
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use fieldbridge_coap::CoapFactory;
use fieldbridge_sdk::testkit::device_config_from_yaml;
use fieldbridge_sdk::{AdapterContext, AdapterFactory, Quality, ReadingSink, StatusHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark: N observed CoAP resources + an ingest load through the fieldbridge adapter"
)]
struct Args {
    /// Observed resources (one device, one point each).
    #[arg(long, default_value_t = 1000)]
    observables: usize,
    /// How often each resource notifies.
    #[arg(long, default_value = "1s")]
    notify_interval: String,
    /// Ingest POSTs per second.
    #[arg(long, default_value_t = 1000)]
    ingest_rate: u64,
    /// Measurement duration (after the warm-up: every resource registered).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Runtime worker threads of the adapter process.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// utime + stime of this process, in clock ticks (fields 14 and 15 of proc(5)).
fn cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(") ").context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
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

type PeerOut = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// The peer's counters: notifications, registrations, posts, acks.
async fn peer_stats(
    peer_in: &mut tokio::process::ChildStdin,
    peer_out: &mut PeerOut,
) -> anyhow::Result<[u64; 4]> {
    peer_in.write_all(b"count\n").await?;
    let line = tokio::time::timeout(Duration::from_secs(10), peer_out.next_line())
        .await??
        .context("peer closed")?;
    let mut out = [0u64; 4];
    let fields = line.strip_prefix("STATS ").context("peer answer")?;
    for (i, kv) in fields.split_whitespace().enumerate().take(4) {
        out[i] = kv.split_once('=').context("k=v")?.1.parse()?;
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let duration =
        fieldbridge_sdk::config::parse_duration(&args.duration).map_err(anyhow::Error::msg)?;
    let peer_path: PathBuf = std::env::current_exe()?.with_file_name("coap-peer");
    let mut peer = Command::new(&peer_path)
        .args(["--observables", &args.observables.to_string()])
        .args(["--notify-interval", &args.notify_interval])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", peer_path.display()))?;
    let mut peer_in = peer.stdin.take().context("peer stdin")?;
    let mut peer_out = BufReader::new(peer.stdout.take().context("peer stdout")?).lines();
    let port: u16 = match tokio::time::timeout(Duration::from_secs(30), peer_out.next_line()).await
    {
        Ok(Ok(Some(l))) if l.starts_with("READY ") => l[6..].trim().parse()?,
        other => bail!("the peer did not start: {other:?}"),
    };
    let factory = CoapFactory::new();
    let (tx, mut rx) = mpsc::channel::<fieldbridge_sdk::Reading>(8192);
    let observed = Arc::new(AtomicU64::new(0));
    let ingested = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    {
        let (observed, ingested, bad) = (observed.clone(), ingested.clone(), bad.clone());
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                if r.quality != Quality::Good {
                    bad.fetch_add(1, Ordering::Relaxed);
                } else if &*r.device == "observed" {
                    observed.fetch_add(1, Ordering::Relaxed);
                } else {
                    ingested.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let mut observed_yaml = format!(
        "name: observed\nprotocol: coap\npoll_interval: 1h\nconnection:\n  uri: coap://127.0.0.1:{port}\npoints:\n"
    );
    for i in 0..args.observables {
        observed_yaml.push_str(&format!(
            "  - {{name: o{i}, path: /obs/{i}, mode: observe}}\n"
        ));
    }
    let mut ingest_yaml =
        "name: ingest\nprotocol: coap\nconnection:\n  ingest: \"127.0.0.1:0\"\npoints:\n"
            .to_owned();
    for i in 0..10 {
        ingest_yaml.push_str(&format!(
            "  - {{name: p{i}, path: /bench/p{i}, mode: ingest}}\n"
        ));
    }
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut keep = Vec::new();
    for yaml in [observed_yaml, ingest_yaml] {
        let cfg = device_config_from_yaml(&yaml);
        let adapter = factory.build(&cfg).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (status, status_rx) = StatusHandle::new();
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        keep.push((status_rx, cmd_tx));
        let ctx = AdapterContext {
            device: cfg.name.clone(),
            output: ReadingSink::new(tx.clone()),
            status,
            commands: cmd_rx,
            cancel: cancel.child_token(),
        };
        tasks.push(tokio::spawn(adapter.run(ctx)));
    }
    drop(tx);

    // Warm-up: every resource registered and its first value read.
    let warm = Instant::now();
    while observed.load(Ordering::Relaxed) < args.observables as u64 {
        if warm.elapsed() > Duration::from_secs(60) {
            bail!(
                "warm-up: only {} of {} resources registered in 60 s",
                observed.load(Ordering::Relaxed),
                args.observables
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warmup = warm.elapsed();
    let listen = loop {
        if let Some(s) = factory.ingest("127.0.0.1:0") {
            break s.local_addr();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    peer_in
        .write_all(format!("load {listen} {}\n", args.ingest_rate).as_bytes())
        .await?;
    // Let the load settle for a second before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let tck = clk_tck();
    let (cpu0, t0, o0, i0, b0, p0) = (
        cpu_ticks()?,
        Instant::now(),
        observed.load(Ordering::Relaxed),
        ingested.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        peer_stats(&mut peer_in, &mut peer_out).await?,
    );
    tokio::time::sleep(duration).await;
    let (cpu1, t1, o1, i1, b1, p1) = (
        cpu_ticks()?,
        Instant::now(),
        observed.load(Ordering::Relaxed),
        ingested.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        peer_stats(&mut peer_in, &mut peer_out).await?,
    );
    let wall = (t1 - t0).as_secs_f64();
    let cpu_pct = (cpu1 - cpu0) as f64 / tck as f64 / wall * 100.0;
    let rate = |a: u64, b: u64| (b - a) as f64 / wall;
    let ingest = factory.ingest("127.0.0.1:0").context("listener")?;
    println!("observed resources     {}", args.observables);
    println!("notify interval        {}", args.notify_interval);
    println!("ingest rate (asked)    {}/s", args.ingest_rate);
    println!("warm-up (registered)   {:.1} s", warmup.as_secs_f64());
    println!("measured               {wall:.1} s");
    println!("cpu (one core)         {cpu_pct:.2} %");
    println!(
        "rss                    {:.1} MiB (peak {:.1} MiB)",
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
    println!("notifications sent/s   {:.1}", rate(p0[0], p1[0]));
    println!("observed readings/s    {:.1}", rate(o0, o1));
    println!("ingest posts sent/s    {:.1}", rate(p0[2], p1[2]));
    println!("ingest 2.04 answers/s  {:.1}", rate(p0[3], p1[3]));
    println!("ingest readings/s      {:.1}", rate(i0, i1));
    println!("bad readings           {}", b1 - b0);
    println!("registrations (total)  {}", p1[1]);
    println!(
        "ingest duplicates {} malformed {} rejected {}",
        ingest.stats().duplicates.load(Ordering::Relaxed),
        ingest.stats().malformed.load(Ordering::Relaxed),
        ingest.stats().rejected.load(Ordering::Relaxed)
    );
    drop(ingest);
    cancel.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    drop(keep);
    drop(peer_in);
    let _ = peer.kill().await;
    Ok(())
}
