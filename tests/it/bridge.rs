//! Bridges against a real upstream (Debian's mosquitto), with a TCP proxy in between for the fault tests
//! (issue 4: uplink cuts, silent stalls, upstream restarts, refused credentials, TLS, reload).
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use fieldbridge::bridge::{BridgeState, BridgeStatus, Bridges};
use fieldbridge::broker::{Broker, Message};
use fieldbridge::config::{
    BridgeConfig, BridgeScheme, BridgeUrl, ForwardRule, StorageConfig, SubscribeRule, Synchronous,
};
use fieldbridge::mqtt::{Protocol, QoS};
use fieldbridge::store::{LogRecord, Store};

use crate::util::peers::{mosquitto_pub, run};
use crate::util::proxy::{Mode, Proxy};
use crate::util::tls::make_pki;
use crate::util::upstream::{Upstream, UpstreamOpts};
use crate::util::{broker_config, within};

/// `kill -9` of the daemon mid-backlog (the real binary).
#[path = "bridge_daemon.rs"]
mod daemon_kill;

/// Longer than [`crate::util::WAIT`] for waits that include reconnects with backoff.
const LONG: Duration = Duration::from_secs(30);

/// The gateway side: a store in a temp dir, a broker, the bridges.
struct Gw {
    store: Store,
    broker: Broker,
    bridges: Bridges,
    _dir: tempfile::TempDir,
}

fn storage(dir: &std::path::Path) -> StorageConfig {
    StorageConfig {
        commit_interval: Duration::from_millis(5),
        commit_rows: 1000,
        synchronous: Synchronous::Normal,
        ..StorageConfig::at(dir.join("log.db"))
    }
}

