//! The writer thread: group commit, cursor persistence, retention, the cap policies and disk-full recovery.
//!
//! It owns the only write connection. It runs a current-thread tokio runtime of its own, only to wait on its
//! channels and timers at once; all SQLite work is synchronous on this thread.
use std::collections::VecDeque;
use std::fs::File;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use crate::store::config::WhenFull;

use super::error::StoreError;
use super::record::{now_ms, LogRecord};
use super::schema::{OpenState, StoreOptions};
use super::stats::{Shared, WriterState};
use super::streams::StreamCache;

/// Ticket sender for one row.
pub(crate) type OneTx = oneshot::Sender<Result<u64, StoreError>>;
/// Ticket sender for a batch.
pub(crate) type BatchTx = oneshot::Sender<Result<RangeInclusive<u64>, StoreError>>;

/// What appenders send (through the bounded queue, so a flush is ordered after earlier appends).
pub(crate) enum Req {
    One(LogRecord, OneTx),
    Batch(Vec<LogRecord>, BatchTx),
    Flush(OneTx),
    /// Broker state changes, written in the open transaction (no ticket: they commit with it).
    State(Vec<super::StateOp>),
}

impl Req {
    pub(crate) fn rows(&self) -> u64 {
        match self {
            Req::One(..) => 1,
            Req::Batch(v, _) => v.len() as u64,
            Req::Flush(_) | Req::State(_) => 0,
        }
    }
}

/// Control messages (unbounded, never behind appends).
pub(crate) enum Ctl {
    Maintain(oneshot::Sender<Result<(), StoreError>>),
    CursorsMoved,
    Shutdown(oneshot::Sender<Result<(), StoreError>>),
    /// A reader found the database corrupt.
    Damaged(String),
}

/// A row (or batch) inserted in the open transaction, kept until it commits so it can be replayed after a
/// failed commit and its ticket resolved after a successful one.
enum Pending {
    One(LogRecord, OneTx, u64),
    Batch(Vec<LogRecord>, BatchTx, u64),
}

/// The writer's settings, from the config.
pub(crate) struct Settings {
    pub path: PathBuf,
    pub synchronous_full: bool,
    pub wal_path: PathBuf,
    pub policy: WhenFull,
    pub max_bytes: u64,
    pub max_age: Option<Duration>,
    pub commit_interval: Duration,
    pub commit_rows: usize,
    pub opts: StoreOptions,
}

/// Deletes touch at most this many rows per transaction (bounds the WAL and the pause).
const DELETE_CHUNK: u64 = 50_000;
/// Housekeeping tick.
const TICK: Duration = Duration::from_secs(1);
/// Passive checkpoint / vacuum check interval.
const HOUSEKEEPING: Duration = Duration::from_secs(15);
/// Rows received from the queue per wake-up.
const RECV_BATCH: usize = 1024;

const INSERT_SQL: &str =
    "INSERT INTO messages (seq, ts, topic, payload, qos, retain, props, device, point, num, stream) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Pages in use in the database file, in bytes.
    db_used: u64,
    /// Database file size.
    file: u64,
    /// Free pages in the database file, in bytes.
    free: u64,
    /// WAL file size.
    wal: u64,
}

/// Room held back on the file system so that a full disk can be recovered from: deleting rows needs a few
/// new pages (b-tree balancing) and WAL frames, which a completely full disk cannot give. Released when a
/// write fails for lack of space, taken back (as far as space allows) once writing works again.
enum Reserve {
    /// A ballast file `<db>.reserve` of `want` bytes (zeros, really allocated).
    File { path: PathBuf, want: u64 },
    /// Under `StoreOptions::max_page_count` (a simulated disk): the last `reserve` pages below `limit`.
    Pages { limit: u64, reserve: u64 },
}

/// The checkpointer thread: PASSIVE checkpoints on its own connection when the writer asks (coalesced), and
/// the periodic background integrity check (`StoreOptions::verify_interval`).
struct Checkpointer {
    tx: std::sync::mpsc::SyncSender<()>,
    handle: std::thread::JoinHandle<()>,
    /// Held while a checkpoint runs (the database file may be shorter than its header says meanwhile).
    busy: Arc<parking_lot::Mutex<()>>,
    /// Set at shutdown: interrupts a running integrity check.
    stop: Arc<AtomicBool>,
}

/// The background integrity check runs at most this long at a time...
const VERIFY_SLICE: Duration = Duration::from_millis(25);
/// ... then pauses this long (about a fifth of one core and of the disk's read bandwidth).
const VERIFY_PAUSE: Duration = Duration::from_millis(100);

