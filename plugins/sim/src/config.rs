//! The sim adapter's part of a device map: raw serde structs, then checks that need more than one key, into the
//! typed [`DeviceSpec`] the simulator runs from.
//!
//! Every problem is reported (not just the first), each at the node that causes it, so a demo config with three
//! typos gets three messages with their line and column.
//!
//! ```yaml
//! protocol: sim
//! connection:            # all optional
//!   failure_rate: 0.1    # probability that a poll fails with a transport error
//!   exception_rate: 0.0  # probability that one point's read is a device exception
//!   seed: 42             # reproducible randomness
//! points:
//!   - name: temperature
//!     signal: sine       # sine | ramp | random_walk | counter | square | constant | setpoint
//!     min: 18
//!     max: 24
//!     period: 10m
//!   - name: target
//!     signal: setpoint
//!     writable: true
//!     initial: 21.5
//! ```
use std::time::Duration;

use fieldbridge_sdk::config::{HumanDuration, Spanned};
use fieldbridge_sdk::{ConfigError, ConfigNode, DeviceConfig, Mark, Value};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Default `min`/`max` of numeric signals: a percentage-like range reads naturally in a dashboard.
const DEFAULT_RANGE: (f64, f64) = (0.0, 100.0);
/// Default `min`/`max` of a numeric square wave: an on/off signal.
const SQUARE_RANGE: (f64, f64) = (0.0, 1.0);
/// Default period of sine and square waves.
const DEFAULT_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    failure_rate: Option<Spanned<f64>>,
    exception_rate: Option<Spanned<f64>>,
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    signal: Spanned<SignalKind>,
    #[serde(rename = "type")]
    ty: Option<Spanned<ValueType>>,
    min: Option<Spanned<f64>>,
    max: Option<Spanned<f64>>,
    period: Option<Spanned<HumanDuration>>,
    step: Option<Spanned<f64>>,
    initial: Option<Spanned<Initial>>,
}

/// The `signal:` of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// `min..max` sine wave over `period`, by time since start.
    Sine,
    /// `min`, `min + step`, … up to `max`, then back to `min`; one step per poll.
    Ramp,
    /// A random step in `[-step, step]` per poll, kept within `min..max`.
    RandomWalk,
    /// `initial`, then `+ step` per poll; wraps to `min` past `max` when `max` is set.
    Counter,
    /// `min` for the first half of each `period`, `max` for the second (false/true for bool points).
    Square,
    /// `initial`, always (unless written).
    Constant,
    /// `initial` until written; a write is read back on the next poll.
    Setpoint,
}

impl SignalKind {
    fn name(self) -> &'static str {
        match self {
            SignalKind::Sine => "sine",
            SignalKind::Ramp => "ramp",
            SignalKind::RandomWalk => "random_walk",
            SignalKind::Counter => "counter",
            SignalKind::Square => "square",
            SignalKind::Constant => "constant",
            SignalKind::Setpoint => "setpoint",
        }
    }

    /// The optional keys that mean something for this signal; any other is a mistake worth reporting (a
    /// `period` on a counter would otherwise be silently ignored).
    fn keys(self) -> &'static [&'static str] {
        match self {
            SignalKind::Sine | SignalKind::Square => &["min", "max", "period"],
            SignalKind::Ramp | SignalKind::RandomWalk | SignalKind::Counter => {
                &["min", "max", "step", "initial"]
            }
            SignalKind::Constant => &["initial"],
            SignalKind::Setpoint => &["min", "max", "initial"],
        }
    }
}

/// The `type:` of a point: the kind of [`Value`] its readings carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// [`Value::Float`] (the default, except for square waves).
    Float,
    /// [`Value::Int`], rounded from the signal.
    Int,
    /// [`Value::Bool`]: square, constant and setpoint only.
    Bool,
}

impl ValueType {
    fn name(self) -> &'static str {
        match self {
            ValueType::Float => "float",
            ValueType::Int => "int",
            ValueType::Bool => "bool",
        }
    }

    /// The reading for a simulated quantity.
    pub(crate) fn value(self, x: f64) -> Value {
        match self {
            ValueType::Float => Value::Float(x),
            // Saturating: a runaway counter must not panic the adapter.
            ValueType::Int => Value::Int(x.round() as i64),
            ValueType::Bool => Value::Bool(x != 0.0),
        }
    }

    /// A written (or `initial`) value as the simulated quantity, or why it does not fit this type. Integer
    /// points accept floats that are whole numbers, because the core's inverse scaling produces floats
    /// (`21.0 / 0.1` is not exactly 210); bool points accept 0 and 1, which is what a bare MQTT payload gives.
    pub(crate) fn accept(self, v: &Value) -> Result<f64, String> {
        let whole = |x: f64| {
            let r = x.round();
            ((x - r).abs() <= 1e-6 * r.abs().max(1.0)).then_some(r)
        };
        match (self, v) {
            (ValueType::Float, Value::Float(x)) if x.is_finite() => Ok(*x),
            (ValueType::Float, Value::Int(i)) => Ok(*i as f64),
            (ValueType::Float, Value::UInt(u)) => Ok(*u as f64),
            (ValueType::Int, Value::Int(i)) => Ok(*i as f64),
            (ValueType::Int, Value::UInt(u)) => Ok(*u as f64),
            (ValueType::Int, Value::Float(x)) if x.is_finite() => {
                whole(*x).ok_or_else(|| format!("expected an integer, got {x}"))
            }
            (ValueType::Bool, Value::Bool(b)) => Ok(if *b { 1.0 } else { 0.0 }),
            (ValueType::Bool, Value::Int(i @ (0 | 1))) => Ok(*i as f64),
            (ValueType::Bool, Value::UInt(u @ (0 | 1))) => Ok(*u as f64),
            (ty, v) => Err(format!(
                "expected a {} value, got {} `{v}`",
                ty.name(),
                v.kind()
            )),
        }
    }
}

