//! The sim adapter end to end through the SDK test kit, on tokio's paused clock: signals, write-back, failures
//! and configuration errors, as the core would see them.
use std::time::Duration;

use fieldbridge_sdk::testkit::{device_config_from_yaml, TestHarness};
use fieldbridge_sdk::{AdapterFactory, CommandError, DeviceStatus, Quality, Reading, Value};
use fieldbridge_sim::{SimAdapter, SimFactory, PROTOCOL};

const T: Duration = Duration::from_secs(600);

fn start(yaml: &str) -> TestHarness {
    let device = device_config_from_yaml(yaml);
    TestHarness::build(&SimFactory, &device).unwrap_or_else(|e| panic!("{e:?}"))
}

/// The next `n` values of `point`.
async fn values(h: &mut TestHarness, point: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = h.wait_for(|r| &*r.point == point, T).await;
        assert_eq!(r.quality, Quality::Good, "{r:?}");
        out.push(r.value);
    }
    out
}

fn floats(v: &[Value]) -> Vec<f64> {
    v.iter()
        .map(|v| match v {
            Value::Float(x) => *x,
            other => panic!("expected a float, got {other:?}"),
        })
        .collect()
}

fn ints(v: &[Value]) -> Vec<i64> {
    v.iter()
        .map(|v| match v {
            Value::Int(i) => *i,
            other => panic!("expected an int, got {other:?}"),
        })
        .collect()
}

#[test]
fn the_factory_serves_protocol_sim() {
    assert_eq!(SimFactory.protocol(), "sim");
    assert_eq!(PROTOCOL, "sim");
}

