//! Write-back: the rendered bytes are read on the device's end; the reply decides ok / error / timeout.
use fieldbridge_sdk::{CommandError, Value};
use fieldbridge_serial::checksum::{Algorithm, ChecksumSpec};

use crate::util::{start, DeviceEnd, Pty, WAIT};

#[tokio::test]
async fn text_template_with_reply_ok_error_and_timeout() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: controller
protocol: serial
timeout: 500ms
connection:
  port: {}
  framing: {{type: line, terminator: crlf}}
  parser: {{type: key_value}}
points:
  - {{name: t, field: T, type: float}}
  - name: setpoint
    writable: true
    write: 'SP {{value:.1}}\r\n'
    reply: '^OK'
    reply_error: '^ERR'
  - name: reset
    writable: true
    write: 'RST\r\n'
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    let h = &r.h;
    // ok: the device answers OK (after an unrelated data line, which is still published).
    let (res, _) = tokio::join!(h.write("setpoint", Value::Float(21.46)), async {
        assert_eq!(dev.read_until(b"\r\n").await, b"SP 21.5\r\n");
        dev.send(b"T=20.5\r\nOK\r\n").await;
    });
    assert_eq!(res, Ok(()));
    // error: the device refuses.
    let (res, _) = tokio::join!(h.write("setpoint", Value::Int(99)), async {
        assert_eq!(dev.read_until(b"\r\n").await, b"SP 99.0\r\n");
        dev.send(b"ERR range\r\n").await;
    });
    assert!(
        matches!(res, Err(CommandError::Device(ref m)) if m.contains("ERR range")),
        "{res:?}"
    );
    // timeout: no answer.
    let (res, _) = tokio::join!(h.write("setpoint", Value::Float(1.0)), async {
        assert_eq!(dev.read_until(b"\r\n").await, b"SP 1.0\r\n");
    });
    assert_eq!(res, Err(CommandError::Timeout));
    // No reply configured: ok once written.
    let (res, got) = tokio::join!(h.write("reset", Value::Bool(true)), dev.read_until(b"\r\n"));
    assert_eq!(res, Ok(()));
    assert_eq!(got, b"RST\r\n");
    // Bad values and read-only points are refused without sending anything.
    let res = h.write("setpoint", Value::String("warm".into())).await;
    assert!(matches!(res, Err(CommandError::InvalidValue(_))), "{res:?}");
    assert_eq!(r.value("t").await, Value::Float(20.5));
    let s = r.stats();
    assert_eq!((s.writes_ok, s.writes_failed), (2, 3), "{s:?}");
}

#[tokio::test]
async fn binary_template_with_crc_on_a_polled_device() {
    let pty = Pty::new().await;
    let mut dev = DeviceEnd::open(&pty.a);
    let mut r = start(&format!(
        r#"
name: drive
protocol: serial
poll_interval: 10s
timeout: 500ms
connection:
  port: {}
  framing: {{type: fixed, length: 8}}
  requests:
    - name: status
      send_hex: "01 03 00 00 00 01 84 0A"
      parser: {{type: binary, checksum: {{type: crc16_modbus}}}}
points:
  - {{name: speed, request: status, at: 3, type: u16}}
  - name: setpoint
    writable: true
    write_hex: "01 06 00 10 {{value:u16}} {{crc16_modbus}}"
    reply: '(?-u)^\x01\x06'
    reply_error: '(?-u)^\x01\x86'
"#,
        pty.port()
    ));
    let crc = ChecksumSpec::new(Algorithm::Crc16Modbus);
    // The poll: answer it with speed 1500 (a fixed 8-byte frame).
    assert_eq!(dev.read_exact(8).await, vec![1, 3, 0, 0, 0, 1, 0x84, 0x0A]);
    let mut answer = vec![0x01, 0x03, 0x02, 0x05, 0xDC, 0x00];
    answer.extend(crc.encode(&answer));
    dev.send(&answer).await;
    assert_eq!(r.value("speed").await, Value::UInt(1500));
    r.online().await;
    let h = &r.h;
    let (res, _) = tokio::join!(h.write("setpoint", Value::Int(300)), async {
        let got = dev.read_exact(8).await;
        assert_eq!(&got[..6], &[0x01, 0x06, 0x00, 0x10, 0x01, 0x2C]);
        assert!(crc.verify(&got).is_ok(), "{got:02x?}");
        dev.send(&got).await; // Modbus echoes a successful write.
    });
    assert_eq!(res, Ok(()));
    let (res, _) = tokio::join!(h.write("setpoint", Value::Int(70000)), async {});
    assert!(matches!(res, Err(CommandError::InvalidValue(_))), "{res:?}");
    let (res, _) = tokio::join!(h.write("setpoint", Value::Int(7)), async {
        let _ = dev.read_exact(8).await;
        let mut exc = vec![0x01, 0x86, 0x02, 0, 0, 0];
        exc.truncate(6);
        exc.extend(crc.encode(&exc));
        dev.send(&exc).await;
    });
    assert!(matches!(res, Err(CommandError::Device(_))), "{res:?}");
    let _ = WAIT;
}
