//! Broker authentication and authorization (issue 8, items 4 and 5): the ACL bypasses (`gw/#`, `gw/+/key`,
//! `$share/g/gw/#` against `allow gw/+` + `deny gw/secret/#`), the delivery-time read check, `%c` with client
//! ids `+` and `#`, client ids bound to their user, per-listener `allow_anonymous`, and mosquitto's own files
//! (`mosquitto_passwd`, ACL syntax) used with mosquitto_pub/mosquitto_sub, reloaded on SIGHUP.
use std::path::Path;

use bytes::Bytes;
use fieldbridge::config::{AclAccess, AclRule, AclWho, BrokerConfig, ClientIdBinding, UserConfig};
use fieldbridge::mqtt::{Packet, Protocol, Publish, QoS};
use tokio::process::Command;

use crate::util::client::{connect_packet, publish, sub, Client};
use crate::util::daemon::{binary, free_port, Daemon};
use crate::util::peers::{mosquitto_pub, mosquitto_sub, require, run, Peer};
use crate::util::{wait_until, TestBroker};

const V3: Protocol = Protocol::V311;
const V5: Protocol = Protocol::V5;

fn rule(who: AclWho, filter: &str, access: AclAccess, allow: bool) -> AclRule {
    AclRule {
        who,
        filter: filter.into(),
        access,
        allow,
    }
}

fn user(name: &str, password: &str) -> UserConfig {
    UserConfig {
        username: name.into(),
        password: password.into(),
    }
}

async fn login(
    addr: std::net::SocketAddr,
    proto: Protocol,
    id: &str,
    name: &str,
    pw: &str,
) -> Client {
    let mut c = connect_packet(proto, id, true);
    c.username = Some(name.into());
    c.password = Some(Bytes::copy_from_slice(pw.as_bytes()));
    let (client, ack) = Client::connect_with(addr, c).await;
    assert_eq!(ack.reason_code, 0, "{name} refused");
    client
}

fn retained(topic: &str, payload: &str) -> Publish {
    let mut p = publish(topic, payload, QoS::AtLeastOnce, 0);
    p.retain = true;
    p
}

/// Reads publishes until one with `payload` arrives; returns every payload seen on the way (that one included).
async fn until_payload(c: &mut Client, payload: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..100 {
        let p = c.recv_publish().await;
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        seen.push(format!("{}={text}", p.topic));
        if text == payload {
            return seen;
        }
    }
    panic!("`{payload}` never arrived; saw {seen:?}");
}

/// Nothing but the PINGRESP is pending (every packet the broker sent before it is returned).
async fn nothing_pending(c: &mut Client) -> Vec<Packet> {
    c.ping().await
}

/// The bypasses against `allow gw/+` and `deny gw/secret/#`: each refused as a whole (v5 0x87, 3.1.1
/// 0x80), and neither the retained nor the live secret reaches the subscriber.
#[tokio::test]
async fn filter_tricks_are_refused_and_secrets_never_delivered() {
    let tb = TestBroker::start_with(|c| {
        c.users = vec![user("writer", "w")];
        c.acl = vec![
            rule(AclWho::User("writer".into()), "#", AclAccess::Publish, true),
            rule(AclWho::Everyone, "gw/+", AclAccess::Subscribe, true),
            rule(AclWho::Everyone, "gw/secret/#", AclAccess::All, false),
        ];
    })
    .await;
    let mut w = login(tb.addr, V5, "writer", "writer", "w").await;
    assert_eq!(w.publish(retained("gw/secret/key", "S-retained")).await, 0);
    assert_eq!(w.publish(retained("gw/temp", "T-retained")).await, 0);

    let mut subs = Vec::new();
    for (proto, refused) in [(V5, 0x87), (V3, 0x80)] {
        let mut r = Client::connect(tb.addr, proto, &format!("reader-{proto:?}"), true).await;
        let ack = r
            .subscribe(vec![
                sub("gw/#", QoS::AtLeastOnce),
                sub("gw/+/key", QoS::AtLeastOnce),
                sub("$share/g/gw/#", QoS::AtLeastOnce),
                sub("#", QoS::AtLeastOnce),
                sub("+/secret/#", QoS::AtLeastOnce),
                sub("gw/+", QoS::AtLeastOnce),
            ])
            .await;
        assert_eq!(
            ack.reason_codes,
            vec![refused, refused, refused, refused, refused, 1],
            "{proto:?}"
        );
        let seen = until_payload(&mut r, "T-retained").await;
        assert_eq!(seen, vec!["gw/temp=T-retained"], "{proto:?}");
        subs.push(r);
    }
    assert_eq!(
        w.publish(publish("gw/secret/key", "S-live", QoS::AtLeastOnce, 0))
            .await,
        0
    );
    assert_eq!(
        w.publish(publish("gw/temp", "T-live", QoS::AtLeastOnce, 0))
            .await,
        0
    );
    for r in &mut subs {
        let seen = until_payload(r, "T-live").await;
        assert_eq!(seen, vec!["gw/temp=T-live"]);
        assert!(nothing_pending(r).await.is_empty());
    }
}

