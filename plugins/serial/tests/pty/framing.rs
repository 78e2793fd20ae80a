//! Framing limits over a real pty: oversized input is discarded and counted, never buffered without bound.
use fieldbridge_sdk::Value;

use crate::util::{start, DeviceEnd, Pty};

#[tokio::test]
async fn an_endless_line_is_dropped_and_the_next_one_read() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: chatty
protocol: serial
connection:
  port: {}
  framing: {{type: line, terminator: lf, max_frame: 32}}
  parser: {{type: key_value}}
points:
  - {{name: v, field: v, type: int}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    dev.send(b"v=1\n").await;
    assert_eq!(r.value("v").await, Value::Int(1));
    // 64 KiB without a terminator, in pieces, then the end of that line and a good one.
    for _ in 0..64 {
        dev.send([b'x'; 1024]).await;
    }
    dev.send(b"v=99\nv=2\n").await;
    assert_eq!(r.value("v").await, Value::Int(2));
    let s = r.stats();
    assert_eq!(s.oversized, 1, "{s:?}");
    assert_eq!(s.discarded_bytes, 64 * 1024 + 4, "{s:?}");
    assert_eq!(s.frames, 2, "{s:?}");
}

#[tokio::test]
async fn an_oversized_delimited_frame_is_dropped_and_resynced() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: framed
protocol: serial
connection:
  port: {}
  framing: {{type: delimited, start: "<", end: ">", max_frame: 8}}
  parser: {{type: key_value}}
points:
  - {{name: v, field: v, type: int}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    // A frame that is already too long before its end arrives: dropped without waiting for the end.
    dev.send(b"<v=1234567890123456").await;
    r.wait_stats("the unfinished frame dropped", |s| s.oversized == 1)
        .await;
    // Its end, then a complete frame that is too long, then a good one.
    dev.send(b">").await;
    dev.send(b"<v=123456789012>").await;
    dev.send(b"<v=5>").await;
    assert_eq!(r.value("v").await, Value::Int(5));
    let s = r.stats();
    assert_eq!(s.oversized, 2, "{s:?}");
    assert_eq!(s.frames, 1, "{s:?}");
}

#[tokio::test]
async fn a_gap_ends_a_partial_frame() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: gappy
protocol: serial
connection:
  port: {}
  framing: {{type: fixed, length: 2, gap: 100ms}}
  parser: {{type: binary}}
points:
  - {{name: v, at: 0, type: u16}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    // One byte of a frame is lost: the half frame must not be glued to the next one.
    dev.send([0x12]).await;
    r.wait_stats("the lone byte read", |s| s.bytes >= 1).await;
    // Wait past the gap on a condition (the adapter's own clock), not a fixed sleep: the next bytes arrive
    // after it has certainly passed, because the adapter only resets on the next read.
    let t0 = tokio::time::Instant::now();
    crate::util::wait_until("the gap to pass", || {
        t0.elapsed() > std::time::Duration::from_millis(150)
    })
    .await;
    dev.send([0x01, 0x02]).await;
    assert_eq!(r.value("v").await, Value::UInt(0x0102));
    assert_eq!(r.stats().discarded_bytes, 1);
}
