//! A port that disappears (USB adapter unplugged: socat killed) and comes back on the same path (socat
//! restarted on the same link): the device goes offline, then online, and reads again.
use fieldbridge_sdk::{DeviceStatus, Value};

use crate::util::{start, DeviceEnd, Pty, WAIT};

#[tokio::test]
async fn unplugged_port_goes_offline_and_comes_back() {
    let mut pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: usb
protocol: serial
connection:
  port: {}
  reopen_min: 50ms
  reopen_max: 200ms
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
    drop(dev);

    pty.kill().await;
    let st =
        r.h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), WAIT)
            .await;
    assert!(st.reason().is_some_and(|m| !m.is_empty()), "{st:?}");
    // While it is gone, a reopen keeps failing (the link does not exist) and the status stays offline.
    r.wait_stats("a failed reopen", |s| s.port_errors >= 2)
        .await;
    assert!(matches!(r.h.status(), DeviceStatus::Offline(_)));

    pty.start().await;
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    dev.send(b"v=2\n").await;
    assert_eq!(r.value("v").await, Value::Int(2));
    assert!(r.stats().opens >= 2);
}

#[tokio::test]
async fn a_port_missing_at_start_is_offline_until_it_appears() {
    let mut pty = Pty::new().await;
    pty.kill().await;
    let mut r = start(&format!(
        r#"
name: late
protocol: serial
connection:
  port: {}
  reopen_min: 50ms
  reopen_max: 100ms
points:
  - {{name: line}}
"#,
        pty.port()
    ));
    let st =
        r.h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), WAIT)
            .await;
    assert!(st.reason().unwrap_or("").contains("cannot open"), "{st:?}");
    pty.start().await;
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    dev.send(b"hello\n").await;
    assert_eq!(r.value("line").await, Value::String("hello".into()));
}

#[tokio::test]
async fn silence_timeout_marks_a_quiet_device_offline() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: quiet
protocol: serial
connection:
  port: {}
  silence_timeout: 300ms
  parser: {{type: key_value}}
points:
  - {{name: v, field: v, type: int}}
"#,
        pty.port()
    ));
    let mut dev = DeviceEnd::open(&pty.a);
    // Open but silent: not online until a valid frame arrives.
    r.wait_stats("the port opened", |s| s.opens >= 1).await;
    assert!(!matches!(r.h.status(), DeviceStatus::Online));
    dev.send(b"v=1\n").await;
    r.online().await;
    let st =
        r.h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), WAIT)
            .await;
    assert!(
        st.reason().unwrap_or("").contains("no valid frame"),
        "{st:?}"
    );
    dev.send(b"v=2\n").await;
    r.online().await;
}
