//! Opening the database: connection settings, the integrity check, schema versions and migrations, and the
//! state the writer starts from.
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::error::StoreError;

/// How [`StoreError::Corrupt`] starts for a sound SQLite file of another application.
pub(crate) const NOT_OURS: &str = "not a fieldbridge store";

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 4;

/// One step of the schema history: brings a database from version `to - 1` to `to`. Steps run in order, each
/// in its own `BEGIN IMMEDIATE` transaction together with the `schema_version` update, so a failed step leaves
/// the database at the previous version.
pub(crate) struct Migration {
    /// The version after this step.
    pub to: u32,
    /// The DDL/DML of the step.
    pub apply: fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
}

/// The real history. v0 is "no `meta` table" (a new, empty file).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        to: 1,
        apply: v0_to_v1,
    },
    Migration {
        to: 2,
        apply: v1_to_v2,
    },
    Migration {
        to: 3,
        apply: v2_to_v3,
    },
    Migration {
        to: 4,
        apply: v3_to_v4,
    },
];

/// v4: the stream dictionary is searchable by its key, so the writer keeps only a bounded cache of it in
/// memory (a client publishing to ever new topics would otherwise grow the writer's map without end).
fn v3_to_v4(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("CREATE INDEX streams_by_key ON streams(topic, device, point);")
}

/// v3: the numeric values of each history block's keys (see `history.rs`), so that time buckets are computed
/// from the index without reading the rows. Blocks written before have none (NULL): queries read those rows.
fn v2_to_v3(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE history ADD COLUMN vals BLOB;")
}

/// v2: the embedded broker's state (retained messages, persistent sessions), next to the log so that it
/// commits in the same transactions and is backed up, checked and salvaged with it.
fn v1_to_v2(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE broker_state (
             kind  INTEGER NOT NULL,
             key   TEXT    NOT NULL,
             value BLOB    NOT NULL,
             PRIMARY KEY (kind, key)
         ) WITHOUT ROWID;",
    )
}

fn v0_to_v1(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         CREATE TABLE streams (
             id      INTEGER PRIMARY KEY,
             topic   TEXT NOT NULL,
             device  TEXT,
             point   TEXT
         );
         CREATE TABLE messages (
             seq     INTEGER PRIMARY KEY,
             ts      INTEGER NOT NULL,
             topic   TEXT    NOT NULL,
             payload BLOB    NOT NULL,
             qos     INTEGER NOT NULL,
             retain  INTEGER NOT NULL,
             props   BLOB,
             device  TEXT,
             point   TEXT,
             num     REAL,
             stream  INTEGER NOT NULL
         );
         CREATE TABLE history (
             stream  INTEGER NOT NULL,
             min_ts  INTEGER NOT NULL,
             max_ts  INTEGER NOT NULL,
             min_seq INTEGER NOT NULL,
             max_seq INTEGER NOT NULL,
             n       INTEGER NOT NULL,
             keys    BLOB    NOT NULL,
             PRIMARY KEY (stream, min_ts, min_seq)
         ) WITHOUT ROWID;
         CREATE INDEX history_max_seq ON history(max_seq);
         CREATE TABLE cursors (bridge TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
         INSERT INTO meta(key, value) VALUES ('last_seq', 0), ('indexed_seq', 0);",
    )
}

