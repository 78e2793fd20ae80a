//! Observe (RFC 7641): notifications become readings; a server restart (which forgets its observers) is
//! noticed when notifications stop for Max-Age + grace, and the resource is registered again.
use fieldbridge_coap::CoapFactory;
use fieldbridge_sdk::{DeviceStatus, Quality, Value};

use crate::util::*;

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_survives_a_server_restart() {
    let port = free_udp_port();
    let mut server = aiocoap_server(
        port,
        &["--base", "1000", "--interval", "0.1", "--max-age", "1"],
    );
    let f = CoapFactory::new();
    // A long poll interval: every reading below comes from a notification, not from polling.
    let mut h = start(
        &f,
        &format!(
            "name: o1\nprotocol: coap\npoll_interval: 1h\nconnection:\n  uri: coap://127.0.0.1:{port}\n  {FAST}\n  \
             observe_grace: 500ms\npoints:\n  - {{name: counter, path: /counter, mode: observe}}\n"
        ),
    );
    let first = int(&h.wait_for(|r| r.quality == Quality::Good, WAIT).await.value);
    assert!((1000..2000).contains(&first), "{first}");
    // Several notifications, increasing.
    let mut last = first;
    for _ in 0..3 {
        let v = int(&h.next_reading(WAIT).await.value);
        assert!(v > last, "{v} after {last}");
        last = v;
    }
    assert_eq!(h.status(), DeviceStatus::Online);
    server.kill();
    let _server = aiocoap_server(
        port,
        &["--base", "5000", "--interval", "0.1", "--max-age", "1"],
    );
    // The new server knows nothing of us: only a re-registration brings its values.
    let r = h
        .wait_for(|r| matches!(r.value, Value::Int(v) if v >= 5000), WAIT)
        .await;
    let mut last = int(&r.value);
    let v = int(&h.next_reading(WAIT).await.value);
    assert!(
        v > last,
        "notifications continue after re-registration: {v} after {last}"
    );
    last = v;
    assert!(last >= 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_libcoap_dynamic_resource() {
    let server = libcoap_server(free_udp_port());
    let uri = format!("coap://127.0.0.1:{}/level", server.port);
    let out = coap_client(&["-m", "put", "-e", "1", &uri]);
    assert!(out.status.success(), "{out:?}");
    let f = CoapFactory::new();
    let mut h = start(
        &f,
        &format!(
            "name: o2\nprotocol: coap\npoll_interval: 1h\nconnection:\n  uri: coap://127.0.0.1:{}\n  {FAST}\npoints:\n  \
             - {{name: level, path: /level, mode: observe}}\n",
            server.port
        ),
    );
    let r = h.wait_for(|r| r.quality == Quality::Good, WAIT).await;
    assert_eq!(r.value, Value::Int(1));
    h.wait_status(|s| *s == DeviceStatus::Online, WAIT).await;
    // A change made by another client is notified to us.
    for v in 2..=4 {
        let out = coap_client(&["-m", "put", "-e", &v.to_string(), &uri]);
        assert!(out.status.success(), "{out:?}");
        h.wait_for(|r| r.value == Value::Int(v), WAIT).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_only_device_goes_offline_and_back() {
    let port = free_udp_port();
    let mut server = aiocoap_server(
        port,
        &["--base", "10", "--interval", "0.1", "--max-age", "1"],
    );
    let f = CoapFactory::new();
    let mut h = start(
        &f,
        &format!(
            "name: o3\nprotocol: coap\npoll_interval: 1h\nconnection:\n  uri: coap://127.0.0.1:{port}\n  \
             ack_timeout: 100ms\n  max_retransmit: 1\n  observe_grace: 300ms\npoints:\n  \
             - {{name: counter, path: /counter, mode: observe}}\n"
        ),
    );
    h.wait_status(|s| *s == DeviceStatus::Online, WAIT).await;
    server.kill();
    h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), WAIT)
        .await;
    let _server = aiocoap_server(
        port,
        &["--base", "900", "--interval", "0.1", "--max-age", "1"],
    );
    h.wait_status(|s| *s == DeviceStatus::Online, WAIT).await;
    h.wait_for(|r| matches!(r.value, Value::Int(v) if v >= 900), WAIT)
        .await;
}
