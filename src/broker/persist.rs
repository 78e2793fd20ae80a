//! Saving and restoring the broker's state — retained messages and persistent sessions — so that both survive
//! a restart and a `kill -9`.
//!
//! The broker never writes files itself: it hands [`Saved`] changes to a [`StateSink`] (the daemon's store,
//! which writes them in the log's own group-commit transactions) and takes them back at start
//! ([`Broker::restore`]).
//!
//! What is saved, and when:
//! - a retained message, each time its topic's retained state changes;
//! - a persistent session (expiry > 0), as a whole snapshot — subscriptions, in-flight QoS 1/2 messages with
//!   their packet ids and stages, queued QoS 1/2 messages, its expiry — whenever it changed, at most once per
//!   save interval; a session that ended or expired is deleted.
//!
//! After a `kill -9` or a power cut, the changes of the last save interval (plus the store's uncommitted
//! commit interval) are lost; a clean stop saves everything. Not saved, by design: QoS 0 messages (never
//! queued for absent clients), wills (a gateway restart is not the client's failure), topic aliases (per
//! connection), clean sessions.
//!
//! Saved rows come from a file and are treated as hostile: every length is bounds-checked, a row that does not
//! decode is skipped and counted, never a panic.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures::future::BoxFuture;

use super::core::Broker;
use super::message::Message;
use super::router::SubOptions;
use super::session::{Inflight, Outbound, Session, Stage};
use crate::mqtt::{self, Packet, Protocol, Publish, QoS, RetainHandling};

/// One change of the broker's saved state. `None`: delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// The retained message of a topic.
    Retained {
        /// Topic.
        topic: String,
        /// Encoded message, or `None` when the topic has none any more.
        value: Option<Vec<u8>>,
    },
    /// A persistent session.
    Session {
        /// Client identifier.
        client_id: String,
        /// Encoded snapshot, or `None` when the session ended.
        value: Option<Vec<u8>>,
    },
}

/// Where the broker's state goes (the store).
pub trait StateSink: Send + Sync + 'static {
    /// Saves a batch of changes; resolves when they are queued for the next commit.
    fn save(&self, changes: Vec<Saved>) -> BoxFuture<'static, ()>;
}

/// What the broker remembers between saves.
#[derive(Default)]
pub(crate) struct PersistState {
    /// Topics whose retained state changed since the last save.
    pub dirty_retained: HashSet<Arc<str>>,
    /// Sessions saved so far: client id -> (session id, version saved).
    saved_sessions: HashMap<Arc<str>, (u64, u64)>,
}

/// What [`Broker::restore`] brought back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Retained messages restored.
    pub retained: usize,
    /// Sessions restored.
    pub sessions: usize,
    /// Queued and in-flight messages restored with them.
    pub messages: usize,
    /// Rows skipped: expired, over a limit, or damaged.
    pub skipped: usize,
}

