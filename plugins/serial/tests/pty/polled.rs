//! Request/response devices: the test answers poll strings; several requests per device, each with its own
//! parser; no answer means offline, answers again mean online.
use fieldbridge_sdk::{DeviceStatus, Quality, Value};

use crate::util::{start, wait_until, DeviceEnd, Pty, WAIT};

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

/// A counter device that answers every 3rd request late, once the device's 500 ms timeout has passed: the
/// request times out and is retried, and the late answer then arrives while the adapter is about to retry.
/// The late answer must be discarded (counted as stale), never published as the retry's answer, and every
/// published value must be the answer to the request it was read for, in order.
#[tokio::test]
async fn a_late_answer_to_a_timed_out_request_is_not_taken_for_the_retry() {
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    /// One answer of the responder: its counter value, whether it came after the timeout, when it was sent.
    #[derive(Debug, Clone, Copy)]
    struct Answer {
        n: i64,
        late: bool,
        sent: SystemTime,
    }

    const WANTED: usize = 6;
    let pty = Pty::new().await;
    let mut dev = DeviceEnd::open(&pty.a);
    let mut r = start(&format!(
        r#"
name: counter
protocol: serial
poll_interval: 200ms
timeout: 500ms
retries: 1
connection:
  port: {port}
  reopen_min: 50ms
  reopen_max: 200ms
  framing: {{type: line, terminator: crlf}}
  requests:
    - name: count
      send: 'C\r\n'
      parser: {{type: regex, pattern: '^N=(?P<n>[0-9]+)$'}}
points:
  - {{name: n, request: count, field: n, type: int}}
"#,
        port = pty.port()
    ));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let log = answers.clone();
    let stats = r.factory.stats(&r.name).expect("stats registered at build");
    let device = tokio::spawn(async move {
        // Enough requests for WANTED on-time answers with a late one in every three (and spare polls).
        for n in 1..=3 * WANTED as i64 {
            let req = dev.read_until(b"\r\n").await;
            assert_eq!(req, b"C\r\n", "unexpected request");
            let late = n % 3 == 0;
            if late {
                // The scenario itself: this answer comes once the adapter has given up waiting for it
                // (its timeout counted), as the adapter is about to retry.
                let before = stats.snapshot().timeouts;
                wait_until("the request to time out", || {
                    stats.snapshot().timeouts > before
                })
                .await;
            }
            let sent = SystemTime::now();
            dev.send(format!("N={n}\r\n")).await;
            log.lock().expect("answers").push(Answer { n, late, sent });
        }
    });

    // The published values, in order (every wait bounded by one overall deadline).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut published = Vec::new();
    while published.len() < WANTED {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reading = r.h.next_reading(left).await;
        assert_eq!(reading.quality, Quality::Good, "{reading:?}");
        let Value::Int(n) = reading.value else {
            panic!("not an integer: {reading:?}");
        };
        published.push((n, reading.ts));
    }
    let answers = answers.lock().expect("answers").clone();
    let on_time: Vec<i64> = answers.iter().filter(|a| !a.late).map(|a| a.n).collect();
    let values: Vec<i64> = published.iter().map(|&(n, _)| n).collect();
    assert_eq!(
        values,
        on_time[..WANTED.min(on_time.len())],
        "published values are not the answers to their own requests (late answers: {:?})",
        answers
            .iter()
            .filter(|a| a.late)
            .map(|a| a.n)
            .collect::<Vec<_>>()
    );
    // Each reading carries the time of its own answer, not of an earlier one.
    for (n, ts) in &published {
        let a = answers.iter().find(|a| a.n == *n).expect("answer sent");
        assert!(
            *ts >= a.sent,
            "value {n} published with a time before it was sent"
        );
    }
    // The late answers were read and thrown away, not silently lost in a buffer.
    r.wait_stats("two late answers discarded as stale", |s| {
        s.stale_frames >= 2 && s.timeouts >= 2
    })
    .await;
    device.abort();
}
