//! Broker behaviour the CLI clients cannot express, checked packet by packet with the raw test client.
use std::sync::Arc;

use bytes::Bytes;
use fieldbridge::broker::Message;
use fieldbridge::mqtt::{
    Disconnect, Packet, Properties, Protocol, QoS, RetainHandling, Unsubscribe,
};

use crate::util::client::{connect_packet, publish, resp, sub, will, Client, Recv};
use crate::util::{wait_until, within, TestBroker};

const V5: Protocol = Protocol::V5;
const V3: Protocol = Protocol::V311;

#[tokio::test]
async fn qos_levels_both_directions_and_downgrade() {
    let tb = TestBroker::start().await;
    for proto in [V3, V5] {
        let mut s = Client::connect(tb.addr, proto, "sub", true).await;
        let ack = s
            .subscribe(vec![
                sub("q/2", QoS::ExactlyOnce),
                sub("q/1", QoS::AtLeastOnce),
            ])
            .await;
        assert_eq!(ack.reason_codes, vec![2, 1]);
        let mut p = Client::connect(tb.addr, proto, "pub", true).await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_eq!(p.publish(publish("q/2", "x", qos, 0)).await, 0);
            let got = s.recv_publish().await;
            assert_eq!(got.qos, qos, "{proto:?}: delivered at the published QoS");
            assert_eq!(&got.payload[..], b"x");
        }
        // Granted QoS 1: a QoS 2 publish is downgraded.
        p.publish(publish("q/1", "y", QoS::ExactlyOnce, 0)).await;
        assert_eq!(s.recv_publish().await.qos, QoS::AtLeastOnce);
        p.disconnect().await;
        s.disconnect().await;
    }
}

#[tokio::test]
async fn qos2_retransmission_is_delivered_once() {
    let tb = TestBroker::start().await;
    let mut s = Client::connect(tb.addr, V5, "s", true).await;
    s.subscribe(vec![sub("t", QoS::ExactlyOnce)]).await;
    let mut p = Client::connect(tb.addr, V5, "p", true).await;
    let mut first = publish("t", "once", QoS::ExactlyOnce, 7);
    p.send(Packet::Publish(first.clone())).await;
    assert!(matches!(p.recv().await, Packet::PubRec(r) if r.packet_id == 7));
    first.dup = true;
    p.send(Packet::Publish(first)).await;
    assert!(matches!(p.recv().await, Packet::PubRec(r) if r.packet_id == 7));
    p.send(Packet::PubRel(resp(7))).await;
    assert!(matches!(p.recv().await, Packet::PubComp(r) if r.packet_id == 7 && r.reason_code == 0));
    // A PUBREL for an unknown id gets "packet identifier not found".
    p.send(Packet::PubRel(resp(8))).await;
    assert!(matches!(p.recv().await, Packet::PubComp(r) if r.reason_code == 0x92));
    p.publish(publish("t", "marker", QoS::AtMostOnce, 0)).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"once");
    assert_eq!(&s.recv_publish().await.payload[..], b"marker");
}

#[tokio::test]
async fn persistent_session_queues_offline_and_redelivers_unacked_with_dup() {
    let tb = TestBroker::start().await;
    for proto in [V3, V5] {
        let id = format!("persist-{proto:?}");
        let mut c = connect_packet(proto, &id, true);
        c.properties.session_expiry_interval = (proto == V5).then_some(3600);
        c.clean_start = true;
        let (mut s, _) = Client::connect_with(tb.addr, c.clone()).await;
        // v3.1.1: clean session = false is what makes it persistent.
        if proto == V3 {
            s.disconnect().await;
            let mut c3 = c.clone();
            c3.clean_start = false;
            let (s2, ack) = Client::connect_with(tb.addr, c3).await;
            assert!(!ack.session_present);
            s = s2;
        }
        s.subscribe(vec![sub("p/#", QoS::AtLeastOnce)]).await;
        let mut p = Client::connect(tb.addr, proto, &format!("pub-{proto:?}"), true).await;
        p.publish(publish("p/1", "m1", QoS::AtLeastOnce, 0)).await;
        // Receive m1 but do not acknowledge it, then drop the connection.
        match s.recv().await {
            Packet::Publish(m) => assert_eq!(&m.payload[..], b"m1"),
            other => panic!("{other:?}"),
        }
        drop(s);
        wait_until("subscriber detached", || {
            tb.broker.stats().clients_connected == 1
        })
        .await;
        p.publish(publish("p/2", "m2", QoS::AtLeastOnce, 0)).await;
        p.publish(publish("p/3", "m3", QoS::AtMostOnce, 0)).await;

        let mut resume = c.clone();
        resume.clean_start = false;
        let (mut s, ack) = Client::connect_with(tb.addr, resume).await;
        assert!(ack.session_present, "{proto:?}: session resumed");
        let m1 = s.recv_publish().await;
        assert!(m1.dup, "unacknowledged message is resent with DUP");
        assert_eq!(&m1.payload[..], b"m1");
        let m2 = s.recv_publish().await;
        assert!(!m2.dup);
        assert_eq!(&m2.payload[..], b"m2");
        // QoS 0 messages are not queued for offline sessions.
        assert!(s.ping().await.is_empty());
        s.disconnect().await;
        p.disconnect().await;
    }
}

