//! The durable log (store-and-forward).
//!
//! One append-only log of messages in a SQLite database (bundled SQLite, WAL mode), a cursor per bridge, and
//! the rows serve history queries too: "what is buffered" and "what can be queried" are the same rows.
//!
//! # Format (schema v1)
//!
//! ```sql
//! messages(seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
//!          qos INTEGER NOT NULL, retain INTEGER NOT NULL, props BLOB, device TEXT, point TEXT, num REAL,
//!          stream INTEGER NOT NULL)                           -- the log: rowid = seq, append-only
//! streams(id INTEGER PRIMARY KEY, topic TEXT NOT NULL, device TEXT, point TEXT)   -- stream dictionary
//!   index streams_by_key(topic, device, point)                   -- (v4)
//! history(stream, min_ts, max_ts, min_seq, max_seq, n, keys BLOB,               -- the history index:
//!         PRIMARY KEY (stream, min_ts, min_seq)) WITHOUT ROWID                 --   blocks of (ts, seq) keys
//!   index history_max_seq(max_seq)
//! cursors(bridge TEXT PRIMARY KEY, seq INTEGER NOT NULL)      -- last seq delivered to each bridge
//! meta(key TEXT PRIMARY KEY, value)                           -- schema_version, last_seq, indexed_seq
//! ```
//!
//! - `ts` is unix milliseconds (the reading's time, or the arrival time of a publish); `num` is the numeric
//!   value of an adapter reading (NULL otherwise, and for NaN).
//! - `props` is NULL or a [`MsgProps`] blob: a format byte (1), then MQTT 5 property identifiers each followed
//!   by its value (u8; u32 big-endian; LEB128 length + bytes for strings and binary; user properties as two
//!   strings, in order). See [`MsgProps::encode_into`]. A new encoding would take a new format byte.
//! - A **stream** is one distinct `(topic, device, point)`; `messages.stream` points into the `streams`
//!   dictionary (which only grows; it holds one row per distinct stream ever seen). The writer keeps only
//!   the recently written streams in memory (`StoreOptions::stream_cache`) and looks others up by key.
//! - **The history index** serves both kinds of history query: by device/point (their streams) and by topic
//!   (exact, or a wildcard filter matched against the dictionary), with a time range, in `(ts, seq)` order.
//!   It is not a SQLite index on `messages`, on purpose. An index keyed by series costs one random page
//!   write per series *per commit*: with 1000 points, 1000 pages of 4 KiB go to the WAL and again to the
//!   database for each commit of a few hundred KiB of data. We measured 47x write amplification, which also
//!   means wear on an SD card, and 17k msgs/s. Each row's index entry also cost about 1 µs of the writer's
//!   time. Instead the writer keeps the new rows' keys (20 bytes a row) and, in passes, sorts them and
//!   stores them per stream as blocks of up to 128 keys (delta-encoded, 2-4 bytes a key; format in
//!   `history.rs`). One b-tree insert per block, and each index page written once per pass. A pass runs
//!   every 30 s, or once the unindexed rows make 20 keys per stream seen (at least 100 000 rows, at most
//!   300 000): a pass writes a block, so dirties a page, for every stream it saw, and with 15,000 streams a
//!   pass every 100 000 rows made blocks of 7 keys and rewrote most of the index each time (measured: the
//!   writer 10.8 % of a core at the cap, 7.4 % with the larger passes; README, *Footprint*).
//!   `meta.indexed_seq` says how far the index goes; a query decodes the blocks of its streams that overlap
//!   its time range and scans the few rows after `indexed_seq`. A block is deleted with its last row; keys
//!   of a block below the oldest row are skipped.
//! - The database is created with `auto_vacuum=INCREMENTAL` so free pages can be given back to the file system.
//!
//! # Invariants
//!
//! 1. **seq is assigned by the writer, strictly increasing, never reused.** The writer is the only process
//!    writing (a lock file `<db>.lock` keeps a second fieldbridge out, see [`StoreError::Locked`]); it binds
//!    seq itself and stores the highest seq committed in `meta.last_seq` in the same transaction, so rows
//!    deleted at the end of the log (even all of them) never give their seqs back, across restarts too.
//! 2. **The log is one contiguous range `oldest..=head`.** Rows are only ever deleted from the oldest end
//!    (age retention, cap retention, eviction), so row counts and per-bridge lags are subtractions.
//! 3. **A seq becomes visible only when committed.** Readers use their own WAL connections and never see an
//!    open transaction; [`Store::read_from`] and [`Store::query`] return committed rows only.
//! 4. **A cursor only moves forward**, and never past `head`.
//!
//! # Writing: group commit
//!
//! Appends go through a bounded queue to one writer thread, which inserts them into an open transaction with
//! a prepared statement and commits when the transaction is `commit_interval` old or holds `commit_rows`
//! rows (or about `max_bytes / 32` of data, at most 4 MiB, so one commit cannot overshoot a small cap),
//! whichever comes first. Checkpoints (copying the WAL into the database, with their fsyncs) run on a
//! separate checkpointer thread and connection, so they do not hold up commits. Each append gets a [`CommitTicket`] that resolves with the row's seq after
//! *its* transaction committed — `durability: strict` acknowledges QoS 1/2 publishes only then. A full
//! queue makes appenders wait (`append().await` yields; it does not block a tokio worker). Cursor moves are
//! kept in memory and written in the next commit (at most `commit_interval` later).
//!
//! After each commit the writer also keeps the committed rows in a small in-memory tail (at most 8,192 rows
//! and about 2 MiB, see `tail.rs`); [`Store::read_from`] answers from it when the rows asked for are there, so a
//! bridge that keeps up reads no SQLite at all. Rows enter the tail after their commit and leave it with their
//! deletion from the log: the tail answers exactly what the log would.
//!
//! # What a crash leaves behind, and the loss window
//!
//! - `kill -9`, panic, power cut: the WAL holds every committed transaction; SQLite replays it at the next
//!   open. Rows whose ticket resolved are there. Lost: rows in the open transaction and in the queue — at most
//!   one `commit_interval` (or `commit_rows`) of appends, none of them acknowledged.
//! - `synchronous: full` (default) fsyncs the WAL at each commit, so the above holds for power cuts too.
//!   `synchronous: normal` fsyncs only at checkpoints: a process crash loses nothing committed, but a power
//!   cut may also lose the commits since the last checkpoint, acknowledged ones included.
//! - A cursor may be up to one commit interval behind what the bridge had acknowledged: after a restart the
//!   bridge re-sends those rows (at-least-once; the bridge's in-flight window bounds the duplicates).
//! - The history index may lag the log (rows after `indexed_seq`): queries scan that tail, the next pass
//!   indexes it. Index and log never disagree otherwise: both change in the same transactions.
//! - The lock file `<db>.lock` and the reserve file `<db>.reserve` stay (the kernel released the lock with
//!   the process); `-wal`/`-shm` files are SQLite's.
//! - A clean stop ([`Store::close`], [`Store::shutdown`], or dropping the last handle) commits everything
//!   queued, writes the cursors and checkpoints the WAL into the database: nothing is left uncommitted.
//!
//! At open, `PRAGMA quick_check` runs (every page readable, b-trees sound); a database that fails it, or is
//! not a SQLite file, is moved aside and salvaged (see *Damage* below): it is never overwritten or deleted.
//! Schema migrations run at open, each step in its own transaction with the version
//! update; a database newer than this build is refused ([`StoreError::SchemaTooNew`]).
//!
//! # Cursors
//!
//! A cursor is the last seq delivered to a bridge; rows after it are its backlog. A bridge name seen for the
//! first time ([`Store::cursor`]) starts at the **current head**: a newly configured bridge gets what is logged
//! from then on, not the whole history (which may be a gigabyte). A bridge removed from the config must be
//! removed with [`Store::remove_cursor`], or its cursor keeps holding rows back from retention.
//!
//! # Retention and the cap
//!
//! - **Size** is measured, not estimated: pages in use in the database file
//!   (`(page_count - freelist_count) × page_size`: free pages are reusable space) plus the WAL file. The
//!   WAL is bounded by checkpoints (its budget, and `journal_size_limit`, are about 1/32 of `max_bytes`, 64 KiB
//!   to 4 MiB); a WAL held larger by a long read counts only up to that budget, because deleting rows would
//!   not shrink it. The writer measures after every commit, so the cap can be overshot by one group commit.
//!   Not counted: the reserve file (below) and SQLite's `-shm` (32 KiB per 4000 WAL pages).
//! - Over `max_bytes`, the writer deletes down to 95 % of it (8 MiB below it at most, so that a large cap is
//!   trimmed in short passes, between which appends go on): first rows every bridge has delivered (oldest
//!   first; with no bridge at all, every row counts as delivered — the log is then a rolling history); then, for
//!   undelivered rows, the `when_full` policy:
//!   `drop_oldest` evicts the oldest undelivered rows and moves lagging cursors past them, counting per bridge
//!   what it lost; `drop_newest` refuses new appends ([`StoreError::Full`]) until room is made;
//!   `block` stops taking appends (appenders wait on the full queue) until a cursor moves and retention frees
//!   room.
//! - **Age** (`max_age`): the longest prefix of the log whose rows are all older than `max_age` *and* delivered
//!   to every bridge is deleted (checked every `max_age / 20`, between 1 s and 60 s).
//! - Free pages beyond 1/8 of the cap are given back to the file system with `incremental_vacuum` (not after
//!   a recent disk-full episode: the space would only be fought over).
//! - Every dropped message is counted by reason ([`DropCounters`]); a drop episode is logged with one
//!   `error!` when it starts and one summary line when it has been quiet for 30 s — never a line per message.
//!
//! # Disk full
//!
//! A real `SQLITE_FULL` (ENOSPC) is treated as reaching the cap: the transaction is rolled back (SQLite
//! guarantees the database is intact), the rows are kept in memory, room is made the same way (delivered
//! rows first, then the policy), and the rows are written again. Deleting needs a little space too (WAL
//! frames, b-tree rebalancing), which a completely full disk does not have: the store keeps a reserve file
//! `<db>.reserve` (WAL budget + one commit + 256 KiB, so 1.25 MiB for a 16 MiB cap and 8.25 MiB for the
//! default 1 GiB — but never more than `max_bytes / 10`, nor more than 1/4 of the volume's free space when
//! the store opens) that it deletes at that moment, and takes back when space allows. If no room can be made,
//! the writer is *stalled*: it retries with backoff (100 ms .. 5 s, at once when a cursor moves); `block`
//! holds the rows and makes appenders wait; `drop_newest` refuses the rows and new appends (counted as
//! `newest`); `drop_oldest`, with nothing left to evict, refuses them (counted as `write_failed`). When space
//! returns the next retry succeeds and the writer resumes. Other write errors (I/O, a read-only file or file
//! system) stall the same way, without deleting, and each retry opens the database again (SQLite keeps a
//! file it could not write open read-only): when permission returns, the writer resumes without a restart.
//! A start on a completely full disk (SQLite cannot even map its `-shm`) releases the reserve and opens again.
//!
//! # Damage
//!
//! After every commit, before any ticket resolves, and every second, the writer checks the files under it
//! (cheap: two `stat`s and the 100-byte header): the database and its WAL still the same files (device,
//! inode), not deleted, the header still SQLite's with our page size, the file not shorter than the size its
//! header records. Any failure there, and any `SQLITE_CORRUPT`/`SQLITE_NOTADB` from a write, a maintenance
//! step or a read, puts the store in [`WriterState::Degraded`]: the commit that noticed it fails its
//! tickets, every append from then on is refused ([`StoreError::Damaged`], counted as `write_failed`), so a
//! strict publisher is never told a message is stored when it may not be; `/health` answers 503 with the
//! reason; one `error!` line says what happened and what to do. It lasts until a restart.
//!
//! At open, a database that fails the integrity check or is not a SQLite file is moved aside to
//! `<db>.corrupt-<UTC time>` (with its `-wal`/`-shm`), a new log is created and what can be read from the old
//! one is salvaged into it (see `salvage.rs`: rows by seq ranges, skipping damaged ones, and the cursors),
//! with the counts logged; then the store runs. `fieldbridge store check|salvage --db PATH` does the same by
//! hand.
//!
//! # Blocking
//!
//! [`Store::append`], [`Store::append_batch`], [`Store::flush`], [`Store::maintain`] and [`Store::shutdown`]
//! are async and never block a runtime thread. [`Store::read_from`], [`Store::query`] and [`Store::stats`] run
//! a SQLite query on the calling thread (a millisecond for a thousand rows): from async code call them
//! through `spawn_blocking` when they may be large. `*_blocking` methods and [`Store::close`] are for
//! threads outside the runtime.
pub mod config;
mod error;
mod history;
mod query;
mod reader;
mod record;
mod salvage;
mod schema;
mod stats;
mod streams;
mod tail;
mod writer;