const FORMAT: u8 = 1;
/// Bound on any count read from a saved row (a damaged length must not allocate gigabytes).
const MAX_COUNT: u32 = 1 << 20;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Broker {
    /// Starts saving retained messages and persistent sessions to `sink` every `interval` (and once more when
    /// [`Broker::save_state`] is called at shutdown).
    pub fn persist_to(&self, sink: Arc<dyn StateSink>, interval: Duration) {
        *self.inner.persist.lock() = Some(PersistState::default());
        let broker = self.clone();
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let changes = broker.state_changes();
                if !changes.is_empty() {
                    sink.save(changes).await;
                }
            }
        });
    }

    /// The changes since the last save, for a final save at shutdown (after the listeners stopped).
    pub fn state_changes(&self) -> Vec<Saved> {
        let mut guard = self.inner.persist.lock();
        let Some(ps) = guard.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !ps.dirty_retained.is_empty() {
            let router = self.inner.router.read();
            let now = Instant::now();
            for topic in ps.dirty_retained.drain() {
                let value = router
                    .retained_get(&topic)
                    .filter(|m| !m.expired(now))
                    .map(|m| encode_retained(m, now));
                out.push(Saved::Retained {
                    topic: topic.to_string(),
                    value,
                });
            }
        }
        let sessions: Vec<Arc<Session>> = self.inner.sessions.lock().values().cloned().collect();
        let mut present: HashSet<Arc<str>> = HashSet::with_capacity(ps.saved_sessions.len());
        let now = Instant::now();
        for s in sessions {
            let st = s.state.lock();
            if st.expiry_secs == 0 {
                continue;
            }
            present.insert(s.client_id.clone());
            let key = (s.id, st.version);
            if ps.saved_sessions.get(&s.client_id) == Some(&key) {
                continue;
            }
            let value = encode_session(&st, now);
            drop(st);
            ps.saved_sessions.insert(s.client_id.clone(), key);
            out.push(Saved::Session {
                client_id: s.client_id.to_string(),
                value: Some(value),
            });
        }
        ps.saved_sessions.retain(|id, _| {
            let keep = present.contains(id);
            if !keep {
                out.push(Saved::Session {
                    client_id: id.to_string(),
                    value: None,
                });
            }
            keep
        });
        out
    }

    pub(crate) fn mark_retained(&self, topic: &Arc<str>) {
        if let Some(ps) = self.inner.persist.lock().as_mut() {
            ps.dirty_retained.insert(topic.clone());
        }
    }

    /// Restores saved state before the listeners start. Expired messages and sessions are skipped, as are
    /// rows that do not decode (counted, logged once).
    pub fn restore(
        &self,
        retained: Vec<(String, Vec<u8>)>,
        sessions: Vec<(String, Vec<u8>)>,
    ) -> Restored {
        let cfg = self.config();
        let mut r = Restored::default();
        let wall = now_ms();
        let now = Instant::now();
        let mut damaged = 0;
        for (topic, value) in retained {
            match decode_retained(&value, wall, now) {
                Ok(Some(msg)) if *msg.topic == *topic => {
                    let ok = self.inner.router.write().retain(
                        &Arc::new(msg),
                        cfg.limits.max_retained_messages,
                        cfg.limits.max_retained_bytes,
                    );
                    if ok {
                        r.retained += 1;
                    } else {
                        r.skipped += 1;
                    }
                }
                Ok(None) => r.skipped += 1,
                _ => {
                    damaged += 1;
                    r.skipped += 1;
                }
            }
        }
        for (client_id, value) in sessions {
            let Ok(snap) = decode_session(&value) else {
                damaged += 1;
                r.skipped += 1;
                continue;
            };
            let elapsed = wall.saturating_sub(snap.saved_at_ms) / 1000;
            let expiry = snap.expiry_secs;
            if expiry != super::core::EXPIRY_NEVER && u64::from(expiry) <= elapsed {
                r.skipped += 1;
                continue;
            }
            let remaining = if expiry == super::core::EXPIRY_NEVER {
                expiry
            } else {
                expiry - elapsed as u32
            };
            match self.restore_session(client_id.into(), snap, remaining, now) {
                Some(n) => {
                    r.sessions += 1;
                    r.messages += n;
                }
                None => r.skipped += 1,
            }
        }
        if damaged > 0 {
            tracing::warn!(
                damaged,
                "broker state: rows that do not decode were skipped"
            );
        }
        if let Some(ps) = self.inner.persist.lock().as_mut() {
            // What was restored is what is saved: no need to write it again.
            for s in self.inner.sessions.lock().values() {
                let v = s.state.lock().version;
                ps.saved_sessions.insert(s.client_id.clone(), (s.id, v));
            }
        }
        r
    }

    fn restore_session(
        &self,
        client_id: Arc<str>,
        snap: Snapshot,
        remaining_expiry: u32,
        now: Instant,
    ) -> Option<usize> {
        let cfg = self.config();
        if self
            .inner
            .offline_sessions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= cfg.limits.max_offline_sessions
        {
            return None;
        }
        let session = Session::new(
            self.new_session_id(),
            client_id.clone(),
            snap.protocol,
            cfg.max_queued_messages,
        );
        let n = snap.inflight.len() + snap.queue.len();
        {
            let mut router = self.inner.router.write();
            let mut st = session.state.lock();
            for (filter, opts) in snap.subscriptions {
                router.subscribe(&session, &filter, opts.clone());
                st.subscriptions.insert(filter, opts);
            }
            st.inflight = snap
                .inflight
                .into_iter()
                .filter(|(_, _, o)| !o.msg.expired(now))
                .map(|(pid, stage, out)| Inflight { pid, out, stage })
                .collect();
            st.set_queue(
                snap.queue
                    .into_iter()
                    .filter(|o| !o.msg.expired(now))
                    .collect::<VecDeque<_>>(),
            );
            st.expiry_secs = remaining_expiry;
            st.owner = snap.owner;
            st.counted_offline = true;
        }
        self.inner
            .offline_sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .sessions
            .lock()
            .insert(client_id, session.clone());
        self.schedule_expiry(&session, remaining_expiry);
        Some(n)
    }
}

