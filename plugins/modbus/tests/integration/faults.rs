//! Exceptions, timeouts, and devices that are down at start-up or restart mid-run.
use std::time::Duration;

use fieldbridge_sdk::{DeviceStatus, Quality, Value};
use serde_json::json;
use tokio::net::TcpListener;

use crate::util::{
    first_readings, free_port, good_readings, start, wait_offline, wait_online, wait_value, Peer,
    WAIT,
};

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

/// How a [`scripted_device`] misbehaves; `Script::default()` is a well-behaved device.
#[derive(Debug, Clone, Copy, Default)]
struct Script {
    /// Writes are echoed `shift` past the address written (a device that wrote somewhere else, or answers
    /// out of step).
    shift: u16,
    /// Close the connection after each answer (devices that allow one request per connection).
    close_after: bool,
    /// Answer from this unit id whatever the request's (a gateway or device configured with another id).
    unit: Option<u8>,
    /// Registers added at the end of every register read, with a byte count that agrees with them (an
    /// answer longer than requested, framed consistently).
    extra_registers: u16,
    /// Claim two bytes more in the byte count of a register read than the data has (a byte count that
    /// disagrees with the data; the frame length agrees with the data).
    byte_count_off: bool,
    /// Listen on this port (0: any free one).
    port: u16,
}

/// What a [`scripted_device`] did: one entry per request, `(connection number, function code)`.
type ScriptLog = std::sync::Arc<std::sync::Mutex<Vec<(usize, u8)>>>;

/// A Modbus TCP device, misbehaving as `script` says, that answers register reads with each register's
/// offset as its value (register 40101 reads 100), echoes writes, and refuses anything else with
/// IllegalFunction. Returns its address, its task and its request log.
async fn scripted_device(script: Script) -> (String, tokio::task::JoinHandle<()>, ScriptLog) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind(("127.0.0.1", script.port))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let log = ScriptLog::default();
    let task = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut connections = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                connections += 1;
                let conn = connections;
                let log = log.clone();
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
                        log.lock().unwrap().push((conn, fc));
                        let addr = u16::from_be_bytes([pdu[1], pdu[2]]);
                        let arg = u16::from_be_bytes([pdu[3], pdu[4]]);
                        let answer: Vec<u8> = match fc {
                            3 | 4 => {
                                let n = arg + script.extra_registers;
                                let claimed = n * 2 + if script.byte_count_off { 2 } else { 0 };
                                let mut a = vec![fc, claimed as u8];
                                a.extend((addr..addr + n).flat_map(u16::to_be_bytes));
                                a
                            }
                            5 | 6 | 15 | 16 => {
                                let mut a = vec![fc];
                                a.extend((addr + script.shift).to_be_bytes());
                                a.extend(arg.to_be_bytes());
                                a
                            }
                            _ => vec![fc | 0x80, 1],
                        };
                        let mut out = head[..4].to_vec();
                        out.extend(((answer.len() + 1) as u16).to_be_bytes());
                        out.push(script.unit.unwrap_or(head[6]));
                        out.extend(answer);
                        if s.write_all(&out).await.is_err() || script.close_after {
                            return;
                        }
                    }
                });
            }
        })
    };
    (addr, task, log)
}

#[tokio::test]
async fn a_write_whose_echo_names_another_register_fails() {
    let (addr, device, _) = scripted_device(Script {
        shift: 0x100,
        ..Script::default()
    })
    .await;
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

#[tokio::test]
async fn the_offline_reason_follows_the_current_failure() {
    let port = free_port();
    let factory = crate::util::factory();
    let mut h = start(&factory, &device(&format!("127.0.0.1:{port}"), "500ms"));
    let status = wait_offline(&mut h).await;
    assert!(
        status.reason().is_some_and(|r| r.contains("refused")),
        "{status:?}"
    );
    // Something listens on the port now, but answers from another unit id: the reason must follow.
    let (_, device, log) = scripted_device(Script {
        unit: Some(2),
        port,
        ..Script::default()
    })
    .await;
    let status = h
        .wait_status(|s| s.reason().is_some_and(|r| !r.contains("refused")), WAIT)
        .await;
    assert_eq!(
        status,
        DeviceStatus::Offline("bad response: answer from unit 2, expected unit 1".into())
    );
    assert!(!log.lock().unwrap().is_empty(), "the device was asked");
    device.abort();
}

/// A device with two points far apart: two requests per poll.
fn two_requests(addr: &str) -> String {
    format!(
        r#"
name: one-shot
protocol: modbus
poll_interval: 300ms
timeout: 500ms
retries: 0
connection:
  tcp: "{addr}"
points:
  - {{name: first, address: 40001, writable: true}}
  - {{name: second, address: 40101}}
"#
    )
}

#[tokio::test]
async fn a_device_that_closes_the_connection_after_each_answer_is_polled() {
    let (addr, device, log) = scripted_device(Script {
        close_after: true,
        ..Script::default()
    })
    .await;
    let factory = crate::util::factory();
    let mut h = start(&factory, &two_requests(&addr));
    // Several polls of two requests each: the second request of a poll, and the first of the next one, find
    // the connection closed by the device, and are sent on a new one instead of failing the poll.
    for _ in 0..3 {
        let got = first_readings(&mut h, &["first", "second"]).await;
        assert_eq!(
            (&got[0].value, &got[0].quality),
            (&Value::UInt(0), &Quality::Good)
        );
        assert_eq!(
            (&got[1].value, &got[1].quality),
            (&Value::UInt(100), &Quality::Good)
        );
    }
    h.write("first", Value::UInt(7))
        .await
        .expect("a write after the device closed the connection");
    assert_eq!(h.status(), DeviceStatus::Online);
    let log = log.lock().unwrap().clone();
    assert!(
        log.len() >= 7 && log.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "one request per connection: {log:?}"
    );
    device.abort();
}

#[tokio::test]
async fn an_answer_of_another_size_than_asked_for_is_refused() {
    let single = |addr: &str| {
        format!(
            r#"
name: meter
protocol: modbus
poll_interval: 300ms
timeout: 500ms
connection:
  tcp: "{addr}"
points:
  - {{name: energy, address: 40001}}
"#
        )
    };
    for (script, why) in [
        // Two registers for one, with a byte count (4) and a frame length that agree.
        (
            Script {
                extra_registers: 1,
                ..Script::default()
            },
            "bad response: malformed answer to function 0x03: 2 registers for 1 requested",
        ),
        // The same refusal as a byte count that disagrees with the data.
        (
            Script {
                byte_count_off: true,
                ..Script::default()
            },
            "bad response: malformed answer to function 0x03: byte count does not match the data",
        ),
    ] {
        let (addr, device, _) = scripted_device(script).await;
        let factory = crate::util::factory();
        let mut h = start(&factory, &single(&addr));
        let status = wait_offline(&mut h).await;
        assert_eq!(status, DeviceStatus::Offline(why.into()), "{script:?}");
        let good = good_readings(&mut h);
        assert!(good.is_empty(), "{script:?}: {good:?}");
        device.abort();
    }
}
