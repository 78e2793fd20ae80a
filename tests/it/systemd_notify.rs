//! The daemon under systemd's `Type=notify` (issue 13): `READY=1` only once MQTT is served, `WATCHDOG=1` pings
//! while it runs when `WATCHDOG_USEC` is set, `STOPPING=1` at SIGTERM. systemd's side is played by a datagram
//! socket the test binds, as `$NOTIFY_SOCKET` (a path, or an `@abstract` name).
use std::path::Path;
use std::process::Stdio;

use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

use crate::util::daemon::{binary, free_port};
use crate::util::peers::run;
use crate::util::WAIT;

fn write_config(dir: &Path, mqtt: u16) -> std::path::PathBuf {
    let path = dir.join("fb.yaml");
    std::fs::write(
        &path,
        format!(
            "gateway: {{id: notify}}\nbroker:\n  listeners:\n    - bind: 127.0.0.1:{mqtt}\n\
             api: {{bind: 127.0.0.1:{}}}\nstorage: {{path: {}}}\n",
            free_port(),
            dir.join("fb.db").display()
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path, notify_socket: &str, watchdog: Option<(&str, Option<String>)>) -> Child {
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--config"])
        .arg(config)
        .env("FIELDBRIDGE_LOG", "warn")
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some((usec, pid)) = watchdog {
        cmd.env("WATCHDOG_USEC", usec);
        if let Some(pid) = pid {
            cmd.env("WATCHDOG_PID", pid);
        }
    }
    cmd.spawn().expect("spawn fieldbridge")
}

async fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(WAIT * 3, sock.recv(&mut buf))
        .await
        .expect("a notification from fieldbridge in time")
        .expect("recv");
    String::from_utf8(buf[..n].to_vec()).expect("utf-8 notification")
}

async fn stop(child: &mut Child) {
    let pid = child.id().expect("running").to_string();
    let (code, _, err) = run(Command::new("kill").args(["-TERM", &pid])).await;
    assert_eq!(code, 0, "kill: {err}");
}

#[tokio::test]
async fn ready_after_listeners_bind_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mqtt = free_port();
    let config = write_config(dir.path(), mqtt);
    // 200 ms: a ping every 100 ms.
    let mut child = spawn(&config, sock_path.to_str().unwrap(), Some(("200000", None)));

    let first = next(&sock).await;
    assert_eq!(first, "READY=1\nSTATUS=running");
    // Ready means served: the MQTT listener accepts at once, no retry loop.
    tokio::net::TcpStream::connect(("127.0.0.1", mqtt))
        .await
        .expect("MQTT is served when READY=1 arrives");

    for _ in 0..3 {
        assert_eq!(next(&sock).await, "WATCHDOG=1");
    }

    stop(&mut child).await;
    // Pings already on their way may come first; a bounded number of them.
    let mut last = next(&sock).await;
    for _ in 0..20 {
        if last != "WATCHDOG=1" {
            break;
        }
        last = next(&sock).await;
    }
    assert_eq!(last, "STOPPING=1\nSTATUS=stopping");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("daemon exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn abstract_socket_and_a_watchdog_meant_for_another_process() {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = format!(
        "fieldbridge-it-notify-{}-{}",
        std::process::id(),
        free_port()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    std_sock.set_nonblocking(true).unwrap();
    let sock = UnixDatagram::from_std(std_sock).unwrap();
    let mqtt = free_port();
    let config = write_config(dir.path(), mqtt);
    // WATCHDOG_PID names another process (pid 1): this daemon must not ping on its behalf.
    let mut child = spawn(
        &config,
        &format!("@{name}"),
        Some(("20000", Some("1".to_string()))),
    );
    assert_eq!(next(&sock).await, "READY=1\nSTATUS=running");
    stop(&mut child).await;
    // With a 20 ms period a ping would be due every 10 ms; the next datagram must be STOPPING.
    assert_eq!(next(&sock).await, "STOPPING=1\nSTATUS=stopping");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("daemon exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
