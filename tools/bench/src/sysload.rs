//! How busy the machine was: the bench shares a small box with whatever else runs on it, so every measurement
//! records the CPU time used by other processes while it ran, and can wait for a quieter moment first.
use std::time::{Duration, Instant};

/// USER_HZ is 100 on every Linux ABI.
const TICK: f64 = 0.01;

/// Busy CPU seconds of the whole machine (all CPUs) since boot: user, nice, system and steal (time the
/// hypervisor gave this VM's CPUs to someone else). irq/softirq are left out: loopback TCP processing is
/// accounted there, and it is mostly the broker's and the load generator's own traffic.
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum();
    busy as f64 * TICK
}

/// User + system CPU seconds of a process (`self` or a pid).
pub fn process_cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // After the command name: state is field 3 (index 0), utime 14 (index 11), stime 15 (index 12).
    (ticks(11) + ticks(12)) as f64 * TICK
}

/// CPU used during one measurement, split by who used it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSplit {
    pub wall_secs: f64,
    pub broker_secs: f64,
    pub bench_secs: f64,
    /// Everything else on the machine (other processes, the kernel on their behalf).
    pub other_secs: f64,
}

impl CpuSplit {
    /// Average number of CPUs other processes kept busy.
    pub fn other_cores(&self) -> f64 {
        if self.wall_secs > 0.0 {
            self.other_secs / self.wall_secs
        } else {
            0.0
        }
    }
}

/// A snapshot to diff against.
pub struct CpuMark {
    at: Instant,
    machine: f64,
    broker: f64,
    bench: f64,
    pid: String,
}

impl CpuMark {
    pub fn now(broker_pid: u32) -> CpuMark {
        let pid = broker_pid.to_string();
        CpuMark {
            at: Instant::now(),
            machine: machine_busy_secs(),
            broker: process_cpu_secs(&pid),
            bench: process_cpu_secs("self"),
            pid,
        }
    }

    pub fn split(&self) -> CpuSplit {
        let broker = process_cpu_secs(&self.pid) - self.broker;
        let bench = process_cpu_secs("self") - self.bench;
        let machine = machine_busy_secs() - self.machine;
        CpuSplit {
            wall_secs: self.at.elapsed().as_secs_f64(),
            broker_secs: broker,
            bench_secs: bench,
            other_secs: (machine - broker - bench).max(0.0),
        }
    }
}

/// Waits (at most `max_wait`) until other processes keep fewer than `threshold` CPUs busy over a 1 s window.
/// Returns the load seen last.
pub async fn wait_quiet(max_wait: Duration, threshold: f64) -> f64 {
    let deadline = Instant::now() + max_wait;
    loop {
        let before = machine_busy_secs() - process_cpu_secs("self");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let load = (machine_busy_secs() - process_cpu_secs("self") - before).max(0.0);
        if load < threshold || Instant::now() >= deadline {
            return load;
        }
    }
}
