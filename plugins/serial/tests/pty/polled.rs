//! Request/response devices: the test answers poll strings; several requests per device, each with its own
//! parser; no answer means offline, answers again mean online.
use fieldbridge_sdk::{DeviceStatus, Quality, Value};

use crate::util::{start, DeviceEnd, Pty, WAIT};

fn scale(port: &str) -> String {
    format!(
        r#"
name: polled-scale
protocol: serial
poll_interval: 200ms
timeout: 300ms
connection:
  port: {port}
  reopen_min: 50ms
  reopen_max: 200ms
  framing: {{type: line, terminator: crlf}}
  requests:
    - name: weight
      send: 'W\r\n'
      parser: {{type: regex, pattern: '^(?P<w>[-+]?[0-9.]+) ?kg$'}}
    - name: info
      send_hex: "3F 0D 0A"
      interval: 300ms
      parser: {{type: key_value}}
      on_error: bad
points:
  - {{name: weight, request: weight, field: w, type: float}}
  - {{name: serial, request: info, field: SN, type: string}}
  - {{name: temp, request: info, field: T, type: float}}
"#
    )
}

/// Answers `W` with a weight and `?` with an info line, `rounds` times each at most.
async fn answer(dev: &mut DeviceEnd, weight: &str, info: &str) {
    let req = dev.read_until(b"\r\n").await;
    match req.as_slice() {
        b"W\r\n" => dev.send(format!("{weight}\r\n")).await,
        b"?\r\n" => dev.send(format!("{info}\r\n")).await,
        other => panic!("unexpected request {:?}", String::from_utf8_lossy(other)),
    }
}

#[tokio::test]
async fn requests_are_answered_and_parsed_each_with_its_parser() {
    let pty = Pty::new().await;
    let mut dev = DeviceEnd::open(&pty.a);
    let mut r = start(&scale(&pty.port()));
    let device = tokio::spawn(async move {
        for _ in 0..8 {
            answer(&mut dev, "12.5 kg", "SN=A17 T=31.5").await;
        }
        dev
    });
    assert_eq!(r.value("weight").await, Value::Float(12.5));
    assert_eq!(r.value("serial").await, Value::String("A17".into()));
    assert_eq!(r.value("temp").await, Value::Float(31.5));
    r.online().await;
    let mut dev = tokio::time::timeout(WAIT, device)
        .await
        .expect("device task")
        .expect("device");
    // An echo-like garbage answer to the info request: with on_error bad, its points read bad.
    let st = r.stats();
    assert!(st.requests >= 8, "{st:?}");
    let device = tokio::spawn(async move {
        for _ in 0..6 {
            answer(&mut dev, "13.0 kg", "garbage").await;
        }
    });
    let bad =
        r.h.wait_for(|x| &*x.point == "temp" && x.quality != Quality::Good, WAIT)
            .await;
    assert!(matches!(bad.quality, Quality::Bad(_)), "{bad:?}");
    assert_eq!(r.value("weight").await, Value::Float(13.0));
    let _ = tokio::time::timeout(WAIT, device).await;
}

#[tokio::test]
async fn a_device_that_stops_answering_goes_offline_and_back() {
    let pty = Pty::new().await;
    let mut dev = DeviceEnd::open(&pty.a);
    let mut r = start(&scale(&pty.port()));
    for _ in 0..2 {
        answer(&mut dev, "1.0 kg", "SN=1 T=1").await;
    }
    r.online().await;
    // Silence: requests time out, the device is offline (the port itself is fine).
    let st =
        r.h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), WAIT)
            .await;
    assert!(st.reason().unwrap_or("").contains("no answer"), "{st:?}");
    assert!(r.stats().timeouts >= 1);
    // Answering again brings it back.
    let device = tokio::spawn(async move {
        for _ in 0..6 {
            answer(&mut dev, "2.0 kg", "SN=1 T=1").await;
        }
    });
    r.online().await;
    r.h.wait_for(
        |x| &*x.point == "weight" && x.value == Value::Float(2.0),
        WAIT,
    )
    .await;
    let _ = tokio::time::timeout(WAIT, device).await;
}
