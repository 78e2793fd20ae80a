//! Session state: what survives a connection (subscriptions, queued and in-flight messages, QoS 2 receive
//! state). No I/O here: the connection task and publishers change it under its mutex.
//!
//! Queue policy: each session holds at most `max_queue` undelivered messages, and (connected) at most
//! `max_queue_bytes` of them (at least one message, whatever its size). When the queue of a connected
//! session is full, the publisher waits for room, whatever the QoS (back-pressure, so a subscriber that keeps up
//! on average receives all of a burst) — but only for a bounded time: the broker disconnects a subscriber that
//! makes no room within `max_publish_wait` (see `Broker::evict_slow`), and its session goes on offline. For a
//! disconnected session, QoS 0 is not queued and QoS 1/2 is queued up to the cap and the broker-wide offline
//! budget. Everything refused is counted.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::message::Message;
use super::router::SubOptions;
use crate::mqtt::{LastWill, Protocol, QoS};

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
    pub subscriptions: Subscriptions,
    /// Session expiry interval in seconds (u32::MAX: never).
    pub expiry_secs: u32,
    /// Queue cap.
    pub max_queue: usize,
    /// [`Outbound::cost`] of everything in `queue`: bounded while connected by the broker's `max_queued_bytes`
    /// ([`OfflineBudget::session_max`]); a message count alone let one subscriber that never reads pin
    /// `max_queue` large messages (10,000 x 1 MiB).
    pub queued_bytes: u64,
    /// Messages dropped for this session.
    pub dropped: u64,
    /// Generation of the attached connection; bumps at every attach, so a stale detach is ignored.
    pub generation: u64,
    /// Cancels a pending delayed will or session expiry timer when the client comes back.
    pub timers: Option<CancellationToken>,
    /// Will to publish when the connection ends uncleanly.
    /// Boxed: most sessions have none, and an inline one would make every session ~400 bytes larger.
    pub will: Option<Box<LastWill>>,
    /// Set by the broker when it disconnects this session's connection itself (generation, v5 reason code),
    /// so the connection can tell the client why.
    pub kicked: Option<(u64, u8)>,
    /// Bytes of queued messages charged to the broker-wide offline budget (see [`Session::offer`]).
    pub offline_bytes: u64,
    /// Whether this session is counted among the broker's offline sessions (`max_offline_sessions`).
    pub counted_offline: bool,
    /// Bumped by every change worth saving (subscriptions, queue, in-flight, expiry): the broker's state
    /// saver writes a session again only when this moved.
    pub version: u64,
    /// The user of the connection that last attached (`None`: anonymous); the client id stays bound to it.
    pub owner: Option<Arc<str>>,
}

/// A session's subscriptions, filter -> options: a short list while there are few (most clients hold one to
/// a handful; an empty hash map costs nothing but a map with one entry ~180 bytes, per connection), a map
/// beyond that so a client with thousands stays fast.
#[derive(Debug, Default)]
pub enum Subscriptions {
    Few(Vec<(String, SubOptions)>),
    Many(HashMap<String, SubOptions>),
    #[default]
    None,
}

/// Subscriptions kept in a list up to this many.
const FEW_SUBSCRIPTIONS: usize = 8;