// ---- encoding ---------------------------------------------------------------------------------------------

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// A message as a v5 PUBLISH packet (topic, payload, QoS, retain, properties with the remaining expiry).
fn put_message(out: &mut Vec<u8>, msg: &Message, qos: QoS, retain: bool, now: Instant) {
    let mut properties = msg.properties.clone();
    properties.message_expiry_interval = msg.remaining_expiry(now);
    let p = Publish {
        dup: false,
        qos,
        retain,
        topic: msg.topic.clone(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
        properties,
        payload: msg.payload.clone(),
    };
    let mut buf = BytesMut::new();
    mqtt::encode_publish(&p, Protocol::V5, &mut buf);
    put_u32(out, buf.len() as u32);
    out.extend_from_slice(&buf);
}

fn put_outbound(out: &mut Vec<u8>, o: &Outbound, now: Instant) {
    out.push(o.qos as u8);
    out.push(u8::from(o.retain));
    put_u32(out, o.sub_ids.len() as u32);
    for id in &o.sub_ids {
        put_u32(out, *id);
    }
    put_message(out, &o.msg, o.msg.qos, o.msg.retain, now);
}

fn encode_retained(msg: &Message, now: Instant) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend_from_slice(&now_ms().to_be_bytes());
    put_message(&mut out, msg, msg.qos, true, now);
    out
}

fn encode_session(st: &super::session::SessionState, now: Instant) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend_from_slice(&now_ms().to_be_bytes());
    put_u32(&mut out, st.expiry_secs);
    out.push(match st.protocol {
        Protocol::V311 => 4,
        Protocol::V5 => 5,
    });
    // The user the client id is bound to (`client_id_binding`), so a restart does not unbind it.
    match &st.owner {
        Some(user) => {
            out.push(1);
            put_str(&mut out, user);
        }
        None => out.push(0),
    }
    put_u32(&mut out, st.subscriptions.len() as u32);
    for (filter, o) in &st.subscriptions {
        put_str(&mut out, filter);
        out.push(o.qos as u8);
        out.push(
            u8::from(o.no_local)
                | u8::from(o.retain_as_published) << 1
                | (o.retain_handling as u8) << 2,
        );
        put_u32(&mut out, o.id.unwrap_or(0));
    }
    put_u32(&mut out, st.inflight.len() as u32);
    for i in &st.inflight {
        out.extend_from_slice(&i.pid.to_be_bytes());
        out.push(match i.stage {
            Stage::AwaitAck => 0,
            Stage::AwaitRec => 1,
            Stage::AwaitComp => 2,
        });
        put_outbound(&mut out, &i.out, now);
    }
    let queued: Vec<&Outbound> = st
        .queue
        .iter()
        .filter(|o| o.qos != QoS::AtMostOnce)
        .collect();
    put_u32(&mut out, queued.len() as u32);
    for o in queued {
        put_outbound(&mut out, o, now);
    }
    out
}

// ---- decoding ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct Damaged;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        if self.0.len() < n {
            return Err(Damaged);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Damaged> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Damaged> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().map_err(|_| Damaged)?,
        ))
    }
    fn u32(&mut self) -> Result<u32, Damaged> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| Damaged)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, Damaged> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| Damaged)?,
        ))
    }
    fn count(&mut self) -> Result<usize, Damaged> {
        let n = self.u32()?;
        if n > MAX_COUNT {
            return Err(Damaged);
        }
        Ok(n as usize)
    }
    fn str(&mut self) -> Result<String, Damaged> {
        let n = self.count()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Damaged)
    }
    /// A PUBLISH packet, and the wall-clock seconds since it was saved to take off its expiry.
    fn message(&mut self, elapsed_secs: u64, now: Instant) -> Result<Option<Message>, Damaged> {
        let n = self.count()?;
        let mut buf = BytesMut::from(self.take(n)?);
        let p = match mqtt::decode(&mut buf, Some(Protocol::V5), u32::MAX) {
            Ok(Some(Packet::Publish(p))) if buf.is_empty() => p,
            _ => return Err(Damaged),
        };
        let topic = p.topic.clone();
        if !mqtt::valid_topic_name(&topic) {
            return Err(Damaged);
        }
        let expiry = p.properties.message_expiry_interval;
        let mut msg = Message::from_publish(p, topic, None);
        if let Some(secs) = expiry {
            let left = u64::from(secs).checked_sub(elapsed_secs).filter(|l| *l > 0);
            match left {
                Some(left) => msg.expires_at = Some(now + Duration::from_secs(left)),
                None => return Ok(None),
            }
        }
        Ok(Some(msg))
    }
    fn outbound(&mut self, elapsed: u64, now: Instant) -> Result<Option<Outbound>, Damaged> {
        let qos = QoS::from_u8(self.u8()?).ok_or(Damaged)?;
        let retain = self.u8()? != 0;
        let n = self.count()?;
        let mut sub_ids = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            sub_ids.push(self.u32()?);
        }
        Ok(self.message(elapsed, now)?.map(|msg| Outbound {
            msg: Arc::new(msg),
            qos,
            retain,
            sub_ids,
        }))
    }
}