/// Tunables beyond [`crate::store::config::StorageConfig`]: for benchmarks and tests, not for operators.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Capacity of the writer's queue, in requests (a batch is one request). Default: twice `commit_rows`,
    /// within 1024..=65536.
    pub queue_capacity: Option<usize>,
    /// `PRAGMA max_page_count` on the writer connection: makes SQLite report SQLITE_FULL at that size, to
    /// simulate a full disk where no small file system can be mounted. Default: none.
    pub max_page_count: Option<u64>,
    /// How long without a new drop ends a drop episode (and logs its summary). Default 30 s.
    pub episode_quiet: Duration,
    /// First retry delay after a failed write (doubles up to `retry_max`). Default 100 ms.
    pub retry_min: Duration,
    /// Longest retry delay after failed writes. Default 5 s.
    pub retry_max: Duration,
    /// Run `PRAGMA quick_check` at open. Default true.
    pub check_at_open: bool,
    /// The history index is brought up to date when this long has passed since the last pass. Default 30 s.
    pub index_interval: Duration,
    /// ... or as soon as this many rows are not yet indexed. Default 100 000.
    pub index_rows: u64,
    /// ... but with many streams, not before this many keys per stream seen since the last pass (each pass
    /// writes a block per stream; with 15,000 streams, 100,000 rows make blocks of 7 keys and a pass rewrites
    /// most of the index's pages). Default 20.
    pub index_keys_per_stream: u64,
    /// ... and always at this many rows not yet indexed (the writer keeps 20 bytes per unindexed row; queries
    /// scan the unindexed rows). Default 300 000.
    pub index_rows_max: u64,
    /// A database that fails the integrity check at open is moved aside and salvaged (default true); if
    /// false, the open fails with [`StoreError::Corrupt`].
    pub salvage_at_open: bool,
    /// How often a full `PRAGMA quick_check` runs in the background while the store is open (throttled to
    /// about a fifth of the checkpointer thread's time, on its own connection, so commits do not wait).
    /// Damage it finds degrades the store like damage seen at a commit. Default 1 h; `None`: never.
    pub verify_interval: Option<Duration>,
    /// Index passes store the rows' numeric values with their keys (schema v3; default true). Off only to
    /// measure what that costs (`tools/query-bench`): queries then read the rows instead.
    pub index_values: bool,
    /// SQLite's page cache (`PRAGMA cache_size`) of the writer connection and of each read connection, in
    /// bytes. The store keeps the writer, at most 4 idle readers (bridges' drains, queries) and the
    /// checkpointer open, so SQLite's caches stay below about 6 times this. Default 1 MiB: the writer appends
    /// at the end of the log and readers scan forward, so pages are rarely needed twice; a miss is a read
    /// from the OS page cache, not from the disk.
    pub page_cache: u64,
    /// Most entries of the writer's in-memory cache of the stream dictionary (one per distinct
    /// `(topic, device, point)` recently written; about 100-150 bytes each). A stream not in the cache is looked
    /// up in the database. Default 65 536: more than the points of a large gateway, so readings never miss.
    pub stream_cache: usize,
}

/// `PRAGMA cache_size` takes KiB as a negative number; at least 64 KiB (SQLite's own floor is 10 pages).
pub(crate) fn cache_size_pragma(bytes: u64) -> i64 {
    -((bytes / 1024).clamp(64, 1 << 20) as i64)
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            queue_capacity: None,
            max_page_count: None,
            episode_quiet: Duration::from_secs(30),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            check_at_open: true,
            index_interval: Duration::from_secs(30),
            index_rows: 100_000,
            index_keys_per_stream: 20,
            index_rows_max: 300_000,
            salvage_at_open: true,
            verify_interval: Some(Duration::from_secs(3600)),
            index_values: true,
            page_cache: 1 << 20,
            stream_cache: 1 << 16,
        }
    }
}

/// What the writer needs to know about the log when it starts.
#[derive(Debug)]
pub(crate) struct OpenState {
    /// Highest seq ever assigned and committed (0 if none).
    pub head: u64,
    /// Lowest seq present, `head + 1` when the log is empty.
    pub oldest: u64,
    /// `meta.last_seq` as stored.
    pub meta_last_seq: u64,
    /// Cursors as stored.
    pub cursors: Vec<(String, u64)>,
    /// `meta.indexed_seq`: rows up to here have their `history` entries.
    pub indexed: u64,
    /// The next free stream id.
    pub next_stream: i64,
    /// `PRAGMA page_size`.
    pub page_size: u64,
    /// Seqs missing between `oldest` and `head` (`meta.gaps`, written by a salvage that lost rows), as
    /// sorted, disjoint inclusive ranges.
    pub gaps: Vec<(u64, u64)>,
}

/// Parses `meta.gaps`: `a-b,c-d` (inclusive ranges of seqs missing from the log).
pub(crate) fn parse_gaps(s: &str) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = s
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.trim().split_once('-')?;
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some((a, b))
        })
        .collect();
    v.sort_unstable();
    v
}

