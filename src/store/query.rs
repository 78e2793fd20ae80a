//! Questions over the log beyond "give me the rows": time buckets of a numeric series, the latest value of
//! each point, and names that are not in the log (did-you-mean). Also the read-only access to a log file that
//! the CLI uses when the daemon is down ([`LogReader`]).
//!
//! All of them go through the same history index as [`super::Store::query`] (no SQLite index on `messages`:
//! see the module documentation of `store` for why), inside one read transaction.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::error::StoreError;
use super::reader::{self, decode_row, indexed_seq, matching_streams, COLS};
use super::record::LogRow;
use super::HistoryQuery;

/// Most buckets one query may produce (per series): 1-minute buckets over a week are 10,080.
pub const MAX_BUCKETS: i64 = 100_000;
/// Most series (streams) one bucket query may cover.
pub const MAX_SERIES: usize = 256;
/// Most points one latest-values query may cover.
pub const MAX_LATEST: usize = 10_000;

/// Aggregation of numeric readings into time buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketQuery {
    /// Device, point and topic filters (as in a history query; its time range, limit and order are ignored).
    pub filter: HistoryQuery,
    /// Start of the range (unix ms, inclusive).
    pub from_ms: i64,
    /// End of the range (unix ms, exclusive).
    pub to_ms: i64,
    /// Bucket width in ms. Buckets are aligned to multiples of it since the epoch (UTC), so that 1-minute
    /// buckets start on the minute whatever `from` is; the first and last buckets are cut by the range.
    pub every_ms: i64,
}

/// One bucket of one series: the numeric readings with `start_ms <= ts < start_ms + every`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    /// Start of the bucket (unix ms).
    pub start_ms: i64,
    /// Numeric readings in it.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean value.
    pub avg: f64,
    /// Value of the earliest reading (by timestamp, then log order).
    pub first: f64,
    /// Value of the latest reading.
    pub last: f64,
}

/// The buckets of one stream (one topic of one point). Empty buckets are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The topic.
    pub topic: Arc<str>,
    /// The device, for readings.
    pub device: Option<Arc<str>>,
    /// The point, for readings.
    pub point: Option<Arc<str>>,
    /// Buckets holding at least one numeric reading, oldest first.
    pub buckets: Vec<Bucket>,
    /// Rows in the range without a numeric value (text, booleans, raw publishes): not aggregated.
    pub skipped: u64,
}

struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: ((i64, i64), f64),
    last: ((i64, i64), f64),
}

impl Acc {
    fn new(key: (i64, i64), v: f64) -> Acc {
        Acc {
            count: 0,
            sum: 0.0,
            min: v,
            max: v,
            first: (key, v),
            last: (key, v),
        }
    }

    fn add(&mut self, key: (i64, i64), v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if key < self.first.0 {
            self.first = (key, v);
        }
        if key > self.last.0 {
            self.last = (key, v);
        }
    }
}

/// Checks a bucket query's parameters; the message names what is wrong.
pub fn check_buckets(q: &BucketQuery) -> Result<(), StoreError> {
    if q.every_ms <= 0 {
        return Err(StoreError::Invalid(
            "bucket width: must be positive (`1m`, `15m`, `1h`)".into(),
        ));
    }
    if q.from_ms >= q.to_ms {
        return Err(StoreError::Invalid(
            "range: `from` must be before `to` (the range is [from, to))".into(),
        ));
    }
    let n = (q.to_ms.div_euclid(q.every_ms) - q.from_ms.div_euclid(q.every_ms)).saturating_add(1);
    if n > MAX_BUCKETS {
        return Err(StoreError::Invalid(format!(
            "bucket width: {n} buckets in the range, at most {MAX_BUCKETS}: widen the buckets or narrow the range"
        )));
    }
    if q.filter.device.is_none() && q.filter.point.is_none() && q.filter.topic.is_none() {
        return Err(StoreError::Invalid(
            "buckets need a device, point or topic filter (one series or a few)".into(),
        ));
    }
    Ok(())
}

