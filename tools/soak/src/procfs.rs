//! What the soak reads from `/proc`: a process's CPU time and memory, the machine's busy time (to show how
//! noisy a measurement was), and the process tree (to find the daemon under a wrapper such as heaptrack).
use std::path::Path;

/// USER_HZ: 100 on every Linux ABI (what `/proc/*/stat` counts in).
const TICK: f64 = 0.01;

/// user + system CPU seconds of a process; `None` once it is gone.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// user + system CPU seconds from a `stat` text (a process's or a thread's).
fn stat_cpu_secs(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name, state is field 3 (index 0): utime is field 14, stime field 15.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((ticks(11)? + ticks(12)?) as f64 * TICK)
}

/// The parent pid of a process.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Busy CPU seconds of the whole machine (all CPUs) since boot: user, nice, system, irq, softirq, steal.
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
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum::<u64>() as f64
        * TICK
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident set (VmRSS).
    pub rss: u64,
    /// Resident anonymous memory (RssAnon): heap, stacks, SQLite's page cache. What grows when something leaks.
    pub anon: u64,
    /// Resident file-backed pages (RssFile): mostly the binary's code.
    pub file: u64,
    /// Peak resident set (VmHWM).
    pub hwm: u64,
    /// Threads.
    pub threads: u64,
    /// Anonymous memory from `smaps_rollup` (cross-check of `anon`, includes swapped-in pages the same way).
    pub rollup_anon: u64,
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads `/proc/PID/status` and `/proc/PID/smaps_rollup`; `None` once the process is gone.
pub fn mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Some(Mem {
        rss: field_kib(&status, "VmRSS:"),
        anon: field_kib(&status, "RssAnon:"),
        file: field_kib(&status, "RssFile:"),
        hwm: field_kib(&status, "VmHWM:"),
        threads: field_kib(&status, "Threads:"),
        rollup_anon: field_kib(&rollup, "Anonymous:"),
    })
}

/// A descendant of `root` (or `root` itself) running `exe`: the daemon when a wrapper (heaptrack, valgrind,
/// `env`) started it. Walks `/proc` once; the parent chain of each candidate is bounded by its depth.
pub fn find_descendant(root: u32, exe: &Path) -> Option<u32> {
    let want = std::fs::canonicalize(exe).ok()?;
    let entries = std::fs::read_dir("/proc").ok()?;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        if target != want {
            continue;
        }
        let mut p = pid;
        for _ in 0..64 {
            if p == root {
                return Some(pid);
            }
            match ppid(p) {
                Some(pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
    }
    None
}

/// Size of a file in bytes (0 when missing).
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// CPU seconds and voluntary context switches (wake-ups after a sleep) per thread name, summed over the
/// threads that share a name (tokio's workers, a blocking pool), from `/proc/PID/task/*`.
pub fn threads(pid: u32) -> std::collections::BTreeMap<String, (f64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(p.join("stat")),
            std::fs::read_to_string(p.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let Some((name, cpu, switches)) = task(&stat, &status) else {
            continue;
        };
        let e = out.entry(name).or_insert((0.0, 0));
        e.0 += cpu;
        e.1 += switches;
    }
    out
}

/// One thread's name, CPU seconds and voluntary context switches from its `stat` and `status` texts.
fn task(stat: &str, status: &str) -> Option<(String, f64, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?.to_string();
    let cpu = stat_cpu_secs(stat)?;
    Some((name, cpu, field_kib(status, "voluntary_ctxt_switches:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_read_from_its_stat_and_status() {
        // A name with a space and a parenthesis; utime 250 and stime 50 ticks (fields 14 and 15).
        let stat =
            "4242 (bridge (x) 1) S 1 4242 4242 0 -1 4194368 96 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        let status =
            "Name:\tbridge\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t77\n";
        let (name, cpu, sw) = task(stat, status).unwrap();
        assert_eq!(name, "bridge (x) 1");
        assert!((cpu - 3.0).abs() < 1e-9, "{cpu}");
        assert_eq!(sw, 1234);
        assert!(task("no parentheses", status).is_none());
    }

    #[test]
    fn the_threads_of_this_process_are_found_by_name() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let probe = std::thread::Builder::new()
            .name("soak-probe".into())
            .spawn(move || {
                ready_tx.send(()).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let t = threads(std::process::id());
        done_tx.send(()).unwrap();
        probe.join().unwrap();
        assert!(t.contains_key("soak-probe"), "{t:?}");
    }
}
