//! `fieldbridge status`: what a gateway is doing, for the operator at its console — per bridge its state,
//! backlog and when it will be drained; per device its status; the log's size and losses.
//!
//! `--watch` refreshes every second. On a terminal the screen is redrawn in place, with colours and a
//! progress bar per bridge whose backlog is draining (drained since the watch started / (drained + left));
//! elsewhere (a pipe, a log file) each refresh is a block of plain lines, never an escape code.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use crate::api::{BridgeView, StatusDoc};

use super::{client_for, report, ApiClient, ClientError, Console, Target, EXIT_FAILURE, EXIT_OK};

/// Show a running daemon's bridges (state, lag, drain rate, time to drain), devices and store.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Where the daemon is.
    #[command(flatten)]
    pub target: Target,
    /// Refresh every second until interrupted (Ctrl-C), with a progress bar per draining bridge on a terminal.
    #[arg(short, long)]
    pub watch: bool,
    /// With --watch: stop after this many refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Print the daemon's status document as JSON instead.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
}

/// Runs `fieldbridge status`; returns the exit code.
pub async fn status<O: Write, E: Write>(args: &StatusArgs, con: &mut Console<O, E>) -> u8 {
    let client = match client_for(&args.target, Duration::from_secs(10), con) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !args.watch {
        return match client.get_json::<serde_json::Value>("/api/status").await {
            Ok(raw) if args.json => {
                let text = serde_json::to_string_pretty(&raw).unwrap_or_default();
                con.print(&format!("{text}\n"));
                EXIT_OK
            }
            Ok(raw) => match serde_json::from_value::<StatusDoc>(raw) {
                Ok(doc) => {
                    let text = render(&doc, &client, &mut Watch::default(), Style::plain());
                    con.print(&text);
                    EXIT_OK
                }
                Err(e) => report(
                    &ClientError::BadAnswer {
                        addr: client.addr(),
                        status: 200,
                        detail: e.to_string(),
                    },
                    con,
                ),
            },
            Err(e) => report(&e, con),
        };
    }
    watch(args, &client, con).await
}

async fn watch<O: Write, E: Write>(
    args: &StatusArgs,
    client: &ApiClient,
    con: &mut Console<O, E>,
) -> u8 {
    let style = if con.tty {
        Style::terminal()
    } else {
        Style::plain()
    };
    let mut state = Watch {
        active: true,
        ..Watch::default()
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refreshes = 0u64;
    let mut code = EXIT_OK;
    if con.tty {
        // Clear once; later frames overwrite in place (no flicker).
        con.print("\x1b[2J");
    }
    // One Ctrl-C future for the whole watch: an interrupt during a request is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut interrupted => break,
        }
        let fetched = tokio::select! {
            r = client.get_json::<StatusDoc>("/api/status") => r,
            _ = &mut interrupted => break,
        };
        let body = match fetched {
            Ok(doc) => {
                code = EXIT_OK;
                render(&doc, client, &mut state, style)
            }
            Err(e) => {
                // A daemon restarting is worth watching through: say so and keep trying.
                code = EXIT_FAILURE;
                format!("{}\n", style.paint(Paint::Bad, &e.to_string()))
            }
        };
        let frame = if con.tty {
            let mut f = String::from("\x1b[H");
            for line in body.lines() {
                f.push_str(line);
                f.push_str("\x1b[K\n");
            }
            f.push_str("\x1b[J");
            f
        } else {
            let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            format!("--- {stamp} ---\n{body}\n")
        };
        if !con.print(&frame) {
            break;
        }
        refreshes += 1;
        if args.count.is_some_and(|n| refreshes >= n) {
            break;
        }
    }
    code
}

/// What a watch remembers between refreshes.
#[derive(Default)]
struct Watch {
    /// Whether this is a watch (progress since its start is shown) rather than a one-shot status.
    active: bool,
    /// Per bridge: cursor and lost rows at the first refresh (progress is measured from there).
    start: HashMap<String, (u64, u64)>,
}

impl Watch {
    /// Rows delivered since the watch started (eviction moves a cursor too: those rows were lost, not
    /// delivered).
    fn drained(&mut self, b: &BridgeView) -> Option<u64> {
        let seq = b.cursor_seq?;
        let (s0, l0) = *self
            .start
            .entry(b.name.clone())
            .or_insert((seq, b.lost_rows));
        Some(
            seq.saturating_sub(s0)
                .saturating_sub(b.lost_rows.saturating_sub(l0)),
        )
    }
}

#[derive(Clone, Copy)]
enum Paint {
    Good,
    Warn,
    Bad,
    Dim,
    Bold,
}