impl Gw {
    fn start(cfgs: &[BridgeConfig]) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&storage(dir.path())).expect("open store");
        let broker = Broker::new(broker_config());
        let bridges = Bridges::start(cfgs, "gw", store.clone(), broker.clone());
        Gw {
            store,
            broker,
            bridges,
            _dir: dir,
        }
    }

    /// Appends rows `from..to` (payload = the number) on `gw/d{i % topics}/v`, QoS 1; returns the head.
    async fn append(&self, from: u64, to: u64, topics: u64) -> u64 {
        self.append_with(from, to, |i| (format!("gw/d{}/v", i % topics), 1))
            .await
    }

    async fn append_with(&self, from: u64, to: u64, f: impl Fn(u64) -> (String, u8)) -> u64 {
        let mut last = 0;
        let mut i = from;
        while i < to {
            let end = (i + 1000).min(to);
            let recs: Vec<LogRecord> = (i..end)
                .map(|n| {
                    let (topic, qos) = f(n);
                    let mut r = LogRecord::new(topic, Bytes::from(n.to_string()));
                    r.qos = qos;
                    r
                })
                .collect();
            let range = self
                .store
                .append_batch(recs)
                .await
                .expect("append")
                .await
                .expect("commit");
            last = *range.end();
            i = end;
        }
        last
    }

    fn status(&self, name: &str) -> BridgeStatus {
        self.bridges.status(name).expect("bridge exists")
    }

    async fn wait_status(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        pred: impl Fn(&BridgeStatus) -> bool,
    ) -> BridgeStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let st = self.status(name);
            if pred(&st) {
                return st;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; status: {st:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the bridge's cursor reached `seq`.
    async fn delivered(&self, name: &str, seq: u64) -> BridgeStatus {
        self.wait_status(name, &format!("cursor {seq}"), LONG, |s| s.cursor >= seq)
            .await
    }
}

fn bridge_cfg(name: &str, port: u16) -> BridgeConfig {
    BridgeConfig {
        keepalive: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        inflight: 50,
        forward: vec![ForwardRule {
            filter: "gw/#".into(),
            topic: "up/{topic}".into(),
            qos: None,
            retain: true,
        }],
        ..BridgeConfig::new(name, BridgeUrl::mqtt("127.0.0.1", port), "gw")
    }
}

/// Checks what a subscriber got for payloads `0..n` on `up/gw/d{i % topics}/v`: every number arrived, the
/// first arrivals are in order per topic, and returns the number of duplicates.
fn check_stream(got: &[(String, String)], n: u64, topics: u64) -> u64 {
    let mut seen = vec![false; n as usize];
    let mut last_first: HashMap<&str, i64> = HashMap::new();
    let mut dups = 0;
    for (t, p) in got {
        let i: u64 = p.parse().unwrap_or_else(|_| panic!("payload `{p}` on {t}"));
        assert!(i < n, "unexpected payload {i}");
        assert_eq!(*t, format!("up/gw/d{}/v", i % topics), "topic of {i}");
        if seen[i as usize] {
            dups += 1;
            continue;
        }
        seen[i as usize] = true;
        let last = last_first.entry(t.as_str()).or_insert(-1);
        assert!(
            i as i64 > *last,
            "{i} arrived after {last} on {t}: out of order"
        );
        *last = i as i64;
    }
    let missing: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| !**s)
        .map(|(i, _)| i)
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "missing messages, first ones: {missing:?}"
    );
    dups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_in_log_order_with_mapping_both_protocols() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut cfg = bridge_cfg("cloud", up.port);
        cfg.protocol = protocol;
        cfg.client_id = format!("gw-cloud-{protocol:?}");
        // mosquitto holds MQTT 3.1.1 clients to max_inflight_messages (20) for QoS 2 without saying so.
        cfg.inflight = 20;
        cfg.forward = vec![
            ForwardRule {
                filter: "gw/+/alarm".into(),
                topic: "alarms/{1}".into(),
                qos: Some(QoS::ExactlyOnce),
                retain: false,
            },
            ForwardRule {
                filter: "gw/#".into(),
                topic: "up/{topic}".into(),
                qos: None,
                retain: true,
            },
        ];
        let mut sub = up.subscribe(&["up/#", "alarms/#"]).await;
        let gw = Gw::start(&[cfg]);
        let local = gw.broker.link("test");
        local
            .subscribe("gw/bridge/+/state", QoS::AtLeastOnce)
            .unwrap();
        gw.wait_status("cloud", "connected", LONG, |s| s.state.connected())
            .await;
        // 300 rows: QoS 0/1/2 mixed on three topics, an alarm every 10th row, and rows no rule forwards.
        let head = gw
            .append_with(0, 300, |i| match i % 10 {
                0 => (format!("gw/d{}/alarm", i % 3), 1),
                5 => ("other/x".to_string(), 1),
                _ => (format!("gw/d{}/v", i % 3), (i % 3) as u8),
            })
            .await;
        let st = gw.delivered("cloud", head).await;
        assert_eq!(st.lag_rows, 0);
        sub.until("270 messages", LONG, |s| s.got.len() >= 270)
            .await;
        sub.drain_for(Duration::from_millis(200)).await;
        assert_eq!(
            sub.got.len(),
            270,
            "no duplicates without faults, nothing of `other/`"
        );
        let mut last: HashMap<String, u64> = HashMap::new();
        for (t, p) in &sub.got {
            let i: u64 = p.parse().unwrap();
            match i % 10 {
                0 => assert_eq!(*t, format!("alarms/d{}", i % 3)),
                5 => panic!("row {i} matches no forward rule"),
                _ => assert_eq!(*t, format!("up/gw/d{}/v", i % 3)),
            }
            if let Some(prev) = last.insert(t.clone(), i) {
                assert!(i > prev, "{i} after {prev} on {t}");
            }
        }
        // The birth is retained upstream; the state is retained locally.
        assert_eq!(up.retained("gw/status").await.as_deref(), Some("online"));
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let r = within("state message", local.recv()).await;
            let doc: serde_json::Value = serde_json::from_slice(&r.msg.payload).unwrap();
            assert_eq!(r.msg.topic.as_ref(), "gw/bridge/cloud/state");
            if doc["state"] == "live" && doc["lag_rows"] == 0 {
                assert!(r.msg.retain);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no live state published"
            );
        }
        gw.bridges.shutdown(Duration::from_secs(2)).await;
        assert_eq!(
            gw.store.cursor("cloud").unwrap(),
            head,
            "the cursor is stored at shutdown"
        );
        assert_eq!(
            up.retained("gw/status").await.as_deref(),
            Some("offline"),
            "a clean stop says offline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_cut_many_times_loses_nothing_and_duplicates_stay_within_the_window() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    let proxy = Proxy::start(up.addr()).await;
    let mut sub = up.subscribe(&["up/#"]).await;
    let mut cfg = bridge_cfg("cloud", proxy.port());
    cfg.inflight = 50;
    // Slow enough that every cut lands mid-stream.
    cfg.rate_limit = Some(5000);
    let window = u64::from(cfg.inflight);
    let gw = Gw::start(&[cfg]);
    gw.wait_status("cloud", "connected", LONG, |s| s.state.connected())
        .await;
    const N: u64 = 20_000;
    const TOPICS: u64 = 4;
    const CUTS: u64 = 12;
    let per_round = N / CUTS;
    let mut next = 0;
    for round in 0..CUTS {
        let to = if round == CUTS - 1 {
            N
        } else {
            next + per_round
        };
        gw.append(next, to, TOPICS).await;
        next = to;
        // Cut while the stream is flowing: once part of this round is upstream.
        let want = (next - per_round / 2) as usize;
        sub.until("half of the round upstream", LONG, |s| {
            s.distinct.len() >= want
        })
        .await;
        let accepted = proxy.accepted();
        proxy.cut();
        // Wait for the reconnect before the next round, so every round sees a live cut.
        crate::util::wait_until("reconnect through the proxy", || {
            proxy.accepted() > accepted
        })
        .await;
    }
    let head = gw.store.head();
    let st = gw.delivered("cloud", head).await;
    sub.until("every message", LONG, |s| s.distinct.len() >= N as usize)
        .await;
    sub.drain_for(Duration::from_millis(300)).await;
    let dups = check_stream(&sub.got, N, TOPICS);
    let reconnects = st.connects - 1;
    assert!(
        reconnects >= CUTS,
        "each cut forced a reconnect ({reconnects})"
    );
    assert!(
        st.resent <= reconnects * window,
        "resent {} > {reconnects} reconnects x window {window}",
        st.resent
    );
    assert!(
        dups <= st.resent,
        "the upstream saw {dups} duplicates but only {} were resent",
        st.resent
    );
    eprintln!(
        "cuts: {CUTS}, reconnects: {reconnects}, resent: {}, duplicates seen: {dups}",
        st.resent
    );
}

