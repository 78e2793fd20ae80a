//! Reads: a small pool of read connections (WAL readers never block the writer and only see committed rows),
//! the drain read used by bridges, and history queries.
use std::collections::{BinaryHeap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row};

use super::error::StoreError;
use super::record::{LogRow, MsgProps};
use super::schema::open_reader;

/// Idle read connections kept open (more are opened on demand and closed after use).
const MAX_IDLE: usize = 4;

pub(crate) const COLS: &str = "seq, ts, topic, payload, qos, retain, props, device, point, num";

pub(crate) struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    /// Page cache of each connection, bytes.
    page_cache: u64,
}

impl Readers {
    pub(crate) fn new(path: PathBuf, page_cache: u64) -> Readers {
        Readers {
            path,
            pool: Mutex::new(Vec::new()),
            page_cache,
        }
    }

    /// Closes the idle connections.
    pub(crate) fn clear(&self) {
        self.pool.lock().clear();
    }

    /// Runs `f` on a pooled connection.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.pool.lock().pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path, self.page_cache)?,
        };
        let r = f(&conn);
        let mut pool = self.pool.lock();
        if pool.len() < MAX_IDLE {
            pool.push(conn);
        }
        r
    }
}

/// Rows with `seq > after`, in seq order, at most `limit`. Payloads of one call share one buffer.
pub(crate) fn read_from(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<LogRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let mut rows = stmt.query((clamp_i64(after), clamp_i64(limit as u64)))?;
    let mut arena = BytesMut::new();
    let mut out = Vec::with_capacity(limit.min(4096));
    let mut spans = Vec::with_capacity(limit.min(4096));
    while let Some(r) = rows.next()? {
        let blob = r.get_ref(3)?.as_blob()?;
        let start = arena.len();
        arena.extend_from_slice(blob);
        spans.push((start, arena.len()));
        out.push(decode_row(r, Bytes::new())?);
    }
    let arena = arena.freeze();
    for (row, (a, b)) in out.iter_mut().zip(spans) {
        row.payload = arena.slice(a..b);
    }
    Ok(out)
}

/// Sort order of history results (by timestamp, then seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// A history query. Filters combine with AND; unset filters match everything.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    /// Exact device name.
    pub device: Option<String>,
    /// Exact point name.
    pub point: Option<String>,
    /// MQTT topic filter (`+` and `#` wildcards; `#` and `+` at the first level do not match `$` topics).
    pub topic: Option<String>,
    /// Timestamps at or after this (unix ms).
    pub from_ms: Option<i64>,
    /// Timestamps strictly before this (unix ms).
    pub to_ms: Option<i64>,
    /// Most rows returned. Default 1000.
    pub limit: usize,
    /// Sort order. Default oldest first.
    pub order: Order,
    /// Only rows after this key `(ts, seq)` in the query's order: the page cursor of the previous answer
    /// (its last row's key).
    pub after: Option<(i64, i64)>,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            device: None,
            point: None,
            topic: None,
            from_ms: None,
            to_ms: None,
            limit: 1000,
            order: Order::Asc,
            after: None,
        }
    }
}

/// Past this many matching streams, a query filters while scanning the log instead of listing them for the
/// index.
const MAX_IN: usize = 256;

/// Runs a history query in one read transaction (one snapshot of the dictionary, the index and the log):
/// 1. the device, point and topic filters select streams from the small `streams` dictionary;
/// 2. the `history` index gives the keys `(ts, seq)` of those streams' rows up to `meta.indexed_seq`, from
///    the blocks that overlap the time range;
/// 3. rows after `indexed_seq`, not indexed yet (at most one index pass's worth), are scanned;
/// 4. the best `limit` keys of both are fetched by seq.
///
/// A query without device, point or topic (a time range only), or matching very many streams, scans the log.
pub(crate) fn query(conn: &Connection, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
    if q.limit == 0 {
        return Ok(Vec::new());
    }
    if let Some(filter) = &q.topic {
        if !crate::mqtt::valid_topic_filter(filter) {
            return Err(StoreError::Invalid(format!("topic filter {filter:?}")));
        }
    }
    conn.execute_batch("BEGIN")?;
    let r = query_snapshot(conn, q);
    let _ = conn.execute_batch("COMMIT");
    r
}