/// Colours and bars on a terminal (unless `NO_COLOR` is set); nothing but text elsewhere.
#[derive(Clone, Copy)]
struct Style {
    color: bool,
    bars: bool,
}

impl Style {
    fn plain() -> Style {
        Style {
            color: false,
            bars: false,
        }
    }

    fn terminal() -> Style {
        Style {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            bars: true,
        }
    }

    fn paint(self, p: Paint, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match p {
            Paint::Good => "32",
            Paint::Warn => "33",
            Paint::Bad => "31",
            Paint::Dim => "2",
            Paint::Bold => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// A state word, padded to `width` *before* colouring so columns line up.
    fn state(self, s: &str, width: usize) -> String {
        let p = match s {
            "online" | "live" | "normal" | "good" => Paint::Good,
            "offline" | "error" | "stalled" | "bad" => Paint::Bad,
            _ => Paint::Warn,
        };
        self.paint(p, &format!("{s:<width$}"))
    }
}

/// Renders one status document.
fn render(doc: &StatusDoc, client: &ApiClient, w: &mut Watch, style: Style) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} {} · fieldbridge {} · up {} · API {}",
        style.paint(Paint::Bold, "gateway"),
        style.paint(Paint::Bold, &doc.gateway),
        doc.version,
        duration(doc.uptime_secs as f64),
        client.addr()
    );

    o.push('\n');
    let _ = writeln!(o, "{}", style.paint(Paint::Bold, "bridges"));
    if doc.bridges.is_empty() {
        let _ = writeln!(o, "  none configured");
    }
    let name_w = doc.bridges.iter().map(|b| b.name.len()).max().unwrap_or(0);
    for b in &doc.bridges {
        // The daemon's own numbers, as `/api/status` and `/metrics` give them: no second estimate here.
        let rate = b.drain_rate;
        let drained = w.drained(b);
        let lag = match b.lag_seconds {
            Some(s) => format!("{} rows ({})", count(b.lag_rows), duration(s)),
            None => format!("{} rows", count(b.lag_rows)),
        };
        let rate_text = rate.map_or("—".to_string(), |r| {
            format!("{}/s", count(r.round() as u64))
        });
        // Shown only while the bridge drains (connected, lag decreasing).
        let eta_text = match b.eta_seconds {
            Some(eta) if b.lag_rows > 0 => duration(eta),
            _ => "—".to_string(),
        };
        let _ = writeln!(
            o,
            "  {:<name_w$}  {}  lag {lag}  drain {rate_text}  eta {eta_text}  {}",
            b.name,
            style.state(&b.state, 10),
            style.paint(Paint::Dim, &b.url),
        );
        if b.lost_rows > 0 {
            let _ = writeln!(
                o,
                "  {:<name_w$}  {}",
                "",
                style.paint(
                    Paint::Bad,
                    &format!("lost {} rows to drop_oldest", count(b.lost_rows))
                )
            );
        }
        if let Some(e) = &b.last_error {
            let _ = writeln!(o, "  {:<name_w$}  last error: {e}", "");
        }
        if let Some(done) = drained.filter(|_| w.active) {
            if b.lag_rows > 0 || done > 0 {
                let total = done + b.lag_rows;
                let frac = if total == 0 {
                    1.0
                } else {
                    done as f64 / total as f64
                };
                let _ = writeln!(
                    o,
                    "  {:<name_w$}  {}{:>5.1}%  {} of {} drained since the watch started",
                    "",
                    if style.bars {
                        format!("{} ", bar(frac, 30))
                    } else {
                        String::new()
                    },
                    frac * 100.0,
                    count(done),
                    count(total)
                );
            }
        }
    }

    o.push('\n');
    let _ = writeln!(o, "{}", style.paint(Paint::Bold, "devices"));
    if doc.devices.is_empty() {
        let _ = writeln!(o, "  none configured");
    }
    let dev_w = doc.devices.iter().map(|d| d.name.len()).max().unwrap_or(0);
    for d in &doc.devices {
        let reason = d.reason.as_deref().unwrap_or("");
        let line = format!(
            "  {:<dev_w$}  {}  {reason}",
            d.name,
            style.state(&d.status, 8)
        );
        let _ = writeln!(o, "{}", line.trim_end());
    }

    let s = &doc.store;
    o.push('\n');
    let _ = writeln!(
        o,
        "{}  {}  writer {}",
        style.paint(Paint::Bold, "store"),
        s.path,
        style.state(&s.state, 0)
    );
    let pct = if s.max_bytes > 0 {
        100.0 * s.bytes_used as f64 / s.max_bytes as f64
    } else {
        0.0
    };
    let _ = writeln!(
        o,
        "  size   {} of {} ({pct:.1} %), {} on disk",
        bytes(s.bytes_used),
        bytes(s.max_bytes),
        bytes(s.bytes_on_disk)
    );
    let range = match (&s.oldest_ts, &s.newest_ts) {
        (Some(a), Some(b)) => format!(", {a} .. {b}"),
        _ => String::new(),
    };
    let _ = writeln!(o, "  rows   {}{range}", count(s.rows));
    let drops = if s.dropped.total == 0 {
        "none".to_string()
    } else {
        style.paint(
            Paint::Bad,
            &format!(
                "{} (oldest {}, newest {}, write failed {}, damaged {})",
                count(s.dropped.total),
                count(s.dropped.oldest),
                count(s.dropped.newest),
                count(s.dropped.write_failed),
                count(s.dropped.damaged)
            ),
        )
    };
    let _ = writeln!(o, "  drops  {drops}");
    if let Some(e) = &s.last_error {
        let _ = writeln!(o, "  last error: {e}");
    }
    o
}