impl Subscriptions {
    pub fn len(&self) -> usize {
        match self {
            Subscriptions::Few(v) => v.len(),
            Subscriptions::Many(m) => m.len(),
            Subscriptions::None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains_key(&self, filter: &str) -> bool {
        match self {
            Subscriptions::Few(v) => v.iter().any(|(f, _)| f == filter),
            Subscriptions::Many(m) => m.contains_key(filter),
            Subscriptions::None => false,
        }
    }

    /// Adds or replaces the subscription to `filter`.
    pub fn insert(&mut self, filter: String, opts: SubOptions) {
        match self {
            Subscriptions::None => *self = Subscriptions::Few(vec![(filter, opts)]),
            Subscriptions::Few(v) => {
                if let Some(e) = v.iter_mut().find(|(f, _)| *f == filter) {
                    e.1 = opts;
                } else if v.len() < FEW_SUBSCRIPTIONS {
                    v.push((filter, opts));
                } else {
                    let mut m: HashMap<String, SubOptions> = v.drain(..).collect();
                    m.insert(filter, opts);
                    *self = Subscriptions::Many(m);
                }
            }
            Subscriptions::Many(m) => {
                m.insert(filter, opts);
            }
        }
    }

    /// Removes the subscription to `filter`; its options if there was one.
    pub fn remove(&mut self, filter: &str) -> Option<SubOptions> {
        let removed = match self {
            Subscriptions::Few(v) => {
                let i = v.iter().position(|(f, _)| f == filter)?;
                Some(v.swap_remove(i).1)
            }
            Subscriptions::Many(m) => m.remove(filter),
            Subscriptions::None => None,
        };
        if self.is_empty() {
            *self = Subscriptions::None;
        }
        removed
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (&String, &SubOptions)> + '_> {
        match self {
            Subscriptions::Few(v) => Box::new(v.iter().map(|(f, o)| (f, o))),
            Subscriptions::Many(m) => Box::new(m.iter()),
            Subscriptions::None => Box::new(std::iter::empty()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.iter().map(|(f, _)| f)
    }

    pub fn clear(&mut self) {
        *self = Subscriptions::None;
    }
}

impl<'a> IntoIterator for &'a Subscriptions {
    type Item = (&'a String, &'a SubOptions);
    type IntoIter = Box<dyn Iterator<Item = (&'a String, &'a SubOptions)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
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
    /// Woken when the queue gets a message (`notify_one`), and for everything else the connection must look
    /// at (`notify_waiters`): a takeover or a kick (`live` changed), the broker's shutdown, an expired
    /// keepalive. One wait for all of them keeps an idle connection's task small.
    pub wake: Notify,
    /// The generation of the connection allowed to run on this session (0: none). A connection whose
    /// generation differs ends (taken over, kicked, session discarded).
    pub live: AtomicU64,
    /// When the attached connection's keepalive runs out, in milliseconds since the broker started (0: no
    /// keepalive); the broker's sweeper wakes the connection once it passed.
    pub keepalive_deadline: AtomicU64,
    /// Woken when the queue has room again (publishers waiting on a full queue). An `Arc` so a waiting
    /// connection can hold an owned, pre-enabled notification across its event loop; created by the first
    /// publisher that has to wait (most sessions never fill up). See [`Session::space_waiter`].
    space: std::sync::OnceLock<Arc<Notify>>,
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
                subscriptions: Subscriptions::default(),
                expiry_secs: 0,
                max_queue,
                queued_bytes: 0,
                dropped: 0,
                generation: 0,
                timers: None,
                will: None,
                kicked: None,
                offline_bytes: 0,
                counted_offline: false,
                version: 0,
                owner: None,
            }),
            wake: Notify::new(),
            live: AtomicU64::new(0),
            keepalive_deadline: AtomicU64::new(0),
            space: std::sync::OnceLock::new(),
        })
    }

    #[cfg(test)]
    pub(crate) fn new_for_test(id: u64, client_id: &str) -> Arc<Session> {
        Session::new(id, client_id.into(), Protocol::V5, 100)
    }

    /// Whether a connection (or an in-process link) is attached.
    /// The user bound to this session (the last to attach) and its client id, for ACL rules.
    pub fn who(&self) -> super::auth::Who {
        (self.state.lock().owner.clone(), self.client_id.clone())
    }

    /// The notification a publisher waits on for room in this session's queue (enable it, then offer again).
    pub fn space_waiter(&self) -> Arc<Notify> {
        self.space.get_or_init(|| Arc::new(Notify::new())).clone()
    }

    /// Wakes the publishers waiting for room in this session's queue.
    pub fn notify_space(&self) {
        if let Some(n) = self.space.get() {
            n.notify_waiters();
        }
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Marks the session attached or detached.
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Offers a delivery. See the module doc for the policy. `offline_budget` is the broker-wide budget of
    /// bytes queued for offline sessions: a message queued while offline is charged to it (and to
    /// `offline_bytes`), and refused when the budget is spent.
    pub fn offer(&self, out: Outbound, offline_budget: &OfflineBudget) -> Offer {
        let mut st = self.state.lock();
        let online = self.is_online();
        if !online {
            if out.qos == QoS::AtMostOnce || st.queue.len() >= st.max_queue {
                // QoS 0 is not queued for disconnected sessions (as mosquitto's default): counted, not kept.
                st.dropped += 1;
                return Offer::Dropped;
            }
            let cost = out.cost();
            if !offline_budget.charge(cost) {
                st.dropped += 1;
                return Offer::Dropped;
            }
            st.offline_bytes += cost;
            st.push_queued(out);
            st.version += 1;
            return Offer::Queued;
        }
        let own = out.msg.origin == Some(self.id);
        let cost = out.cost();
        let max_bytes = offline_budget.session_max();
        // At least one message always fits, so a message larger than the byte cap still goes through.
        let room = st.queue.len() < st.max_queue
            && (st.queue.is_empty() || st.queued_bytes + cost <= max_bytes);
        if own
            && (st.queue.len() >= 2 * st.max_queue
                || st.queued_bytes + cost > 2 * max_bytes.max(cost))
        {
            // Its own connection cannot wait for itself, and a client that never acknowledges could grow the
            // queue without end: past twice the cap its own messages are dropped, counted.
            st.dropped += 1;
            return Offer::Dropped;
        }
        if room || own {
            // A session's own publishes may exceed the cap (up to twice it): its connection cannot wait for
            // itself to drain the queue.
            if out.qos != QoS::AtMostOnce {
                st.version += 1;
            }
            st.push_queued(out);
            drop(st);
            self.wake.notify_one();
            return Offer::Queued;
        }
        Offer::Full(out)
    }

    /// Gives back what the queue was charged to the offline budget, when the client comes back (its queue is
    /// then bounded by back-pressure) or the session is discarded.
    pub fn release_offline(&self, st: &mut SessionState, offline_budget: &OfflineBudget) {
        if st.offline_bytes > 0 {
            offline_budget.release(st.offline_bytes);
            st.offline_bytes = 0;
        }
    }
}