fn decode_retained(b: &[u8], wall_ms: u64, now: Instant) -> Result<Option<Message>, Damaged> {
    let mut r = Reader(b);
    if r.u8()? != FORMAT {
        return Err(Damaged);
    }
    let saved = r.u64()?;
    let msg = r.message(wall_ms.saturating_sub(saved) / 1000, now)?;
    if !r.0.is_empty() {
        return Err(Damaged);
    }
    Ok(msg.map(|mut m| {
        m.retain = true;
        m
    }))
}

struct Snapshot {
    saved_at_ms: u64,
    expiry_secs: u32,
    protocol: Protocol,
    owner: Option<Arc<str>>,
    subscriptions: Vec<(String, SubOptions)>,
    inflight: Vec<(u16, Stage, Outbound)>,
    queue: Vec<Outbound>,
}

fn decode_session(b: &[u8]) -> Result<Snapshot, Damaged> {
    let mut r = Reader(b);
    if r.u8()? != FORMAT {
        return Err(Damaged);
    }
    let saved_at_ms = r.u64()?;
    let elapsed = now_ms().saturating_sub(saved_at_ms) / 1000;
    let now = Instant::now();
    let expiry_secs = r.u32()?;
    let protocol = match r.u8()? {
        4 => Protocol::V311,
        5 => Protocol::V5,
        _ => return Err(Damaged),
    };
    let owner = match r.u8()? {
        0 => None,
        1 => Some(Arc::from(r.str()?)),
        _ => return Err(Damaged),
    };
    let mut subscriptions = Vec::new();
    for _ in 0..r.count()? {
        let filter = r.str()?;
        if !mqtt::valid_topic_filter(&filter) {
            return Err(Damaged);
        }
        let qos = QoS::from_u8(r.u8()?).ok_or(Damaged)?;
        let flags = r.u8()?;
        let retain_handling = match flags >> 2 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(Damaged),
        };
        let id = r.u32()?;
        subscriptions.push((
            filter,
            SubOptions {
                qos,
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                retain_handling,
                id: (id != 0).then_some(id),
            },
        ));
    }
    let mut inflight = Vec::new();
    for _ in 0..r.count()? {
        let pid = r.u16()?;
        let stage = match r.u8()? {
            0 => Stage::AwaitAck,
            1 => Stage::AwaitRec,
            2 => Stage::AwaitComp,
            _ => return Err(Damaged),
        };
        if pid == 0 {
            return Err(Damaged);
        }
        if let Some(o) = r.outbound(elapsed, now)? {
            inflight.push((pid, stage, o));
        }
    }
    let mut queue = Vec::new();
    for _ in 0..r.count()? {
        if let Some(o) = r.outbound(elapsed, now)? {
            queue.push(o);
        }
    }
    if !r.0.is_empty() {
        return Err(Damaged);
    }
    Ok(Snapshot {
        saved_at_ms,
        expiry_secs,
        protocol,
        owner,
        subscriptions,
        inflight,
        queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::Properties;

    #[test]
    fn damaged_rows_are_refused_not_panicked_on() {
        let now = Instant::now();
        let mut m = Message::new("a/b", "payload", QoS::AtLeastOnce, true);
        m.properties = Properties {
            content_type: Some("text/plain".into()),
            ..Properties::default()
        };
        let good = encode_retained(&m, now);
        let back = decode_retained(&good, now_ms(), now).unwrap().unwrap();
        assert_eq!(&*back.topic, "a/b");
        assert_eq!(&back.payload[..], b"payload");
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        // Every truncation and every single-byte change either decodes or is refused; none panics.
        for cut in 0..good.len() {
            assert!(decode_retained(&good[..cut], now_ms(), now).is_err());
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xFF;
            let _ = decode_retained(&bad, now_ms(), now);
            let _ = decode_session(&bad);
        }
        // A huge count does not allocate.
        let mut huge = vec![FORMAT];
        huge.extend_from_slice(&0u64.to_be_bytes());
        huge.extend_from_slice(&0u32.to_be_bytes());
        huge.push(5);
        huge.push(0);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_session(&huge).is_err());
    }

    #[test]
    fn expired_messages_are_not_restored() {
        let now = Instant::now();
        let mut m = Message::new("a", "x", QoS::AtLeastOnce, true);
        m.expires_at = Some(now + Duration::from_secs(10));
        let saved = encode_retained(&m, now);
        assert!(decode_retained(&saved, now_ms() + 5_000, now)
            .unwrap()
            .is_some());
        assert!(decode_retained(&saved, now_ms() + 11_000, now)
            .unwrap()
            .is_none());
    }
}
