//! The checkpointer thread (PASSIVE checkpoints on its own connection, so that commits do not wait for them)
//! and the background integrity check it runs.
use super::*;

/// The checkpointer thread: PASSIVE checkpoints on its own connection when the writer asks (coalesced), and
/// the periodic background integrity check (`StoreOptions::verify_interval`).
pub(super) struct Checkpointer {
    pub(super) tx: std::sync::mpsc::SyncSender<()>,
    handle: std::thread::JoinHandle<()>,
    /// Held while a checkpoint runs (the database file may be shorter than its header says meanwhile).
    pub(super) busy: Arc<parking_lot::Mutex<()>>,
    /// Set at shutdown: interrupts a running integrity check.
    stop: Arc<AtomicBool>,
}

/// The background integrity check runs at most this long at a time...
const VERIFY_SLICE: Duration = Duration::from_millis(25);
/// ... then pauses this long (about a fifth of one core and of the disk's read bandwidth).
const VERIFY_PAUSE: Duration = Duration::from_millis(100);

impl Checkpointer {
    pub(super) fn start(
        path: &std::path::Path,
        synchronous_full: bool,
        verify_every: Option<Duration>,
        shared: Arc<Shared>,
    ) -> Option<Checkpointer> {
        let conn = match crate::store::schema::open_checkpointer(path, synchronous_full) {
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

    pub(super) fn stop(self) {
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
    if f.read_exact(&mut magic).is_err() || &magic != crate::store::SQLITE_HEADER {
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
