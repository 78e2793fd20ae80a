//! `fieldbridge query`: the buffered history, as a table for people, CSV for spreadsheets, JSON for scripts;
//! raw rows, time buckets (`--every 1m`) or the latest value of each point (`--latest`).
//!
//! Where the answer comes from: the running daemon's API (`GET /api/v1/history`, `/api/v1/latest`), or the
//! log file itself, read-only, when `--db FILE` is given or the daemon cannot be reached (its path from the
//! configuration file). Both run the same parameter parsing and the same store code, so they accept the
//! same things, report the same errors and print the same output.
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::api::model::{BucketsDoc, HistoryDoc, HistoryRow, LatestDoc, SeriesView, ValuesDoc};
use crate::api::params::{self, ms_to_rfc3339};
use crate::api::v1::{self, V1Query};
use crate::store::{LogReader, StoreError};

use super::client::ClientError;
use super::{
    client_for, encode_query_value, report, ApiClient, Console, Target, EXIT_FAILURE, EXIT_OK,
    EXIT_USAGE,
};

/// Output format of `fieldbridge query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns: time, seq, topic, value with its unit.
    Table,
    /// RFC 4180 CSV with a header line, every field.
    Csv,
    /// A JSON array of rows (or of series with --every), every field.
    Json,
}

/// Row order of `fieldbridge query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OrderArg {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

/// Print the buffered history (table, CSV or JSON): from the running daemon, or from the log file when the
/// daemon is down or --db is given.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Where the daemon is.
    #[command(flatten)]
    pub target: Target,
    /// Only this device's readings.
    #[arg(long)]
    pub device: Option<String>,
    /// Only this point's readings (with --device for one series).
    #[arg(long)]
    pub point: Option<String>,
    /// Only topics matching this MQTT filter (`+` and `#` wildcards).
    #[arg(long)]
    pub topic: Option<String>,
    /// From this time on (inclusive): RFC 3339 (`2026-11-22T02:00:00Z`), unix ms, `now`, or ago (`-1h`).
    #[arg(long, allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Before this time (exclusive); same forms as --from.
    #[arg(long, allow_hyphen_values = true)]
    pub to: Option<String>,
    /// At most this many rows (1..=100000).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Oldest first (asc) or newest first (desc).
    #[arg(long, value_enum, default_value_t = OrderArg::Asc)]
    pub order: OrderArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Read this log file directly (read-only; works while the daemon runs or is stopped).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Aggregate numeric readings into time buckets of this width (`1m`, `15m`, `1h`): count, min, max, avg,
    /// first, last per bucket. The range defaults to the last hour.
    #[arg(long, value_name = "WIDTH", conflicts_with_all = ["latest", "cursor"])]
    pub every: Option<String>,
    /// The latest logged value of each matching point.
    #[arg(long)]
    pub latest: bool,
    /// Continue after this cursor (printed when more rows match than --limit).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Time and value only, read from the index (fast for long series; no payloads).
    #[arg(long, conflicts_with_all = ["every", "latest"])]
    pub values: bool,
}

impl QueryArgs {
    /// The query parameters, as the API takes them.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        // `--limit` counts rows: with `--every` it is sent only when given another value than the default, for
        // the daemon (or the same check on the file) to refuse it by name.
        let limit_given = self.every.is_none() || self.limit != params::DEFAULT_HISTORY_LIMIT;
        if !self.latest && limit_given {
            p.push(("limit".to_string(), self.limit.to_string()));
        }
        if !self.latest {
            p.push((
                "order".to_string(),
                match self.order {
                    OrderArg::Asc => "asc",
                    OrderArg::Desc => "desc",
                }
                .to_string(),
            ));
        }
        let mut named = vec![
            ("device", &self.device),
            ("point", &self.point),
            ("topic", &self.topic),
        ];
        if !self.latest {
            named.extend([
                ("from", &self.from),
                ("to", &self.to),
                ("cursor", &self.cursor),
                ("every", &self.every),
            ]);
        }
        for (k, v) in named {
            if let Some(v) = v {
                p.push((k.to_string(), v.clone()));
            }
        }
        if self.values {
            p.push(("fields".to_string(), "values".to_string()));
        }
        p
    }

    /// The API request for these arguments.
    pub fn path(&self) -> String {
        let base = if self.latest {
            "/api/v1/latest"
        } else {
            "/api/v1/history"
        };
        path_of(base, &self.params())
    }
}

