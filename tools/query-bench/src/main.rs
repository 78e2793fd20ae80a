//! Benchmark of history queries on a large log, against the targets: with 10 million rows, one
//! point's 24 h of 1 s readings (86,400 rows) in < 50 ms, 1-minute buckets over 24 h in < 100 ms, the latest
//! values of 1,000 points in < 20 ms; and the append rate of the log as it is (the query engine adds no index
//! to the write path) next to the same log with a SQLite b-tree index on `messages(stream, ts)` — the index a
//! query engine would usually add, and the one the store's design refuses (see `src/store/mod.rs`).
//!
//! The log: `--fast` points read every second for 24 h (86,400 rows each), the rest of the `--points` read
//! evenly over the same day to fill `--rows` in total, appended in time order as a gateway logs them.
//! Queries run through the daemon's path (`Store`, pooled read connections) and the CLI's (`LogReader`, a
//! read-only connection); each is run `--runs` times, the first run reported apart (cold caches).
//!
//! `cargo build --release -p fieldbridge-query-bench && target/release/query-bench`
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use fieldbridge::config::{Durability, StorageConfig, Synchronous, WhenFull};
use fieldbridge::store::{BucketQuery, HistoryQuery, LogReader, LogRecord, Store, StoreOptions};

#[derive(Parser, Debug)]
#[command(
    about = "fieldbridge query benchmark: raw rows, buckets and latest values on a large log"
)]
struct Args {
    /// Rows in the log.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Points in the log (device `d<N>`, point `p`).
    #[arg(long, default_value_t = 1000)]
    points: u64,
    /// Points read every second for the whole day.
    #[arg(long, default_value_t = 100)]
    fast: u64,
    /// Timed runs of each query.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Rows appended for the append-rate comparison (each variant, one after the other; 0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    append_rows: u64,
    /// Directory for the databases (default: a temporary directory under the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only the append-rate comparison.
    #[arg(long)]
    append_only: bool,
    /// Rounds of the append comparison: each round appends with and without values (alternating which goes
    /// first); the SQLite-index variant runs once after them.
    #[arg(long, default_value_t = 3)]
    append_rounds: usize,
}

/// Midnight UTC, 2026-11-22.
const DAY0: i64 = 1_795_305_600_000;
const DAY_S: i64 = 86_400;

fn cfg(path: &Path) -> StorageConfig {
    StorageConfig {
        path: path.to_path_buf(),
        commit_interval: Duration::from_millis(20),
        commit_rows: 10_000,
        synchronous: Synchronous::Full,
        durability: Durability::Strict,
        max_bytes: 64 << 30,
        max_age: None,
        when_full: WhenFull::DropOldest,
        record: Vec::new(),
    }
}

fn reading(names: &[(Arc<str>, Arc<str>)], point: usize, ts: i64, v: f64) -> LogRecord {
    let (device, topic) = &names[point];
    LogRecord {
        ts_ms: ts,
        qos: 1,
        device: Some(device.clone()),
        point: Some(Arc::from("p")),
        num: Some(v),
        ..LogRecord::new(
            topic.clone(),
            format!("{{\"value\":{v:.2},\"unit\":\"V\",\"quality\":\"good\"}}"),
        )
    }
}

fn names(points: u64) -> Vec<(Arc<str>, Arc<str>)> {
    (0..points)
        .map(|i| {
            (
                Arc::from(format!("d{i}")),
                Arc::from(format!("bench/d{i}/p")),
            )
        })
        .collect()
}

/// Appends `records` with at most 8 batches of tickets outstanding; returns the rows appended.
fn append_all(
    store: &Store,
    mut records: impl Iterator<Item = LogRecord>,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut tickets = VecDeque::new();
    let mut n = 0u64;
    loop {
        let batch: Vec<LogRecord> = records.by_ref().take(10_000).collect();
        if batch.is_empty() {
            break;
        }
        n += batch.len() as u64;
        tickets.push_back(store.append_batch_blocking(batch)?);
        if tickets.len() > 8 {
            tickets.pop_front().expect("non-empty").wait()?;
        }
    }
    for t in tickets {
        t.wait()?;
    }
    Ok(n)
}

