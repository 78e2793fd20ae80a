//! Checking a log file and salvaging a damaged one.
//!
//! A damaged database is never repaired in place and never deleted: it is renamed to
//! `<db>.corrupt-<UTC time>` (its `-wal`/`-shm` with it, so SQLite still pairs them), and what can be read
//! from it is copied into a new log built next to it (`<db>.salvage-tmp`, renamed to `<db>` once complete
//! and synced: a crash mid-salvage leaves the moved-aside file and no half-built log).
//!
//! Reading a damaged b-tree: rows are read by seq range (`seq BETWEEN a AND b`, a rowid range, so each
//! query descends the tree once). A range whose read fails is split in halves, down to single seqs, so a
//! damaged page costs only the rows on it; the seqs of unreadable ranges are counted as lost (an upper
//! bound: some may have been gaps). The bounds come from `min/max(seq)`, else `meta.last_seq`. Cursors and
//! `meta.last_seq` are copied when readable, so bridges resume where they were and seqs are never reused.
//! The history index is rebuilt from the rows as they are copied.
//!
//! SQLite's recovery extension (page-level, which also reads rows whose b-tree interior pages are gone) is
//! not part of rusqlite's bundled build; a file whose first page is overwritten (no schema) yields nothing.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::error::StoreError;
use super::schema::{self, StoreOptions};

/// Seqs per read (a range that fails is split in halves).
const CHUNK: u64 = 4096;
/// Rows per write transaction in the new log (a few MiB).
const TXN_ROWS: u64 = 200_000;
/// When the bounds of the log cannot be read: seqs scanned past the last row found before giving up.
const GIVE_UP: u64 = 1 << 20;
const READ_SQL: &str =
    "SELECT seq, ts, topic, payload, qos, retain, props, device, point, num FROM messages \
                        WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq";

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The file checked.
    pub path: PathBuf,
    /// `None` if `PRAGMA quick_check` said ok; else the first problem.
    pub problem: Option<String>,
    /// Rows (when countable).
    pub rows: Option<u64>,
    /// Lowest and highest seq (when readable).
    pub seqs: Option<(u64, u64)>,
    /// Bridge cursors (when readable).
    pub cursors: Vec<(String, u64)>,
}

/// What a salvage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvageReport {
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
    /// Rows copied into the new log.
    pub rows_salvaged: u64,
    /// Seqs in ranges that could not be read (an upper bound of the rows lost).
    pub seqs_lost: u64,
    /// Failed range reads (each one a damaged page or more).
    pub damaged_ranges: u64,
    /// Bridge cursors copied.
    pub cursors: u64,
    /// Whether the cursors could be read (if not, bridges start at the head of the new log).
    pub cursors_readable: bool,
    /// Rows of the embedded broker's state (retained messages, persistent sessions) copied.
    pub broker_state: u64,
    /// The highest seq of the new log (`meta.last_seq`).
    pub last_seq: u64,
    /// How long it took.
    pub took: Duration,
}

impl std::fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows salvaged, up to {} lost in {} damaged ranges, {} cursors{}, {} broker state rows \
             (retained messages, sessions), last seq {}, in {:.1} s; the damaged file is kept as {}",
            self.rows_salvaged,
            self.seqs_lost,
            self.damaged_ranges,
            self.cursors,
            if self.cursors_readable {
                ""
            } else {
                " (cursor table unreadable: bridges start at the head)"
            },
            self.broker_state,
            self.last_seq,
            self.took.as_secs_f64(),
            self.moved_to.display()
        )
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens a file for reading only what it holds (no integrity check, nothing written but SQLite's `-shm`).
fn open_source(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "cache_size", -16384)?;
    Ok(conn)
}

