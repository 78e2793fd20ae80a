//! The in-flight window: which forwarded rows are on the wire, their packet identifiers, and the contiguous
//! delivered point (the cursor). Pure state, no I/O: the session feeds it acks and connection events and
//! asks it what to encode, so every rule below is unit-tested without a socket.
//!
//! - Every forwarded row taken from the log becomes an [`Entry`] at the back of the queue, in log order, and
//!   stays there until it is complete: PUBACK (QoS 1), PUBCOMP (QoS 2), or — QoS 0 — its bytes were handed to
//!   the socket. Rows that match no forward rule are never queued; `consumed` records that the cursor may
//!   pass them.
//! - The queue never holds more than `limit` entries (the window: min(configured, upstream Receive
//!   Maximum)). QoS 0 entries count too, which keeps memory and the resend set bounded whatever the mix.
//! - The cursor is the highest seq with every earlier forwarded row complete: `front.seq - 1`, or `consumed`
//!   when the queue is empty. Acks out of order only mark entries; the cursor moves when the front completes.
//! - A packet identifier is ours to choose: an entry keeps its identifier until it completes, across
//!   reconnects (MQTT requires the original identifier when the session resumes).
//! - After a reconnect every incomplete entry is sent again, in order, before any new row: PUBLISH with DUP
//!   set, or PUBREL for a QoS 2 entry whose PUBREC arrived when the upstream kept our session. The
//!   duplicates a subscriber can see are therefore at most the window.
use std::collections::VecDeque;

use ahash::AHashMap as HashMap;

use bytes::BytesMut;

use crate::mqtt::{self, reason::QUOTA_EXCEEDED, Packet, Protocol, PubResp, Publish, QoS};

/// Where an entry is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// QoS 1/2 PUBLISH written (in this or an earlier connection), no PUBACK/PUBREC yet.
    Sent,
    /// QoS 2: PUBREC received, PUBREL written, no PUBCOMP yet.
    Released,
    /// QoS 0: encoded into the write buffer; complete once the buffer reached the socket.
    Written,
    /// Complete; waiting to be popped (an entry behind an incomplete one).
    Done,
}

/// One forwarded row on its way upstream.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub seq: u64,
    pub publish: Publish,
    pub state: State,
    /// Written on the current connection and counted in `outstanding`.
    on_wire: bool,
}

/// What an acknowledgement meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acked {
    /// The entry is complete (delivered).
    Delivered,
    /// The upstream refused the message (reason code >= 0x80): it will never be accepted, so it is
    /// completed anyway and counted, or the bridge would stall on it forever.
    Refused(u8),
    /// QoS 2 half-way: PUBREC accepted, PUBREL queued.
    Released,
    /// The upstream's in-flight quota was exceeded (0x97): the entry stays incomplete and is sent again on
    /// the next connection, which should use a smaller window.
    Quota,
    /// Not one of ours (a stale or control identifier).
    Unknown,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Window {
    q: VecDeque<Entry>,
    /// First index not yet (re)sent on the current connection.
    next: usize,
    /// QoS 1/2 entries written on the current connection and not complete.
    outstanding: usize,
    limit: usize,
    /// The upstream's Receive Maximum: QoS 1/2 PUBLISH packets in flight, rows and control messages (birth,
    /// `offline`) together.
    quota: usize,
    pids: HashMap<u16, u64>,
    /// Control packet identifiers in use, and whether each is a QoS 1 PUBLISH (counted in `quota`).
    control: Vec<(u16, bool)>,
    last_pid: u16,
    consumed: u64,
    written_qos0: u64,
    flushed: u64,
    cursor: u64,
    session_present: bool,
    /// Rows delivered (acked, or QoS 0 written).
    pub delivered: u64,
    /// PUBLISH packets sent again after a reconnect.
    pub resent: u64,
    /// Messages the upstream refused with an error reason code.
    pub refused: u64,
}

/// Largest window: packet identifiers are 16 bits, and a few are kept for control packets (birth,
/// SUBSCRIBE, the offline message).
pub(crate) const MAX_WINDOW: usize = 65_000;

impl Window {
    /// An empty window whose rows up to `cursor` are delivered.
    pub(crate) fn new(cursor: u64) -> Window {
        Window {
            q: VecDeque::new(),
            next: 0,
            outstanding: 0,
            limit: 1,
            quota: usize::MAX,
            pids: HashMap::new(),
            control: Vec::new(),
            last_pid: 0,
            consumed: cursor,
            written_qos0: cursor,
            flushed: cursor,
            cursor,
            session_present: false,
            delivered: 0,
            resent: 0,
            refused: 0,
        }
    }