#[cfg(test)]
pub(crate) mod tests;

use std::future::Future;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::store::config::{StorageConfig, Synchronous, WhenFull};

pub use error::StoreError;
pub use query::{
    check_buckets, Bucket, BucketQuery, LogReader, Reading, Series, MAX_BUCKETS, MAX_LATEST,
    MAX_SERIES,
};
pub use reader::{HistoryQuery, Order};
pub use record::{now_ms, LogRecord, LogRow, MsgProps};
pub use salvage::{
    check, check_file, move_aside_and_salvage, salvage_file, CheckReport, SalvageReport,
};
pub use schema::{StoreOptions, SCHEMA_VERSION};
pub use stats::{CursorStats, DropCounters, StoreStats, WriterState};

use stats::{Cursor, Shared};
use writer::{Ctl, Req, Settings, Writer};

/// The first 16 bytes of every SQLite database file (the log, a damaged one, any other).
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Smallest usable cap: the empty schema plus a WAL budget need about 100 KiB.
pub const MIN_MAX_BYTES: u64 = 256 * 1024;

/// Whether the volume holding `path` has less than 1/20 of its size (at least 2 MiB) free: space has not
/// come back since the disk was found full.
fn volume_nearly_full(path: &Path) -> bool {
    match volume_space(path) {
        Some((free, size)) => free < (size / 20).max(2 << 20),
        None => false,
    }
}

