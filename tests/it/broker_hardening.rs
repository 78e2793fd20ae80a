//! One bad client must never crash, freeze or starve the broker (issue 8): depth, slow consumers, pipelined and
//! half-sent packets, per-client limits and flow-control conformance, each tried with the raw test client.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fieldbridge::broker::{AdmissionFuture, CommitFuture, Message, PublishHook};
use fieldbridge::mqtt::{self, Packet, Protocol, QoS};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::util::client::{connect_packet, publish, sub, will, Client, Recv};
use crate::util::{wait_until, within, TestBroker};

const V5: Protocol = Protocol::V5;
const V3: Protocol = Protocol::V311;

/// Every scenario runs twice: on the default configuration, and with users and ACL rules in force (the rules
/// allow what the scenarios do, so the ACL paths run: compiled rules, per-delivery read checks).
#[derive(Clone, Copy)]
enum Profile {
    Default,
    UsersAndAcl,
}

impl Profile {
    fn apply(self, c: &mut fieldbridge::config::BrokerConfig) {
        use fieldbridge::config::{AclAccess, AclRule, AclWho, Password, UserConfig};
        if let Profile::UsersAndAcl = self {
            c.users.push(UserConfig {
                username: "operator".into(),
                password: Password::Plain("operator-secret".into()),
            });
            c.acl = vec![
                AclRule {
                    who: AclWho::Everyone,
                    filter: "secret/#".into(),
                    access: AclAccess::All,
                    allow: false,
                },
                AclRule {
                    who: AclWho::Everyone,
                    filter: "#".into(),
                    access: AclAccess::All,
                    allow: true,
                },
            ];
        }
    }
}

/// Two tests per scenario: `<scenario>::default_config` and `<scenario>::with_users_and_acl`.
macro_rules! on_both_configs {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn default_config() {
                super::$name(super::Profile::Default).await
            }
            #[tokio::test]
            async fn with_users_and_acl() {
                super::$name(super::Profile::UsersAndAcl).await
            }
        }
    )*};
}

on_both_configs!(
    deep_and_long_topics_are_refused_and_the_broker_lives_on,
    a_subscriber_that_never_acknowledges_cannot_freeze_publishers,
    the_in_process_link_is_never_held_by_a_stuck_subscriber,
    a_qos0_burst_reaches_a_subscriber_that_keeps_up,
    packets_pipelined_behind_connect_are_handled,
    a_half_sent_packet_is_dropped_after_packet_timeout_whatever_the_keepalive,
    per_client_limits_refuse_and_count,
    offline_queues_share_a_byte_budget,
    publishes_pipelined_behind_a_waiting_admission_are_all_logged_and_acknowledged,
    receive_maximum_is_enforced_for_v5_and_only_flow_controls_v311,
    connack_carries_server_keep_alive_when_a_maximum_is_set,
);

/// A canary pair on its own topic: a round trip proves the broker still serves others.
async fn canary(tb: &TestBroker, tag: &str) {
    let mut s = Client::connect(tb.addr, V5, &format!("canary-s-{tag}"), true).await;
    s.subscribe(vec![sub("canary", QoS::AtLeastOnce)]).await;
    let mut p = Client::connect(tb.addr, V3, &format!("canary-p-{tag}"), true).await;
    assert_eq!(
        p.publish(publish("canary", tag, QoS::AtLeastOnce, 0)).await,
        0
    );
    assert_eq!(&s.recv_publish().await.payload[..], tag.as_bytes());
}

