//! Write-back of every kind, checked in the device's memory and by the function codes it received.
use fieldbridge_sdk::{CommandError, Value};
use serde_json::json;

use crate::util::{first_readings, start, wait_value, Peer};

fn image() -> serde_json::Value {
    json!({"1": {"hr": {"0": vec![0u16; 40]}, "co": {"0": [0, 0, 0, 0]}, "ir": {"0": [1]}}})
}

fn yaml(addr: &str) -> String {
    format!(
        r#"
name: plc
protocol: modbus
poll_interval: 300ms
connection:
  tcp: "{addr}"
  order: CDAB
points:
  - {{name: coil, address: 1, writable: true, verify: true}}
  - {{name: coil_fc15, address: 2, writable: true, write_multiple: true}}
  - {{name: u16, address: 40001, writable: true, verify: true}}
  - {{name: i16, address: 40002, type: i16, writable: true}}
  - {{name: u16_fc16, address: 40003, writable: true, write_multiple: true}}
  - {{name: u32_cdab, address: 40004, type: u32, writable: true, verify: true}}
  - {{name: f32_abcd, address: 40006, type: f32, order: ABCD, writable: true, verify: true}}
  - {{name: f64_dcba, address: 40008, type: f64, order: HGFEDCBA, writable: true, verify: true}}
  - {{name: i64_abcd, address: 40012, type: i64, order: ABCDEFGH, writable: true}}
  - {{name: text, address: 40016, type: string, length: 3, writable: true, verify: true}}
  - {{name: raw, address: 40019, type: bytes, length: 1, writable: true}}
  - {{name: flag3, address: 40020, type: bit, bit: 3, writable: true, verify: true}}
  - {{name: flag0, address: 40020, type: bit, bit: 0, writable: true}}
  - {{name: ignored, address: 40021, writable: true, verify: true, write_multiple: true}}
  - {{name: ignored_fc6, address: 40021, writable: true}}
  - {{name: readonly, address: 40022}}
  - {{name: missing, address: 40101, writable: true}}
"#
    )
}

#[tokio::test]
async fn writes_of_every_kind_land_in_the_device() {
    let mut peer = Peer::tcp_with(&image(), &["--ignore-writes", "1:20"]).await;
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml(&peer.addr()));
    // Wait until the device is polled, so writes go to a connected line.
    first_readings(&mut h, &["u16"]).await;

    h.write("coil", Value::Bool(true)).await.expect("coil");
    h.write("coil_fc15", Value::Bool(true))
        .await
        .expect("coil fc15");
    assert_eq!(peer.get(1, "co", 0, 3).await, vec![1, 1, 0]);

    h.write("u16", Value::UInt(65535)).await.expect("u16");
    h.write("i16", Value::Int(-2)).await.expect("i16");
    h.write("u16_fc16", Value::Float(1234.0))
        .await
        .expect("u16 fc16");
    h.write("u32_cdab", Value::UInt(0xDEAD_BEEF))
        .await
        .expect("u32");
    h.write("f32_abcd", Value::Float(123.456))
        .await
        .expect("f32");
    h.write("f64_dcba", Value::Float(123.456))
        .await
        .expect("f64");
    h.write("i64_abcd", Value::Int(-81985529216486896))
        .await
        .expect("i64");
    h.write("text", Value::String("FB-1".into()))
        .await
        .expect("string");
    h.write("raw", Value::Bytes(vec![0xAB, 0xCD]))
        .await
        .expect("bytes");
    assert_eq!(
        peer.get(1, "hr", 0, 19).await,
        vec![
            0xFFFF, 0xFFFE, 1234, // u16, i16, u16 via FC16
            0xBEEF, 0xDEAD, // u32 CDAB
            0x42F6, 0xE979, // f32 ABCD
            0x77BE, 0x9F1A, 0x2FDD, 0x5E40, // f64 HGFEDCBA
            0xFEDC, 0xBA98, 0x7654, 0x3210, // i64 ABCDEFGH
            0x4642, 0x2D31, 0x0000, // "FB-1"
            0xABCD,
        ]
    );

    // Bits of a register: read-modify-write keeps the other bits.
    peer.set(1, "hr", 19, &[0x8001]).await;
    h.write("flag3", Value::Bool(true)).await.expect("bit 3 on");
    assert_eq!(peer.get(1, "hr", 19, 1).await, vec![0x8009]);
    h.write("flag0", Value::Bool(false))
        .await
        .expect("bit 0 off");
    assert_eq!(peer.get(1, "hr", 19, 1).await, vec![0x8008]);

    // Function codes: FC5 and FC15 for coils, FC6 for single registers, FC16 for anything wider or forced.
    let reqs = peer.requests();
    let fcs_at =
        |fc: u8| -> Vec<u16> { reqs.iter().filter(|r| r.fc == fc).map(|r| r.addr).collect() };
    assert_eq!(fcs_at(5), vec![0]);
    assert_eq!(fcs_at(15), vec![1]);
    assert_eq!(fcs_at(6), vec![0, 1, 18, 19, 19]);
    assert_eq!(fcs_at(16), vec![2, 3, 5, 7, 11, 15]);

    // The pipeline sees the new values at the next poll.
    wait_value(&mut h, "f64_dcba", |v| *v == Value::Float(123.456)).await;
    wait_value(&mut h, "text", |v| *v == Value::String("FB-1".into())).await;
}

