//! The simulated device: point state, signal generation and injected failures, behind [`PollDevice`] so that
//! the [`fieldbridge_sdk::Poller`] drives it exactly like a real one (timers, offline/backoff, write-back).
//!
//! Time-shaped signals (sine, square) are computed from the time since the device was first connected, on
//! tokio's clock, so tests can run them on a paused clock; the others advance once per poll of their group.
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_sdk::poller::GroupReading;
use fieldbridge_sdk::{CommandError, DeviceException, PollDevice, TransportError, Value};
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::config::{DeviceSpec, PointSpec, SignalKind};

struct PointState {
    name: Arc<str>,
    spec: PointSpec,
    /// The current value of state-based signals.
    state: f64,
    /// A value written to a time-shaped signal: read back once on the next poll, then the signal resumes.
    written: Option<f64>,
}

/// One simulated device.
pub(crate) struct SimDevice {
    rng: StdRng,
    failure_rate: f64,
    exception_rate: f64,
    points: Vec<PointState>,
    groups: Vec<Vec<usize>>,
    started: Option<Instant>,
}

impl SimDevice {
    pub(crate) fn new(spec: DeviceSpec, names: Vec<Arc<str>>, groups: Vec<Vec<usize>>) -> Self {
        let rng = match spec.connection.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let points = spec
            .points
            .into_iter()
            .zip(names)
            .map(|(spec, name)| PointState {
                name,
                state: spec.initial,
                spec,
                written: None,
            })
            .collect();
        SimDevice {
            rng,
            failure_rate: spec.connection.failure_rate,
            exception_rate: spec.connection.exception_rate,
            points,
            groups,
            started: None,
        }
    }

    /// Whether an event of probability `p` happens now. Probabilities of zero draw nothing, so a device without
    /// failures consumes the same random numbers as before failures existed (random walks stay reproducible).
    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    fn elapsed(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn sample(&mut self, index: usize, elapsed: Duration) -> Value {
        // Drawn before borrowing the point (the generator and the points are both in `self`).
        let delta = match &self.points[index].spec {
            s if s.signal == SignalKind::RandomWalk => self.rng.random_range(-s.step..=s.step),
            _ => 0.0,
        };
        let p = &mut self.points[index];
        let spec = &p.spec;
        let x = match spec.signal {
            SignalKind::Sine | SignalKind::Square => match p.written.take() {
                Some(w) => w,
                None => time_shaped(spec, elapsed),
            },
            SignalKind::Constant | SignalKind::Setpoint => p.state,
            SignalKind::Ramp => {
                let x = p.state;
                let next = x + spec.step;
                p.state = if next > spec.max {
                    spec.min
                } else if next < spec.min {
                    spec.max
                } else {
                    next
                };
                x
            }
            SignalKind::Counter => {
                let x = p.state;
                let next = x + spec.step;
                p.state = if next > spec.max { spec.min } else { next };
                x
            }
            SignalKind::RandomWalk => {
                let x = p.state;
                p.state = (x + delta).clamp(spec.min, spec.max);
                x
            }
        };
        spec.ty.value(x)
    }
}

/// Sine and square values at `elapsed` since start.
fn time_shaped(spec: &PointSpec, elapsed: Duration) -> f64 {
    let phase = (elapsed.as_secs_f64() / spec.period.as_secs_f64()).fract();
    match spec.signal {
        SignalKind::Square => {
            if phase < 0.5 {
                spec.min
            } else {
                spec.max
            }
        }
        _ => {
            let mid = (spec.min + spec.max) / 2.0;
            let amp = (spec.max - spec.min) / 2.0;
            (mid + amp * (std::f64::consts::TAU * phase).sin()).clamp(spec.min, spec.max)
        }
    }
}

impl PollDevice for SimDevice {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        // The signals' time starts with the first connection, not with `build` (which may be long before).
        self.started.get_or_insert_with(Instant::now);
        Box::pin(async { Ok(()) })
    }

    fn read(&mut self, group: usize) -> BoxFuture<'_, Result<GroupReading, TransportError>> {
        let result = if self.roll(self.failure_rate) {
            Err(TransportError::connection(format!(
                "simulated transport failure (failure_rate {})",
                self.failure_rate
            )))
        } else {
            let elapsed = self.elapsed();
            let indexes = self.groups.get(group).cloned().unwrap_or_default();
            let mut out = Vec::with_capacity(indexes.len());
            for i in indexes {
                if self.roll(self.exception_rate) {
                    out.push((i, Err(DeviceException::new("simulated device exception"))));
                } else {
                    out.push((i, Ok(self.sample(i, elapsed))));
                }
            }
            Ok(out)
        };
        Box::pin(async move { result })
    }

    fn write(&mut self, point: usize, value: Value) -> BoxFuture<'_, Result<(), CommandError>> {
        let result = self.write_now(point, value);
        Box::pin(async move { result })
    }
}