/// A subscription granted under one ACL keeps receiving only what the receiver may read now: live, shared and
/// offline-queued deliveries are all checked on the concrete topic (so no filter trick can leak, and a reload
/// that narrows the rules takes effect at once).
#[tokio::test]
async fn every_delivery_is_checked_against_the_current_read_rights() {
    let open = |c: &mut BrokerConfig| {
        c.acl = vec![rule(AclWho::Everyone, "#", AclAccess::All, true)];
    };
    let tb = TestBroker::start_with(open).await;
    let mut live = Client::connect(tb.addr, V5, "live", true).await;
    assert_eq!(
        live.subscribe(vec![sub("gw/#", QoS::AtLeastOnce)])
            .await
            .reason_codes,
        vec![1]
    );
    let mut shared = Client::connect(tb.addr, V5, "shared", true).await;
    assert_eq!(
        shared
            .subscribe(vec![sub("$share/g/gw/#", QoS::AtLeastOnce)])
            .await
            .reason_codes,
        vec![1]
    );
    let mut c = connect_packet(V5, "offline", false);
    c.properties.session_expiry_interval = Some(600);
    let (mut off, ack) = Client::connect_with(tb.addr, c.clone()).await;
    assert_eq!(ack.reason_code, 0);
    off.subscribe(vec![sub("gw/#", QoS::AtLeastOnce)]).await;
    off.disconnect().await;
    wait_until("offline session detached", || {
        tb.broker.stats().clients_connected == 2
    })
    .await;

    // Narrow the rules: `gw/secret/#` is no longer readable by anyone.
    let mut narrowed = (*tb.broker.config()).clone();
    narrowed.acl.insert(
        0,
        rule(AclWho::Everyone, "gw/secret/#", AclAccess::Subscribe, false),
    );
    tb.broker.update_config(narrowed);

    let mut p = Client::connect(tb.addr, V5, "pub", true).await;
    for (topic, payload) in [
        ("gw/secret/a", "S1"),
        ("gw/ok", "OK1"),
        ("gw/secret/b", "S2"),
        ("gw/ok", "OK2"),
    ] {
        assert_eq!(
            p.publish(publish(topic, payload, QoS::AtLeastOnce, 0))
                .await,
            0
        );
    }
    assert_eq!(
        until_payload(&mut live, "OK2").await,
        vec!["gw/ok=OK1", "gw/ok=OK2"]
    );
    assert_eq!(
        until_payload(&mut shared, "OK2").await,
        vec!["gw/ok=OK1", "gw/ok=OK2"]
    );
    let (mut back, ack) = Client::connect_with(tb.addr, c).await;
    assert!(ack.session_present);
    assert_eq!(
        until_payload(&mut back, "OK2").await,
        vec!["gw/ok=OK1", "gw/ok=OK2"]
    );
    for c in [&mut live, &mut shared, &mut back] {
        assert!(nothing_pending(c).await.is_empty());
    }
    assert_eq!(
        tb.broker.stats().denied_deliveries,
        6,
        "2 secrets x 3 receivers, counted"
    );
}

