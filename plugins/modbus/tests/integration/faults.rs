//! Exceptions, timeouts, and devices that are down at start-up or restart mid-run.
use std::time::Duration;

use fieldbridge_sdk::{DeviceStatus, Quality, Value};
use serde_json::json;
use tokio::net::TcpListener;

use crate::util::{first_readings, free_port, start, wait_offline, wait_online, wait_value, Peer};

fn device(addr: &str, timeout: &str) -> String {
    format!(
        r#"
name: boiler
protocol: modbus
poll_interval: 300ms
timeout: {timeout}
connection:
  tcp: "{addr}"
points:
  - {{name: temp, address: 40001, type: i16}}
  - {{name: nowhere, address: 40101}}
"#
    )
}

#[tokio::test]
async fn an_illegal_address_reads_bad_and_polling_continues() {
    let mut peer = Peer::tcp(&json!({"1": {"hr": {"0": [215]}}})).await;
    let factory = crate::util::factory();
    let mut h = start(&factory, &device(&peer.addr(), "1s"));
    let got = first_readings(&mut h, &["temp", "nowhere"]).await;
    assert_eq!(got[0].value, Value::Int(215));
    assert_eq!(got[1].quality, Quality::Bad("IllegalDataAddress".into()));
    assert_eq!(
        h.status(),
        DeviceStatus::Online,
        "an exception is not a transport error"
    );
    peer.set(1, "hr", 0, &[0xFFF6]).await;
    wait_value(&mut h, "temp", |v| *v == Value::Int(-10)).await;
    let r = h
        .wait_for(|r| &*r.point == "nowhere", crate::util::WAIT)
        .await;
    assert_eq!(r.quality, Quality::Bad("IllegalDataAddress".into()));
}

#[tokio::test]
async fn a_device_that_never_answers_times_out_and_goes_offline() {
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let factory = crate::util::factory();
    let mut h = start(&factory, &device(&addr, "200ms"));
    let status = wait_offline(&mut h).await;
    let reason = status.reason().unwrap_or_default().to_owned();
    assert!(reason.contains("no answer within"), "{reason}");
    assert!(
        h.take_readings().is_empty(),
        "no reading may be invented for a silent device"
    );
    silent.abort();
}

#[tokio::test]
async fn a_server_started_after_the_adapter_is_picked_up() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let factory = crate::util::factory();
    let mut h = start(&factory, &device(&addr, "500ms"));
    let status = wait_offline(&mut h).await;
    assert!(
        status.reason().is_some_and(|r| r.contains("refused")),
        "{status:?}"
    );
    let _peer = Peer::tcp_on(port, &json!({"1": {"hr": {"0": [42]}}})).await;
    wait_value(&mut h, "temp", |v| *v == Value::Int(42)).await;
    wait_online(&mut h).await;
}

#[tokio::test]
async fn a_server_restarted_mid_run_comes_back() {
    let port = free_port();
    let peer = Peer::tcp_on(port, &json!({"1": {"hr": {"0": [1]}}})).await;
    let factory = crate::util::factory();
    let mut h = start(&factory, &device(&peer.addr(), "500ms"));
    wait_value(&mut h, "temp", |v| *v == Value::Int(1)).await;
    peer.kill().await;
    wait_offline(&mut h).await;
    let _peer = Peer::tcp_on(port, &json!({"1": {"hr": {"0": [2]}}})).await;
    wait_value(&mut h, "temp", |v| *v == Value::Int(2)).await;
    wait_online(&mut h).await;
    h.stop(Duration::from_secs(10)).await.expect("clean stop");
}

/// A Modbus TCP device that answers reads with zeros and echoes writes at `shift` past the address written
/// (a device that wrote somewhere else, or answers out of step); `close_after` closes the connection after
/// each answer (devices that allow one request per connection).
async fn scripted_device(shift: u16, close_after: bool) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut head = [0u8; 7];
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([head[4], head[5]]) as usize;
                    let mut pdu = vec![0u8; len.saturating_sub(1)];
                    if s.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let fc = pdu[0];
                    let addr = u16::from_be_bytes([pdu[1], pdu[2]]);
                    let arg = u16::from_be_bytes([pdu[3], pdu[4]]);
                    let answer: Vec<u8> = match fc {
                        3 | 4 => {
                            let mut a = vec![fc, (arg * 2) as u8];
                            a.extend(std::iter::repeat_n(0u8, arg as usize * 2));
                            a
                        }
                        5 | 6 | 15 | 16 => {
                            let mut a = vec![fc];
                            a.extend((addr + shift).to_be_bytes());
                            a.extend(arg.to_be_bytes());
                            a
                        }
                        _ => vec![fc | 0x80, 1],
                    };
                    let mut out = head[..4].to_vec();
                    out.extend(((answer.len() + 1) as u16).to_be_bytes());
                    out.push(head[6]);
                    out.extend(answer);
                    if s.write_all(&out).await.is_err() || close_after {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_write_whose_echo_names_another_register_fails() {
    let (addr, device) = scripted_device(0x100, false).await;
    let yaml = format!(
        r#"
name: plc
protocol: modbus
poll_interval: 300ms
connection:
  tcp: "{addr}"
points:
  - {{name: single, address: 40001, writable: true}}
  - {{name: wide, address: 40002, type: u32, writable: true}}
  - {{name: coil, address: 1, writable: true}}
"#
    );
    let factory = crate::util::factory();
    let mut h = start(&factory, &yaml);
    first_readings(&mut h, &["single"]).await;
    for (point, value) in [
        ("single", Value::UInt(5)),
        ("wide", Value::UInt(70_000)),
        ("coil", Value::Bool(true)),
    ] {
        let e = h
            .write(point, value)
            .await
            .expect_err("a wrong echo must fail the write")
            .to_string();
        assert!(e.contains("does not echo the write"), "{point}: {e}");
    }
    device.abort();
}