/// An `initial:` value as written (a number or a boolean).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Initial {
    Bool(bool),
    Number(f64),
}

impl<'de> Deserialize<'de> for Initial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Initial;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a boolean")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Initial, E> {
                Ok(Initial::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Initial, E> {
                Ok(Initial::Number(i as f64))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Initial, E> {
                Ok(Initial::Number(u as f64))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Initial, E> {
                Ok(Initial::Number(x))
            }
        }
        d.deserialize_any(V)
    }
}

/// Device-level settings (`connection:`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionSpec {
    /// Probability in `0..=1` that a poll (or write) fails with a transport error.
    pub failure_rate: f64,
    /// Probability in `0..=1` that one point's read is a device exception.
    pub exception_rate: f64,
    /// Seed of the device's random generator; `None`: from the OS.
    pub seed: Option<u64>,
}

/// One validated point.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSpec {
    /// What generates the values.
    pub signal: SignalKind,
    /// The value type of readings.
    pub ty: ValueType,
    /// Lower bound (signal range; the write range of setpoints, where it is `-inf` unless set).
    pub min: f64,
    /// Upper bound (as `min`; `+inf` for counters and setpoints without `max`).
    pub max: f64,
    /// Sine and square period.
    pub period: Duration,
    /// Ramp, counter and random-walk increment.
    pub step: f64,
    /// The first value of state-based signals (ramp, counter, random walk, constant, setpoint).
    pub initial: f64,
    /// Whether writes are accepted.
    pub writable: bool,
}

/// The whole validated device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// `connection:`
    pub connection: ConnectionSpec,
    /// The points, in the order of the device's `points`.
    pub points: Vec<PointSpec>,
}

/// Validates the sim part of a device; every problem is returned, sorted by position.
pub fn validate(device: &DeviceConfig) -> Result<DeviceSpec, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let connection = connection(&device.connection, &mut errors);
    let mut points = Vec::with_capacity(device.points.len());
    for p in device.points.iter() {
        if let Some(spec) = point(&p.spec, p.writable, &mut errors) {
            points.push(spec);
        }
    }
    match connection {
        // `connection` is `None` only after pushing an error.
        Some(connection) if errors.is_empty() => Ok(DeviceSpec { connection, points }),
        _ => {
            errors.sort();
            errors.dedup();
            Err(errors)
        }
    }
}

/// The value of `key` in `node` when it has the right type; `None` otherwise (the strict pass reports why).
fn field<T: DeserializeOwned>(node: &ConfigNode, key: &str) -> Option<T> {
    node.get(key).and_then(|n| n.deserialize().ok())
}

fn connection(node: &ConfigNode, errors: &mut Vec<ConfigError>) -> Option<ConnectionSpec> {
    let before = errors.len();
    let raw: RawConnection = node.deserialize_all().unwrap_or_else(|e| {
        errors.extend(e);
        // Check what can be read anyway, so one typo does not hide the other problems.
        RawConnection {
            failure_rate: field(node, "failure_rate"),
            exception_rate: field(node, "exception_rate"),
            seed: field(node, "seed"),
        }
    });
    let rate = |r: &Option<Spanned<f64>>, errors: &mut Vec<ConfigError>| match r {
        None => 0.0,
        Some(r) if (0.0..=1.0).contains(&r.value) => r.value,
        Some(r) => {
            errors.push(r.error(format!(
                "must be between 0.0 and 1.0 (a probability), found {}",
                r.value
            )));
            0.0
        }
    };
    let spec = ConnectionSpec {
        failure_rate: rate(&raw.failure_rate, errors),
        exception_rate: rate(&raw.exception_rate, errors),
        seed: raw.seed,
    };
    (errors.len() == before).then_some(spec)
}