/// `%c` with a client id of `+` or `#` must not turn a per-client rule into a wildcard.
#[tokio::test]
async fn percent_c_never_turns_a_client_id_into_a_wildcard() {
    let tb = TestBroker::start_with(|c| {
        c.acl = vec![rule(AclWho::Everyone, "cmd/%c/#", AclAccess::All, true)];
    })
    .await;
    let mut victim = Client::connect(tb.addr, V5, "victim", true).await;
    assert_eq!(
        victim
            .subscribe(vec![sub("cmd/victim/#", QoS::AtLeastOnce)])
            .await
            .reason_codes,
        vec![1]
    );
    for id in ["+", "#"] {
        let mut evil = Client::connect(tb.addr, V5, id, true).await;
        let ack = evil
            .subscribe(vec![
                sub("cmd/+/set", QoS::AtLeastOnce),
                sub("cmd/#", QoS::AtLeastOnce),
                sub("cmd/victim/set", QoS::AtLeastOnce),
            ])
            .await;
        assert_eq!(ack.reason_codes, vec![0x87, 0x87, 0x87], "client id {id}");
        assert_eq!(
            evil.publish(publish("cmd/victim/set", "forged", QoS::AtLeastOnce, 0))
                .await,
            0x87,
            "client id {id}"
        );
    }
    // The rule still works for a normal id.
    assert_eq!(
        victim
            .publish(publish("cmd/victim/set", "mine", QoS::AtLeastOnce, 0))
            .await,
        0
    );
    assert_eq!(
        until_payload(&mut victim, "mine").await,
        vec!["cmd/victim/set=mine"]
    );
}

/// A client id held by another user's session (persistent or live) is refused with 0x85 / 3.1.1 code 2; the
/// same user takes over as usual; `client_id_binding: off` restores take-over by anyone.
#[tokio::test]
async fn client_id_of_another_users_session_is_refused() {
    let users = |c: &mut BrokerConfig| {
        c.users = vec![user("alice", "a"), user("bob", "b")];
    };
    let tb = TestBroker::start_with(users).await;
    let as_user = |proto, id: &str, name: Option<&str>, clean| {
        let mut c = connect_packet(proto, id, clean);
        if proto == V5 {
            c.properties.session_expiry_interval = Some(600);
        }
        if let Some(n) = name {
            c.username = Some(n.into());
            c.password = Some(Bytes::copy_from_slice(&n.as_bytes()[..1]));
        }
        c
    };
    // Alice's persistent session, now offline, with a message queued for it.
    let (mut a, ack) =
        Client::connect_with(tb.addr, as_user(V5, "dev1", Some("alice"), false)).await;
    assert_eq!(ack.reason_code, 0);
    a.subscribe(vec![sub("q/#", QoS::AtLeastOnce)]).await;
    a.disconnect().await;
    wait_until("alice detached", || {
        tb.broker.stats().clients_connected == 0
    })
    .await;
    let mut p = Client::connect(tb.addr, V5, "p", true).await;
    p.publish(publish("q/1", "for alice", QoS::AtLeastOnce, 0))
        .await;

    for (proto, clean) in [(V5, false), (V5, true), (V3, false), (V3, true)] {
        let (_c, ack) =
            Client::connect_with(tb.addr, as_user(proto, "dev1", Some("bob"), clean)).await;
        assert_eq!(
            ack.reason_code, 0x85,
            "bob {proto:?} clean={clean} (3.1.1: return code 2)"
        );
        let (_c, ack) = Client::connect_with(tb.addr, as_user(proto, "dev1", None, clean)).await;
        assert_eq!(ack.reason_code, 0x85, "anonymous {proto:?} clean={clean}");
    }
    // Alice gets her session and its queued message back.
    let (mut a, ack) =
        Client::connect_with(tb.addr, as_user(V5, "dev1", Some("alice"), false)).await;
    assert_eq!(ack.reason_code, 0);
    assert!(ack.session_present);
    assert_eq!(&a.recv_publish().await.payload[..], b"for alice");
    // Live: bob cannot kick alice off either; alice's connection carries on.
    let (_c, ack) = Client::connect_with(tb.addr, as_user(V3, "dev1", Some("bob"), true)).await;
    assert_eq!(ack.reason_code, 0x85);
    assert!(nothing_pending(&mut a).await.is_empty());
    // The same user takes over her own live connection.
    let (_a2, ack) = Client::connect_with(tb.addr, as_user(V5, "dev1", Some("alice"), false)).await;
    assert_eq!(ack.reason_code, 0);
    assert_eq!(a.closed().await.map(|d| d.reason_code), Some(0x8E));
    assert!(tb.broker.stats().connections_refused >= 9);

    let off = TestBroker::start_with(|c| {
        users(c);
        c.client_id_binding = ClientIdBinding::Off;
    })
    .await;
    let (_a, ack) = Client::connect_with(off.addr, as_user(V5, "dev1", Some("alice"), false)).await;
    assert_eq!(ack.reason_code, 0);
    let (_b, ack) = Client::connect_with(off.addr, as_user(V5, "dev1", Some("bob"), false)).await;
    assert_eq!(ack.reason_code, 0);
    assert!(
        ack.session_present,
        "binding off: bob took alice's session over"
    );
}