/// Runs a bucket query in one read transaction.
pub(crate) fn buckets(conn: &Connection, q: &BucketQuery) -> Result<Vec<Series>, StoreError> {
    check_buckets(q)?;
    if let Some(filter) = &q.filter.topic {
        if !crate::mqtt::valid_topic_filter(filter) {
            return Err(StoreError::Invalid(format!("topic filter {filter:?}")));
        }
    }
    in_snapshot(conn, |conn| {
        let ids = matching_streams(conn, &q.filter)?.unwrap_or_default();
        if ids.len() > MAX_SERIES {
            return Err(StoreError::Invalid(format!(
                "the filters select {} series, at most {MAX_SERIES} for buckets: narrow them",
                ids.len()
            )));
        }
        let mut per: HashMap<i64, (HashMap<i64, Acc>, u64)> = HashMap::new();
        for_each_value(conn, &ids, q.from_ms, q.to_ms, |stream, ts, seq, num| {
            let entry = per.entry(stream).or_default();
            match num.filter(|v| v.is_finite()) {
                None => entry.1 += 1,
                Some(v) => {
                    let start = ts.div_euclid(q.every_ms) * q.every_ms;
                    entry
                        .0
                        .entry(start)
                        .or_insert_with(|| Acc::new((ts, seq), v))
                        .add((ts, seq), v);
                }
            }
        })?;
        let names = stream_names(conn, &ids)?;
        let mut out = Vec::new();
        for (id, (topic, device, point)) in names {
            let (accs, skipped) = per.remove(&id).unwrap_or_default();
            let mut buckets: Vec<Bucket> = accs
                .into_iter()
                .map(|(start_ms, a)| Bucket {
                    start_ms,
                    count: a.count,
                    min: a.min,
                    max: a.max,
                    avg: a.sum / a.count as f64,
                    first: a.first.1,
                    last: a.last.1,
                })
                .collect();
            buckets.sort_by_key(|b| b.start_ms);
            out.push(Series {
                topic,
                device,
                point,
                buckets,
                skipped,
            });
        }
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(out)
    })
}

/// The lowest seq in the log (`i64::MAX` when it is empty): index keys below it belong to deleted rows.
fn oldest_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT seq FROM messages ORDER BY seq LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(i64::MAX))
}

/// Calls `add(stream, ts, seq, value)` for every row of the streams `ids` with `from <= ts < to`: keys and
/// values from the index blocks (schema v3), the rows of blocks without values (older blocks) read by seq,
/// and the rows not indexed yet. In no particular order. Run inside the caller's read transaction.
fn for_each_value(
    conn: &Connection,
    ids: &[i64],
    from_ms: i64,
    to_ms: i64,
    mut add: impl FnMut(i64, i64, i64, Option<f64>),
) -> Result<(), StoreError> {
    let indexed = indexed_seq(conn)?;
    // Keys of blocks written before schema v3 (no values): their rows are read.
    let mut fetch_keys: Vec<(i64, i64, i64)> = Vec::new();
    if !ids.is_empty() {
        let oldest = oldest_seq(conn)?;
        let list = vec!["?"; ids.len()].join(", ");
        let sql = format!(
                "SELECT stream, keys, vals FROM history WHERE stream IN ({list}) AND min_ts < ? AND max_ts >= ?"
            );
        let mut args: Vec<rusqlite::types::Value> = ids
            .iter()
            .map(|id| rusqlite::types::Value::Integer(*id))
            .collect();
        args.push(rusqlite::types::Value::Integer(to_ms));
        args.push(rusqlite::types::Value::Integer(from_ms));
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut block: Vec<(i64, i64)> = Vec::with_capacity(super::history::BLOCK);
        let bad = |detail| StoreError::BadRow { seq: 0, detail };
        while let Some(r) = rows.next()? {
            let stream: i64 = r.get(0)?;
            block.clear();
            super::history::decode(r.get_ref(1)?.as_blob()?, |ts, seq| block.push((ts, seq)))
                .map_err(bad)?;
            let vals = match r.get_ref(2)?.as_blob_or_null()? {
                Some(b) => Some(super::history::decode_values(b).map_err(bad)?),
                None => None,
            };
            let in_range = |ts: i64, seq: i64| seq >= oldest && ts >= from_ms && ts < to_ms;
            match vals.filter(|v| v.len() == block.len()) {
                Some(vals) => {
                    for (&(ts, seq), v) in block.iter().zip(vals) {
                        if in_range(ts, seq) {
                            add(stream, ts, seq, Some(v).filter(|v| !v.is_nan()));
                        }
                    }
                }
                None => fetch_keys.extend(
                    block
                        .iter()
                        .filter(|(ts, seq)| in_range(*ts, *seq))
                        .map(|&(ts, seq)| (seq, stream, ts)),
                ),
            }
        }
        let set: std::collections::HashSet<i64> = ids.iter().copied().collect();
        let mut stmt = conn.prepare_cached(
            "SELECT ts, seq, stream, num FROM messages WHERE seq > ?1 AND ts >= ?2 AND ts < ?3",
        )?;
        let mut rows = stmt.query((indexed, from_ms, to_ms))?;
        while let Some(r) = rows.next()? {
            let stream: i64 = r.get(2)?;
            if set.contains(&stream) {
                add(stream, r.get(0)?, r.get(1)?, r.get(3)?);
            }
        }
    }
    // Fetching in log order keeps the b-tree walk local.
    fetch_keys.sort_unstable();
    let mut fetch = conn.prepare_cached("SELECT num FROM messages WHERE seq = ?1")?;
    for (seq, stream, ts) in fetch_keys {
        let num: Option<Option<f64>> = fetch.query_row([seq], |r| r.get(0)).optional()?;
        if let Some(num) = num {
            add(stream, ts, seq, num);
        }
    }
    Ok(())
}

