//! `$SYS/broker/...` topics: version, uptime, clients, messages, refreshed every `sys_interval` as retained
//! messages (wildcard subscribers do not see them unless they subscribe to `$SYS/#` explicitly).
use super::core::Broker;
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

    /// Publishes the current `$SYS` values once.
    pub async fn publish_sys(&self) {
        let s = self.stats();
        let values: [(&str, String); 12] = [
            (
                "version",
                format!("fieldbridge {}", env!("CARGO_PKG_VERSION")),
            ),
            ("uptime", format!("{} seconds", s.uptime_secs)),
            ("clients/connected", s.clients_connected.to_string()),
            ("clients/total", s.sessions.to_string()),
            ("messages/received", s.messages_received.to_string()),
            ("messages/sent", s.messages_sent.to_string()),
            (
                "messages/dropped",
                (s.dropped_queue_full + s.dropped_expired + s.dropped_too_large).to_string(),
            ),
            ("bytes/received", s.bytes_received.to_string()),
            ("bytes/sent", s.bytes_sent.to_string()),
            ("subscriptions/count", s.subscriptions.to_string()),
            ("retained messages/count", s.retained.to_string()),
            ("connections/refused", s.connections_refused.to_string()),
        ];
        for (topic, value) in values {
            let msg = Message::new(format!("$SYS/broker/{topic}"), value, QoS::AtMostOnce, true);
            self.route(std::sync::Arc::new(msg)).await;
        }
    }
}