/// Bytes free (for an unprivileged writer) and total on the volume holding the file `path`; `None` when
/// the volume cannot be asked.
pub(crate) fn volume_space(path: &Path) -> Option<(u64, u64)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let v = rustix::fs::statvfs(dir).ok()?;
    Some((
        v.f_bavail.saturating_mul(v.f_frsize),
        v.f_blocks.saturating_mul(v.f_frsize),
    ))
}

/// How long after the disk was last found full `/health` says so, while space has not come back (see
/// [`Store::health`]).
pub const DISK_FULL_RECENT: std::time::Duration = std::time::Duration::from_secs(60);

/// What kind of broker state a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StateKind {
    /// A retained message, keyed by topic.
    Retained = 1,
    /// A persistent session, keyed by client id.
    Session = 2,
}

/// One change of the broker's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    /// Insert or replace.
    Put {
        /// Kind of row.
        kind: StateKind,
        /// Topic or client id.
        key: String,
        /// The encoded state.
        value: Vec<u8>,
    },
    /// Remove.
    Delete {
        /// Kind of row.
        kind: StateKind,
        /// Topic or client id.
        key: String,
    },
}

/// Resolves with the seq (or seq range, for a batch) once the transaction holding the row(s) has committed —
/// or with the reason it never will (refused under `drop_newest`, unwritable, store closed). Dropping the
/// ticket does not cancel the append (that is how `durability: relaxed` uses it).
#[must_use = "await the ticket for a durable acknowledgement, or drop it explicitly"]
#[derive(Debug)]
pub struct CommitTicket<T = u64> {
    rx: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T> Future for CommitTicket<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

impl<T> CommitTicket<T> {
    /// Waits for the commit on the current thread (for threads outside the async runtime).
    pub fn wait(self) -> Result<T, StoreError> {
        // `unconstrained`: called from inside a tokio task, a used-up cooperative budget would make the
        // ticket's receiver answer "pending, poll again" forever (this executor never gives the budget back).
        futures::executor::block_on(tokio::task::unconstrained(self))
    }
}

/// A handle to the store. Cheap to clone; every clone talks to the same writer thread. The store shuts down
/// cleanly (committing everything queued) when [`Store::close`]/[`Store::shutdown`] is called or the last
/// handle is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    policy: WhenFull,
    max_bytes: u64,
    data_tx: Option<mpsc::Sender<Req>>,
    ctl_tx: Option<mpsc::UnboundedSender<Ctl>>,
    shared: Arc<Shared>,
    readers: reader::Readers,
    appends: watch::Receiver<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the log at `cfg.path`: takes the lock, checks integrity, migrates the schema,
    /// applies the cap and age retention, and starts the writer thread. Blocking (the integrity check reads
    /// the whole file): call it before serving, or through `spawn_blocking`.
    pub fn open(cfg: &StorageConfig) -> Result<Store, StoreError> {
        Store::open_with(cfg, StoreOptions::default())
    }