#[tokio::test]
async fn offline_queue_overflow_is_counted() {
    let tb = TestBroker::start_with(|c| c.max_queued_messages = 3).await;
    let mut c = connect_packet(V5, "slow", true);
    c.properties.session_expiry_interval = Some(600);
    let (mut s, _) = Client::connect_with(tb.addr, c.clone()).await;
    s.subscribe(vec![sub("o", QoS::AtLeastOnce)]).await;
    s.disconnect().await;
    wait_until("detached", || tb.broker.stats().clients_connected == 0).await;
    let mut p = Client::connect(tb.addr, V5, "p", true).await;
    for i in 0..5 {
        p.publish(publish("o", &i.to_string(), QoS::AtLeastOnce, 0))
            .await;
    }
    assert_eq!(tb.broker.stats().dropped_queue_full, 2);
    c.clean_start = false;
    let (mut s, _) = Client::connect_with(tb.addr, c).await;
    let got: Vec<Bytes> = vec![
        s.recv_publish().await.payload,
        s.recv_publish().await.payload,
        s.recv_publish().await.payload,
    ];
    assert_eq!(
        got,
        vec![Bytes::from("0"), Bytes::from("1"), Bytes::from("2")]
    );
    assert!(s.ping().await.is_empty());
}

#[tokio::test]
async fn session_expiry_zero_discards_and_clean_start_resets() {
    let tb = TestBroker::start().await;
    let mut s = Client::connect(tb.addr, V5, "ephemeral", false).await;
    s.subscribe(vec![sub("e", QoS::AtLeastOnce)]).await;
    s.disconnect().await;
    wait_until("session removed", || tb.broker.stats().sessions == 0).await;
    // Kept connected from here on: the only session left at the end.
    let (_ephemeral, ack) =
        Client::connect_with(tb.addr, connect_packet(V5, "ephemeral", false)).await;
    assert!(!ack.session_present);

    // Expiry 60 s: the session outlives its connection (resumed, present).
    let mut c = connect_packet(V5, "long", true);
    c.properties.session_expiry_interval = Some(60);
    let (l, _) = Client::connect_with(tb.addr, c).await;
    l.disconnect().await;
    let mut again = connect_packet(V5, "long", false);
    again.properties.session_expiry_interval = Some(0);
    let (l, ack) = Client::connect_with(tb.addr, again).await;
    assert!(ack.session_present, "a session with an expiry was kept");
    l.disconnect().await;
    wait_until("session ended with expiry 0", || {
        tb.broker.stats().sessions == 1
    })
    .await;

    // Expiry 1 s: the session goes away by itself after the client leaves, and is not resumed.
    let mut c = connect_packet(V5, "short", true);
    c.properties.session_expiry_interval = Some(1);
    let (s, _) = Client::connect_with(tb.addr, c).await;
    s.disconnect().await;
    wait_until("expired session removed", || {
        tb.broker.stats().sessions == 1 // only "ephemeral" (still connected) remains
    })
    .await;
    let (_s, ack) = Client::connect_with(tb.addr, connect_packet(V5, "short", false)).await;
    assert!(!ack.session_present, "the expired session was resumed");
}

