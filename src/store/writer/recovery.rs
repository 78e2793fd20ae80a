//! The writer after a failed write: the stall, the disk-full reserve, making room, replaying what was pending,
//! and reopening the connection.
use super::*;

impl Writer {
    // ---- write failures ------------------------------------------------------------------------------------

    pub(super) fn on_write_error(&mut self, e: rusqlite::Error) {
        self.rollback();
        if is_corrupt(&e) {
            self.on_damage(format!("a write failed: {e}"));
            return;
        }
        let disk_full = is_disk_full(&e);
        *self.shared.last_error.lock() = Some(e.to_string());
        if disk_full {
            self.disk_full_at = Some(Instant::now());
            *self.shared.disk_full_at.lock() = self.disk_full_at.map(|t| t.into_std());
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
            .flat_map(|p| p.records().1)
            .map(LogRecord::approx_bytes)
            .sum()
    }

    /// After a failed write: make room if the disk is full, then replay what was pending.
    pub(super) fn try_recover(&mut self) {
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
        // Room for what is pending, doubled at each failed attempt below: no more is evicted than the write
        // needs (adding a share of the WAL budget here made a small log on a full disk lose nearly all of its
        // undelivered rows in one episode).
        let mut want = (self.pending_bytes() * 2).max(16 * self.page_size);

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
                    let n = self.pending_rows();
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
        match crate::store::schema::open_writer(
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
    pub(super) fn restore_reserve(&mut self) {
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

    pub(super) fn fail_pending(&mut self, err: impl Fn() -> StoreError) -> u64 {
        let n = self.pending_rows();
        for p in self.pending.drain(..) {
            match p {
                Pending::One(_, tx, _) => drop(tx.send(Err(err()))),
                Pending::Batch(_, tx, _) => drop(tx.send(Err(err()))),
            }
        }
        for w in self.flush_waiters.drain(..) {
            let _ = w.send(Ok(self.head));
        }
        n
    }
}