fn query_snapshot(conn: &Connection, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
    let indexed = indexed_seq(conn)?;
    let streams = matching_streams(conn, q)?;
    let dir = match q.order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    let mut range = String::new();
    let mut range_args = Vec::new();
    if let Some(from) = q.from_ms {
        range.push_str(" AND ts >= ?");
        range_args.push(Value::Integer(from));
    }
    if let Some(to) = q.to_ms {
        range.push_str(" AND ts < ?");
        range_args.push(Value::Integer(to));
    }
    let limit = Value::Integer(clamp_i64(q.limit as u64));
    let mut top = TopN::new(q.limit, q.order, q.after);
    match streams {
        Some(ids) if ids.is_empty() => return Ok(Vec::new()),
        Some(ids) if ids.len() <= MAX_IN => {
            for_each_key(conn, indexed, &ids, q.from_ms, q.to_ms, |_, ts, seq| {
                top.push(ts, seq)
            })?;
        }
        Some(ids) => {
            let set: HashSet<i64> = ids.into_iter().collect();
            scan(conn, None, &range, &range_args, Some(&set), &mut top)?;
        }
        None => {
            let mut args = range_args.clone();
            let mut after = String::new();
            if let Some((ts, seq)) = q.after {
                after = format!(
                    " AND (ts, seq) {} (?, ?)",
                    if dir == "ASC" { ">" } else { "<" }
                );
                args.extend([Value::Integer(ts), Value::Integer(seq)]);
            }
            let sql = format!(
                "SELECT ts, seq FROM messages WHERE 1{range}{after} ORDER BY ts {dir}, seq {dir} LIMIT ?"
            );
            args.push(limit);
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
            while let Some(r) = rows.next()? {
                top.push(r.get(0)?, r.get(1)?);
            }
        }
    }
    let mut fetch = conn.prepare_cached(&format!("SELECT {COLS} FROM messages WHERE seq = ?1"))?;
    let mut out = Vec::with_capacity(q.limit.min(4096));
    for seq in top.into_seqs() {
        let mut rows = fetch.query([seq])?;
        if let Some(r) = rows.next()? {
            let payload = Bytes::copy_from_slice(r.get_ref(3)?.as_blob()?);
            out.push(decode_row(r, payload)?);
        }
    }
    Ok(out)
}

/// Offers the keys of log rows (after `after`, if given) in the time range whose stream is in `set` (all,
/// if `None`).
fn scan(
    conn: &Connection,
    after: Option<i64>,
    range: &str,
    range_args: &[Value],
    set: Option<&HashSet<i64>>,
    top: &mut TopN,
) -> Result<(), StoreError> {
    let sql = format!("SELECT ts, seq, stream FROM messages WHERE seq > ?{range}");
    let mut args = vec![Value::Integer(after.unwrap_or(0))];
    args.extend(range_args.iter().cloned());
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        if set.is_none_or(|s| s.contains(&r.get::<_, i64>(2).unwrap_or(0))) {
            top.push(r.get(0)?, r.get(1)?);
        }
    }
    Ok(())
}

/// The streams the query's device, point and topic filters select; `None` when it has none of them.
pub(crate) fn matching_streams(
    conn: &Connection,
    q: &HistoryQuery,
) -> Result<Option<Vec<i64>>, StoreError> {
    if q.device.is_none() && q.point.is_none() && q.topic.is_none() {
        return Ok(None);
    }
    let mut sql = String::from("SELECT id, topic FROM streams WHERE 1");
    let mut args = Vec::new();
    if let Some(d) = &q.device {
        sql.push_str(" AND device = ?");
        args.push(Value::Text(d.clone()));
    }
    if let Some(p) = &q.point {
        sql.push_str(" AND point = ?");
        args.push(Value::Text(p.clone()));
    }
    let wildcard = q.topic.as_deref().filter(|f| f.contains(['+', '#']));
    if let Some(t) = q.topic.as_deref().filter(|_| wildcard.is_none()) {
        sql.push_str(" AND topic = ?");
        args.push(Value::Text(t.to_string()));
    }
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut ids = Vec::new();
    while let Some(r) = rows.next()? {
        if wildcard.is_none_or(|f| {
            r.get_ref(1)
                .ok()
                .and_then(|v| v.as_str().ok())
                .is_some_and(|t| crate::mqtt::filter_matches(f, t))
        }) {
            ids.push(r.get(0)?);
        }
    }
    if ids.is_empty() {
        super::query::check_names(conn, q.device.as_deref(), q.point.as_deref())?;
    }
    Ok(Some(ids))
}

