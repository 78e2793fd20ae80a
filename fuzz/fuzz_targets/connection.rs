//! Feeds arbitrary packet sequences to one broker connection, after a valid CONNECT in either version, while
//! an in-process subscriber on `#` receives whatever gets through. Nothing may panic or hang (time is virtual:
//! keepalive, packet and publish timeouts fire at once when everything is idle), and afterwards the broker
//! must still accept a fresh client and route its message.
#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use fieldbridge::mqtt::{self, Connect, Packet, Properties, Protocol, QoS};
use fieldbridge::broker::Broker;
use fieldbridge::config::{BrokerConfig, BrokerLimits};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config() -> BrokerConfig {
    BrokerConfig {
        max_connections: 16,
        max_packet_size: 64 * 1024,
        receive_maximum: 8,
        max_queued_messages: 16,
        max_session_expiry: Duration::from_secs(600),
        topic_alias_maximum: 4,
        sys_interval: Duration::ZERO,
        limits: BrokerLimits {
            max_subscriptions_per_client: 8,
            max_retained_messages: 8,
            max_offline_sessions: 2,
            ..BrokerLimits::default()
        },
        ..BrokerConfig::default()
    }
}

fn connect(protocol: Protocol, id: &str, clean: bool) -> Vec<u8> {
    let mut out = BytesMut::new();
    let c = Connect {
        protocol,
        clean_start: clean,
        keep_alive: 5,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    mqtt::encode(&Packet::Connect(Box::new(c)), protocol, &mut out);
    out.to_vec()
}

/// Runs one client over an in-memory pipe: writes `input` in chunks whose sizes come from `cuts`, closes its
/// side, and reads until the broker closes too (the broker must close: the input is over).
async fn session(broker: &Broker, input: &[u8], cuts: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(4 * 1024);
    let b = broker.clone();
    let task = tokio::spawn(async move { b.serve_stream(server).await });
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async move {
        let mut rest = input;
        let mut k = 0;
        while !rest.is_empty() {
            let n = usize::from(cuts.get(k).copied().unwrap_or(255)).clamp(1, rest.len());
            k += 1;
            if wr.write_all(&rest[..n]).await.is_err() {
                return;
            }
            rest = &rest[n..];
            // Give the broker a turn between chunks: half-sent packets and pipelining both happen.
            tokio::task::yield_now().await;
        }
        let _ = wr.shutdown().await;
    };
    let read = async move {
        let mut got = Vec::new();
        let _ = rd.read_to_end(&mut got).await;
        got
    };
    let (_, got) = tokio::time::timeout(Duration::from_secs(3600), async { tokio::join!(write, read) })
        .await
        .expect("the broker closed the connection once the input was over");
    tokio::time::timeout(Duration::from_secs(3600), task)
        .await
        .expect("the connection task ended")
        .expect("the connection task did not panic");
    got
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let protocol = if head & 1 == 0 { Protocol::V311 } else { Protocol::V5 };
    // The first bytes choose chunk sizes; the rest is the packet stream after CONNECT.
    let ncuts = usize::from(head >> 4).min(rest.len());
    let (cuts, body) = rest.split_at(ncuts);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = Broker::new(config());
        let watch = broker.link("watch");
        watch.subscribe("#", QoS::ExactlyOnce).unwrap();
        let mut input = connect(protocol, "fuzzed", head & 2 == 0);
        input.extend_from_slice(body);
        session(&broker, &input, cuts).await;
        while watch.try_recv().is_some() {}
        // Whatever that client did, a well-behaved one is served afterwards.
        let mut ok = connect(Protocol::V5, "after", true);
        let mut tail = BytesMut::new();
        mqtt::encode(
            &Packet::Publish(mqtt::Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "after/fuzz".into(),
                packet_id: 0,
                properties: Properties::default(),
                payload: bytes::Bytes::from_static(b"ok"),
            }),
            Protocol::V5,
            &mut tail,
        );
        mqtt::encode(&Packet::Disconnect(Default::default()), Protocol::V5, &mut tail);
        ok.extend_from_slice(&tail);
        let answer = session(&broker, &ok, &[]).await;
        assert!(answer.len() >= 4 && answer[0] == 0x20, "CONNACK to the next client");
        let routed = std::iter::from_fn(|| watch.try_recv()).any(|r| &*r.msg.topic == "after/fuzz");
        assert!(routed, "the next client's message was routed");
        broker.shutdown(Duration::from_secs(1)).await;
    });
});