/// Seqs of `gaps` within `oldest..=head`.
pub(crate) fn gap_rows(gaps: &[(u64, u64)], oldest: u64, head: u64) -> u64 {
    gaps.iter()
        .map(|&(a, b)| {
            let (a, b) = (a.max(oldest), b.min(head));
            if a > b {
                0
            } else {
                b - a + 1
            }
        })
        .sum()
}

/// SQLite's error code, if `e` carries one.
pub(crate) fn sqlite_code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

fn map_open_err(path: &Path, e: rusqlite::Error) -> StoreError {
    match sqlite_code(&e) {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => StoreError::Open {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// The lock file that keeps a second fieldbridge from writing the same log.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The WAL file SQLite keeps next to the database.
/// `<db>.damaged-wal`: a second name the writer gives the WAL when it finds the log damaged (see
/// `salvage::move_aside_and_salvage`).
pub(crate) fn kept_wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".damaged-wal");
    PathBuf::from(s)
}

pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// Written when the store finds damage while running; the next start salvages the file (and removes it).
pub(crate) fn damaged_marker(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".damaged");
    PathBuf::from(s)
}

/// The reserve (ballast) file next to the database, released when the disk is full.
pub(crate) fn reserve_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".reserve");
    PathBuf::from(s)
}

/// Takes the exclusive lock next to the database (released when the file is closed, so also when the
/// process dies).
pub(crate) fn lock(path: &Path) -> Result<std::fs::File, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let lock = lock_path(path);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| StoreError::Io {
            path: lock.clone(),
            source,
        })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_path_buf(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io { path: lock, source }),
    }
}

/// Settings derived from the cap: the WAL is kept to a small share of it, so that it neither dominates a
/// small cap nor grows without bound between checkpoints.
pub(crate) fn wal_pages(max_bytes: u64, page_size: u64) -> u64 {
    (max_bytes / 32 / page_size).clamp(16, 1000)
}

/// Opens the writer connection: creates the file if needed, checks it, migrates it, and reads the state.
pub(crate) fn open_writer(
    path: &Path,
    synchronous_full: bool,
    max_bytes: u64,
    opts: &StoreOptions,
) -> Result<(Connection, OpenState), StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // An emptied database beside a WAL that holds frames is a damaged log (truncated under us), not a new
    // one: opening it as new would reset that WAL and lose what it holds.
    let db_len = std::fs::metadata(path).map_or(None, |m| Some(m.len()));
    let wal_len = std::fs::metadata(wal_path(path)).map_or(0, |m| m.len());
    if db_len == Some(0) && wal_len > 32 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("the database file is empty but its WAL holds {wal_len} bytes"),
        });
    }
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| map_open_err(path, e))?;
    let oe = |e| map_open_err(path, e);
    conn.busy_timeout(Duration::from_secs(5)).map_err(oe)?;
    let page_count: u64 = conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .map_err(oe)?;
    if page_count == 0 {
        // Only possible before the first table exists; lets `incremental_vacuum` give space back later.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(oe)?;
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(oe)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            source: rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode}, WAL required"
            )),
        });
    }
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )
    .map_err(oe)?;
    let page_size: u64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .map_err(oe)?;
    let wal = wal_pages(max_bytes, page_size);
    // Checkpoints run on the checkpointer thread (see the writer); this is the fallback if it cannot start.
    conn.pragma_update(None, "wal_autocheckpoint", wal)
        .map_err(oe)?;
    conn.pragma_update(None, "journal_size_limit", wal * page_size)
        .map_err(oe)?;
    conn.pragma_update(None, "cache_size", cache_size_pragma(opts.page_cache))
        .map_err(oe)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(oe)?;
    if let Some(n) = opts.max_page_count {
        conn.pragma_update(None, "max_page_count", n).map_err(oe)?;
    }
    if opts.check_at_open && page_count > 0 {
        quick_check(&conn, path)?;
    }
    migrate(&mut conn, path, MIGRATIONS)?;
    let state = read_state(&conn, page_size).map_err(oe)?;
    Ok((conn, state))
}

/// `PRAGMA quick_check`: every page readable, b-trees well formed, indexes of the right size. O(file), but
/// much cheaper than `integrity_check` (which also cross-checks index content) on a Pi's SD card.
pub(crate) fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check(1)")
        .map_err(|e| map_open_err(path, e))?;
    let first: String = stmt
        .query_row([], |r| r.get(0))
        .map_err(|e| map_open_err(path, e))?;
    if first == "ok" {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: first,
        })
    }
}