async fn deep_and_long_topics_are_refused_and_the_broker_lives_on(p: Profile) {
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.limits.max_topic_levels = 1024;
    })
    .await;
    let mut c = Client::connect(tb.addr, V5, "deep", true).await;
    // The filter that aborted the daemon (recursive removal at ~4,500 levels): refused, not stored.
    let deep = vec!["a"; 5000].join("/");
    let ack = c.subscribe(vec![sub(&deep, QoS::AtMostOnce)]).await;
    assert_eq!(ack.reason_codes, vec![0x8F]);
    // At the configured maximum it is accepted, routed, removed and dropped without recursion.
    let deep_ok = vec!["a"; 1024].join("/");
    let ack = c
        .subscribe(vec![
            sub(&deep_ok, QoS::AtMostOnce),
            sub("a/#", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(ack.reason_codes, vec![0, 0]);
    c.publish(publish(&deep_ok, "deep", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"deep");
    drop(c); // unclean close: the session and its deep subscription are discarded
    canary(&tb, "after-deep").await;
    wait_until("every subscription gone", || {
        tb.broker.stats().subscriptions == 0
    })
    .await;
    assert_eq!(tb.broker.stats().refused_topic_limits, 1);

    // Defaults: 128 levels, 4096 bytes. A PUBLISH beyond them ends the connection with 0x90.
    let tb = TestBroker::start_with(|c| p.apply(c)).await;
    for topic in [vec!["x"; 129].join("/"), "y".repeat(4097)] {
        let mut p = Client::connect(tb.addr, V5, "long", true).await;
        p.send(Packet::Publish(publish(&topic, "p", QoS::AtMostOnce, 0)))
            .await;
        let d = p.closed().await.expect("DISCONNECT before close");
        assert_eq!(d.reason_code, 0x90);
    }
    let mut s = Client::connect(tb.addr, V3, "long-sub", true).await;
    let ack = s
        .subscribe(vec![
            sub(&"z".repeat(4097), QoS::AtMostOnce),
            // 128 levels (the first not a wildcard: with the ACL, `+/...` would intersect `secret/#`).
            sub(&format!("z/{}", vec!["+"; 127].join("/")), QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(
        ack.reason_codes,
        vec![0x80, 0],
        "3.1.1 failure code; 128 levels fit"
    );
    canary(&tb, "after-long").await;

    // Control characters and non-characters in a topic, which mosquitto refuses as malformed (a bridge that
    // forwarded such a message was disconnected by it again and again): the PUBLISH ends the connection with
    // 0x90, the filter is refused per filter, the connection and the broker carry on.
    for topic in ["gw/x\ny/v", "gw/\u{7f}", "gw/\u{85}", "gw/\u{FFFF}"] {
        let mut p = Client::connect(tb.addr, V5, "ctl", true).await;
        p.send(Packet::Publish(publish(topic, "p", QoS::AtLeastOnce, 1)))
            .await;
        let d = p.closed().await.expect("DISCONNECT before close");
        assert_eq!(d.reason_code, 0x90, "{topic:?}");
    }
    let mut s = Client::connect(tb.addr, V5, "ctl-sub", true).await;
    let ack = s
        .subscribe(vec![
            sub("gw/\t/#", QoS::AtMostOnce),
            sub("gw/ok/#", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(ack.reason_codes, vec![0x8F, 0]);
    canary(&tb, "after-control-characters").await;
}

async fn a_subscriber_that_never_acknowledges_cannot_freeze_publishers(p: Profile) {
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.max_queued_messages = 10;
        c.receive_maximum = 20;
        c.limits.max_publish_wait = Duration::from_millis(300);
    })
    .await;
    // A persistent v5 subscriber that reads nothing back and acknowledges nothing.
    let mut cp = connect_packet(V5, "stuck", true);
    cp.properties.session_expiry_interval = Some(3600);
    let (mut stuck, _) = Client::connect_with(tb.addr, cp.clone()).await;
    stuck
        .subscribe(vec![sub("plant/#", QoS::AtLeastOnce)])
        .await;

    // QoS 1 and QoS 0 publishers on the same topic: every publish is acknowledged, none waits for good.
    let mut p = Client::connect(tb.addr, V3, "publisher", true).await;
    for i in 0..200 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let code = within(
            "a publish past a stuck subscriber",
            p.publish(publish("plant/line1", &i.to_string(), qos, 0)),
        )
        .await;
        assert_eq!(code, 0);
    }
    p.ping().await;
    // The stuck subscriber was told why (quota exceeded) and closed; others never noticed.
    let d = stuck.closed().await.expect("DISCONNECT before close");
    assert_eq!(d.reason_code, 0x97);
    assert_eq!(tb.broker.stats().slow_consumers_disconnected, 1);
    canary(&tb, "slow").await;

    // Its session went on offline with its bounded queue: it comes back to what was kept.
    cp.clean_start = false;
    let (mut back, ack) = Client::connect_with(tb.addr, cp).await;
    assert!(ack.session_present);
    let mut got = 0;
    while let Recv::Packet(p) = back.recv_within(Duration::from_millis(500)).await {
        if let Packet::Publish(p) = *p {
            back.ack(&p).await;
            got += 1;
        }
    }
    assert!(got >= 10, "the in-flight window and queue were kept: {got}");
    assert!(got <= 10 + 20, "bounded by queue + window: {got}");
}

async fn the_in_process_link_is_never_held_by_a_stuck_subscriber(p: Profile) {
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.max_queued_messages = 5;
        c.receive_maximum = 5;
        c.limits.max_publish_wait = Duration::from_millis(200);
    })
    .await;
    let mut stuck = Client::connect(tb.addr, V3, "stuck-link", true).await;
    stuck.subscribe(vec![sub("gw/#", QoS::AtLeastOnce)]).await;
    let link = tb.broker.link("pipeline");
    // The pipeline's readings go through the link: 100 of them pass a subscriber that never acknowledges.
    within("link publishes past a stuck subscriber", async {
        for i in 0..100 {
            link.publish(Message::new(
                "gw/dev/pt",
                i.to_string(),
                QoS::AtLeastOnce,
                false,
            ))
            .await;
        }
    })
    .await;
    assert!(
        stuck.closed().await.is_none(),
        "3.1.1: closed without DISCONNECT"
    );
    assert_eq!(tb.broker.stats().slow_consumers_disconnected, 1);
}

async fn a_qos0_burst_reaches_a_subscriber_that_keeps_up(p: Profile) {
    const PUBLISHERS: usize = 10;
    const EACH: usize = 2000;
    // A small queue: without back-pressure for QoS 0 most of the burst would be dropped.
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.max_queued_messages = 50;
    })
    .await;
    let mut s = Client::connect(tb.addr, V5, "burst-sub", true).await;
    s.subscribe(vec![sub("burst/#", QoS::AtMostOnce)]).await;
    let mut pubs = Vec::new();
    for k in 0..PUBLISHERS {
        let addr = tb.addr;
        pubs.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, V3, &format!("burst-p{k}"), true).await;
            let mut out = BytesMut::new();
            for i in 0..EACH {
                mqtt::encode(
                    &Packet::Publish(publish(
                        &format!("burst/{k}"),
                        &i.to_string(),
                        QoS::AtMostOnce,
                        0,
                    )),
                    V3,
                    &mut out,
                );
            }
            c.stream.write_all(&out).await.unwrap();
            c.ping().await;
        }));
    }
    let mut got = 0;
    while got < PUBLISHERS * EACH {
        match s.recv_within(Duration::from_secs(5)).await {
            Recv::Packet(p) if matches!(*p, Packet::Publish(_)) => got += 1,
            Recv::Packet(_) => {}
            other => panic!("burst stopped at {got}: {other:?}"),
        }
    }
    for p in pubs {
        p.await.unwrap();
    }
    assert_eq!(tb.broker.stats().dropped_queue_full, 0);
}