    /// [`Store::open`] with tunables for benchmarks and tests.
    pub fn open_with(cfg: &StorageConfig, opts: StoreOptions) -> Result<Store, StoreError> {
        let path = cfg.path.clone();
        let max_bytes = if cfg.max_bytes < MIN_MAX_BYTES {
            tracing::warn!(
                "store: max_bytes {} is below the minimum; using {MIN_MAX_BYTES}",
                cfg.max_bytes
            );
            MIN_MAX_BYTES
        } else {
            cfg.max_bytes
        };
        let lock = schema::lock(&path)?;
        let sync_full = cfg.synchronous == Synchronous::Full;
        let marker = schema::damaged_marker(&path);
        let opened = match std::fs::read_to_string(&marker) {
            // Damage was found while the last run was writing: salvage whatever the file looks like now.
            Ok(why) if path.exists() && opts.salvage_at_open => Err(StoreError::Corrupt {
                path: path.clone(),
                detail: format!("damaged during the last run: {why}"),
            }),
            _ => schema::open_writer(&path, sync_full, max_bytes, &opts),
        };
        let _ = std::fs::remove_file(&marker);
        let mut salvage_lost = 0;
        let (conn, state) = match opened {
            // (Not a file of another application: that one is refused, never moved.)
            Err(StoreError::Corrupt { detail, .. })
                if opts.salvage_at_open && !detail.starts_with(schema::NOT_OURS) =>
            {
                // An unattended gateway must keep collecting: move the damaged file aside, salvage what it
                // holds into a new log, and run.
                tracing::error!(path = %path.display(), "store: the log is damaged ({detail})");
                let report = salvage::move_aside_and_salvage(&path)?;
                tracing::error!(path = %path.display(), "store: salvage done: {report}");
                salvage_lost = report.seqs_lost;
                schema::open_writer(&path, sync_full, max_bytes, &salvage::after_salvage(&opts))?
            }
            Err(
                e
                @ (StoreError::Open { .. } | StoreError::Io { .. } | StoreError::Migration { .. }),
            ) if release_reserve_file(&path) => {
                // A completely full disk: SQLite cannot even map its -shm. The reserve is there for this.
                tracing::warn!(
                    path = %path.display(),
                    "store: opening failed ({e}); released the reserve file and trying again"
                );
                schema::open_writer(&path, sync_full, max_bytes, &opts)?
            }
            r => r?,
        };
        let readers = reader::Readers::new(path.clone(), opts.page_cache);
        readers.with(|_| Ok(())).map_err(|e| match e {
            StoreError::Sqlite(source) => StoreError::Open {
                path: path.clone(),
                source,
            },
            e => e,
        })?;
        let shared = Arc::new(Shared::default());
        shared
            .dropped_damaged
            .store(salvage_lost, Ordering::Relaxed);
        {
            let mut t = shared.cursors.lock();
            for (name, seq) in &state.cursors {
                t.map.insert(
                    name.clone(),
                    Cursor {
                        seq: *seq,
                        durable: Some(*seq),
                        lost: 0,
                    },
                );
            }
        }
        let (watch_tx, appends) = watch::channel(state.head);
        let capacity = opts
            .queue_capacity
            .unwrap_or(cfg.commit_rows.saturating_mul(2).clamp(1024, 65536))
            .max(1);
        let (data_tx, data_rx) = mpsc::channel(capacity);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let settings = Settings {
            path: path.clone(),
            synchronous_full: cfg.synchronous == Synchronous::Full,
            wal_path: schema::wal_path(&path),
            policy: cfg.when_full,
            max_bytes,
            max_age: cfg.max_age,
            commit_interval: cfg.commit_interval,
            commit_rows: cfg.commit_rows.max(1),
            opts,
        };
        tracing::info!(
            path = %path.display(),
            rows = (state.head + 1)
                .saturating_sub(state.oldest)
                .saturating_sub(schema::gap_rows(&state.gaps, state.oldest, state.head)),
            head = state.head,
            cursors = state.cursors.len(),
            "store: opened"
        );
        // The writer logs where the code that opened the store logs (a scoped subscriber included).
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let writer = Writer::new(conn, state, settings, shared.clone(), watch_tx, lock);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || writer.run(data_rx, ctl_rx))
            })
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                policy: cfg.when_full,
                max_bytes,
                data_tx: Some(data_tx),
                ctl_tx: Some(ctl_tx),
                shared,
                readers,
                appends,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends one message. Returns once the writer's queue has taken it (waiting, without blocking the
    /// thread, while the queue is full — which under `when_full: block` lasts until room is made); the ticket
    /// resolves after the commit. Refused at once with [`StoreError::Full`] / [`StoreError::Unwritable`] when
    /// the policy says so (the refusal is counted).
    pub async fn append(&self, rec: LogRecord) -> Result<CommitTicket<u64>, StoreError> {
        check_record(&rec)?;
        self.admit(1)?;
        let (tx, rx) = oneshot::channel();
        self.send(Req::One(rec, tx), 1).await?;
        Ok(CommitTicket { rx })
    }

    /// [`Store::append`] for a row nobody will wait for (a reading, a relaxed publish): it commits with the
    /// next group commit, never earlier (an awaited row makes the writer commit as soon as its inbox drains).
    pub async fn append_relaxed(&self, rec: LogRecord) -> Result<(), StoreError> {
        check_record(&rec)?;
        self.admit(1)?;
        let (tx, rx) = oneshot::channel();
        drop(rx);
        self.send(Req::One(rec, tx), 1).await
    }

    /// Appends several messages as one unit: they get consecutive seqs and commit in the same transaction (or
    /// are refused together). For adapters producing many readings per poll.
    pub async fn append_batch(
        &self,
        recs: Vec<LogRecord>,
    ) -> Result<CommitTicket<RangeInclusive<u64>>, StoreError> {
        check_batch(&recs)?;
        let n = recs.len() as u64;
        self.admit(n)?;
        let (tx, rx) = oneshot::channel();
        self.send(Req::Batch(recs, tx), n).await?;
        Ok(CommitTicket { rx })
    }

    /// [`Store::append`] for threads outside the async runtime (panics if called from async code).
    pub fn append_blocking(&self, rec: LogRecord) -> Result<CommitTicket<u64>, StoreError> {
        check_record(&rec)?;
        self.admit(1)?;
        let (tx, rx) = oneshot::channel();
        self.send_blocking(Req::One(rec, tx), 1)?;
        Ok(CommitTicket { rx })
    }

    /// [`Store::append_batch`] for threads outside the async runtime (panics if called from async code).
    pub fn append_batch_blocking(
        &self,
        recs: Vec<LogRecord>,
    ) -> Result<CommitTicket<RangeInclusive<u64>>, StoreError> {
        check_batch(&recs)?;
        let n = recs.len() as u64;
        self.admit(n)?;
        let (tx, rx) = oneshot::channel();
        self.send_blocking(Req::Batch(recs, tx), n)?;
        Ok(CommitTicket { rx })
    }

    /// Commits everything appended before this call, now; resolves with the head seq.
    pub async fn flush(&self) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Req::Flush(tx), 0).await?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Queues broker state changes; they commit with the log's next transaction (within one commit interval).
    pub async fn save_state(&self, ops: Vec<StateOp>) -> Result<(), StoreError> {
        self.check_open()?;
        self.send(Req::State(ops), 0).await
    }

    /// The broker state saved so far, by kind: (key, value) pairs. Read from the committed database.
    pub fn load_state(&self, kind: StateKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.readers.with(|c| {
            let mut st =
                c.prepare("SELECT key, value FROM broker_state WHERE kind = ?1 ORDER BY key")?;
            let rows = st.query_map([kind as u8], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Runs retention now (age, cap, checkpoint, vacuum) instead of at the next timer tick; also retries a
    /// stalled write. Resolves when done.
    pub async fn maintain(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.ctl(Ctl::Maintain(tx))?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Up to `limit` committed rows with `seq > after_seq`, in seq order (what a bridge drains). Rows evicted
    /// or aged out are simply not there: the first row returned may be well after `after_seq + 1`.
    pub fn read_from(&self, after_seq: u64, limit: usize) -> Result<Vec<LogRow>, StoreError> {
        if limit == 0 || after_seq >= self.inner.shared.head.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        if let Some(rows) = self.read_recent(after_seq, limit) {
            return Ok(rows);
        }
        let r = self
            .inner
            .readers
            .with(|c| reader::read_from(c, after_seq, limit));
        self.seen(r)
    }

    /// What `read_from` returns, if the rows after `after_seq` are among the newest committed ones the writer
    /// keeps in memory (`None`: they must be read from the log). Never blocks on SQLite.
    pub fn read_recent(&self, after_seq: u64, limit: usize) -> Option<Vec<LogRow>> {
        self.check_open().ok()?;
        self.inner.shared.tail.lock().read(after_seq, limit)
    }

    /// The last committed seq, updated after every commit: a bridge waits on `changed()` instead of polling.
    /// The sender goes away when the store shuts down.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.inner.appends.clone()
    }

    /// The time (unix ms) of the oldest committed row after `seq`: for a bridge at cursor `seq`, the age of
    /// its backlog. `None` when there is none (or it cannot be read). A point lookup by rowid.
    pub fn oldest_ts_after(&self, seq: u64) -> Option<i64> {
        if seq >= self.inner.shared.head.load(Ordering::Acquire) {
            return None;
        }
        self.inner
            .readers
            .with(|c| reader::first_ts_after(c, seq))
            .ok()
            .flatten()
    }

    /// The last committed seq.
    pub fn head(&self) -> u64 {
        self.inner.shared.head.load(Ordering::Acquire)
    }

    /// The bridge's cursor (last seq delivered to it). A name seen for the first time gets a cursor at the
    /// current head (see the module docs), stored with the next commit.
    pub fn cursor(&self, bridge: &str) -> Result<u64, StoreError> {
        self.check_open()?;
        let mut t = self.inner.shared.cursors.lock();
        if let Some(c) = t.map.get(bridge) {
            return Ok(c.seq);
        }
        let head = self.inner.shared.head.load(Ordering::Acquire);
        t.map.insert(
            bridge.to_string(),
            Cursor {
                seq: head,
                durable: None,
                lost: 0,
            },
        );
        drop(t);
        tracing::info!(
            bridge,
            seq = head,
            "store: new bridge cursor, starting at the head of the log"
        );
        self.wake_writer();
        Ok(head)
    }

    /// Moves the bridge's cursor forward to `seq` (an older `seq` is ignored; one past the head is clamped).
    /// Stored with the next commit (within `commit_interval`).
    pub fn set_cursor(&self, bridge: &str, seq: u64) -> Result<(), StoreError> {
        self.check_open()?;
        let head = self.inner.shared.head.load(Ordering::Acquire);
        let mut t = self.inner.shared.cursors.lock();
        let c = t
            .map
            .get_mut(bridge)
            .ok_or_else(|| StoreError::UnknownCursor(bridge.to_string()))?;
        let seq = seq.min(head);
        if seq > c.seq {
            c.seq = seq;
            drop(t);
            self.wake_writer();
        }
        Ok(())
    }

    /// Forgets a bridge's cursor (a bridge removed from the config), so its backlog no longer holds rows back
    /// from retention. Returns whether it existed.
    pub fn remove_cursor(&self, bridge: &str) -> Result<bool, StoreError> {
        self.check_open()?;
        let mut t = self.inner.shared.cursors.lock();
        if t.map.remove(bridge).is_none() {
            return Ok(false);
        }
        t.removed.insert(bridge.to_string());
        drop(t);
        tracing::info!(bridge, "store: bridge cursor removed");
        self.wake_writer();
        Ok(true)
    }

    /// Gives bridge `from`'s cursor to bridge `to` (a bridge renamed in a reload keeps its backlog): `to`
    /// continues where `from` stopped, and `from` is removed. Nothing happens (`None`) when `from` has no cursor
    /// or `to` already has one.
    pub fn rename_cursor(&self, from: &str, to: &str) -> Result<Option<u64>, StoreError> {
        self.check_open()?;
        let mut t = self.inner.shared.cursors.lock();
        if t.map.contains_key(to) {
            return Ok(None);
        }
        let Some(c) = t.map.remove(from) else {
            return Ok(None);
        };
        let seq = c.seq;
        t.map.insert(
            to.to_string(),
            Cursor {
                seq,
                durable: None,
                lost: c.lost,
            },
        );
        t.removed.insert(from.to_string());
        t.removed.remove(to);
        drop(t);
        tracing::info!(from, to, seq, "store: bridge cursor renamed");
        self.wake_writer();
        Ok(Some(seq))
    }

    /// Every cursor, by name: to reconcile with the configured bridges at start.
    pub fn cursors(&self) -> Vec<(String, u64)> {
        let t = self.inner.shared.cursors.lock();
        let mut v: Vec<_> = t.map.iter().map(|(k, c)| (k.clone(), c.seq)).collect();
        v.sort();
        v
    }

    /// History query (CLI, HTTP API).
    pub fn query(&self, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
        let r = self.inner.readers.with(|c| reader::query(c, q));
        self.seen(r)
    }

    /// Time buckets of numeric readings (CLI `--every`, HTTP API `every=`).
    pub fn buckets(&self, q: &BucketQuery) -> Result<Vec<Series>, StoreError> {
        let r = self.inner.readers.with(|c| query::buckets(c, q));
        self.seen(r)
    }

    /// Time and value of the readings the filters of `q` select, from the index (no row reads).
    pub fn readings(&self, q: &HistoryQuery) -> Result<Vec<Reading>, StoreError> {
        let r = self.inner.readers.with(|c| query::readings(c, q));
        self.seen(r)
    }

    /// The most recently logged row of every stream the filters of `q` select.
    pub fn latest(&self, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
        let r = self.inner.readers.with(|c| query::latest(c, q));
        self.seen(r)
    }

    /// `(device, point)` pairs in the log's dictionary.
    pub fn names(&self) -> Result<Vec<(String, String)>, StoreError> {
        let r = self.inner.readers.with(query::names);
        self.seen(r)
    }

    /// A read that found the database corrupt puts the store in the degraded state (the writer is told).
    fn seen<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Sqlite(e)) = &r {
            if writer::is_corrupt(e) {
                let _ = self.ctl(Ctl::Damaged(format!("a read failed: {e}")));
            }
        }
        r
    }

    /// The writer's state and, when it is stalled or degraded, why. Cheap (no SQLite query): for `/health`.
    /// (A `Normal` or `Full` state with a reason: a recent full disk, see [`DISK_FULL_RECENT`].)
    pub fn health(&self) -> (WriterState, Option<String>) {
        let sh = &self.inner.shared;
        let st = sh.state();
        let why = match st {
            WriterState::Degraded => sh.damage.lock().clone(),
            WriterState::Stalled => sh.last_error.lock().clone(),
            // Writing again, but the volume filled up before the log reached `max_bytes` within the last
            // minute: `drop_oldest` made room by evicting undelivered rows. Not healthy, though not stalled.
            WriterState::Normal | WriterState::Full => (*sh.disk_full_at.lock())
                .filter(|t| t.elapsed() < DISK_FULL_RECENT && volume_nearly_full(self.path()))
                .map(|t| {
                    format!(
                        "the disk was full {} s ago, before the log reached max_bytes: the oldest rows are \
                         evicted to make room (free space on the volume, or lower storage.max_bytes)",
                        t.elapsed().as_secs()
                    )
                }),
        };
        (st, why)
    }

    /// A snapshot of sizes, positions, lags and counters.
    pub fn stats(&self) -> StoreStats {
        let sh = &self.inner.shared;
        let head = sh.head.load(Ordering::Acquire);
        let oldest = sh.oldest.load(Ordering::Acquire);
        let rows = (head + 1)
            .saturating_sub(oldest)
            .saturating_sub(sh.gap_rows.load(Ordering::Acquire));
        let (oldest_ts_ms, newest_ts_ms) = if rows > 0 {
            self.inner
                .readers
                .with(|c| Ok((reader::ts_of(c, oldest)?, reader::ts_of(c, head)?)))
                .unwrap_or((None, None))
        } else {
            (None, None)
        };
        let mut cursors: Vec<CursorStats> = sh
            .cursors
            .lock()
            .map
            .iter()
            .map(|(name, c)| CursorStats {
                bridge: name.clone(),
                seq: c.seq,
                lag_rows: head.saturating_sub(c.seq.max(oldest.saturating_sub(1))),
                lost_rows: c.lost,
            })
            .collect();
        cursors.sort_by(|a, b| a.bridge.cmp(&b.bridge));
        StoreStats {
            path: self.inner.path.clone(),
            rows,
            bytes_on_disk: sh.bytes_on_disk.load(Ordering::Relaxed),
            bytes_used: sh.bytes_used.load(Ordering::Relaxed),
            wal_bytes: sh.wal_bytes.load(Ordering::Relaxed),
            max_bytes: self.inner.max_bytes,
            oldest_seq: (rows > 0).then_some(oldest),
            oldest_ts_ms,
            newest_seq: (rows > 0).then_some(head),
            newest_ts_ms,
            head_seq: head,
            cursors,
            dropped: sh.dropped(),
            removed_by_age: sh.removed_age.load(Ordering::Relaxed),
            removed_for_space: sh.removed_space.load(Ordering::Relaxed),
            queue_depth: sh.queued_rows.load(Ordering::Relaxed),
            commits: sh.commits.load(Ordering::Relaxed),
            rows_committed: sh.rows_committed.load(Ordering::Relaxed),
            state: sh.state(),
            last_error: sh.last_error.lock().clone(),
            damage: sh.damage.lock().clone(),
        }
    }

    /// Graceful shutdown from async code: commits everything queued, stores the cursors, checkpoints, stops
    /// the writer. Other handles then get [`StoreError::Closed`]. Idempotent.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.ctl(Ctl::Shutdown(tx)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Graceful shutdown from a plain thread: as [`Store::shutdown`], then waits for the writer thread to end
    /// (the lock file is free when this returns).
    pub fn close(self) -> Result<(), StoreError> {
        // `unconstrained`: see `CommitTicket::wait` (a test calling `close` from a tokio task spun here).
        let r = futures::executor::block_on(tokio::task::unconstrained(self.shutdown()));
        self.inner.join();
        self.inner.readers.clear();
        r
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.shared.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// The policy at the door: refusals happen here, without queueing (and are counted).
    fn admit(&self, n: u64) -> Result<(), StoreError> {
        let sh = &self.inner.shared;
        self.check_open()?;
        let last_error = || {
            sh.last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "write failed".into())
        };
        match (sh.state(), self.inner.policy) {
            (WriterState::Degraded, _) => {
                sh.dropped_write_failed.fetch_add(n, Ordering::Relaxed);
                Err(StoreError::Damaged(
                    sh.damage.lock().clone().unwrap_or_else(|| "damaged".into()),
                ))
            }
            (WriterState::Normal, _)
            | (_, WhenFull::Block)
            | (WriterState::Full, WhenFull::DropOldest) => Ok(()),
            (WriterState::Full, WhenFull::DropNewest) => {
                sh.dropped_newest.fetch_add(n, Ordering::Relaxed);
                Err(StoreError::Full)
            }
            (WriterState::Stalled, WhenFull::DropNewest) => {
                sh.dropped_newest.fetch_add(n, Ordering::Relaxed);
                Err(StoreError::Unwritable(last_error()))
            }
            (WriterState::Stalled, WhenFull::DropOldest) => {
                sh.dropped_write_failed.fetch_add(n, Ordering::Relaxed);
                Err(StoreError::Unwritable(last_error()))
            }
        }
    }

    async fn send(&self, req: Req, rows: u64) -> Result<(), StoreError> {
        let tx = self.inner.data_tx.as_ref().ok_or(StoreError::Closed)?;
        self.inner
            .shared
            .queued_rows
            .fetch_add(rows, Ordering::Relaxed);
        if tx.send(req).await.is_err() {
            self.inner
                .shared
                .queued_rows
                .fetch_sub(rows, Ordering::Relaxed);
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn send_blocking(&self, req: Req, rows: u64) -> Result<(), StoreError> {
        let tx = self.inner.data_tx.as_ref().ok_or(StoreError::Closed)?;
        self.inner
            .shared
            .queued_rows
            .fetch_add(rows, Ordering::Relaxed);
        if tx.blocking_send(req).is_err() {
            self.inner
                .shared
                .queued_rows
                .fetch_sub(rows, Ordering::Relaxed);
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn ctl(&self, c: Ctl) -> Result<(), StoreError> {
        let tx = self.inner.ctl_tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(c).map_err(|_| StoreError::Closed)
    }

    fn wake_writer(&self) {
        if !self.inner.shared.cursor_wake.swap(true, Ordering::AcqRel) {
            let _ = self.ctl(Ctl::CursorsMoved);
        }
    }
}

impl Inner {
    fn join(&self) {
        let handle = self.thread.lock().take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!(path = %self.path.display(), "store: the writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: shut down cleanly (commit what is queued) and wait for the writer.
        if let Some(tx) = self.ctl_tx.take() {
            let (reply, _) = oneshot::channel();
            let _ = tx.send(Ctl::Shutdown(reply));
        }
        self.data_tx = None;
        self.join();
    }
}

/// Deletes a non-empty reserve file; whether there was one.
fn release_reserve_file(path: &Path) -> bool {
    let reserve = schema::reserve_path(path);
    std::fs::metadata(&reserve).is_ok_and(|m| m.len() > 0) && std::fs::remove_file(&reserve).is_ok()
}

fn check_record(rec: &LogRecord) -> Result<(), StoreError> {
    if rec.qos > 2 {
        return Err(StoreError::Invalid(format!("record: QoS {}", rec.qos)));
    }
    Ok(())
}

fn check_batch(recs: &[LogRecord]) -> Result<(), StoreError> {
    if recs.is_empty() {
        return Err(StoreError::Invalid("batch: empty".into()));
    }
    recs.iter().try_for_each(check_record)
}