/// An outage's backlog long enough to drain for seconds (the driver then polls for acks before it sleeps, and a
/// large window refills in quarters), cut once midway, through a window of 20 (mosquitto's Receive Maximum,
/// MQTT 5) and the default of 10,000 (MQTT 3.1.1): nothing lost, in order, duplicates within what was resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_drains_through_a_cut_with_small_and_large_windows() {
    for (protocol, inflight, window) in [
        (Protocol::V5, Some(100), 20),
        (Protocol::V311, None, 10_000),
    ] {
        let up = Upstream::start(UpstreamOpts::default()).await;
        let proxy = Proxy::start(up.addr()).await;
        let mut sub = up.subscribe(&["up/#"]).await;
        let mut cfg = bridge_cfg("cloud", proxy.port());
        cfg.protocol = protocol;
        // None: the default of a bridge without `inflight`.
        cfg.inflight = inflight.unwrap_or_else(|| {
            BridgeConfig::new("d", BridgeUrl::mqtt("127.0.0.1", 1), "gw").inflight
        });
        let gw = Gw::start(&[cfg]);
        let st = gw
            .wait_status("cloud", "connected", LONG, |s| s.state.connected())
            .await;
        assert_eq!(st.window, window, "{protocol:?}");
        const N: u64 = 200_000;
        const TOPICS: u64 = 3;
        // The backlog builds up while the link is down, as in an outage.
        proxy.set_mode(Mode::Down);
        gw.wait_status("cloud", "down", LONG, |s| !s.state.connected())
            .await;
        let head = gw.append(0, N, TOPICS).await;
        proxy.set_mode(Mode::Pass);
        // Cut once a third is acknowledged: by the bridge's own cursor, not by what the subscriber has seen
        // (mosquitto may have acknowledged everything while its subscriber is still two thirds through).
        let st = gw
            .wait_status("cloud", "a third delivered", LONG, |s| {
                s.cursor >= head - 2 * N / 3
            })
            .await;
        proxy.cut();
        assert!(st.cursor < head, "{protocol:?}: drained before the cut");
        let st = gw.delivered("cloud", head).await;
        sub.until("every message", LONG, |s| s.distinct.len() >= N as usize)
            .await;
        sub.drain_for(Duration::from_millis(300)).await;
        let dups = check_stream(&sub.got, N, TOPICS);
        assert!(
            st.connects >= 3,
            "{protocol:?}: the outage and the cut forced reconnects ({})",
            st.connects
        );
        assert!(
            dups <= st.resent && st.resent <= (st.connects - 1) * window as u64,
            "{protocol:?}: {dups} duplicates, {} resent over {} reconnects",
            st.resent,
            st.connects - 1
        );
    }
}