#[tokio::test]
async fn allow_anonymous_per_listener() {
    let tb = TestBroker::start_with(|c| {
        let base = c.listeners[0].clone();
        c.allow_anonymous = false;
        c.listeners = vec![base.clone(), base.clone(), base];
        c.listeners[1].name = "open".into();
        c.listeners[1].allow_anonymous = Some(true);
        c.listeners[2].name = "closed".into();
        c.listeners[2].allow_anonymous = Some(false);
        c.users = vec![user("op", "pw")];
    })
    .await;
    let anon = |addr| Client::connect_with(addr, connect_packet(V5, "anon", true));
    assert_eq!(
        anon(tb.addrs[0]).await.1.reason_code,
        0x87,
        "broker default: no"
    );
    assert_eq!(
        anon(tb.addrs[1]).await.1.reason_code,
        0,
        "listener override: yes"
    );
    assert_eq!(anon(tb.addrs[2]).await.1.reason_code, 0x87);
    for addr in &tb.addrs {
        login(*addr, V3, "op", "op", "pw").await;
    }
    // The broker-level default follows a reload; the listener's own setting stays.
    let mut cfg = (*tb.broker.config()).clone();
    cfg.allow_anonymous = true;
    tb.broker.update_config(cfg);
    assert_eq!(anon(tb.addrs[0]).await.1.reason_code, 0);
    assert_eq!(anon(tb.addrs[2]).await.1.reason_code, 0x87);
}

/// Writes the password file with Debian's mosquitto_passwd: alice with the default `$7$` (PBKDF2-SHA512), bob
/// with `-H sha512` (`$6$`).
async fn mosquitto_passwd(file: &Path) {
    let tool = require("mosquitto_passwd", "apt-get install mosquitto");
    let (code, _, err) = run(Command::new(&tool)
        .arg("-c")
        .arg("-b")
        .arg(file)
        .args(["alice", "s3cret"]))
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(Command::new(&tool)
        .args(["-H", "sha512", "-b"])
        .arg(file)
        .args(["bob", "hunter2"]))
    .await;
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains("alice:$7$"), "{text}");
    assert!(text.contains("bob:$6$"), "{text}");
}

const ACL: &str = "# anonymous clients: read the public tree only
topic read public/#

user alice
topic readwrite plant/#
topic deny plant/secret/#

user bob
topic read plant/+
pattern write clients/%u/#
";

/// Runs mosquitto_pub; the exit code and stderr.
async fn mpub(port: u16, creds: Option<(&str, &str)>, topic: &str, msg: &str) -> (i32, String) {
    let port = port.to_string();
    let mut cmd = mosquitto_pub();
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "5",
        "-q",
        "1",
        "-t",
        topic,
        "-m",
        msg,
    ]);
    if let Some((u, p)) = creds {
        cmd.args(["-u", u, "-P", p]);
    }
    let (code, out, err) = run(&mut cmd).await;
    (code, format!("{out}{err}"))
}

