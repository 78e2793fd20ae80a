//! The newest committed rows, kept in memory by the writer after each commit (bounded by rows and bytes), so
//! that a bridge that keeps up reads what was just committed without a SQLite query and without a trip through
//! the blocking pool. A reader whose position is older than the tail reads the log as before.
//!
//! The tail holds exactly the rows the log holds at its newest end: rows enter only after their COMMIT (and
//! the file check after it) succeeded, in seq order, and leave when the writer deletes them from the log
//! (retention, the cap, eviction), so a read from the tail returns what a read of the log would.
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::record::{LogRecord, LogRow};

/// Rows kept at most. A bridge that keeps up reads a commit or two behind the head, but its read-ahead waits
/// while the upstream's window is full: at 15,000 rows/s a bridge was seen 1,000-3,000 rows behind. This
/// covers about half a second at that rate.
pub(crate) const TAIL_ROWS: usize = 8192;
/// Bytes kept at most (approximate, as `LogRecord::approx_bytes` counts them).
pub(crate) const TAIL_BYTES: u64 = 2 << 20;

#[derive(Debug, Default)]
pub(crate) struct Tail {
    rows: VecDeque<(LogRow, u64)>,
    bytes: u64,
}

impl Tail {
    /// Appends committed rows, `(seq, record)` in seq order. A row that does not follow the newest one held
    /// starts the tail over from it.
    /// Returns the payload bytes it copied.
    pub(crate) fn extend<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (u64, &'a LogRecord)>,
    ) -> usize {
        let mut rows: Vec<(u64, &LogRecord)> = rows.into_iter().collect();
        // Only the newest rows that fit the bounds are copied (a commit can hold 10,000 rows or 4 MiB; one
        // row may be larger than the whole budget). If older ones are left out, the tail starts over.
        let (mut n, mut bytes) = (0, 0);
        for (_, r) in rows.iter().rev() {
            let size = r.approx_bytes();
            if n == TAIL_ROWS || bytes + size > TAIL_BYTES {
                break;
            }
            n += 1;
            bytes += size;
        }
        if n < rows.len() {
            self.clear();
            rows.drain(..rows.len() - n);
        }
        // The payloads are copied into one buffer per commit: a publish's payload is a view of its
        // connection's read buffer, which the tail must not keep alive.
        let mut arena = BytesMut::with_capacity(rows.iter().map(|(_, r)| r.payload.len()).sum());
        for (_, r) in &rows {
            arena.extend_from_slice(&r.payload);
        }
        let mut arena = arena.freeze();
        let copied = arena.len();
        for (seq, rec) in rows {
            if self.rows.back().is_some_and(|(r, _)| r.seq + 1 != seq) {
                self.clear();
            }
            let size = rec.approx_bytes();
            let payload = arena.split_to(rec.payload.len());
            self.rows.push_back((row(seq, rec, payload), size));
            self.bytes += size;
        }
        while self.rows.len() > TAIL_ROWS || self.bytes > TAIL_BYTES {
            self.pop_front();
        }
        copied
    }

