//! Issue 10: the query engine on a generated log (buckets, boundaries, empty ranges, bad parameters, latest
//! values, page cursors, did-you-mean), and the CLI reading a copied log file with no daemon.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldbridge::cli::{
    self, Console, ExportArgs, ExportFormat, Format, OrderArg, QueryArgs, Target,
};
use fieldbridge::config::{StorageConfig, Synchronous};
use fieldbridge::store::{
    BucketQuery, HistoryQuery, LogReader, LogRecord, Order, Store, StoreError, StoreOptions,
};

/// A minute boundary (2026-11-22T08:00:00Z).
const T0: i64 = 1_795_334_400_000;
/// Readings of `meter-1/voltage`: one a second for 10 minutes, value = 200 + index.
const N: i64 = 600;

fn cfg(path: &Path) -> StorageConfig {
    StorageConfig {
        commit_interval: Duration::from_millis(5),
        commit_rows: 1000,
        synchronous: Synchronous::Normal,
        ..StorageConfig::at(path)
    }
}

fn reading(device: &str, point: &str, ts: i64, payload: String, num: Option<f64>) -> LogRecord {
    LogRecord {
        ts_ms: ts,
        device: Some(Arc::from(device)),
        point: Some(Arc::from(point)),
        num,
        ..LogRecord::new(format!("gw/{device}/{point}"), payload)
    }
}

/// The generated log: voltage (numeric, with a unit), a switch (boolean), a status text, and a raw publish.
/// Half of it is covered by the history index, the rest is the unindexed tail.
fn generate(path: &Path) -> Store {
    let opts = StoreOptions {
        index_rows: 400,
        index_keys_per_stream: 0,
        index_interval: Duration::from_millis(10),
        ..StoreOptions::default()
    };
    let store = Store::open_with(&cfg(path), opts).unwrap();
    let mut batch = Vec::new();
    for i in 0..N {
        let v = 200.0 + i as f64;
        batch.push(reading(
            "meter-1",
            "voltage",
            T0 + i * 1000,
            format!("{{\"value\":{v},\"unit\":\"V\"}}"),
            Some(v),
        ));
        if i % 60 == 0 {
            let on = (i / 60) % 2 == 0;
            batch.push(reading(
                "meter-1",
                "switch",
                T0 + i * 1000,
                format!("{{\"value\":{on}}}"),
                Some(if on { 1.0 } else { 0.0 }),
            ));
            batch.push(reading(
                "meter-1",
                "state",
                T0 + i * 1000,
                "{\"value\":\"run\"}".into(),
                None,
            ));
        }
    }
    batch.push(LogRecord {
        ts_ms: T0,
        ..LogRecord::new("other/raw", "hello")
    });
    for chunk in batch.chunks(500) {
        let t = store.append_batch_blocking(chunk.to_vec()).unwrap();
        t.wait().unwrap();
    }
    store
}

fn voltage() -> HistoryQuery {
    HistoryQuery {
        device: Some("meter-1".into()),
        point: Some("voltage".into()),
        ..Default::default()
    }
}

fn buckets(store: &Store, from: i64, to: i64, every: i64) -> Vec<fieldbridge::store::Bucket> {
    let s = store
        .buckets(&BucketQuery {
            filter: voltage(),
            from_ms: from,
            to_ms: to,
            every_ms: every,
        })
        .unwrap();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(&*s[0].topic, "gw/meter-1/voltage");
    s[0].buckets.clone()
}