    /// A new connection: `limit` is its window, `quota` the upstream's Receive Maximum (QoS 1/2 PUBLISH
    /// packets in flight, control messages included), `session_present` from CONNACK. Whatever was written
    /// on the previous connection and not complete is sent again by [`Window::resend`].
    ///
    /// When the upstream kept the session, PUBREL goes out at once (into `out`) for every QoS 2 entry whose
    /// PUBREC came: those exchanges hold the upstream's in-flight quota until released, and a broker that
    /// counts them (mosquitto) refuses anything new before.
    pub(crate) fn reconnect(
        &mut self,
        limit: usize,
        quota: usize,
        session_present: bool,
        protocol: Protocol,
        out: &mut BytesMut,
    ) {
        self.limit = limit.clamp(1, MAX_WINDOW);
        self.quota = quota.max(1);
        self.session_present = session_present;
        self.next = 0;
        self.outstanding = 0;
        self.control.clear();
        for e in self.q.iter_mut() {
            e.on_wire = false;
            if session_present && e.state == State::Released {
                let rel = Packet::PubRel(PubResp {
                    packet_id: e.publish.packet_id,
                    reason_code: 0,
                    properties: Default::default(),
                });
                mqtt::encode(&rel, protocol, out);
                e.on_wire = true;
                self.outstanding += 1;
            }
        }
        self.advance();
    }

    /// The cursor: every forwarded row up to it is complete.
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Entries in the window.
    pub(crate) fn len(&self) -> usize {
        self.q.len()
    }

    /// QoS 1/2 packets awaiting their ack on this connection.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a new row may be taken: the resends of this connection are done and the window has room.
    pub(crate) fn room(&self) -> bool {
        self.free() > 0
    }

    /// How many new rows the window could take now (0 while resends of this connection are pending).
    pub(crate) fn free(&self) -> usize {
        if self.next != self.q.len() {
            return 0;
        }
        self.limit
            .saturating_sub(self.q.len())
            .min(self.quota_left())
    }

    /// Whether one more QoS 1/2 PUBLISH may go out under the upstream's Receive Maximum.
    pub(crate) fn quota_free(&self) -> bool {
        self.quota_left() > 0
    }

    /// QoS 1/2 packets that may still go out under the upstream's Receive Maximum.
    fn quota_left(&self) -> usize {
        let controls = self.control.iter().filter(|c| c.1).count();
        self.quota.saturating_sub(self.outstanding + controls)
    }

    /// Every row up to `seq` has been taken from the log (rows matching no rule, or dropped, included).
    pub(crate) fn consumed(&mut self, seq: u64) {
        self.consumed = self.consumed.max(seq);
        if self.q.is_empty() {
            self.cursor = self.cursor.max(self.consumed);
        }
    }

    /// Takes a new row: gives it a packet identifier (QoS 1/2), encodes it into `out`. Call only when
    /// [`Window::room`].
    pub(crate) fn push(
        &mut self,
        seq: u64,
        mut publish: Publish,
        protocol: Protocol,
        out: &mut BytesMut,
    ) {
        debug_assert!(self.room());
        publish.dup = false;
        let state = if publish.qos == QoS::AtMostOnce {
            publish.packet_id = 0;
            self.written_qos0 = self.written_qos0.max(seq);
            State::Written
        } else {
            let pid = self.alloc_pid();
            publish.packet_id = pid;
            self.pids.insert(pid, seq);
            self.outstanding += 1;
            State::Sent
        };
        let on_wire = state == State::Sent;
        mqtt::encode_publish(&publish, protocol, out);
        self.q.push_back(Entry {
            seq,
            publish,
            state,
            on_wire,
        });
        self.next = self.q.len();
        self.consumed = self.consumed.max(seq);
    }

