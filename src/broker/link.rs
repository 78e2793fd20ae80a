//! The in-process link: publish and subscribe from inside the daemon without TCP. A link is a session whose
//! consumer is a Rust task instead of a socket, so it follows the same routing, retained and queue rules as any
//! client, at the cost of a queue push.
use std::sync::Arc;

use super::core::{Broker, Metrics};
use super::message::Message;
use super::router::SubOptions;
use super::session::Session;
use crate::mqtt::{QoS, RetainHandling};

/// An in-process client of the broker. Dropping it removes its session and subscriptions.
#[derive(Debug)]
pub struct Link {
    broker: Broker,
    session: Arc<Session>,
}

/// A message received on a link.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message as published.
    pub msg: Arc<Message>,
    /// Delivery QoS (the lower of published and subscribed).
    pub qos: QoS,
    /// Retain flag as it would be sent to a client (true for retained messages sent at subscribe).
    pub retain: bool,
}

/// A subscription filter the broker refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic filter `{0}`")]
pub struct InvalidFilter(pub String);

impl Broker {
    /// Opens an in-process link. `name` is its client id (prefixed with `$link/` so it cannot clash with a
    /// network client).
    pub fn link(&self, name: &str) -> Link {
        let client_id: Arc<str> = format!("$link/{name}/{}", self.new_session_id()).into();
        let session = Session::new(
            self.new_session_id(),
            client_id,
            crate::mqtt::Protocol::V5,
            self.config().max_queued_messages,
        );
        session.set_online(true);
        Link {
            broker: self.clone(),
            session,
        }
    }
}

impl Link {
    /// Publishes a message; this link's own no-local subscriptions do not receive it.
    pub async fn publish(&self, mut msg: Message) {
        msg.origin = Some(self.session.id);
        Metrics::inc(&self.broker.inner.metrics.messages_received);
        self.broker.route(Arc::new(msg)).await;
    }

    /// Subscribes; retained messages matching the filter are queued at once.
    pub fn subscribe(&self, filter: &str, qos: QoS) -> Result<(), InvalidFilter> {
        self.subscribe_with(filter, qos, false)
    }

    /// Subscribes, optionally with no-local (the link does not receive its own publishes).
    pub fn subscribe_with(
        &self,
        filter: &str,
        qos: QoS,
        no_local: bool,
    ) -> Result<(), InvalidFilter> {
        if !crate::mqtt::valid_topic_filter(filter) {
            return Err(InvalidFilter(filter.to_string()));
        }
        let opts = SubOptions {
            qos,
            no_local,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
            id: None,
        };
        self.broker
            .inner
            .router
            .write()
            .subscribe(&self.session, filter, opts.clone());
        self.session
            .state
            .lock()
            .subscriptions
            .insert(filter.to_string(), opts);
        let plain = super::router::parse_filter(filter);
        if plain.group.is_none() {
            self.broker
                .queue_retained(&self.session, plain.filter, qos, None);
        }
        Ok(())
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str) -> bool {
        self.session.state.lock().subscriptions.remove(filter);
        self.broker
            .inner
            .router
            .write()
            .unsubscribe(self.session.id, filter)
    }

    /// The next message, waiting for one.
    pub async fn recv(&self) -> Received {
        loop {
            if let Some(r) = self.try_recv() {
                return r;
            }
            self.session.wake.notified().await;
        }
    }

    /// The next message if one is queued.
    pub fn try_recv(&self) -> Option<Received> {
        let out = self.session.state.lock().pop_queued()?;
        self.session.notify_space();
        Metrics::inc(&self.broker.inner.metrics.messages_sent);
        Some(Received {
            msg: out.msg,
            qos: out.qos,
            retain: out.retain,
        })
    }

    /// Messages dropped for this link because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.session.state.lock().dropped
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.broker.remove_session(&self.session);
    }
}
