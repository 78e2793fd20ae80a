//! GET polling, block-wise transfer, content formats, write-back, offline/online, discover; servers that
//! answer with the whole representation in one large datagram, or with ACKs of another message id.
use std::collections::HashSet;

use fieldbridge_coap::probe;
use fieldbridge_coap::{CoapFactory, Transmission};
use fieldbridge_sdk::{CommandError, DeviceStatus, Quality, Value};

use crate::util::*;

fn stdout(args: &[&str]) -> String {
    let out = coap_client(args);
    assert!(out.status.success(), "coap-client {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_libcoap_and_writes_back() {
    let server = libcoap_server(free_udp_port());
    let base = format!("coap://127.0.0.1:{}", server.port);
    // A dynamic resource on libcoap's server, created by coap-client.
    stdout(&["-m", "put", "-e", "21.5", &format!("{base}/temp")]);
    let f = CoapFactory::new();
    let mut h = start(
        &f,
        &format!(
            "name: d1\nprotocol: coap\npoll_interval: 100ms\nconnection:\n  uri: {base}\n  {FAST}\npoints:\n  \
             - {{name: temp, path: /temp}}\n  \
             - {{name: setpoint, path: /setpoint, writable: true}}\n  \
             - {{name: wkc, path: /.well-known/core, writable: true, format: raw}}\n"
        ),
    );
    h.wait_status(|s| *s == DeviceStatus::Online, WAIT).await;
    let r = h.wait_for(|r| &*r.point == "temp", WAIT).await;
    assert_eq!((r.value, r.quality), (Value::Float(21.5), Quality::Good));
    // Not created yet: the server's 4.04 is the point's bad quality.
    let r = h.wait_for(|r| &*r.point == "setpoint", WAIT).await;
    match &r.quality {
        Quality::Bad(why) => assert!(why.contains("4.04"), "{why}"),
        q => panic!("expected bad quality, got {q:?}"),
    }
    // Write-back: PUT, then read back from the server with libcoap's own client.
    h.write("setpoint", Value::Float(65.5))
        .await
        .expect("write");
    assert_eq!(stdout(&["-m", "get", &format!("{base}/setpoint")]), "65.5");
    h.wait_for(
        |r| &*r.point == "setpoint" && r.value == Value::Float(65.5),
        WAIT,
    )
    .await;
    // The server's refusal is the command's result.
    match h.write("wkc", Value::Int(1)).await {
        Err(CommandError::Device(why)) => assert!(why.starts_with("4.05"), "{why}"),
        other => panic!("expected 4.05 from the server, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blockwise_json_senml_and_post_write_back_against_aiocoap() {
    let server = aiocoap_server(free_udp_port(), &[]);
    let base = format!("coap://127.0.0.1:{}", server.port);
    let f = CoapFactory::new();
    let mut h = start(
        &f,
        &format!(
            "name: d2\nprotocol: coap\npoll_interval: 200ms\nconnection:\n  uri: {base}\n  {FAST}\n  block_size: 256\npoints:\n  \
             - {{name: big, path: /big, format: json, pointer: /value}}\n  \
             - {{name: ab, path: /json, pointer: /a/b/1}}\n  \
             - {{name: temp, path: /senml, senml_name: dev1/temp}}\n  \
             - {{name: hum, path: /senml, format: senml_json, senml_name: dev1/hum}}\n  \
             - {{name: ctemp, path: /senml-cbor, senml_name: dev1/temp}}\n  \
             - {{name: chum, path: /senml-cbor, format: senml_cbor, senml_name: dev1/hum}}\n  \
             - {{name: nope, path: /senml, senml_name: dev1/none}}\n  \
             - {{name: sp, path: /setpoint, writable: true, method: post, write_format: json}}\n"
        ),
    );
    let mut want = vec![
        ("big", Value::Int(42)),
        ("ab", Value::Float(2.5)),
        ("temp", Value::Float(21.5)),
        ("hum", Value::Int(40)),
        ("ctemp", Value::Float(22.5)),
        ("chum", Value::Int(41)),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut missing_record = None;
    while !want.is_empty() || missing_record.is_none() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = h
            .try_next_reading(left)
            .await
            .unwrap_or_else(|| panic!("readings missing: {want:?} (status {:?})", h.status()));
        if &*r.point == "nope" {
            missing_record = Some(r.quality.clone());
            continue;
        }
        if let Some(i) = want.iter().position(|(p, _)| *p == &*r.point) {
            assert_eq!(r.quality, Quality::Good, "{r:?}");
            assert_eq!(r.value, want[i].1, "{r:?}");
            want.remove(i);
        }
    }
    match missing_record {
        Some(Quality::Bad(why)) => assert!(why.contains("dev1/none"), "{why}"),
        q => panic!("{q:?}"),
    }
    h.write("sp", Value::Int(7)).await.expect("POST write");
    assert_eq!(stdout(&["-m", "get", &format!("{base}/setpoint")]), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn representations_over_max_body_are_refused() {
    let server = aiocoap_server(free_udp_port(), &[]);
    let base = format!("coap://127.0.0.1:{}", server.port);
    let f = CoapFactory::new();
    let mut h = start(
        &f,
        &format!(
            "name: d3\nprotocol: coap\npoll_interval: 200ms\nconnection:\n  uri: {base}\n  {FAST}\n  block_size: 256\n  \
             max_body: 1KiB\npoints:\n  - {{name: big, path: /big, pointer: /value}}\n"
        ),
    );
    let r = h.wait_for(|r| &*r.point == "big", WAIT).await;
    match r.quality {
        Quality::Bad(why) => assert!(
            why.starts_with("representation of at least ")
                && why.ends_with(" bytes is larger than 1024 bytes (max_body)"),
            "the bytes received when the transfer stopped, and the limit: {why}"
        ),
        q => panic!(
            "a 3 KB representation passed a 1 KiB bound: {q:?} {:?}",
            r.value
        ),
    }
    // Still online: the device answered.
    assert_eq!(h.status(), DeviceStatus::Online);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_after_timeouts_and_back_online() {
    let port = free_udp_port();
    let mut server = libcoap_server(port);
    let f = CoapFactory::new();
    let mut h = start(
        &f,
        &format!(
            "name: d4\nprotocol: coap\npoll_interval: 100ms\nconnection:\n  uri: coap://127.0.0.1:{port}\n  \
             ack_timeout: 100ms\n  max_retransmit: 1\npoints:\n  - {{name: clock, path: /time}}\n"
        ),
    );
    h.wait_status(|s| *s == DeviceStatus::Online, WAIT).await;
    server.kill();
    let s = h
        .wait_status(|s| matches!(s, DeviceStatus::Offline(_)), WAIT)
        .await;
    assert!(s.reason().unwrap_or("").contains("no answer"), "{s:?}");
    let _server = libcoap_server(port);
    h.wait_status(|s| *s == DeviceStatus::Online, WAIT).await;
    h.wait_for(|r| r.quality == Quality::Good, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_lists_libcoap_resources() {
    let server = libcoap_server(free_udp_port());
    let links = probe::discover(
        &format!("coap://127.0.0.1:{}", server.port),
        Transmission::default(),
    )
    .await
    .expect("discover");
    let time = links
        .iter()
        .find(|l| l.target == "/time")
        .unwrap_or_else(|| panic!("no /time in {links:?}"));
    assert!(time.observable(), "{time:?}");
    assert_eq!(time.attr("rt"), Some("ticks"));
    assert_eq!(time.attr("title"), Some("Internal Clock"));
    let got = probe::get(
        &format!("coap://127.0.0.1:{}/nothere", server.port),
        Transmission::default(),
    )
    .await;
    assert!(
        matches!(&got, Err(probe::ProbeError::Refused(s)) if s.starts_with("4.04")),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_datagram_larger_than_1500_bytes_is_read_up_to_max_body() {
    // A server that ignores Block2 and answers every GET with 3 KB of JSON in one datagram.
    let (addr, _seen) = scripted_server(|req| {
        vec![piggybacked(
            req,
            req.header.message_id,
            &json_of_len(3000),
            Some(50),
        )]
    })
    .await;
    let f = CoapFactory::new();
    let device = |name: &str, max_body: &str| {
        format!(
            "name: {name}\nprotocol: coap\npoll_interval: 200ms\nconnection:\n  uri: coap://{addr}\n  {FAST}\n  \
             max_body: {max_body}\npoints:\n  - {{name: value, path: /big, format: json, pointer: /value}}\n"
        )
    };
    let mut fits = start(&f, &device("d5", "16KiB"));
    let mut over = start(&f, &device("d6", "1KiB"));
    let r = fits.wait_for(|r| &*r.point == "value", WAIT).await;
    assert_eq!((r.value, r.quality), (Value::Int(42), Quality::Good));
    assert_eq!(fits.status(), DeviceStatus::Online);
    let r = over.wait_for(|r| &*r.point == "value", WAIT).await;
    match r.quality {
        Quality::Bad(why) => assert_eq!(
            why, "representation of 3000 bytes is larger than 1024 bytes (max_body)",
            "names the size and the limit"
        ),
        q => panic!("3,000 bytes passed a 1 KiB bound: {q:?} {:?}", r.value),
    }
    // The device answered: online, as for a block-wise transfer over max_body.
    assert_eq!(over.status(), DeviceStatus::Online);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piggybacked_ack_with_another_message_id_is_not_published() {
    // Each request's first transmission is answered with an ACK of the right token, another message id and
    // the value 666; its retransmission with the correct ACK and 42.
    let mut first = HashSet::new();
    let (late, _) = scripted_server(move |req| {
        let mid = req.header.message_id;
        if first.insert(mid) {
            vec![piggybacked(req, mid.wrapping_add(7), b"666", Some(0))]
        } else {
            vec![piggybacked(req, mid, b"42", Some(0))]
        }
    })
    .await;
    // Only ever ACKs with another message id.
    let (never, _) = scripted_server(|req| {
        vec![piggybacked(
            req,
            req.header.message_id.wrapping_add(7),
            b"666",
            Some(0),
        )]
    })
    .await;
    let f = CoapFactory::new();
    let device = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "name: {name}\nprotocol: coap\npoll_interval: 100ms\nconnection:\n  uri: coap://{addr}\n  \
             ack_timeout: 100ms\n  max_retransmit: 1\npoints:\n  - {{name: v, path: /v}}\n"
        )
    };
    let mut good = start(&f, &device("d7", late));
    let mut bad = start(&f, &device("d8", never));
    for _ in 0..3 {
        let r = good.next_reading(WAIT).await;
        assert_eq!(
            (r.value, r.quality),
            (Value::Int(42), Quality::Good),
            "only the matching ACK's value"
        );
    }
    let s = bad
        .wait_status(|s| matches!(s, DeviceStatus::Offline(_)), WAIT)
        .await;
    assert!(s.reason().unwrap_or("").contains("no answer"), "{s:?}");
    let published = bad.take_readings();
    assert!(
        published.iter().all(|r| r.quality != Quality::Good),
        "a value from an ACK of another message id was published: {published:?}"
    );
}