#[tokio::test]
async fn retained_set_replace_clear_and_handling_options() {
    let tb = TestBroker::start().await;
    let mut p = Client::connect(tb.addr, V5, "p", true).await;
    let mut r = publish("r/a", "1", QoS::AtLeastOnce, 0);
    r.retain = true;
    p.publish(r.clone()).await;
    r.payload = Bytes::from("2");
    p.publish(r.clone()).await;
    let mut other = publish("r/b", "b", QoS::AtMostOnce, 0);
    other.retain = true;
    p.publish(other).await;

    let mut s = Client::connect(tb.addr, V5, "s", true).await;
    s.subscribe(vec![sub("r/a", QoS::AtLeastOnce)]).await;
    let got = s.recv_publish().await;
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"2", "replaced");
    // Retain handling 1: only for a new subscription.
    let mut again = sub("r/a", QoS::AtLeastOnce);
    again.retain_handling = RetainHandling::SendIfNew;
    s.subscribe(vec![again]).await;
    let mut never = sub("r/b", QoS::AtLeastOnce);
    never.retain_handling = RetainHandling::DoNotSend;
    s.subscribe(vec![never]).await;
    assert!(
        s.ping().await.is_empty(),
        "no retained for handling 1 (existing) and 2"
    );

    // Live delivery clears RETAIN unless retain-as-published.
    let mut rap = sub("r/#", QoS::AtLeastOnce);
    rap.retain_as_published = true;
    rap.retain_handling = RetainHandling::DoNotSend;
    let mut s2 = Client::connect(tb.addr, V5, "s2", true).await;
    s2.subscribe(vec![rap]).await;
    r.payload = Bytes::from("3");
    p.publish(r.clone()).await;
    assert!(!s.recv_publish().await.retain);
    assert!(s2.recv_publish().await.retain);

    // Clear with an empty payload.
    r.payload = Bytes::new();
    p.publish(r).await;
    let cleared = s.recv_publish().await;
    assert!(cleared.payload.is_empty());
    let mut s3 = Client::connect(tb.addr, V3, "s3", true).await;
    s3.subscribe(vec![sub("r/#", QoS::AtLeastOnce)]).await;
    let only = s3.recv_publish().await;
    assert_eq!(&*only.topic, "r/b");
    assert!(s3.ping().await.is_empty());
}

