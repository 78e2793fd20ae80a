//! Each parser over a real pty, with garbage and partial frames mixed in.
use fieldbridge_sdk::{Quality, Value};
use fieldbridge_serial::checksum::{Algorithm, ChecksumSpec};

use crate::util::{start, DeviceEnd, Pty};

#[tokio::test]
async fn regex_lines_from_a_scale_with_garbage_and_partial_lines() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: scale
protocol: serial
connection:
  port: {}
  baud: 9600
  framing: {{type: line, terminator: crlf, max_frame: 64}}
  parser:
    type: regex
    pattern: '^(?P<state>ST|US),GS,\s*(?P<weight>[-+]?[0-9]+\.[0-9]+)\s*(?P<unit>[a-z]+)$'
points:
  - {{name: weight, field: weight, type: float}}
  - {{name: stable, field: state}}
  - {{name: unit, field: unit, type: string}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    // Line noise at power-up, then a line split across two writes.
    dev.send(b"\x00\xff\xfe~~\r\nST,GS,  +00").await;
    dev.send(b"12.50 kg\r\n").await;
    assert_eq!(r.value("weight").await, Value::Float(12.5));
    assert_eq!(r.value("stable").await, Value::String("ST".into()));
    assert_eq!(r.value("unit").await, Value::String("kg".into()));
    dev.send(b"US,GS,  -00001.25 kg\r\n").await;
    assert_eq!(r.value("weight").await, Value::Float(-1.25));
    let s = r
        .wait_stats("the garbage line counted", |s| s.parse_errors >= 1)
        .await;
    assert_eq!(s.parse_errors, 1, "{s:?}");
    assert_eq!(s.frames, 3, "{s:?}");
}

#[tokio::test]
async fn csv_columns_with_a_custom_terminator() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: weather
protocol: serial
connection:
  port: {}
  framing: {{type: line, terminator: "<END>"}}
  parser: {{type: csv, delimiter: ";", columns: [station, temp, rh]}}
points:
  - {{name: temp, field: temp, type: float}}
  - {{name: rh, field: 2, type: int}}
  - {{name: station, field: station}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    dev.send(b"WS1; 21.5 ;40<END>WS1;-3.25;").await;
    assert_eq!(r.value("temp").await, Value::Float(21.5));
    assert_eq!(r.value("rh").await, Value::Int(40));
    assert_eq!(r.value("station").await, Value::String("WS1".into()));
    dev.send(b"85<END>").await;
    assert_eq!(r.value("temp").await, Value::Float(-3.25));
    assert_eq!(r.value("rh").await, Value::Int(85));
}

#[tokio::test]
async fn json_documents_between_delimiters() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: analyzer
protocol: serial
connection:
  port: {}
  framing: {{type: delimited, start: "\x02", end: "\x03", max_frame: 256}}
  parser: {{type: json}}
  on_error: bad
points:
  - {{name: co2, field: /gas/co2, type: float}}
  - {{name: ok, field: status_ok}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    dev.send(b"boot noise\x02{\"gas\":{\"co2\":412.5},\"status_ok\":true}\x03")
        .await;
    assert_eq!(r.value("co2").await, Value::Float(412.5));
    assert_eq!(r.value("ok").await, Value::Bool(true));
    // A broken document: with `on_error: bad`, every point reads bad.
    dev.send(b"\x02{\"gas\":\x03").await;
    let bad = r.reading("co2").await;
    assert!(
        matches!(bad.quality, Quality::Bad(ref m) if m.contains("JSON")),
        "{bad:?}"
    );
    let s = r.stats();
    assert_eq!(s.parse_errors, 1, "{s:?}");
    assert_eq!(s.discarded_bytes, 10, "{s:?}");
}

#[tokio::test]
async fn key_value_pairs_with_cr_lines() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: arduino
protocol: serial
connection:
  port: {}
  baud: 115200
  framing: {{type: line, terminator: cr}}
  parser: {{type: key_value}}
points:
  - {{name: t, field: T, type: float}}
  - {{name: door, field: door, type: bool}}
  - {{name: count, field: n, type: uint}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    dev.send(b"T=19.75 door=open n=7\r").await;
    assert_eq!(r.value("t").await, Value::Float(19.75));
    assert_eq!(r.value("count").await, Value::UInt(7));
    // `open` is not a boolean: counted as a conversion error, nothing published for `door`.
    dev.send(b"T=20 door=on n=8\r").await;
    assert_eq!(r.value("door").await, Value::Bool(true));
    let s = r.stats();
    assert_eq!(s.conversion_errors, 1, "{s:?}");
}

fn nmea(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{sum:02X}\r\n")
}

#[tokio::test]
async fn nmea_gps_with_a_bad_checksum() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: gps
protocol: serial
connection:
  port: {}
  baud: 4800
  parser: {{type: nmea}}
  on_error: bad