/// One logged reading as the index knows it: time, log position, topic and numeric value.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Timestamp (unix ms).
    pub ts_ms: i64,
    /// Log sequence number.
    pub seq: u64,
    /// The topic.
    pub topic: Arc<str>,
    /// The numeric value (none for text readings and raw publishes).
    pub value: Option<f64>,
}

/// The readings (time and value, no payload) of the streams the filters select, in the query's order, after
/// its cursor, at most `limit`: served from the index blocks' values, so a day of 1 s readings does not read
/// 86,400 rows. Memory is bounded by twice the limit.
pub(crate) fn readings(conn: &Connection, q: &HistoryQuery) -> Result<Vec<Reading>, StoreError> {
    if let Some(filter) = &q.topic {
        if !crate::mqtt::valid_topic_filter(filter) {
            return Err(StoreError::Invalid(format!("topic filter {filter:?}")));
        }
    }
    if q.device.is_none() && q.point.is_none() && q.topic.is_none() {
        return Err(StoreError::Invalid(
            "readings need a device, point or topic filter".into(),
        ));
    }
    if q.limit == 0 {
        return Ok(Vec::new());
    }
    in_snapshot(conn, |conn| {
        let ids = matching_streams(conn, q)?.unwrap_or_default();
        if ids.len() > MAX_SERIES {
            return Err(StoreError::Invalid(format!(
                "the filters select {} series, at most {MAX_SERIES} for readings: narrow them",
                ids.len()
            )));
        }
        let desc = q.order == super::Order::Desc;
        // Keys normalised so that "better" is smaller whatever the order.
        let norm = |ts: i64, seq: i64| if desc { (!ts, !seq) } else { (ts, seq) };
        let after = q.after.map(|(ts, seq)| norm(ts, seq));
        let mut kept: Vec<((i64, i64), i64, Option<f64>)> = Vec::new();
        let cap = q.limit.saturating_mul(2).max(1024);
        for_each_value(
            conn,
            &ids,
            q.from_ms.unwrap_or(i64::MIN),
            q.to_ms.unwrap_or(i64::MAX),
            |stream, ts, seq, value| {
                let key = norm(ts, seq);
                if after.is_some_and(|a| key <= a) {
                    return;
                }
                kept.push((key, stream, value));
                if kept.len() >= cap {
                    kept.sort_unstable_by_key(|k| k.0);
                    kept.truncate(q.limit);
                }
            },
        )?;
        kept.sort_unstable_by_key(|k| k.0);
        kept.truncate(q.limit);
        let names: HashMap<i64, Arc<str>> = stream_names(conn, &ids)?
            .into_iter()
            .map(|(id, n)| (id, n.0))
            .collect();
        Ok(kept
            .into_iter()
            .map(|((ts, seq), stream, value)| {
                let (ts, seq) = if desc { (!ts, !seq) } else { (ts, seq) };
                Reading {
                    ts_ms: ts,
                    seq: seq.max(0) as u64,
                    topic: names.get(&stream).cloned().unwrap_or_else(|| Arc::from("")),
                    value: value.filter(|v| v.is_finite()),
                }
            })
            .collect())
    })
}

