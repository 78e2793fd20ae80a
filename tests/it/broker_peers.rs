//! The broker against real clients: mosquitto_pub/mosquitto_sub (3.1.1 and 5) and paho-mqtt (Python).
use crate::util::peers::{
    mosquitto_pub, mosquitto_sub, require_python_module, run, scripts_dir, Peer,
};
use crate::util::{wait_until, TestBroker};

#[tokio::test]
async fn mosquitto_clients_pub_sub_all_qos_both_versions() {
    let tb = TestBroker::start().await;
    let port = tb.port().to_string();
    for version in ["311", "5"] {
        let topic = format!("cli/{version}");
        let before = tb.broker.stats().subscriptions;
        let mut sub = Peer::spawn(mosquitto_sub().args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-q",
            "2",
            "-t",
            &format!("{topic}/#"),
            "-v",
            "-C",
            "3",
        ]));
        wait_until("mosquitto_sub subscribed", || {
            tb.broker.stats().subscriptions > before
        })
        .await;
        for qos in ["0", "1", "2"] {
            let (code, _, err) = run(mosquitto_pub().args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-q",
                qos,
                "-t",
                &format!("{topic}/q{qos}"),
                "-m",
                &format!("m{qos}"),
            ]))
            .await;
            assert_eq!(code, 0, "mosquitto_pub -V {version} -q {qos}: {err}");
        }
        let mut lines = vec![sub.line().await, sub.line().await, sub.line().await];
        lines.sort();
        assert_eq!(
            lines,
            vec![
                format!("{topic}/q0 m0"),
                format!("{topic}/q1 m1"),
                format!("{topic}/q2 m2")
            ],
            "-V {version}"
        );
        assert_eq!(sub.wait().await, 0);
        wait_until("subscriber gone", || tb.broker.stats().subscriptions == 0).await;
    }
}

#[tokio::test]
async fn mosquitto_clients_retained_user_properties_and_will() {
    let tb = TestBroker::start().await;
    let port = tb.port().to_string();
    let (code, _, err) = run(mosquitto_pub().args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "5",
        "-q",
        "1",
        "-r",
        "-t",
        "ret/a",
        "-m",
        "kept",
        "-D",
        "publish",
        "user-property",
        "unit",
        "degC",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    // A v5 subscriber started later gets the retained message with its user property (-F %r for retain, %P
    // for properties).
    let mut sub = Peer::spawn(mosquitto_sub().args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "5",
        "-t",
        "ret/#",
        "-C",
        "1",
        "-F",
        "%t %r %p %P",
    ]));
    let line = sub.line().await;
    assert!(line.starts_with("ret/a 1 kept"), "{line}");
    assert!(line.contains("unit:degC"), "{line}");
    assert_eq!(sub.wait().await, 0);
    wait_until("first subscriber gone", || {
        tb.broker.stats().subscriptions == 0
    })
    .await;

    // Clearing it with an empty retained payload: a new subscriber gets nothing retained; it gets the next
    // live message first.
    let (code, _, _) =
        run(mosquitto_pub().args(["-h", "127.0.0.1", "-p", &port, "-r", "-t", "ret/a", "-n"]))
            .await;
    assert_eq!(code, 0);
    let before = tb.broker.stats().subscriptions;
    let mut sub = Peer::spawn(mosquitto_sub().args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "311",
        "-t",
        "ret/#",
        "-C",
        "1",
        "-v",
    ]));
    wait_until("subscribed", || tb.broker.stats().subscriptions > before).await;
    let (code, _, _) =
        run(mosquitto_pub().args(["-h", "127.0.0.1", "-p", &port, "-t", "ret/b", "-m", "live"]))
            .await;
    assert_eq!(code, 0);
    assert_eq!(sub.line().await, "ret/b live");
    assert_eq!(sub.wait().await, 0);
    wait_until("second subscriber gone", || {
        tb.broker.stats().subscriptions == 0
    })
    .await;

    // Will: a mosquitto_sub with a will that is killed.
    let before = tb.broker.stats().subscriptions;
    let mut watcher = Peer::spawn(mosquitto_sub().args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "wills/#",
        "-C",
        "1",
        "-v",
    ]));
    wait_until("watcher subscribed", || {
        tb.broker.stats().subscriptions > before
    })
    .await;
    let before = tb.broker.stats().subscriptions;
    let mut doomed = Peer::spawn(mosquitto_sub().args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "nothing",
        "--will-topic",
        "wills/doomed",
        "--will-payload",
        "offline",
    ]));
    wait_until("doomed subscribed", || {
        tb.broker.stats().subscriptions > before
    })
    .await;
    doomed.child.start_kill().unwrap();
    assert_eq!(watcher.line().await, "wills/doomed offline");
}

#[tokio::test]
async fn paho_mqtt_v311_and_v5() {
    let py = require_python_module("paho.mqtt.client", "paho-mqtt");
    let tb = TestBroker::start().await;
    for version in ["311", "5"] {
        let tag = if version == "5" { "v5" } else { "v311" };
        let mut peer = Peer::spawn(
            tokio::process::Command::new(&py)
                .arg(scripts_dir().join("paho_client.py"))
                .arg(tb.port().to_string())
                .arg(version),
        );
        let mut lines = peer.rest().await;
        assert_eq!(peer.wait().await, 0, "paho scenario failed: {lines:?}");
        assert_eq!(lines.last().map(String::as_str), Some("DONE"), "{lines:?}");
        lines.retain(|l| l.starts_with("RECV"));
        for qos in 0..3 {
            let want = format!("RECV paho/{tag}/q{qos} {qos} hello{qos}");
            assert!(lines.contains(&want), "missing `{want}` in {lines:?}");
        }
        if version == "5" {
            let props = lines
                .iter()
                .find(|l| l.contains("/props"))
                .expect("props message");
            assert!(props.contains("user=site=plant-a"), "{props}");
            assert!(props.contains("response=paho/v5/reply"), "{props}");
            assert!(props.contains("corr=corr-1"), "{props}");
            assert!(props.contains("ctype=text/plain"), "{props}");
        }
    }
}
