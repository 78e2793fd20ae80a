//! `fieldbridge export`: a time range of the log to CSV or NDJSON, streamed page by page (the page cursor of
//! `GET /api/v1/history`, or the log file read directly), so an export of millions of rows never holds more
//! than one page. A progress bar goes to stderr when stderr is a terminal, and nowhere otherwise.
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::query::{csv_line, json_row, Answer, Failed, Source, CSV_HEADER};
use super::{Console, Target, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::api::params;

/// Rows per page.
const PAGE: usize = 10_000;

/// Output format of `fieldbridge export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// Export a time range of the log to CSV or NDJSON (streamed; from the daemon, or the log file when the
/// daemon is down or --db is given).
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Where the daemon is.
    #[command(flatten)]
    pub target: Target,
    /// Only this device's readings.
    #[arg(long)]
    pub device: Option<String>,
    /// Only this point's readings.
    #[arg(long)]
    pub point: Option<String>,
    /// Only topics matching this MQTT filter.
    #[arg(long)]
    pub topic: Option<String>,
    /// From this time on (inclusive): RFC 3339, unix ms, `now`, or ago (`-1h`). Default: the oldest row.
    #[arg(long, allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Before this time (exclusive). Default: now.
    #[arg(long, allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// Write here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Read this log file directly (read-only).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
}

/// Why writing the export to `out` would destroy a log, if it would: `out` is the `--db` file or one of its
/// companions (`-wal`, `-shm`, `-journal`), or an existing SQLite database or WAL (the daemon's log, when the
/// export reads through the API and does not know the file's name).
fn clobbers_a_log(out: &Path, db: Option<&Path>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(out).ok()?;
    if !meta.is_file() {
        return None; // a FIFO, /dev/stdout, a terminal: nothing is overwritten
    }
    if let Some(db) = db {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            if let Ok(m) = std::fs::metadata(&name) {
                if m.dev() == meta.dev() && m.ino() == meta.ino() {
                    return Some(if suffix.is_empty() {
                        "it is the log being exported (--db)".into()
                    } else {
                        format!("it is the log's {suffix} file")
                    });
                }
            }
        }
    }
    // The store's own files beside a log: its lock, its disk-full reserve, a damaged log's kept WAL.
    let name = out.file_name()?.to_string_lossy().to_string();
    for suffix in [".lock", ".reserve", ".damaged-wal", ".damaged"] {
        if let Some(base) = name.strip_suffix(suffix) {
            let log = out.with_file_name(base);
            if is_sqlite(&log) {
                return Some(format!(
                    "it is the store's `{suffix}` file beside the log {}",
                    log.display()
                ));
            }
        }
    }
    let head = file_head(out);
    if head.starts_with(crate::store::SQLITE_HEADER) {
        return Some("it is an SQLite database (a log?)".into());
    }
    // A WAL file starts with the magic number 0x377f0682 or 0x377f0683.
    if head.len() >= 4 && head[..3] == [0x37, 0x7f, 0x06] && matches!(head[3], 0x82 | 0x83) {
        return Some("it is an SQLite write-ahead log".into());
    }
    None
}

/// The first (up to) 16 bytes of `p`; empty when it cannot be read.
fn file_head(p: &Path) -> Vec<u8> {
    let mut head = Vec::with_capacity(16);
    if let Ok(f) = File::open(p) {
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(f, 16), &mut head);
    }
    head
}

/// Whether `p` starts with SQLite's header.
fn is_sqlite(p: &Path) -> bool {
    file_head(p).starts_with(crate::store::SQLITE_HEADER)
}

