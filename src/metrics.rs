//! Counter tables: each component describes each of its counters and gauges once — Prometheus name, help, kind,
//! label, the JSON field of `/api/status` that carries the same value, and (broker) the `$SYS` topic — and the
//! renderers walk the table: `/metrics` (`api/metrics.rs`), `$SYS/broker/…` (`broker/sys.rs`). The JSON
//! documents are the components' serde structs; each table names the field it reads, and a unit test per table
//! checks that the field holds the value the metric shows, so the three views cannot drift apart.
//!
//! Entries of one Prometheus family (same `name`, different `label`) are consecutive in a table.

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts from zero with the daemon).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    /// As the exposition format spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One sample of a family, read from a component's stats struct `S`.
pub struct Metric<S> {
    /// Prometheus family name (`fieldbridge_…`).
    pub name: &'static str,
    /// Prometheus help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The label that tells this sample from the others of its family (`reason="expired"`).
    pub label: Option<(&'static str, &'static str)>,
    /// Where `/api/status` shows the same value: a dotted path into the component's JSON object.
    pub json: &'static str,
    /// `$SYS/broker/{sys}` topic showing the value; entries sharing a topic are summed.
    pub sys: Option<&'static str>,
    /// The family is left out of `/metrics` entirely when no instance has a value (instead of a family with
    /// no samples).
    pub hide_empty: bool,
    /// The value; `None`: no sample (not known yet).
    pub value: fn(&S) -> Option<f64>,
}

impl<S> Metric<S> {
    /// A counter.
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        json: &'static str,
        value: fn(&S) -> Option<f64>,
    ) -> Self {
        Metric {
            name,
            help,
            kind: Kind::Counter,
            label: None,
            json,
            sys: None,
            hide_empty: false,
            value,
        }
    }

    /// A gauge.
    pub const fn gauge(
        name: &'static str,
        help: &'static str,
        json: &'static str,
        value: fn(&S) -> Option<f64>,
    ) -> Self {
        Metric {
            kind: Kind::Gauge,
            ..Self::counter(name, help, json, value)
        }
    }

    /// With the label that distinguishes this sample within its family.
    pub const fn label(mut self, key: &'static str, value: &'static str) -> Self {
        self.label = Some((key, value));
        self
    }

    /// Also published as `$SYS/broker/{topic}`.
    pub const fn sys(mut self, topic: &'static str) -> Self {
        self.sys = Some(topic);
        self
    }

    /// Left out of `/metrics` when there is no value.
    pub const fn hide_empty(mut self) -> Self {
        self.hide_empty = true;
        self
    }
}

/// Checks a table against the JSON the same struct serializes to: every entry's `json` path exists and holds
/// the metric's value. For the components' unit tests.
#[cfg(test)]
pub(crate) fn assert_json_agrees<S: serde::Serialize>(table: &[Metric<S>], stats: &S) {
    let doc = serde_json::to_value(stats).expect("stats serialize");
    for m in table {
        let mut at = &doc;
        for key in m.json.split('.') {
            at = at
                .get(key)
                .unwrap_or_else(|| panic!("{}: no JSON field `{}` in {doc}", m.name, m.json));
        }
        let shown = (m.value)(stats);
        // A time is shown as RFC 3339 in JSON and as unix seconds in metrics: both present or both absent.
        let json_value = match at {
            serde_json::Value::String(_) => shown,
            v => v.as_f64(),
        };
        assert_eq!(
            json_value, shown,
            "{} {:?}: JSON `{}` is {at}, the metric {shown:?}",
            m.name, m.label, m.json
        );
    }
}
