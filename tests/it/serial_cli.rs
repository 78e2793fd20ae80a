//! `fieldbridge serial monitor` end to end: the binary reads a socat pty with a draft map (issue 12).
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::util::peers::run;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fieldbridge")
}

#[tokio::test]
async fn serial_monitor_prints_parsed_frames_and_stops_after_count() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let _socat = Command::new("socat")
        .args([
            "-d",
            "-d",
            &format!("pty,raw,echo=0,link={}", a.display()),
            &format!("pty,raw,echo=0,link={}", b.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("socat (apt-get install socat)");
    crate::util::wait_until("socat's pty links", || a.exists() && b.exists()).await;
    let map = dir.path().join("draft.yaml");
    std::fs::write(
        &map,
        "name: gps\nprotocol: serial\nconnection:\n  port: /dev/null\n  parser: {type: nmea}\npoints:\n  - {name: sats, field: GGA.satellites, type: int}\n",
    )
    .unwrap();
    // The device keeps talking until the monitor has seen its two frames and exited.
    let dev_path = a.clone();
    let writer = tokio::spawn(async move {
        let mut dev = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&dev_path)
            .await
            .expect("open pty");
        for _ in 0..400 {
            let line = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n";
            if dev.write_all(line).await.is_err() {
                break;
            }
            let _ = dev.flush().await;
            // A GPS talker's pace (20 sentences a second), not a wait for anything.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (code, out, err) = run(Command::new(binary()).args([
        "serial",
        "monitor",
        &b.display().to_string(),
        "--map",
        &map.display().to_string(),
        "--baud",
        "4800",
        "--count",
        "2",
    ]))
    .await;
    writer.abort();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sats = 8"), "{out}");
    assert!(out.contains("# 2 frames"), "{out}");
    assert!(out.contains("4800 baud"), "{out}");

    // A map with an error exits 64 with the position.
    std::fs::write(
        &map,
        "name: gps\nprotocol: serial\nconnection:\n  parser: {type: nmeaa}\n",
    )
    .unwrap();
    let (code, _, err) = run(Command::new(binary()).args([
        "serial",
        "monitor",
        "/dev/null",
        "--map",
        &map.display().to_string(),
    ]))
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("draft.yaml:4:18: connection.parser.type: unknown parser `nmeaa`"),
        "{err}"
    );
    // A port that does not exist: exit 1.
    let (code, _, err) = run(Command::new(binary()).args([
        "serial",
        "monitor",
        "/dev/fieldbridge-no-such-port",
        "--count",
        "1",
    ]))
    .await;
    assert_eq!(code, 1, "{err}");
}