points:
  - {{name: lat, field: GGA.latitude, type: float}}
  - {{name: lon, field: GGA.longitude, type: float}}
  - {{name: sats, field: GGA.satellites, type: int}}
  - {{name: speed, field: RMC.speed_knots, type: float}}
  - {{name: kmh, field: VTG.speed_kmh, type: float}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    dev.send("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n")
        .await;
    let Value::Float(lat) = r.value("lat").await else {
        panic!("lat not a float")
    };
    assert!((lat - 48.1173).abs() < 1e-9, "{lat}");
    assert_eq!(r.value("sats").await, Value::Int(8));
    dev.send("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n")
        .await;
    assert_eq!(r.value("speed").await, Value::Float(22.4));
    dev.send(nmea("GNVTG,054.7,T,034.4,M,005.5,N,010.2,K"))
        .await;
    assert_eq!(r.value("kmh").await, Value::Float(10.2));
    // One character changed in transit: the checksum no longer matches.
    dev.send("$GPGGA,123519,4807.038,N,01131.000,E,1,09,0.9,545.4,M,46.9,M,,*47\r\n")
        .await;
    let bad = r.reading("sats").await;
    assert!(
        matches!(bad.quality, Quality::Bad(ref m) if m.contains("checksum")),
        "{bad:?}"
    );
    let s = r.stats();
    assert_eq!(s.checksum_errors, 1, "{s:?}");
}

#[tokio::test]
async fn binary_length_prefixed_frames_with_crc() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: meter
protocol: serial
connection:
  port: {}
  framing: {{type: length_prefixed, start_hex: "AA 55", length_offset: 2, length_size: 1, length_adjust: 2, max_frame: 64}}
  parser:
    type: binary
    checksum: {{type: crc16_modbus, from: 2}}
points:
  - {{name: temp, at: 3, type: i16}}
  - {{name: energy, at: 5, type: u32, order: CDAB}}
  - {{name: power, at: 9, type: f32, order: DCBA}}
"#,
        pty.port()
    ));
    r.online().await;
    let crc = ChecksumSpec::new(Algorithm::Crc16Modbus);
    let frame = |temp: i16, energy: u32, power: f32| {
        let mut f = vec![0xAA, 0x55, 10];
        f.extend(temp.to_be_bytes());
        let e = energy.to_be_bytes();
        f.extend([e[2], e[3], e[0], e[1]]);
        f.extend(power.to_le_bytes());
        let sum = crc.encode(&f[2..]);
        f.extend(sum);
        f
    };
    let mut dev = DeviceEnd::open(&pty.a);
    let mut first = vec![0x00, 0x13];
    first.extend(frame(-215, 123_456_789, 1.5));
    dev.send(&first).await;
    assert_eq!(r.value("temp").await, Value::Int(-215));
    assert_eq!(r.value("energy").await, Value::UInt(123_456_789));
    assert_eq!(r.value("power").await, Value::Float(1.5));
    // A corrupted frame is counted and published nowhere; the next good one goes through.
    let mut bad = frame(1, 2, 3.0);
    bad[4] ^= 0x01;
    dev.send(&bad).await;
    dev.send(&frame(300, 7, -2.0)).await;
    assert_eq!(r.value("temp").await, Value::Int(300));
    let s = r.stats();
    assert_eq!(s.checksum_errors, 1, "{s:?}");
    assert_eq!(s.discarded_bytes, 2, "{s:?}");
}

#[tokio::test]
async fn binary_fixed_frames_resync_on_start_byte() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: sensor
protocol: serial
connection:
  port: {}
  framing: {{type: fixed, length: 6, start_hex: "7E"}}
  parser:
    type: binary
    checksum: {{type: sum8, from: 1}}
points:
  - {{name: level, at: 1, type: u16}}
  - {{name: flags, at: 3, type: u8}}
  - {{name: code, at: -2, type: i8}}
"#,
        pty.port()
    ));
    r.online().await;
    let frame = |level: u16, flags: u8, code: i8| {
        let mut f = vec![0x7E];
        f.extend(level.to_be_bytes());
        f.push(flags);
        f.push(code as u8);
        let sum = f[1..].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        f.push(sum);
        f
    };
    let mut dev = DeviceEnd::open(&pty.a);
    let mut bytes = vec![0x01, 0x02, 0x03];
    bytes.extend(frame(1000, 0b101, -3));
    dev.send(&bytes).await;
    assert_eq!(r.value("level").await, Value::UInt(1000));
    assert_eq!(r.value("flags").await, Value::UInt(5));
    assert_eq!(r.value("code").await, Value::Int(-3));
    assert_eq!(r.stats().discarded_bytes, 3);
}

#[tokio::test]
async fn text_parser_reads_barcodes() {
    let pty = Pty::new().await;
    let mut r = start(&format!(
        r#"
name: scanner
protocol: serial
connection:
  port: {}
points:
  - {{name: code}}
"#,
        pty.port()
    ));
    r.online().await;
    let mut dev = DeviceEnd::open(&pty.a);
    dev.send(b"4006381333931\r\n").await;
    assert_eq!(r.value("code").await, Value::Int(4006381333931));
    dev.send(b"ABC-123\n").await;
    assert_eq!(r.value("code").await, Value::String("ABC-123".into()));
}
