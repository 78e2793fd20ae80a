//! Every type and order read from a known register image (the same literals as the codec's golden tests,
//! computed independently), through the whole adapter.
use fieldbridge_sdk::{Quality, Value};
use serde_json::json;

use crate::util::{first_readings, start, Peer};

fn image() -> serde_json::Value {
    let hr: Vec<u16> = vec![
        0x42F6, 0xE979, 0xF642, 0x79E9, 0xE979, 0x42F6, 0x79E9, 0xF642, // 0..8 f32 x4 orders
        0x405E, 0xDD2F, 0x1A9F, 0xBE77, 0x5E40, 0x2FDD, 0x9F1A,
        0x77BE, // 8..16 f64 ABCDEFGH, BADCFEHG
        0xBE77, 0x1A9F, 0xDD2F, 0x405E, 0x77BE, 0x9F1A, 0x2FDD,
        0x5E40, // 16..24 f64 GHEFCDAB, HGFEDCBA
        0xFEDC, 0xBA98, 0x7654, 0x3210, 0xDCFE, 0x98BA, 0x5476,
        0x1032, // 24..32 i64 ABCD.., BADC..
        0x3210, 0x7654, 0xBA98, 0xFEDC, 0x1032, 0x5476, 0x98BA,
        0xDCFE, // 32..40 i64 GHEF.., HGFE..
        0xF8A4, 0x32EB, 0xA4F8, 0xEB32, 0x32EB, 0xF8A4, 0xEB32,
        0xA4F8, // 40..48 i32 x4 orders
        0xB2D0, 0x5E00, 0x5E00, 0xB2D0, 0xD0B2, 0x005E, 0x005E,
        0xD0B2, // 48..56 u32 ABCD CDAB BADC DCBA
        0xFFFE, 0x1234, 0xFEFF, 0x8005, // 56 i16, 57 u16, 58 i16 BA, 59 status bits 0, 2, 15
        0x4642, 0x2D31, 0x0000, 0x4246, 0x312D, 0x0000, // 60 "FB-1", 63 "FB-1" byte-swapped
        0xDEAD, 0xBEEF, // 66 bytes
    ];
    json!({"1": {
        "hr": {"0": hr},
        "ir": {"0": [0xBFC0, 0x0000, 500]},
        "co": {"0": [1, 0, 1]},
        "di": {"0": [0, 1]},
    }})
}

const F32: f64 = 123.456f32 as f64;