/// The version recorded in `meta`; 0 for a file without `meta`. A file with tables but no `meta` is not ours.
pub(crate) fn schema_version(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let oe = |e| map_open_err(path, e);
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )
        .map_err(oe)?;
    if !has_meta {
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(oe)?;
        if objects > 0 {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{NOT_OURS} (it has tables but no `meta` table)"),
            });
        }
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(oe)?;
    Ok(v.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32)
}

/// Brings the database to the last version of `migrations`. Returns the version it is at.
pub(crate) fn migrate(
    conn: &mut Connection,
    path: &Path,
    migrations: &[Migration],
) -> Result<u32, StoreError> {
    let supported = migrations.last().map_or(0, |m| m.to);
    let mut version = schema_version(conn, path)?;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported,
        });
    }
    let start = version;
    for m in migrations.iter().filter(|m| m.to > start) {
        let from = version;
        let err = |source| StoreError::Migration {
            path: path.to_path_buf(),
            from,
            to: m.to,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        (m.apply)(&tx).map_err(err)?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [m.to],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        if from == 0 {
            tracing::info!(path = %path.display(), "store: created a new log (schema v{})", m.to);
        } else {
            tracing::info!(path = %path.display(), "store: migrated schema v{from} -> v{}", m.to);
        }
        version = m.to;
    }
    Ok(version)
}

fn read_state(conn: &Connection, page_size: u64) -> rusqlite::Result<OpenState> {
    let meta_last: i64 =
        conn.query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
            r.get(0)
        })?;
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(seq), max(seq) FROM messages", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let meta_last_seq = meta_last.max(0) as u64;
    let head = meta_last_seq.max(max.unwrap_or(0).max(0) as u64);
    let oldest = min.map_or(head + 1, |m| m.max(0) as u64);
    let mut stmt = conn.prepare("SELECT bridge, seq FROM cursors ORDER BY bridge")?;
    let cursors = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let indexed: i64 = conn.query_row(
        "SELECT value FROM meta WHERE key = 'indexed_seq'",
        [],
        |r| r.get(0),
    )?;
    let max_stream: Option<i64> =
        conn.query_row("SELECT max(id) FROM streams", [], |r| r.get(0))?;
    let gaps: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'gaps'", [], |r| {
            r.get(0)
        })
        .ok();
    let gaps: Vec<(u64, u64)> = gaps
        .as_deref()
        .map(parse_gaps)
        .unwrap_or_default()
        .into_iter()
        .filter(|&(_, b)| b >= oldest)
        .collect();
    Ok(OpenState {
        head,
        oldest,
        meta_last_seq,
        cursors,
        indexed: indexed.max(0) as u64,
        next_stream: max_stream.unwrap_or(0).max(0) + 1,
        page_size,
        gaps,
    })
}

/// Opens the checkpointer's connection: it copies the WAL into the database file concurrently with the
/// writer (a PASSIVE checkpoint takes no write lock), with the writer's `synchronous` setting.
pub(crate) fn open_checkpointer(
    path: &Path,
    synchronous_full: bool,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// Opens a read connection (bridges' drains, history queries, stats). WAL lets it read the last committed
/// state while the writer writes; it never sees an open transaction.
pub(crate) fn open_reader(path: &Path, page_cache: u64) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "cache_size", cache_size_pragma(page_cache))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::{gap_rows, parse_gaps};

    #[test]
    fn gaps_parse_and_count_within_the_kept_range() {
        let g = parse_gaps("40-49, 7-9,x-3,12-11,100-100");
        assert_eq!(g, vec![(7, 9), (40, 49), (100, 100)]);
        assert_eq!(gap_rows(&g, 1, 200), 3 + 10 + 1);
        // Eviction past part of a gap: only what is still between oldest and head counts.
        assert_eq!(gap_rows(&g, 45, 200), 5 + 1);
        assert_eq!(gap_rows(&g, 101, 200), 0);
        assert_eq!(gap_rows(&g, 1, 8), 2);
    }
}
