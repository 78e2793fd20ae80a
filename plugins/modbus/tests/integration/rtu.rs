//! RTU on a socat pty pair (a fresh pair per test) and RTU over TCP.
use fieldbridge_sdk::{DeviceStatus, Quality, Value};
use serde_json::json;

use crate::util::{first_readings, good_readings, start, wait_offline, wait_value, Peer, PtyPair};

fn serial_device(name: &str, path: &str, unit: u8) -> String {
    format!(
        r#"
name: {name}
protocol: modbus
poll_interval: 300ms
timeout: 500ms
connection:
  serial: {path}
  baud: 19200
  parity: none
  stop_bits: 1
  unit: {unit}
  order: CDAB
points:
  - {{name: power, address: 30001, type: f32}}
  - {{name: setpoint, address: 40001, type: i16, writable: true, verify: true}}
  - {{name: pump, address: 1, writable: true}}
"#
    )
}

fn unit_image(power: [u16; 2], setpoint: u16) -> serde_json::Value {
    json!({"ir": {"0": power}, "hr": {"0": [setpoint]}, "co": {"0": [0, 1]}})
}

#[tokio::test]
async fn rtu_over_a_serial_line_reads_and_writes() {
    let pty = PtyPair::new().await;
    // 123.456f32 = 0x42F6E979, word-swapped (CDAB).
    let mut peer = Peer::serial(&pty.a, &json!({"1": unit_image([0xE979, 0x42F6], 215)})).await;
    let factory = crate::util::factory();
    let mut h = start(&factory, &serial_device("meter", &pty.b, 1));
    let got = first_readings(&mut h, &["power", "setpoint", "pump"]).await;
    assert_eq!(got[0].value, Value::Float(f64::from(123.456f32)));
    assert_eq!(got[1].value, Value::Int(215));
    assert_eq!(got[2].value, Value::Bool(false));
    h.write("setpoint", Value::Int(-40))
        .await
        .expect("write setpoint");
    h.write("pump", Value::Bool(true))
        .await
        .expect("write coil");
    assert_eq!(peer.get(1, "hr", 0, 1).await, vec![0xFFD8]);
    assert_eq!(peer.get(1, "co", 0, 1).await, vec![1]);
    wait_value(&mut h, "setpoint", |v| *v == Value::Int(-40)).await;
}

#[tokio::test]
async fn two_devices_share_one_rtu_line() {
    let pty = PtyPair::new().await;
    let mut peer = Peer::serial(
        &pty.a,
        &json!({
            "1": unit_image([0x0000, 0x3FC0], 1),   // 1.5
            "2": unit_image([0x0000, 0x4020], 2),   // 2.5
        }),
    )
    .await;
    let factory = crate::util::factory();
    let mut h1 = start(&factory, &serial_device("meter1", &pty.b, 1));
    let mut h2 = start(&factory, &serial_device("meter2", &pty.b, 2));
    // Several rounds each: interleaved requests from two devices must never garble the bus.
    for _ in 0..3 {
        let a = first_readings(&mut h1, &["power", "setpoint"]).await;
        let b = first_readings(&mut h2, &["power", "setpoint"]).await;
        assert_eq!(
            (a[0].value.clone(), a[1].value.clone()),
            (Value::Float(1.5), Value::Int(1))
        );
        assert_eq!(
            (b[0].value.clone(), b[1].value.clone()),
            (Value::Float(2.5), Value::Int(2))
        );
        assert!(a.iter().chain(&b).all(|r| r.quality == Quality::Good));
    }
    assert_eq!(factory.registry().open_lines(), 1, "one port, opened once");
    let units: std::collections::BTreeSet<u8> = peer
        .requests_synced()
        .await
        .iter()
        .map(|r| r.unit)
        .collect();
    assert_eq!(units, [1, 2].into_iter().collect());
}

#[tokio::test]
async fn a_silent_serial_line_times_out() {
    // Nobody reads the other end of the pair.
    let pty = PtyPair::new().await;
    let factory = crate::util::factory();
    let mut h = start(&factory, &serial_device("ghost", &pty.b, 1));
    let status = wait_offline(&mut h).await;
    assert!(
        status
            .reason()
            .is_some_and(|r| r.contains("no answer within")),
        "{status:?}"
    );
}

#[tokio::test]
async fn rtu_over_tcp() {
    let peer = Peer::rtu_over_tcp(&json!({"7": unit_image([0x0000, 0x3FC0], 9)})).await;
    let yaml = format!(
        r#"
name: gateway
protocol: modbus
poll_interval: 300ms
connection:
  rtu_over_tcp: "{addr}"
  unit: 7
  order: CDAB
points:
  - {{name: power, address: 30001, type: f32}}
  - {{name: setpoint, address: 40001, writable: true}}
"#,
        addr = peer.addr()
    );
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml);
    let got = first_readings(&mut h, &["power", "setpoint"]).await;
    assert_eq!(got[0].value, Value::Float(1.5));
    assert_eq!(got[1].value, Value::UInt(9));
    h.write("setpoint", Value::UInt(10))
        .await
        .expect("write over rtu-over-tcp");
    wait_value(&mut h, "setpoint", |v| *v == Value::UInt(10)).await;
}

