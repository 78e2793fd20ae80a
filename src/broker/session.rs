//! Session state: what survives a connection (subscriptions, queued and in-flight messages, QoS 2 receive
//! state). No I/O here: the connection task and publishers change it under its mutex.
//!
//! Queue policy: each session holds at most `max_queue` undelivered messages. When the queue is full, a QoS 0
//! message is dropped and counted; a QoS 1/2 message for a connected session makes the publisher wait for room
//! (back-pressure, so a fast publisher cannot make the broker lose QoS 1 traffic); for a disconnected session it
//! is dropped and counted. Nothing is dropped without a counter moving.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::codec::{LastWill, Protocol, QoS};
use super::message::Message;
use super::router::SubOptions;

/// One message waiting for, or in, delivery to a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The shared message.
    pub msg: Arc<Message>,
    /// Delivery QoS (min of published and granted).
    pub qos: QoS,
    /// Retain flag to send.
    pub retain: bool,
    /// Matching subscription identifiers.
    pub sub_ids: Vec<u32>,
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitComp,
}

/// An outgoing message that was sent and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet identifier used.
    pub pid: u16,
    /// The delivery.
    pub out: Outbound,
    /// Acknowledgement stage.
    pub stage: Stage,
}

/// Result of offering a message to a session's queue.
#[derive(Debug)]
pub enum Offer {
    /// Queued; the consumer was woken.
    Queued,
    /// Dropped (and counted): queue full for QoS 0 or an offline session.
    Dropped,
    /// Queue full and the session is online: wait for room and offer it again.
    Full(Outbound),
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionState {
    /// Protocol of the last connection.
    pub protocol: Protocol,
    /// Messages not yet sent.
    pub queue: VecDeque<Outbound>,
    /// Sent, waiting for acknowledgement, in send order.
    pub inflight: VecDeque<Inflight>,
    next_pid: u16,
    /// QoS 2 packet ids received from the client and not yet released.
    pub incoming_qos2: HashSet<u16>,
    /// Current subscriptions, filter -> options.
    pub subscriptions: HashMap<String, SubOptions>,
    /// Session expiry interval in seconds (u32::MAX: never).
    pub expiry_secs: u32,
    /// Queue cap.
    pub max_queue: usize,
    /// Messages dropped for this session.
    pub dropped: u64,
    /// Cancels the connection currently attached (takeover).
    pub conn_token: Option<CancellationToken>,
    /// Generation of the attached connection; bumps at every attach, so a stale detach is ignored.
    pub generation: u64,
    /// Cancels a pending delayed will or session expiry timer when the client comes back.
    pub timers: Option<CancellationToken>,
    /// Will to publish when the connection ends uncleanly.
    pub will: Option<LastWill>,
    /// The user of the connection that last attached (`None`: anonymous); the client id stays bound to it.
    pub owner: Option<Arc<str>>,
}

/// A session. Shared by the router (subscriptions point at it), the connection task and publishers.
#[derive(Debug)]
pub struct Session {
    /// Unique for the broker's lifetime (a new session for the same client id gets a new id).
    pub id: u64,
    /// Client identifier.
    pub client_id: Arc<str>,
    online: AtomicBool,
    /// The mutable state.
    pub state: Mutex<SessionState>,
    /// Woken when the queue gets a message.
    pub wake: Notify,
    /// Woken when the queue has room again (publishers waiting on a full queue). An `Arc` so a waiting
    /// connection can hold an owned, pre-enabled notification across its event loop.
    pub space: Arc<Notify>,
}

impl Session {
    /// A fresh session.
    pub fn new(id: u64, client_id: Arc<str>, protocol: Protocol, max_queue: usize) -> Arc<Session> {
        Arc::new(Session {
            id,
            client_id,
            online: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                protocol,
                queue: VecDeque::new(),
                inflight: VecDeque::new(),
                next_pid: 0,
                incoming_qos2: HashSet::new(),
                subscriptions: HashMap::new(),
                expiry_secs: 0,
                max_queue,
                dropped: 0,
                conn_token: None,
                generation: 0,
                timers: None,
                will: None,
                owner: None,
            }),
            wake: Notify::new(),
            space: Arc::new(Notify::new()),
        })
    }

    #[cfg(test)]
    pub(crate) fn new_for_test(id: u64, client_id: &str) -> Arc<Session> {
        Session::new(id, client_id.into(), Protocol::V5, 100)
    }

    /// Whether a connection (or an in-process link) is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Marks the session attached or detached.
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Offers a delivery. See the module doc for the policy.
    pub fn offer(&self, out: Outbound) -> Offer {
        let mut st = self.state.lock();
        if out.qos == QoS::AtMostOnce && !self.is_online() {
            // QoS 0 is not queued for disconnected sessions (as mosquitto's default): counted, not kept.
            st.dropped += 1;
            return Offer::Dropped;
        }
        if st.queue.len() < st.max_queue {
            st.queue.push_back(out);
            drop(st);
            self.wake.notify_one();
            return Offer::Queued;
        }
        if out.qos == QoS::AtMostOnce || !self.is_online() {
            st.dropped += 1;
            return Offer::Dropped;
        }
        if out.msg.origin == Some(self.id) {
            // The publisher is this session's own connection: it cannot wait for itself to drain the queue,
            // so its own messages may exceed the cap (bounded by its receive window).
            st.queue.push_back(out);
            drop(st);
            self.wake.notify_one();
            return Offer::Queued;
        }
        Offer::Full(out)
    }
}

