//! The history keys the writer keeps from the append to the next index pass, compactly.
//!
//! One entry per row after `indexed`, in seq order without gaps, so the seq is implicit (the first key's seq
//! plus the position); the stream id as `u32` and the timestamp and value as columns of their own: 20 bytes a
//! row instead of a 32-byte tuple. The set of streams seen since the last pass sizes the next pass (see
//! [`PendingKeys::pass_rows`]).
use std::collections::HashSet;

use super::IndexKey;

#[derive(Debug, Default)]
pub(super) struct PendingKeys {
    /// Seq of the first key (meaningless while empty).
    first: u64,
    stream: Vec<u32>,
    ts: Vec<i64>,
    num: Vec<f64>,
    streams: HashSet<u32>,
}

impl PendingKeys {
    /// Keeps the key of row `seq`; false (nothing kept) when it cannot be kept compactly: a stream id beyond
    /// `u32` or a seq that does not follow the last key. The caller then reads the rows back at the next pass.
    pub(super) fn push(&mut self, seq: u64, stream: i64, ts: i64, num: f64) -> bool {
        let Ok(s) = u32::try_from(stream) else {
            return false;
        };
        if self.stream.is_empty() {
            self.first = seq;
        } else if seq != self.first + self.stream.len() as u64 {
            return false;
        }
        self.stream.push(s);
        self.ts.push(ts);
        self.num.push(num);
        self.streams.insert(s);
        true
    }

    pub(super) fn len(&self) -> usize {
        self.stream.len()
    }

    /// Drops every key (the capacity stays, for the next pass's worth).
    pub(super) fn clear(&mut self) {
        self.stream.clear();
        self.ts.clear();
        self.num.clear();
        self.streams.clear();
    }

    /// Drops the keys of rows after `head` (a rolled-back transaction).
    pub(super) fn truncate_after(&mut self, head: u64) {
        let keep = head.saturating_add(1).saturating_sub(self.first);
        let keep = usize::try_from(keep).unwrap_or(usize::MAX).min(self.len());
        self.stream.truncate(keep);
        self.ts.truncate(keep);
        self.num.truncate(keep);
    }

    /// Drops the keys of rows up to `end` (deleted before they were indexed).
    pub(super) fn drop_upto(&mut self, end: u64) {
        if self.stream.is_empty() || end < self.first {
            return;
        }
        let n = usize::try_from(end - self.first + 1)
            .unwrap_or(usize::MAX)
            .min(self.len());
        self.stream.drain(..n);
        self.ts.drain(..n);
        self.num.drain(..n);
        self.first = end + 1;
    }

    /// How many unindexed rows make a pass due: enough for `per_stream` keys in each stream's block, which
    /// is what keeps a pass's b-tree writes in proportion (a pass writes a block, so dirties a page, for
    /// every stream it saw: with 15,000 streams and 100,000 rows that is a page per 7 keys), within
    /// `min..=max` (`max` bounds the memory kept here: 20 bytes a row).
    pub(super) fn pass_rows(&self, per_stream: u64, min: u64, max: u64) -> u64 {
        (self.streams.len() as u64)
            .saturating_mul(per_stream)
            .clamp(min, max.max(min))
    }

    /// The keys sorted by `(stream, ts, seq)`.
    pub(super) fn sorted(&self) -> impl Iterator<Item = IndexKey> + '_ {
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        order.sort_unstable_by_key(|&i| {
            let i = i as usize;
            (self.stream[i], self.ts[i], i)
        });
        order.into_iter().map(move |i| {
            let i = i as usize;
            (
                i64::from(self.stream[i]),
                self.ts[i],
                (self.first + i as u64) as i64,
                self.num[i],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(k: &PendingKeys) -> Vec<IndexKey> {
        k.sorted().collect()
    }

    #[test]
    fn keys_come_back_sorted_by_stream_time_and_seq_with_their_seqs() {
        let mut k = PendingKeys::default();
        assert!(k.push(10, 2, 500, 1.5));
        assert!(k.push(11, 1, 700, 2.0));
        assert!(k.push(12, 2, 400, f64::NAN));
        assert!(k.push(13, 1, 700, 3.0));
        let got = all(&k);
        assert_eq!(
            got.iter().map(|x| (x.0, x.1, x.2)).collect::<Vec<_>>(),
            vec![(1, 700, 11), (1, 700, 13), (2, 400, 12), (2, 500, 10)]
        );
        assert_eq!(got[0].3, 2.0);
        assert!(got[2].3.is_nan());
    }

    #[test]
    fn a_gap_in_seqs_or_a_wide_stream_id_is_refused() {
        let mut k = PendingKeys::default();
        assert!(k.push(5, 1, 0, 0.0));
        assert!(!k.push(7, 1, 0, 0.0), "seq 6 is missing");
        assert!(!k.push(6, i64::from(u32::MAX) + 1, 0, 0.0));
        assert!(k.push(6, 1, 0, 0.0));
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn rollback_and_deleted_prefixes_keep_the_seqs_right() {
        let mut k = PendingKeys::default();
        for seq in 100..110 {
            assert!(k.push(seq, (seq % 3) as i64, seq as i64, 0.0));
        }
        k.truncate_after(105);
        assert_eq!(k.len(), 6);
        k.drop_upto(101);
        assert_eq!(k.len(), 4);
        let seqs: Vec<i64> = all(&k).iter().map(|x| x.2).collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(sorted, vec![102, 103, 104, 105]);
        // Each key kept its own stream and time.
        assert!(all(&k).iter().all(|x| x.0 == x.2 % 3 && x.1 == x.2));
        // The next row follows the last one kept.
        assert!(k.push(106, 0, 106, 0.0));
        k.drop_upto(200);
        assert_eq!(k.len(), 0);
        assert!(k.push(300, 0, 0, 0.0), "an empty set starts anywhere");
        k.truncate_after(10);
        assert_eq!(k.len(), 0);
    }

    #[test]
    fn a_pass_waits_for_a_block_of_keys_per_stream_within_its_bounds() {
        let mut k = PendingKeys::default();
        for (i, s) in (0..15_000).enumerate() {
            assert!(k.push(i as u64 + 1, s, 0, 0.0));
        }
        assert_eq!(k.pass_rows(20, 100_000, 300_000), 300_000);
        assert_eq!(k.pass_rows(40, 100_000, 300_000), 300_000, "bounded");
        assert_eq!(
            k.pass_rows(2, 100_000, 300_000),
            100_000,
            "at least the minimum"
        );
        assert_eq!(
            k.pass_rows(20, 10, 0),
            10,
            "a maximum below the minimum is the minimum"
        );
        k.clear();
        assert_eq!(k.pass_rows(20, 100_000, 300_000), 100_000);
    }
}