#[tokio::test]
async fn will_on_unclean_close_not_on_clean_disconnect() {
    let tb = TestBroker::start().await;
    let mut w = Client::connect(tb.addr, V3, "watch", true).await;
    w.subscribe(vec![sub("will/#", QoS::AtLeastOnce)]).await;

    let mut c = connect_packet(V3, "dies", true);
    c.will = Some(will("will/dies", "gone", QoS::AtLeastOnce));
    let (dies, _) = Client::connect_with(tb.addr, c).await;
    drop(dies);
    let got = w.recv_publish().await;
    assert_eq!(&*got.topic, "will/dies");
    assert_eq!(&got.payload[..], b"gone");

    let mut c = connect_packet(V3, "polite", true);
    c.will = Some(will("will/polite", "gone", QoS::AtLeastOnce));
    let (polite, _) = Client::connect_with(tb.addr, c).await;
    polite.disconnect().await;
    wait_until("polite detached", || {
        tb.broker.stats().clients_connected == 1
    })
    .await;
    let mut m = Client::connect(tb.addr, V3, "marker", true).await;
    m.publish(publish("will/marker", "m", QoS::AtLeastOnce, 0))
        .await;
    assert_eq!(
        &*w.recv_publish().await.topic,
        "will/marker",
        "no will before the marker"
    );

    // v5 DISCONNECT with reason 0x04 asks for the will.
    let mut c = connect_packet(V5, "asks", true);
    c.will = Some(will("will/asks", "w", QoS::AtMostOnce));
    let (mut asks, _) = Client::connect_with(tb.addr, c).await;
    asks.send(Packet::Disconnect(Disconnect {
        reason_code: 0x04,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(&*w.recv_publish().await.topic, "will/asks");
}

#[tokio::test]
async fn will_delay_is_cancelled_by_reconnect_and_fires_otherwise() {
    let tb = TestBroker::start().await;
    let mut w = Client::connect(tb.addr, V5, "watch", true).await;
    w.subscribe(vec![sub("wd/#", QoS::AtLeastOnce)]).await;
    let mk = |id: &str| {
        let mut c = connect_packet(V5, id, true);
        c.properties.session_expiry_interval = Some(600);
        let mut wl = will(&format!("wd/{id}"), "late", QoS::AtLeastOnce);
        wl.properties.will_delay_interval = Some(1);
        c.will = Some(wl);
        c
    };
    // Comes back within the delay (immediately): its will must never be sent.
    let (back, _) = Client::connect_with(tb.addr, mk("back")).await;
    drop(back);
    let mut again = mk("back");
    again.clean_start = false;
    again.will = None;
    let (_back2, ack) = Client::connect_with(tb.addr, again).await;
    assert!(ack.session_present);
    // Does not come back: its will is sent after the delay. Its arrival also proves that "back"'s will (same
    // delay, earlier) was cancelled: it would have arrived first.
    let (gone, _) = Client::connect_with(tb.addr, mk("gone")).await;
    drop(gone);
    let got = w.recv_publish().await;
    assert_eq!(&*got.topic, "wd/gone");
}

#[tokio::test]
async fn keepalive_timeout_closes_with_will_and_zero_keepalive_is_accepted() {
    let tb = TestBroker::start().await;
    let mut w = Client::connect(tb.addr, V5, "watch", true).await;
    w.subscribe(vec![sub("ka/#", QoS::AtLeastOnce)]).await;
    let mut zero = connect_packet(V5, "zero", true);
    zero.keep_alive = 0;
    let (mut zero, ack) = Client::connect_with(tb.addr, zero).await;
    assert_eq!(ack.reason_code, 0);
    assert_eq!(ack.properties.server_keep_alive, None);

    let mut c = connect_packet(V5, "silent", true);
    c.keep_alive = 1;
    c.will = Some(will("ka/silent", "timeout", QoS::AtLeastOnce));
    let (mut silent, _) = Client::connect_with(tb.addr, c).await;
    let d = within("keepalive disconnect", silent.closed()).await;
    assert_eq!(d.map(|d| d.reason_code), Some(0x8D));
    assert_eq!(&*w.recv_publish().await.topic, "ka/silent");
    // The keepalive-0 client, silent all along, is still served.
    assert!(zero.ping().await.is_empty());
}

#[tokio::test]
async fn wildcards_dollar_topics_overlap_and_subscription_ids() {
    let tb = TestBroker::start_with(|c| c.sys_interval = std::time::Duration::ZERO).await;
    let mut s = Client::connect(tb.addr, V5, "s", true).await;
    let props = Properties {
        subscription_identifiers: vec![11],
        ..Default::default()
    };
    s.subscribe_with(vec![sub("a/+/c", QoS::AtMostOnce)], props)
        .await;
    let props = Properties {
        subscription_identifiers: vec![22],
        ..Default::default()
    };
    s.subscribe_with(vec![sub("a/#", QoS::AtLeastOnce)], props)
        .await;
    s.subscribe(vec![sub("#", QoS::AtMostOnce)]).await;
    let mut p = Client::connect(tb.addr, V5, "p", true).await;
    p.publish(publish("$internal/x", "hidden", QoS::AtMostOnce, 0))
        .await;
    p.publish(publish("a/b/c", "m", QoS::AtLeastOnce, 0)).await;
    let got = s.recv_publish().await;
    assert_eq!(&*got.topic, "a/b/c", "$-topic not matched by # ");
    assert_eq!(
        got.qos,
        QoS::AtLeastOnce,
        "one delivery at the highest granted QoS"
    );
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![11, 22]);
    assert!(
        s.ping().await.is_empty(),
        "delivered once despite three matching subscriptions"
    );
    // Unsubscribe reports what existed.
    s.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 99,
        properties: Properties::default(),
        filters: vec!["a/#".into(), "nope".into()],
    }))
    .await;
    match s.recv().await {
        Packet::UnsubAck(a) => assert_eq!(a.reason_codes, vec![0x00, 0x11]),
        other => panic!("{other:?}"),
    }
    // Invalid filters are refused per filter.
    let ack = s
        .subscribe(vec![
            sub("a/#/b", QoS::AtMostOnce),
            sub("ok/+", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(ack.reason_codes, vec![0x8F, 0x00]);
}

#[tokio::test]
async fn shared_subscriptions_split_the_stream() {
    let tb = TestBroker::start().await;
    let mut a = Client::connect(tb.addr, V5, "a", true).await;
    let mut b = Client::connect(tb.addr, V5, "b", true).await;
    a.subscribe(vec![sub("$share/g/jobs/#", QoS::AtLeastOnce)])
        .await;
    b.subscribe(vec![sub("$share/g/jobs/#", QoS::AtLeastOnce)])
        .await;
    let mut p = Client::connect(tb.addr, V5, "p", true).await;
    for i in 0..10 {
        p.publish(publish("jobs/x", &i.to_string(), QoS::AtLeastOnce, 0))
            .await;
    }
    let mut seen = Vec::new();
    for c in [&mut a, &mut b] {
        let mut n = 0;
        for p in c.ping().await {
            if let Packet::Publish(m) = p {
                c.ack(&m).await;
                seen.push(String::from_utf8(m.payload.to_vec()).unwrap());
                n += 1;
            }
        }
        assert!(n > 0, "each member gets a share");
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(
        seen,
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each message exactly once"
    );
}

#[tokio::test]
async fn no_local_and_properties_pass_through() {
    let tb = TestBroker::start().await;
    let mut c = Client::connect(tb.addr, V5, "self", true).await;
    let mut nl = sub("nl/#", QoS::AtLeastOnce);
    nl.no_local = true;
    c.subscribe(vec![nl]).await;
    c.publish(publish("nl/x", "mine", QoS::AtLeastOnce, 0))
        .await;
    let mut other = Client::connect(tb.addr, V5, "other", true).await;
    let mut m = publish("nl/x", "theirs", QoS::AtLeastOnce, 0);
    m.properties.user_properties = vec![("k".into(), "v".into()), ("k".into(), "v2".into())];
    m.properties.content_type = Some("application/json".into());
    m.properties.response_topic = Some("reply/here".into());
    m.properties.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
    m.properties.payload_format_indicator = Some(1);
    other.publish(m).await;
    let got = c.recv_publish().await;
    assert_eq!(
        &got.payload[..],
        b"theirs",
        "own publish not delivered with no-local"
    );
    assert_eq!(got.properties.user_properties.len(), 2);
    assert_eq!(
        got.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(got.properties.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(
        got.properties.correlation_data.as_deref(),
        Some(&b"\x01\x02"[..])
    );
    assert_eq!(got.properties.payload_format_indicator, Some(1));
}

#[tokio::test]
async fn topic_aliases_both_directions() {
    let tb = TestBroker::start().await;
    let mut c = connect_packet(V5, "s", true);
    c.properties.topic_alias_maximum = Some(4);
    let (mut s, _) = Client::connect_with(tb.addr, c).await;
    s.subscribe(vec![sub("alias/#", QoS::AtMostOnce)]).await;
    let (mut p, ack) = Client::connect_with(tb.addr, connect_packet(V5, "p", true)).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(16));
    let mut first = publish("alias/long/topic", "1", QoS::AtMostOnce, 0);
    first.properties.topic_alias = Some(3);
    p.publish(first).await;
    let mut second = publish("", "2", QoS::AtMostOnce, 0);
    second.properties.topic_alias = Some(3);
    p.publish(second).await;
    let a = s.recv_publish().await;
    let b = s.recv_publish().await;
    assert_eq!(&*a.topic, "alias/long/topic");
    let alias = a.properties.topic_alias.expect("broker assigns an alias");
    assert_eq!(&*b.topic, "", "second delivery uses the alias only");
    assert_eq!(b.properties.topic_alias, Some(alias));
    // An alias beyond the advertised maximum is a protocol error.
    let mut bad = publish("alias/x", "3", QoS::AtMostOnce, 0);
    bad.properties.topic_alias = Some(17);
    p.send(Packet::Publish(bad)).await;
    assert_eq!(p.closed().await.map(|d| d.reason_code), Some(0x94));
}

#[tokio::test]
async fn message_expiry_and_client_maximum_packet_size() {
    let tb = TestBroker::start().await;
    let mut c = connect_packet(V5, "small", true);
    c.properties.maximum_packet_size = Some(64);
    let (mut s, _) = Client::connect_with(tb.addr, c).await;
    s.subscribe(vec![sub("big/#", QoS::AtLeastOnce)]).await;
    let mut p = Client::connect(tb.addr, V5, "p", true).await;
    p.publish(publish("big/1", &"x".repeat(200), QoS::AtLeastOnce, 0))
        .await;
    p.publish(publish("big/2", "fits", QoS::AtLeastOnce, 0))
        .await;
    let got = s.recv_publish().await;
    assert_eq!(&*got.topic, "big/2", "oversized message skipped");
    assert_eq!(tb.broker.stats().dropped_too_large, 1);

    let mut r = publish("exp/x", "soon gone", QoS::AtLeastOnce, 0);
    r.retain = true;
    r.properties.message_expiry_interval = Some(100);
    p.publish(r).await;
    let mut s2 = Client::connect(tb.addr, V5, "s2", true).await;
    s2.subscribe(vec![sub("exp/#", QoS::AtLeastOnce)]).await;
    let got = s2.recv_publish().await;
    let left = got
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!((1..=100).contains(&left), "remaining expiry {left}");
}

#[tokio::test]
async fn client_receive_maximum_limits_inflight() {
    let tb = TestBroker::start().await;
    let mut c = connect_packet(V5, "s", true);
    c.properties.receive_maximum = Some(2);
    let (mut s, _) = Client::connect_with(tb.addr, c).await;
    s.subscribe(vec![sub("rm", QoS::AtLeastOnce)]).await;
    let mut p = Client::connect(tb.addr, V5, "p", true).await;
    for i in 0..5 {
        p.publish(publish("rm", &i.to_string(), QoS::AtLeastOnce, 0))
            .await;
    }
    let first = s.ping().await;
    assert_eq!(
        first.len(),
        2,
        "only receive-maximum messages in flight: {first:?}"
    );
    let mut total = 0;
    let mut pending = first;
    while !pending.is_empty() {
        for p in &pending {
            if let Packet::Publish(m) = p {
                total += 1;
                s.send(Packet::PubAck(resp(m.packet_id))).await;
            }
        }
        pending = s.ping().await;
        assert!(pending.len() <= 2);
    }
    assert_eq!(total, 5);
}

#[tokio::test]
async fn client_id_rules_and_takeover() {
    let tb = TestBroker::start().await;
    let (_c, ack) = Client::connect_with(tb.addr, connect_packet(V5, "", true)).await;
    assert_eq!(ack.reason_code, 0);
    assert!(ack.properties.assigned_client_identifier.is_some());
    let (_c, ack) = Client::connect_with(tb.addr, connect_packet(V3, "", true)).await;
    assert_eq!(ack.reason_code, 0);
    let (_c, ack) = Client::connect_with(tb.addr, connect_packet(V3, "", false)).await;
    assert_ne!(ack.reason_code, 0, "3.1.1: empty id needs clean session");

    let mut first = Client::connect(tb.addr, V5, "dup", true).await;
    let _second = Client::connect(tb.addr, V5, "dup", true).await;
    assert_eq!(first.closed().await.map(|d| d.reason_code), Some(0x8E));
}

#[tokio::test]
async fn malformed_input_closes_one_connection_only() {
    let tb = TestBroker::start().await;
    let mut healthy = Client::connect(tb.addr, V5, "healthy", true).await;
    healthy.subscribe(vec![sub("h", QoS::AtLeastOnce)]).await;
    // Garbage before CONNECT.
    let mut g = Client::open(tb.addr, V5).await;
    g.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00]).await;
    assert!(matches!(
        g.recv_within(crate::util::WAIT).await,
        Recv::Closed
    ));
    // A SUBSCRIBE with wrong fixed-header flags after a valid CONNECT: v5 DISCONNECT with malformed packet.
    let mut m = Client::connect(tb.addr, V5, "bad", true).await;
    m.send_raw(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'])
        .await;
    let d = m.closed().await;
    assert!(matches!(d.map(|d| d.reason_code), Some(0x81) | Some(0x82)));
    // Unsupported protocol level: CONNACK refusal.
    let mut v = Client::open(tb.addr, V3).await;
    v.send_raw(&[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x07, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ])
    .await;
    match v.recv().await {
        Packet::ConnAck(a) => assert_ne!(a.reason_code, 0),
        other => panic!("{other:?}"),
    }
    // The broker carries on.
    let mut p = Client::connect(tb.addr, V3, "after", true).await;
    p.publish(publish("h", "still here", QoS::AtLeastOnce, 0))
        .await;
    assert_eq!(&healthy.recv_publish().await.payload[..], b"still here");
    assert!(tb.broker.stats().protocol_errors >= 2);
}

#[tokio::test]
async fn authentication_acl_and_connection_limit() {
    use fieldbridge::config::{AclAccess, AclRule, AclWho, UserConfig};
    let tb = TestBroker::start_with(|c| {
        c.allow_anonymous = false;
        c.users = vec![UserConfig {
            username: "op".into(),
            password: "pw".into(),
        }];
        c.acl = vec![
            AclRule {
                who: AclWho::User("op".into()),
                filter: "plant/#".into(),
                access: AclAccess::All,
                allow: true,
            },
            AclRule {
                who: AclWho::Everyone,
                filter: "#".into(),
                access: AclAccess::All,
                allow: false,
            },
        ];
        c.max_connections = 2;
    })
    .await;
    let (_a, ack) = Client::connect_with(tb.addr, connect_packet(V5, "anon", true)).await;
    assert_eq!(ack.reason_code, 0x87);
    let mut bad = connect_packet(V3, "bad", true);
    bad.username = Some("op".into());
    bad.password = Some(Bytes::from_static(b"wrong"));
    let (_b, ack) = Client::connect_with(tb.addr, bad).await;
    assert_eq!(ack.reason_code, 0x86, "mapped to 3.1.1 code 4 on the wire");
    let mut good = connect_packet(V5, "good", true);
    good.username = Some("op".into());
    good.password = Some(Bytes::from_static(b"pw"));
    let (mut c, ack) = Client::connect_with(tb.addr, good.clone()).await;
    assert_eq!(ack.reason_code, 0);
    let ack = c
        .subscribe(vec![
            sub("plant/#", QoS::AtLeastOnce),
            sub("other/#", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(ack.reason_codes, vec![1, 0x87]);
    assert_eq!(
        c.publish(publish("other/x", "no", QoS::AtLeastOnce, 0))
            .await,
        0x87
    );
    assert_eq!(
        c.publish(publish("plant/x", "yes", QoS::AtLeastOnce, 0))
            .await,
        0
    );
    assert_eq!(&c.recv_publish().await.payload[..], b"yes");
    // Connection limit: two open (c and the next), the third is refused as busy.
    good.client_id = "good2".into();
    let (_c2, ack) = Client::connect_with(tb.addr, good.clone()).await;
    assert_eq!(ack.reason_code, 0);
    good.client_id = "good3".into();
    let (_c3, ack) = Client::connect_with(tb.addr, good).await;
    assert_eq!(ack.reason_code, 0x89);
}

#[tokio::test]
async fn in_process_link_both_ways_and_sys_topics() {
    let tb = TestBroker::start().await;
    let link = tb.broker.link("pipeline");
    link.subscribe("cmd/#", QoS::AtLeastOnce).unwrap();
    let mut c = Client::connect(tb.addr, V3, "app", true).await;
    c.subscribe(vec![
        sub("data/#", QoS::AtLeastOnce),
        sub("$SYS/broker/version", QoS::AtMostOnce),
    ])
    .await;
    link.publish(Message::new("data/t", "21.5", QoS::AtLeastOnce, false))
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"21.5");
    c.publish(publish("cmd/set", "on", QoS::AtLeastOnce, 0))
        .await;
    let got = within("link receives", link.recv()).await;
    assert_eq!(&*got.msg.topic, "cmd/set");
    assert_eq!(&got.msg.payload[..], b"on");
    // A client cannot publish (or retain) under `$SYS`: refused like an ACL denial, never delivered.
    let mut faker = Client::connect(tb.addr, V5, "faker", true).await;
    let mut fake = publish("$SYS/broker/version", "spoofed 6.6.6", QoS::AtLeastOnce, 0);
    fake.retain = true;
    assert_eq!(faker.publish(fake).await, 0x87);
    tb.broker.publish_sys().await;
    let v = c.recv_publish().await;
    assert!(
        String::from_utf8_lossy(&v.payload).starts_with("fieldbridge "),
        "{v:?}"
    );
    drop(link);
    assert_eq!(
        tb.broker.stats().subscriptions,
        2,
        "link's subscription removed with it"
    );
    // What a later subscriber finds retained is the broker's own version, not the fake.
    let mut late = Client::connect(tb.addr, V3, "late", true).await;
    late.subscribe(vec![sub("$SYS/broker/version", QoS::AtMostOnce)])
        .await;
    let r = late.recv_publish().await;
    assert!(
        r.retain && String::from_utf8_lossy(&r.payload).starts_with("fieldbridge "),
        "{r:?}"
    );
    let _ = Arc::new(());
}

#[tokio::test]
async fn qos1_flood_from_many_publishers_loses_nothing() {
    // Back-pressure instead of loss: a small per-session queue, ten fast publishers, one subscriber.
    let tb = TestBroker::start_with(|c| c.max_queued_messages = 16).await;
    let mut s = Client::connect(tb.addr, V3, "sink", true).await;
    s.subscribe(vec![sub("flood/#", QoS::AtLeastOnce)]).await;
    let per = 300u32;
    let mut handles = Vec::new();
    for i in 0..10 {
        let addr = tb.addr;
        handles.push(tokio::spawn(async move {
            let mut p = Client::connect(addr, V3, &format!("p{i}"), true).await;
            for n in 0..per {
                p.publish(publish(
                    &format!("flood/{i}"),
                    &n.to_string(),
                    QoS::AtLeastOnce,
                    0,
                ))
                .await;
            }
            p.disconnect().await;
        }));
    }
    let mut last = [None::<u32>; 10];
    for _ in 0..(10 * per) {
        let m = s.recv_publish().await;
        let i: usize = m.topic.rsplit('/').next().unwrap().parse().unwrap();
        let n: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        assert_eq!(n, last[i].map_or(0, |l| l + 1), "in order per publisher");
        last[i] = Some(n);
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(tb.broker.stats().dropped_queue_full, 0);
}

/// A connection taken over by a new one with the same client id leaves with its own will (5.0 §3.1.4), as
/// mosquitto does, for 3.1.1 and 5.0, with a clean start or a resumed session; the new connection keeps its
/// own will. (The taken-over connection used to find the new connection's will in the session and publish
/// that one, so no will told of the first connection's end.)
#[tokio::test]
async fn a_taken_over_connection_sends_its_own_will_and_the_new_one_keeps_its_own() {
    let tb = TestBroker::start().await;
    let mut w = Client::connect(tb.addr, V5, "watch", true).await;
    w.subscribe(vec![sub("tw/#", QoS::AtLeastOnce)]).await;
    for (protocol, clean) in [(V3, true), (V3, false), (V5, true), (V5, false)] {
        let id = format!("taken-{protocol:?}-{clean}");
        let mk = |payload: &str| {
            let mut c = connect_packet(protocol, &id, clean);
            if protocol == V5 {
                c.properties.session_expiry_interval = Some(600);
            }
            c.will = Some(will(&format!("tw/{id}"), payload, QoS::AtLeastOnce));
            c
        };
        let (_first, _) = Client::connect_with(tb.addr, mk("first-gone")).await;
        let (second, _) = Client::connect_with(tb.addr, mk("second-gone")).await;
        let got = w.recv_publish().await;
        assert_eq!(
            (&*got.topic, &got.payload[..]),
            (format!("tw/{id}").as_str(), &b"first-gone"[..]),
            "{protocol:?} clean={clean}"
        );
        // The new connection's will is still there: an unclean end sends it.
        drop(second);
        let got = w.recv_publish().await;
        assert_eq!(
            &got.payload[..],
            b"second-gone",
            "{protocol:?} clean={clean}"
        );
    }
}
