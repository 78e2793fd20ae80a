//! Samples, the table printed while the soak runs, the CSV, and the growth slope after warm-up.
use std::fmt::Write as _;

/// One sample of the daemon and its surroundings.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the daemon started.
    pub t: f64,
    /// The daemon's CPU share of one core since the previous sample, in percent.
    pub cpu_pct: f64,
    /// The whole machine's busy CPUs since the previous sample (2.0 = both cores of a 2-core box busy).
    pub machine_cores: f64,
    /// VmRSS, RssAnon, RssFile, smaps_rollup Anonymous (KiB).
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub rollup_anon_kib: u64,
    /// Peak resident set so far (VmHWM), KiB.
    pub hwm_kib: u64,
    pub threads: u64,
    /// Messages counted at the upstream subscriber: total, and per second since the previous sample.
    pub upstream: u64,
    pub upstream_rate: f64,
    /// Readings the pipeline received (daemon metrics), per second since the previous sample.
    pub readings_rate: f64,
    /// Rows the bridge has not delivered yet (daemon metrics).
    pub lag_rows: u64,
    /// Rows the store dropped or refused, all reasons (daemon metrics).
    pub store_dropped: u64,
    /// The store's files (database + WAL) and the daemon's log output, in bytes.
    pub db_bytes: u64,
    pub log_bytes: u64,
}

const MIB: f64 = 1024.0;

impl Sample {
    pub const CSV_HEADER: &'static str = "t_s,cpu_pct,machine_cores,rss_kib,anon_kib,file_kib,rollup_anon_kib,hwm_kib,threads,upstream_msgs,upstream_per_s,readings_per_s,bridge_lag_rows,store_dropped,db_bytes,log_bytes";

    pub fn csv(&self) -> String {
        format!(
            "{:.1},{:.2},{:.2},{},{},{},{},{},{},{},{:.1},{:.1},{},{},{},{}",
            self.t,
            self.cpu_pct,
            self.machine_cores,
            self.rss_kib,
            self.anon_kib,
            self.file_kib,
            self.rollup_anon_kib,
            self.hwm_kib,
            self.threads,
            self.upstream,
            self.upstream_rate,
            self.readings_rate,
            self.lag_rows,
            self.store_dropped,
            self.db_bytes,
            self.log_bytes
        )
    }

    pub const TABLE_HEADER: &'static str = "    time   cpu%  machine   RSS MiB  anon MiB  thr   readings/s  upstream/s    upstream total  lag rows  db MiB  log KiB";

    pub fn row(&self) -> String {
        format!(
            "{:>8} {:>6.1} {:>8.2} {:>9.1} {:>9.1} {:>4} {:>12.0} {:>11.0} {:>17} {:>9} {:>7.0} {:>8.0}",
            hms(self.t),
            self.cpu_pct,
            self.machine_cores,
            self.rss_kib as f64 / MIB,
            self.anon_kib as f64 / MIB,
            self.threads,
            self.readings_rate,
            self.upstream_rate,
            self.upstream,
            self.lag_rows,
            self.db_bytes as f64 / MIB / MIB,
            self.log_bytes as f64 / 1024.0,
        )
    }
}

/// `1h02m03s`-style elapsed time.
pub fn hms(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Least-squares slope of `y` over `x`; `None` with fewer than 2 distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Growth in MiB per hour of a KiB series after `warmup` seconds.
pub fn growth_mib_per_hour(
    samples: &[Sample],
    warmup: f64,
    f: impl Fn(&Sample) -> u64,
) -> Option<f64> {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= warmup)
        .map(|s| (s.t / 3600.0, f(s) as f64 / MIB))
        .collect();
    slope(&pts)
}

/// Everything the run measured, as a summary block (also appended to the CSV as `#` comments).
pub struct Summary<'a> {
    pub samples: &'a [Sample],
    pub warmup: f64,
    pub devices: u32,
    pub points: u32,
    pub interval_s: f64,
    pub daemon_cpu_s: f64,
    pub machine_busy_s: f64,
    pub wall_s: f64,
    pub after_warmup_cpu_pct: Option<f64>,
}

