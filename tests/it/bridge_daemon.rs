//! The bridge inside the real `fieldbridge` binary: `kill -9` in the middle of draining a backlog, restart,
//! and the backlog resumes from the committed cursor; nothing acknowledged to the local publisher is lost
//! (issue 4, fault tests).
use std::collections::HashMap;
use std::time::Duration;

use fieldbridge::mqtt::{Protocol, QoS};

use crate::util::client::{publish, Client};
use crate::util::daemon::{free_port, Daemon};
use crate::util::proxy::{Mode, Proxy};
use crate::util::upstream::{Upstream, UpstreamOpts};

const N: u64 = 3000;
const WINDOW: u64 = 50;
const RATE: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_backlog_resumes_from_the_cursor_and_loses_nothing() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    let proxy = Proxy::start(up.addr()).await;
    // The uplink is down while the backlog builds up.
    proxy.set_mode(Mode::Down);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!(
        "gateway: {{id: gw}}
broker:
  listeners: [{{bind: \"127.0.0.1:{port}\"}}]
api: {{enabled: false}}
storage:
  path: {db}
  durability: strict
bridges:
  - name: cloud
    url: mqtt://127.0.0.1:{proxy}
    keepalive: 5s
    reconnect_min: 100ms
    reconnect_max: 500ms
    inflight: {WINDOW}
    rate_limit: {RATE}
    forward:
      - filter: \"gw/#\"
        topic: \"up/{{topic}}\"
",
        db = dir.path().join("fb.db").display(),
        proxy = proxy.port(),
    );
    let path = dir.path().join("fb.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut daemon = Daemon::start(&path, port).await;
    let mut c = Client::connect(daemon.mqtt, Protocol::V311, "producer", true).await;
    for i in 0..N {
        // QoS 1 with `durability: strict`: each PUBACK means the row is committed.
        let p = publish(
            &format!("gw/d{}/v", i % 3),
            &i.to_string(),
            QoS::AtLeastOnce,
            0,
        );
        assert_eq!(c.publish(p).await, 0);
    }
    drop(c);

    let mut sub = up.subscribe(&["up/#"]).await;
    proxy.set_mode(Mode::Pass);
    sub.until("a third of the backlog", super::LONG, |s| {
        s.distinct.len() >= (N / 3) as usize
    })
    .await;
    daemon.signal("-KILL").await;
    daemon.wait().await;
    let before_restart = sub.distinct.len();
    assert!((before_restart as u64) < N, "the kill came mid-backlog");

    let _daemon = Daemon::start(&path, port).await;
    sub.until("the whole backlog after the restart", super::LONG, |s| {
        s.distinct.len() >= N as usize
    })
    .await;
    sub.drain_for(Duration::from_millis(300)).await;
    let mut seen = vec![false; N as usize];
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut dups = 0u64;
    for (t, p) in &sub.got {
        let i: u64 = p.parse().unwrap();
        assert_eq!(*t, format!("up/gw/d{}/v", i % 3));
        if std::mem::replace(&mut seen[i as usize], true) {
            dups += 1;
            continue;
        }
        let l = last.entry(t.clone()).or_insert(-1);
        assert!(i as i64 > *l, "{i} after {l} on {t}");
        *l = i as i64;
    }
    // The cursor is handed to the store every 200 ms and committed within a commit interval: what was acked
    // in that last stretch (at RATE msg/s) plus one window may come again, nothing more.
    let bound = WINDOW + RATE / 2;
    assert!(
        dups <= bound,
        "{dups} duplicates after kill -9 (bound {bound})"
    );
    eprintln!("kill -9 after {before_restart} of {N}; duplicates after restart: {dups}");
}