impl SimDevice {
    fn write_now(&mut self, point: usize, value: Value) -> Result<(), CommandError> {
        let Some(p) = self.points.get(point) else {
            return Err(CommandError::UnknownPoint(format!("#{point}")));
        };
        if !p.spec.writable {
            // The core and the poller refuse these already; a device refuses them too.
            return Err(CommandError::ReadOnly(p.name.to_string()));
        }
        let x = p
            .spec
            .ty
            .accept(&value)
            .map_err(CommandError::InvalidValue)?;
        if x < p.spec.min || x > p.spec.max {
            return Err(CommandError::InvalidValue(format!(
                "{value} is outside {}..{}",
                p.spec.min, p.spec.max
            )));
        }
        if self.roll(self.failure_rate) {
            return Err(CommandError::Transport(format!(
                "simulated transport failure (failure_rate {})",
                self.failure_rate
            )));
        }
        let p = &mut self.points[point];
        match p.spec.signal {
            SignalKind::Sine | SignalKind::Square => p.written = Some(x),
            // State-based signals carry on from the written value (e.g. a counter reset to 0).
            _ => p.state = x,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConnectionSpec, ValueType};

    fn spec(
        signal: SignalKind,
        ty: ValueType,
        min: f64,
        max: f64,
        step: f64,
        initial: f64,
    ) -> PointSpec {
        PointSpec {
            signal,
            ty,
            min,
            max,
            period: Duration::from_secs(8),
            step,
            initial,
            writable: true,
        }
    }

    fn device(points: Vec<PointSpec>, seed: u64) -> SimDevice {
        let n = points.len();
        SimDevice::new(
            DeviceSpec {
                connection: ConnectionSpec {
                    failure_rate: 0.0,
                    exception_rate: 0.0,
                    seed: Some(seed),
                },
                points,
            },
            (0..n).map(|i| Arc::from(format!("p{i}"))).collect(),
            vec![(0..n).collect()],
        )
    }

    #[test]
    fn time_shapes() {
        let sine = spec(SignalKind::Sine, ValueType::Float, 10.0, 20.0, 1.0, 0.0);
        let at = |s: f64| time_shaped(&sine, Duration::from_secs_f64(s));
        assert!((at(0.0) - 15.0).abs() < 1e-9);
        assert!((at(2.0) - 20.0).abs() < 1e-9);
        assert!((at(6.0) - 10.0).abs() < 1e-9);
        assert!((at(8.0) - 15.0).abs() < 1e-9);
        let square = spec(SignalKind::Square, ValueType::Bool, 0.0, 1.0, 1.0, 0.0);
        let sq = |s: f64| time_shaped(&square, Duration::from_secs_f64(s));
        assert_eq!(
            [sq(0.0), sq(3.9), sq(4.0), sq(7.9), sq(8.0)],
            [0.0, 0.0, 1.0, 1.0, 0.0]
        );
    }

    #[test]
    fn ramps_wrap_both_ways() {
        let mut d = device(
            vec![
                spec(SignalKind::Ramp, ValueType::Int, 0.0, 2.0, 1.0, 0.0),
                spec(SignalKind::Ramp, ValueType::Int, 0.0, 2.0, -1.0, 2.0),
            ],
            1,
        );
        let up: Vec<Value> = (0..5).map(|_| d.sample(0, Duration::ZERO)).collect();
        let down: Vec<Value> = (0..5).map(|_| d.sample(1, Duration::ZERO)).collect();
        let ints = |v: &[i64]| v.iter().map(|&i| Value::Int(i)).collect::<Vec<_>>();
        assert_eq!(up, ints(&[0, 1, 2, 0, 1]));
        assert_eq!(down, ints(&[2, 1, 0, 2, 1]));
    }

    #[test]
    fn writes_are_type_and_range_checked() {
        let mut d = device(
            vec![
                spec(SignalKind::Setpoint, ValueType::Float, 0.0, 50.0, 1.0, 20.0),
                spec(
                    SignalKind::Setpoint,
                    ValueType::Int,
                    f64::NEG_INFINITY,
                    f64::INFINITY,
                    1.0,
                    0.0,
                ),
                spec(SignalKind::Setpoint, ValueType::Bool, 0.0, 1.0, 1.0, 0.0),
            ],
            1,
        );
        assert_eq!(d.write_now(0, Value::Int(30)), Ok(()));
        assert_eq!(d.sample(0, Duration::ZERO), Value::Float(30.0));
        assert!(matches!(
            d.write_now(0, Value::Float(50.5)),
            Err(CommandError::InvalidValue(_))
        ));
        assert!(matches!(
            d.write_now(0, Value::Bool(true)),
            Err(CommandError::InvalidValue(_))
        ));
        assert!(matches!(
            d.write_now(0, Value::String("x".into())),
            Err(CommandError::InvalidValue(_))
        ));
        // Float noise from inverse scaling is fine for an integer point; a fraction is not.
        assert_eq!(d.write_now(1, Value::Float(210.000_000_01)), Ok(()));
        assert_eq!(d.sample(1, Duration::ZERO), Value::Int(210));
        assert!(matches!(
            d.write_now(1, Value::Float(2.5)),
            Err(CommandError::InvalidValue(_))
        ));
        assert_eq!(d.write_now(2, Value::Int(1)), Ok(()));
        assert_eq!(d.sample(2, Duration::ZERO), Value::Bool(true));
        assert!(matches!(
            d.write_now(2, Value::Int(2)),
            Err(CommandError::InvalidValue(_))
        ));
    }

    #[test]
    fn a_written_sine_is_read_back_once() {
        let mut d = device(
            vec![spec(
                SignalKind::Sine,
                ValueType::Float,
                0.0,
                10.0,
                1.0,
                0.0,
            )],
            1,
        );
        d.write_now(0, Value::Float(9.5)).unwrap();
        assert_eq!(d.sample(0, Duration::ZERO), Value::Float(9.5));
        assert_eq!(d.sample(0, Duration::ZERO), Value::Float(5.0));
    }
}
