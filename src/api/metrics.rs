//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4), written by hand: a few dozen
//! families rendered from one [`Snapshot`] through the components' counter tables ([`crate::metrics`]) do not
//! justify a metrics framework.
//!
//! Names follow Prometheus conventions: `fieldbridge_` prefix, `_total` on counters, base units (bytes,
//! seconds). Counters restart from zero with the daemon (the store's drop counters too: they count since the
//! store was opened).
use std::fmt::Write as _;

use super::model::{BRIDGE_METRICS, PIPELINE_METRICS, STORE_METRICS};
use super::snapshot::Snapshot;
use crate::metrics::Metric;

/// Content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Prom {
    out: String,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        if value.is_nan() {
            self.out.push_str("NaN");
        } else if value.is_infinite() {
            self.out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.out, "{value}");
        }
        self.out.push('\n');
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Prom {
    /// The families of a component's table, one sample per instance and entry; `instance` labels each
    /// instance (`bridge="uplink"`), before the entry's own label.
    fn table<S>(&mut self, table: &[Metric<S>], instances: &[(Option<(&str, &str)>, &S)]) {
        for family in table.chunk_by(|a, b| a.name == b.name) {
            let first = &family[0];
            let mut samples = Vec::new();
            for m in family {
                for (instance, s) in instances {
                    if let Some(v) = (m.value)(s) {
                        let labels: Vec<(&str, &str)> =
                            instance.iter().chain(m.label.iter()).copied().collect();
                        samples.push((labels, v));
                    }
                }
            }
            if first.hide_empty && samples.is_empty() {
                continue;
            }
            self.family(first.name, first.kind.as_str(), first.help);
            for (labels, v) in samples {
                self.sample(first.name, &labels, v);
            }
        }
    }
}

/// Renders the metrics page: the components' tables ([`crate::metrics`]) plus the families whose labels are
/// values (info, writer and bridge states, devices).
pub(crate) fn render(s: &Snapshot) -> String {
    let mut p = Prom {
        out: String::with_capacity(8192),
    };
    let version = env!("CARGO_PKG_VERSION");
    p.family(
        "fieldbridge_info",
        "gauge",
        "Constant 1, labelled with the gateway id and version.",
    );
    p.sample(
        "fieldbridge_info",
        &[("gateway", &s.gateway), ("version", version)],
        1.0,
    );
    p.single(
        "fieldbridge_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        s.uptime_secs as f64,
    );

    p.table(crate::broker::METRICS, &[(None, &s.broker)]);

    let st = &s.store;
    p.table(STORE_METRICS, &[(None, st)]);
    p.family(
        "fieldbridge_store_writer_state",
        "gauge",
        "1 for the writer's current state (normal, full, stalled, degraded), 0 for the others.",
    );
    for state in ["normal", "full", "stalled", "degraded"] {
        p.sample(
            "fieldbridge_store_writer_state",
            &[("state", state)],
            if st.state == state { 1.0 } else { 0.0 },
        );
    }
    p.family(
        "fieldbridge_store_degraded_info",
        "gauge",
        "1 while the store is degraded (damaged: appends refused until a restart salvages it) or stalled \
         (a write failed; retrying), with the reason.",
    );
    let reason = match st.state.as_str() {
        "degraded" => st.damage.as_deref(),
        "stalled" => st.last_error.as_deref(),
        _ => None,
    };
    if let Some(reason) = reason {
        p.sample(
            "fieldbridge_store_degraded_info",
            &[("state", &st.state), ("reason", reason)],
            1.0,
        );
    }

    let bridges: Vec<_> = s
        .bridges
        .iter()
        .map(|b| (Some(("bridge", b.name.as_str())), b))
        .collect();
    p.table(BRIDGE_METRICS, &bridges);
    p.family(
        "fieldbridge_bridge_state",
        "gauge",
        "1 for each bridge's current state.",
    );
    for br in &s.bridges {
        p.sample(
            "fieldbridge_bridge_state",
            &[("bridge", &br.name), ("state", &br.state)],
            1.0,
        );
    }

    p.family(
        "fieldbridge_device_online",
        "gauge",
        "1 when the device answers, 0 when it is starting, offline or in error.",
    );
    for d in &s.devices {
        p.sample(
            "fieldbridge_device_online",
            &[("device", &d.name), ("protocol", &d.protocol)],
            if d.status == "online" { 1.0 } else { 0.0 },
        );
    }

    p.table(PIPELINE_METRICS, &[(None, &s.pipeline)]);
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