/// mosquitto_sub reports a refused subscription on stderr and exits.
async fn assert_refused(port: u16, creds: Option<(&str, &str)>, filter: &str) {
    let port = port.to_string();
    let mut cmd = mosquitto_sub();
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "5",
        "-t",
        filter,
        "-C",
        "1",
        "-W",
        "5",
    ]);
    if let Some((u, p)) = creds {
        cmd.args(["-u", u, "-P", p]);
    }
    let (_, out, err) = run(&mut cmd).await;
    assert!(
        err.contains("All subscription requests were denied"),
        "{filter}: {out}{err}"
    );
}

fn msub(port: u16, creds: Option<(&str, &str)>, topic: &str, count: &str) -> Peer {
    let port = port.to_string();
    let mut cmd = mosquitto_sub();
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "5",
        "-q",
        "1",
        "-t",
        topic,
        "-v",
        "-C",
        count,
    ]);
    if let Some((u, p)) = creds {
        cmd.args(["-u", u, "-P", p]);
    }
    Peer::spawn(&mut cmd)
}

/// mosquitto's own files, as integrators keep them, with mosquitto's own clients: the password file written by
/// `mosquitto_passwd` ($7$ and $6$), the ACL file with sections and a pattern; allowed and refused cases.
#[tokio::test]
async fn mosquitto_passwd_and_acl_files_with_mosquitto_clients() {
    let dir = tempfile::tempdir().unwrap();
    mosquitto_passwd(&dir.path().join("passwd")).await;
    std::fs::write(dir.path().join("acl"), ACL).unwrap();
    let main = dir.path().join("fb.yaml");
    std::fs::write(
        &main,
        "broker:\n  password_file: passwd\n  acl_file: acl\n  allow_anonymous: true\n",
    )
    .unwrap();
    let loaded = fieldbridge::config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    let tb = TestBroker::start_with(|c| {
        let listeners = std::mem::take(&mut c.listeners);
        *c = loaded.broker.clone();
        c.listeners = listeners;
    })
    .await;
    let port = tb.port();

    // Wrong passwords and unknown users are refused (mosquitto_pub exits non-zero).
    for creds in [("alice", "wrong"), ("bob", "s3cret"), ("mallory", "s3cret")] {
        let (code, out) = mpub(port, Some(creds), "plant/x", "m").await;
        assert_ne!(code, 0, "{creds:?}: {out}");
    }
    // bob ($6$) reads plant/+ and receives what alice ($7$) writes; alice's secret write is refused.
    let before = tb.broker.stats().subscriptions;
    let mut bob = msub(port, Some(("bob", "hunter2")), "plant/+", "1");
    wait_until("bob subscribed", || {
        tb.broker.stats().subscriptions > before
    })
    .await;
    let (code, out) = mpub(port, Some(("alice", "s3cret")), "plant/secret/x", "no").await;
    assert!(out.contains("Not authorized") || code != 0, "{code}: {out}");
    let denied = tb.broker.stats().denied_publishes;
    assert_eq!(denied, 1);
    let (code, out) = mpub(port, Some(("alice", "s3cret")), "plant/temp", "21.5").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(bob.line().await, "plant/temp 21.5");
    // bob may not subscribe to more than plant/+: mosquitto_sub reports the refusal.
    assert_refused(port, Some(("bob", "hunter2")), "plant/#").await;
    // The pattern: bob writes under clients/bob/, not under clients/alice/.
    let (code, out) = mpub(port, Some(("bob", "hunter2")), "clients/bob/x", "ok").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(tb.broker.stats().denied_publishes, denied);
    let _ = mpub(port, Some(("bob", "hunter2")), "clients/alice/x", "no").await;
    assert_eq!(tb.broker.stats().denied_publishes, denied + 1);
    // Anonymous (the section before any `user`): reads public/#, writes nothing, cannot read plant/.
    let before = tb.broker.stats().subscriptions;
    let anon = msub(port, None, "public/#", "1");
    wait_until("anonymous subscribed", || {
        tb.broker.stats().subscriptions > before
    })
    .await;
    let _ = mpub(port, None, "public/x", "anon").await;
    assert_eq!(tb.broker.stats().denied_publishes, denied + 2);
    assert_refused(port, None, "plant/+").await;
    // The section before any `user` line is for anonymous clients only, not for every user.
    assert_refused(port, Some(("alice", "s3cret")), "public/#").await;
    let (code, out) = mpub(port, Some(("alice", "s3cret")), "public/news", "hello").await;
    assert_eq!(code, 0, "alice has no right on public/: {out}");
    assert_eq!(tb.broker.stats().denied_publishes, denied + 3);
    drop(anon);
}

