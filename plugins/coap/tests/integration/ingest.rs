//! The ingest listener: devices POST/PUT readings; answers, diagnostics, duplicates, malformed datagrams,
//! shared sockets.
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use fieldbridge_coap::wire;
use fieldbridge_coap::CoapFactory;
use fieldbridge_sdk::{DeviceStatus, Quality, Value};

use crate::util::*;

const LISTEN: &str = "127.0.0.1:0";

/// message id, method, path, content format, payload, expected code, text the diagnostic must contain.
type Case<'a> = (
    u16,
    RequestType,
    &'a str,
    Option<u16>,
    &'a [u8],
    ResponseType,
    &'a str,
);

fn ingest_device(name: &str, prefix: &str) -> String {
    format!(
        "name: {name}\nprotocol: coap\nconnection:\n  ingest: \"{LISTEN}\"\npoints:\n  \
         - {{name: temp, path: /{prefix}/temp, mode: ingest}}\n  \
         - {{name: power, path: /{prefix}/json, mode: ingest, format: json, pointer: /p}}\n  \
         - {{name: t, path: /{prefix}/pack, mode: ingest, senml_name: d/t}}\n  \
         - {{name: h, path: /{prefix}/pack, mode: ingest, senml_name: d/h}}\n"
    )
}

/// The real address of the factory's listener once a device started it.
async fn listener(f: &CoapFactory) -> SocketAddr {
    poll_until("the ingest listener to start", || {
        f.ingest(LISTEN).map(|s| s.local_addr())
    })
    .await
}

fn post(
    mid: u16,
    kind: MessageType,
    method: RequestType,
    path: &str,
    cf: Option<u16>,
    body: &[u8],
) -> Vec<u8> {
    let mut p = wire::request(method, path, None);
    p.header.set_type(kind);
    p.header.message_id = mid;
    p.set_token(vec![0xAB, (mid & 0xFF) as u8]);
    if let Some(cf) = cf {
        p.add_option(CoapOption::ContentFormat, wire::uint_bytes(u32::from(cf)));
    }
    p.payload = body.to_vec();
    wire::encode(&p).expect("encode")
}