/// `base?k=v&…`, values percent-encoded.
pub(crate) fn path_of(base: &str, params: &[(String, String)]) -> String {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_query_value(v)))
        .collect();
    format!("{base}?{}", q.join("&"))
}

/// One answer of either source.
#[derive(Debug)]
pub(crate) enum Answer {
    Rows(HistoryDoc),
    Buckets(BucketsDoc),
    Latest(LatestDoc),
    Values(ValuesDoc),
}

/// Where answers come from.
pub(crate) enum Source {
    Api(ApiClient),
    File(LogReader),
}

/// A failed query: what to print and the exit code.
pub(crate) struct Failed(pub u8);

fn store_failed<O: Write, E: Write>(e: StoreError, con: &mut Console<O, E>) -> Failed {
    con.eprintln(&format!("fieldbridge: {e}"));
    Failed(match e {
        StoreError::Invalid(_) | StoreError::NoSuch(_) => EXIT_USAGE,
        _ => EXIT_FAILURE,
    })
}

/// Opens the log file read-only, explaining a failure.
fn open_file<O: Write, E: Write>(
    path: &std::path::Path,
    con: &mut Console<O, E>,
) -> Result<LogReader, Failed> {
    if let Some(why) = super::not_a_log_file(path) {
        con.eprintln(&format!("fieldbridge: cannot read the log: {why}"));
        return Err(Failed(EXIT_FAILURE));
    }
    LogReader::open(path).map_err(|e| {
        con.eprintln(&format!("fieldbridge: cannot read the log: {e}"));
        Failed(EXIT_FAILURE)
    })
}

/// The log file named by the configuration file.
fn configured_db(target: &Target) -> Result<PathBuf, String> {
    crate::config::load(&target.config)
        .map(|c| c.storage.path.clone())
        .map_err(|e| {
            format!(
                "cannot find the log file in {} ({} problem(s)); pass --db FILE",
                target.config.display(),
                e.len()
            )
        })
}

impl Source {
    /// The daemon's API, or the file (`--db`).
    pub(crate) fn pick<O: Write, E: Write>(
        target: &Target,
        db: Option<&std::path::Path>,
        timeout: Duration,
        con: &mut Console<O, E>,
    ) -> Result<Source, Failed> {
        if let Some(path) = db {
            return open_file(path, con).map(Source::File);
        }
        match super::resolve_api(target) {
            Ok(_) => client_for(target, timeout, con)
                .map(Source::Api)
                .map_err(Failed),
            // No API (disabled, or no address): the file, if the configuration names it.
            Err(msg) => match configured_db(target) {
                Ok(path) => open_file(&path, con).map(Source::File),
                Err(_) => {
                    con.eprintln(&format!("fieldbridge: {msg}"));
                    Err(Failed(EXIT_FAILURE))
                }
            },
        }
    }