/// The broker-wide budget of bytes queued for offline sessions.
#[derive(Debug)]
pub struct OfflineBudget {
    used: std::sync::atomic::AtomicU64,
    max: std::sync::atomic::AtomicU64,
    session_max: std::sync::atomic::AtomicU64,
}

impl OfflineBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> OfflineBudget {
        OfflineBudget {
            used: std::sync::atomic::AtomicU64::new(0),
            max: std::sync::atomic::AtomicU64::new(max),
            session_max: std::sync::atomic::AtomicU64::new(DEFAULT_MAX_QUEUE_BYTES),
        }
    }

    /// Sets the cap on one connected session's queued bytes (`max_queued_bytes`; kept here, beside the
    /// offline budget every offer already consults, rather than in each session).
    pub fn set_session_max(&self, max: u64) {
        self.session_max.store(max, Ordering::Relaxed);
    }

    /// The cap on one connected session's queued bytes.
    pub fn session_max(&self) -> u64 {
        self.session_max.load(Ordering::Relaxed)
    }

    /// Changes the cap (reload); what is already charged stays.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, cost: u64) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + cost <= max).then_some(u + cost)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

impl Outbound {
    /// What queueing this delivery costs: the entry plus the message's topic and payload (charged to every
    /// session it is queued for, though they share it: a bound, not an exact count).
    pub fn cost(&self) -> u64 {
        (std::mem::size_of::<Outbound>() + self.msg.topic.len() + self.msg.payload.len()) as u64
    }
}

/// `max_queued_bytes` when no configuration says otherwise.
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 16 << 20;

impl SessionState {
    /// Appends to the queue, counting its bytes.
    pub fn push_queued(&mut self, out: Outbound) {
        self.queued_bytes += out.cost();
        self.queue.push_back(out);
    }