/// `fieldbridge store check`: `PRAGMA quick_check` plus what can be counted. Does not write the file (beyond
/// SQLite replaying its WAL into the `-shm` index). Must not run while a daemon writes it (the caller holds
/// the lock).
pub fn check(path: &Path) -> Result<CheckReport, StoreError> {
    if !path.exists() {
        return Err(StoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mut report = CheckReport {
        path: path.to_path_buf(),
        problem: None,
        rows: None,
        seqs: None,
        cursors: Vec::new(),
    };
    // Declared before the connection, so dropped after it: the WAL keeps its name whatever SQLite does at
    // close.
    let _restore = RestoreWal::protect(path);
    let conn = match open_source(path) {
        Ok(c) => c,
        Err(e) => {
            report.problem = Some(e.to_string());
            return Ok(report);
        }
    };
    // Another program's database, or an empty file, is not a log that checked out fine (`run` and `query`
    // refuse both; `check` said "ok").
    match schema::schema_version(&conn, path) {
        Ok(0) => {
            report.problem = Some(format!("{} (an empty file: no tables)", schema::NOT_OURS));
            return Ok(report);
        }
        Ok(_) => {}
        Err(StoreError::Corrupt { detail, .. }) => {
            report.problem = Some(detail);
            return Ok(report);
        }
        Err(e) => {
            report.problem = Some(e.to_string());
            return Ok(report);
        }
    }
    report.problem = match schema::quick_check(&conn, path) {
        Ok(()) => None,
        Err(StoreError::Corrupt { detail, .. }) => Some(detail),
        Err(e) => Some(e.to_string()),
    };
    report.seqs = conn
        .query_row("SELECT min(seq), max(seq) FROM messages", [], |r| {
            Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .ok()
        .and_then(|(a, b)| Some((a?.max(0) as u64, b?.max(0) as u64)));
    report.rows = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
        .ok()
        .map(|n| n.max(0) as u64);
    report.cursors = read_cursors(&conn).unwrap_or_default();
    Ok(report)
}

fn read_cursors(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut st = conn.prepare("SELECT bridge, seq FROM cursors ORDER BY bridge")?;
    let v = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(v)
}

/// `<db>.corrupt-<UTC time>` (a free name).
fn aside_name(path: &Path) -> PathBuf {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let t: String = t.chars().filter(|c| *c != ':' && *c != '-').collect();
    let base = with_suffix(path, &format!(".corrupt-{t}"));
    let mut p = base.clone();
    let mut i = 1;
    while p.exists() {
        p = with_suffix(&base, &format!("-{i}"));
        i += 1;
    }
    p
}

/// Moves `path` (and its `-wal`, `-shm`) aside and builds a new log at `path` from what can be read.
/// The caller holds the store's lock.
pub fn move_aside_and_salvage(path: &Path) -> Result<SalvageReport, StoreError> {
    let aside = aside_name(path);
    // The WAL the writer gave a second name when it found the damage: back under its name if SQLite deleted
    // it at the stop, else the extra name goes.
    let kept = schema::kept_wal_path(path);
    if kept.exists() {
        let wal = with_suffix(path, "-wal");
        if wal.exists() {
            let _ = std::fs::remove_file(&kept);
        } else {
            let _ = std::fs::rename(&kept, &wal);
        }
    }
    for suffix in ["-wal", "-shm"] {
        let from = with_suffix(path, suffix);
        if from.exists() {
            std::fs::rename(&from, with_suffix(&aside, suffix)).map_err(io(&from))?;
        }
    }
    std::fs::rename(path, &aside).map_err(io(path))?;
    tracing::warn!(
        path = %path.display(),
        "store: moved the damaged log aside to {}; salvaging what can be read from it",
        aside.display()
    );
    let mut report = salvage_into(&aside, path)?;
    report.moved_to = aside;
    Ok(report)
}

/// `a-b,c-d`: the seqs missing between the lowest and the highest in `messages` (one pass over the keys).
fn seq_gaps(conn: &Connection) -> rusqlite::Result<String> {
    let mut st = conn.prepare("SELECT seq FROM messages ORDER BY seq")?;
    let mut rows = st.query([])?;
    let mut prev: Option<i64> = None;
    let mut out = String::new();
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        if let Some(p) = prev {
            if seq > p + 1 {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(&format!("{}-{}", p + 1, seq - 1));
            }
        }
        prev = Some(seq);
    }
    Ok(out)
}

/// Puts a damaged log's WAL back under its name when salvage is done with it (see [`salvage_into`]).
struct RestoreWal {
    wal_kept: bool,
    wal: PathBuf,
    kept: PathBuf,
}

impl RestoreWal {
    /// Gives `db`'s WAL a second name until dropped (SQLite deletes a WAL when its last connection closes).
    fn protect(db: &Path) -> RestoreWal {
        let wal = with_suffix(db, "-wal");
        let kept = with_suffix(db, "-wal.kept");
        let _ = std::fs::remove_file(&kept);
        let wal_kept = wal.exists() && std::fs::hard_link(&wal, &kept).is_ok();
        RestoreWal {
            wal_kept,
            wal,
            kept,
        }
    }
}

impl Drop for RestoreWal {
    fn drop(&mut self) {
        if !self.wal_kept {
            return;
        }
        if self.wal.exists() {
            let _ = std::fs::remove_file(&self.kept);
        } else {
            let _ = std::fs::rename(&self.kept, &self.wal);
        }
    }
}

/// Copies what can be read from `src` into a new log at `dst` (built as `<dst>.salvage-tmp`, renamed when
/// complete). `dst` must not exist.
pub fn salvage_into(src: &Path, dst: &Path) -> Result<SalvageReport, StoreError> {
    let started = Instant::now();
    let tmp = with_suffix(dst, ".salvage-tmp");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(with_suffix(&tmp, suffix));
    }
    let out = new_log(&tmp)?;
    let oe = |e: rusqlite::Error| StoreError::Open {
        path: tmp.clone(),
        source: e,
    };
    let mut report = SalvageReport {
        moved_to: src.to_path_buf(),
        rows_salvaged: 0,
        seqs_lost: 0,
        damaged_ranges: 0,
        cursors: 0,
        cursors_readable: false,
        broker_state: 0,
        last_seq: 0,
        took: Duration::ZERO,
    };
    let mut copier = Copier::new(&out);
    let mut max_seen = 0u64;
    // SQLite deletes a WAL when its last connection closes, and one beside a database it cannot read as ours
    // (emptied, header overwritten) is dropped without being replayed: a second name keeps its frames.
    let _restore = RestoreWal::protect(src);
    match open_source(src) {
        Ok(conn) => {
            let bounds: Option<(Option<i64>, Option<i64>)> = conn
                .query_row("SELECT min(seq), max(seq) FROM messages", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .ok();
            let meta_last: Option<i64> = conn
                .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                    r.get(0)
                })
                .optional()
                .ok()
                .flatten();
            let (lo, hi) = match bounds {
                Some((Some(lo), Some(hi))) => (lo.max(1) as u64, hi.max(0) as u64),
                // An empty table, read without error.
                Some((None, None)) => (1, 0),
                // Unreadable bounds: from seq 1 to the last seq recorded (or far beyond: empty ranges are
                // cheap to read).
                _ => (1, meta_last.map_or(1 << 32, |m| m.max(0) as u64)),
            };
            // Without the schema (its page damaged) there is no table to read rows from.
            let readable = conn
                .prepare_cached(READ_SQL)
                .map_err(|e| {
                    tracing::warn!(
                        "store salvage: no readable `messages` table in {} ({e})",
                        src.display()
                    )
                })
                .is_ok();
            // With unknown bounds, stop after a long stretch in which nothing at all could be read.
            let guessed = bounds.is_none_or(|b| b.1.is_none()) && meta_last.is_none();
            let mut a = lo;
            let mut last_found = lo;
            while readable && a <= hi {
                let b = hi.min(a.saturating_add(CHUNK - 1));
                let before = report.rows_salvaged;
                copier.range(&conn, a, b, &mut report).map_err(oe)?;
                if report.rows_salvaged > before {
                    last_found = b;
                }
                if guessed && b - last_found > GIVE_UP {
                    break;
                }
                a = b + 1;
            }
            max_seen = copier.max_seq.max(meta_last.unwrap_or(0).max(0) as u64);
            if bounds.is_some_and(|b| b.1.is_some()) {
                max_seen = max_seen.max(hi);
            }
            match read_cursors(&conn) {
                Ok(cursors) => {
                    report.cursors_readable = true;
                    report.cursors = cursors.len() as u64;
                    copier.finish().map_err(oe)?;
                    let mut st = out
                        .prepare("INSERT INTO cursors (bridge, seq) VALUES (?1, ?2)")
                        .map_err(oe)?;
                    for (name, seq) in cursors {
                        st.execute(params![name, seq.min(max_seen) as i64])
                            .map_err(oe)?;
                    }
                }
                Err(e) => {
                    tracing::warn!("store salvage: the cursor table is unreadable ({e})");
                }
            }
            copier.finish().map_err(oe)?;
            report.broker_state = copy_broker_state(&conn, &out).map_err(oe)?;
        }
        Err(e) => {
            tracing::warn!(
                "store salvage: {} cannot be read at all ({e})",
                src.display()
            );
        }
    }
    copier.finish().map_err(oe)?;
    drop(copier);
    out.execute(
        "UPDATE meta SET value = ?1 WHERE key IN ('last_seq', 'indexed_seq')",
        [max_seen as i64],
    )
    .map_err(oe)?;
    // The seqs missing between the oldest and the newest row kept, so the new log counts its rows exactly
    // (it counts the seq range otherwise) until eviction has passed them.
    let gaps = seq_gaps(&out).map_err(oe)?;
    if !gaps.is_empty() {
        out.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('gaps', ?1)",
            [gaps],
        )
        .map_err(oe)?;
    }
    drop(out);
    // Durable before it replaces anything.
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, dst).map_err(io(dst))?;
    if let Some(dir) = dst.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    report.last_seq = max_seen;
    report.took = started.elapsed();
    Ok(report)
}