    /// Sends `params` to `base` (`/api/v1/history` or `/api/v1/latest`). An unreachable daemon switches this
    /// source to the log file named by the configuration (once, with a note on stderr).
    pub(crate) async fn ask<O: Write, E: Write>(
        &mut self,
        target: &Target,
        latest: bool,
        params: &[(String, String)],
        con: &mut Console<O, E>,
    ) -> Result<Answer, Failed> {
        if let Source::Api(client) = self {
            let path = path_of(
                if latest {
                    "/api/v1/latest"
                } else {
                    "/api/v1/history"
                },
                params,
            );
            let is_buckets = params.iter().any(|(k, _)| k == "every");
            let r = if latest {
                client
                    .get_json::<LatestDoc>(&path)
                    .await
                    .map(Answer::Latest)
            } else if is_buckets {
                client
                    .get_json::<BucketsDoc>(&path)
                    .await
                    .map(Answer::Buckets)
            } else {
                client.get_json::<HistoryDoc>(&path).await.map(Answer::Rows)
            };
            match r {
                Ok(a) => return Ok(a),
                Err(e @ ClientError::Unreachable { .. }) => match configured_db(target) {
                    Ok(db) => {
                        con.eprintln(&format!(
                            "fieldbridge: {e}; reading the log file {} directly",
                            db.display()
                        ));
                        *self = Source::File(open_file(&db, con)?);
                    }
                    Err(why) => {
                        con.eprintln(&format!("fieldbridge: {e}; {why}"));
                        return Err(Failed(EXIT_FAILURE));
                    }
                },
                Err(e) => return Err(Failed(report(&e, con))),
            }
        }
        let Source::File(reader) = self else {
            return Err(Failed(EXIT_FAILURE));
        };
        let now = SystemTime::now();
        if latest {
            let q = params::history_query(params, now).map_err(|e| {
                con.eprintln(&format!("fieldbridge: {e}"));
                Failed(EXIT_USAGE)
            })?;
            let rows = reader.latest(&q).map_err(|e| store_failed(e, con))?;
            return Ok(Answer::Latest(LatestDoc {
                rows: rows.into_iter().map(HistoryRow::from).collect(),
            }));
        }
        let q = v1::v1_query(params, now).map_err(|e| {
            con.eprintln(&format!("fieldbridge: {e}"));
            Failed(EXIT_USAGE)
        })?;
        match q {
            V1Query::Values(mut q) => {
                let limit = q.limit;
                q.limit += 1;
                let rows = reader.readings(&q).map_err(|e| store_failed(e, con))?;
                Ok(Answer::Values(v1::values_page(rows, limit)))
            }
            V1Query::Rows(mut q) => {
                let limit = q.limit;
                q.limit += 1;
                let rows = reader.query(&q).map_err(|e| store_failed(e, con))?;
                Ok(Answer::Rows(v1::page(rows, limit)))
            }
            V1Query::Buckets(b) => {
                let mut series = reader.buckets(&b).map_err(|e| store_failed(e, con))?;
                v1::order_buckets(&mut series, b.filter.order);
                let mut views = Vec::with_capacity(series.len());
                for s in series {
                    views.push(SeriesView {
                        // No configuration at hand: the unit the readings were published with.
                        unit: unit_of(reader, &s.topic),
                        topic: s.topic.to_string(),
                        device: s.device.map(|d| d.to_string()),
                        point: s.point.map(|p| p.to_string()),
                        skipped: s.skipped,
                        buckets: s.buckets,
                    });
                }
                Ok(Answer::Buckets(BucketsDoc {
                    from_ms: b.from_ms,
                    to_ms: b.to_ms,
                    every_ms: b.every_ms,
                    series: views,
                }))
            }
        }
    }
}

/// The unit of the latest reading on `topic`.
fn unit_of(reader: &LogReader, topic: &str) -> Option<String> {
    let q = crate::store::HistoryQuery {
        topic: Some(topic.to_string()),
        ..Default::default()
    };
    let rows = reader.latest(&q).ok()?;
    rows.into_iter()
        .next()
        .and_then(|r| crate::api::model::reading_of(&r.payload).1)
}

