//! The broker's internal message: what a publish becomes once accepted, shared by every subscriber it reaches.
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::mqtt::{Properties, Publish, QoS};

/// An accepted application message. Shared (`Arc`) between every session queue it is routed to, so fan-out
/// copies a pointer, not the payload.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name (never empty: aliases are resolved before a message is built).
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Properties passed through to subscribers (payload format, content type, response topic, correlation
    /// data, user properties). Topic alias and subscription identifiers are per delivery and never kept here.
    pub properties: Properties,
    /// When the message expires (from the v5 Message Expiry Interval), if it does.
    pub expires_at: Option<Instant>,
    /// The session that published it (for no-local); `None` for in-process publishes without a session.
    pub origin: Option<u64>,
}

impl Message {
    /// A message with no properties, as the in-process link and the pipeline build them.
    pub fn new(
        topic: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: Properties::default(),
            expires_at: None,
            origin: None,
        }
    }

    /// Builds a message from a client's PUBLISH whose topic (or alias) has been resolved to `topic`.
    pub(crate) fn from_publish(p: Publish, topic: Arc<str>, origin: Option<u64>) -> Self {
        let mut properties = p.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            origin,
        }
    }

    /// Whether the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The remaining expiry interval to put on the wire (rounded up, at least 1 s while not expired).
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            secs.clamp(1, u64::from(u32::MAX)) as u32
        })
    }
}
