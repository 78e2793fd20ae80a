//! The embedded broker's state survives restarts (issue 9): retained messages and persistent sessions
//! (subscriptions and queued QoS 1 messages) after `kill -9` and after a clean stop, with the real binary.
use std::path::Path;

use fieldbridge::mqtt::{Protocol, QoS};

use crate::util::client::{connect_packet, publish, sub, Client, Recv};
use crate::util::daemon::{free_port, Daemon};
use crate::util::wait_until;

fn config(dir: &Path, port: u16) -> std::path::PathBuf {
    let cfg = format!(
        "gateway: {{id: gw}}
broker:
  listeners: [{{bind: \"127.0.0.1:{port}\"}}]
api: {{enabled: false}}
storage:
  path: {}
",
        dir.join("fb.db").display()
    );
    let path = dir.join("fb.yaml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Whether a committed session row holds `needle` (the daemon writes; this reads the WAL-mode file).
fn saved_session_holds(db: &Path, needle: &str) -> bool {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    c.query_row(
        "SELECT count(*) FROM broker_state WHERE kind = 2 AND instr(value, CAST(?1 AS BLOB)) > 0",
        [needle],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}

async fn keeper(addr: std::net::SocketAddr) -> (Client, bool) {
    let mut cp = connect_packet(Protocol::V5, "keeper", false);
    cp.properties.session_expiry_interval = Some(3600);
    let (c, ack) = Client::connect_with(addr, cp).await;
    assert_eq!(ack.reason_code, 0);
    (c, ack.session_present)
}

#[tokio::test]
async fn retained_messages_and_persistent_sessions_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = config(dir.path(), port);
    let db = dir.path().join("fb.db");
    let mut daemon = Daemon::start(&path, port).await;

    let (mut k, present) = keeper(daemon.mqtt).await;
    assert!(!present);
    k.subscribe(vec![sub("keep/#", QoS::AtLeastOnce)]).await;
    k.disconnect().await;
    let mut p = Client::connect(daemon.mqtt, Protocol::V311, "producer", true).await;
    let mut r = publish("state/boiler", "42", QoS::AtLeastOnce, 0);
    r.retain = true;
    assert_eq!(p.publish(r).await, 0);
    for i in 1..=5 {
        assert_eq!(
            p.publish(publish(
                "keep/x",
                &format!("queued-{i}"),
                QoS::AtLeastOnce,
                0
            ))
            .await,
            0
        );
    }
    // Saved within one save interval plus one commit interval.
    wait_until("the queued messages saved", || {
        saved_session_holds(&db, "queued-5")
    })
    .await;
    daemon.signal("-KILL").await;
    daemon.wait().await;

    let mut daemon = Daemon::start(&path, port).await;
    let mut late = Client::connect(daemon.mqtt, Protocol::V311, "late", true).await;
    late.subscribe(vec![sub("state/#", QoS::AtMostOnce)]).await;
    let got = late.recv_publish().await;
    assert_eq!(
        (&*got.topic, &got.payload[..], got.retain),
        ("state/boiler", &b"42"[..], true)
    );

    let (mut k, present) = keeper(daemon.mqtt).await;
    assert!(present, "the session came back after kill -9");
    for i in 1..=5 {
        let m = k.recv_publish().await;
        assert_eq!(&m.payload[..], format!("queued-{i}").as_bytes(), "in order");
    }
    // The subscription itself came back too: a new message reaches the keeper.
    let mut p = Client::connect(daemon.mqtt, Protocol::V311, "producer2", true).await;
    assert_eq!(
        p.publish(publish("keep/y", "live", QoS::AtLeastOnce, 0))
            .await,
        0
    );
    assert_eq!(&k.recv_publish().await.payload[..], b"live");
    k.disconnect().await;
    assert_eq!(
        p.publish(publish("keep/y", "while-stopping", QoS::AtLeastOnce, 0))
            .await,
        0
    );

    // A clean stop saves what the last interval changed.
    daemon.signal("-TERM").await;
    assert_eq!(daemon.wait().await, Some(0));
    let daemon = Daemon::start(&path, port).await;
    let (mut k, present) = keeper(daemon.mqtt).await;
    assert!(present);
    assert_eq!(&k.recv_publish().await.payload[..], b"while-stopping");
    assert!(matches!(
        k.recv_within(std::time::Duration::from_millis(300)).await,
        Recv::Timeout
    ));
    // A session that ends is forgotten: a clean start with expiry 0 ends it, and the next run has none.
    drop(k);
    let mut cp = connect_packet(Protocol::V5, "keeper", true);
    cp.properties.session_expiry_interval = Some(0);
    let (k, _) = Client::connect_with(daemon.mqtt, cp).await;
    k.disconnect().await;
    let mut daemon = daemon;
    daemon.signal("-TERM").await;
    assert_eq!(daemon.wait().await, Some(0));
    let daemon = Daemon::start(&path, port).await;
    let (_k, present) = keeper(daemon.mqtt).await;
    assert!(!present, "an ended session is not restored");
}
