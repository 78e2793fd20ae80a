//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4), written by hand: a few dozen
//! families rendered from one [`Snapshot`] do not justify a metrics framework.
//!
//! Names follow Prometheus conventions: `fieldbridge_` prefix, `_total` on counters, base units (bytes,
//! seconds). Counters restart from zero with the daemon (the store's drop counters too: they count since the
//! store was opened).
use std::fmt::Write as _;

use super::snapshot::Snapshot;

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

/// Renders the metrics page.
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

    // Broker.
    let b = &s.broker;
    p.single(
        "fieldbridge_broker_clients_connected",
        "gauge",
        "MQTT connections open.",
        b.clients_connected as f64,
    );
    p.single(
        "fieldbridge_broker_sessions",
        "gauge",
        "MQTT sessions known (connected or persisted).",
        b.sessions as f64,
    );
    p.single(
        "fieldbridge_broker_subscriptions",
        "gauge",
        "Subscriptions in the topic tree.",
        b.subscriptions as f64,
    );
    p.single(
        "fieldbridge_broker_retained_messages",
        "gauge",
        "Retained messages held by the broker.",
        b.retained as f64,
    );
    for (name, help, v) in [
        (
            "fieldbridge_broker_messages_received_total",
            "PUBLISH packets received (clients and the daemon itself).",
            b.messages_received,
        ),
        (
            "fieldbridge_broker_messages_sent_total",
            "PUBLISH packets sent to clients.",
            b.messages_sent,
        ),
        (
            "fieldbridge_broker_received_bytes_total",
            "Bytes read from client connections.",
            b.bytes_received,
        ),
        (
            "fieldbridge_broker_sent_bytes_total",
            "Bytes written to client connections.",
            b.bytes_sent,
        ),
        (
            "fieldbridge_broker_publishes_denied_total",
            "Publishes refused by the ACL.",
            b.denied_publishes,
        ),
        (
            "fieldbridge_broker_deliveries_denied_total",
            "Deliveries withheld because the receiver may not read the topic (ACL).",
            b.denied_deliveries,
        ),
        (
            "fieldbridge_broker_protocol_errors_total",
            "Connections closed for a protocol violation.",
            b.protocol_errors,
        ),
        (
            "fieldbridge_broker_connections_refused_total",
            "CONNECTs refused (credentials, limits).",
            b.connections_refused,
        ),
        (
            "fieldbridge_broker_slow_consumers_disconnected_total",
            "Subscribers disconnected for making no room in their queue within max_publish_wait.",
            b.slow_consumers_disconnected,
        ),
        (
            "fieldbridge_broker_packet_timeouts_total",
            "Connections closed because a packet did not complete within packet_timeout.",
            b.packet_timeouts,
        ),
    ] {
        p.single(name, "counter", help, v as f64);
    }
    p.family(
        "fieldbridge_broker_limit_refusals_total",
        "counter",
        "Requests refused by a broker limit, by limit.",
    );
    for (limit, v) in [
        ("topic", b.refused_topic_limits),
        ("subscriptions", b.refused_subscriptions),
        ("retained", b.refused_retained),
        ("offline_sessions", b.refused_sessions),
    ] {
        p.sample(
            "fieldbridge_broker_limit_refusals_total",
            &[("limit", limit)],
            v as f64,
        );
    }
    p.single(
        "fieldbridge_broker_offline_queued_bytes",
        "gauge",
        "Bytes queued for offline sessions (charged to max_offline_queued_bytes).",
        b.offline_queued_bytes as f64,
    );
    p.family(
        "fieldbridge_broker_messages_dropped_total",
        "counter",
        "Messages the broker could not deliver to a subscriber, by reason.",
    );
    for (reason, v) in [
        ("queue_full", b.dropped_queue_full),
        ("expired", b.dropped_expired),
        ("too_large", b.dropped_too_large),
    ] {
        p.sample(
            "fieldbridge_broker_messages_dropped_total",
            &[("reason", reason)],
            v as f64,
        );
    }

    // Store.
    let st = &s.store;
    p.single(
        "fieldbridge_store_disk_bytes",
        "gauge",
        "Bytes of the log on disk (database file plus WAL), as measured after the latest commit.",
        st.bytes_on_disk as f64,
    );
    p.single(
        "fieldbridge_store_used_bytes",
        "gauge",
        "Bytes of the log in use (disk bytes minus reusable free pages); compared with the cap.",
        st.bytes_used as f64,
    );
    p.single(
        "fieldbridge_store_max_bytes",
        "gauge",
        "The configured cap of the log (storage.max_bytes).",
        st.max_bytes as f64,
    );
    p.single(
        "fieldbridge_store_rows",
        "gauge",
        "Rows in the log.",
        st.rows as f64,
    );
    p.single(
        "fieldbridge_store_head_seq",
        "gauge",
        "Last sequence number committed.",
        st.head_seq as f64,
    );
    p.single(
        "fieldbridge_store_queue_depth",
        "gauge",
        "Rows waiting in the writer's queue.",
        st.queue_depth as f64,
    );
    p.single(
        "fieldbridge_store_commits_total",
        "counter",
        "Transactions committed with rows.",
        st.commits as f64,
    );
    p.single(
        "fieldbridge_store_rows_committed_total",
        "counter",
        "Rows committed.",
        st.rows_committed as f64,
    );
    if let Some(ts) = st.oldest_ts.as_deref().and_then(rfc3339_secs) {
        p.single(
            "fieldbridge_store_oldest_timestamp_seconds",
            "gauge",
            "Unix time of the oldest row in the log.",
            ts,
        );
    }
    p.family(
        "fieldbridge_store_dropped_total",
        "counter",
        "Messages lost by the log, by reason (oldest: evicted undelivered; newest: refused when full; \
         write_failed: could not be written).",
    );
    for (reason, v) in [
        ("oldest", st.dropped.oldest),
        ("newest", st.dropped.newest),
        ("write_failed", st.dropped.write_failed),
    ] {
        p.sample(
            "fieldbridge_store_dropped_total",
            &[("reason", reason)],
            v as f64,
        );
    }
    p.family(
        "fieldbridge_store_removed_total",
        "counter",
        "Delivered rows removed by retention, by reason.",
    );
    p.sample(
        "fieldbridge_store_removed_total",
        &[("reason", "age")],
        st.removed_by_age as f64,
    );
    p.sample(
        "fieldbridge_store_removed_total",
        &[("reason", "space")],
        st.removed_for_space as f64,
    );
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

    // Bridges.
    p.family(
        "fieldbridge_bridge_lag_rows",
        "gauge",
        "Rows logged but not yet acknowledged by the bridge's upstream.",
    );
    for br in &s.bridges {
        p.sample(
            "fieldbridge_bridge_lag_rows",
            &[("bridge", &br.name)],
            br.lag_rows as f64,
        );
    }
    p.family(
        "fieldbridge_bridge_lag_seconds",
        "gauge",
        "Age of the oldest row not yet acknowledged upstream.",
    );
    for br in &s.bridges {
        if let Some(l) = br.lag_seconds {
            p.sample("fieldbridge_bridge_lag_seconds", &[("bridge", &br.name)], l);
        }
    }
    p.family(
        "fieldbridge_bridge_drain_messages_per_second",
        "gauge",
        "Messages acknowledged upstream per second, recently.",
    );
    for br in &s.bridges {
        if let Some(r) = br.drain_rate {
            p.sample(
                "fieldbridge_bridge_drain_messages_per_second",
                &[("bridge", &br.name)],
                r,
            );
        }
    }
    p.family(
        "fieldbridge_bridge_lost_rows_total",
        "counter",
        "Rows evicted by drop_oldest before the bridge delivered them.",
    );
    for br in &s.bridges {
        p.sample(
            "fieldbridge_bridge_lost_rows_total",
            &[("bridge", &br.name)],
            br.lost_rows as f64,
        );
    }
    for (name, help, get) in [
        (
            "fieldbridge_bridge_delivered_total",
            "Rows delivered upstream (acknowledged) since the bridge started.",
            (|b| b.delivered) as fn(&super::BridgeView) -> u64,
        ),
        (
            "fieldbridge_bridge_resent_total",
            "PUBLISH packets sent again after reconnects.",
            |b| b.resent,
        ),
        (
            "fieldbridge_bridge_refused_total",
            "Messages the upstream refused with an error reason code.",
            |b| b.refused,
        ),
        (
            "fieldbridge_bridge_skipped_total",
            "Rows not sent (expired, or too large for the upstream).",
            |b| b.skipped,
        ),
        (
            "fieldbridge_bridge_connects_total",
            "Successful upstream connections since the bridge started.",
            |b| b.connects,
        ),
    ] {
        p.family(name, "counter", help);
        for br in &s.bridges {
            p.sample(name, &[("bridge", &br.name)], get(br) as f64);
        }
    }
    p.family(
        "fieldbridge_bridge_inflight_messages",
        "gauge",
        "Messages sent upstream and awaiting their acknowledgement.",
    );
    for br in &s.bridges {
        p.sample(
            "fieldbridge_bridge_inflight_messages",
            &[("bridge", &br.name)],
            br.inflight as f64,
        );
    }
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

    // Devices.
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

    // Pipeline.
    let pl = &s.pipeline;
    for (name, help, v) in [
        (
            "fieldbridge_pipeline_readings_total",
            "Readings received from adapters.",
            pl.readings,
        ),
        (
            "fieldbridge_pipeline_published_total",
            "Readings published to the broker.",
            pl.published,
        ),
        (
            "fieldbridge_pipeline_suppressed_total",
            "Readings not published by on-change or deadband rules.",
            pl.suppressed,
        ),
        (
            "fieldbridge_pipeline_unknown_total",
            "Readings for devices or points that are not configured.",
            pl.unknown,
        ),
        (
            "fieldbridge_pipeline_commands_total",
            "Write requests handled.",
            pl.commands,
        ),
    ] {
        p.single(name, "counter", help, v as f64);
    }
    p.out
}

fn rfc3339_secs(s: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