/// `[█████░░░░░]`, `frac` in 0..=1.
fn bar(frac: f64, width: usize) -> String {
    let full = ((frac.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "█".repeat(full), "░".repeat(width - full))
}

/// `1,234,567`.
fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `512 B`, `12.3 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `45s`, `3m 20s`, `2h 05m`, `3d 4h`.
fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".into();
    }
    let s = secs.round() as u64;
    let (d, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {sec:02}s")
    } else {
        format!("{sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeviceView, StoreView};

    fn doc(cursor: u64, lag: u64) -> StatusDoc {
        StatusDoc {
            gateway: "gw".into(),
            version: "0.1.0".into(),
            uptime_secs: 3725,
            bridges: vec![BridgeView {
                name: "cloud".into(),
                url: "mqtts://example.invalid:8883".into(),
                state: "backlog".into(),
                lag_rows: lag,
                lag_seconds: Some(90.0),
                drain_rate: Some(1000.0),
                eta_seconds: Some(lag as f64 / 1000.0),
                cursor_seq: Some(cursor),
                lost_rows: 0,
                last_error: Some("connection reset".into()),
                ..BridgeView::default()
            }],
            devices: vec![DeviceView {
                name: "meter-3".into(),
                protocol: "modbus".into(),
                status: "offline".into(),
                reason: Some("timed out".into()),
                ..DeviceView::default()
            }],
            store: StoreView {
                path: "/var/lib/fieldbridge/log.db".into(),
                state: "normal".into(),
                bytes_used: 12 * 1024 * 1024,
                bytes_on_disk: 13 * 1024 * 1024,
                max_bytes: 256 * 1024 * 1024,
                rows: 1_234_567,
                ..StoreView::default()
            },
            ..StatusDoc::default()
        }
    }

    #[test]
    fn plain_and_terminal() {
        let client = ApiClient::new("127.0.0.1:8080".parse().unwrap(), Duration::from_secs(1));
        let mut w = Watch {
            active: true,
            ..Watch::default()
        };
        let first = render(&doc(100, 30_000), &client, &mut w, Style::plain());
        assert!(!first.contains('\x1b'), "{first}");
        assert!(first.contains("gateway gw · fieldbridge 0.1.0 · up 1h 02m · API 127.0.0.1:8080"));
        assert!(
            first.contains("cloud  backlog     lag 30,000 rows (1m 30s)  drain 1,000/s  eta 30s"),
            "{first}"
        );
        assert!(first.contains("last error: connection reset"));
        assert!(first.contains("meter-3  offline   timed out"), "{first}");
        assert!(
            first.contains("size   12.0 MiB of 256.0 MiB (4.7 %), 13.0 MiB on disk"),
            "{first}"
        );
        assert!(first.contains("rows   1,234,567"));
        assert!(first.contains("drops  none"));
        assert!(
            first.contains("0 of 30,000 drained since the watch started"),
            "{first}"
        );
        // 10,000 more delivered: a third of (drained + left).
        let style = Style {
            color: true,
            bars: true,
        };
        let second = render(&doc(10_100, 20_000), &client, &mut w, style);
        assert!(second.contains('\x1b'));
        assert!(
            second.contains(&format!("{}  33.3%", bar(1.0 / 3.0, 30))),
            "{second}"
        );
        assert!(second.contains("10,000 of 30,000 drained"), "{second}");
    }

    #[test]
    fn helpers() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(200.0), "3m 20s");
        assert_eq!(duration(7500.0), "2h 05m");
        assert_eq!(bar(0.5, 4), "[██░░]");
    }
}