#[test]
fn buckets_boundaries_and_empty_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = generate(&dir.path().join("log.db"));

    // Ten whole minutes: 60 readings each, value 200 + index.
    let b = buckets(&store, T0, T0 + N * 1000, 60_000);
    assert_eq!(b.len(), 10);
    for (m, bucket) in b.iter().enumerate() {
        let lo = 200.0 + (m * 60) as f64;
        assert_eq!(bucket.start_ms, T0 + m as i64 * 60_000);
        assert_eq!(bucket.count, 60, "{bucket:?}");
        assert_eq!((bucket.min, bucket.max), (lo, lo + 59.0));
        assert_eq!((bucket.first, bucket.last), (lo, lo + 59.0));
        assert!((bucket.avg - (lo + 29.5)).abs() < 1e-9, "{bucket:?}");
    }

    // A range starting mid-minute cuts the first bucket; the reading at exactly T0+90 s is in the second
    // minute's bucket, and `to` is exclusive.
    let b = buckets(&store, T0 + 30_000, T0 + 120_000, 60_000);
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].start_ms, b[0].count, b[0].first), (T0, 30, 230.0));
    assert_eq!(
        (b[1].start_ms, b[1].count, b[1].last),
        (T0 + 60_000, 60, 319.0)
    );
    let b = buckets(&store, T0 + 60_000, T0 + 60_001, 60_000);
    assert_eq!((b.len(), b[0].count, b[0].first), (1, 1, 260.0));

    // Buckets not aligned to the range: 7 s buckets start at multiples of 7 s since the epoch.
    let b = buckets(&store, T0, T0 + 60_000, 7_000);
    assert!(b.iter().all(|x| x.start_ms % 7_000 == 0));
    assert_eq!(b.iter().map(|x| x.count).sum::<u64>(), 60);

    // Empty ranges: before the log, and after it.
    assert!(buckets(&store, T0 - 3_600_000, T0, 60_000).is_empty());
    assert!(buckets(&store, T0 + N * 1000, T0 + N * 2000, 60_000).is_empty());

    // A boolean point aggregates as 0/1; a text point is counted as skipped.
    let s = store
        .buckets(&BucketQuery {
            filter: HistoryQuery {
                device: Some("meter-1".into()),
                ..Default::default()
            },
            from_ms: T0,
            to_ms: T0 + N * 1000,
            every_ms: 600_000,
        })
        .unwrap();
    let topics: Vec<&str> = s.iter().map(|x| &*x.topic).collect();
    assert_eq!(
        topics,
        [
            "gw/meter-1/state",
            "gw/meter-1/switch",
            "gw/meter-1/voltage"
        ]
    );
    assert_eq!((s[0].buckets.len(), s[0].skipped), (0, 10));
    assert_eq!((s[1].buckets[0].count, s[1].buckets[0].avg), (10, 0.5));

    // Bad parameters are refused with a message.
    for (from, to, every, want) in [
        (T0, T0 + 1000, 0, "must be positive"),
        (T0 + 1000, T0, 1000, "`from` must be before `to`"),
        (T0, T0 + 86_400_000 * 7, 1, "buckets in the range"),
    ] {
        let e = store
            .buckets(&BucketQuery {
                filter: voltage(),
                from_ms: from,
                to_ms: to,
                every_ms: every,
            })
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid(m) if m.contains(want)),
            "{e}"
        );
    }
    store.close().unwrap();
}