    /// Encodes what must be sent again on this connection, in order, as far as the window allows and until
    /// `out` holds `max_bytes`. Returns the number of packets written.
    pub(crate) fn resend(
        &mut self,
        protocol: Protocol,
        out: &mut BytesMut,
        max_bytes: usize,
    ) -> usize {
        let mut n = 0;
        // Control messages in flight hold slots of the Receive Maximum too.
        let controls = self.control.iter().filter(|c| c.1).count();
        while self.next < self.q.len() && out.len() < max_bytes {
            let flushed = self.flushed;
            let e = &mut self.q[self.next];
            match e.state {
                State::Done => {}
                State::Written if e.seq <= flushed => e.state = State::Done,
                State::Written => {
                    mqtt::encode_publish(&e.publish, protocol, out);
                    n += 1;
                }
                State::Sent => {
                    if self.outstanding >= self.limit || self.outstanding + controls >= self.quota {
                        break;
                    }
                    e.publish.dup = true;
                    mqtt::encode_publish(&e.publish, protocol, out);
                    e.on_wire = true;
                    self.outstanding += 1;
                    self.resent += 1;
                    n += 1;
                }
                // PUBREL already went out at reconnect.
                State::Released if e.on_wire => {}
                State::Released => {
                    if self.outstanding >= self.limit || self.outstanding + controls >= self.quota {
                        break;
                    }
                    // The upstream forgot the exchange: the message may never have been passed on, so it is
                    // published again (at least once beats exactly once here).
                    e.state = State::Sent;
                    e.publish.dup = true;
                    mqtt::encode_publish(&e.publish, protocol, out);
                    e.on_wire = true;
                    self.resent += 1;
                    self.outstanding += 1;
                    n += 1;
                }
            }
            self.next += 1;
        }
        self.advance();
        n
    }

    /// Everything encoded so far has reached the socket (the write buffer drained): QoS 0 entries complete.
    pub(crate) fn flushed(&mut self) {
        if self.flushed < self.written_qos0 {
            self.flushed = self.written_qos0;
            self.advance();
        }
    }

    fn entry_of(&mut self, pid: u16) -> Option<(usize, &mut Entry)> {
        let seq = *self.pids.get(&pid)?;
        // Upstreams ack in order almost always: the front is the usual answer.
        let idx = match self.q.front() {
            Some(f) if f.seq == seq => 0,
            _ => self.q.binary_search_by_key(&seq, |e| e.seq).ok()?,
        };
        Some((idx, &mut self.q[idx]))
    }