#[tokio::test(start_paused = true)]
async fn sine_stays_in_range_and_swings_through_it() {
    let mut h = start(
        "name: s\nprotocol: sim\npoll_interval: 1s\npoints:\n  - name: t\n    signal: sine\n    min: 10\n    \
         max: 20\n    period: 10s\n",
    );
    let v = floats(&values(&mut h, "t", 20).await);
    assert!(v.iter().all(|x| (10.0..=20.0).contains(x)), "{v:?}");
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    assert!(
        lo < 11.0 && hi > 19.0,
        "a full period sampled every second covers the range: {v:?}"
    );
    // Starts at the middle, going up (up to 0.1 s of start jitter).
    assert!((15.0..16.0).contains(&v[0]) && v[1] > v[0], "{v:?}");
    // Periodic: one period later, the same values (the sample times are exactly 10 s apart).
    for i in 0..10 {
        assert!((v[i] - v[i + 10]).abs() < 1e-9, "{v:?}");
    }
    assert_eq!(h.status(), DeviceStatus::Online);
    h.stop(T).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn ramp_counter_constant_and_setpoint_follow_their_steps() {
    // One point per device, so that each sequence is read from its start.
    for (yaml, want) in [
        (
            "{name: p, signal: ramp, type: int, min: 0, max: 3}",
            [0, 1, 2, 3, 0, 1].map(Value::Int).to_vec(),
        ),
        (
            "{name: p, signal: ramp, min: 0, max: 1, step: -0.5}",
            vec![
                Value::Float(1.0),
                Value::Float(0.5),
                Value::Float(0.0),
                Value::Float(1.0),
            ],
        ),
        (
            "{name: p, signal: counter, type: int, initial: 10, step: 5}",
            [10, 15, 20, 25].map(Value::Int).to_vec(),
        ),
        (
            "{name: p, signal: counter, type: int, min: 1, max: 3}",
            [1, 2, 3, 1, 2].map(Value::Int).to_vec(),
        ),
        (
            "{name: p, signal: constant, type: int, initial: 42}",
            [42, 42, 42].map(Value::Int).to_vec(),
        ),
        (
            "{name: p, signal: constant, type: bool, initial: true}",
            vec![Value::Bool(true); 3],
        ),
        ("{name: p, signal: setpoint}", vec![Value::Float(0.0); 2]),
    ] {
        let mut h = start(&format!("name: s\nprotocol: sim\npoints:\n  - {yaml}\n"));
        assert_eq!(values(&mut h, "p", want.len()).await, want, "{yaml}");
        h.stop(T).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn square_alternates_every_half_period() {
    let mut h = start(
        "name: s\nprotocol: sim\npoll_interval: 1s\npoints:\n  - {name: b, signal: square, period: 4s}\n  - \
         {name: n, signal: square, type: float, min: -1, max: 1, period: 4s}\n",
    );
    let b = values(&mut h, "b", 8).await;
    let want: Vec<Value> = [false, false, true, true, false, false, true, true]
        .map(Value::Bool)
        .to_vec();
    assert_eq!(b, want);
    h.stop(T).await.unwrap();

    let mut h = start(
        "name: s\nprotocol: sim\npoll_interval: 1s\npoints:\n  - {name: n, signal: square, type: float, min: -1, \
         max: 1, period: 4s}\n",
    );
    assert_eq!(
        floats(&values(&mut h, "n", 4).await),
        [-1.0, -1.0, 1.0, 1.0]
    );
    h.stop(T).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn random_walk_moves_by_at_most_a_step_within_range_and_a_seed_reproduces_it() {
    let yaml = "name: s\nprotocol: sim\nconnection: {seed: 7}\npoints:\n  - {name: w, signal: random_walk, min: \
                0, max: 10, step: 2, initial: 9}\n";
    let mut h = start(yaml);
    let a = floats(&values(&mut h, "w", 50).await);
    h.stop(T).await.unwrap();
    assert_eq!(a[0], 9.0);
    assert!(a.iter().all(|x| (0.0..=10.0).contains(x)), "{a:?}");
    assert!(a.windows(2).all(|w| (w[1] - w[0]).abs() <= 2.0), "{a:?}");
    assert!(
        a.windows(2).filter(|w| w[0] != w[1]).count() > 40,
        "it moves: {a:?}"
    );

    let mut h = start(yaml);
    let b = floats(&values(&mut h, "w", 50).await);
    h.stop(T).await.unwrap();
    assert_eq!(a, b, "same seed, same walk");
}

#[tokio::test(start_paused = true)]
async fn a_setpoint_write_is_read_back_on_the_next_poll() {
    let mut h = start(
        "name: s\nprotocol: sim\npoll_interval: 1s\npoints:\n  - name: target\n    signal: setpoint\n    \
         writable: true\n    initial: 21.5\n    min: 5\n    max: 30\n  - name: mode\n    signal: setpoint\n    \
         type: bool\n    writable: true\n  - name: temp\n    signal: sine\n",
    );
    assert_eq!(values(&mut h, "target", 1).await, [Value::Float(21.5)]);
    assert_eq!(h.write("target", Value::Float(23.0)).await, Ok(()));
    // Readings of polls before the write may still be queued: only later ones show the new value.
    h.take_readings();
    assert_eq!(
        values(&mut h, "target", 2).await,
        [Value::Float(23.0), Value::Float(23.0)]
    );

    assert_eq!(h.write("mode", Value::Bool(true)).await, Ok(()));
    h.take_readings();
    assert_eq!(values(&mut h, "mode", 1).await, [Value::Bool(true)]);

    // Refusals, each with the reason a `…/set/result` would carry.
    assert!(matches!(
        h.write("target", Value::Bool(true)).await,
        Err(CommandError::InvalidValue(m)) if m.contains("expected a float")
    ));
    assert!(matches!(
        h.write("target", Value::Float(31.0)).await,
        Err(CommandError::InvalidValue(m)) if m.contains("outside 5..30")
    ));
    assert!(matches!(
        h.write("mode", Value::Float(0.5)).await,
        Err(CommandError::InvalidValue(_))
    ));
    assert_eq!(
        h.write("temp", Value::Float(1.0)).await,
        Err(CommandError::ReadOnly("temp".into()))
    );
    assert_eq!(
        h.write("nope", Value::Float(1.0)).await,
        Err(CommandError::UnknownPoint("nope".into()))
    );
    // The refused writes changed nothing.
    assert_eq!(values(&mut h, "target", 1).await, [Value::Float(23.0)]);
    h.stop(T).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failure_rate_one_takes_the_device_offline_and_zero_keeps_it_online() {
    let mut down = start(
        "name: down\nprotocol: sim\nconnection: {failure_rate: 1.0}\npoints:\n  - {name: p, signal: sine}\n",
    );
    let mut up = start(
        "name: up\nprotocol: sim\nconnection: {failure_rate: 0.0}\npoints:\n  - {name: p, signal: sine}\n",
    );
    let st = down
        .wait_status(|s| matches!(s, DeviceStatus::Offline(_)), T)
        .await;
    assert_eq!(
        st.reason(),
        Some("simulated transport failure (failure_rate 1)")
    );
    up.wait_status(|s| *s == DeviceStatus::Online, T).await;
    up.next_reading(T).await;
    // Still offline after a few backoff rounds, and it never produced a reading.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(matches!(down.status(), DeviceStatus::Offline(_)));
    assert!(down.take_readings().is_empty());
    assert_eq!(
        down.write("p", Value::Float(1.0)).await,
        Err(CommandError::ReadOnly("p".into()))
    );
    down.stop(T).await.unwrap();
    up.stop(T).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_flaky_device_recovers_and_counts_its_failures() {
    let device = device_config_from_yaml(
        "name: flaky\nprotocol: sim\nconnection: {failure_rate: 0.5, seed: 3}\npoints:\n  - {name: p, signal: \
         counter, type: int}\n",
    );
    let adapter = SimAdapter::new(&device).unwrap();
    let stats = adapter.stats();
    let mut h = TestHarness::start("flaky", Box::new(adapter));
    h.wait_status(|s| matches!(s, DeviceStatus::Offline(_)), T)
        .await;
    h.wait_status(|s| *s == DeviceStatus::Online, T).await;
    // The counter only advances on successful polls, so no value is skipped across the outage.
    let v = ints(&values(&mut h, "p", 10).await);
    assert!(v.windows(2).all(|w| w[1] == w[0] + 1), "{v:?}");
    let snap = stats.snapshot();
    assert!(snap.polls_failed > 0 && snap.polls_ok >= 10, "{snap}");
    h.stop(T).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn exception_rate_one_gives_bad_readings_from_an_online_device() {
    let mut h = start(
        "name: s\nprotocol: sim\nconnection: {exception_rate: 1.0}\npoints:\n  - {name: p, signal: sine}\n",
    );
    for _ in 0..3 {
        let r: Reading = h.next_reading(T).await;
        assert_eq!(r.quality, Quality::Bad("simulated device exception".into()));
    }
    assert_eq!(h.status(), DeviceStatus::Online);
    h.stop(T).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn points_with_their_own_interval_are_polled_apart() {
    let mut h = start(
        "name: s\nprotocol: sim\npoll_interval: 1s\npoints:\n  - {name: fast, signal: counter}\n  - {name: slow, \
         signal: counter, poll_interval: 5s}\n",
    );
    let t0 = tokio::time::Instant::now();
    h.wait_for(|r| &*r.point == "slow", T).await;
    h.wait_for(|r| &*r.point == "slow", T).await;
    let elapsed = t0.elapsed();
    let fast = h.take_readings().len();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    assert!(fast <= 6, "{fast}");
    h.stop(T).await.unwrap();
}

fn errors(yaml: &str) -> Vec<String> {
    let device = device_config_from_yaml(yaml);
    match SimFactory.build(&device) {
        Ok(_) => panic!("expected configuration errors"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_configuration_problem_is_reported_at_its_node() {
    let yaml = "\
name: bad
protocol: sim
connection:
  failure_rate: 1.5
  exception_rate: -0.1
  sede: 4
points:
  - name: a
    signal: sine
    min: 10
    max: 5
    period: 0s
  - name: b
    signal: sawtooth
  - name: c
    signal: counter
    perod: 5s
    max: -1
  - name: d
    signal: counter
    period: 5s
    step: -1
  - name: e
    signal: ramp
    type: bool
  - name: f
    signal: setpoint
    type: int
    initial: 2.5
  - name: g
    unit: V
";
    let got = errors(yaml);
    let want = [
        "test.yaml:4:17: connection.failure_rate: must be between 0.0 and 1.0 (a probability), found 1.5",
        "test.yaml:5:19: connection.exception_rate: must be between 0.0 and 1.0 (a probability), found -0.1",
        "test.yaml:6:3: connection.sede: unknown key `sede`, did you mean `seed`? expected one of: \
         failure_rate, exception_rate, seed",
        "test.yaml:10:10: points[0].min: `min` (10) is greater than `max` (5)",
        "test.yaml:12:13: points[0].period: must be greater than zero",
        "test.yaml:14:13: points[1].signal: unknown value `sawtooth`, expected one of: sine, ramp, random_walk, \
         counter, square, constant, setpoint",
        "test.yaml:17:5: points[2].perod: unknown key `perod`, did you mean `period`? expected one of: signal, \
         type, min, max, period, step, initial",
        "test.yaml:18:10: points[2].max: `min` (0, the default) is greater than `max` (-1)",
        "test.yaml:21:13: points[3].period: `period` does not apply to signal `counter` (it uses: type, min, \
         max, step, initial)",
        "test.yaml:22:11: points[3].step: must be positive for signal `counter` (a ramp can go down, a counter \
         cannot)",
        "test.yaml:25:11: points[4].type: type `bool` does not work with signal `ramp` (only square, constant \
         and setpoint)",
        "test.yaml:29:14: points[5].initial: does not fit type `int`: expected an integer, got 2.5",
        "test.yaml:30:5: points[6]: missing required key `signal`",
    ];
    assert_eq!(got, want, "\n{}", got.join("\n"));
}

#[test]
fn a_valid_device_builds() {
    let device = device_config_from_yaml(
        "name: ok\nprotocol: sim\nconnection: {failure_rate: 0.1, exception_rate: 0.01, seed: 1}\npoints:\n  - \
         {name: a, signal: sine, min: -5, max: 5, period: 1m30s, unit: V, scale: 2}\n  - {name: b, signal: \
         square}\n  - {name: c, signal: random_walk}\n  - {name: d, signal: setpoint, writable: true, type: bool, \
         initial: false}\n",
    );
    SimFactory.build(&device).unwrap();
}

#[test]
fn defaults_that_conflict_with_a_given_bound_are_named() {
    let got = errors("name: x\nprotocol: sim\npoints:\n  - {name: a, signal: sine, max: -5}\n");
    assert_eq!(
        got,
        ["test.yaml:4:34: points[0].max: `min` (0, the default) is greater than `max` (-5)"]
    );
}