type Names = (Arc<str>, Option<Arc<str>>, Option<Arc<str>>);

fn stream_names(conn: &Connection, ids: &[i64]) -> Result<Vec<(i64, Names)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT topic, device, point FROM streams WHERE id = ?1")?;
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let names = stmt
            .query_row([id], |r| {
                let text = |i: usize| -> rusqlite::Result<Option<Arc<str>>> {
                    Ok(r.get_ref(i)?.as_str_or_null()?.map(Arc::from))
                };
                Ok((Arc::from(r.get_ref(0)?.as_str()?), text(1)?, text(2)?))
            })
            .optional()?;
        if let Some(n) = names {
            out.push((id, n));
        }
    }
    Ok(out)
}

/// The most recently logged row of every stream the filters select (its device, point and topic; the time
/// range, limit and order of `q` are ignored), sorted by topic.
///
/// The rows not indexed yet are read newest first and the scan stops when every stream has been seen; the
/// rest come from the newest index block of each stream.
pub(crate) fn latest(conn: &Connection, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
    in_snapshot(conn, |conn| {
        let ids: Vec<i64> = match matching_streams(conn, q)? {
            Some(ids) => ids,
            None => {
                let mut stmt = conn.prepare_cached("SELECT id FROM streams")?;
                let ids = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<i64>>>()?;
                ids
            }
        };
        if ids.len() > MAX_LATEST {
            return Err(StoreError::Invalid(format!(
                "the filters select {} series, at most {MAX_LATEST} for latest values: narrow them",
                ids.len()
            )));
        }
        let indexed = indexed_seq(conn)?;
        let mut best: HashMap<i64, i64> = HashMap::with_capacity(ids.len());
        let wanted: std::collections::HashSet<i64> = ids.iter().copied().collect();
        {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, stream FROM messages WHERE seq > ?1 ORDER BY seq DESC",
            )?;
            let mut rows = stmt.query([indexed])?;
            while best.len() < wanted.len() {
                let Some(r) = rows.next()? else { break };
                let stream: i64 = r.get(1)?;
                if wanted.contains(&stream) {
                    best.entry(stream).or_insert(r.get(0)?);
                }
            }
        }
        let oldest = oldest_seq(conn)?;
        let mut block = conn.prepare_cached(
            "SELECT keys FROM history WHERE stream = ?1 ORDER BY min_ts DESC, min_seq DESC LIMIT 1",
        )?;
        for &id in &ids {
            if best.contains_key(&id) {
                continue;
            }
            let keys: Option<Vec<u8>> = block.query_row([id], |r| r.get(0)).optional()?;
            if let Some(keys) = keys {
                let mut top: Option<i64> = None;
                super::history::decode(&keys, |_, seq| {
                    if seq >= oldest {
                        top = Some(top.map_or(seq, |t| t.max(seq)));
                    }
                })
                .map_err(|detail| StoreError::BadRow { seq: 0, detail })?;
                if let Some(seq) = top {
                    best.insert(id, seq);
                }
            }
        }
        let mut seqs: Vec<i64> = best.into_values().collect();
        seqs.sort_unstable();
        let mut fetch =
            conn.prepare_cached(&format!("SELECT {COLS} FROM messages WHERE seq = ?1"))?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let mut rows = fetch.query([seq])?;
            if let Some(r) = rows.next()? {
                let payload = Bytes::copy_from_slice(r.get_ref(3)?.as_blob()?);
                out.push(decode_row(r, payload)?);
            }
        }
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(out)
    })
}