async fn packets_pipelined_behind_connect_are_handled(p: Profile) {
    let tb = TestBroker::start_with(|c| p.apply(c)).await;
    let mut s = Client::connect(tb.addr, V5, "pipe-sub", true).await;
    s.subscribe(vec![sub("pipe/#", QoS::AtMostOnce)]).await;
    for proto in [V3, V5] {
        // A fire-and-forget sensor: CONNECT (with a will), PUBLISH, DISCONNECT in one segment, then close.
        let mut cp = connect_packet(proto, "sensor", true);
        cp.will = Some(will("pipe/will", "gone", QoS::AtMostOnce));
        let mut out = BytesMut::new();
        mqtt::encode(&Packet::Connect(Box::new(cp)), proto, &mut out);
        mqtt::encode(
            &Packet::Publish(publish("pipe/data", "21.5", QoS::AtMostOnce, 0)),
            proto,
            &mut out,
        );
        mqtt::encode(&Packet::Disconnect(Default::default()), proto, &mut out);
        let mut c = Client::open(tb.addr, proto).await;
        c.send_raw(&out).await;
        c.stream.shutdown().await.unwrap();
        let got = s.recv_publish().await;
        assert_eq!(&*got.topic, "pipe/data", "{proto:?}");
        assert_eq!(&got.payload[..], b"21.5");
    }
    // No will was sent for either: both disconnected cleanly.
    let seen = s.ping().await;
    assert!(
        seen.is_empty(),
        "nothing else, in particular no will: {seen:?}"
    );
}