impl Summary<'_> {
    pub fn render(&self) -> String {
        let mut o = String::new();
        let after: Vec<&Sample> = self.samples.iter().filter(|s| s.t >= self.warmup).collect();
        let max = |f: &dyn Fn(&Sample) -> u64| after.iter().map(|s| f(s)).max().unwrap_or(0);
        let last = self.samples.last().cloned().unwrap_or_default();
        let expected = f64::from(self.devices) * f64::from(self.points) / self.interval_s;
        let _ = writeln!(
            o,
            "load: {} devices x {} points every {:.1} s = {:.0} readings/s expected",
            self.devices, self.points, self.interval_s, expected
        );
        let _ = writeln!(
            o,
            "run: {} ({} samples, {} after the {} warm-up)",
            hms(self.wall_s),
            self.samples.len(),
            after.len(),
            hms(self.warmup)
        );
        let _ = writeln!(
            o,
            "cpu: {:.1} % of one core over the run, {} after warm-up; the machine was {:.2} cores busy on average (all processes)",
            self.daemon_cpu_s / self.wall_s.max(1e-9) * 100.0,
            self.after_warmup_cpu_pct
                .map_or("-".to_string(), |c| format!("{c:.1} %")),
            self.machine_busy_s / self.wall_s.max(1e-9)
        );
        let _ = writeln!(
            o,
            "rss: last {:.1} MiB, max after warm-up {:.1} MiB, peak (VmHWM) {:.1} MiB; anon: last {:.1} MiB, max after warm-up {:.1} MiB",
            last.rss_kib as f64 / MIB,
            max(&|s| s.rss_kib) as f64 / MIB,
            last.hwm_kib as f64 / MIB,
            last.anon_kib as f64 / MIB,
            max(&|s| s.anon_kib) as f64 / MIB,
        );
        let fmt = |v: Option<f64>| {
            v.map_or("- (too few samples)".to_string(), |v| {
                format!("{v:+.2} MiB/hour")
            })
        };
        let _ = writeln!(
            o,
            "growth after warm-up (least squares): rss {}, anon {}",
            fmt(growth_mib_per_hour(self.samples, self.warmup, |s| s.rss_kib)),
            fmt(growth_mib_per_hour(self.samples, self.warmup, |s| s.anon_kib)),
        );
        let first_after = after.first().map_or(0, |s| s.upstream);
        let t_after = after.first().map_or(0.0, |s| s.t);
        let _ = writeln!(
            o,
            "upstream: {} messages in total, {:.0}/s after warm-up ({:.1} % of expected); bridge lag at the end {} rows; store dropped {}",
            last.upstream,
            (last.upstream.saturating_sub(first_after)) as f64 / (last.t - t_after).max(1e-9),
            (last.upstream.saturating_sub(first_after)) as f64 / (last.t - t_after).max(1e-9) / expected * 100.0,
            last.lag_rows,
            last.store_dropped
        );
        let _ = writeln!(
            o,
            "files: store {:.1} MiB (database + WAL), daemon log {:.1} KiB",
            last.db_bytes as f64 / MIB / MIB,
            last.log_bytes as f64 / 1024.0
        );
        o
    }
}

/// Per thread name, the CPU share of one core and the wake-ups per second between two `procfs::threads`
/// readings `secs` apart, busiest first. A thread that ended in between loses its share after the first reading;
/// one that started counts from zero (blocking-pool threads come and go).
pub fn thread_table(
    before: &std::collections::BTreeMap<String, (f64, u64)>,
    after: &std::collections::BTreeMap<String, (f64, u64)>,
    secs: f64,
) -> String {
    let mut rows: Vec<(&String, f64, f64)> = after
        .iter()
        .map(|(name, (cpu, sw))| {
            let (cpu0, sw0) = before.get(name).copied().unwrap_or((0.0, 0));
            let secs = secs.max(1e-9);
            (
                name,
                (cpu - cpu0).max(0.0) / secs * 100.0,
                sw.saturating_sub(sw0) as f64 / secs,
            )
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut out = String::from("cpu by thread after warm-up (share of one core; wake-ups/s):\n");
    for (name, cpu, wakeups) in rows {
        let _ = writeln!(out, "  {name:<16} {cpu:>5.1} %  {wakeups:>7.0}/s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise_free_flat() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 + 2.0 * f64::from(i)))
            .collect();
        assert!((slope(&line).unwrap() - 2.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 5.0)).collect();
        assert_eq!(slope(&flat), Some(0.0));
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn growth_ignores_the_warm_up() {
        // 10 MiB jump during warm-up, then +1 MiB per hour.
        let samples: Vec<Sample> = (0..=60)
            .map(|i| {
                let t = f64::from(i) * 60.0;
                let kib = if t < 600.0 {
                    10_240.0 * t / 600.0
                } else {
                    10_240.0 + 1024.0 * t / 3600.0
                };
                Sample {
                    t,
                    rss_kib: kib as u64,
                    ..Default::default()
                }
            })
            .collect();
        let g = growth_mib_per_hour(&samples, 600.0, |s| s.rss_kib).unwrap();
        assert!((g - 1.0).abs() < 0.01, "{g}");
    }

    #[test]
    fn hms_format() {
        assert_eq!(hms(59.6), "1m00s");
        assert_eq!(hms(3725.0), "1h02m05s");
    }
    #[test]
    fn thread_table_is_per_name_busiest_first_and_counts_new_threads_from_zero() {
        let before = [
            ("bridge".to_string(), (10.0, 1000)),
            ("writer".to_string(), (5.0, 50)),
        ]
        .into_iter()
        .collect();
        let after = [
            ("bridge".to_string(), (10.5, 1500)),
            ("writer".to_string(), (6.0, 60)),
            ("pool".to_string(), (0.2, 4)),
        ]
        .into_iter()
        .collect();
        let t = thread_table(&before, &after, 10.0);
        let lines: Vec<&str> = t.lines().skip(1).collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].contains("writer") && lines[0].contains("10.0 %") && lines[0].contains("1/s"),
            "{t}"
        );
        assert!(
            lines[1].contains("bridge") && lines[1].contains("5.0 %") && lines[1].contains("50/s"),
            "{t}"
        );
        assert!(
            lines[2].contains("pool") && lines[2].contains("2.0 %"),
            "{t}"
        );
    }
}
