//! State shared between the handles and the writer thread, and the [`StoreStats`] snapshot built from it.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use parking_lot::Mutex;

/// What the writer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterState {
    /// Accepting and committing.
    Normal,
    /// At `max_bytes` with nothing more it may delete: `drop_newest` refuses appends, `block` makes them wait.
    /// (`drop_oldest` never stays here: it evicts.)
    Full,
    /// A write failed (disk full, I/O error, read-only file): the writer holds what it could not commit and
    /// retries with backoff (reopening the database for errors other than a full disk); `block` makes appends
    /// wait, the other policies refuse them (counted). It recovers by itself when space or permission returns.
    Stalled,
    /// The database is damaged (SQLITE_CORRUPT/NOTADB, the file truncated, overwritten, replaced or deleted,
    /// its WAL deleted): every append is refused (counted as `write_failed`), so nothing is acknowledged as
    /// durable that may not be. Lasts until a restart, which moves the file aside and salvages it.
    Degraded,
}

impl WriterState {
    pub(crate) fn from_u8(v: u8) -> WriterState {
        match v {
            1 => WriterState::Full,
            2 => WriterState::Stalled,
            3 => WriterState::Degraded,
            _ => WriterState::Normal,
        }
    }
}

/// Messages lost, by reason. Each counter only grows (since the store was opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters {
    /// Undelivered rows deleted by `when_full: drop_oldest` (cap reached or disk full).
    pub oldest: u64,
    /// Appends refused by `when_full: drop_newest` (cap reached or disk full).
    pub newest: u64,
    /// Messages that could not be written at all: refused or abandoned while the disk was full with nothing
    /// left to evict, on an I/O error, or still uncommitted when the store closed on a failing disk.
    pub write_failed: u64,
    /// Rows lost to damage: unreadable when the damaged log was salvaged at start (the salvage's count).
    pub damaged: u64,
}

impl DropCounters {
    /// Sum of all reasons.
    pub fn total(&self) -> u64 {
        self.oldest + self.newest + self.write_failed + self.damaged
    }
}

/// One bridge's position in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorStats {
    /// Bridge name.
    pub bridge: String,
    /// Last delivered seq (rows after it are pending).
    pub seq: u64,
    /// Rows in the log after the cursor (the backlog of this bridge).
    pub lag_rows: u64,
    /// Rows this bridge never got because `drop_oldest` evicted them (since the store was opened).
    pub lost_rows: u64,
}

/// A snapshot of the store for `fieldbridge status`, the HTTP API and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreStats {
    /// Database file.
    pub path: PathBuf,
    /// Rows in the log.
    pub rows: u64,
    /// Bytes on disk: database file plus WAL, as last measured by the writer (after its latest commit).
    pub bytes_on_disk: u64,
    /// Bytes in use: `bytes_on_disk` minus the free pages inside the database file (reusable space).
    pub bytes_used: u64,
    /// Of `bytes_on_disk`, the WAL file (bounded by checkpoints; see the module docs).
    pub wal_bytes: u64,
    /// The configured cap.
    pub max_bytes: u64,
    /// Oldest row's seq, if the log is not empty.
    pub oldest_seq: Option<u64>,
    /// Oldest row's timestamp.
    pub oldest_ts_ms: Option<i64>,
    /// Newest row's seq, if the log is not empty.
    pub newest_seq: Option<u64>,
    /// Newest row's timestamp.
    pub newest_ts_ms: Option<i64>,
    /// Last seq assigned and committed, ever (survives the log being emptied).
    pub head_seq: u64,
    /// One entry per bridge cursor, by name.
    pub cursors: Vec<CursorStats>,
    /// Drops by reason.
    pub dropped: DropCounters,
    /// Rows removed because every bridge had delivered them and they were older than `max_age`.
    pub removed_by_age: u64,
    /// Delivered rows removed to stay under `max_bytes`.
    pub removed_for_space: u64,
    /// Rows waiting in the writer's queue.
    pub queue_depth: u64,
    /// Transactions committed that carried rows.
    pub commits: u64,
    /// Rows committed.
    pub rows_committed: u64,
    /// What the writer is doing.
    pub state: WriterState,
    /// The last write error, if the writer is stalled (or was, most recently).
    pub last_error: Option<String>,
    /// Why the store is degraded (damage found), if it is.
    pub damage: Option<String>,
}

/// One cursor as the handles and the writer share it.
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    /// Current position (only moves forward).
    pub seq: u64,
    /// Position last committed to the `cursors` table (`None`: not yet stored).
    pub durable: Option<u64>,
    /// Rows evicted under this cursor (since open).
    pub lost: u64,
}

/// All cursors, plus names removed but not yet deleted from the table.
#[derive(Debug, Default)]
pub(crate) struct CursorTable {
    pub map: HashMap<String, Cursor>,
    pub removed: HashSet<String>,
}

/// Counters and state written by the writer (and, for refusals, by appenders), read by `stats()`.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub state: AtomicU8,
    pub head: AtomicU64,
    pub oldest: AtomicU64,
    /// Seqs missing between `oldest` and `head` (after a salvage that lost rows): `rows` subtracts them.
    pub gap_rows: AtomicU64,
    pub commits: AtomicU64,
    pub rows_committed: AtomicU64,
    pub dropped_oldest: AtomicU64,
    pub dropped_newest: AtomicU64,
    pub dropped_write_failed: AtomicU64,
    /// Rows a salvage at start could not read (see `DropCounters::damaged`).
    pub dropped_damaged: AtomicU64,
    pub removed_age: AtomicU64,
    pub removed_space: AtomicU64,
    pub queued_rows: AtomicU64,
    pub bytes_on_disk: AtomicU64,
    pub bytes_used: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// When a write or maintenance step last found the disk full (see `Store::health`).
    pub disk_full_at: Mutex<Option<std::time::Instant>>,
    /// What damage was found (set once; the state is then `Degraded`).
    pub damage: Mutex<Option<String>>,
    /// Damage the background integrity check found, for the writer to act on at its next tick.
    pub found_damage: Mutex<Option<String>>,
    /// The longest the writer has seen the database file since it last gave space back (see `Files`), for
    /// the checkpointer's own look before it copies the WAL in.
    pub len_floor: AtomicU64,
    /// Background integrity checks completed.
    pub verify_passes: AtomicU64,
    /// Entries in the writer's stream cache after its last commit.
    pub stream_cache_len: AtomicU64,
    pub cursors: Mutex<CursorTable>,
    /// Set when the writer has shut down (appends fail with `Closed`).
    pub closed: AtomicBool,
    /// Set when a cursor change is waiting for the writer to notice it (one wake-up message per burst).
    pub cursor_wake: AtomicBool,
    /// The newest committed rows (see `tail.rs`).
    pub tail: Mutex<super::tail::Tail>,
}

impl Shared {
    pub(crate) fn state(&self) -> WriterState {
        WriterState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn dropped(&self) -> DropCounters {
        DropCounters {
            oldest: self.dropped_oldest.load(Ordering::Relaxed),
            newest: self.dropped_newest.load(Ordering::Relaxed),
            write_failed: self.dropped_write_failed.load(Ordering::Relaxed),
            damaged: self.dropped_damaged.load(Ordering::Relaxed),
        }
    }
}