async fn a_half_sent_packet_is_dropped_after_packet_timeout_whatever_the_keepalive(p: Profile) {
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.limits.packet_timeout = Duration::from_millis(300);
    })
    .await;
    // keepalive 0: no keepalive timeout will ever close these.
    let mut cp = connect_packet(V3, "idle", true);
    cp.keep_alive = 0;
    let (mut idle, _) = Client::connect_with(tb.addr, cp.clone()).await;
    cp.client_id = "half".into();
    let (mut half, _) = Client::connect_with(tb.addr, cp).await;
    // PUBLISH announcing 512 KiB (within max_packet_size), then only its first kilobyte.
    let mut bytes = vec![0x30, 0x80, 0x80, 0x20, 0x00, 0x01, b't'];
    bytes.extend(std::iter::repeat_n(b'x', 1024));
    half.send_raw(&bytes).await;
    assert!(matches!(
        half.recv_within(Duration::from_secs(10)).await,
        Recv::Closed
    ));
    assert_eq!(tb.broker.stats().packet_timeouts, 1);
    // An idle connection with nothing half-sent stays.
    assert!(idle.ping().await.is_empty());
    assert_eq!(tb.broker.stats().clients_connected, 1);
}

async fn per_client_limits_refuse_and_count(p: Profile) {
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.limits.max_subscriptions_per_client = 3;
        c.limits.max_retained_messages = 2;
        c.limits.max_retained_bytes = 1000;
        c.limits.max_offline_sessions = 2;
    })
    .await;
    // Subscriptions: the fourth distinct filter is refused; re-subscribing an existing one is not new.
    for (proto, code) in [(V5, 0x97), (V3, 0x80)] {
        let mut c = Client::connect(tb.addr, proto, "subs", true).await;
        let ack = c
            .subscribe(vec![
                sub("a", QoS::AtMostOnce),
                sub("b", QoS::AtMostOnce),
                sub("c", QoS::AtMostOnce),
                sub("d", QoS::AtMostOnce),
                sub("a", QoS::AtLeastOnce),
            ])
            .await;
        assert_eq!(ack.reason_codes, vec![0, 0, 0, code, 1], "{proto:?}");
        c.disconnect().await;
    }
    assert_eq!(tb.broker.stats().refused_subscriptions, 2);

    // Retained: two topics at most, and at most 1000 bytes.
    let mut p = Client::connect(tb.addr, V5, "retainer", true).await;
    for (topic, payload) in [
        ("r/1", "a".to_string()),
        ("r/2", "b".into()),
        ("r/3", "c".into()),
    ] {
        let mut m = publish(topic, &payload, QoS::AtLeastOnce, 0);
        m.retain = true;
        assert_eq!(p.publish(m).await, 0, "still delivered and acknowledged");
    }
    let mut big = publish("r/2", &"x".repeat(2000), QoS::AtLeastOnce, 0);
    big.retain = true;
    p.publish(big).await;
    let mut s = Client::connect(tb.addr, V5, "retained-reader", true).await;
    s.subscribe(vec![sub("r/#", QoS::AtMostOnce)]).await;
    let got = s.ping().await;
    let topics: Vec<String> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        topics,
        vec!["r/1".to_string()],
        "r/3 over the count, r/2's big replacement over the bytes"
    );
    assert_eq!(tb.broker.stats().refused_retained, 2);

    // Offline sessions: two are kept; a third new persistent session is refused with quota exceeded.
    for id in ["o1", "o2"] {
        let mut cp = connect_packet(V5, id, true);
        cp.properties.session_expiry_interval = Some(600);
        let (c, ack) = Client::connect_with(tb.addr, cp).await;
        assert_eq!(ack.reason_code, 0);
        c.disconnect().await;
    }
    wait_until("two offline sessions", || tb.broker.stats().sessions >= 2).await;
    let mut cp = connect_packet(V5, "o3", true);
    cp.properties.session_expiry_interval = Some(600);
    let (_c, ack) = Client::connect_with(tb.addr, cp.clone()).await;
    assert_eq!(ack.reason_code, 0x97);
    let mut v3 = connect_packet(V3, "o3", false);
    v3.keep_alive = 30;
    let (_c, ack) = Client::connect_with(tb.addr, v3).await;
    assert_eq!(
        ack.reason_code, 0x88,
        "3.1.1 return code 3, server unavailable"
    );
    // A clean session is still welcome, and a kept session may come back.
    let (_c, ack) = Client::connect_with(tb.addr, connect_packet(V5, "o3", true)).await;
    assert_eq!(ack.reason_code, 0);
    let mut cp = connect_packet(V5, "o1", false);
    cp.properties.session_expiry_interval = Some(600);
    let (_c, ack) = Client::connect_with(tb.addr, cp).await;
    assert_eq!((ack.reason_code, ack.session_present), (0, true));
    assert_eq!(tb.broker.stats().refused_sessions, 2);
}

