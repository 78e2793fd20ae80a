//! `$SYS/broker/...` topics: version, uptime, clients, messages, refreshed every `sys_interval` as retained
//! messages (wildcard subscribers do not see them unless they subscribe to `$SYS/#` explicitly).
use super::core::{Broker, METRICS};
use super::message::Message;
use crate::mqtt::QoS;

impl Broker {
    /// Starts the `$SYS` publisher (no-op when `sys_interval` is zero).
    pub fn start_sys(&self) {
        let interval = self.config().sys_interval;
        if interval.is_zero() {
            return;
        }
        let broker = self.clone();
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => broker.publish_sys().await,
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }

    /// Publishes the current `$SYS` values once: the version, the uptime, and the [`METRICS`] entries that
    /// name a `$SYS` topic (entries sharing a topic are summed).
    pub async fn publish_sys(&self) {
        let s = self.stats();
        let mut values: Vec<(&str, String)> = vec![
            (
                "version",
                format!("fieldbridge {}", env!("CARGO_PKG_VERSION")),
            ),
            ("uptime", format!("{} seconds", s.uptime_secs)),
        ];
        let mut sums: Vec<(&str, u64)> = Vec::new();
        for m in METRICS {
            let (Some(topic), Some(v)) = (m.sys, (m.value)(&s)) else {
                continue;
            };
            match sums.iter_mut().find(|(t, _)| *t == topic) {
                Some((_, sum)) => *sum += v as u64,
                None => sums.push((topic, v as u64)),
            }
        }
        values.extend(sums.into_iter().map(|(t, v)| (t, v.to_string())));
        for (topic, value) in values {
            let msg = Message::new(format!("$SYS/broker/{topic}"), value, QoS::AtMostOnce, true);
            self.route(std::sync::Arc::new(msg)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::core::{BrokerStats, METRICS};

    #[test]
    fn broker_table_agrees_with_its_json() {
        // Distinct values, so a metric reading the wrong field shows.
        let s = BrokerStats {
            uptime_secs: 1,
            clients_connected: 2,
            sessions: 3,
            subscriptions: 4,
            retained: 5,
            messages_received: 6,
            messages_sent: 7,
            bytes_received: 8,
            bytes_sent: 9,
            dropped_queue_full: 10,
            dropped_expired: 11,
            dropped_too_large: 12,
            denied_publishes: 13,
            denied_deliveries: 14,
            protocol_errors: 15,
            connections_refused: 16,
            slow_consumers_disconnected: 17,
            refused_topic_limits: 18,
            refused_subscriptions: 19,
            refused_retained: 20,
            refused_sessions: 21,
            packet_timeouts: 22,
            offline_queued_bytes: 23,
        };
        crate::metrics::assert_json_agrees(METRICS, &s);
        let sys: Vec<_> = METRICS.iter().filter_map(|m| m.sys).collect();
        assert_eq!(sys.iter().filter(|t| **t == "messages/dropped").count(), 3);
    }
}
