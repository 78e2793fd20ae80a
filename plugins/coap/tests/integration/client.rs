//! The client on its own: RFC 7252 retransmission through a relay that loses datagrams, in front of
//! libcoap's server.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_coap::{Client, ClientError, Transmission};

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
