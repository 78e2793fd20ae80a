//! The client on its own: RFC 7252 retransmission through a relay that loses datagrams, in front of
//! libcoap's server; answers only a scripted raw UDP server gives (a whole large representation in one
//! datagram, ACKs with another message id).
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{MessageType, Packet};
use fieldbridge_coap::{wire, Client, ClientError, Transmission};

use crate::util::*;

/// A relay to `server` that drops the first `lose` requests it receives; returns its address and a counter
/// of requests received.
async fn dropping_relay(server: SocketAddr, lose: u32) -> (SocketAddr, Arc<AtomicU32>) {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    back.connect(server).await.expect("connect");
    let addr = front.local_addr().expect("addr");
    let seen = Arc::new(AtomicU32::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut client = None;
        let (mut a, mut b) = ([0u8; 1500], [0u8; 1500]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if count.fetch_add(1, Ordering::SeqCst) < lose {
                        continue;
                    }
                    let _ = back.send(&a[..n]).await;
                }
                r = back.recv(&mut b) => {
                    let Ok(n) = r else { return };
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, seen)
}

fn fast(max_retransmit: u32) -> Transmission {
    Transmission {
        ack_timeout: Duration::from_millis(100),
        max_retransmit,
        ..Transmission::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_requests_are_retransmitted() {
    let server = libcoap_server(free_udp_port());
    let target: SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    let (relay, seen) = dropping_relay(target, 2).await;
    let c = Client::connect(&relay.to_string(), fast(2))
        .await
        .expect("client");
    let resp = c
        .get("/time", None)
        .await
        .expect("third transmission answered");
    assert!(resp.is_success(), "{resp:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(c.stats().retransmissions.load(Ordering::Relaxed), 2);

    // One retransmission is not enough for two losses.
    let (relay, seen) = dropping_relay(target, 2).await;
    let c = Client::connect(&relay.to_string(), fast(1))
        .await
        .expect("client");
    assert_eq!(c.get("/time", None).await, Err(ClientError::Timeout(2)));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

/// `{"pad":"…","value":42}` (application/json) as the piggybacked answer to `req`, of `len` bytes, or (with
/// `datagram`) filling a datagram of exactly that many bytes: the whole representation, Block2 ignored.
fn whole_representation(req: &Packet, len: usize, datagram: bool) -> Packet {
    let p = piggybacked(req, req.header.message_id, &[], Some(50));
    let len = if datagram {
        // Header, token, options and the payload marker.
        len - (p.to_bytes_unlimited().expect("encode").len() + 1)
    } else {
        len
    };
    piggybacked(req, req.header.message_id, &json_of_len(len), Some(50))
}

/// The whole representation in one datagram by path: `/3k` 3,000 bytes of JSON, `/max` a datagram of 65,507
/// bytes (the most UDP carries over IPv4).
async fn large_datagram_server() -> (SocketAddr, Arc<AtomicU32>) {
    scripted_server(|req| {
        vec![match wire::uri_path(req).as_str() {
            "/max" => whole_representation(req, 65_507, true),
            _ => whole_representation(req, 3000, false),
        }]
    })
    .await
}

fn with_max_body(max_body: usize) -> Transmission {
    Transmission {
        // Long enough that nothing is retransmitted on a loaded machine: each answer below is the first one.
        ack_timeout: Duration::from_secs(1),
        max_retransmit: 2,
        max_body,
        ..Transmission::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_representation_in_one_large_datagram_is_received() {
    let (server, seen) = large_datagram_server().await;
    let c = Client::connect(&server.to_string(), with_max_body(16 * 1024))
        .await
        .expect("client");
    let resp = c
        .get("/3k", None)
        .await
        .expect("a 3 KB answer in one datagram");
    assert!(resp.is_success(), "{resp:?}");
    assert_eq!(resp.content_format, Some(50));
    assert_eq!(resp.payload, json_of_len(3000));

    // Up to the largest UDP datagram, when max_body allows the representation.
    let c = Client::connect(&server.to_string(), with_max_body(64 * 1024))
        .await
        .expect("client");
    let resp = c.get("/max", None).await.expect("a 65,507-byte datagram");
    assert_eq!(
        resp.payload.len(),
        65_507 - 15,
        "header 4, token 8, option 2, marker 1"
    );
    assert_eq!(resp.payload, json_of_len(resp.payload.len()));
    assert_eq!(seen.load(Ordering::SeqCst), 2, "one transmission each");
    assert_eq!(c.stats().malformed.load(Ordering::Relaxed), 0);
    assert_eq!(c.stats().retransmissions.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_datagram_over_max_body_names_its_size_and_the_limit() {
    let (server, seen) = large_datagram_server().await;
    let c = Client::connect(&server.to_string(), with_max_body(1024))
        .await
        .expect("client");
    let err = c
        .get("/3k", None)
        .await
        .expect_err("3,000 bytes are over max_body 1024");
    assert_eq!(
        err,
        ClientError::TooLarge {
            size: 3000,
            partial: false,
            max: 1024
        }
    );
    assert_eq!(
        err.to_string(),
        "representation of 3000 bytes is larger than 1024 bytes (max_body)"
    );
    assert!(!err.is_timeout(), "the server answered");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "answered at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_with_another_message_id_is_ignored_and_the_right_one_accepted() {
    // The first transmission of a request is answered with a piggybacked ACK carrying our token but another
    // message id (and a wrong value); the retransmission with that again, then the correct ACK.
    let mut first = HashSet::new();
    let (server, seen) = scripted_server(move |req| {
        let mid = req.header.message_id;
        let wrong = piggybacked(req, mid.wrapping_add(1), b"666", Some(0));
        if first.insert(mid) {
            vec![wrong]
        } else {
            vec![wrong, piggybacked(req, mid, b"42", Some(0))]
        }
    })
    .await;
    let c = Client::connect(
        &server.to_string(),
        Transmission {
            ack_timeout: Duration::from_millis(300),
            max_retransmit: 2,
            ..Transmission::default()
        },
    )
    .await
    .expect("client");
    let resp = c.get("/v", None).await.expect("the matching ACK");
    assert_eq!(resp.payload, b"42", "{resp:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert_eq!(c.stats().retransmissions.load(Ordering::Relaxed), 1);
    assert_eq!(c.stats().ignored.load(Ordering::Relaxed), 2);
    assert_eq!(
        c.stats().resets_sent.load(Ordering::Relaxed),
        0,
        "an ACK gets no RST"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_with_only_other_message_ids_are_no_answer() {
    // Every transmission gets an empty ACK and a piggybacked response, both with another message id: neither
    // is an answer (not even the empty ACK: no wait for a separate response), so the request times out.
    let (server, seen) = scripted_server(|req| {
        let mid = req.header.message_id.wrapping_sub(1);
        vec![
            wire::empty(MessageType::Acknowledgement, mid),
            piggybacked(req, mid, b"666", Some(0)),
        ]
    })
    .await;
    let c = Client::connect(&server.to_string(), fast(2))
        .await
        .expect("client");
    assert_eq!(c.get("/v", None).await, Err(ClientError::Timeout(3)));
    poll_until("the server to see 3 transmissions", || {
        (seen.load(Ordering::SeqCst) == 3).then_some(())
    })
    .await;
    poll_until("the client to ignore 6 ACKs", || {
        (c.stats().ignored.load(Ordering::Relaxed) == 6).then_some(())
    })
    .await;
}
