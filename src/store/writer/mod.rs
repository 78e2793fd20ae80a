//! The writer thread: group commit, cursor persistence, retention, the cap policies and disk-full recovery.
//!
//! It owns the only write connection. It runs a current-thread tokio runtime of its own, only to wait on its
//! channels and timers at once; all SQLite work is synchronous on this thread.
//!
//! By concern: appends, commits, cursors and shutdown here; the history index in `index.rs`; size, the cap,
//! age retention and housekeeping in `retention.rs`; failed writes, the disk-full reserve and replay in
//! `recovery.rs`; drop and stall episodes in `episodes.rs`; the checkpointer thread and the background integrity
//! check in `checkpointer.rs`. All of it runs on the one writer thread.
mod checkpointer;
mod episodes;
mod index;
mod keys;
mod recovery;
mod retention;

#[cfg(test)]
pub(crate) use checkpointer::damaged_before_checkpoint;
use checkpointer::Checkpointer;

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

impl Pending {
    /// The first row's seq (once inserted) and the rows, one or a batch alike.
    fn records(&self) -> (u64, &[LogRecord]) {
        match self {
            Pending::One(rec, _, seq) => (*seq, std::slice::from_ref(rec)),
            Pending::Batch(recs, _, first) => (*first, recs),
        }
    }
}

impl Writer {
    /// Rows held in `pending`.
    fn pending_rows(&self) -> u64 {
        self.pending
            .iter()
            .map(|p| p.records().1.len() as u64)
            .sum()
    }
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

/// Remembers a file's identity (device, inode) the first time; afterwards, an error if it changed.
fn same_file(known: &mut Option<(u64, u64)>, id: (u64, u64), what: &str) -> Result<(), String> {
    match *known {
        None => *known = Some(id),
        Some(k) if k != id => return Err(format!("{what} was replaced by another file")),
        Some(_) => {}
    }
    Ok(())
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
    /// Seqs missing between `oldest` and `head` (after a salvage that lost rows; see `schema::OpenState`).
    gaps: Vec<(u64, u64)>,
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
    /// The history key of every row after `indexed` (committed or in the open transaction), when
    /// `keys_valid`: the next index pass sorts these instead of reading the rows back.
    index_keys: keys::PendingKeys,
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
    insert_sorted_history(conn, keys.iter().copied(), with_values)
}

/// [`insert_history`] for keys already sorted by `(stream, ts, seq)`: a block per stream, of at most
/// [`super::history::BLOCK`] keys.
pub(super) fn insert_sorted_history(
    conn: &Connection,
    keys: impl IntoIterator<Item = IndexKey>,
    with_values: bool,
) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT INTO history (stream, min_ts, max_ts, min_seq, max_seq, n, keys, vals) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    // The block being gathered: its stream, its `(ts, seq)` keys and their values.
    let mut stream = None;
    let mut pairs: Vec<(i64, i64)> = Vec::with_capacity(super::history::BLOCK);
    let mut nums: Vec<Option<f64>> = Vec::with_capacity(super::history::BLOCK);
    let mut blob = Vec::new();
    let mut vals = Vec::new();
    let mut write = |stream: i64, pairs: &[(i64, i64)], nums: &[Option<f64>]| {
        super::history::encode(pairs, &mut blob);
        let vals = with_values.then(|| {
            super::history::encode_values(nums, &mut vals);
            &vals[..]
        });
        let (min_seq, max_seq) = pairs.iter().fold((i64::MAX, i64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
        st.execute(params![
            stream,
            pairs[0].0,
            pairs[pairs.len() - 1].0,
            min_seq,
            max_seq,
            pairs.len() as i64,
            &blob,
            vals
        ])
        .map(drop)
    };
    for (s, ts, seq, num) in keys {
        if let Some(cur) = stream.filter(|&c| c != s || pairs.len() == super::history::BLOCK) {
            write(cur, &pairs, &nums)?;
            pairs.clear();
            nums.clear();
        }
        stream = Some(s);
        pairs.push((ts, seq));
        nums.push(Some(num).filter(|v| !v.is_nan()));
    }
    if let Some(cur) = stream {
        write(cur, &pairs, &nums)?;
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
    match super::volume_space(path) {
        Some((free, _)) => want.min(free.saturating_add(have) / 4),
        None => want,
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
        shared.gap_rows.store(
            super::schema::gap_rows(&st.gaps, st.oldest, st.head),
            Ordering::Release,
        );
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
            gaps: st.gaps.clone(),
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
            index_keys: keys::PendingKeys::default(),
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
                if !self.index_keys.push(seq, stream, rec.ts_ms, num) {
                    self.keys_valid = false;
                    self.index_keys.clear();
                }
            }
            self.next_seq += 1;
            self.txn_rows += 1;
            self.txn_bytes += rec.approx_bytes();
        }
        Ok(first)
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
            Ok(id) => same_file(&mut self.files.db, id, "the database file")?,
        }
        match ident(&self.s.wal_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.files.wal.is_some() {
                    return Err("the WAL file (-wal) was deleted".into());
                }
            }
            Err(_) => {}
            Ok(id) => same_file(&mut self.files.wal, id, "the WAL file (-wal)")?,
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
        if h[..16] != crate::store::SQLITE_HEADER[..] {
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
        let n = self.pending_rows();
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
        // And a second name for the WAL: SQLite deletes it when the last connection closes (at the stop),
        // and it is evidence (and maybe rows) the salvage at the next start should find beside the file.
        let kept = super::schema::kept_wal_path(&self.s.path);
        let _ = std::fs::remove_file(&kept);
        let _ = std::fs::hard_link(super::schema::wal_path(&self.s.path), &kept);
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
            let committed = self.pending.iter().flat_map(|p| {
                let (first, recs) = p.records();
                (first..).zip(recs)
            });
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
        self.index_keys.truncate_after(self.head);
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