fn point(node: &ConfigNode, writable: bool, errors: &mut Vec<ConfigError>) -> Option<PointSpec> {
    let before = errors.len();
    let raw: RawPoint = match node.deserialize_all() {
        Ok(raw) => raw,
        Err(e) => {
            errors.extend(e);
            // Check what can be read anyway, so one typo does not hide the other problems; without a valid
            // `signal` nothing else can be judged.
            RawPoint {
                signal: field(node, "signal")?,
                ty: field(node, "type"),
                min: field(node, "min"),
                max: field(node, "max"),
                period: field(node, "period"),
                step: field(node, "step"),
                initial: field(node, "initial"),
            }
        }
    };
    let signal = raw.signal.value;

    // Keys that do not apply to this signal: silently ignoring them would hide a misunderstanding.
    let given = [
        ("min", span(&raw.min)),
        ("max", span(&raw.max)),
        ("period", span(&raw.period)),
        ("step", span(&raw.step)),
        ("initial", span(&raw.initial)),
    ];
    for (key, at) in given {
        if let Some((mark, path)) = at {
            if !signal.keys().contains(&key) {
                errors.push(ConfigError {
                    mark,
                    path,
                    message: format!(
                        "`{key}` does not apply to signal `{}` (it uses: {})",
                        signal.name(),
                        list_keys(signal.keys())
                    ),
                });
            }
        }
    }

    let ty = match &raw.ty {
        None if signal == SignalKind::Square => ValueType::Bool,
        None => ValueType::Float,
        Some(t) => {
            let bool_ok = matches!(
                signal,
                SignalKind::Square | SignalKind::Constant | SignalKind::Setpoint
            );
            if t.value == ValueType::Bool && !bool_ok {
                errors.push(t.error(format!(
                    "type `bool` does not work with signal `{}` (only square, constant and setpoint)",
                    signal.name()
                )));
            }
            t.value
        }
    };
    if ty == ValueType::Bool {
        for s in [&raw.min, &raw.max].into_iter().flatten() {
            errors.push(s.error("a bool point has no range (its values are false and true)"));
        }
    }

    // The range: explicit bounds, else the signal's defaults; counters and setpoints are open-ended.
    let (dmin, dmax) = match (signal, ty) {
        (_, ValueType::Bool) => SQUARE_RANGE,
        (SignalKind::Square, _) => SQUARE_RANGE,
        (SignalKind::Counter, _) => (0.0, f64::INFINITY),
        (SignalKind::Setpoint | SignalKind::Constant, _) => (f64::NEG_INFINITY, f64::INFINITY),
        _ => DEFAULT_RANGE,
    };
    let min = raw.min.as_ref().map_or(dmin, |s| s.value);
    let max = raw.max.as_ref().map_or(dmax, |s| s.value);
    for s in [&raw.min, &raw.max].into_iter().flatten() {
        if !s.value.is_finite() {
            errors.push(s.error("must be a finite number"));
        }
    }
    if min > max {
        let default = |s: &Option<Spanned<f64>>| if s.is_some() { "" } else { ", the default" };
        let msg = format!(
            "`min` ({min}{}) is greater than `max` ({max}{})",
            default(&raw.min),
            default(&raw.max)
        );
        // At whichever bound was written (the `min` when both were).
        match (&raw.min, &raw.max) {
            (Some(s), _) | (None, Some(s)) => errors.push(s.error(msg)),
            (None, None) => {}
        }
    }

    let period = match &raw.period {
        None => DEFAULT_PERIOD,
        Some(p) if p.value.0.is_zero() => {
            errors.push(p.error("must be greater than zero"));
            DEFAULT_PERIOD
        }
        Some(p) => p.value.0,
    };

    let step = match &raw.step {
        None => 1.0,
        Some(s) if s.value == 0.0 || !s.value.is_finite() => {
            errors.push(s.error("must be a non-zero number"));
            1.0
        }
        Some(s)
            if s.value < 0.0 && matches!(signal, SignalKind::Counter | SignalKind::RandomWalk) =>
        {
            errors.push(s.error(format!(
                "must be positive for signal `{}` (a ramp can go down, a counter cannot)",
                signal.name()
            )));
            1.0
        }
        Some(s) => s.value,
    };

    let default_initial = match signal {
        SignalKind::Ramp if step < 0.0 => max,
        SignalKind::Ramp | SignalKind::Counter => min,
        SignalKind::RandomWalk => (min + max) / 2.0,
        _ if min.is_finite() && min > 0.0 => min,
        _ if max.is_finite() && max < 0.0 => max,
        _ => 0.0,
    };
    let initial = match &raw.initial {
        None => default_initial,
        Some(s) => {
            let value = match s.value {
                Initial::Bool(b) => Value::Bool(b),
                Initial::Number(x) => Value::Float(x),
            };
            match ty.accept(&value) {
                Err(why) => {
                    errors.push(s.error(format!("does not fit type `{}`: {why}", ty.name())));
                    default_initial
                }
                Ok(x) if x < min || x > max => {
                    errors.push(s.error(format!("{x} is outside `min`..`max` ({min}..{max})")));
                    default_initial
                }
                Ok(x) => x,
            }
        }
    };

    (errors.len() == before).then_some(PointSpec {
        signal,
        ty,
        min,
        max,
        period,
        step,
        initial,
        writable,
    })
}

fn span<T>(s: &Option<Spanned<T>>) -> Option<(Mark, String)> {
    s.as_ref().map(|s| (s.mark.clone(), s.path.clone()))
}

fn list_keys(keys: &[&str]) -> String {
    let mut all = vec!["type"];
    all.extend_from_slice(keys);
    all.join(", ")
}