    /// Forgets rows with `seq <= upto` (deleted from the log).
    pub(crate) fn remove_upto(&mut self, upto: u64) {
        while self.rows.front().is_some_and(|(r, _)| r.seq <= upto) {
            self.pop_front();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.rows.pop_front() {
            self.bytes -= size;
        }
    }

    /// Rows with `seq > after`, at most `limit` (at least one), if the tail holds the row right after `after`.
    /// `None`: read the log (never an empty answer: the tail cannot tell "nothing newer" from "not here yet").
    pub(crate) fn read(&self, after: u64, limit: usize) -> Option<Vec<LogRow>> {
        let (front, _) = self.rows.front()?;
        let (back, _) = self.rows.back()?;
        // `after < back.seq` first: `after + 1` cannot overflow then.
        if limit == 0 || after >= back.seq || after + 1 < front.seq {
            return None;
        }
        let skip = (after + 1 - front.seq) as usize;
        Some(
            self.rows
                .range(skip..)
                .take(limit)
                .map(|(r, _)| r.clone())
                .collect(),
        )
    }
}

/// The row as the log stores it (a NaN value is stored as none).
fn row(seq: u64, rec: &LogRecord, payload: Bytes) -> LogRow {
    LogRow {
        seq,
        ts_ms: rec.ts_ms,
        topic: rec.topic.clone(),
        payload,
        qos: rec.qos,
        retain: rec.retain,
        props: rec.props.clone(),
        device: rec.device.clone(),
        point: rec.point.clone(),
        num: rec.num.filter(|n| !n.is_nan()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(n: usize, size: usize) -> Vec<LogRecord> {
        (0..n)
            .map(|i| LogRecord::new(format!("t/{i}"), vec![b'x'; size]))
            .collect()
    }

    fn seqs(rows: &[LogRow]) -> Vec<u64> {
        rows.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn reads_only_what_it_holds_from_the_row_after_the_position() {
        let mut t = Tail::default();
        assert!(t.read(0, 10).is_none());
        t.extend((11..).zip(&recs(5, 10)));
        assert!(t.read(9, 10).is_none(), "row 10 is not in the tail");
        assert_eq!(seqs(&t.read(10, 10).unwrap()), [11, 12, 13, 14, 15]);
        assert_eq!(seqs(&t.read(12, 2).unwrap()), [13, 14]);
        assert!(
            t.read(15, 10).is_none(),
            "nothing newer: an empty answer would skip what comes next"
        );
        assert!(t.read(16, 10).is_none());
        assert!(t.read(u64::MAX, 10).is_none());
        assert!(t.read(12, 0).is_none());
        t.remove_upto(12);
        assert!(t.read(11, 10).is_none());
        assert_eq!(seqs(&t.read(12, 10).unwrap()), [13, 14, 15]);
    }

    #[test]
    fn payloads_are_copied_not_views_of_the_publishers_buffers() {
        let mut big = BytesMut::from(&b"0123456789"[..]);
        big.resize(64 << 10, b'.');
        let frame = big.freeze();
        let mut rec = LogRecord::new("t", frame.slice(2..5));
        rec.num = Some(f64::NAN);
        let mut t = Tail::default();
        t.extend([(1, &rec), (2, &rec)]);
        let rows = t.read(0, 10).unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(&r.payload[..], b"234");
            assert!(!std::ptr::eq(r.payload.as_ptr(), rec.payload.as_ptr()));
            assert_eq!(r.num, None, "stored as none, as the log stores NaN");
        }
        // Only the tail's own copy refers to its buffer: the 64 KiB frame is free to go.
        drop(rec);
        assert!(frame.is_unique());
    }

    #[test]
    fn a_gap_starts_over_and_both_bounds_hold() {
        let mut t = Tail::default();
        t.extend((1..).zip(&recs(3, 10)));
        t.extend((10..).zip(&recs(2, 10)));
        assert!(t.read(3, 10).is_none(), "rows 4..=9 were never seen");
        assert_eq!(seqs(&t.read(9, 10).unwrap()), [10, 11]);
        t.extend((12..).zip(&recs(TAIL_ROWS + 5, 10)));
        assert_eq!(t.rows.len(), TAIL_ROWS);
        let big = (TAIL_BYTES / 4) as usize;
        t.extend((12 + TAIL_ROWS as u64 + 5..).zip(&recs(8, big)));
        assert!(t.bytes <= TAIL_BYTES, "{}", t.bytes);
        assert!(t.rows.len() < 8);
        // A row larger than the whole budget is not copied: the tail starts over after it.
        let next = t.rows.back().unwrap().0.seq + 1;
        assert_eq!(t.extend((next..).zip(&recs(1, 2 * TAIL_BYTES as usize))), 0);
        assert!(t.rows.is_empty() && t.bytes == 0);
        assert!(t.read(next - 1, 10).is_none());
        t.extend((next + 1..).zip(&recs(2, 10)));
        assert!(
            t.read(next - 1, 10).is_none(),
            "the large row is read from the log"
        );
        assert_eq!(seqs(&t.read(next, 10).unwrap()), [next + 1, next + 2]);
        // A commit larger than the bounds: only its newest rows are kept, and nothing older.
        let start = next + 3;
        let copied = t.extend((start..).zip(&recs(TAIL_ROWS * 2, 10)));
        assert_eq!(copied, TAIL_ROWS * 10, "only the rows kept are copied");
        assert_eq!(t.rows.len(), TAIL_ROWS);
        assert_eq!(t.rows.front().unwrap().0.seq, start + TAIL_ROWS as u64);
        assert!(t.read(next, 10).is_none());
    }
}