/// When a device or point filter selects nothing: an error naming the unknown name (with the closest one
/// logged) if the log has never seen it; `Ok` if the names exist but not together or not in this range.
pub(crate) fn check_names(
    conn: &Connection,
    device: Option<&str>,
    point: Option<&str>,
) -> Result<(), StoreError> {
    if let Some(d) = device {
        let devices = distinct(
            conn,
            "SELECT DISTINCT device FROM streams WHERE device IS NOT NULL",
            None,
        )?;
        // An empty dictionary is a new log: nothing to suggest, and no reason to doubt the name.
        if !devices.is_empty() && !devices.iter().any(|x| x == d) {
            return Err(StoreError::NoSuch(unknown("device", d, "", &devices)));
        }
    }
    if let Some(p) = point {
        let points = match device {
            Some(d) => distinct(
                conn,
                "SELECT DISTINCT point FROM streams WHERE point IS NOT NULL AND device = ?1",
                Some(d),
            )?,
            None => distinct(
                conn,
                "SELECT DISTINCT point FROM streams WHERE point IS NOT NULL",
                None,
            )?,
        };
        if !points.is_empty() && !points.iter().any(|x| x == p) {
            let of = device
                .map(|d| format!(" of device `{d}`"))
                .unwrap_or_default();
            return Err(StoreError::NoSuch(unknown("point", p, &of, &points)));
        }
    }
    Ok(())
}

fn unknown(what: &str, word: &str, of: &str, known: &[String]) -> String {
    let mut msg = format!("no {what} `{word}`{of} in the log");
    if let Some(s) = fieldbridge_sdk::config::did_you_mean(word, known.iter().map(String::as_str)) {
        msg.push_str(&format!("; did you mean `{s}`?"));
    } else if !known.is_empty() && known.len() <= 20 {
        msg.push_str(&format!("; logged: {}", known.join(", ")));
    }
    msg
}

fn distinct(conn: &Connection, sql: &str, arg: Option<&str>) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = match arg {
        Some(a) => stmt.query([a])?,
        None => stmt.query([])?,
    };
    let mut out = Vec::new();
    // The dictionary holds one row per stream; the bound keeps a huge one from costing much here.
    while let Some(r) = rows.next()? {
        if out.len() >= 100_000 {
            break;
        }
        out.push(r.get(0)?);
    }
    out.sort();
    Ok(out)
}

/// The devices and their points in the log's dictionary: `(device, point)` pairs, sorted.
pub(crate) fn names(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT device, point FROM streams WHERE device IS NOT NULL AND point IS NOT NULL
         ORDER BY device, point LIMIT 100000",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn in_snapshot<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN")?;
    let r = f(conn);
    let _ = conn.execute_batch("COMMIT");
    r
}

/// Read-only access to a log file, for the CLI when the daemon is down (or `--db` is given). Opens with
/// `SQLITE_OPEN_READ_ONLY`: it never creates, migrates or writes the file, and reads beside a running writer
/// (WAL readers never block it).
pub struct LogReader {
    conn: Connection,
    path: PathBuf,
}

impl LogReader {
    /// Opens `path` read-only. Fails if it does not exist, is not a fieldbridge log, or is newer than this
    /// build.
    pub fn open(path: &Path) -> Result<LogReader, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if !path.is_file() {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let version = super::schema::schema_version(&conn, path)?;
        if version == 0 {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{} (no `meta` table)", super::schema::NOT_OURS),
            });
        }
        if version > super::SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found: version,
                supported: super::SCHEMA_VERSION,
            });
        }
        Ok(LogReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A history query (as [`super::Store::query`]).
    pub fn query(&self, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
        reader::query(&self.conn, q)
    }

    /// A bucket query (as [`super::Store::buckets`]).
    pub fn buckets(&self, q: &BucketQuery) -> Result<Vec<Series>, StoreError> {
        buckets(&self.conn, q)
    }

    /// Readings (as [`super::Store::readings`]).
    pub fn readings(&self, q: &HistoryQuery) -> Result<Vec<Reading>, StoreError> {
        readings(&self.conn, q)
    }

    /// Latest values (as [`super::Store::latest`]).
    pub fn latest(&self, q: &HistoryQuery) -> Result<Vec<LogRow>, StoreError> {
        latest(&self.conn, q)
    }

    /// `(device, point)` pairs in the log.
    pub fn names(&self) -> Result<Vec<(String, String)>, StoreError> {
        names(&self.conn)
    }
}
