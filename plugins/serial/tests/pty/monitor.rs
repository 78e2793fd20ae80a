//! The commissioning monitor over a real pty: frames printed, parsed with a draft map, bounded by a count.
use std::time::Duration;

use fieldbridge_serial::monitor::{bare_device, device_from_yaml, monitor, MonitorOptions};
use fieldbridge_serial::validate;
use tokio_util::sync::CancellationToken;

use crate::util::{DeviceEnd, Pty, WAIT};

/// Sends `bytes` every 50 ms until `stop` is cancelled (the monitor opens the port at a moment the test does
/// not see, so the device keeps talking, as a real one does). Bounded by [`WAIT`].
fn keep_sending(
    mut dev: DeviceEnd,
    bytes: Vec<u8>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !stop.is_cancelled() && tokio::time::Instant::now() < deadline {
            dev.send(&bytes).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
}

#[tokio::test]
async fn monitor_parses_frames_with_a_draft_map() {
    let pty = Pty::new().await;
    let map = r#"
devices:
  - name: other
    protocol: modbus
  - name: scale
    protocol: serial
    connection:
      port: /dev/does-not-matter
      framing: {type: line, terminator: crlf}
      parser: {type: regex, pattern: '^(?P<w>[-+]?[0-9.]+) ?kg$'}
    points:
      - {name: weight, field: w, type: float, unit: kg}
"#;
    let cfg = device_from_yaml("draft.yaml", map, None, &pty.port()).expect("draft map");
    let device = validate(&cfg).expect("valid draft");
    assert_eq!(device.port.path, pty.port());
    let stop = CancellationToken::new();
    let writer = keep_sending(
        DeviceEnd::open(&pty.a),
        b"12.5 kg\r\nnoise\r\n".to_vec(),
        stop.clone(),
    );
    let mut out = Vec::new();
    let opts = MonitorOptions {
        count: Some(4),
        ..MonitorOptions::default()
    };
    let stats = tokio::time::timeout(
        WAIT,
        monitor(&device, &opts, &mut out, CancellationToken::new()),
    )
    .await
    .expect("monitor stops after --count frames")
    .expect("monitor");
    stop.cancel();
    let _ = writer.await;
    let text = String::from_utf8(out).unwrap();
    assert_eq!(stats.frames, 4, "{text}");
    assert!(text.contains("< \"12.5 kg\" (7 bytes)"), "{text}");
    assert!(text.contains("weight = 12.5"), "{text}");
    assert!(
        text.contains("! the line does not match the pattern"),
        "{text}"
    );
    assert!(text.contains("# 4 frames"), "{text}");
}

#[tokio::test]
async fn monitor_without_a_map_prints_lines_and_stops_on_cancel() {
    let pty = Pty::new().await;
    let device = bare_device(fieldbridge_serial::config::PortSettings {
        path: pty.port(),
        ..Default::default()
    });
    let stop = CancellationToken::new();
    let writer = keep_sending(DeviceEnd::open(&pty.a), b"hello\r\n".to_vec(), stop.clone());
    let cancel = CancellationToken::new();
    let out = Shared::default();
    let opts = MonitorOptions {
        hex: true,
        ..MonitorOptions::default()
    };
    let mut sink = out.clone();
    let run = monitor(&device, &opts, &mut sink, cancel.clone());
    let canceller = async {
        // Ctrl-C once the monitor has printed a frame.
        let seen = out.clone();
        crate::util::wait_until("a frame printed", move || seen.text().contains("(5 bytes)")).await;
        cancel.cancel();
    };
    let (r, _) = tokio::time::timeout(WAIT, async { tokio::join!(run, canceller) })
        .await
        .expect("monitor stops on cancel");
    stop.cancel();
    let _ = writer.await;
    r.expect("monitor");
    let text = out.text();
    assert!(text.contains("< 68 65 6c 6c 6f (5 bytes)"), "{text}");
    assert!(
        text.contains("# "),
        "the summary is printed after a cancel: {text}"
    );
}

/// Output the test can read while the monitor writes it.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn draft_map_errors_are_positioned() {
    let e = device_from_yaml(
        "draft.yaml",
        "devices:\n  - name: x\n    protocol: serial\n    poll_interval: soon\n",
        None,
        "/dev/x",
    )
    .unwrap_err();
    assert!(
        e[0].to_string()
            .starts_with("draft.yaml:4:20: devices[0].poll_interval:"),
        "{e:?}"
    );
    let e = device_from_yaml("draft.yaml", "devices: []\n", Some("nope"), "/dev/x").unwrap_err();
    assert!(e[0].message.contains("no device named `nope`"), "{e:?}");
}

#[tokio::test]
async fn monitor_stops_after_its_duration_on_a_silent_port() {
    let pty = Pty::new().await;
    let device = bare_device(fieldbridge_serial::config::PortSettings {
        path: pty.port(),
        ..Default::default()
    });
    let opts = MonitorOptions {
        duration: Some(Duration::from_millis(200)),
        ..MonitorOptions::default()
    };
    let mut out = Vec::new();
    let stats = tokio::time::timeout(
        WAIT,
        monitor(&device, &opts, &mut out, CancellationToken::new()),
    )
    .await
    .expect("monitor stops after --duration")
    .expect("monitor");
    assert_eq!(stats.frames, 0);
    assert!(String::from_utf8(out).unwrap().contains("# 0 frames"));
}