/// Calls `f(stream, ts, seq)` for every row of the streams `ids` with `from <= ts < to`: the keys of the
/// index blocks that overlap the range (rows up to `indexed`), then the rows after `indexed`. Run inside
/// the caller's read transaction so that index and log are one snapshot.
pub(crate) fn for_each_key(
    conn: &Connection,
    indexed: i64,
    ids: &[i64],
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    mut f: impl FnMut(i64, i64, i64),
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    // Keys below the oldest row belong to deleted rows (a block outlives its first rows).
    let oldest: i64 = conn
        .prepare_cached("SELECT seq FROM messages ORDER BY seq LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(i64::MAX);
    let list = vec!["?"; ids.len()].join(", ");
    let mut sql = format!("SELECT stream, keys FROM history WHERE stream IN ({list})");
    let mut args: Vec<Value> = ids.iter().map(|id| Value::Integer(*id)).collect();
    if let Some(to) = to_ms {
        sql.push_str(" AND min_ts < ?");
        args.push(Value::Integer(to));
    }
    if let Some(from) = from_ms {
        sql.push_str(" AND max_ts >= ?");
        args.push(Value::Integer(from));
    }
    let (from, to) = (from_ms.unwrap_or(i64::MIN), to_ms.unwrap_or(i64::MAX));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let stream: i64 = r.get(0)?;
        super::history::decode(r.get_ref(1)?.as_blob()?, |ts, seq| {
            if seq >= oldest && ts >= from && ts < to {
                f(stream, ts, seq);
            }
        })
        .map_err(|detail| StoreError::BadRow { seq: 0, detail })?;
    }
    let mut sql = String::from("SELECT ts, seq, stream FROM messages WHERE seq > ?");
    let mut args = vec![Value::Integer(indexed)];
    if let Some(from) = from_ms {
        sql.push_str(" AND ts >= ?");
        args.push(Value::Integer(from));
    }
    if let Some(to) = to_ms {
        sql.push_str(" AND ts < ?");
        args.push(Value::Integer(to));
    }
    let set: HashSet<i64> = ids.iter().copied().collect();
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let stream: i64 = r.get(2)?;
        if set.contains(&stream) {
            f(stream, r.get(0)?, r.get(1)?);
        }
    }
    Ok(())
}

/// `meta.indexed_seq`: rows up to it have their history index entries.
pub(crate) fn indexed_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'indexed_seq'")?
        .query_row([], |r| r.get(0))?)
}

/// The best `limit` keys seen, in the query's order (a bounded heap: memory is `limit`, whatever is scanned).
struct TopN {
    limit: usize,
    desc: bool,
    // Keys normalised so that "better" is always smaller; the heap's top is the worst kept.
    heap: BinaryHeap<(i64, i64)>,
    /// The page cursor, normalised: only keys after it are kept.
    after: Option<(i64, i64)>,
}

impl TopN {
    fn new(limit: usize, order: Order, after: Option<(i64, i64)>) -> TopN {
        let desc = order == Order::Desc;
        TopN {
            limit,
            desc,
            after: after.map(|(ts, seq)| if desc { (!ts, !seq) } else { (ts, seq) }),
            heap: BinaryHeap::with_capacity(limit.min(4096) + 1),
        }
    }

    fn push(&mut self, ts: i64, seq: i64) {
        // Bitwise not reverses the order of i64 without overflow.
        let key = if self.desc { (!ts, !seq) } else { (ts, seq) };
        if self.after.is_some_and(|a| key <= a) {
            return;
        }
        if self.heap.len() < self.limit {
            self.heap.push(key);
        } else if self.heap.peek().is_some_and(|worst| key < *worst) {
            self.heap.pop();
            self.heap.push(key);
        }
    }

    /// The seqs, best first.
    fn into_seqs(self) -> Vec<i64> {
        let desc = self.desc;
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|(_, seq)| if desc { !seq } else { seq })
            .collect()
    }
}

/// The timestamp of row `seq`, if present.
/// The timestamp of the first row after `seq` (the oldest row a bridge at cursor `seq` has not delivered).
pub(crate) fn first_ts_after(conn: &Connection, seq: u64) -> Result<Option<i64>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT ts FROM messages WHERE seq > ?1 ORDER BY seq LIMIT 1")?;
    Ok(stmt.query_row([clamp_i64(seq)], |r| r.get(0)).optional()?)
}

pub(crate) fn ts_of(conn: &Connection, seq: u64) -> Result<Option<i64>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT ts FROM messages WHERE seq = ?1")?;
    Ok(stmt.query_row([clamp_i64(seq)], |r| r.get(0)).optional()?)
}

pub(crate) fn decode_row(r: &Row<'_>, payload: Bytes) -> Result<LogRow, StoreError> {
    let seq = r.get::<_, i64>(0)? as u64;
    let props = match r.get_ref(6)?.as_blob_or_null()? {
        None => None,
        Some(b) => Some(Box::new(
            MsgProps::decode(b).map_err(|detail| StoreError::BadRow { seq, detail })?,
        )),
    };
    let text = |i: usize| -> Result<Option<Arc<str>>, StoreError> {
        Ok(r.get_ref(i)?.as_str_or_null()?.map(Arc::from))
    };
    Ok(LogRow {
        seq,
        ts_ms: r.get(1)?,
        topic: Arc::from(r.get_ref(2)?.as_str()?),
        payload,
        qos: r.get(4)?,
        retain: r.get(5)?,
        props,
        device: text(7)?,
        point: text(8)?,
        num: r.get(9)?,
    })
}

pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