fn exchange(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Packet {
    sock.send_to(bytes, to).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("an answer within the socket timeout");
    wire::decode(&buf[..n]).expect("answer decodes")
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_from_coap_client() {
    let f = CoapFactory::new();
    let mut h = start(&f, &ingest_device("i1", "m"));
    let addr = listener(&f).await;
    let base = format!("coap://127.0.0.1:{}", addr.port());
    let out = coap_client(&["-m", "post", "-e", "21.5", &format!("{base}/m/temp")]);
    assert!(out.status.success(), "{out:?}");
    let r = h.next_reading(WAIT).await;
    assert_eq!(
        (&*r.point, r.value, r.quality),
        ("temp", Value::Float(21.5), Quality::Good)
    );
    h.wait_status(|s| *s == DeviceStatus::Online, WAIT).await;
    let out = coap_client(&[
        "-m",
        "put",
        "-t",
        "json",
        "-e",
        r#"{"p": 1500}"#,
        &format!("{base}/m/json"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = h.next_reading(WAIT).await;
    assert_eq!((&*r.point, r.value), ("power", Value::Int(1500)));
    // SenML: one message, two points (content format 110 = senml+json).
    let pack = r#"[{"bn":"d/","n":"t","v":20.25,"bt":1700000000},{"n":"h","v":55}]"#;
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "110",
        "-e",
        pack,
        &format!("{base}/m/pack"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let mut got: Vec<(String, Value)> = Vec::new();
    for _ in 0..2 {
        let r = h.next_reading(WAIT).await;
        got.push((r.point.to_string(), r.value));
        if &*r.point == "t" {
            assert_eq!(
                r.ts,
                std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
            );
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("h".into(), Value::Int(55)),
            ("t".into(), Value::Float(20.25))
        ]
    );
    // An unmapped path: coap-client shows the code; nothing reaches the pipeline.
    let out = coap_client(&["-m", "post", "-e", "1", &format!("{base}/m/other")]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("4.04"), "{text}");
    assert!(h
        .try_next_reading(Duration::from_millis(300))
        .await
        .is_none());
    let stats = f.ingest(LISTEN).expect("listener");
    assert_eq!(stats.stats().accepted.load(Ordering::Relaxed), 3);
    assert_eq!(stats.stats().readings.load(Ordering::Relaxed), 4);
}

/// A UDP relay between coap-client and the listener that drops the first answer, so coap-client retransmits
/// its confirmable request with the same message id: a real duplicate.
async fn lossy_relay(server: SocketAddr) -> SocketAddr {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    back.connect(server).await.expect("connect");
    let addr = front.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut dropped = false;
        let (mut a, mut b) = ([0u8; 1500], [0u8; 1500]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    let _ = back.send(&a[..n]).await;
                }
                r = back.recv(&mut b) => {
                    let Ok(n) = r else { return };
                    if !dropped {
                        dropped = true;
                        continue;
                    }
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_from_coap_client_make_one_reading() {
    let f = CoapFactory::new();
    let mut h = start(&f, &ingest_device("i2", "d"));
    let addr = listener(&f).await;
    let relay = lossy_relay(addr).await;
    let out = coap_client(&[
        "-m",
        "post",
        "-e",
        "7",
        &format!("coap://127.0.0.1:{}/d/temp", relay.port()),
    ]);
    assert!(
        out.status.success(),
        "coap-client got no answer to its retransmission: {out:?}"
    );
    let r = h.next_reading(WAIT).await;
    assert_eq!(r.value, Value::Int(7));
    assert!(
        h.try_next_reading(Duration::from_millis(500))
            .await
            .is_none(),
        "a retransmitted request made a second reading"
    );
    let s = f.ingest(LISTEN).expect("listener");
    assert_eq!(s.stats().duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(s.stats().accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_diagnostics_duplicates_and_malformed_datagrams() {
    let f = CoapFactory::new();
    let mut h = start(&f, &ingest_device("i3", "x"));
    let addr = listener(&f).await;
    let sock = udp();
    let stats = f.ingest(LISTEN).expect("listener");

    // The same CON twice: the same answer twice, one reading.
    let req = post(
        100,
        MessageType::Confirmable,
        RequestType::Post,
        "/x/temp",
        None,
        b"3",
    );
    let a1 = exchange(&sock, addr, &req);
    let a2 = exchange(&sock, addr, &req);
    assert_eq!(
        a1.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(a1.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(a1.header.message_id, 100);
    assert_eq!(a1, a2);
    assert_eq!(h.next_reading(WAIT).await.value, Value::Int(3));
    assert!(h
        .try_next_reading(Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(stats.stats().duplicates.load(Ordering::Relaxed), 1);

    // Diagnostics.
    let cases: &[Case] = &[
        (
            101,
            RequestType::Post,
            "/x/none",
            None,
            b"1",
            ResponseType::NotFound,
            "no point is mapped to /x/none",
        ),
        (
            102,
            RequestType::Get,
            "/x/temp",
            None,
            b"",
            ResponseType::MethodNotAllowed,
            "POST or PUT",
        ),
        (
            103,
            RequestType::Put,
            "/x/json",
            Some(50),
            b"{\"q\":1}",
            ResponseType::BadRequest,
            "pointer `/p` matches nothing",
        ),
        (
            104,
            RequestType::Put,
            "/x/json",
            Some(60),
            b"\x01",
            ResponseType::UnsupportedContentFormat,
            "expected json",
        ),
        (
            105,
            RequestType::Put,
            "/x/json",
            Some(50),
            b"{not json",
            ResponseType::BadRequest,
            "JSON",
        ),
        (
            106,
            RequestType::Post,
            "/x/pack",
            Some(110),
            b"[{\"n\":\"zz\",\"v\":1}]",
            ResponseType::BadRequest,
            "no SenML record",
        ),
        (
            107,
            RequestType::Post,
            "/x/temp",
            Some(4242),
            b"1",
            ResponseType::UnsupportedContentFormat,
            "4242",
        ),
    ];
    for (mid, method, path, cf, body, code, needle) in cases {
        let a = exchange(
            &sock,
            addr,
            &post(*mid, MessageType::Confirmable, *method, path, *cf, body),
        );
        assert_eq!(
            a.header.code,
            MessageClass::Response(*code),
            "{path} mid {mid}"
        );
        let diag = String::from_utf8_lossy(&a.payload);
        assert!(
            diag.contains(needle),
            "{path}: diagnostic `{diag}` lacks `{needle}`"
        );
    }
    assert!(h
        .try_next_reading(Duration::from_millis(300))
        .await
        .is_none());

    // Malformed datagrams: counted, no answer, no crash; the next request is served.
    let garbage: &[&[u8]] = &[
        b"",
        b"\x00",
        b"\xFF\xFF\xFF\xFF",
        b"\x4F\x02\x00\x01",
        b"\x41\x00\x00\x01\x07",
        &[0x40; 1600],
    ];
    for g in garbage {
        sock.send_to(g, addr).expect("send");
    }
    let a = exchange(
        &sock,
        addr,
        &post(
            200,
            MessageType::NonConfirmable,
            RequestType::Put,
            "/x/temp",
            Some(0),
            b"4.5",
        ),
    );
    assert_eq!(a.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(a.header.code, MessageClass::Response(ResponseType::Changed));
    assert_eq!(h.next_reading(WAIT).await.value, Value::Float(4.5));
    // The empty datagram is read as zero bytes by recv_from: every one counts.
    assert_eq!(
        stats.stats().malformed.load(Ordering::Relaxed),
        garbage.len() as u64
    );
    // A CoAP ping (empty CON) gets RST.
    let ping = wire::encode(&wire::empty(MessageType::Confirmable, 300)).expect("ping");
    let a = exchange(&sock, addr, &ping);
    assert_eq!(
        (a.header.get_type(), a.header.message_id),
        (MessageType::Reset, 300)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_share_one_listener_that_closes_with_the_last() {
    let f = CoapFactory::new();
    let mut a = start(&f, &ingest_device("a", "a"));
    let mut b = start(&f, &ingest_device("b", "b"));
    let addr = listener(&f).await;
    let sock = udp();
    // Both devices registered their paths on the one socket (b may register a moment after a).
    let mut mid = 1u16;
    poll_until("device b to register", || {
        let ans = exchange(
            &sock,
            addr,
            &post(
                mid,
                MessageType::Confirmable,
                RequestType::Post,
                "/b/temp",
                None,
                b"2",
            ),
        );
        mid += 1;
        (ans.header.code == MessageClass::Response(ResponseType::Changed)).then_some(())
    })
    .await;
    let ans = exchange(
        &sock,
        addr,
        &post(
            mid,
            MessageType::Confirmable,
            RequestType::Post,
            "/a/temp",
            None,
            b"1",
        ),
    );
    assert_eq!(
        ans.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(a.next_reading(WAIT).await.value, Value::Int(1));
    assert_eq!(b.next_reading(WAIT).await.value, Value::Int(2));
    assert_eq!(f.open_listeners(), 1);
    // A third device mapping a path already taken is refused (and the core would retry it with backoff).
    let c = start(&f, &ingest_device("c", "a"));
    let err = c.join(WAIT).await.expect_err("conflicting paths accepted");
    assert!(
        err.to_string().contains("already mapped by device `a`"),
        "{err}"
    );
    // a stops: its paths go, b's stay, the socket stays.
    a.stop(WAIT).await.expect("stop a");
    let ans = exchange(
        &sock,
        addr,
        &post(
            mid + 1,
            MessageType::Confirmable,
            RequestType::Post,
            "/a/temp",
            None,
            b"1",
        ),
    );
    assert_eq!(
        ans.header.code,
        MessageClass::Response(ResponseType::NotFound)
    );
    assert_eq!(f.open_listeners(), 1);
    let lease: Arc<_> = f.ingest(LISTEN).expect("still open");
    drop(lease);
    b.stop(WAIT).await.expect("stop b");
    assert_eq!(f.open_listeners(), 0, "the listener outlived its devices");
    // The socket itself is closed: its address can be bound again (bounded wait for the task to end).
    poll_until(
        &format!("the listener socket {addr} to close after its last device stopped"),
        || UdpSocket::bind(addr).ok(),
    )
    .await;
}
