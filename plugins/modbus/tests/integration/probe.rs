//! The commissioning probe (`fieldbridge modbus read|write`) against a real device.
use std::time::Duration;

use fieldbridge_modbus::{
    parse_address, parse_value, probe_read, probe_write, ConnectionArgs, DataType, Format, Order,
    ProbeError, ProbeTarget, Table, WriteOptions,
};
use fieldbridge_sdk::{CommandError, Value};
use serde_json::json;

use crate::util::{free_port, Peer};

fn target(addr: &str) -> ProbeTarget {
    let args = ConnectionArgs {
        tcp: Some(addr.to_owned()),
        ..ConnectionArgs::default()
    };
    ProbeTarget {
        endpoint: args.endpoint().expect("endpoint"),
        unit: 1,
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn probe_reads_consecutive_values_with_the_daemon_decoder() {
    // Three CDAB floats: 1.5, 2.5, -1.5.
    let mut peer = Peer::tcp(&json!({"1": {"ir": {"0": [0, 0x3FC0, 0, 0x4020, 0, 0xBFC0]}}})).await;
    let (table, offset) = parse_address("30001", None).expect("address");
    let format = Format::new(DataType::F32).with_order(Order::Cdab);
    let values = probe_read(&target(&peer.addr()), table, offset, format, 3)
        .await
        .expect("read");
    let got: Vec<(String, Vec<u16>, Value)> = values
        .iter()
        .map(|v| (v.reference(), v.raw.clone(), v.value.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("30001".into(), vec![0, 0x3FC0], Value::Float(1.5)),
            ("30003".into(), vec![0, 0x4020], Value::Float(2.5)),
            ("30005".into(), vec![0, 0xBFC0], Value::Float(-1.5)),
        ]
    );
    assert_eq!(
        peer.requests_synced().await.len(),
        1,
        "one request for the three values"
    );
}

#[tokio::test]
async fn probe_writes_and_verifies() {
    let mut peer = Peer::tcp(&json!({"1": {"hr": {"0": [0, 0, 0]}, "co": {"0": [0]}}})).await;
    let t = target(&peer.addr());
    let format = Format::new(DataType::I32).with_order(Order::Abcd);
    let value = parse_value("-2", &format).expect("value");
    probe_write(
        &t,
        Table::HoldingRegister,
        1,
        format,
        &value,
        WriteOptions {
            verify: true,
            write_multiple: false,
        },
    )
    .await
    .expect("write");
    assert_eq!(peer.get(1, "hr", 0, 3).await, vec![0, 0xFFFF, 0xFFFE]);
    let coil = Format::new(DataType::Bool);
    probe_write(
        &t,
        Table::Coil,
        0,
        coil,
        &Value::Bool(true),
        WriteOptions::default(),
    )
    .await
    .expect("coil");
    assert_eq!(peer.get(1, "co", 0, 1).await, vec![1]);
    let read_only = probe_write(
        &t,
        Table::InputRegister,
        0,
        Format::new(DataType::U16),
        &Value::UInt(1),
        WriteOptions::default(),
    )
    .await;
    assert!(
        matches!(read_only, Err(ProbeError::Invalid(_))),
        "{read_only:?}"
    );
    let too_big = probe_write(
        &t,
        Table::HoldingRegister,
        0,
        Format::new(DataType::U16),
        &Value::UInt(70000),
        WriteOptions::default(),
    )
    .await;
    assert!(
        matches!(
            too_big,
            Err(ProbeError::Write(CommandError::InvalidValue(_)))
        ),
        "{too_big:?}"
    );
}

#[tokio::test]
async fn probe_reports_exceptions_and_unreachable_devices() {
    let peer = Peer::tcp(&json!({"1": {"hr": {"0": [1]}}})).await;
    let e = probe_read(
        &target(&peer.addr()),
        Table::HoldingRegister,
        50,
        Format::new(DataType::U16),
        1,
    )
    .await;
    assert_eq!(e, Err(ProbeError::Exception("IllegalDataAddress".into())));
    let closed = format!("127.0.0.1:{}", free_port());
    let e = probe_read(
        &target(&closed),
        Table::HoldingRegister,
        0,
        Format::new(DataType::U16),
        1,
    )
    .await;
    assert!(matches!(e, Err(ProbeError::Transport(_))), "{e:?}");
}