async fn offline_queues_share_a_byte_budget(p: Profile) {
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.limits.max_offline_queued_bytes = 4096;
    })
    .await;
    for id in ["away1", "away2"] {
        let mut cp = connect_packet(V5, id, true);
        cp.properties.session_expiry_interval = Some(600);
        let (mut c, _) = Client::connect_with(tb.addr, cp).await;
        c.subscribe(vec![sub("q/#", QoS::AtLeastOnce)]).await;
        c.disconnect().await;
    }
    wait_until("both offline", || tb.broker.stats().clients_connected == 0).await;
    let mut p = Client::connect(tb.addr, V5, "q-pub", true).await;
    for i in 0..100 {
        assert_eq!(
            p.publish(publish("q/x", &format!("{i:0100}"), QoS::AtLeastOnce, 0))
                .await,
            0
        );
    }
    let st = tb.broker.stats();
    assert!(
        st.offline_queued_bytes <= 4096,
        "{}",
        st.offline_queued_bytes
    );
    assert!(
        st.dropped_queue_full > 100,
        "most of 200 deliveries dropped, counted: {}",
        st.dropped_queue_full
    );
    // Coming back releases the charge.
    let mut cp = connect_packet(V5, "away1", false);
    cp.properties.session_expiry_interval = Some(600);
    let (_c, ack) = Client::connect_with(tb.addr, cp).await;
    assert!(ack.session_present);
    assert!(tb.broker.stats().offline_queued_bytes < st.offline_queued_bytes);
}

/// A log that admits and commits only when the test lets it (a full writer queue, a slow disk).
struct GatedLog {
    admit: Arc<Semaphore>,
    commit: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
}

impl PublishHook for GatedLog {
    fn on_publish(&self, _msg: &Arc<Message>) -> Option<AdmissionFuture> {
        let (admit, commit, admitted) = (
            self.admit.clone(),
            self.commit.clone(),
            self.admitted.clone(),
        );
        Some(Box::pin(async move {
            admit.acquire().await.expect("open").forget();
            admitted.fetch_add(1, Ordering::SeqCst);
            let committed: CommitFuture = Box::pin(async move {
                commit.acquire().await.expect("open").forget();
                Ok(())
            });
            Ok(committed)
        }))
    }
}

fn gated(
    tb: &TestBroker,
    admits: usize,
    commits: usize,
) -> (Arc<Semaphore>, Arc<Semaphore>, Arc<AtomicUsize>) {
    let admit = Arc::new(Semaphore::new(admits));
    let commit = Arc::new(Semaphore::new(commits));
    let admitted = Arc::new(AtomicUsize::new(0));
    tb.broker.set_publish_hook(Arc::new(GatedLog {
        admit: admit.clone(),
        commit: commit.clone(),
        admitted: admitted.clone(),
    }));
    (admit, commit, admitted)
}