    /// Takes the oldest queued message, counting its bytes out.
    pub fn pop_queued(&mut self) -> Option<Outbound> {
        let out = self.queue.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(out.cost());
        Some(out)
    }

    /// Replaces the queue (a restored session), counting its bytes.
    pub fn set_queue(&mut self, queue: VecDeque<Outbound>) {
        self.queued_bytes = queue.iter().map(Outbound::cost).sum();
        self.queue = queue;
    }

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
                self.version += 1;
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
                self.version += 1;
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
        self.version += 1;
        self.queue.clear();
        self.queued_bytes = 0;
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
        let budget = OfflineBudget::new(u64::MAX);
        let s = Session::new(1, "c".into(), Protocol::V5, 2);
        assert!(
            matches!(s.offer(out(QoS::AtMostOnce), &budget), Offer::Dropped),
            "QoS 0 not queued offline"
        );
        assert!(matches!(
            s.offer(out(QoS::AtLeastOnce), &budget),
            Offer::Queued
        ));
        assert!(matches!(
            s.offer(out(QoS::AtLeastOnce), &budget),
            Offer::Queued
        ));
        // Offline: dropped and counted.
        assert!(matches!(
            s.offer(out(QoS::AtLeastOnce), &budget),
            Offer::Dropped
        ));
        s.set_online(true);
        // Online: both QoS wait for room (bounded by the broker's max_publish_wait).
        assert!(matches!(
            s.offer(out(QoS::AtMostOnce), &budget),
            Offer::Full(_)
        ));
        assert!(matches!(
            s.offer(out(QoS::AtLeastOnce), &budget),
            Offer::Full(_)
        ));
        assert_eq!(s.state.lock().dropped, 2);
        assert_eq!(budget.used(), 2 * out(QoS::AtLeastOnce).cost());
    }

    #[test]
    fn own_messages_may_exceed_the_cap_but_not_without_end() {
        let budget = OfflineBudget::new(u64::MAX);
        let s = Session::new(7, "self".into(), Protocol::V5, 2);
        s.set_online(true);
        let own = |qos| {
            let mut m = Message::new("t", "p", qos, false);
            m.origin = Some(7);
            Outbound {
                msg: Arc::new(m),
                qos,
                retain: false,
                sub_ids: vec![],
            }
        };
        for _ in 0..4 {
            assert!(matches!(
                s.offer(own(QoS::AtLeastOnce), &budget),
                Offer::Queued
            ));
        }
        assert!(matches!(
            s.offer(own(QoS::AtLeastOnce), &budget),
            Offer::Dropped
        ));
        assert!(matches!(
            s.offer(own(QoS::AtMostOnce), &budget),
            Offer::Dropped
        ));
        assert_eq!(s.state.lock().queue.len(), 4);
    }

    #[test]
    fn offline_budget_is_shared_and_released() {
        let one = out(QoS::AtLeastOnce).cost();
        let budget = OfflineBudget::new(3 * one);
        let a = Session::new(1, "a".into(), Protocol::V5, 100);
        let b = Session::new(2, "b".into(), Protocol::V5, 100);
        assert!(matches!(
            a.offer(out(QoS::AtLeastOnce), &budget),
            Offer::Queued
        ));
        assert!(matches!(
            a.offer(out(QoS::AtLeastOnce), &budget),
            Offer::Queued
        ));
        assert!(matches!(
            b.offer(out(QoS::AtLeastOnce), &budget),
            Offer::Queued
        ));
        assert!(
            matches!(b.offer(out(QoS::AtLeastOnce), &budget), Offer::Dropped),
            "budget spent across sessions"
        );
        let mut st = a.state.lock();
        st.set_queue(VecDeque::new());
        a.release_offline(&mut st, &budget);
        drop(st);
        assert_eq!(budget.used(), one);
        assert!(matches!(
            b.offer(out(QoS::AtLeastOnce), &budget),
            Offer::Queued
        ));
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