#[test]
fn latest_pages_and_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    let store = generate(&dir.path().join("log.db"));

    let latest = store.latest(&HistoryQuery::default()).unwrap();
    let got: Vec<(&str, Option<f64>)> = latest.iter().map(|r| (&*r.topic, r.num)).collect();
    assert_eq!(
        got,
        [
            ("gw/meter-1/state", None),
            ("gw/meter-1/switch", Some(0.0)),
            ("gw/meter-1/voltage", Some(200.0 + (N - 1) as f64)),
            ("other/raw", None),
        ]
    );
    let one = store.latest(&voltage()).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].ts_ms, T0 + (N - 1) * 1000);

    // Pages of 70 rows, following the cursor, in both orders: every row once, in order.
    for order in [Order::Asc, Order::Desc] {
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..20 {
            let q = HistoryQuery {
                limit: 70,
                order,
                after,
                ..voltage()
            };
            let rows = store.query(&q).unwrap();
            if rows.is_empty() {
                break;
            }
            after = rows.last().map(|r| (r.ts_ms, r.seq as i64));
            seen.extend(rows.iter().map(|r| r.ts_ms));
        }
        let mut want: Vec<i64> = (0..N).map(|i| T0 + i * 1000).collect();
        if order == Order::Desc {
            want.reverse();
        }
        assert_eq!(seen, want, "{order:?}");
    }
    // Readings (time and value, from the index): the same series, in both orders, paged.
    let all = store
        .readings(&HistoryQuery {
            limit: 100_000,
            ..voltage()
        })
        .unwrap();
    assert_eq!(all.len(), N as usize);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(
            (r.ts_ms, r.value, &*r.topic),
            (
                T0 + i as i64 * 1000,
                Some(200.0 + i as f64),
                "gw/meter-1/voltage"
            )
        );
    }
    for order in [Order::Asc, Order::Desc] {
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..20 {
            let page = store
                .readings(&HistoryQuery {
                    limit: 70,
                    order,
                    after,
                    ..voltage()
                })
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|r| (r.ts_ms, r.seq as i64));
            seen.extend(page.iter().map(|r| r.seq));
        }
        let mut want: Vec<u64> = all.iter().map(|r| r.seq).collect();
        if order == Order::Desc {
            want.reverse();
        }
        assert_eq!(seen, want, "{order:?}");
    }
    let text = store
        .readings(&HistoryQuery {
            point: Some("state".into()),
            ..voltage()
        })
        .unwrap();
    assert_eq!(text.len(), 10);
    assert!(text.iter().all(|r| r.value.is_none()));

    // The cursor works on a time-range-only query (which scans the log) too.
    let q = HistoryQuery {
        from_ms: Some(T0),
        to_ms: Some(T0 + 2000),
        limit: 2,
        ..Default::default()
    };
    let first = store.query(&q).unwrap();
    let rest = store
        .query(&HistoryQuery {
            after: first.last().map(|r| (r.ts_ms, r.seq as i64)),
            limit: 100,
            ..q.clone()
        })
        .unwrap();
    let all = store.query(&HistoryQuery { limit: 100, ..q }).unwrap();
    let joined: Vec<u64> = first.iter().chain(&rest).map(|r| r.seq).collect();
    assert_eq!(joined, all.iter().map(|r| r.seq).collect::<Vec<_>>());

    // A mistyped device or point is named, with the closest logged name.
    let e = store
        .query(&HistoryQuery {
            device: Some("meter1".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no device `meter1` in the log; did you mean `meter-1`?"
    );
    let e = store
        .query(&HistoryQuery {
            point: Some("voltag".into()),
            ..voltage()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no point `voltag` of device `meter-1` in the log; did you mean `voltage`?"
    );
    // Known names with no rows in the range: no rows, no error.
    assert!(store
        .query(&HistoryQuery {
            to_ms: Some(T0 - 1),
            ..voltage()
        })
        .unwrap()
        .is_empty());
    store.close().unwrap();
}

/// A copy of the log (database and WAL), as an operator would take it off a gateway.
fn copy_log(from: &Path, to_dir: &Path) -> PathBuf {
    let to = to_dir.join("copy.db");
    std::fs::copy(from, &to).unwrap();
    let wal = PathBuf::from(format!("{}-wal", from.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", to.display())).unwrap();
    }
    to
}

fn console() -> Console<Vec<u8>, Vec<u8>> {
    Console {
        out: Vec::new(),
        err: Vec::new(),
        tty: false,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn args(db: Option<PathBuf>, config: PathBuf) -> QueryArgs {
    QueryArgs {
        target: Target {
            api: None,
            config,
            token: None,
        },
        device: Some("meter-1".into()),
        point: Some("voltage".into()),
        topic: None,
        from: Some(T0.to_string()),
        to: Some((T0 + 180_000).to_string()),
        limit: 1000,
        order: OrderArg::Asc,
        format: Format::Table,
        db,
        every: None,
        latest: false,
        cursor: None,
        values: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reads_a_copied_log_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("log.db");
    let at = dir.path().to_path_buf();
    // Copied while the writer has it open (WAL and all), then the writer goes away.
    let copy = tokio::task::spawn_blocking(move || {
        let store = generate(&live);
        let copy = copy_log(&live, &at);
        store.close().unwrap();
        copy
    })
    .await
    .unwrap();
    let before = std::fs::read(&copy).unwrap();
    let none = dir.path().join("missing.yaml");

    // Buckets, as a table with units.
    let mut a = args(Some(copy.clone()), none.clone());
    a.every = Some("1m".into());
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 0, "{}", text(&con.err));
    let out = text(&con.out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["START", "TOPIC", "COUNT", "MIN", "MAX", "AVG", "FIRST", "LAST"],
        "{out}"
    );
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "2026-11-22T08:00:00.000Z",
            "gw/meter-1/voltage",
            "60",
            "200",
            "V",
            "259",
            "V",
            "229.5",
            "V",
            "200",
            "V",
            "259",
            "V"
        ],
        "{out}"
    );
    assert_eq!(text(&con.err), "3 bucket(s) of 1m in 1 series\n");

    // Rows with units and booleans printed the same in table, CSV and JSON.
    let mut a = args(Some(copy.clone()), none.clone());
    a.point = Some("switch".into());
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 0, "{}", text(&con.err));
    let out = text(&con.out);
    assert!(out.lines().nth(1).unwrap().ends_with("  true"), "{out}");
    assert!(out.lines().nth(2).unwrap().ends_with("  false"), "{out}");
    a.format = Format::Csv;
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 0);
    assert!(
        text(&con.out).contains(",meter-1,switch,true,,"),
        "{}",
        text(&con.out)
    );
    a.format = Format::Json;
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 0);
    let v: serde_json::Value = serde_json::from_slice(&con.out).unwrap();
    assert_eq!(v[0]["value"], serde_json::json!(true));

    let mut a = args(Some(copy.clone()), none.clone());
    a.limit = 2;
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 0);
    let out = text(&con.out);
    assert!(out.lines().nth(1).unwrap().ends_with("  200 V"), "{out}");
    let err = text(&con.err);
    let cursor = err
        .split("--cursor ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{err}"))
        .to_string();
    a.cursor = Some(cursor);
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 0);
    assert!(
        text(&con.out).lines().nth(1).unwrap().ends_with("  202 V"),
        "{}",
        text(&con.out)
    );

    // --values: time and value from the index.
    let mut a = args(Some(copy.clone()), none.clone());
    a.values = true;
    a.format = Format::Csv;
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 0, "{}", text(&con.err));
    let out = text(&con.out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "seq,ts,ts_ms,topic,value");
    assert_eq!(lines.len(), 181, "{out}");
    assert!(
        lines[1].ends_with(",2026-11-22T08:00:00.000Z,1795334400000,gw/meter-1/voltage,200"),
        "{out}"
    );

    // A mistyped device: did-you-mean, exit 2.
    let mut a = args(Some(copy.clone()), none.clone());
    a.device = Some("meter_1".into());
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 2);
    assert_eq!(
        text(&con.err),
        "fieldbridge: no device `meter_1` in the log; did you mean `meter-1`?\n"
    );

    // No --db and no daemon: the log named by the configuration file is read instead.
    let config = dir.path().join("fb.yaml");
    std::fs::write(
        &config,
        format!(
            "gateway: {{id: gw}}\napi:\n  bind: 127.0.0.1:{}\nstorage:\n  path: {}\n",
            free_port(),
            copy.display()
        ),
    )
    .unwrap();
    let mut a = args(None, config.clone());
    a.latest = true;
    let mut con = console();
    assert_eq!(cli::query(&a, &mut con).await, 0, "{}", text(&con.err));
    assert!(
        text(&con.err).contains("connection refused")
            && text(&con.err).contains("; reading the log file"),
        "{}",
        text(&con.err)
    );
    assert!(
        text(&con.out).lines().nth(1).unwrap().ends_with("  799 V"),
        "{}",
        text(&con.out)
    );

    // Export streams every page; NDJSON lines are rows.
    let out_file = dir.path().join("export.ndjson");
    let e = ExportArgs {
        target: Target {
            api: None,
            config: none.clone(),
            token: None,
        },
        device: Some("meter-1".into()),
        point: Some("voltage".into()),
        topic: None,
        from: None,
        to: Some((T0 + N * 1000).to_string()),
        format: ExportFormat::Ndjson,
        output: Some(out_file.clone()),
        db: Some(copy.clone()),
    };
    let mut con = console();
    assert_eq!(cli::export(&e, &mut con).await, 0, "{}", text(&con.err));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), N as usize);
    assert_eq!(lines[599]["value"], serde_json::json!(799.0));
    assert!(
        text(&con.err).starts_with("600 row(s) exported"),
        "{}",
        text(&con.err)
    );
    let mut csv = ExportArgs {
        format: ExportFormat::Csv,
        output: None,
        ..e
    };
    csv.point = Some("switch".into());
    let mut con = console();
    assert_eq!(cli::export(&csv, &mut con).await, 0);
    let out = text(&con.out);
    assert_eq!(out.lines().count(), 11, "{out}");
    assert!(
        !text(&con.err).contains('\r'),
        "no progress bar off a terminal"
    );

    // `-o` naming the log itself, or another SQLite file (the daemon's log while exporting through the API),
    // is refused before anything is written: it used to truncate the log and write the export into it.
    let other_db = dir.path().join("other.db");
    std::fs::copy(&copy, &other_db).unwrap();
    let reserve = dir.path().join(format!(
        "{}.reserve",
        copy.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&reserve, vec![0u8; 4096]).unwrap();
    for (out, why) in [
        (copy.clone(), "it is the log being exported"),
        (other_db.clone(), "it is an SQLite database"),
        (reserve.clone(), "the store's `.reserve` file"),
    ] {
        let clobber = ExportArgs {
            output: Some(out.clone()),
            ..csv.clone()
        };
        let mut con = console();
        assert_eq!(
            cli::export(&clobber, &mut con).await,
            2,
            "{}",
            text(&con.err)
        );
        assert!(text(&con.err).contains(why), "{}", text(&con.err));
    }
    assert!(
        std::fs::read(&other_db).unwrap() == before,
        "other.db was written to"
    );

    // Read-only: the copy was not written to.
    assert!(
        std::fs::read(&copy).unwrap() == before,
        "the copy was written to"
    );
    let reader = LogReader::open(&copy).unwrap();
    assert_eq!(reader.names().unwrap().len(), 3);
}