/// Runs `fieldbridge query`; returns the exit code.
pub async fn query<O: Write, E: Write>(args: &QueryArgs, con: &mut Console<O, E>) -> u8 {
    let mut src = match Source::pick(
        &args.target,
        args.db.as_deref(),
        Duration::from_secs(60),
        con,
    ) {
        Ok(s) => s,
        Err(Failed(code)) => return code,
    };
    let answer = match src
        .ask(&args.target, args.latest, &args.params(), con)
        .await
    {
        Ok(a) => a,
        Err(Failed(code)) => return code,
    };
    match answer {
        Answer::Rows(doc) => {
            con.print(&rows_text(&doc.rows, args.format));
            let next = doc
                .more
                .then_some(doc.next_cursor.as_deref().unwrap_or("?"));
            notes(con, args.format, doc.rows.len(), "row(s)", next, doc.limit);
        }
        Answer::Values(doc) => {
            con.print(&values_text(&doc, args.format));
            let next = doc
                .more
                .then_some(doc.next_cursor.as_deref().unwrap_or("?"));
            notes(
                con,
                args.format,
                doc.rows.len(),
                "reading(s)",
                next,
                doc.limit,
            );
        }
        Answer::Latest(doc) => {
            con.print(&rows_text(&doc.rows, args.format));
            if doc.rows.is_empty() {
                con.eprintln("no rows match");
            }
        }
        Answer::Buckets(doc) => {
            con.print(&buckets_text(&doc, args.format));
            let n: usize = doc.series.iter().map(|s| s.buckets.len()).sum();
            if n == 0 {
                con.eprintln("no numeric readings in the range");
            } else if args.format == Format::Table {
                con.eprintln(&format!(
                    "{n} bucket(s) of {} in {} series",
                    humantime::format_duration(Duration::from_millis(doc.every_ms as u64)),
                    doc.series.len()
                ));
            }
        }
    }
    EXIT_OK
}

/// The notes after rows, on stderr so that CSV and JSON on stdout stay machine-readable.
fn notes<O: Write, E: Write>(
    con: &mut Console<O, E>,
    format: Format,
    n: usize,
    noun: &str,
    next: Option<&str>,
    limit: usize,
) {
    if n == 0 {
        con.eprintln("no rows match");
    } else if format == Format::Table {
        con.eprintln(&format!("{n} {noun}"));
    }
    if let Some(cursor) = next {
        con.eprintln(&format!(
            "more rows match: next page with --cursor {cursor} (or raise --limit, now {limit}, or narrow --from/--to)"
        ));
    }
}

/// The value as printed everywhere: booleans as `true`/`false`, numbers as published, text as text.
pub(crate) fn display_value(r: &HistoryRow) -> Option<String> {
    match &r.reading {
        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        _ => r.value.map(|v| v.to_string()),
    }
}

/// The value column: the value and its unit, else the payload (shortened: the table is for reading).
fn value_text(r: &HistoryRow) -> String {
    match display_value(r) {
        Some(v) => match &r.unit {
            Some(u) if !u.is_empty() => format!("{v} {u}"),
            _ => v,
        },
        None => {
            let one_line = r.payload.replace(['\n', '\r', '\t'], " ");
            if one_line.chars().count() > 60 {
                let mut s: String = one_line.chars().take(59).collect();
                s.push('…');
                s
            } else {
                one_line
            }
        }
    }
}

