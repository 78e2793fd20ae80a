//! Reads: a small pool of read connections (WAL readers never block the writer and only see committed rows),
//! the drain read used by bridges, and history queries.
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{Connection, Row};

use super::error::StoreError;
use super::record::{LogRow, MsgProps};
use super::schema::open_reader;

/// Idle read connections kept open (more are opened on demand and closed after use).
const MAX_IDLE: usize = 4;

const COLS: &str = "seq, ts, topic, payload, qos, retain, props, device, point, num";

pub(crate) struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Readers {
        Readers {
            path,
            pool: Mutex::new(Vec::new()),
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
            None => open_reader(&self.path)?,
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
        }
    }
}

/// Runs a history query. Device/point queries use the `(device, point, ts)` index; topic queries use
/// `(topic, ts)` (a wildcard filter scans the range of its literal prefix and is matched here); a query with
/// only a time range scans the log.
pub(crate) fn query(conn: &Connection, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
    if q.limit == 0 {
        return Ok(Vec::new());
    }
    let mut sql = format!("SELECT {COLS} FROM messages WHERE 1");
    let mut args: Vec<Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(d) = &q.device {
        arg(&mut sql, " AND device = ?", Value::Text(d.clone()));
    }
    if let Some(p) = &q.point {
        arg(&mut sql, " AND point = ?", Value::Text(p.clone()));
    }
    if let Some(f) = q.from_ms {
        arg(&mut sql, " AND ts >= ?", Value::Integer(f));
    }
    if let Some(t) = q.to_ms {
        arg(&mut sql, " AND ts < ?", Value::Integer(t));
    }
    let mut post_filter = None;
    if let Some(filter) = &q.topic {
        if !valid_filter(filter) {
            return Err(StoreError::Invalid(format!("topic filter {filter:?}")));
        }
        if !filter.contains(['+', '#']) {
            arg(&mut sql, " AND topic = ?", Value::Text(filter.clone()));
        } else {
            // Matching topics equal the literal prefix (for `a/#`) or start with `prefix/`; `0` follows `/`.
            let literal: Vec<&str> = filter
                .split('/')
                .take_while(|l| *l != "+" && *l != "#")
                .collect();
            if !literal.is_empty() {
                let core = literal.join("/");
                arg(&mut sql, " AND (topic = ?", Value::Text(core.clone()));
                arg(&mut sql, " OR (topic >= ?", Value::Text(format!("{core}/")));
                arg(
                    &mut sql,
                    " AND topic < ?))",
                    Value::Text(format!("{core}0")),
                );
            }
            post_filter = Some(filter.as_str());
        }
    }
    let dir = match q.order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    sql.push_str(&format!(" ORDER BY ts {dir}, seq {dir}"));
    if post_filter.is_none() {
        arg(
            &mut sql,
            " LIMIT ?",
            Value::Integer(clamp_i64(q.limit as u64)),
        );
    }
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        if let Some(f) = post_filter {
            if !topic_matches(f, r.get_ref(2)?.as_str()?) {
                continue;
            }
        }
        let payload = Bytes::copy_from_slice(r.get_ref(3)?.as_blob()?);
        out.push(decode_row(r, payload)?);
        if out.len() >= q.limit {
            break;
        }
    }
    Ok(out)
}

/// The timestamp of row `seq`, if present.
pub(crate) fn ts_of(conn: &Connection, seq: u64) -> Result<Option<i64>, StoreError> {
    use rusqlite::OptionalExtension;
    let mut stmt = conn.prepare_cached("SELECT ts FROM messages WHERE seq = ?1")?;
    Ok(stmt.query_row([clamp_i64(seq)], |r| r.get(0)).optional()?)
}

fn decode_row(r: &Row<'_>, payload: Bytes) -> Result<LogRow, StoreError> {
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

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether `filter` is a valid MQTT topic filter.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// MQTT topic matching (v3.1.1 §4.7 / v5 §4.7): `+` one level, `#` this level and all below (including the
/// parent itself), and wildcards at the first level never match topics starting with `$`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("a/+", "a/b"));
        assert!(!topic_matches("a/+", "a"));
        assert!(topic_matches("a/+", "a/"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(!topic_matches("a/#", "ab"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(topic_matches("+/+/temp", "gw/d1/temp"));
        assert!(!topic_matches("+/+/temp", "gw/d1/hum"));
    }

    #[test]
    fn filters() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "/", "+/#"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "#/a"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }
}