/// CRC-16/MODBUS, written out here so that the tests do not trust the adapter's own.
fn crc(frame: &[u8]) -> [u8; 2] {
    let mut crc = 0xFFFFu16;
    for &b in frame {
        crc ^= u16::from(b);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb == 1 {
                crc ^= 0xA001;
            }
        }
    }
    crc.to_le_bytes()
}

/// A slave on a serial device (one end of a pty pair, 19200 8N1) that reads 8-byte read requests and
/// answers each with `answer(request)` (the CRC left to the answer). Returns its task and how many
/// requests it got.
async fn rtu_scripted_device(
    path: &str,
    answer: fn(&[u8; 8]) -> Vec<u8>,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_serial::SerialPortBuilderExt;
    let mut port = tokio_serial::new(path, 19200)
        .open_native_async()
        .expect("open the device end of the pty pair");
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let mut req = [0u8; 8];
            if port.read_exact(&mut req).await.is_err() {
                return;
            }
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if port.write_all(&answer(&req)).await.is_err() {
                return;
            }
        }
    });
    (task, requests)
}

/// `unit fc byte-count registers... CRC` for a read of `req`'s count of registers, valued 1000, 1001, ...
fn registers(unit: u8, req: &[u8; 8], extra: u16) -> Vec<u8> {
    let n = u16::from_be_bytes([req[4], req[5]]) + extra;
    let mut a = vec![unit, req[1], (n * 2) as u8];
    a.extend((1000..1000 + n).flat_map(u16::to_be_bytes));
    let c = crc(&a);
    a.extend(c);
    a
}

/// Starts a device with one point at `address` on a pty pair whose other end answers with `answer`, and
/// returns its status once it is offline (after checking it was asked and published no good reading).
async fn rtu_refusal(address: u32, answer: fn(&[u8; 8]) -> Vec<u8>) -> DeviceStatus {
    let pty = PtyPair::new().await;
    let (device, requests) = rtu_scripted_device(&pty.a, answer).await;
    let yaml = format!(
        r#"
name: meter
protocol: modbus
poll_interval: 300ms
timeout: 500ms
connection:
  serial: {path}
  baud: 19200
  unit: 1
points:
  - {{name: energy, address: {address}}}
"#,
        path = pty.b
    );
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml);
    let status = wait_offline(&mut h).await;
    assert!(
        requests.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the device was asked"
    );
    let good = good_readings(&mut h);
    assert!(good.is_empty(), "{good:?}");
    device.abort();
    status
}

#[tokio::test]
async fn an_rtu_answer_from_another_unit_says_which() {
    let status = rtu_refusal(40001, |req| registers(2, req, 0)).await;
    assert_eq!(
        status,
        DeviceStatus::Offline("bad response: answer from unit 2, expected unit 1".into())
    );
}

#[tokio::test]
async fn an_rtu_answer_with_a_bad_crc_says_so() {
    let status = rtu_refusal(40001, |req| {
        let mut a = registers(1, req, 0);
        let last = a.len() - 1;
        a[last] ^= 0xFF;
        a
    })
    .await;
    assert_eq!(
        status,
        DeviceStatus::Offline(
            "bad response: answer with a bad CRC (7-byte answer to function 0x03)".into()
        )
    );
}

#[tokio::test]
async fn an_rtu_answer_longer_than_asked_for_is_refused() {
    let status = rtu_refusal(40001, |req| registers(1, req, 1)).await;
    assert_eq!(
        status,
        DeviceStatus::Offline(
            "bad response: malformed answer to function 0x03: 2 registers for 1 requested".into()
        )
    );
    // One coil takes one byte; an answer with two (byte count 2, consistent with the frame) is refused too.
    let status = rtu_refusal(1, |req| {
        let mut a = vec![req[0], req[1], 2, 0x01, 0x00];
        let c = crc(&a);
        a.extend(c);
        a
    })
    .await;
    assert_eq!(
        status,
        DeviceStatus::Offline(
            "bad response: malformed answer to function 0x01: 2 data bytes for 1 bit (1 byte) requested"
                .into()
        )
    );
}

#[tokio::test]
async fn an_rtu_over_tcp_device_that_closes_the_connection_after_each_answer_is_polled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let device = {
        let connections = connections.clone();
        tokio::spawn(async move {
            // One request per connection: answer it, then hang up.
            while let Ok((mut s, _)) = listener.accept().await {
                connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut req = [0u8; 8];
                if s.read_exact(&mut req).await.is_ok() {
                    let _ = s.write_all(&registers(req[0], &req, 0)).await;
                }
            }
        })
    };
    let yaml = format!(
        r#"
name: gateway
protocol: modbus
poll_interval: 300ms
timeout: 500ms
retries: 0
connection:
  rtu_over_tcp: "{addr}"
points:
  - {{name: first, address: 40001}}
  - {{name: second, address: 40101}}
"#
    );
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml);
    for _ in 0..3 {
        let got = first_readings(&mut h, &["first", "second"]).await;
        assert!(
            got.iter()
                .all(|r| r.value == Value::UInt(1000) && r.quality == Quality::Good),
            "{got:?}"
        );
    }
    assert_eq!(h.status(), DeviceStatus::Online);
    assert!(connections.load(std::sync::atomic::Ordering::Relaxed) >= 6);
    device.abort();
}
