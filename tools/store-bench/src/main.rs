//! Benchmark of the durable log (`fieldbridge::store`): appends N messages through the writer thread (group
//! commit, `synchronous=FULL` by default), waits for every commit ticket, then drains the log with `read_from`
//! in batches, as a bridge would after an outage.
//!
//! `cargo run --release -p fieldbridge-store-bench -- --n 1000000`
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use fieldbridge::config::{Durability, StorageConfig, Synchronous, WhenFull};
use fieldbridge::store::{LogRecord, Store, StoreOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Sync {
    Full,
    Normal,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// Adapter readings: device, point and numeric value set (both indexes maintained).
    Reading,
    /// Plain messages (topic index only).
    Message,
}

#[derive(Parser, Debug)]
#[command(about = "fieldbridge store benchmark: append throughput and drain rate")]
struct Args {
    /// Messages to append.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Records per append call; 1 = one `append` per message.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// SQLite synchronous mode.
    #[arg(long, value_enum, default_value_t = Sync::Full)]
    sync: Sync,
    /// What the messages look like.
    #[arg(long, value_enum, default_value_t = Kind::Reading)]
    kind: Kind,
    /// Group commit: rows per commit.
    #[arg(long, default_value_t = 10_000)]
    commit_rows: usize,
    /// Group commit: interval in milliseconds.
    #[arg(long, default_value_t = 20)]
    commit_interval_ms: u64,
    /// Tickets awaited with at most this many outstanding (as a broker acknowledging publishes would).
    #[arg(long, default_value_t = 65_536)]
    window: usize,
    /// Directory for the database (default: a temporary directory under the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Distinct series (device/point pairs, one topic each) the messages are spread over.
    #[arg(long, default_value_t = 1000)]
    series: usize,
    /// History index pass every this many rows at least (the store's default: 100 000; up to 300 000 with more
    /// than 5,000 series, 20 rows per series).
    #[arg(long, default_value_t = 100_000)]
    index_rows: u64,
    /// Rows per `read_from` call in the drain benchmark.
    #[arg(long, default_value_t = 1000)]
    read_batch: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir_in(".")?;
            tmp.path().to_path_buf()
        }
    };
    let path = dir.join("bench.db");
    let cfg = StorageConfig {
        path: path.clone(),
        commit_interval: Duration::from_millis(args.commit_interval_ms),
        commit_rows: args.commit_rows,
        synchronous: match args.sync {
            Sync::Full => Synchronous::Full,
            Sync::Normal => Synchronous::Normal,
        },
        durability: Durability::Strict,
        max_bytes: 1 << 40,
        max_age: None,
        when_full: WhenFull::DropOldest,
        record: Vec::new(),
    };
    let opts = StoreOptions {
        index_rows: args.index_rows,
        ..StoreOptions::default()
    };
    let store = Store::open_with(&cfg, opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // Prepare the records up front so the timing is the store's, not the generator's.
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let series = args.series.max(1);
    let n_dev = series.div_ceil(20);
    let devices: Vec<Arc<str>> = (0..n_dev).map(|i| Arc::from(format!("dev{i}"))).collect();
    let points: Vec<Arc<str>> = (0..20).map(|i| Arc::from(format!("p{i}"))).collect();
    let topics: Vec<Arc<str>> = (0..series)
        .map(|i| Arc::from(format!("gw1/{}/{}", devices[i % n_dev], points[i / n_dev])))
        .collect();
    let ts0 = fieldbridge::store::now_ms();
    let make = |i: u64| {
        let t = (i % series as u64) as usize;
        let reading = matches!(args.kind, Kind::Reading);
        LogRecord {
            ts_ms: ts0 + (i / 1000) as i64,
            topic: topics[t].clone(),
            payload: payload.clone(),
            qos: 1,
            retain: false,
            props: None,
            device: reading.then(|| devices[t % n_dev].clone()),
            point: reading.then(|| points[t / n_dev].clone()),
            num: reading.then_some(i as f64 * 0.5),
        }
    };

    println!(
        "store-bench: {} messages, {} B payload, kind {:?}, batch {}, synchronous={:?}, commit {} rows / {} ms, db {}",
        args.n,
        args.payload,
        args.kind,
        args.batch,
        args.sync,
        args.commit_rows,
        args.commit_interval_ms,
        path.display()
    );

    // ---- append ----
    let cpu_before = thread_cpu();
    let before = store.stats();
    let started = Instant::now();
    let last_seq = rt.block_on(async {
        let mut last = 0u64;
        if args.batch <= 1 {
            let mut tickets = VecDeque::with_capacity(args.window);
            for i in 0..args.n {
                tickets.push_back(store.append(make(i)).await?);
                if tickets.len() >= args.window {
                    last = tickets.pop_front().expect("non-empty").await?;
                }
            }
            for t in tickets {
                last = t.await?;
            }
        } else {
            let mut tickets = VecDeque::new();
            let mut i = 0;
            while i < args.n {
                let end = (i + args.batch as u64).min(args.n);
                let batch: Vec<LogRecord> = (i..end).map(make).collect();
                i = end;
                tickets.push_back(store.append_batch(batch).await?);
                if tickets.len() * args.batch >= args.window {
                    last = *tickets.pop_front().expect("non-empty").await?.end();
                }
            }
            for t in tickets {
                last = *t.await?.end();
            }
        }
        Ok::<u64, fieldbridge::store::StoreError>(last)
    })?;
    let took = started.elapsed();
    let after = store.stats();
    let commits = after.commits - before.commits;
    let rows = after.rows_committed - before.rows_committed;
    println!(
        "append: {} msgs in {:.3} s = {:.0} msgs/s; {} commits, {:.0} rows/commit; last seq {}; db {:.1} MiB on disk",
        rows,
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        commits,
        rows as f64 / commits.max(1) as f64,
        last_seq,
        after.bytes_on_disk as f64 / (1 << 20) as f64,
    );

    let cpu = thread_cpu();
    for (name, ns) in &cpu {
        let was = cpu_before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v);
        println!(
            "  cpu {name}: {:.3} s = {:.2} us/msg",
            (ns - was) as f64 / 1e9,
            (ns - was) as f64 / 1e3 / rows.max(1) as f64
        );
    }

    // ---- drain ----
    let first = after.oldest_seq.unwrap_or(1) - 1;
    let started = Instant::now();
    let mut cursor = first;
    let mut drained = 0u64;
    let mut bytes = 0u64;
    loop {
        let batch = store.read_from(cursor, args.read_batch)?;
        let Some(last) = batch.last() else { break };
        for (k, r) in batch.iter().enumerate() {
            if r.seq != cursor + 1 + k as u64 {
                return Err(format!(
                    "out of order: expected {}, got {}",
                    cursor + 1 + k as u64,
                    r.seq
                )
                .into());
            }
            bytes += r.payload.len() as u64;
        }
        cursor = last.seq;
        drained += batch.len() as u64;
    }
    let took = started.elapsed();
    println!(
        "drain: {} rows ({:.1} MiB payload) in {:.3} s = {:.0} rows/s (read_from batches of {})",
        drained,
        bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
        drained as f64 / took.as_secs_f64(),
        args.read_batch
    );
    if drained != rows {
        return Err(format!("drained {drained} rows, appended {rows}").into());
    }
    store.close()?;
    Ok(())
}

/// CPU time (ns) per thread name, from `/proc/self/task/*/schedstat` (Linux); empty elsewhere. CPU time is
/// what a busy machine does not distort: wall-clock rates are only meaningful on an idle one.
fn thread_cpu() -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let ns = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0);
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 += ns,
            None => out.push((name, ns)),
        }
    }
    out.sort();
    out
}
