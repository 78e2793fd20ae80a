//! Benchmark of the damaged-log salvage (`fieldbridge store salvage`, and what a start does with a corrupt
//! log): builds a log of `--mib` MiB of readings, overwrites `--damage` runs of 8 pages spread over the file,
//! then times `move_aside_and_salvage` and reports what it read and lost.
//!
//! `cargo run --release -p fieldbridge-salvage-bench -- --mib 1024`
#![forbid(unsafe_code)]

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use fieldbridge::config::{Durability, StorageConfig, Synchronous, WhenFull};
use fieldbridge::store::{check, move_aside_and_salvage, LogRecord, Store};

#[derive(Parser, Debug)]
#[command(about = "fieldbridge salvage benchmark")]
struct Args {
    /// Size of the log to build, in MiB (database file).
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Runs of 8 damaged pages, spread evenly over the file.
    #[arg(long, default_value_t = 16)]
    damage: u64,
    /// Directory (default: a temporary directory under the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Reuse an existing log in `--dir` instead of building one (it is damaged again).
    #[arg(long)]
    reuse: bool,
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
    let path = dir.join("log.db");
    let cfg = StorageConfig {
        path: path.clone(),
        commit_interval: Duration::from_millis(100),
        commit_rows: 50_000,
        synchronous: Synchronous::Normal,
        durability: Durability::Strict,
        max_bytes: (args.mib + args.mib / 4 + 64) << 20,
        max_age: None,
        when_full: WhenFull::DropOldest,
        record: Vec::new(),
    };
    if !(args.reuse && path.exists()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let t = Instant::now();
        let store = Store::open(&cfg)?;
        store.cursor("cloud")?;
        let payload = Bytes::from(vec![b'x'; args.payload]);
        let target = args.mib << 20;
        let mut n = 0u64;
        rt.block_on(async {
            loop {
                let batch: Vec<LogRecord> = (0..1000)
                    .map(|i| {
                        let k = (n + i) % 1000;
                        LogRecord {
                            ts_ms: 1_700_000_000_000 + (n + i) as i64,
                            topic: Arc::from(format!("gw/dev{}/p{}", k / 10, k % 10)),
                            payload: payload.clone(),
                            qos: 0,
                            retain: false,
                            props: None,
                            device: Some(Arc::from(format!("dev{}", k / 10))),
                            point: Some(Arc::from(format!("p{}", k % 10))),
                            num: Some((n + i) as f64),
                        }
                    })
                    .collect();
                n += 1000;
                let t = store.append_batch(batch).await?;
                if n.is_multiple_of(100_000) {
                    t.await?;
                    if store.stats().bytes_on_disk >= target {
                        break;
                    }
                }
            }
            store.set_cursor("cloud", n / 2)?;
            store.flush().await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })?;
        store.close()?;
        eprintln!(
            "built {} rows, {} MiB in {:.1} s",
            n,
            std::fs::metadata(&path)?.len() >> 20,
            t.elapsed().as_secs_f64()
        );
    }
    // Damage: runs of 8 pages (32 KiB) of garbage, spread over the file (not the first page).
    let len = std::fs::metadata(&path)?.len();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
        for i in 1..=args.damage {
            let off = (len / (args.damage + 1) * i) / 4096 * 4096;
            f.seek(SeekFrom::Start(off))?;
            f.write_all(&vec![0xA5u8; 8 * 4096])?;
        }
        f.sync_all()?;
    }
    let t = Instant::now();
    let report = check(&path)?;
    let check_took = t.elapsed();
    println!(
        "check: {:.1} s: {}",
        check_took.as_secs_f64(),
        report.problem.as_deref().unwrap_or("ok")
    );
    let t = Instant::now();
    let r = move_aside_and_salvage(&path)?;
    let took = t.elapsed();
    println!(
        "salvage of {} MiB ({} damaged runs of 8 pages): {:.1} s, {:.0} MiB/s; {} rows salvaged, up to {} lost \
         in {} damaged ranges, {} cursors",
        len >> 20,
        args.damage,
        took.as_secs_f64(),
        (len >> 20) as f64 / took.as_secs_f64(),
        r.rows_salvaged,
        r.seqs_lost,
        r.damaged_ranges,
        r.cursors
    );
    // The salvaged log opens and works.
    let t = Instant::now();
    let store = Store::open(&cfg)?;
    println!(
        "reopen: {:.1} s, {} rows",
        t.elapsed().as_secs_f64(),
        store.stats().rows
    );
    store.close()?;
    if !args.reuse {
        let _ = std::fs::remove_file(&r.moved_to);
    }
    Ok(())
}