#[test]
fn a_reader_beside_a_running_writer_and_a_refused_file() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("log.db");
    let store = generate(&live);
    // The writer still runs: a read-only reader sees every committed row.
    let reader = LogReader::open(&live).unwrap();
    assert_eq!(reader.query(&voltage()).unwrap().len(), N as usize);
    store
        .append_blocking(reading(
            "meter-1",
            "voltage",
            T0 + N * 1000,
            "{\"value\":1}".into(),
            Some(1.0),
        ))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(reader.latest(&voltage()).unwrap()[0].num, Some(1.0));
    drop(reader);
    store.close().unwrap();

    // Not a log: refused, and not created.
    let missing = dir.path().join("nope.db");
    assert!(LogReader::open(&missing).is_err());
    assert!(!missing.exists());
    let other = dir.path().join("other.db");
    std::fs::write(&other, b"not a database at all, just text").unwrap();
    assert!(LogReader::open(&other).is_err());
}

fn free_port() -> u16 {
    crate::util::free_low_port()
}

/// Schema v3 adds the values of each index block. A v2 log (blocks without values) is migrated at open; its
/// old blocks still aggregate (their rows are read), and new blocks carry values.
#[test]
fn a_v2_log_is_upgraded_and_its_old_blocks_still_aggregate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let store = generate(&path);
    let before = buckets(&store, T0, T0 + N * 1000, 60_000);
    store.close().unwrap();
    // Back to v2: no `vals` column, no index on `streams` (v4), version 2.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "ALTER TABLE history DROP COLUMN vals; DROP INDEX streams_by_key;
         UPDATE meta SET value = 2 WHERE key = 'schema_version';",
    )
    .unwrap();
    let old_blocks: i64 = c
        .query_row("SELECT count(*) FROM history", [], |r| r.get(0))
        .unwrap();
    assert!(old_blocks > 0);
    drop(c);

    let opts = StoreOptions {
        index_rows: 10,
        index_keys_per_stream: 0,
        index_interval: Duration::from_millis(10),
        ..StoreOptions::default()
    };
    let store = Store::open_with(&cfg(&path), opts).unwrap();
    assert_eq!(buckets(&store, T0, T0 + N * 1000, 60_000), before);
    // One more minute, indexed with values.
    let more: Vec<LogRecord> = (N..N + 60)
        .map(|i| {
            let v = 200.0 + i as f64;
            reading(
                "meter-1",
                "voltage",
                T0 + i * 1000,
                format!("{{\"value\":{v}}}"),
                Some(v),
            )
        })
        .collect();
    store.append_batch_blocking(more).unwrap().wait().unwrap();
    // A few single appends so that an index pass runs after the batch.
    for i in 0..3 {
        store
            .append_blocking(LogRecord::new(format!("other/{i}"), "x"))
            .unwrap()
            .wait()
            .unwrap();
    }
    let c =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let version: i64 = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, i64::from(fieldbridge::store::SCHEMA_VERSION));
    let (null, with): (i64, i64) = c
        .query_row(
            "SELECT count(*) - count(vals), count(vals) FROM history",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(null, old_blocks, "old blocks keep no values");
    assert!(with > 0, "new blocks carry values");
    drop(c);
    let after = buckets(&store, T0, T0 + (N + 60) * 1000, 60_000);
    assert_eq!(after[..10], before[..]);
    assert_eq!(
        (after[10].count, after[10].first, after[10].last),
        (60, 800.0, 859.0)
    );
    store.close().unwrap();
}