/// The day's readings in time order: fast points every second, slow points spread evenly.
fn day(args: &Args, names: Arc<Vec<(Arc<str>, Arc<str>)>>) -> impl Iterator<Item = LogRecord> {
    let fast = args.fast.min(args.points);
    let slow = args.points - fast;
    let fast_rows = fast * DAY_S as u64;
    let per_slow = args
        .rows
        .saturating_sub(fast_rows)
        .checked_div(slow)
        .unwrap_or(0);
    let interval = if per_slow == 0 {
        i64::MAX
    } else {
        (DAY_S / per_slow as i64).max(1)
    };
    (0..DAY_S).flat_map(move |s| {
        let names = names.clone();
        let ts = DAY0 + s * 1000;
        let fast_it = (0..fast).map({
            let names = names.clone();
            move |p| {
                // A meter with a resolution of 0.01 V.
                let v = ((230.0 + 10.0 * ((s as f64 / 600.0) + p as f64).sin()) * 100.0).round()
                    / 100.0;
                reading(&names, p as usize, ts, v)
            }
        });
        let slow_it = (fast..fast + slow)
            .filter(move |p| interval != i64::MAX && (s + *p as i64) % interval == 0)
            .map(move |p| reading(&names, p as usize, ts, (s % 1000) as f64));
        fast_it.chain(slow_it)
    })
}

