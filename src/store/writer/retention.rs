//! The writer's size and age limits: measuring, the cap (deleting delivered rows, then the `when_full` policy),
//! eviction, checkpoints, age retention and housekeeping (vacuum, the reserve, file checks).
use super::*;

impl Writer {
    // ---- size ----------------------------------------------------------------------------------------------

    pub(super) fn measure(&self) -> rusqlite::Result<Usage> {
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
        low_water(self.s.max_bytes)
    }

    pub(super) fn rows(&self) -> u64 {
        (self.head + 1)
            .saturating_sub(self.oldest)
            .saturating_sub(super::super::schema::gap_rows(
                &self.gaps,
                self.oldest,
                self.head,
            ))
    }

    pub(super) fn check_cap(&mut self) {
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
    pub(super) fn rows_for(&self, bytes: u64, u: &Usage) -> u64 {
        let rows = self.rows().max(1);
        let avg = (u.db_used / rows).max(32);
        bytes.div_ceil(avg).clamp(1, rows.min(DELETE_CHUNK))
    }

    /// Deletes rows `oldest..=upto` (no transaction may be open), in chunks.
    pub(super) fn delete_prefix(&mut self, upto: u64, evicting: bool) -> rusqlite::Result<u64> {
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
                // Rows actually deleted: after a salvage that lost rows there are gaps in the range.
                let deleted = self
                    .conn
                    .prepare_cached("DELETE FROM messages WHERE seq <= ?1")?
                    .execute([end as i64])? as u64;
                let moved = if evicting {
                    self.move_cursors_past(end)?
                } else {
                    Vec::new()
                };
                self.conn.execute_batch("COMMIT")?;
                Ok::<_, rusqlite::Error>((moved, deleted))
            })();
            match r {
                Ok((moved, deleted)) => {
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
                    if !self.gaps.is_empty() {
                        self.gaps.retain(|&(_, b)| b > end);
                        self.shared.gap_rows.store(
                            super::super::schema::gap_rows(&self.gaps, self.oldest, self.head),
                            Ordering::Release,
                        );
                    }
                    self.shared.tail.lock().remove_upto(end);
                    if end > self.indexed {
                        self.index_keys.drop_upto(end);
                    }
                    self.indexed = self.indexed.max(end);
                    self.shared.oldest.store(self.oldest, Ordering::Release);
                    total += deleted.min(n);
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
    pub(super) fn evict(&mut self, upto: u64) -> rusqlite::Result<u64> {
        let n = self.delete_prefix(upto, true)?;
        if n > 0 {
            self.shared.dropped_oldest.fetch_add(n, Ordering::Relaxed);
            self.note_drops();
        }
        Ok(n)
    }

    pub(super) fn checkpoint(&self, truncate: bool) {
        // A TRUNCATE checkpoint waits for readers (and the checkpointer thread); never stall appends long.
        if truncate {
            self.checkpoint_wait("TRUNCATE", Duration::from_millis(50));
        } else {
            self.checkpoint_wait("PASSIVE", Duration::ZERO);
        }
    }

    pub(super) fn checkpoint_wait(&self, mode: &str, busy: Duration) {
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

    pub(super) fn age_retention(&mut self) {
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

    pub(super) fn on_tick(&mut self, now: Instant) {
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
    pub(super) fn maintain(&mut self) -> Result<(), StoreError> {
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

    pub(super) fn on_maintenance_error(&mut self, e: rusqlite::Error) {
        if is_corrupt(&e) {
            self.on_damage(format!("maintenance failed: {e}"));
            return;
        }
        if is_disk_full(&e) {
            self.disk_full_at = Some(Instant::now());
            *self.shared.disk_full_at.lock() = self.disk_full_at.map(|t| t.into_std());
        }
        tracing::warn!(path = %self.s.path.display(), "store: maintenance failed: {e}");
    }
}

/// The most one pass over the cap deletes (of rows' space): 5 % of the cap, at most [`EVICT_STEP`].
/// A large cap is not trimmed by 5 % at once: at 1 GiB that is ~50 MiB of rows, a pass of seconds during
/// which appends wait in the queues (and their memory stays with the allocator afterwards).
pub(super) fn low_water(max_bytes: u64) -> u64 {
    max_bytes - (max_bytes / 20).min(EVICT_STEP)
}

/// See [`low_water`].
const EVICT_STEP: u64 = 8 << 20;

#[cfg(test)]
mod tests {
    use super::low_water;

    #[test]
    fn a_pass_over_the_cap_trims_five_percent_and_at_most_eight_mib() {
        assert_eq!(low_water(100 << 20), (100 << 20) - (5 << 20));
        assert_eq!(low_water(160 << 20), (160 << 20) - (8 << 20));
        assert_eq!(low_water(1 << 30), (1 << 30) - (8 << 20));
        assert_eq!(low_water(1 << 20), (1 << 20) - (1 << 20) / 20);
    }
}