/// Rows in `format`.
pub(crate) fn rows_text(rows: &[HistoryRow], format: Format) -> String {
    match format {
        Format::Table => table(rows),
        Format::Csv => {
            let mut s = CSV_HEADER.to_string();
            for r in rows {
                s.push_str(&csv_line(r));
            }
            s
        }
        Format::Json => {
            let v: Vec<serde_json::Value> = rows.iter().map(json_row).collect();
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

/// A row as JSON, with a boolean `value` for a boolean reading (as the table and CSV print it).
pub(crate) fn json_row(r: &HistoryRow) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(b @ serde_json::Value::Bool(_)) = &r.reading {
        v["value"] = b.clone();
    }
    v
}

fn aligned(header: &[&str], cells: &[Vec<String>], right: &[usize]) -> String {
    use std::fmt::Write as _;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for c in cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut o = String::new();
    let mut line = |c: &[&str]| {
        let mut l = String::new();
        for (i, cell) in c.iter().enumerate() {
            let last = i + 1 == c.len();
            if i > 0 {
                l.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if right.contains(&i) {
                l.push_str(&" ".repeat(pad));
                l.push_str(cell);
            } else {
                l.push_str(cell);
                if !last {
                    l.push_str(&" ".repeat(pad));
                }
            }
        }
        let _ = writeln!(o, "{l}");
    };
    line(header);
    for c in cells {
        let refs: Vec<&str> = c.iter().map(String::as_str).collect();
        line(&refs);
    }
    o
}

fn table(rows: &[HistoryRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.ts.clone(),
                r.seq.to_string(),
                r.topic.clone(),
                value_text(r),
            ]
        })
        .collect();
    aligned(&["TIME", "SEQ", "TOPIC", "VALUE"], &cells, &[1])
}

pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV header of rows.
pub(crate) const CSV_HEADER: &str =
    "seq,ts,ts_ms,topic,device,point,value,unit,payload,qos,retain\r\n";

/// One CSV line of a row.
pub(crate) fn csv_line(r: &HistoryRow) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{}\r\n",
        r.seq,
        r.ts,
        r.ts_ms,
        csv_field(&r.topic),
        csv_field(r.device.as_deref().unwrap_or("")),
        csv_field(r.point.as_deref().unwrap_or("")),
        csv_field(&display_value(r).unwrap_or_default()),
        csv_field(r.unit.as_deref().unwrap_or("")),
        csv_field(&r.payload),
        r.qos,
        r.retain
    )
}

fn values_text(doc: &ValuesDoc, format: Format) -> String {
    let show = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&doc.rows).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Csv => {
            let mut s = String::from("seq,ts,ts_ms,topic,value\r\n");
            for r in &doc.rows {
                s.push_str(&format!(
                    "{},{},{},{},{}\r\n",
                    r.seq,
                    r.ts,
                    r.ts_ms,
                    csv_field(&r.topic),
                    show(r.value)
                ));
            }
            s
        }
        Format::Table => {
            if doc.rows.is_empty() {
                return String::new();
            }
            let cells: Vec<Vec<String>> = doc
                .rows
                .iter()
                .map(|r| {
                    vec![
                        r.ts.clone(),
                        r.seq.to_string(),
                        r.topic.clone(),
                        show(r.value),
                    ]
                })
                .collect();
            aligned(&["TIME", "SEQ", "TOPIC", "VALUE"], &cells, &[1])
        }
    }
}