/// Copies the broker's state rows (a log from before schema v2 has none) as far as they can be read: a
/// damaged page ends the copy, what came before it is kept. The number copied.
fn copy_broker_state(src: &Connection, out: &Connection) -> rusqlite::Result<u64> {
    let has_table = src
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'broker_state'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0)
        > 0;
    if !has_table {
        return Ok(0);
    }
    let mut ins =
        out.prepare("INSERT OR REPLACE INTO broker_state (kind, key, value) VALUES (?1, ?2, ?3)")?;
    let mut n = 0;
    let Ok(mut st) = src.prepare("SELECT kind, key, value FROM broker_state") else {
        tracing::warn!("store salvage: the broker state table is unreadable");
        return Ok(0);
    };
    let mut rows = st.query([])?;
    out.execute_batch("BEGIN")?;
    loop {
        let row = rows.next().and_then(|r| {
            r.map(|r| {
                Ok::<_, rusqlite::Error>((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .transpose()
        });
        match row {
            Ok(Some((kind, key, value))) => {
                ins.execute(params![kind, key, value])?;
                n += 1;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(
                    "store salvage: broker state partly unreadable ({e}); {n} rows copied"
                );
                break;
            }
        }
    }
    out.execute_batch("COMMIT")?;
    Ok(n)
}

/// A new, empty log (schema of this build) without a journal: it is a scratch file until renamed.
fn new_log(path: &Path) -> Result<Connection, StoreError> {
    let oe = |e| StoreError::Open {
        path: path.to_path_buf(),
        source: e,
    };
    let mut conn = Connection::open(path).map_err(oe)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(oe)?;
    conn.pragma_update(None, "journal_mode", "OFF")
        .map_err(oe)?;
    conn.pragma_update(None, "synchronous", "OFF").map_err(oe)?;
    conn.pragma_update(None, "cache_size", -65536).map_err(oe)?;
    schema::migrate(&mut conn, path, schema::MIGRATIONS)?;
    Ok(conn)
}

/// Copies rows into the new log, building the stream dictionary and the history index as it goes.
struct Copier<'c> {
    out: &'c Connection,
    streams: HashMap<(String, Option<String>, Option<String>), i64>,
    keys: Vec<super::writer::IndexKey>,
    in_txn: u64,
    max_seq: u64,
}

type RawRow = (
    i64,
    i64,
    String,
    Vec<u8>,
    i64,
    bool,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<f64>,
);

impl<'c> Copier<'c> {
    fn new(out: &'c Connection) -> Copier<'c> {
        Copier {
            out,
            streams: HashMap::new(),
            keys: Vec::new(),
            in_txn: 0,
            max_seq: 0,
        }
    }

    /// Copies `a..=b`; a failed read is split in halves down to single seqs, which are then counted lost.
    fn range(
        &mut self,
        src: &Connection,
        a: u64,
        b: u64,
        report: &mut SalvageReport,
    ) -> rusqlite::Result<()> {
        let mut stack = vec![(a, b)];
        while let Some((a, b)) = stack.pop() {
            match read_range(src, a, b) {
                Ok(rows) => {
                    for r in rows {
                        self.insert(r)?;
                        report.rows_salvaged += 1;
                    }
                }
                Err(_) if a == b => {
                    report.seqs_lost += 1;
                    report.damaged_ranges += 1;
                }
                Err(_) => {
                    let mid = a + (b - a) / 2;
                    // Lower half first (a stack: push the upper half first).
                    stack.push((mid + 1, b));
                    stack.push((a, mid));
                }
            }
        }
        Ok(())
    }

    fn insert(&mut self, r: RawRow) -> rusqlite::Result<()> {
        if self.in_txn == 0 {
            self.out.execute_batch("BEGIN")?;
        }
        let key = (r.2.clone(), r.7.clone(), r.8.clone());
        let stream = match self.streams.get(&key) {
            Some(id) => *id,
            None => {
                let id = self.streams.len() as i64 + 1;
                self.out
                    .prepare_cached(
                        "INSERT INTO streams (id, topic, device, point) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![id, key.0, key.1, key.2])?;
                self.streams.insert(key, id);
                id
            }
        };
        self.out
            .prepare_cached(
                "INSERT INTO messages (seq, ts, topic, payload, qos, retain, props, device, point, num, stream) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                r.0,
                r.1,
                r.2,
                r.3,
                r.4.clamp(0, 2),
                r.5,
                r.6,
                r.7,
                r.8,
                r.9,
                stream
            ])?;
        self.keys.push((stream, r.1, r.0, r.9.unwrap_or(f64::NAN)));
        self.max_seq = self.max_seq.max(r.0.max(0) as u64);
        self.in_txn += 1;
        if self.in_txn >= TXN_ROWS {
            self.finish()?;
        }
        Ok(())
    }

    /// Writes the history blocks of the rows copied so far and commits.
    fn finish(&mut self) -> rusqlite::Result<()> {
        if self.in_txn == 0 {
            return Ok(());
        }
        super::writer::insert_history(self.out, &mut self.keys, true)?;
        self.keys.clear();
        self.out.execute_batch("COMMIT")?;
        self.in_txn = 0;
        Ok(())
    }
}

fn read_range(src: &Connection, a: u64, b: u64) -> rusqlite::Result<Vec<RawRow>> {
    let mut st = src.prepare_cached(READ_SQL)?;
    let rows = st.query_map(params![a as i64, b as i64], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
        ))
    })?;
    rows.collect()
}

/// Options for opening right after a salvage: the new file was just built and synced.
pub(crate) fn after_salvage(opts: &StoreOptions) -> StoreOptions {
    StoreOptions {
        check_at_open: false,
        ..opts.clone()
    }
}

/// [`check`] for the command line: takes the store's lock first, so a running daemon's log is not checked
/// under its feet ([`StoreError::Locked`]).
pub fn check_file(path: &Path) -> Result<CheckReport, StoreError> {
    if !path.exists() {
        return check(path);
    }
    let _lock = schema::lock(path)?;
    check(path)
}

/// `fieldbridge store salvage`: with the lock held, checks the file and, if it is damaged (or `force`),
/// moves it aside and salvages it. `Ok(Err(report))`: the file is sound, nothing was done.
pub fn salvage_file(
    path: &Path,
    force: bool,
) -> Result<Result<SalvageReport, CheckReport>, StoreError> {
    let report = check(path)?;
    let _lock = schema::lock(path)?;
    if report.problem.is_none() && !force {
        return Ok(Err(report));
    }
    move_aside_and_salvage(path).map(Ok)
}
