//! Coalescing, counted on the device: the requests pymodbus saw are exactly the planned ones.
use std::collections::BTreeSet;

use fieldbridge_sdk::{DeviceStatus, Quality, Value};
use serde_json::json;

use crate::util::{first_readings, start, Peer, Req, WAIT};

/// Waits until every expected request was seen at least once, then checks that nothing else was sent.
async fn expect_requests(peer: &Peer, expected: &[Req]) {
    let want: BTreeSet<Req> = expected.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen: BTreeSet<Req> = peer.requests().into_iter().collect();
        if want.is_subset(&seen) {
            assert_eq!(seen, want, "requests other than the planned ones were sent");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all planned requests were seen within {WAIT:?}: want {want:?}, seen {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn req(unit: u8, fc: u8, addr: u16, count: u16) -> Req {
    Req {
        unit,
        fc,
        addr,
        count,
    }
}

#[tokio::test]
async fn neighbours_are_read_in_as_few_requests_as_allowed() {
    let regs: Vec<u16> = (0..40).collect();
    let peer = Peer::tcp(&json!({
        "1": {"hr": {"0": regs}, "co": {"0": [1, 0, 1, 1]}},
        "2": {"hr": {"0": regs}},
    }))
    .await;
    // Unit 1: ten contiguous registers, then an f32 and a u16 with a one-register hole (bridged by
    // max_gap 2), a point polled at another interval next to them (never merged), and coils.
    let mut points = String::new();
    for i in 0..10 {
        points.push_str(&format!("  - {{name: r{i}, address: {}}}\n", 40001 + i));
    }
    let a = format!(
        r#"
name: meter_a
protocol: modbus
poll_interval: 500ms
connection:
  tcp: "{addr}"
  unit: 1
  max_gap: 2
points:
{points}  - {{name: slow, address: 40011, poll_interval: 2s}}
  - {{name: f, address: 40021, type: f32}}
  - {{name: g, address: 40024}}
  - {{name: c0, address: 1}}
  - {{name: c3, address: 4}}
"#,
        addr = peer.addr()
    );
    // Unit 2 on the same endpoint (the line is shared) rejects long reads: 4 registers at most.
    let b = format!(
        r#"
name: meter_b
protocol: modbus
poll_interval: 500ms
connection:
  tcp: "{addr}"
  unit: 2
  max_registers: 4
points:
{points}"#,
        addr = peer.addr()
    );
    let factory = crate::util::factory();
    let mut ha = start(&factory, &a);
    let mut hb = start(&factory, &b);
    expect_requests(
        &peer,
        &[
            req(1, 3, 0, 10),
            req(1, 3, 10, 1),
            req(1, 3, 20, 4),
            // c0 and c3: a gap of 2 coils, bridged too (max_gap counts coils on bit tables).
            req(1, 1, 0, 4),
            req(2, 3, 0, 4),
            req(2, 3, 4, 4),
            req(2, 3, 8, 2),
        ],
    )
    .await;
    let got = first_readings(&mut ha, &["r0", "r9", "slow", "f", "g", "c3"]).await;
    assert_eq!(got[0].value, Value::UInt(0));
    assert_eq!(got[1].value, Value::UInt(9));
    assert_eq!(got[2].value, Value::UInt(10));
    // Registers 20, 21 hold 20, 21: as an f32 that is 0x00140015.
    assert_eq!(
        got[3].value,
        Value::Float(f64::from(f32::from_bits(0x0014_0015)))
    );
    assert_eq!(got[4].value, Value::UInt(23));
    assert_eq!(got[5].value, Value::Bool(true));
    let got = first_readings(&mut hb, &["r9"]).await;
    assert_eq!(got[0].value, Value::UInt(9));
    assert_eq!(
        factory.registry().open_lines(),
        1,
        "both devices share one TCP connection"
    );
}

#[tokio::test]
async fn a_rejected_merged_read_falls_back_to_one_request_per_point() {
    // Register 4 does not exist: the read of 0..6 merged across the hole (max_gap 3) is refused with
    // IllegalDataAddress.
    let mut peer = Peer::tcp(&json!({"1": {"hr": {"0": [10, 11, 12, 13], "5": [15]}}})).await;
    let yaml = format!(
        r#"
name: holes
protocol: modbus
poll_interval: 500ms
connection:
  tcp: "{addr}"
  max_gap: 3
points:
  - {{name: a, address: 40001}}
  - {{name: missing, address: 40005}}
  - {{name: c, address: 40006}}
"#,
        addr = peer.addr()
    );
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml);
    let got = first_readings(&mut h, &["a", "missing", "c"]).await;
    assert_eq!(
        (got[0].value.clone(), got[0].quality.clone()),
        (Value::UInt(10), Quality::Good)
    );
    assert_eq!(got[1].quality, Quality::Bad("IllegalDataAddress".into()));
    assert_eq!(
        (got[2].value.clone(), got[2].quality.clone()),
        (Value::UInt(15), Quality::Good)
    );
    assert_eq!(h.status(), DeviceStatus::Online);
    // From then on the points are read one by one: the merged request was sent once only.
    let _ = first_readings(&mut h, &["a", "missing", "c"]).await;
    let reqs = peer.requests_synced().await;
    let merged = reqs.iter().filter(|r| r.count == 6).count();
    assert_eq!(merged, 1, "{reqs:?}");
    expect_requests(
        &peer,
        &[
            req(1, 3, 0, 6),
            req(1, 3, 0, 1),
            req(1, 3, 4, 1),
            req(1, 3, 5, 1),
        ],
    )
    .await;
}