impl SessionState {
    /// A packet identifier not used by any in-flight message.
    pub fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid == 0 {
                continue;
            }
            let pid = self.next_pid;
            if !self.inflight.iter().any(|i| i.pid == pid) {
                return pid;
            }
        }
    }

    /// Removes the in-flight message `pid` if it is at `stage`. Returns whether it was.
    pub fn complete(&mut self, pid: u16, stage: Stage) -> bool {
        match self
            .inflight
            .iter()
            .position(|i| i.pid == pid && i.stage == stage)
        {
            Some(idx) => {
                self.inflight.remove(idx);
                true
            }
            None => false,
        }
    }

    /// Moves QoS 2 message `pid` from waiting-for-PUBREC to waiting-for-PUBCOMP. Returns whether it was there.
    pub fn received(&mut self, pid: u16) -> bool {
        match self
            .inflight
            .iter_mut()
            .find(|i| i.pid == pid && i.stage == Stage::AwaitRec)
        {
            Some(i) => {
                i.stage = Stage::AwaitComp;
                true
            }
            None => self
                .inflight
                .iter()
                .any(|i| i.pid == pid && i.stage == Stage::AwaitComp),
        }
    }

    /// Forgets everything a clean start discards.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.inflight.clear();
        self.incoming_qos2.clear();
        self.subscriptions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(qos: QoS) -> Outbound {
        Outbound {
            msg: Arc::new(Message::new("t", "p", qos, false)),
            qos,
            retain: false,
            sub_ids: vec![],
        }
    }

    #[test]
    fn queue_policy() {
        let s = Session::new(1, "c".into(), Protocol::V5, 2);
        assert!(
            matches!(s.offer(out(QoS::AtMostOnce)), Offer::Dropped),
            "QoS 0 not queued offline"
        );
        assert!(matches!(s.offer(out(QoS::AtLeastOnce)), Offer::Queued));
        assert!(matches!(s.offer(out(QoS::AtLeastOnce)), Offer::Queued));
        // Offline: dropped and counted.
        assert!(matches!(s.offer(out(QoS::AtLeastOnce)), Offer::Dropped));
        s.set_online(true);
        assert!(matches!(s.offer(out(QoS::AtMostOnce)), Offer::Dropped));
        assert!(matches!(s.offer(out(QoS::AtLeastOnce)), Offer::Full(_)));
        assert_eq!(s.state.lock().dropped, 3);
    }

    #[test]
    fn pid_allocation_skips_in_use_and_zero() {
        let s = Session::new(1, "c".into(), Protocol::V5, 2);
        let mut st = s.state.lock();
        st.next_pid = u16::MAX - 1;
        let a = st.alloc_pid();
        assert_eq!(a, u16::MAX);
        st.inflight.push_back(Inflight {
            pid: 1,
            out: out(QoS::AtLeastOnce),
            stage: Stage::AwaitAck,
        });
        assert_eq!(st.alloc_pid(), 2, "0 and the in-use 1 are skipped");
        assert!(st.complete(1, Stage::AwaitAck));
        assert!(!st.complete(1, Stage::AwaitAck));
    }
}