/// A number for people: at most 4 decimals, no trailing zeros.
fn short(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn buckets_text(doc: &BucketsDoc, format: Format) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&doc.series).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Csv => {
            let mut s = String::from(
                "start,start_ms,topic,device,point,unit,count,min,max,avg,first,last\r\n",
            );
            for series in &doc.series {
                for b in &series.buckets {
                    s.push_str(&format!(
                        "{},{},{},{},{},{},{},{},{},{},{},{}\r\n",
                        ms_to_rfc3339(b.start_ms),
                        b.start_ms,
                        csv_field(&series.topic),
                        csv_field(series.device.as_deref().unwrap_or("")),
                        csv_field(series.point.as_deref().unwrap_or("")),
                        csv_field(series.unit.as_deref().unwrap_or("")),
                        b.count,
                        b.min,
                        b.max,
                        b.avg,
                        b.first,
                        b.last
                    ));
                }
            }
            s
        }
        Format::Table => {
            let mut cells = Vec::new();
            for series in &doc.series {
                let unit = series
                    .unit
                    .as_deref()
                    .filter(|u| !u.is_empty())
                    .map(|u| format!(" {u}"))
                    .unwrap_or_default();
                for b in &series.buckets {
                    let with = |v: f64| format!("{}{unit}", short(v));
                    cells.push(vec![
                        ms_to_rfc3339(b.start_ms),
                        series.topic.clone(),
                        b.count.to_string(),
                        with(b.min),
                        with(b.max),
                        with(b.avg),
                        with(b.first),
                        with(b.last),
                    ]);
                }
            }
            if cells.is_empty() {
                return String::new();
            }
            aligned(
                &[
                    "START", "TOPIC", "COUNT", "MIN", "MAX", "AVG", "FIRST", "LAST",
                ],
                &cells,
                &[2, 3, 4, 5, 6, 7],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, value: Option<f64>, payload: &str) -> HistoryRow {
        let (reading, unit) = crate::api::model::reading_of(payload.as_bytes());
        HistoryRow {
            seq,
            ts: "2026-11-22T02:00:00.000Z".into(),
            ts_ms: 1_795_312_800_000,
            topic: "demo/boiler/flow_temp".into(),
            device: Some("boiler".into()),
            point: Some("flow_temp".into()),
            value,
            payload: payload.into(),
            qos: 1,
            retain: false,
            reading,
            unit,
        }
    }

    #[test]
    fn formats() {
        let rows = vec![
            row(7, Some(21.5), "{\"value\":21.5,\"unit\":\"°C\"}"),
            row(12, None, "{\"a\":\"x,y\"}"),
            row(13, Some(1.0), "{\"value\":true}"),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "TIME                      SEQ  TOPIC                  VALUE"
        );
        assert_eq!(
            lines[1],
            "2026-11-22T02:00:00.000Z    7  demo/boiler/flow_temp  21.5 °C"
        );
        assert_eq!(
            lines[2],
            "2026-11-22T02:00:00.000Z   12  demo/boiler/flow_temp  {\"a\":\"x,y\"}"
        );
        assert!(lines[3].ends_with("  true"), "{}", lines[3]);
        let c = rows_text(&rows, Format::Csv);
        assert!(c.starts_with("seq,ts,ts_ms,topic,device,point,value,unit,payload,qos,retain\r\n"));
        assert!(c.contains(
            "12,2026-11-22T02:00:00.000Z,1795312800000,demo/boiler/flow_temp,boiler,flow_temp,,,\"{\"\"a\"\":\"\"x,y\"\"}\",1,false\r\n"
        ), "{c}");
        assert!(c.contains(",flow_temp,21.5,°C,"), "{c}");
        assert!(c.contains(",flow_temp,true,,"), "{c}");
        let j: serde_json::Value = serde_json::from_str(&rows_text(&rows, Format::Json)).unwrap();
        assert_eq!(j[2]["value"], serde_json::json!(true));
        assert_eq!(j[0]["value"], serde_json::json!(21.5));
        assert_eq!(short(15.333333333), "15.3333");
        assert_eq!(short(20.0), "20");
    }

    #[test]
    fn request_path() {
        let a = QueryArgs {
            target: Target {
                api: None,
                config: "x".into(),
                token: None,
            },
            device: Some("meter 3".into()),
            point: None,
            topic: Some("gw/#".into()),
            from: Some("-1h".into()),
            to: None,
            limit: 5,
            order: OrderArg::Desc,
            format: Format::Table,
            db: None,
            every: Some("1m".into()),
            latest: false,
            cursor: None,
            values: false,
        };
        assert_eq!(
            a.path(),
            "/api/v1/history?limit=5&order=desc&device=meter%203&topic=gw%2F%23&from=-1h&every=1m"
        );
        // With --every, the default --limit is not sent (it counts rows; the daemon refuses it with buckets).
        let b = QueryArgs {
            limit: 1000,
            ..a.clone()
        };
        assert_eq!(
            b.path(),
            "/api/v1/history?order=desc&device=meter%203&topic=gw%2F%23&from=-1h&every=1m"
        );
        let l = QueryArgs {
            latest: true,
            every: None,
            ..a
        };
        assert_eq!(l.path(), "/api/v1/latest?device=meter%203&topic=gw%2F%23");
    }
}