/// A link whose TCP connection is up while the upstream never answers the CONNECT is `connecting` until the
/// CONNACK deadline, then backs off: never `live`, never counted as a connect (the status once said `live` at
/// the driver's first tick, before any CONNACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_connect_is_never_live() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    let proxy = Proxy::start(up.addr()).await;
    proxy.set_mode(Mode::Stall);
    let mut cfg = bridge_cfg("cloud", proxy.port());
    cfg.keepalive = Duration::from_secs(1);
    let gw = Gw::start(&[cfg]);
    let local = gw.broker.link("test");
    local
        .subscribe("gw/bridge/cloud/state", QoS::AtLeastOnce)
        .unwrap();
    gw.append(0, 10, 1).await;
    // Every state the bridge publishes, until the attempt ends at the CONNACK deadline (2 s); each wait is
    // bounded by `within`.
    let mut seen = Vec::new();
    loop {
        let r = within("the next bridge state", local.recv()).await;
        let doc: serde_json::Value = serde_json::from_slice(&r.msg.payload).unwrap();
        let state = doc["state"].as_str().unwrap_or_default().to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        assert!(
            state != "live" && state != "backlog" && doc["connects"] == 0,
            "no CONNACK came, yet: {doc:#} (states seen: {seen:?})"
        );
        if doc["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no CONNACK"))
        {
            break;
        }
    }
    assert_eq!(gw.status("cloud").connects, 0);
    assert!(proxy.accepted() >= 1, "the bridge never reached the proxy");
    assert!(
        seen.iter().any(|s| s == "connecting"),
        "states seen: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stall_is_detected_by_keepalive_and_nothing_unacked_counts_as_delivered() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    let proxy = Proxy::start(up.addr()).await;
    let mut sub = up.subscribe(&["up/#"]).await;
    let mut cfg = bridge_cfg("cloud", proxy.port());
    cfg.keepalive = Duration::from_secs(1);
    let gw = Gw::start(&[cfg]);
    gw.wait_status("cloud", "connected", LONG, |s| s.state.connected())
        .await;
    let first = gw.append(0, 100, 2).await;
    gw.delivered("cloud", first).await;
    sub.until("the first 100", LONG, |s| s.got.len() >= 100)
        .await;

    proxy.set_mode(Mode::Stall);
    let head = gw.append(100, 300, 2).await;
    let st = gw
        .wait_status("cloud", "keepalive timeout", LONG, |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("keepalive"))
        })
        .await;
    assert!(
        !st.state.connected() || st.connects > 1,
        "the stalled link was given up: {st:#?}"
    );
    // Nothing went through the stalled link, so nothing more may count as delivered.
    assert_eq!(
        gw.status("cloud").cursor,
        first,
        "rows that were never acknowledged were marked delivered"
    );
    assert_eq!(gw.store.cursor("cloud").unwrap(), first);
    sub.drain_for(Duration::from_millis(200)).await;
    assert_eq!(sub.got.len(), 100);

    proxy.set_mode(Mode::Pass);
    gw.delivered("cloud", head).await;
    sub.until("all 300", LONG, |s| s.distinct.len() >= 300)
        .await;
    check_stream(&sub.got, 300, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_resumes_the_backlog() {
    let mut up = Upstream::start(UpstreamOpts::default()).await;
    let proxy = Proxy::start(up.addr()).await;
    let mut sub = up.subscribe(&["up/#"]).await;
    let gw = Gw::start(&[bridge_cfg("cloud", proxy.port())]);
    gw.wait_status("cloud", "connected", LONG, |s| s.state.connected())
        .await;
    let first = gw.append(0, 500, 3).await;
    gw.delivered("cloud", first).await;
    sub.until("the first 500", LONG, |s| s.got.len() >= 500)
        .await;

    up.kill().await;
    let head = gw.append(500, 2000, 3).await;
    gw.wait_status("cloud", "disconnected", LONG, |s| !s.state.connected())
        .await;
    assert!(gw.status("cloud").cursor < head);
    // Keep the link down while the cloud restarts and its subscriber comes back.
    proxy.set_mode(Mode::Down);
    up.restart().await;
    let mut sub2 = up.subscribe(&["up/#"]).await;
    proxy.set_mode(Mode::Pass);
    let st = gw.delivered("cloud", head).await;
    assert!(st.connects >= 2);
    sub2.until("the backlog", LONG, |s| s.distinct.len() >= 1500)
        .await;
    let mut all = sub.got.clone();
    all.extend(sub2.got.iter().cloned());
    check_stream(&all, 2000, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_reported_and_retried_until_fixed() {
    let mut up = Upstream::start(UpstreamOpts::users(&[("gw", "old-secret")])).await;
    let proxy = Proxy::start(up.addr()).await;
    let mut cfg = bridge_cfg("cloud", proxy.port());
    cfg.username = Some("gw".into());
    cfg.password = Some("new-secret".into());
    let gw = Gw::start(&[cfg.clone()]);
    let local = gw.broker.link("test");
    local
        .subscribe("gw/bridge/cloud/state", QoS::AtLeastOnce)
        .unwrap();
    let st = gw
        .wait_status("cloud", "a refusal", LONG, |s| s.last_error.is_some())
        .await;
    let err = st.last_error.clone().unwrap();
    assert!(
        err.contains("bad user name or password") || err.contains("not authorized"),
        "unclear error: {err}"
    );
    assert!(err.contains("CONNACK reason 0x8"), "{err}");
    // It keeps retrying, with backoff (and says so in its state).
    let attempts = proxy.accepted();
    crate::util::wait_until("a few retries", || proxy.accepted() >= attempts + 2).await;
    let st = gw.status("cloud");
    assert!(
        matches!(st.state, BridgeState::Backoff | BridgeState::Connecting),
        "{st:#?}"
    );
    assert_eq!(st.connects, 0);
    // The retained local state carries the reason.
    let deadline = tokio::time::Instant::now() + crate::util::WAIT;
    loop {
        let r = within("state with the error", local.recv()).await;
        let doc: serde_json::Value = serde_json::from_slice(&r.msg.payload).unwrap();
        if doc["last_error"].as_str().is_some_and(|e| e == err) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    let head = gw.append(0, 100, 2).await;

    // The cloud operator fixes the password file and restarts the broker: the bridge gets in by itself.
    up.set_users(&[("gw", "new-secret")]);
    up.restart().await;
    let mut sub = up.subscribe(&["up/#"]).await;
    gw.delivered("cloud", head).await;
    sub.drain_for(Duration::from_millis(100)).await;
    assert!(
        gw.status("cloud").last_error.is_none(),
        "the error is cleared once delivering"
    );

    // The password changes upstream again; this time the gateway's config is fixed with a reload.
    up.set_users(&[("gw", "third")]);
    up.restart().await;
    gw.wait_status("cloud", "refused again", LONG, |s| {
        s.last_error.is_some() && !s.state.connected()
    })
    .await;
    let mut sub = up.subscribe(&["up/#"]).await;
    let head = gw.append(100, 200, 2).await;
    cfg.password = Some("third".into());
    gw.bridges.reload(&[cfg], "gw").await;
    gw.delivered("cloud", head).await;
    sub.until("rows after the reload", LONG, |s| s.distinct.len() >= 100)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_test_ca_and_client_certificates() {
    let pki = make_pki();
    let mut opts = UpstreamOpts::tls(&pki);
    opts.require_client_cert = true;
    let up = Upstream::start(opts).await;
    let mut sub = up.subscribe(&["up/#"]).await;
    let tls = |name: &str, host: &str| {
        let mut c = bridge_cfg(name, up.port);
        c.url.scheme = BridgeScheme::Mqtts;
        c.url.host = host.into();
        c.ca_file = Some(pki.ca());
        c.client_cert = Some((pki.client_cert(), pki.client_key()));
        c
    };
    let good = tls("good", "localhost");
    let mut system_roots = tls("sysroots", "127.0.0.1");
    system_roots.ca_file = None;
    let mut no_cert = tls("nocert", "127.0.0.1");
    no_cert.client_cert = None;
    let gw = Gw::start(&[good, system_roots, no_cert]);
    gw.wait_status("good", "connected over TLS", LONG, |s| s.state.connected())
        .await;
    let head = gw.append(0, 200, 2).await;
    gw.delivered("good", head).await;
    sub.until("200 over TLS", LONG, |s| s.distinct.len() >= 200)
        .await;
    // The test CA is not in the system store: the certificate is refused, and the error says why.
    let st = gw
        .wait_status("sysroots", "a TLS error", LONG, |s| s.last_error.is_some())
        .await;
    let e = st.last_error.unwrap();
    assert!(
        e.starts_with("TLS:") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
    assert_eq!(st.connects, 0);
    // mosquitto requires a client certificate: without one the bridge never gets in.
    let st = gw
        .wait_status("nocert", "an error", LONG, |s| s.last_error.is_some())
        .await;
    assert_eq!(st.connects, 0, "{st:#?}");
    assert!(st.cursor < head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_only_what_changed() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    let pa = Proxy::start(up.addr()).await;
    let pb = Proxy::start(up.addr()).await;
    let pc = Proxy::start(up.addr()).await;
    let mut sub = up.subscribe(&["a/#", "b/#", "a2/#", "c/#"]).await;
    let mut a = bridge_cfg("a", pa.port());
    a.forward[0].topic = "a/{topic}".into();
    let mut b = bridge_cfg("b", pb.port());
    b.forward[0].topic = "b/{topic}".into();
    let mut c = bridge_cfg("c", pc.port());
    c.forward[0].topic = "c/{topic}".into();
    let gw = Gw::start(&[a.clone(), b.clone(), c.clone()]);
    for n in ["a", "b", "c"] {
        gw.wait_status(n, "connected", LONG, |s| s.state.connected())
            .await;
    }
    let head = gw.append(0, 100, 1).await;
    for n in ["a", "b", "c"] {
        gw.delivered(n, head).await;
    }
    sub.until("300", LONG, |s| s.got.len() >= 300).await;
    let b_before = gw.status("b");

    // a changes its remote prefix, b is untouched, c is removed, d is new.
    a.forward[0].topic = "a2/{topic}".into();
    let d = {
        let mut d = bridge_cfg("d", up.port);
        d.forward[0].topic = "d/{topic}".into();
        d
    };
    gw.bridges.reload(&[a, b, d], "gw").await;
    let names: Vec<String> = gw.bridges.statuses().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b", "d"]);
    assert!(
        !gw.store.cursors().iter().any(|(n, _)| n == "c"),
        "a removed bridge's cursor is removed"
    );
    let head2 = gw.append(100, 200, 1).await;
    for n in ["a", "b", "d"] {
        gw.delivered(n, head2).await;
    }
    sub.until("a2 and b rows", LONG, |s| {
        s.got.iter().filter(|(t, _)| t.starts_with("a2/")).count() >= 100
            && s.got.iter().filter(|(t, _)| t.starts_with("b/")).count() >= 200
    })
    .await;
    sub.drain_for(Duration::from_millis(200)).await;
    let count = |p: &str| sub.got.iter().filter(|(t, _)| t.starts_with(p)).count();
    assert_eq!(
        count("a/"),
        100,
        "a forwarded nothing twice after its restart"
    );
    assert_eq!(count("c/"), 100, "c stopped");
    let b_after = gw.status("b");
    assert_eq!(pb.accepted(), 1, "b kept its connection");
    assert_eq!(b_after.connects, b_before.connects);
    assert_eq!(b_after.since_ms, b_before.since_ms);
    assert_eq!(pa.accepted(), 2, "a reconnected once");
    // d is new: it starts at the head of the log at the time it was added, not at the beginning.
    assert_eq!(gw.status("d").delivered, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_rules_bring_commands_down_without_loops() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    let mut cfg = bridge_cfg("cloud", up.port);
    // Overlapping on purpose: what comes down matches the forward filter too.
    cfg.forward = vec![ForwardRule {
        filter: "gw/#".into(),
        topic: "{topic}".into(),
        qos: None,
        retain: true,
    }];
    cfg.subscribe = vec![
        SubscribeRule {
            filter: "cmd/gw/+/+/set".into(),
            topic: "gw/{1}/{2}/set".into(),
            qos: QoS::AtLeastOnce,
        },
        SubscribeRule {
            filter: "gw/+/+/set".into(),
            topic: "{topic}".into(),
            qos: QoS::AtLeastOnce,
        },
    ];
    let gw = Gw::start(&[cfg]);
    let local = gw.broker.link("device");
    local.subscribe("gw/+/+/set", QoS::AtLeastOnce).unwrap();
    gw.wait_status("cloud", "connected", LONG, |s| s.state.connected())
        .await;
    let mut upstream_sub = up.subscribe(&["gw/#"]).await;
    let head_before = gw.store.head();
    let args = up.client_args(None);
    let mut got = Vec::new();
    for (topic, payload) in [
        ("cmd/gw/boiler/setpoint/set", "21.5"),
        ("gw/meter/reset/set", "1"),
    ] {
        // The subscription may still be on its way: publish until the first one arrives.
        let deadline = tokio::time::Instant::now() + crate::util::WAIT;
        loop {
            let mut p = mosquitto_pub();
            p.args(&args).args(["-q", "1", "-t", topic, "-m", payload]);
            assert_eq!(run(&mut p).await.0, 0);
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), local.recv()).await {
                got.push((
                    r.msg.topic.to_string(),
                    String::from_utf8_lossy(&r.msg.payload).to_string(),
                ));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no command came down for {topic}"
            );
        }
    }
    assert_eq!(
        got[0],
        ("gw/boiler/setpoint/set".to_string(), "21.5".to_string())
    );
    assert_eq!(got[1], ("gw/meter/reset/set".to_string(), "1".to_string()));
    // Nothing that came down was logged, so nothing goes back up.
    assert_eq!(gw.store.head(), head_before, "inbound messages were logged");
    upstream_sub.drain_for(Duration::from_millis(300)).await;
    let echoed: Vec<_> = upstream_sub
        .got
        .iter()
        .filter(|(t, _)| t.starts_with("gw/boiler"))
        .collect();
    assert!(
        echoed.is_empty(),
        "a command was forwarded back up: {echoed:?}"
    );
    // In-process publishes are state, not log rows (the recorder logs client publishes only).
    gw.broker
        .publish(Message::new(
            "gw/in-process/x",
            Bytes::from_static(b"1"),
            QoS::AtLeastOnce,
            false,
        ))
        .await;
    assert_eq!(gw.store.head(), head_before);
}

/// The upstream side of [`acks_held_back_while_pings_are_answered_keep_the_link`]: one accepted connection
/// read packet by packet with the project's codec (MQTT 3.1.1).
struct Scripted {
    s: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    /// Known once the CONNECT was read.
    protocol: Option<Protocol>,
}

impl Scripted {
    /// The next packet; `None` when the bridge closed the connection.
    async fn next(&mut self) -> Option<fieldbridge::mqtt::Packet> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(p) = fieldbridge::mqtt::decode(&mut self.buf, self.protocol, u32::MAX)
                .expect("the bridge sends valid MQTT")
            {
                self.protocol = Some(Protocol::V311);
                return Some(p);
            }
            match self.s.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn send(&mut self, p: &fieldbridge::mqtt::Packet) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        fieldbridge::mqtt::encode(p, Protocol::V311, &mut out);
        self.s.write_all(&out).await.expect("write to the bridge");
    }
}

fn puback(packet_id: u16) -> fieldbridge::mqtt::Packet {
    fieldbridge::mqtt::Packet::PubAck(fieldbridge::mqtt::PubResp {
        packet_id,
        reason_code: 0,
        properties: Default::default(),
    })
}

/// An upstream that holds its acks back (a cloud broker busy persisting) but answers PINGREQ. With the window
/// full during a backlog, the bridge waits in the kernel until the acks of a whole refill are there
/// (`SO_RCVLOWAT`); the 2-byte PINGRESP must still reach it, or it would declare the link dead after
/// 1.5 x keepalive. Then the acks come, and the backlog drains to the last row (the low-water mark never
/// asks for more bytes than the acks outstanding bring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_held_back_while_pings_are_answered_keep_the_link() {
    use fieldbridge::mqtt::{ConnAck, Packet};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = bridge_cfg("cloud", listener.local_addr().unwrap().port());
    cfg.protocol = Protocol::V311;
    cfg.keepalive = Duration::from_secs(1);
    cfg.inflight = 1000;
    let gw = Gw::start(&[cfg]);
    // The backlog is in the log before the CONNACK, so that the bridge drains it as a backlog from the start.
    let head = gw.append(0, 20_000, 4).await;
    let (s, _) = within("the bridge connects", listener.accept())
        .await
        .unwrap();
    let mut up = Scripted {
        s,
        buf: Default::default(),
        protocol: None,
    };
    assert!(matches!(up.next().await, Some(Packet::Connect(_))));
    up.send(&Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: 0,
        properties: Default::default(),
    }))
    .await;
    // Hold every ack; answer three PINGREQs (about one a second) on this one connection.
    let mut held = Vec::new();
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(LONG, up.next())
            .await
            .expect("the bridge went silent")
        {
            Some(Packet::Publish(p)) => held.push(p.packet_id),
            Some(Packet::PingReq) => {
                pings += 1;
                up.send(&Packet::PingResp).await;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!(
                "the bridge gave up a link whose pings were answered, after {pings} ping(s); status: {:#?}",
                gw.status("cloud")
            ),
        }
    }
    let st = gw.status("cloud");
    assert!(
        held.len() >= 1000,
        "the window (1000) was full: {} held; {st:#?}",
        held.len()
    );
    assert_eq!(st.state, BridgeState::Backlog, "{st:#?}");
    assert_eq!(st.connects, 1, "{st:#?}");
    assert_eq!(st.cursor, 0, "nothing acked, nothing delivered");
    // Now the acks come, for the held ones and for everything after them.
    let peer = tokio::spawn(async move {
        for id in held {
            up.send(&puback(id)).await;
        }
        while let Some(p) = up.next().await {
            match p {
                Packet::Publish(p) => up.send(&puback(p.packet_id)).await,
                Packet::PingReq => up.send(&Packet::PingResp).await,
                _ => {}
            }
        }
    });
    let st = gw.delivered("cloud", head).await;
    assert_eq!(st.connects, 1, "{st:#?}");
    peer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_honours_the_upstreams_receive_maximum() {
    let mut opts = UpstreamOpts::default();
    opts.extra.push("max_inflight_messages 7".into());
    let up = Upstream::start(opts).await;
    let mut sub = up.subscribe(&["up/#"]).await;
    let mut cfg = bridge_cfg("cloud", up.port);
    cfg.inflight = 500;
    let mut small = bridge_cfg("small", up.port);
    small.inflight = 3;
    small.forward[0].topic = "small/{topic}".into();
    let gw = Gw::start(&[cfg, small]);
    let st = gw
        .wait_status("cloud", "connected", LONG, |s| s.state.connected())
        .await;
    assert_eq!(
        st.window, 7,
        "min(configured 500, mosquitto's Receive Maximum 7; the birth shares it)"
    );
    let st = gw
        .wait_status("small", "connected", LONG, |s| s.state.connected())
        .await;
    assert_eq!(st.window, 3, "min(configured 3, Receive Maximum 7)");
    let head = gw.append(0, 2000, 2).await;
    gw.delivered("cloud", head).await;
    sub.until("2000", LONG, |s| s.distinct.len() >= 2000).await;
    check_stream(&sub.got, 2000, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upstream() {
    let ws_port = crate::util::upstream::free_port();
    let mut opts = UpstreamOpts::default();
    opts.extra.push(format!("listener {ws_port} 127.0.0.1"));
    opts.extra.push("protocol websockets".into());
    let up = Upstream::start(opts).await;
    let mut sub = up.subscribe(&["up/#"]).await;
    let mut cfg = bridge_cfg("ws", ws_port);
    cfg.url.scheme = BridgeScheme::Ws;
    cfg.url.path = "/mqtt".into();
    let gw = Gw::start(&[cfg]);
    gw.wait_status("ws", "connected over WebSocket", LONG, |s| {
        s.state.connected()
    })
    .await;
    let head = gw.append(0, 1000, 2).await;
    gw.delivered("ws", head).await;
    sub.until("1000 over WebSocket", LONG, |s| s.distinct.len() >= 1000)
        .await;
    check_stream(&sub.got, 1000, 2);
}

/// A row whose topic mosquitto refuses as malformed (a control character; logged before the broker refused
/// such topics) is skipped and counted; the rows behind it go up (mosquitto disconnected the bridge each time
/// it was sent, so the backlog never moved again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_upstream_would_refuse_as_malformed_is_skipped_not_retried_forever() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut cfg = bridge_cfg("cloud", up.port);
        cfg.protocol = protocol;
        cfg.client_id = format!("gw-poison-{protocol:?}");
        let mut sub = up.subscribe(&["up/#"]).await;
        let gw = Gw::start(&[cfg]);
        let head = gw
            .append_with(0, 10, |i| match i {
                3 => ("gw/x\ny/v".to_string(), 1),
                7 => ("gw/\u{85}/v".to_string(), 1),
                _ => (format!("gw/d{}/v", i % 2), 1),
            })
            .await;
        let st = gw.delivered("cloud", head).await;
        assert_eq!(st.skipped, 2, "{st:#?}");
        assert_eq!(
            st.connects, 1,
            "the upstream never dropped the bridge: {st:#?}"
        );
        sub.until("8 messages", LONG, |s| s.got.len() >= 8).await;
        let got: Vec<&str> = sub.got.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(got, ["0", "1", "2", "4", "5", "6", "8", "9"]);
        gw.bridges.shutdown(Duration::from_secs(2)).await;
    }
}

/// A bridge renamed in a reload (alone, same upstream) keeps its backlog: the new name goes on from the old
/// cursor. It used to start at the head of the log, and the rows logged during the outage never went up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_renamed_in_a_reload_keeps_its_backlog() {
    let up = Upstream::start(UpstreamOpts::default()).await;
    let p = Proxy::start(up.addr()).await;
    let mut sub = up.subscribe(&["up/#"]).await;
    let old = bridge_cfg("up", p.port());
    let gw = Gw::start(std::slice::from_ref(&old));
    gw.wait_status("up", "connected", LONG, |s| s.state.connected())
        .await;
    let first = gw.append(0, 10, 2).await;
    gw.delivered("up", first).await;
    // The uplink goes down; 100 rows gather; the bridge is renamed while they wait.
    p.set_mode(Mode::Down);
    p.cut();
    gw.wait_status("up", "disconnected", LONG, |s| !s.state.connected())
        .await;
    let head = gw.append(10, 110, 2).await;
    let renamed = BridgeConfig {
        name: "up2".into(),
        ..old.clone()
    };
    gw.bridges.reload(&[renamed], "gw").await;
    assert_eq!(
        gw.store
            .cursors()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["up2"],
        "the cursor moved to the new name"
    );
    p.set_mode(Mode::Pass);
    gw.delivered("up2", head).await;
    sub.until("110 rows", LONG, |s| s.got.len() >= 110).await;
    check_stream(&sub.got, 110, 2);
    gw.bridges.shutdown(Duration::from_secs(2)).await;
}
