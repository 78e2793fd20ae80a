//! Turning samples into the comparison table (plain text and Markdown) and the per-run details.
use std::fmt::Write as _;

use crate::sysload::CpuSplit;
use crate::workloads::{LatencyResult, ThroughputResult};

/// One measurement of one broker in one run.
#[derive(Debug, Clone)]
pub enum Sample {
    Throughput {
        result: ThroughputResult,
        cpu: CpuSplit,
    },
    Latency {
        result: LatencyResult,
        cpu: CpuSplit,
    },
    Memory {
        idle_kib: u64,
        conns_kib: u64,
        idle_anon_kib: u64,
        conns_anon_kib: u64,
        conns: usize,
        cpu: CpuSplit,
    },
    Failed(String),
}

/// Which way a ratio is taken; every ratio in the table is "fieldbridge's advantage": above 1 is better.
#[derive(Debug, Clone, Copy)]
pub enum Better {
    /// Throughput: fieldbridge / mosquitto.
    Higher,
    /// Latency, memory: mosquitto / fieldbridge.
    Lower,
}

/// A table row.
pub struct Row {
    pub metric: String,
    pub mosquitto: String,
    pub fieldbridge: String,
    pub ratio: String,
    pub target: String,
    pub met: String,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn ratio(m: Option<f64>, f: Option<f64>, better: Better) -> Option<f64> {
    let (m, f) = (m?, f?);
    let r = match better {
        Better::Higher => f / m,
        Better::Lower => m / f,
    };
    r.is_finite().then_some(r)
}

pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.2}x"))
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i128;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

pub fn render_text(rows: &[Row]) -> String {
    let header = [
        "metric",
        "mosquitto",
        "fieldbridge",
        "ratio",
        "target",
        "met",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.as_str(),
                r.mosquitto.as_str(),
                r.fieldbridge.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
                r.met.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, s) in widths.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: &[&str; 6]| {
        for (i, (s, w)) in c.iter().zip(widths.iter()).enumerate() {
            let pad = w - s.chars().count();
            if i == 0 {
                let _ = write!(out, "{s}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, " | {}{s}", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&mut out, &header);
    let total: usize = widths.iter().sum::<usize>() + 3 * (widths.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for c in &cells {
        line(&mut out, c);
    }
    out
}

pub fn render_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| metric | mosquitto | fieldbridge | ratio (>1 = fieldbridge better) | target | met |\n\
         |---|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.metric, r.mosquitto, r.fieldbridge, r.ratio, r.target, r.met
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(ratio(Some(2.0), Some(4.0), Better::Higher), Some(2.0));
        assert_eq!(ratio(Some(2.0), Some(4.0), Better::Lower), Some(0.5));
    }
}