/// The daemon re-reads both files on SIGHUP; a broken file is refused with its position and the running rules
/// stay. `fieldbridge check` warns about a listener open to the network that takes anonymous clients.
#[tokio::test]
async fn files_reload_on_sighup_and_check_warns_about_anonymous_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    mosquitto_passwd(&passwd).await;
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let port = free_port();
    let main = dir.path().join("fb.yaml");
    std::fs::write(
        &main,
        format!(
            "gateway: {{id: gw}}
broker:
  listeners: [{{bind: \"127.0.0.1:{port}\"}}]
  allow_anonymous: false
  password_file: passwd
  acl_file: acl
api: {{enabled: false}}
storage: {{path: {}}}
",
            dir.path().join("fb.db").display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&main, port).await;
    let (code, out) = mpub(port, Some(("alice", "s3cret")), "plant/x", "1").await;
    assert_eq!(code, 0, "{out}");
    let (code, _) = mpub(port, Some(("carol", "pw3")), "plant/x", "1").await;
    assert_ne!(code, 0, "carol is not a user yet");

    // A broken ACL file: refused with file:line:col, old rules and users kept.
    std::fs::write(&acl, format!("{ACL}topic reed plant/#\n")).unwrap();
    daemon.signal("-HUP").await;
    let refused = daemon.log_line("reload refused").await;
    assert!(refused.contains("acl:11:7"), "{refused}");
    let (code, out) = mpub(port, Some(("alice", "s3cret")), "plant/x", "2").await;
    assert_eq!(code, 0, "{out}");

    // Fixed ACL (carol may write plant/#) and a new user: both take effect on the next SIGHUP.
    std::fs::write(&acl, format!("{ACL}user carol\ntopic write plant/#\n")).unwrap();
    let tool = require("mosquitto_passwd", "apt-get install mosquitto");
    let (code, _, err) = run(Command::new(&tool)
        .arg("-b")
        .arg(&passwd)
        .args(["carol", "pw3"]))
    .await;
    assert_eq!(code, 0, "{err}");
    daemon.signal("-HUP").await;
    crate::util::eventually("carol accepted after the reload", || async {
        (mpub(port, Some(("carol", "pw3")), "plant/x", "3").await.0 == 0).then_some(())
    })
    .await;

    // check: a non-loopback listener with anonymous clients is a warning, not an error.
    let warn = dir.path().join("warn.yaml");
    std::fs::write(
        &warn,
        "broker:\n  allow_anonymous: true\n  listeners:\n    - bind: 127.0.0.1:1883\n    - bind: 0.0.0.0:1883\n      name: plant\n    - bind: \"[::]:1884\"\n      allow_anonymous: false\n    - bind: 10.1.2.3:1885\n",
    )
    .unwrap();
    let (code, out, err) = run(Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&warn))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 2, "{out}");
    assert!(warnings[0].contains("warn.yaml:5:7"), "{out}");
    assert!(
        warnings[0].contains("`plant`") && warnings[0].contains("anonymous"),
        "{out}"
    );
    assert!(
        warnings[1].contains("warn.yaml:9:7") && warnings[1].contains("10.1.2.3:1885"),
        "{out}"
    );
    std::fs::write(
        &warn,
        "broker:\n  allow_anonymous: false\n  listeners:\n    - bind: 0.0.0.0:1883\n",
    )
    .unwrap();
    let (code, out, _) = run(Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&warn))
    .await;
    assert_eq!(code, 0);
    assert!(!out.contains("warning"), "{out}");
}