/// Runs `fieldbridge export`; returns the exit code.
pub async fn export<O: Write, E: Write>(args: &ExportArgs, con: &mut Console<O, E>) -> u8 {
    let now = SystemTime::now();
    // Fix the range now, so that a relative `--from -1h` means the same on every page.
    let mut fixed = |name: &str, v: &Option<String>| -> Result<Option<i64>, u8> {
        v.as_deref()
            .map(|t| params::parse_time(t, now))
            .transpose()
            .map_err(|why| {
                con.eprintln(&format!("fieldbridge: --{name}: {why}"));
                EXIT_USAGE
            })
    };
    let from = match fixed("from", &args.from) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let to = match fixed("to", &args.to) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let to = to.unwrap_or_else(|| params::parse_time("now", now).unwrap_or(i64::MAX));
    let mut src = match Source::pick(
        &args.target,
        args.db.as_deref(),
        Duration::from_secs(120),
        con,
    ) {
        Ok(s) => s,
        Err(Failed(code)) => return code,
    };
    if let Some(out) = &args.output {
        if let Some(why) = clobbers_a_log(out, args.db.as_deref()) {
            con.eprintln(&format!(
                "fieldbridge: refusing to write the export to {}: {why}; choose another --output file",
                out.display()
            ));
            return EXIT_USAGE;
        }
    }
    let mut sink: Box<dyn Write> = match &args.output {
        Some(p) => match File::create(p) {
            Ok(f) => Box::new(BufWriter::new(f)),
            Err(e) => {
                con.eprintln(&format!("fieldbridge: cannot write {}: {e}", p.display()));
                return EXIT_FAILURE;
            }
        },
        None => Box::new(Vec::new()),
    };
    let to_stdout = args.output.is_none();
    let progress = std::io::stderr().is_terminal();
    let mut base = vec![
        ("limit".to_string(), PAGE.to_string()),
        ("to".to_string(), to.to_string()),
    ];
    if let Some(f) = from {
        base.push(("from".into(), f.to_string()));
    }
    for (k, v) in [
        ("device", &args.device),
        ("point", &args.point),
        ("topic", &args.topic),
    ] {
        if let Some(v) = v {
            base.push((k.to_string(), v.clone()));
        }
    }
    if args.format == ExportFormat::Csv {
        let _ = write_out(&mut sink, to_stdout, con, CSV_HEADER);
    }
    let mut cursor: Option<String> = None;
    let mut total: u64 = 0;
    let mut first_ts: Option<i64> = from;
    let started = Instant::now();
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    loop {
        let mut p = base.clone();
        if let Some(c) = &cursor {
            p.push(("cursor".into(), c.clone()));
        }
        let doc = match src.ask(&args.target, false, &p, con).await {
            Ok(Answer::Rows(doc)) => doc,
            Ok(_) => return EXIT_FAILURE,
            Err(Failed(code)) => return code,
        };
        let mut text = String::with_capacity(doc.rows.len() * 160);
        for r in &doc.rows {
            match args.format {
                ExportFormat::Csv => text.push_str(&csv_line(r)),
                ExportFormat::Ndjson => {
                    text.push_str(&json_row(r).to_string());
                    text.push('\n');
                }
            }
        }
        if !write_out(&mut sink, to_stdout, con, &text) {
            // A closed pipe (`| head`): stop quietly.
            return EXIT_OK;
        }
        total += doc.rows.len() as u64;
        if let (Some(first), Some(last)) = (doc.rows.first(), doc.rows.last()) {
            first_ts.get_or_insert(first.ts_ms);
            if progress && last_draw.elapsed() >= Duration::from_millis(200) {
                last_draw = Instant::now();
                let start = first_ts.unwrap_or(first.ts_ms);
                let frac = if to > start {
                    ((last.ts_ms - start) as f64 / (to - start) as f64).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                draw(con, frac, total, &last.ts);
            }
        }
        if !doc.more {
            break;
        }
        cursor = doc.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    if let Err(e) = sink.flush() {
        con.eprintln(&format!("fieldbridge: writing the export: {e}"));
        return EXIT_FAILURE;
    }
    if progress {
        draw(con, 1.0, total, "");
        con.eprintln("");
    }
    con.eprintln(&format!(
        "{total} row(s) exported in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    EXIT_OK
}

/// Writes a chunk to the output file, or to the console's stdout. False when the reader went away.
fn write_out<O: Write, E: Write>(
    sink: &mut Box<dyn Write>,
    to_stdout: bool,
    con: &mut Console<O, E>,
    text: &str,
) -> bool {
    if to_stdout {
        con.print(text)
    } else {
        sink.write_all(text.as_bytes()).is_ok()
    }
}

fn draw<O: Write, E: Write>(con: &mut Console<O, E>, frac: f64, rows: u64, at: &str) {
    const WIDTH: usize = 30;
    let full = (frac * WIDTH as f64).round() as usize;
    let bar = format!(
        "{}{}",
        "#".repeat(full),
        "-".repeat(WIDTH - full.min(WIDTH))
    );
    let _ = write!(
        con.err,
        "\r[{bar}] {:>3}%  {rows} rows  {at}\x1b[K",
        (frac * 100.0).round() as u32
    );
    let _ = con.err.flush();
}

/// `fieldbridge export` on the process's stdout/stderr; returns the exit code.
pub fn export_main(args: &ExportArgs) -> u8 {
    let Some(rt) = super::runtime() else {
        return EXIT_FAILURE;
    };
    rt.block_on(export(args, &mut Console::stdio()))
}
