//! The writer's history index pass: new rows' keys, sorted, written as blocks in their own transaction.
use super::*;

impl Writer {
    // ---- the history index ---------------------------------------------------------------------------------

    /// Brings `history` up to the head when a pass is due (or `force`): the new rows' keys, sorted, go in as
    /// blocks (see `history.rs`), in their own transaction. Each index page is written once per pass instead
    /// of once per commit (random index writes would multiply the bytes written), and one b-tree insert
    /// covers up to a hundred keys. A pass is due after `index_interval`, or once the unindexed rows make
    /// blocks of `index_keys_per_stream` keys for the streams they belong to (at least `index_rows`, at most
    /// `index_rows_max`): a pass writes a block, so a page, for every stream it saw.
    pub(super) fn maybe_index(&mut self, force: bool) {
        if self.txn_open || self.stall.is_some() || self.head <= self.indexed {
            return;
        }
        let o = &self.s.opts;
        let pass_rows = if self.keys_valid {
            self.index_keys
                .pass_rows(o.index_keys_per_stream, o.index_rows, o.index_rows_max)
        } else {
            o.index_rows
        };
        let due = force
            || self.head - self.indexed >= pass_rows
            || self.last_index.elapsed() >= o.index_interval;
        if !due {
            return;
        }
        let last = self.head;
        let r = (|| {
            self.conn.execute_batch("BEGIN")?;
            if self.keys_valid {
                insert_sorted_history(&self.conn, self.index_keys.sorted(), o.index_values)?;
            } else {
                // After a crash or a failed pass: the keys come from the rows themselves.
                let mut keys = Vec::new();
                let mut st = self.conn.prepare_cached(
                    "SELECT stream, ts, seq, num FROM messages WHERE seq > ?1 AND seq <= ?2",
                )?;
                let mut rows = st.query(params![self.indexed as i64, last as i64])?;
                while let Some(r) = rows.next()? {
                    let num: Option<f64> = r.get(3)?;
                    keys.push((r.get(0)?, r.get(1)?, r.get(2)?, num.unwrap_or(f64::NAN)));
                }
                insert_history(&self.conn, &mut keys, o.index_values)?;
            }
            self.set_indexed_in_txn(last)?;
            self.conn.execute_batch("COMMIT")
        })();
        self.index_keys.clear();
        match r {
            Ok(()) => {
                self.indexed = last;
                self.last_index = Instant::now();
                // Up to date now, with no transaction open: new rows' keys can be collected again.
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

    pub(super) fn set_indexed_in_txn(&self, seq: u64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'indexed_seq'")?
            .execute([seq as i64])
            .map(drop)
    }
}
