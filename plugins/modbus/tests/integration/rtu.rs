//! RTU on a socat pty pair (a fresh pair per test) and RTU over TCP.
use fieldbridge_sdk::{Quality, Value};
use serde_json::json;

use crate::util::{first_readings, start, wait_offline, wait_value, Peer, PtyPair};

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