#[tokio::test]
async fn refused_writes_say_why() {
    let mut peer = Peer::tcp_with(&image(), &["--ignore-writes", "1:20"]).await;
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml(&peer.addr()));
    first_readings(&mut h, &["u16"]).await;
    let before = peer.requests_synced().await.len();

    // Out of range for the type: refused before anything is sent.
    assert!(matches!(
        h.write("u16", Value::Int(70000)).await,
        Err(CommandError::InvalidValue(_))
    ));
    assert!(matches!(
        h.write("i16", Value::Float(1.5)).await,
        Err(CommandError::InvalidValue(_))
    ));
    assert!(matches!(
        h.write("text", Value::String("too long!".into())).await,
        Err(CommandError::InvalidValue(_))
    ));
    assert!(matches!(
        h.write("coil", Value::Int(7)).await,
        Err(CommandError::InvalidValue(_))
    ));
    let writes = |reqs: &[crate::util::Req]| {
        reqs.iter()
            .filter(|r| matches!(r.fc, 5 | 6 | 15 | 16))
            .count()
    };
    assert_eq!(writes(&peer.requests_synced().await[before..]), 0);

    // The device acknowledges but keeps the old value: read-back catches it (FC16, whose answer echoes only
    // the address and the quantity) ...
    match h.write("ignored", Value::UInt(42)).await {
        Err(CommandError::Verify { wrote, read }) => {
            assert_eq!((wrote.as_str(), read.as_str()), ("42", "0"))
        }
        other => panic!("expected a verify error, got {other:?}"),
    }
    // ... and an FC6 answer that echoes the value it kept rather than the one written fails the write at once.
    match h.write("ignored_fc6", Value::UInt(42)).await {
        Err(CommandError::Device(e)) => assert!(e.contains("does not echo the write"), "{e}"),
        other => panic!("expected an echo error, got {other:?}"),
    }
    // The device refuses: its exception is the reason.
    assert_eq!(
        h.write("missing", Value::UInt(1)).await,
        Err(CommandError::Device("IllegalDataAddress".into()))
    );
    assert_eq!(
        h.write("readonly", Value::UInt(1)).await,
        Err(CommandError::ReadOnly("readonly".into()))
    );
    assert_eq!(
        h.write("nope", Value::UInt(1)).await,
        Err(CommandError::UnknownPoint("nope".into()))
    );
}