    /// Marks the entry at `idx` complete.
    fn complete(&mut self, idx: usize, pid: u16) {
        let e = &mut self.q[idx];
        e.state = State::Done;
        if std::mem::take(&mut e.on_wire) {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
        self.pids.remove(&pid);
        self.advance();
    }

    /// PUBACK.
    pub(crate) fn puback(&mut self, pid: u16, reason: u8) -> Acked {
        let Some((idx, e)) = self.entry_of(pid) else {
            return Acked::Unknown;
        };
        if e.state != State::Sent || e.publish.qos != QoS::AtLeastOnce {
            return Acked::Unknown;
        }
        if reason == QUOTA_EXCEEDED {
            return Acked::Quota;
        }
        self.complete(idx, pid);
        self.count(reason)
    }

    /// PUBREC: queues the PUBREL into `out` (or completes a refused message).
    pub(crate) fn pubrec(
        &mut self,
        pid: u16,
        reason: u8,
        protocol: Protocol,
        out: &mut BytesMut,
    ) -> Acked {
        let Some((idx, e)) = self.entry_of(pid) else {
            return Acked::Unknown;
        };
        if e.publish.qos != QoS::ExactlyOnce || !matches!(e.state, State::Sent | State::Released) {
            return Acked::Unknown;
        }
        if reason == QUOTA_EXCEEDED {
            return Acked::Quota;
        }
        if reason >= 0x80 {
            self.complete(idx, pid);
            return self.count(reason);
        }
        e.state = State::Released;
        let rel = Packet::PubRel(PubResp {
            packet_id: pid,
            reason_code: 0,
            properties: Default::default(),
        });
        mqtt::encode(&rel, protocol, out);
        Acked::Released
    }

    /// PUBCOMP.
    pub(crate) fn pubcomp(&mut self, pid: u16, reason: u8) -> Acked {
        let Some((idx, e)) = self.entry_of(pid) else {
            return Acked::Unknown;
        };
        if e.state != State::Released {
            return Acked::Unknown;
        }
        self.complete(idx, pid);
        // A PUBCOMP error (0x92, identifier not found) still ends the exchange: the upstream had the message.
        let _ = reason;
        self.count(0)
    }

    fn count(&mut self, reason: u8) -> Acked {
        if reason >= 0x80 {
            self.refused += 1;
            Acked::Refused(reason)
        } else {
            Acked::Delivered
        }
    }

    /// Pops complete entries off the front and moves the cursor.
    fn advance(&mut self) {
        while let Some(front) = self.q.front() {
            let done = match front.state {
                State::Done => true,
                State::Written => front.seq <= self.flushed,
                _ => false,
            };
            if !done {
                break;
            }
            let e = self.q.pop_front().expect("front exists");
            self.delivered += 1;
            self.cursor = self.cursor.max(e.seq);
            if self.next > 0 {
                self.next -= 1;
            }
        }
        match self.q.front() {
            Some(front) => self.cursor = self.cursor.max(front.seq.saturating_sub(1)),
            None => self.cursor = self.cursor.max(self.consumed),
        }
    }

    fn alloc_pid(&mut self) -> u16 {
        // Bounded: at most MAX_WINDOW identifiers plus a few control ones are in use.
        for _ in 0..=u16::MAX {
            self.last_pid = self.last_pid.wrapping_add(1).max(1);
            let pid = self.last_pid;
            if !self.pids.contains_key(&pid) && !self.control.iter().any(|c| c.0 == pid) {
                return self.last_pid;
            }
        }
        unreachable!("more than 65535 packet identifiers in use")
    }

    /// A packet identifier for a control packet, released by [`Window::release_control`] or at the next
    /// reconnect. `publish`: a QoS 1 PUBLISH (birth, `offline`), which holds a slot of the Receive Maximum
    /// until acknowledged (check [`Window::quota_free`] first); SUBSCRIBE does not.
    pub(crate) fn control_pid(&mut self, publish: bool) -> u16 {
        let pid = self.alloc_pid();
        self.control.push((pid, publish));
        pid
    }

    /// Releases a control identifier; false when it was not one.
    pub(crate) fn release_control(&mut self, pid: u16) -> bool {
        match self.control.iter().position(|p| p.0 == pid) {
            Some(i) => {
                self.control.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mqtt::{decode, Properties};

    fn p(qos: QoS) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: Arc::from("t"),
            packet_id: 0,
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"x"),
        }
    }

    fn packets(out: &mut BytesMut) -> Vec<Packet> {
        let mut v = Vec::new();
        while let Some(pk) = decode(out, Some(Protocol::V5), u32::MAX).unwrap() {
            v.push(pk);
        }
        v
    }

    fn pid_of(pk: &Packet) -> u16 {
        match pk {
            Packet::Publish(p) => p.packet_id,
            Packet::PubRel(r) => r.packet_id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cursor_is_contiguous_and_acks_out_of_order_wait() {
        let mut w = Window::new(10);
        w.reconnect(3, usize::MAX, false, Protocol::V5, &mut BytesMut::new());
        let mut out = BytesMut::new();
        w.push(11, p(QoS::AtLeastOnce), Protocol::V5, &mut out);
        w.consumed(12); // a row no rule matched
        w.push(13, p(QoS::AtLeastOnce), Protocol::V5, &mut out);
        w.push(14, p(QoS::AtLeastOnce), Protocol::V5, &mut out);
        assert!(!w.room());
        let pids: Vec<u16> = packets(&mut out).iter().map(pid_of).collect();
        assert_eq!(w.cursor(), 10);
        assert_eq!(w.puback(pids[2], 0), Acked::Delivered);
        assert_eq!(
            w.cursor(),
            10,
            "an ack behind an unacked row does not move the cursor"
        );
        assert_eq!(w.puback(pids[0], 0), Acked::Delivered);
        assert_eq!(w.cursor(), 12, "rows skipped between acked ones are passed");
        assert_eq!(w.puback(pids[1], 0), Acked::Delivered);
        assert_eq!(w.cursor(), 14);
        assert_eq!(w.puback(pids[1], 0), Acked::Unknown);
        w.consumed(20);
        assert_eq!(w.cursor(), 20);
        assert_eq!(w.delivered, 3);
    }

    #[test]
    fn reconnect_resends_in_order_with_dup_and_same_ids() {
        let mut w = Window::new(0);
        w.reconnect(10, usize::MAX, false, Protocol::V5, &mut BytesMut::new());
        let mut out = BytesMut::new();
        for s in 1..=5 {
            w.push(s, p(QoS::AtLeastOnce), Protocol::V5, &mut out);
        }
        let first: Vec<u16> = packets(&mut out).iter().map(pid_of).collect();
        w.puback(first[1], 0);
        // The link drops; the new connection allows only 2 in flight.
        w.reconnect(2, usize::MAX, true, Protocol::V5, &mut out);
        assert!(!w.room());
        assert_eq!(w.resend(Protocol::V5, &mut out, usize::MAX), 2);
        let again = packets(&mut out);
        assert_eq!(again.len(), 2);
        for (pk, want) in again.iter().zip([first[0], first[2]]) {
            match pk {
                Packet::Publish(p) => {
                    assert!(p.dup);
                    assert_eq!(p.packet_id, want);
                }
                other => panic!("{other:?}"),
            }
        }
        w.puback(first[0], 0);
        assert_eq!(w.cursor(), 2);
        assert_eq!(w.resend(Protocol::V5, &mut out, usize::MAX), 1);
        assert_eq!(pid_of(&packets(&mut out)[0]), first[3]);
        w.puback(first[2], 0);
        w.puback(first[3], 0);
        assert_eq!(w.resend(Protocol::V5, &mut out, usize::MAX), 1);
        w.puback(first[4], 0);
        assert_eq!(w.cursor(), 5);
        assert!(w.room());
        assert_eq!(w.resent, 4);
    }

    #[test]
    fn qos0_completes_when_flushed_and_is_resent_if_not() {
        let mut w = Window::new(0);
        w.reconnect(10, usize::MAX, false, Protocol::V5, &mut BytesMut::new());
        let mut out = BytesMut::new();
        w.push(1, p(QoS::AtMostOnce), Protocol::V5, &mut out);
        assert_eq!(w.cursor(), 0, "not on the socket yet");
        w.flushed();
        assert_eq!(w.cursor(), 1);
        w.push(2, p(QoS::AtMostOnce), Protocol::V5, &mut out);
        out.clear(); // the connection died before the buffer was written
        w.reconnect(10, usize::MAX, false, Protocol::V5, &mut BytesMut::new());
        assert_eq!(w.resend(Protocol::V5, &mut out, usize::MAX), 1);
        w.flushed();
        assert_eq!(w.cursor(), 2);
    }

    #[test]
    fn qos2_flow_and_resume() {
        let mut w = Window::new(0);
        w.reconnect(10, usize::MAX, false, Protocol::V5, &mut BytesMut::new());
        let mut out = BytesMut::new();
        w.push(1, p(QoS::ExactlyOnce), Protocol::V5, &mut out);
        w.push(2, p(QoS::ExactlyOnce), Protocol::V5, &mut out);
        let pids: Vec<u16> = packets(&mut out).iter().map(pid_of).collect();
        assert_eq!(
            w.pubrec(pids[0], 0, Protocol::V5, &mut out),
            Acked::Released
        );
        assert!(matches!(packets(&mut out)[0], Packet::PubRel(_)));
        // Session kept: PUBREL again for the first, PUBLISH (DUP) for the second.
        w.reconnect(10, usize::MAX, true, Protocol::V5, &mut out);
        w.resend(Protocol::V5, &mut out, usize::MAX);
        let again = packets(&mut out);
        assert!(matches!(&again[0], Packet::PubRel(r) if r.packet_id == pids[0]));
        assert!(matches!(&again[1], Packet::Publish(p) if p.dup && p.packet_id == pids[1]));
        assert_eq!(w.pubcomp(pids[0], 0), Acked::Delivered);
        assert_eq!(w.cursor(), 1);
        // Session lost: the released one would be published again.
        w.reconnect(10, usize::MAX, false, Protocol::V5, &mut out);
        w.resend(Protocol::V5, &mut out, usize::MAX);
        assert!(matches!(&packets(&mut out)[0], Packet::Publish(p) if p.packet_id == pids[1]));
        assert_eq!(
            w.pubrec(pids[1], 0x97, Protocol::V5, &mut out),
            Acked::Quota
        );
        assert_eq!(w.cursor(), 1, "over quota: sent again later, not skipped");
        assert_eq!(
            w.pubrec(pids[1], 0x87, Protocol::V5, &mut out),
            Acked::Refused(0x87)
        );
        assert_eq!(w.cursor(), 2);
        assert_eq!(w.refused, 1);
    }

    #[test]
    fn control_ids_never_collide() {
        let mut w = Window::new(0);
        w.reconnect(5, usize::MAX, false, Protocol::V5, &mut BytesMut::new());
        let c = w.control_pid(true);
        let mut out = BytesMut::new();
        for s in 1..=5 {
            w.push(s, p(QoS::AtLeastOnce), Protocol::V5, &mut out);
        }
        let pids: Vec<u16> = packets(&mut out).iter().map(pid_of).collect();
        assert!(!pids.contains(&c));
        assert_eq!(w.puback(c, 0), Acked::Unknown);
        assert!(w.release_control(c));
        assert!(!w.release_control(c));
    }
}