async fn publishes_pipelined_behind_a_waiting_admission_are_all_logged_and_acknowledged(
    p: Profile,
) {
    // Guards the stuck-acknowledgment bug: a second publish replaced the first one's pending admission, which
    // was then neither logged nor acknowledged.
    let tb = TestBroker::start_with(|c| p.apply(c)).await;
    let (admit, commit, admitted) = gated(&tb, 0, 1000);
    let mut p = Client::connect(tb.addr, V3, "burst", true).await;
    let mut out = BytesMut::new();
    for pid in 1..=50u16 {
        mqtt::encode(
            &Packet::Publish(publish("log/x", "v", QoS::AtLeastOnce, pid)),
            V3,
            &mut out,
        );
    }
    p.send_raw(&out).await;
    admit.add_permits(50);
    let mut acked = Vec::new();
    while acked.len() < 50 {
        match p.recv().await {
            Packet::PubAck(a) => acked.push(a.packet_id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(acked, (1..=50).collect::<Vec<u16>>(), "all, in order");
    assert_eq!(admitted.load(Ordering::SeqCst), 50);
    drop(commit);
}

async fn receive_maximum_is_enforced_for_v5_and_only_flow_controls_v311(p: Profile) {
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.receive_maximum = 5;
    })
    .await;
    let (_admit, commit, _) = gated(&tb, usize::MAX >> 4, 0);
    // v5: a sixth unacknowledged QoS 1 publish breaks the announced quota.
    let mut p = Client::connect(tb.addr, V5, "greedy", true).await;
    for pid in 1..=6u16 {
        p.send(Packet::Publish(publish("rm/x", "v", QoS::AtLeastOnce, pid)))
            .await;
    }
    let d = p.closed().await.expect("DISCONNECT before close");
    assert_eq!(d.reason_code, 0x93);
    // 3.1.1 has no such quota: the broker stops reading until commits free the window, and acknowledges all.
    let mut p = Client::connect(tb.addr, V3, "old", true).await;
    for pid in 1..=8u16 {
        p.send(Packet::Publish(publish("rm/x", "v", QoS::AtLeastOnce, pid)))
            .await;
    }
    assert!(matches!(
        p.recv_within(Duration::from_millis(200)).await,
        Recv::Timeout
    ));
    commit.add_permits(8);
    let mut acked = 0;
    while acked < 8 {
        match p.recv().await {
            Packet::PubAck(_) => acked += 1,
            other => panic!("{other:?}"),
        }
    }
}

async fn connack_carries_server_keep_alive_when_a_maximum_is_set(p: Profile) {
    let tb = TestBroker::start_with(|c| {
        p.apply(c);
        c.max_keepalive = Some(30);
    })
    .await;
    for (asked, told) in [(10, 10), (0, 30), (600, 30)] {
        let mut cp = connect_packet(V5, "ka", true);
        cp.keep_alive = asked;
        let (_c, ack) = Client::connect_with(tb.addr, cp).await;
        assert_eq!(
            ack.properties.server_keep_alive,
            Some(told),
            "asked {asked}"
        );
    }
}

/// A connected subscriber that never reads cannot pin `max_queued_messages` large messages: its queue is also
/// bounded in bytes (`max_queued_bytes`), so publishers wait `max_publish_wait` and it is disconnected. With the
/// count alone, 10,000 one-MiB messages could sit in one client's queue.
#[tokio::test]
async fn a_stuck_subscribers_queue_is_bounded_in_bytes() {
    let tb = TestBroker::start_with(|c| {
        c.max_queued_messages = 10_000;
        c.limits.max_queued_bytes = 1 << 20;
        c.limits.max_publish_wait = Duration::from_millis(200);
    })
    .await;
    let mut stuck = Client::connect(tb.addr, V3, "never-reads", true).await;
    stuck.subscribe(vec![sub("big/#", QoS::AtMostOnce)]).await;
    let link = tb.broker.link("publisher");
    let payload = "x".repeat(256 << 10);
    // 64 MiB in all: more than the sockets' buffers hold, far more than the byte cap.
    within("publishes past a stuck subscriber", async {
        for _ in 0..256 {
            link.publish(Message::new(
                "big/t",
                payload.clone(),
                QoS::AtMostOnce,
                false,
            ))
            .await;
            if tb.broker.stats().slow_consumers_disconnected == 1 {
                break;
            }
        }
    })
    .await;
    assert_eq!(
        tb.broker.stats().slow_consumers_disconnected,
        1,
        "the queue took everything"
    );
    drop(stuck);
}