struct Timing {
    first: Duration,
    median: Duration,
    best: Duration,
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T, check: impl Fn(&T)) -> Timing {
    let mut times = Vec::new();
    for _ in 0..runs.max(2) {
        let t = Instant::now();
        let r = f();
        times.push(t.elapsed());
        check(&r);
    }
    let first = times[0];
    let mut rest = times[1..].to_vec();
    rest.sort();
    Timing {
        first,
        median: rest[rest.len() / 2],
        best: rest[0],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn report(what: &str, target: &str, t: &Timing) {
    println!(
        "| {what} | {} | {} | {} | {target} |",
        ms(t.median),
        ms(t.best),
        ms(t.first)
    );
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
    let names = Arc::new(names(args.points));
    if !args.append_only {
        queries(&args, &dir, names)?;
    }
    if args.append_rows > 0 {
        appends(&args, &dir)?;
    }
    Ok(())
}

/// The big log, and the queries on it.
fn queries(
    args: &Args,
    dir: &Path,
    names: Arc<Vec<(Arc<str>, Arc<str>)>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = dir.join("query-bench.db");
    let store = Store::open_with(&cfg(&path), StoreOptions::default())?;
    let started = Instant::now();
    let n = append_all(&store, day(args, names.clone()))?;
    let took = started.elapsed();
    let stats = store.stats();
    println!(
        "log: {n} rows ({} points, {} read every second for 24 h) appended in {:.1} s ({:.0} rows/s); {:.0} MiB on disk",
        args.points,
        args.fast,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        stats.bytes_on_disk as f64 / (1 << 20) as f64
    );

    let one = HistoryQuery {
        device: Some("d0".into()),
        point: Some("p".into()),
        from_ms: Some(DAY0),
        to_ms: Some(DAY0 + DAY_S * 1000),
        limit: 100_000,
        ..Default::default()
    };
    let buckets = BucketQuery {
        filter: HistoryQuery {
            device: Some("d0".into()),
            point: Some("p".into()),
            ..Default::default()
        },
        from_ms: DAY0,
        to_ms: DAY0 + DAY_S * 1000,
        every_ms: 60_000,
    };
    let latest = HistoryQuery {
        topic: Some("bench/#".into()),
        ..Default::default()
    };
    let want_rows = if args.fast > 0 { DAY_S as usize } else { 0 };
    let points = args.points as usize;
    println!();
    println!("| query (10 M-row log) | median | best | first run | target |");
    println!("|---|---|---|---|---|");
    for (label, reader) in [("daemon", None), ("CLI, read-only file", Some(()))] {
        let file = match reader {
            Some(()) => Some(LogReader::open(&path)?),
            None => None,
        };
        let q_rows = || match &file {
            Some(r) => r.query(&one),
            None => store.query(&one),
        };
        let t = time(args.runs, q_rows, |r| {
            assert_eq!(r.as_ref().map(Vec::len).unwrap_or(0), want_rows)
        });
        report(
            &format!("one point, 24 h of 1 s readings (86,400 rows) as whole rows, {label}"),
            "< 50 ms",
            &t,
        );
        let q_values = || match &file {
            Some(r) => r.readings(&one),
            None => store.readings(&one),
        };
        let t = time(args.runs, q_values, |r| {
            assert_eq!(r.as_ref().map(Vec::len).unwrap_or(0), want_rows)
        });
        report(
            &format!("one point, 24 h of 1 s readings (86,400) as time + value, {label}"),
            "< 50 ms",
            &t,
        );
        let q_buckets = || match &file {
            Some(r) => r.buckets(&buckets),
            None => store.buckets(&buckets),
        };
        let t = time(args.runs, q_buckets, |r| {
            let s = r.as_ref().expect("buckets");
            assert_eq!(s[0].buckets.len(), 1440);
        });
        report(
            &format!("1-minute buckets over 24 h (1,440), {label}"),
            "< 100 ms",
            &t,
        );
        let q_latest = || match &file {
            Some(r) => r.latest(&latest),
            None => store.latest(&latest),
        };
        let t = time(args.runs, q_latest, |r| {
            assert_eq!(r.as_ref().map(Vec::len).unwrap_or(0), points)
        });
        report(
            &format!("latest values of {points} points, {label}"),
            "< 20 ms",
            &t,
        );
    }
    store.close()?;
    Ok(())
}

/// What kind of index the append comparison runs with.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// This build: history blocks with values.
    Values,
    /// History blocks without values (schema v2's index passes).
    KeysOnly,
    /// Values, plus a SQLite index on `messages(stream, ts)`.
    SqliteIndex,
}

/// The append rate of each variant, one after the other in one run.
fn appends(args: &Args, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    {
        println!();
        println!(
            "| append ({} rows, 1,000 series, synchronous=full) | rows/s |",
            args.append_rows
        );
        println!("|---|---|");
        let mut order = Vec::new();
        for round in 0..args.append_rounds {
            if round % 2 == 0 {
                order.extend([Variant::Values, Variant::KeysOnly]);
            } else {
                order.extend([Variant::KeysOnly, Variant::Values]);
            }
        }
        order.push(Variant::SqliteIndex);
        let mut rates: Vec<(&'static str, f64)> = Vec::new();
        for variant in order {
            let with_index = variant == Variant::SqliteIndex;
            let p = dir.join(format!("append-{with_index}.db"));
            for f in ["", "-wal", "-shm", ".lock", ".reserve"] {
                let _ = std::fs::remove_file(format!("{}{f}", p.display()));
            }
            let opts = StoreOptions {
                index_values: variant != Variant::KeysOnly,
                ..StoreOptions::default()
            };
            let store = Store::open_with(&cfg(&p), opts)?;
            if with_index {
                // Beside the writer, on its own connection: the index the query engine did not add.
                let c = rusqlite::Connection::open(&p)?;
                c.busy_timeout(Duration::from_secs(5))?;
                c.execute_batch("CREATE INDEX messages_stream_ts ON messages(stream, ts)")?;
            }
            let names = Arc::new(self::names(1000));
            // 1000 series, round robin, one reading a second each.
            let records = (0..args.append_rows).map(move |i| {
                reading(
                    &names,
                    (i % 1000) as usize,
                    DAY0 + (i / 1000) as i64 * 1000,
                    i as f64,
                )
            });
            let t = Instant::now();
            let n = append_all(&store, records)?;
            let rate = n as f64 / t.elapsed().as_secs_f64();
            store.close()?;
            let label = match variant {
                Variant::Values => "this build: history blocks with values (schema v3+)",
                Variant::KeysOnly => "history blocks without values (as before, schema v2)",
                Variant::SqliteIndex => "this build plus a SQLite index on messages(stream, ts)",
            };
            println!("| {label} | {rate:.0} |");
            rates.push((label, rate));
            let _ = std::fs::remove_file(&p);
        }
        println!();
        println!("| variant | runs | median rows/s |");
        println!("|---|---|---|");
        let mut labels: Vec<&str> = rates.iter().map(|r| r.0).collect();
        labels.dedup();
        labels.sort();
        labels.dedup();
        for label in labels {
            let mut r: Vec<f64> = rates.iter().filter(|x| x.0 == label).map(|x| x.1).collect();
            r.sort_by(f64::total_cmp);
            println!("| {label} | {} | {:.0} |", r.len(), r[r.len() / 2]);
        }
    }
    Ok(())
}