impl Checkpointer {
    fn start(
        path: &std::path::Path,
        synchronous_full: bool,
        verify_every: Option<Duration>,
        shared: Arc<Shared>,
    ) -> Option<Checkpointer> {
        let conn = match super::schema::open_checkpointer(path, synchronous_full) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "store: no checkpointer thread ({e}); the writer checkpoints itself"
                );
                return None;
            }
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let busy = Arc::new(parking_lot::Mutex::new(()));
        let held = busy.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let db_path = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("store-ckpt".into())
            .spawn(move || {
                // A year stands for "never": `recv_timeout` needs a finite wait.
                let every = verify_every.unwrap_or(Duration::from_secs(365 * 86400));
                let mut next_verify = std::time::Instant::now() + every;
                loop {
                    let wait = next_verify.saturating_duration_since(std::time::Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(()) => {
                            let _g = held.lock();
                            // Copying the WAL into a file that was truncated or overwritten under us would
                            // paper over the damage (and the evidence): leave it to the writer instead.
                            if let Some(why) = damaged_before_checkpoint(&db_path, &shared) {
                                let mut found = shared.found_damage.lock();
                                found.get_or_insert(why);
                                continue;
                            }
                            let _ =
                                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            if verify_every.is_some() {
                                verify(&db_path, &shared, &stopping);
                            }
                            next_verify = std::time::Instant::now() + every;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .ok()?;
        Some(Checkpointer {
            tx,
            handle,
            busy,
            stop,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.tx);
        let _ = self.handle.join();
    }
}

/// The checkpointer's look at the database file before it copies the WAL in: the unambiguous cases only (a
/// file the writer saw whole that is now shorter than a header, or whose header is not SQLite's); a file cut
/// shorter than its header says is the writer's check, which knows when no checkpoint is growing it.
pub(crate) fn damaged_before_checkpoint(path: &std::path::Path, shared: &Shared) -> Option<String> {
    use std::io::Read;
    if shared.len_floor.load(Ordering::Acquire) < 100 {
        return None;
    }
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut magic = [0u8; 16];
    if len < 100 {
        return Some(format!(
            "the database file was truncated to {len} bytes (seen before a checkpoint)"
        ));
    }
    if f.read_exact(&mut magic).is_err() || &magic != b"SQLite format 3\0" {
        return Some(
            "the database file was overwritten (its header is not SQLite's; seen before a checkpoint)"
                .into(),
        );
    }
    None
}

/// One throttled `PRAGMA quick_check` over the whole database, on a connection of its own opened for the
/// pass (so it reads the file, not pages some connection cached before the damage), in a read transaction:
/// commits go on meanwhile. What it finds is left in `shared.found_damage` for the writer.
fn verify(path: &std::path::Path, shared: &Shared, stop: &Arc<AtomicBool>) {
    let started = std::time::Instant::now();
    let conn = match Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("store: background integrity check could not open the log: {e}");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let mut slice = std::time::Instant::now();
    let stopping = stop.clone();
    // Runs on this thread, inside the query below: work a slice, pause, until done or stopped.
    conn.progress_handler(
        10_000,
        Some(move || {
            if stopping.load(Ordering::Relaxed) {
                return true;
            }
            if slice.elapsed() >= VERIFY_SLICE {
                std::thread::sleep(VERIFY_PAUSE);
                slice = std::time::Instant::now();
            }
            false
        }),
    );
    let result = conn.prepare("PRAGMA quick_check(10)").and_then(|mut st| {
        st.query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()
    });
    conn.progress_handler(0, None::<fn() -> bool>);
    let found = match result {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => None,
        Ok(rows) => Some(rows.join("; ")),
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if matches!(e.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
        {
            Some(msg.unwrap_or_else(|| e.to_string()))
        }
        Err(e) => {
            if !stop.load(Ordering::Relaxed) {
                tracing::debug!("store: background integrity check did not finish: {e}");
            }
            None
        }
    };
    tracing::debug!(
        took = ?started.elapsed(),
        damaged = found.is_some(),
        "store: background integrity check"
    );
    shared.verify_passes.fetch_add(1, Ordering::Relaxed);
    if let Some(why) = found {
        shared.found_damage.lock().get_or_insert(format!(
            "the background integrity check found damaged pages: {why}"
        ));
    }
}

struct Stall {
    disk_full: bool,
    since: Instant,
    attempts: u32,
    next_retry: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EpisodeKind {
    Oldest,
    Newest,
    WriteFailed,
    Stalled,
    Blocked,
}

struct Episode {
    kind: EpisodeKind,
    seen: u64,
    active: Option<(Instant, u64)>,
    last_event: Instant,
}

/// The identity of the files the writer has open, to notice them being replaced or deleted under it (their
/// open descriptors would keep "working" while nothing reaches the path a restart reads).
#[derive(Default)]
struct Files {
    db: Option<(u64, u64)>,
    wal: Option<(u64, u64)>,
    /// A full header was seen once: a file shorter than that later was truncated.
    header_seen: bool,
    /// The longest the database file was seen since the writer last gave space back (vacuum): the file
    /// never shrinks otherwise. (A file shorter than its header says is not enough: a checkpoint on a full
    /// disk writes page 1 before it fails to extend the file.)
    len_floor: u64,
}

pub(crate) struct Writer {
    conn: Connection,
    files: Files,
    s: Settings,
    shared: Arc<Shared>,
    watch: watch::Sender<u64>,
    _lock: File,
    page_size: u64,
    wal_budget: u64,
    head: u64,
    oldest: u64,
    next_seq: u64,
    meta_last_seq: u64,
    txn_open: bool,
    txn_since: Option<Instant>,
    /// Someone awaits a row of the open transaction (a strict acknowledgment): commit as soon as the inbox is
    /// drained instead of waiting out `commit_interval`. Rows whose tickets were dropped (readings, relaxed
    /// publishes) keep the batching.
    txn_awaited: bool,
    txn_rows: usize,
    txn_bytes: u64,
    txn_bytes_limit: u64,
    reserve: Reserve,
    checkpointer: Option<Checkpointer>,
    streams: StreamCache,
    indexed: u64,
    last_index: Instant,
    /// `(stream, ts, seq)` of every row after `indexed` (committed or in the open transaction), when
    /// `keys_valid`: the next index pass sorts these instead of reading the rows back.
    index_keys: Vec<IndexKey>,
    keys_valid: bool,
    pending: Vec<Pending>,
    inbox: VecDeque<Req>,
    flush_waiters: Vec<OneTx>,
    cursor_deadline: Option<Instant>,
    state: WriterState,
    stall: Option<Stall>,
    stall_count: u64,
    blocked_count: u64,
    full_cause: &'static str,
    disk_full_at: Option<Instant>,
    episodes: Vec<Episode>,
    props_buf: Vec<u8>,
    closing: bool,
    next_tick: Instant,
    next_age: Instant,
    next_housekeeping: Instant,
}

/// A transaction also commits once it holds about this many bytes, so that one group commit cannot overshoot
/// a small cap by much.
fn txn_bytes_limit(max_bytes: u64) -> u64 {
    (max_bytes / 32).clamp(64 << 10, 4 << 20)
}

/// A row's history key `(stream, ts, seq)` and its numeric value (NaN for none), kept by the writer from the
/// append to the next index pass so that the pass never reads the rows back.
pub(crate) type IndexKey = (i64, i64, i64, f64);

/// Sorts the keys by `(stream, ts, seq)` and stores them as history blocks (see `history.rs`), with their
/// values when `with_values` (schema v3), in the caller's transaction.
pub(crate) fn insert_history(
    conn: &Connection,
    keys: &mut [IndexKey],
    with_values: bool,
) -> rusqlite::Result<()> {
    keys.sort_unstable_by_key(|k| (k.0, k.1, k.2));
    let mut st = conn.prepare_cached(
        "INSERT INTO history (stream, min_ts, max_ts, min_seq, max_seq, n, keys, vals) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut pairs = Vec::with_capacity(super::history::BLOCK);
    let mut blob = Vec::new();
    let mut vals = Vec::new();
    let mut nums: Vec<Option<f64>> = Vec::with_capacity(super::history::BLOCK);
    for group in keys.chunk_by(|a, b| a.0 == b.0) {
        for block in group.chunks(super::history::BLOCK) {
            pairs.clear();
            pairs.extend(block.iter().map(|k| (k.1, k.2)));
            super::history::encode(&pairs, &mut blob);
            let vals = with_values.then(|| {
                nums.clear();
                nums.extend(block.iter().map(|k| Some(k.3).filter(|v| !v.is_nan())));
                super::history::encode_values(&nums, &mut vals);
                &vals[..]
            });
            let (min_seq, max_seq) = pairs.iter().fold((i64::MAX, i64::MIN), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
            st.execute(params![
                block[0].0,
                pairs[0].0,
                pairs[pairs.len() - 1].0,
                min_seq,
                max_seq,
                pairs.len() as i64,
                &blob,
                vals
            ])?;
        }
    }
    Ok(())
}

/// SQLITE_CORRUPT or SQLITE_NOTADB: the file is damaged, retrying will not help.
pub(crate) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        super::schema::sqlite_code(e),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn ident(p: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| (m.dev(), m.ino()))
}

/// The share of its volume's free space the reserve may take: 1/4 of what is free (counting the reserve
/// itself), at most `want`. On a disk that is already full this is (nearly) nothing.
pub(crate) fn reserve_share(path: &std::path::Path, have: u64, want: u64) -> u64 {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    match rustix::fs::statvfs(dir) {
        Ok(v) => {
            let free = v.f_bavail.saturating_mul(v.f_frsize) + have;
            want.min(free / 4)
        }
        Err(_) => want,
    }
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    match e {
        // SQLITE_FULL, and SQLITE_IOERR_SHMSIZE (the -shm file could not grow).
        rusqlite::Error::SqliteFailure(f, _) => {
            f.code == ErrorCode::DiskFull || f.extended_code == 4874
        }
        _ => false,
    }
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        st: OpenState,
        s: Settings,
        shared: Arc<Shared>,
        watch: watch::Sender<u64>,
        lock: File,
    ) -> Writer {
        let now = Instant::now();
        let wal_budget = super::schema::wal_pages(s.max_bytes, st.page_size) * st.page_size;
        let txn_bytes_limit = txn_bytes_limit(s.max_bytes);
        // What deleting rows on a full disk needs; but never more than a tenth of the cap (a small cap on
        // a small volume would otherwise be mostly reserve) — and, see `restore_reserve`, never more than
        // a small share of the free space.
        let reserve_bytes = (wal_budget + txn_bytes_limit + (256 << 10)).min(s.max_bytes / 10);
        let reserve = match s.opts.max_page_count {
            Some(limit) => Reserve::Pages {
                limit,
                reserve: (reserve_bytes / st.page_size).min(limit / 4),
            },
            None => {
                let path = super::schema::reserve_path(&s.path);
                let have = std::fs::metadata(&path).map_or(0, |m| m.len());
                let want = reserve_share(&path, have, reserve_bytes);
                Reserve::File { path, want }
            }
        };
        shared.head.store(st.head, Ordering::Release);
        shared.oldest.store(st.oldest, Ordering::Release);
        let kinds = [
            EpisodeKind::Oldest,
            EpisodeKind::Newest,
            EpisodeKind::WriteFailed,
            EpisodeKind::Stalled,
            EpisodeKind::Blocked,
        ];
        let mut w = Writer {
            conn,
            files: Files::default(),
            shared,
            watch,
            _lock: lock,
            page_size: st.page_size,
            wal_budget,
            head: st.head,
            oldest: st.oldest,
            next_seq: st.head + 1,
            meta_last_seq: st.meta_last_seq,
            txn_open: false,
            txn_since: None,
            txn_awaited: false,
            txn_rows: 0,
            txn_bytes: 0,
            txn_bytes_limit,
            reserve,
            checkpointer: None,
            streams: StreamCache::new(s.opts.stream_cache, st.next_stream),
            indexed: st.indexed,
            last_index: now,
            index_keys: Vec::new(),
            // After a crash, rows past `indexed` are known only to the database: the first pass reads them.
            keys_valid: st.indexed >= st.head,
            pending: Vec::new(),
            inbox: VecDeque::new(),
            flush_waiters: Vec::new(),
            cursor_deadline: None,
            state: WriterState::Normal,
            stall: None,
            stall_count: 0,
            blocked_count: 0,
            full_cause: "max_bytes reached",
            disk_full_at: None,
            episodes: kinds
                .into_iter()
                .map(|kind| Episode {
                    kind,
                    seen: 0,
                    active: None,
                    last_event: now,
                })
                .collect(),
            props_buf: Vec::new(),
            closing: false,
            next_tick: now + TICK,
            next_age: now,
            next_housekeeping: now + HOUSEKEEPING,
            s,
        };
        w.checkpointer = Checkpointer::start(
            &w.s.path,
            w.s.synchronous_full,
            w.s.opts.verify_interval,
            w.shared.clone(),
        );
        if w.checkpointer.is_some() {
            let _ = w.conn.pragma_update(None, "wal_autocheckpoint", 0);
        }
        if let Err(why) = w.check_files() {
            w.on_damage(why);
        }
        w.restore_reserve();
        // Cap and age as configured now (the cap may have been lowered since the last run).
        w.check_cap();
        w.age_retention();
        w
    }

    /// The thread body.
    pub(crate) fn run(
        mut self,
        mut data_rx: mpsc::Receiver<Req>,
        mut ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("store: cannot start the writer: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let mut buf = Vec::with_capacity(RECV_BATCH);
            let mut shutdown_reply = None;
            loop {
                let now = Instant::now();
                if now >= self.next_tick {
                    self.on_tick(now);
                }
                if self.commit_deadline().is_some_and(|d| now >= d) {
                    self.commit_now();
                }
                if self.stall.as_ref().is_some_and(|s| now >= s.next_retry) {
                    self.try_recover();
                }
                self.process_inbox();
                if self.txn_awaited && self.inbox.is_empty() && data_rx.is_empty() {
                    // Group commit without a wait: the batch is whatever arrived during the last fsync.
                    self.commit_now();
                }
                let commit_at = self.commit_deadline();
                let retry_at = self.stall.as_ref().map(|s| s.next_retry);
                let far = now + Duration::from_secs(3600);
                let accepting = self.accepting() && self.inbox.is_empty();
                tokio::select! {
                    biased;
                    ctl = ctl_rx.recv() => match ctl {
                        Some(Ctl::Shutdown(reply)) => {
                            shutdown_reply = Some(reply);
                            break;
                        }
                        Some(Ctl::Maintain(reply)) => {
                            let r = self.maintain();
                            let _ = reply.send(r);
                        }
                        Some(Ctl::CursorsMoved) => self.on_cursors_moved(),
                        Some(Ctl::Damaged(why)) => self.on_damage(why),
                        // Every handle is gone without a shutdown message: stop as if asked.
                        None => break,
                    },
                    _ = sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => self.try_recover(),
                    _ = sleep_until(commit_at.unwrap_or(far)), if commit_at.is_some() => self.commit_now(),
                    n = data_rx.recv_many(&mut buf, RECV_BATCH), if accepting => {
                        if n == 0 {
                            break;
                        }
                        let rows: u64 = buf.iter().map(Req::rows).sum();
                        self.shared.queued_rows.fetch_sub(rows, Ordering::Relaxed);
                        self.inbox.extend(buf.drain(..));
                    }
                    _ = sleep_until(self.next_tick) => {}
                }
            }
            let r = self.shutdown(&mut data_rx);
            // Close the connection and release the lock before saying so: a reopen may follow at once.
            drop(self);
            if let Some(reply) = shutdown_reply {
                let _ = reply.send(r);
            }
        });
    }

    fn set_state(&mut self, st: WriterState) {
        if st == WriterState::Full
            && self.state != WriterState::Full
            && self.s.policy == WhenFull::Block
        {
            self.blocked_count += 1;
        }
        self.state = st;
        self.shared.state.store(st as u8, Ordering::Release);
    }

    fn accepting(&self) -> bool {
        match self.state {
            // Degraded: requests are taken only to be refused at once (appenders never wait on it).
            WriterState::Normal | WriterState::Degraded => true,
            WriterState::Full => self.s.policy != WhenFull::Block || self.closing,
            WriterState::Stalled => false,
        }
    }

    fn commit_deadline(&self) -> Option<Instant> {
        if self.stall.is_some() || self.state == WriterState::Degraded {
            return None;
        }
        let txn = self.txn_since.map(|t| t + self.s.commit_interval);
        match (txn, self.cursor_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- appends -------------------------------------------------------------------------------------------

    fn process_inbox(&mut self) {
        while self.stall.is_none() && self.accepting() {
            let Some(req) = self.inbox.pop_front() else {
                return;
            };
            if self.state == WriterState::Degraded {
                self.refuse_damaged(req);
                continue;
            }
            match req {
                Req::Flush(tx) => {
                    self.commit_now();
                    if self.stall.is_some() {
                        self.flush_waiters.push(tx);
                    } else {
                        let _ = tx.send(Ok(self.head));
                    }
                }
                Req::State(ops) => {
                    if let Err(e) = self.write_state(&ops) {
                        self.on_write_error(e);
                    }
                }
                req if self.state == WriterState::Full && self.s.policy == WhenFull::DropNewest => {
                    self.refuse_full(req)
                }
                Req::One(rec, tx) => {
                    self.txn_awaited |= !tx.is_closed();
                    match self.insert(&rec) {
                        Ok(seq) => self.pending.push(Pending::One(rec, tx, seq)),
                        Err(e) => {
                            self.pending.push(Pending::One(rec, tx, 0));
                            self.on_write_error(e);
                        }
                    }
                }
                Req::Batch(recs, tx) => {
                    let first = self.next_seq;
                    self.txn_awaited |= !tx.is_closed();
                    match self.insert_all(&recs).map(drop) {
                        Ok(()) => self.pending.push(Pending::Batch(recs, tx, first)),
                        Err(e) => {
                            self.pending.push(Pending::Batch(recs, tx, 0));
                            self.on_write_error(e);
                        }
                    }
                }
            }
            if self.txn_rows >= self.s.commit_rows || self.txn_bytes >= self.txn_bytes_limit {
                self.commit_now();
            }
        }
    }

    /// Degraded: nothing is written any more; the request is refused, counted as `write_failed`.
    fn refuse_damaged(&mut self, req: Req) {
        let why = self.damage_text();
        self.shared
            .dropped_write_failed
            .fetch_add(req.rows(), Ordering::Relaxed);
        match req {
            Req::One(_, tx) => drop(tx.send(Err(StoreError::Damaged(why)))),
            Req::Batch(_, tx) => drop(tx.send(Err(StoreError::Damaged(why)))),
            Req::State(_) => {}
            Req::Flush(tx) => drop(tx.send(Ok(self.head))),
        }
        self.note_drops();
    }

    fn damage_text(&self) -> String {
        self.shared
            .damage
            .lock()
            .clone()
            .unwrap_or_else(|| "damaged".into())
    }

    /// `drop_newest` at the cap: the row is refused, counted, and its ticket says so.
    fn refuse_full(&mut self, req: Req) {
        let n = req.rows();
        self.shared.dropped_newest.fetch_add(n, Ordering::Relaxed);
        match req {
            Req::One(_, tx) => drop(tx.send(Err(StoreError::Full))),
            Req::Batch(_, tx) => drop(tx.send(Err(StoreError::Full))),
            Req::Flush(tx) => drop(tx.send(Ok(self.head))),
            Req::State(_) => {}
        }
        self.note_drops();
    }

    /// Broker state rows, in the open transaction: they commit (and are lost) together with the log rows of
    /// the same interval.
    fn write_state(&mut self, ops: &[super::StateOp]) -> rusqlite::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if !self.txn_open {
            self.conn.execute_batch("BEGIN")?;
            self.txn_open = true;
            self.txn_since = Some(Instant::now());
        }
        for op in ops {
            match op {
                super::StateOp::Put { kind, key, value } => {
                    let mut st = self.conn.prepare_cached(
                        "INSERT OR REPLACE INTO broker_state(kind, key, value) VALUES (?1, ?2, ?3)",
                    )?;
                    st.execute(rusqlite::params![*kind as u8, key, value])?;
                }
                super::StateOp::Delete { kind, key } => {
                    let mut st = self
                        .conn
                        .prepare_cached("DELETE FROM broker_state WHERE kind = ?1 AND key = ?2")?;
                    st.execute(rusqlite::params![*kind as u8, key])?;
                }
            }
        }
        Ok(())
    }

    fn insert(&mut self, rec: &LogRecord) -> rusqlite::Result<u64> {
        self.insert_all(std::slice::from_ref(rec))
    }

    /// Inserts `recs` in order with one prepared statement (looked up once, not once per row); returns the
    /// first one's seq. On an error the rows before it are inserted (the caller rolls back or replays).
    fn insert_all(&mut self, recs: &[LogRecord]) -> rusqlite::Result<u64> {
        if !self.txn_open {
            self.conn.execute_batch("BEGIN")?;
            self.txn_open = true;
            self.txn_since = Some(Instant::now());
        }
        let first = self.next_seq;
        let mut st = self.conn.prepare_cached(INSERT_SQL)?;
        for rec in recs {
            let seq = self.next_seq;
            let key = (rec.topic.clone(), rec.device.clone(), rec.point.clone());
            let stream = self.streams.id(&self.conn, key)?;
            let props = match &rec.props {
                Some(p) => {
                    p.encode_into(&mut self.props_buf);
                    Some(&self.props_buf[..])
                }
                None => None,
            };
            st.execute(params![
                seq as i64,
                rec.ts_ms,
                &*rec.topic,
                &rec.payload[..],
                rec.qos,
                rec.retain,
                props,
                rec.device.as_deref(),
                rec.point.as_deref(),
                rec.num.filter(|n| !n.is_nan()),
                stream,
            ])?;
            if self.keys_valid {
                let num = rec.num.unwrap_or(f64::NAN);
                self.index_keys.push((stream, rec.ts_ms, seq as i64, num));
            }
            self.next_seq += 1;
            self.txn_rows += 1;
            self.txn_bytes += rec.approx_bytes();
        }
        Ok(first)
    }

    // ---- the history index ---------------------------------------------------------------------------------

    /// Brings `history` up to the head when a pass is due (or `force`): the new rows' keys, sorted, go in as
    /// blocks (see `history.rs`), in their own transaction. Each index page is written once per pass instead
    /// of once per commit (random index writes would multiply the bytes written), and one b-tree insert
    /// covers up to a hundred keys.
    fn maybe_index(&mut self, force: bool) {
        if self.txn_open || self.stall.is_some() || self.head <= self.indexed {
            return;
        }
        let due = force
            || self.head - self.indexed >= self.s.opts.index_rows
            || self.last_index.elapsed() >= self.s.opts.index_interval;
        if !due {
            return;
        }
        let last = self.head;
        let mut keys = std::mem::take(&mut self.index_keys);
        let r = (|| {
            if !self.keys_valid {
                // After a crash or a failed pass: the keys come from the rows themselves.
                keys.clear();
                let mut st = self.conn.prepare_cached(
                    "SELECT stream, ts, seq, num FROM messages WHERE seq > ?1 AND seq <= ?2",
                )?;
                let mut rows = st.query(params![self.indexed as i64, last as i64])?;
                while let Some(r) = rows.next()? {
                    let num: Option<f64> = r.get(3)?;
                    keys.push((r.get(0)?, r.get(1)?, r.get(2)?, num.unwrap_or(f64::NAN)));
                }
            }
            self.conn.execute_batch("BEGIN")?;
            insert_history(&self.conn, &mut keys, self.s.opts.index_values)?;
            self.set_indexed_in_txn(last)?;
            self.conn.execute_batch("COMMIT")
        })();
        keys.clear();
        match r {
            Ok(()) => {
                self.indexed = last;
                self.last_index = Instant::now();
                // Up to date now, with no transaction open: new rows' keys can be collected again.
                self.index_keys = keys;
                self.keys_valid = true;
            }
            Err(e) => {
                self.keys_valid = false;
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                // Derived data: queries scan the unindexed tail meanwhile; the next pass catches up.
                self.on_maintenance_error(e);
                self.last_index = Instant::now();
            }
        }
    }

    fn set_indexed_in_txn(&self, seq: u64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'indexed_seq'")?
            .execute([seq as i64])
            .map(drop)
    }

    // ---- commits -------------------------------------------------------------------------------------------

    fn commit_now(&mut self) {
        if self.stall.is_some() || self.state == WriterState::Degraded {
            return;
        }
        match self.commit_txn() {
            Ok(true) => self.finish_commit(),
            Ok(false) => self.cursor_deadline = None,
            Err(e) => self.on_write_error(e),
        }
    }

    /// Commits the open transaction with the cursor changes and `last_seq`; false if there was nothing to do.
    fn commit_txn(&mut self) -> rusqlite::Result<bool> {
        let (upserts, removes) = self.dirty_cursors();
        if !self.txn_open && upserts.is_empty() && removes.is_empty() {
            return Ok(false);
        }
        if !self.txn_open {
            self.conn.execute_batch("BEGIN")?;
            self.txn_open = true;
        }
        self.write_cursors(&upserts, &removes)?;
        let last = self.next_seq - 1;
        if last > self.meta_last_seq {
            let mut st = self
                .conn
                .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'last_seq'")?;
            st.execute([last as i64])?;
        }
        self.conn.execute_batch("COMMIT")?;
        self.txn_open = false;
        self.meta_last_seq = self.meta_last_seq.max(last);
        self.mark_cursors_durable(&upserts, &removes);
        Ok(true)
    }

    /// After a COMMIT, before any ticket resolves: are the files still the ones written to? A commit into a
    /// deleted WAL or a truncated/overwritten/replaced database is not durable, so its tickets fail.
    fn finish_commit(&mut self) {
        let damage = self.check_files().err();
        self.after_commit(damage);
    }

    /// The cheap check of the files under the writer, run after every commit and every second: identity
    /// (device, inode) of the database and its WAL, the database header (magic, page size) and its length
    /// against the size the header records. Never reads more than 100 bytes.
    fn check_files(&mut self) -> Result<(), String> {
        if let Some(why) = self.shared.found_damage.lock().take() {
            return Err(why);
        }
        match ident(&self.s.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err("the database file was deleted".into())
            }
            Err(_) => {}
            Ok(id) => match self.files.db {
                None => self.files.db = Some(id),
                Some(known) if known != id => {
                    return Err("the database file was replaced by another file".into())
                }
                Some(_) => {}
            },
        }
        match ident(&self.s.wal_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.files.wal.is_some() {
                    return Err("the WAL file (-wal) was deleted".into());
                }
            }
            Err(_) => {}
            Ok(id) => match self.files.wal {
                None => self.files.wal = Some(id),
                Some(known) if known != id => {
                    return Err("the WAL file (-wal) was replaced by another file".into())
                }
                Some(_) => {}
            },
        }
        let header = |path: &std::path::Path| -> std::io::Result<(u64, Option<[u8; 100]>)> {
            use std::io::Read;
            let mut f = File::open(path)?;
            let len = f.metadata()?.len();
            if len < 100 {
                return Ok((len, None));
            }
            let mut h = [0u8; 100];
            f.read_exact(&mut h)?;
            Ok((len, Some(h)))
        };
        let Ok((len, h)) = header(&self.s.path) else {
            return Ok(());
        };
        let shrunk = len < self.files.len_floor;
        self.files.len_floor = self.files.len_floor.max(len);
        self.shared
            .len_floor
            .store(self.files.len_floor, Ordering::Release);
        let Some(h) = h else {
            if self.files.header_seen && shrunk {
                return Err(format!("the database file was truncated to {len} bytes"));
            }
            return Ok(());
        };
        if &h[..16] != b"SQLite format 3\0" {
            return Err("the database file was overwritten (its header is not SQLite's)".into());
        }
        let ps = match u16::from_be_bytes([h[16], h[17]]) {
            1 => 65536,
            n => u64::from(n),
        };
        if ps != self.page_size {
            return Err(format!(
                "the database file was overwritten (page size {ps} in its header, {} in use)",
                self.page_size
            ));
        }
        self.files.header_seen = true;
        let be = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        // The header's page count is valid when "version-valid-for" matches the change counter.
        let pages = u64::from(be(28));
        if shrunk && be(24) == be(92) && pages > 0 && len < pages * ps {
            // A checkpoint may be growing the file right now: trust a short file only while none runs.
            let idle = self.checkpointer.as_ref().map(|c| c.busy.try_lock());
            if !matches!(idle, Some(None)) {
                let len = std::fs::metadata(&self.s.path).map_or(u64::MAX, |m| m.len());
                if len < pages * ps {
                    return Err(format!(
                        "the database file was truncated ({len} bytes, its header says {})",
                        pages * ps
                    ));
                }
            }
        }
        Ok(())
    }

    /// Damage found: refuse everything from now on (no false acknowledgment), say what to do, once.
    fn on_damage(&mut self, why: String) {
        if self.state == WriterState::Degraded {
            return;
        }
        *self.shared.damage.lock() = Some(why.clone());
        *self.shared.last_error.lock() = Some(why.clone());
        if self.txn_open {
            self.rollback();
        }
        self.stall = None;
        self.set_state(WriterState::Degraded);
        // Counted before the tickets say so.
        let n: u64 = self
            .pending
            .iter()
            .map(|p| match p {
                Pending::One(..) => 1,
                Pending::Batch(v, ..) => v.len() as u64,
            })
            .sum();
        self.shared
            .dropped_write_failed
            .fetch_add(n, Ordering::Relaxed);
        self.fail_pending(|| StoreError::Damaged(why.clone()));
        if why.contains("WAL") {
            // The WAL is still open here: copy what it holds into the database file while we can.
            self.checkpoint_wait("TRUNCATE", Duration::from_secs(1));
        }
        // Remembered for the next start, which then moves the file aside and salvages it even if it
        // passes the integrity check (a file truncated to nothing is a valid empty database).
        let _ = std::fs::write(super::schema::damaged_marker(&self.s.path), why.as_bytes());
        let path = self.s.path.display().to_string();
        tracing::error!(
            path,
            "store damaged: {why}. New messages are refused and QoS 1/2 publishers get an error (nothing is \
             acknowledged as stored); /health reports degraded. Restart fieldbridge (systemctl restart \
             fieldbridge): it moves the damaged file aside to {path}.corrupt-<time> and salvages what it can \
             into a new log (or run `fieldbridge store check --db {path}` / `store salvage` by hand)"
        );
        self.note_drops();
    }

    fn after_commit(&mut self, damage: Option<String>) {
        self.txn_awaited = false;
        let rows = std::mem::take(&mut self.txn_rows);
        self.streams.committed();
        self.shared
            .stream_cache_len
            .store(self.streams.len() as u64, Ordering::Relaxed);
        self.txn_bytes = 0;
        self.txn_since = None;
        self.cursor_deadline = None;
        if rows > 0 && damage.is_none() {
            // In the tail before the head says they exist: a reader that sees the new head finds them there.
            let mut committed = Vec::with_capacity(rows);
            for p in &self.pending {
                match p {
                    Pending::One(rec, _, seq) => committed.push((*seq, rec)),
                    Pending::Batch(recs, _, first) => committed.extend((*first..).zip(recs)),
                }
            }
            self.shared.tail.lock().extend(committed);
        }
        self.head = self.next_seq - 1;
        self.shared.head.store(self.head, Ordering::Release);
        if rows > 0 {
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
            self.shared
                .rows_committed
                .fetch_add(rows as u64, Ordering::Relaxed);
        }
        if let Some(why) = damage {
            let head = self.head;
            self.watch
                .send_if_modified(|v| std::mem::replace(v, head) != head);
            self.on_damage(why);
            return;
        }
        for p in self.pending.drain(..) {
            match p {
                Pending::One(_, tx, seq) => drop(tx.send(Ok(seq))),
                Pending::Batch(recs, tx, first) => {
                    drop(tx.send(Ok(first..=first + recs.len() as u64 - 1)))
                }
            }
        }
        for w in self.flush_waiters.drain(..) {
            let _ = w.send(Ok(self.head));
        }
        let head = self.head;
        self.watch
            .send_if_modified(|v| std::mem::replace(v, head) != head);
        if rows > 0 {
            self.maybe_index(false);
            self.kick_checkpoint();
            self.check_cap();
        }
    }

    /// Asks the checkpointer to copy the WAL into the database once it holds a budget's worth. If it cannot
    /// keep the WAL bounded (a WAL restarts only when fully copied at the start of a write transaction), the
    /// writer restarts it itself.
    fn kick_checkpoint(&mut self) {
        let Some(c) = &self.checkpointer else { return };
        let wal = std::fs::metadata(&self.s.wal_path).map_or(0, |m| m.len());
        if wal >= self.wal_budget {
            let _ = c.tx.try_send(());
        }
        if wal >= self.wal_budget * 8 && !self.txn_open {
            let _ = self.conn.busy_timeout(Duration::from_millis(50));
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
            let _ = self.conn.busy_timeout(Duration::from_secs(5));
        }
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.txn_open = false;
        self.txn_since = None;
        self.txn_rows = 0;
        self.txn_bytes = 0;
        self.next_seq = self.head + 1;
        while self
            .index_keys
            .last()
            .is_some_and(|k| k.2 as u64 > self.head)
        {
            self.index_keys.pop();
        }
        self.streams.rolled_back();
    }

    // ---- cursors -------------------------------------------------------------------------------------------

    fn dirty_cursors(&self) -> (Vec<(String, u64)>, Vec<String>) {
        let t = self.shared.cursors.lock();
        let upserts = t
            .map
            .iter()
            .filter(|(_, c)| c.durable != Some(c.seq))
            .map(|(k, c)| (k.clone(), c.seq))
            .collect();
        (upserts, t.removed.iter().cloned().collect())
    }

    fn write_cursors(&self, upserts: &[(String, u64)], removes: &[String]) -> rusqlite::Result<()> {
        for name in removes {
            self.conn
                .prepare_cached("DELETE FROM cursors WHERE bridge = ?1")?
                .execute([name])?;
        }
        let mut st = self.conn.prepare_cached(
            "INSERT INTO cursors (bridge, seq) VALUES (?1, ?2) ON CONFLICT(bridge) DO UPDATE SET seq = excluded.seq",
        )?;
        for (name, seq) in upserts {
            st.execute(params![name, *seq as i64])?;
        }
        Ok(())
    }

    fn mark_cursors_durable(&self, upserts: &[(String, u64)], removes: &[String]) {
        let mut t = self.shared.cursors.lock();
        for name in removes {
            t.removed.remove(name);
        }
        for (name, seq) in upserts {
            if let Some(c) = t.map.get_mut(name) {
                c.durable = Some(*seq);
            }
        }
    }

    /// Everything at or below this has been delivered to every bridge (all of the log if there is none).
    fn min_cursor(&self) -> u64 {
        let t = self.shared.cursors.lock();
        t.map
            .values()
            .map(|c| c.seq)
            .min()
            .unwrap_or(self.head)
            .min(self.head)
    }

    fn on_cursors_moved(&mut self) {
        self.shared.cursor_wake.store(false, Ordering::Release);
        if self.cursor_deadline.is_none() {
            self.cursor_deadline = Some(Instant::now() + self.s.commit_interval);
        }
        match self.state {
            WriterState::Full => self.check_cap(),
            WriterState::Stalled => {
                if let Some(s) = self.stall.as_mut().filter(|s| s.disk_full) {
                    // Delivered rows may now be deletable: try at once.
                    s.next_retry = Instant::now();
                }
            }
            WriterState::Normal | WriterState::Degraded => {}
        }
    }

    // ---- size ----------------------------------------------------------------------------------------------

    fn measure(&self) -> rusqlite::Result<Usage> {
        let pages: u64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))?;
        let free: u64 = self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        let wal = std::fs::metadata(&self.s.wal_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let u = Usage {
            db_used: pages.saturating_sub(free) * self.page_size,
            file: pages * self.page_size,
            free: free * self.page_size,
            wal,
        };
        self.shared
            .bytes_on_disk
            .store(u.file + u.wal, Ordering::Relaxed);
        self.shared
            .bytes_used
            .store(u.db_used + u.wal, Ordering::Relaxed);
        self.shared.wal_bytes.store(u.wal, Ordering::Relaxed);
        Ok(u)
    }

    /// The size the cap applies to: pages in use plus the WAL up to its budget. A WAL beyond its budget is a
    /// checkpoint held back by a reader; deleting rows would not shrink it, so it does not make rows go.
    fn effective(&self, u: &Usage) -> u64 {
        u.db_used + u.wal.min(self.wal_budget)
    }

    fn low_water(&self) -> u64 {
        self.s.max_bytes - self.s.max_bytes / 20
    }

    fn rows(&self) -> u64 {
        (self.head + 1).saturating_sub(self.oldest)
    }

    fn check_cap(&mut self) {
        if self.closing {
            return;
        }
        if let Err(e) = self.enforce_cap() {
            self.on_maintenance_error(e);
        }
    }

    /// Over the cap: delete delivered rows (oldest first) down to the low-water mark; if that is not enough,
    /// apply the policy to undelivered rows.
    fn enforce_cap(&mut self) -> rusqlite::Result<()> {
        let mut u = self.measure()?;
        if self.effective(&u) <= self.s.max_bytes && self.state != WriterState::Full {
            return Ok(());
        }
        if self.txn_open {
            self.commit_now();
            if self.stall.is_some() {
                return Ok(());
            }
        }
        self.checkpoint(true);
        for _ in 0..32 {
            u = self.measure()?;
            let used = self.effective(&u);
            let low = self.low_water();
            if used <= low || self.rows() == 0 {
                break;
            }
            let n = self.rows_for(used - low, &u);
            let delivered = self.min_cursor();
            if self.oldest <= delivered {
                let upto = delivered.min(self.oldest + n - 1);
                let gone = self.delete_prefix(upto, false)?;
                self.shared.removed_space.fetch_add(gone, Ordering::Relaxed);
            } else if self.s.policy == WhenFull::DropOldest {
                self.full_cause = "max_bytes reached";
                self.evict(self.oldest + n - 1)?;
            } else {
                break;
            }
            self.checkpoint(true);
        }
        u = self.measure()?;
        let full = self.effective(&u) > self.s.max_bytes && self.s.policy != WhenFull::DropOldest;
        if full && self.state == WriterState::Normal {
            self.full_cause = "max_bytes reached";
            self.set_state(WriterState::Full);
            self.note_drops();
        } else if !full && self.state == WriterState::Full {
            self.set_state(WriterState::Normal);
        }
        Ok(())
    }

    /// How many of the oldest rows to delete to free about `bytes`, from the measured average row size.
    fn rows_for(&self, bytes: u64, u: &Usage) -> u64 {
        let rows = self.rows().max(1);
        let avg = (u.db_used / rows).max(32);
        bytes.div_ceil(avg).clamp(1, rows.min(DELETE_CHUNK))
    }

    /// Deletes rows `oldest..=upto` (no transaction may be open), in chunks.
    fn delete_prefix(&mut self, upto: u64, evicting: bool) -> rusqlite::Result<u64> {
        let upto = upto.min(self.head);
        let mut total = 0;
        while self.oldest <= upto {
            let end = upto.min(self.oldest + DELETE_CHUNK - 1);
            let n = end - self.oldest + 1;
            let r = (|| {
                self.conn.execute_batch("BEGIN")?;
                // Blocks whose keys are all gone go with the rows (a block straddling `end` stays until
                // its last row goes; queries skip its keys below the oldest row).
                self.conn
                    .prepare_cached("DELETE FROM history WHERE max_seq <= ?1")?
                    .execute([end as i64])?;
                if end > self.indexed {
                    // Rows deleted before they were indexed: nothing to index there any more.
                    self.set_indexed_in_txn(end)?;
                }
                self.conn
                    .prepare_cached("DELETE FROM messages WHERE seq <= ?1")?
                    .execute([end as i64])?;
                let moved = if evicting {
                    self.move_cursors_past(end)?
                } else {
                    Vec::new()
                };
                self.conn.execute_batch("COMMIT")?;
                Ok::<_, rusqlite::Error>(moved)
            })();
            match r {
                Ok(moved) => {
                    if evicting {
                        let from = self.oldest;
                        let mut t = self.shared.cursors.lock();
                        for name in moved {
                            if let Some(c) = t.map.get_mut(&name) {
                                // Measured against the cursor now: a bridge that acked meanwhile lost less.
                                c.lost += end.saturating_sub(c.seq.max(from - 1));
                                c.seq = c.seq.max(end);
                                c.durable = Some(end);
                            }
                        }
                    }
                    self.oldest = end + 1;
                    self.shared.tail.lock().remove_upto(end);
                    if end > self.indexed {
                        self.index_keys.retain(|k| k.2 as u64 > end);
                    }
                    self.indexed = self.indexed.max(end);
                    self.shared.oldest.store(self.oldest, Ordering::Release);
                    total += n;
                }
                Err(e) => {
                    if !self.conn.is_autocommit() {
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                    return Err(e);
                }
            }
        }
        Ok(total)
    }

    /// In the eviction transaction: cursors behind `end` jump to it. Returns their names.
    fn move_cursors_past(&self, end: u64) -> rusqlite::Result<Vec<String>> {
        let behind: Vec<String> = {
            let t = self.shared.cursors.lock();
            t.map
                .iter()
                .filter(|(_, c)| c.seq < end)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut st = self.conn.prepare_cached(
            "INSERT INTO cursors (bridge, seq) VALUES (?1, ?2) ON CONFLICT(bridge) DO UPDATE SET seq = excluded.seq",
        )?;
        for name in &behind {
            st.execute(params![name, end as i64])?;
        }
        Ok(behind)
    }

    /// `drop_oldest`: deletes undelivered rows up to `upto`, counts them, and moves lagging cursors past.
    fn evict(&mut self, upto: u64) -> rusqlite::Result<u64> {
        let n = self.delete_prefix(upto, true)?;
        if n > 0 {
            self.shared.dropped_oldest.fetch_add(n, Ordering::Relaxed);
            self.note_drops();
        }
        Ok(n)
    }

    fn checkpoint(&self, truncate: bool) {
        // A TRUNCATE checkpoint waits for readers (and the checkpointer thread); never stall appends long.
        if truncate {
            self.checkpoint_wait("TRUNCATE", Duration::from_millis(50));
        } else {
            self.checkpoint_wait("PASSIVE", Duration::ZERO);
        }
    }

    fn checkpoint_wait(&self, mode: &str, busy: Duration) {
        if self.txn_open {
            return;
        }
        let _ = self.conn.busy_timeout(busy);
        let _ = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
        let _ = self.conn.busy_timeout(Duration::from_secs(5));
    }

    // ---- age, housekeeping -------------------------------------------------------------------------------

    fn age_retention(&mut self) {
        if let Err(e) = self.try_age_retention() {
            self.on_maintenance_error(e);
        }
    }

    /// Deletes the longest prefix of the log whose rows are all older than `max_age` and delivered to every
    /// bridge. (The log is trimmed from its oldest end only, which keeps it one contiguous range of seqs.)
    fn try_age_retention(&mut self) -> rusqlite::Result<()> {
        let Some(max_age) = self.s.max_age else {
            return Ok(());
        };
        if self.txn_open || self.stall.is_some() {
            return Ok(());
        }
        let cutoff =
            now_ms().saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let delivered = self.min_cursor();
        if self.oldest > delivered {
            return Ok(());
        }
        let young: Option<i64> = {
            use rusqlite::OptionalExtension;
            let mut st = self.conn.prepare_cached(
                "SELECT seq FROM messages WHERE seq <= ?1 AND ts >= ?2 ORDER BY seq LIMIT 1",
            )?;
            st.query_row(params![delivered as i64, cutoff], |r| r.get(0))
                .optional()?
        };
        let upto = young.map_or(delivered, |s| (s as u64).saturating_sub(1));
        if upto >= self.oldest {
            let n = self.delete_prefix(upto, false)?;
            self.shared.removed_age.fetch_add(n, Ordering::Relaxed);
            self.checkpoint(false);
        }
        Ok(())
    }

    fn on_tick(&mut self, now: Instant) {
        self.next_tick = now + TICK;
        if self.state != WriterState::Degraded {
            if let Err(why) = self.check_files() {
                self.on_damage(why);
            }
        }
        if self.state == WriterState::Degraded {
            self.note_drops();
            return;
        }
        if self.state == WriterState::Full {
            self.check_cap();
        }
        if now >= self.next_age {
            let every = self.s.max_age.map_or(Duration::from_secs(60), |a| {
                (a / 20).clamp(TICK, Duration::from_secs(60))
            });
            self.next_age = now + every;
            // Under steady load a transaction is always open: commit it early rather than never trim.
            self.commit_now();
            self.age_retention();
        }
        if now >= self.next_housekeeping && self.stall.is_none() {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.commit_now();
            self.checkpoint(false);
            self.vacuum_if_worthwhile();
            self.restore_reserve();
        }
        if !self.txn_open {
            self.maybe_index(false);
        }
        self.note_drops();
    }

    /// Gives free pages back to the file system when there are many more than the log will soon reuse, but
    /// never shortly after a disk-full episode (the space would only be fought over again).
    fn vacuum_if_worthwhile(&mut self) {
        let Ok(u) = self.measure() else { return };
        let slack = (self.s.max_bytes / 8).max(1 << 20);
        let recent_full = self
            .disk_full_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(600));
        if u.free > slack && !recent_full {
            let pages = (u.free - slack / 2) / self.page_size;
            // The pragma frees one page per step: it must be stepped to the end.
            let r = self
                .conn
                .prepare(&format!("PRAGMA incremental_vacuum({pages})"))
                .and_then(|mut st| {
                    let mut rows = st.query([])?;
                    while rows.next()?.is_some() {}
                    Ok(())
                });
            if r.is_err() && !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.checkpoint(true);
            // The file may shrink now (or at a later checkpoint): start measuring again.
            self.files.len_floor = 0;
            self.shared.len_floor.store(0, Ordering::Release);
            let _ = self.measure();
        }
    }

    /// `maintain()`: commit, age retention, cap, checkpoint — now.
    fn maintain(&mut self) -> Result<(), StoreError> {
        if self.state == WriterState::Degraded {
            return Err(StoreError::Damaged(self.damage_text()));
        }
        self.commit_now();
        if self.stall.is_some() {
            self.try_recover();
        }
        self.maybe_index(true);
        self.try_age_retention()?;
        self.enforce_cap()?;
        if !self.txn_open && self.stall.is_none() {
            self.checkpoint(true);
            self.vacuum_if_worthwhile();
            self.measure()?;
        }
        self.note_drops();
        Ok(())
    }

    fn on_maintenance_error(&mut self, e: rusqlite::Error) {
        if is_corrupt(&e) {
            self.on_damage(format!("maintenance failed: {e}"));
            return;
        }
        if is_disk_full(&e) {
            self.disk_full_at = Some(Instant::now());
        }
        tracing::warn!(path = %self.s.path.display(), "store: maintenance failed: {e}");
    }

    // ---- write failures ------------------------------------------------------------------------------------

    fn on_write_error(&mut self, e: rusqlite::Error) {
        self.rollback();
        if is_corrupt(&e) {
            self.on_damage(format!("a write failed: {e}"));
            return;
        }
        let disk_full = is_disk_full(&e);
        *self.shared.last_error.lock() = Some(e.to_string());
        if disk_full {
            self.disk_full_at = Some(Instant::now());
            self.full_cause = "disk full";
        }
        let now = Instant::now();
        match &mut self.stall {
            Some(s) => s.disk_full = disk_full,
            None => {
                self.stall = Some(Stall {
                    disk_full,
                    since: now,
                    attempts: 0,
                    next_retry: now,
                })
            }
        }
        // Recover at once if room can be made; appenders only see `Stalled` if that fails.
        self.try_recover();
    }

    fn pending_bytes(&self) -> u64 {
        self.pending
            .iter()
            .map(|p| match p {
                Pending::One(r, ..) => r.approx_bytes(),
                Pending::Batch(v, ..) => v.iter().map(LogRecord::approx_bytes).sum(),
            })
            .sum()
    }

    /// After a failed write: make room if the disk is full, then replay what was pending.
    fn try_recover(&mut self) {
        if self.state == WriterState::Degraded {
            self.stall = None;
            return;
        }
        let Some(disk_full) = self.stall.as_ref().map(|s| s.disk_full) else {
            return;
        };
        if !disk_full && self.stall.as_ref().is_some_and(|s| s.attempts > 0) {
            // Not a full disk (read-only file or file system, I/O error): the connection may hold on to
            // the condition (SQLite opens a file it cannot write read-only). A fresh one sees it gone.
            self.reopen();
        }
        let mut want = (self.pending_bytes() * 2).max(16 * self.page_size) + self.wal_budget / 4;

        let mut result = self.replay();
        for _ in 0..8 {
            let Err(e) = &result else { break };
            if !(disk_full && is_disk_full(e)) {
                break;
            }
            self.rollback();
            self.release_reserve();
            // Room first from delivered rows, then — drop_oldest only — from the oldest undelivered ones. The
            // deletions write a few pages into the WAL, in the space the reserve just gave back; copying the WAL
            // home first could take that space itself (its newest pages grow the database file) and leave
            // none for them. Only if the deletions do not fit, the WAL is copied home and emptied first.
            let mut room = self.make_room(want);
            if room.as_ref().is_err_and(is_disk_full) {
                self.rollback();
                self.checkpoint_wait("TRUNCATE", Duration::from_secs(1));
                room = self.make_room(want);
            }
            match room {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            // Copy the WAL home and empty it (waiting for the checkpointer thread if it is at it): what the
            // deletions freed becomes room for the rows replayed below.
            self.checkpoint_wait("TRUNCATE", Duration::from_secs(1));
            want *= 2;
            result = self.replay();
        }
        if let Err(e) = &result {
            if is_corrupt(e) {
                self.rollback();
                self.on_damage(format!("a write failed: {e}"));
                return;
            }
        }
        match result {
            Ok(()) => {
                let since = self.stall.take().map(|s| s.since);
                self.set_state(WriterState::Normal);
                if let Some(since) = since {
                    tracing::debug!("store: write recovered after {:?}", since.elapsed());
                }
                self.finish_commit();
                if self.state == WriterState::Degraded {
                    return;
                }
                self.restore_reserve();
                self.check_cap();
            }
            Err(e) => {
                self.rollback();
                *self.shared.last_error.lock() = Some(e.to_string());
                // Stalled before any ticket says so: a publisher told "not stored" that publishes again at
                // once must be refused at the door, not queued behind the stall.
                if self.state != WriterState::Stalled {
                    self.stall_count += 1;
                    self.set_state(WriterState::Stalled);
                }
                if !self.pending.is_empty() && self.s.policy != WhenFull::Block {
                    // Only `block` holds admitted messages back; the others give up on them, counted.
                    let msg = e.to_string();
                    let n: u64 = self
                        .pending
                        .iter()
                        .map(|p| match p {
                            Pending::One(..) => 1,
                            Pending::Batch(v, ..) => v.len() as u64,
                        })
                        .sum();
                    let ctr = if self.s.policy == WhenFull::DropNewest {
                        &self.shared.dropped_newest
                    } else {
                        &self.shared.dropped_write_failed
                    };
                    ctr.fetch_add(n, Ordering::Relaxed);
                    self.fail_pending(|| StoreError::Unwritable(msg.clone()));
                }
                self.note_drops();
                if let Some(s) = self.stall.as_mut() {
                    s.attempts += 1;
                    s.disk_full = is_disk_full(&e);
                    let backoff = self
                        .s
                        .opts
                        .retry_min
                        .saturating_mul(1 << s.attempts.min(16));
                    s.next_retry = Instant::now() + backoff.min(self.s.opts.retry_max);
                }
            }
        }
    }

    /// Opens the write connection again (same settings; no integrity check: the file is the one we had).
    fn reopen(&mut self) {
        let opts = StoreOptions {
            check_at_open: false,
            ..self.s.opts.clone()
        };
        match super::schema::open_writer(
            &self.s.path,
            self.s.synchronous_full,
            self.s.max_bytes,
            &opts,
        ) {
            Ok((conn, _)) => {
                if self.checkpointer.is_some() {
                    let _ = conn.pragma_update(None, "wal_autocheckpoint", 0);
                }
                self.conn = conn;
                self.txn_open = false;
                tracing::debug!(path = %self.s.path.display(), "store: write connection reopened");
            }
            Err(e) => {
                tracing::debug!(path = %self.s.path.display(), "store: reopening failed: {e}");
            }
        }
    }

    fn release_reserve(&mut self) {
        match &self.reserve {
            Reserve::File { path, .. } => {
                if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                    let _ = std::fs::remove_file(path);
                    tracing::debug!(path = %path.display(), "store: disk full, reserve file released");
                }
            }
            Reserve::Pages { limit, .. } => {
                let _ = self.conn.pragma_update(None, "max_page_count", limit);
            }
        }
    }

    /// Takes the reserve back, as far as the file system allows (best effort; retried at housekeeping).
    fn restore_reserve(&mut self) {
        match &self.reserve {
            Reserve::File { path, want } => {
                use std::io::Write;
                let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                let want = *want;
                if have >= want {
                    return;
                }
                let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                else {
                    return;
                };
                let chunk = vec![0u8; 64 << 10];
                let mut len = have;
                while len < want {
                    let n = chunk.len().min((want - len) as usize);
                    if f.write_all(&chunk[..n]).is_err() {
                        // Keep whole chunks only; a full disk leaves a smaller reserve, grown later.
                        let _ = f.set_len(len);
                        break;
                    }
                    len += n as u64;
                }
                let _ = f.sync_all();
            }
            Reserve::Pages { limit, reserve } => {
                let _ = self
                    .conn
                    .pragma_update(None, "max_page_count", limit - reserve);
            }
        }
    }

    /// Deletes delivered rows, then (drop_oldest) undelivered ones, worth about `bytes`. False if nothing
    /// could be deleted.
    fn make_room(&mut self, bytes: u64) -> rusqlite::Result<bool> {
        if self.rows() == 0 {
            return Ok(false);
        }
        let u = self.measure()?;
        let n = self.rows_for(bytes, &u);
        let delivered = self.min_cursor();
        if self.oldest <= delivered {
            let gone = self.delete_prefix(delivered.min(self.oldest + n - 1), false)?;
            self.shared.removed_space.fetch_add(gone, Ordering::Relaxed);
            Ok(gone > 0)
        } else if self.s.policy == WhenFull::DropOldest {
            Ok(self.evict(self.oldest + n - 1)? > 0)
        } else {
            Ok(false)
        }
    }

    /// Re-inserts everything pending in a fresh transaction and commits it (or just probes the disk with a
    /// tiny write when nothing is pending).
    fn replay(&mut self) -> rusqlite::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut result = Ok(());
        for p in pending {
            // After a failure the connection may have rolled back on its own: insert nothing more.
            if result.is_err() {
                self.pending.push(p);
                continue;
            }
            match p {
                Pending::One(rec, tx, _) => {
                    let r = self.insert(&rec);
                    let seq = *r.as_ref().unwrap_or(&0);
                    result = r.map(drop);
                    self.pending.push(Pending::One(rec, tx, seq));
                }
                Pending::Batch(recs, tx, _) => {
                    let first = self.next_seq;
                    result = self.insert_all(&recs).map(drop);
                    self.pending.push(Pending::Batch(recs, tx, first));
                }
            }
        }
        result?;
        if !self.txn_open {
            self.conn.execute_batch("BEGIN")?;
            self.txn_open = true;
            self.conn
                .execute_batch("UPDATE meta SET value = value WHERE key = 'last_seq'")?;
        }
        self.commit_txn().map(drop)
    }

    fn fail_pending(&mut self, err: impl Fn() -> StoreError) -> u64 {
        let mut n = 0;
        for p in self.pending.drain(..) {
            match p {
                Pending::One(_, tx, _) => {
                    n += 1;
                    let _ = tx.send(Err(err()));
                }
                Pending::Batch(recs, tx, _) => {
                    n += recs.len() as u64;
                    let _ = tx.send(Err(err()));
                }
            }
        }
        for w in self.flush_waiters.drain(..) {
            let _ = w.send(Ok(self.head));
        }
        n
    }

    // ---- episodes ------------------------------------------------------------------------------------------

    /// Logs the start of a drop (or stall/block) episode at once, and its summary once it has been quiet for
    /// `episode_quiet`: one line each, never one per message.
    fn note_drops(&mut self) {
        self.note_drops_at(Instant::now(), false);
    }

    /// `closing`: end every episode now (summaries at shutdown).
    fn note_drops_at(&mut self, now: Instant, closing: bool) {
        let quiet = self.s.opts.episode_quiet;
        let path = self.s.path.display().to_string();
        for i in 0..self.episodes.len() {
            let kind = self.episodes[i].kind;
            let (value, persisting) = match kind {
                EpisodeKind::Oldest => (self.shared.dropped_oldest.load(Ordering::Relaxed), false),
                EpisodeKind::Newest => (self.shared.dropped_newest.load(Ordering::Relaxed), false),
                EpisodeKind::WriteFailed => (
                    self.shared.dropped_write_failed.load(Ordering::Relaxed),
                    false,
                ),
                EpisodeKind::Stalled => (self.stall_count, self.stall.is_some()),
                EpisodeKind::Blocked => (self.blocked_count, self.state == WriterState::Full),
            };
            let lost_by_bridge = || {
                let t = self.shared.cursors.lock();
                let mut v: Vec<String> = t
                    .map
                    .iter()
                    .filter(|(_, c)| c.lost > 0)
                    .map(|(k, c)| format!("{k} {}", c.lost))
                    .collect();
                v.sort();
                v.join(", ")
            };
            let ep = &mut self.episodes[i];
            if value > ep.seen {
                if ep.active.is_none() {
                    ep.active = Some((now, ep.seen));
                    let cause = self.full_cause;
                    let err = self.shared.last_error.lock().clone().unwrap_or_default();
                    match kind {
                        EpisodeKind::Oldest => tracing::error!(
                            path,
                            "store full ({cause}): deleting the oldest undelivered messages (when_full: drop_oldest)"
                        ),
                        EpisodeKind::Newest => {
                            tracing::error!(path, "store full ({cause}): refusing new messages (when_full: drop_newest)")
                        }
                        EpisodeKind::WriteFailed => {
                            tracing::error!(path, "store cannot write ({err}): messages are being lost")
                        }
                        EpisodeKind::Stalled => {
                            let what = match self.s.policy {
                                WhenFull::Block => "publishers wait",
                                WhenFull::DropNewest | WhenFull::DropOldest => "new messages are refused",
                            };
                            tracing::error!(path, "store cannot write ({err}); {what} while it retries")
                        }
                        EpisodeKind::Blocked => tracing::warn!(
                            path,
                            "store full ({cause}): publishers wait until bridges deliver (when_full: block)"
                        ),
                    }
                }
                ep.seen = value;
                ep.last_event = now;
            } else if persisting {
                ep.last_event = now;
            } else if let Some((started, base)) = ep.active {
                if closing || now.duration_since(ep.last_event) >= quiet {
                    ep.active = None;
                    let n = ep.seen - base;
                    let took = now.duration_since(started).as_secs();
                    match kind {
                        EpisodeKind::Oldest => {
                            let lost = lost_by_bridge();
                            tracing::error!(
                                path,
                                "store: episode over: {n} oldest undelivered messages dropped in {took} s \
                                 (lost per bridge since start: {lost})"
                            )
                        }
                        EpisodeKind::Newest => {
                            tracing::error!(
                                path,
                                "store: episode over: {n} new messages refused in {took} s"
                            )
                        }
                        EpisodeKind::WriteFailed => {
                            tracing::error!(path, "store: episode over: {n} messages could not be written in {took} s")
                        }
                        EpisodeKind::Stalled => {
                            tracing::warn!(path, "store: writing normally again (after {took} s)")
                        }
                        EpisodeKind::Blocked => {
                            tracing::info!(path, "store: publishers unblocked (after {took} s)")
                        }
                    }
                }
            }
        }
    }

    // ---- shutdown ------------------------------------------------------------------------------------------

    /// Commits everything queued (even past the cap: a clean stop loses nothing it can write), persists the
    /// cursors and checkpoints the WAL into the database file.
    fn shutdown(&mut self, data_rx: &mut mpsc::Receiver<Req>) -> Result<(), StoreError> {
        data_rx.close();
        while let Ok(req) = data_rx.try_recv() {
            self.shared
                .queued_rows
                .fetch_sub(req.rows(), Ordering::Relaxed);
            self.inbox.push_back(req);
        }
        self.closing = true;
        self.shared.closed.store(true, Ordering::Release);
        if self.state == WriterState::Degraded {
            // Nothing more is written to a damaged file (a checkpoint could mask the damage from the
            // integrity check at the next start).
            self.process_inbox();
            if let Some(c) = self.checkpointer.take() {
                c.stop();
            }
            self.note_drops_at(Instant::now(), true);
            return Err(StoreError::Damaged(self.damage_text()));
        }
        if self.stall.is_some() {
            self.try_recover();
        }
        self.process_inbox();
        self.commit_now();
        self.maybe_index(true);
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        let mut result = Ok(());
        if self.stall.is_some() || !self.inbox.is_empty() {
            let msg = self
                .shared
                .last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "store closed".into());
            let mut n = self.fail_pending(|| StoreError::WriteFailed(msg.clone()));
            for req in self.inbox.drain(..) {
                n += req.rows();
                match req {
                    Req::One(_, tx) | Req::Flush(tx) => {
                        drop(tx.send(Err(StoreError::WriteFailed(msg.clone()))))
                    }
                    Req::Batch(_, tx) => drop(tx.send(Err(StoreError::WriteFailed(msg.clone())))),
                    Req::State(_) => {}
                }
            }
            self.shared
                .dropped_write_failed
                .fetch_add(n, Ordering::Relaxed);
            tracing::error!(path = %self.s.path.display(), "store: closing with {n} messages not written: {msg}");
            result = Err(StoreError::WriteFailed(msg));
        }
        self.stall = None;
        self.set_state(WriterState::Normal);
        self.note_drops_at(Instant::now(), true);
        self.checkpoint(true);
        result
    }
}