#[tokio::test]
async fn every_type_and_order_from_a_register_image() {
    let mut peer = Peer::tcp(&image()).await;
    let yaml = format!(
        r#"
name: golden
protocol: modbus
poll_interval: 1s
connection:
  tcp: "{addr}"
  unit: 1
  order: CDAB
points:
  - {{name: f32_abcd, address: 40001, type: f32, order: ABCD}}
  - {{name: f32_badc, address: 40003, type: f32, order: BADC}}
  - {{name: f32_default_cdab, address: 40005, type: f32}}
  - {{name: f32_dcba, address: 40007, type: float32, order: DCBA}}
  - {{name: f64_abcdefgh, address: 40009, type: f64, order: ABCDEFGH}}
  - {{name: f64_badcfehg, address: 40013, type: f64, order: BADCFEHG}}
  - {{name: f64_ghefcdab, address: 40017, type: f64, order: GHEFCDAB}}
  - {{name: f64_hgfedcba, address: 40021, type: f64, order: HGFEDCBA}}
  - {{name: i64_abcd, address: 40025, type: i64, order: ABCDEFGH}}
  - {{name: i64_badc, address: 40029, type: i64, order: BADCFEHG}}
  - {{name: i64_cdab, address: 40033, type: i64}}
  - {{name: i64_dcba, address: 40037, type: i64, order: HGFEDCBA}}
  - {{name: u64_abcd, address: 40025, type: u64, order: ABCD}}
  - {{name: u64_dcba, address: 40037, type: u64, order: DCBA}}
  - {{name: i32_abcd, address: 40041, type: i32, order: ABCD}}
  - {{name: i32_badc, address: 40043, type: i32, order: BADC}}
  - {{name: i32_cdab, address: 40045, type: i32, order: CDAB}}
  - {{name: i32_dcba, address: 40047, type: i32, order: DCBA}}
  - {{name: u32_abcd, address: 40049, type: u32, order: ABCD}}
  - {{name: u32_cdab, address: 40051, type: u32}}
  - {{name: u32_badc, address: 40053, type: u32, order: BADC}}
  - {{name: u32_dcba, address: 40055, type: u32, order: DCBA}}
  - {{name: i16, address: 40057, type: i16}}
  - {{name: u16_default, address: 40058}}
  - {{name: i16_ba, address: 40059, type: i16, order: BA}}
  - {{name: bit0, address: 40060, type: bit, bit: 0}}
  - {{name: bit1, address: 40060, type: bit, bit: 1}}
  - {{name: bit2, address: 40060, type: bit, bit: 2}}
  - {{name: bit15, address: 40060, type: bit, bit: 15}}
  - {{name: text, address: 40061, type: string, length: 3}}
  - {{name: text_ba, address: 40064, type: string, length: 3, order: BA}}
  - {{name: raw, address: 40067, type: bytes, length: 2}}
  - {{name: ir_f32, address: 30001, type: f32, order: ABCD}}
  - {{name: ir_u16, address: 30003}}
  - {{name: coil0, address: 1}}
  - {{name: coil1, address: 2}}
  - {{name: coil2, address: "00003", type: bool}}
  - {{name: di0, address: 10001}}
  - {{name: di1, address: 10002}}
"#,
        addr = peer.addr()
    );
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml);
    let expected: Vec<(&str, Value)> = vec![
        ("f32_abcd", Value::Float(F32)),
        ("f32_badc", Value::Float(F32)),
        ("f32_default_cdab", Value::Float(F32)),
        ("f32_dcba", Value::Float(F32)),
        ("f64_abcdefgh", Value::Float(123.456)),
        ("f64_badcfehg", Value::Float(123.456)),
        ("f64_ghefcdab", Value::Float(123.456)),
        ("f64_hgfedcba", Value::Float(123.456)),
        ("i64_abcd", Value::Int(-81985529216486896)),
        ("i64_badc", Value::Int(-81985529216486896)),
        ("i64_cdab", Value::Int(-81985529216486896)),
        ("i64_dcba", Value::Int(-81985529216486896)),
        ("u64_abcd", Value::UInt(18364758544493064720)),
        ("u64_dcba", Value::UInt(18364758544493064720)),
        ("i32_abcd", Value::Int(-123456789)),
        ("i32_badc", Value::Int(-123456789)),
        ("i32_cdab", Value::Int(-123456789)),
        ("i32_dcba", Value::Int(-123456789)),
        ("u32_abcd", Value::UInt(3_000_000_000)),
        ("u32_cdab", Value::UInt(3_000_000_000)),
        ("u32_badc", Value::UInt(3_000_000_000)),
        ("u32_dcba", Value::UInt(3_000_000_000)),
        ("i16", Value::Int(-2)),
        // The device's CDAB is about 32/64-bit values; a plain register stays big-endian.
        ("u16_default", Value::UInt(0x1234)),
        ("i16_ba", Value::Int(-2)),
        ("bit0", Value::Bool(true)),
        ("bit1", Value::Bool(false)),
        ("bit2", Value::Bool(true)),
        ("bit15", Value::Bool(true)),
        ("text", Value::String("FB-1".into())),
        ("text_ba", Value::String("FB-1".into())),
        ("raw", Value::Bytes(vec![0xDE, 0xAD, 0xBE, 0xEF])),
        ("ir_f32", Value::Float(-1.5)),
        ("ir_u16", Value::UInt(500)),
        ("coil0", Value::Bool(true)),
        ("coil1", Value::Bool(false)),
        ("coil2", Value::Bool(true)),
        ("di0", Value::Bool(false)),
        ("di1", Value::Bool(true)),
    ];
    let names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    let got = first_readings(&mut h, &names).await;
    for ((name, want), r) in expected.iter().zip(&got) {
        assert_eq!(r.quality, Quality::Good, "{name}: {r:?}");
        assert_eq!(&r.value, want, "{name}");
    }
    // The 68 holding registers are contiguous: one request, not 31.
    let hr_reads: Vec<_> = peer
        .requests_synced()
        .await
        .into_iter()
        .filter(|r| r.fc == 3)
        .collect();
    assert!(
        !hr_reads.is_empty() && hr_reads.iter().all(|r| r.addr == 0 && r.count == 68),
        "{hr_reads:?}"
    );
}

#[tokio::test]
async fn offset_addressing_reads_the_same_registers() {
    let peer = Peer::tcp(&image()).await;
    let yaml = format!(
        r#"
name: offsets
protocol: modbus
connection:
  tcp: "{addr}"
  addressing: offset
points:
  - {{name: f32_cdab, address: "0x0004", table: holding_register, type: f32, order: CDAB}}
  - {{name: ir_f32, address: 0, table: input_register, type: f32}}
  - {{name: coil2, address: 2, table: coil}}
  - {{name: di1, address: 1, table: discrete_input}}
"#,
        addr = peer.addr()
    );
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml);
    let got = first_readings(&mut h, &["f32_cdab", "ir_f32", "coil2", "di1"]).await;
    assert_eq!(got[0].value, Value::Float(F32));
    assert_eq!(got[1].value, Value::Float(-1.5));
    assert_eq!(got[2].value, Value::Bool(true));
    assert_eq!(got[3].value, Value::Bool(true));
}
