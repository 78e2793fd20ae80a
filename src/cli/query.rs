//! `fieldbridge query`: the buffered history, as a table for people, CSV for spreadsheets, JSON for scripts.
//! The filtering and time parsing happen in the daemon (`GET /api/history`), so the CLI and the API accept
//! exactly the same things and report the same errors.
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use crate::api::{HistoryDoc, HistoryRow};

use super::{client_for, encode_query_value, report, Console, Target, EXIT_OK};

/// Output format of `fieldbridge query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns: time, seq, topic, value.
    Table,
    /// RFC 4180 CSV with a header line, every field.
    Csv,
    /// A JSON array of rows, every field.
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

/// Print the buffered history of a running daemon (table, CSV or JSON).
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
}

impl QueryArgs {
    /// The `/api/history?…` request for these arguments.
    pub fn path(&self) -> String {
        let mut p = String::from("/api/history?limit=");
        let _ = write!(p, "{}", self.limit);
        p.push_str(match self.order {
            OrderArg::Asc => "&order=asc",
            OrderArg::Desc => "&order=desc",
        });
        for (k, v) in [
            ("device", &self.device),
            ("point", &self.point),
            ("topic", &self.topic),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(v) = v {
                let _ = write!(p, "&{k}={}", encode_query_value(v));
            }
        }
        p
    }
}

/// Runs `fieldbridge query`; returns the exit code.
pub async fn query<O: Write, E: Write>(args: &QueryArgs, con: &mut Console<O, E>) -> u8 {
    let client = match client_for(&args.target, Duration::from_secs(60), con) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let doc = match client.get_json::<HistoryDoc>(&args.path()).await {
        Ok(d) => d,
        Err(e) => return report(&e, con),
    };
    let text = match args.format {
        Format::Table => table(&doc.rows),
        Format::Csv => csv(&doc.rows),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&doc.rows).unwrap_or_default();
            s.push('\n');
            s
        }
    };
    con.print(&text);
    // Notes go to stderr so that CSV and JSON on stdout stay machine-readable.
    if doc.rows.is_empty() {
        con.eprintln("no rows match");
    } else if args.format == Format::Table {
        con.eprintln(&format!("{} row(s)", doc.rows.len()));
    }
    if doc.more {
        con.eprintln(&format!(
            "more rows match: raise --limit (now {}) or narrow --from/--to",
            doc.limit
        ));
    }
    EXIT_OK
}

/// The value column: the number of a reading, else the payload (shortened: the table is for reading).
fn value_text(r: &HistoryRow) -> String {
    match r.value {
        Some(v) => format!("{v}"),
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

fn table(rows: &[HistoryRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let header = ["TIME", "SEQ", "TOPIC", "VALUE"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.ts.clone(),
                r.seq.to_string(),
                r.topic.clone(),
                value_text(r),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut o = String::new();
    let mut line = |c: [&str; 4]| {
        let _ = writeln!(
            o,
            "{:<w0$}  {:>w1$}  {:<w2$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    };
    line(header);
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3]]);
    }
    o
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(rows: &[HistoryRow]) -> String {
    let mut o = String::from("seq,ts,ts_ms,topic,device,point,value,payload,qos,retain\r\n");
    for r in rows {
        let _ = write!(
            o,
            "{},{},{},{},{},{},{},{},{},{}\r\n",
            r.seq,
            r.ts,
            r.ts_ms,
            csv_field(&r.topic),
            csv_field(r.device.as_deref().unwrap_or("")),
            csv_field(r.point.as_deref().unwrap_or("")),
            r.value.map(|v| v.to_string()).unwrap_or_default(),
            csv_field(&r.payload),
            r.qos,
            r.retain
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, value: Option<f64>, payload: &str) -> HistoryRow {
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
        }
    }

    #[test]
    fn formats() {
        let rows = vec![
            row(7, Some(21.5), "{\"value\":21.5}"),
            row(12, None, "{\"a\":\"x,y\"}"),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "TIME                      SEQ  TOPIC                  VALUE"
        );
        assert_eq!(
            lines[1],
            "2026-11-22T02:00:00.000Z    7  demo/boiler/flow_temp  21.5"
        );
        assert_eq!(
            lines[2],
            "2026-11-22T02:00:00.000Z   12  demo/boiler/flow_temp  {\"a\":\"x,y\"}"
        );
        let c = csv(&rows);
        assert!(c.starts_with("seq,ts,ts_ms,topic,device,point,value,payload,qos,retain\r\n"));
        assert!(c.contains(
            "12,2026-11-22T02:00:00.000Z,1795312800000,demo/boiler/flow_temp,boiler,flow_temp,,\"{\"\"a\"\":\"\"x,y\"\"}\",1,false\r\n"
        ), "{c}");
    }

    #[test]
    fn request_path() {
        let a = QueryArgs {
            target: Target {
                api: None,
                config: "x".into(),
            },
            device: Some("meter 3".into()),
            point: None,
            topic: Some("gw/#".into()),
            from: Some("-1h".into()),
            to: None,
            limit: 5,
            order: OrderArg::Desc,
            format: Format::Table,
        };
        assert_eq!(
            a.path(),
            "/api/history?limit=5&order=desc&device=meter%203&topic=gw%2F%23&from=-1h"
        );
    }
}
