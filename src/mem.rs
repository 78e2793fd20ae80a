//! Giving the system back memory the allocator keeps after the program freed it.
//!
//! glibc's malloc returns freed memory only from the top of a heap (above `M_TRIM_THRESHOLD`). Memory freed
//! below a live allocation stays resident: a burst of readings queued while the store's writer waited on the
//! disk leaves the heap that much larger for good. In a soak at 15,000 readings/s one such wait (the page
//! cache dropped under a compile beside it) raised the RSS by 5 MiB that stayed; one `malloc_trim(0)` gave
//! 5.8 MB back. The daemon calls [`release_freed`] every [`TRIM_EVERY`] (see `App::start`).
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the daemon gives freed memory back.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Returns the free pages of every malloc arena to the system (glibc's `malloc_trim(0)`); whether any were.
/// Other allocators give memory back by themselves: there it does nothing and returns false.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed() -> bool {
    // SAFETY: malloc_trim takes no pointer; it works on glibc's own free lists, under the arenas' locks, and
    // leaves every live allocation in place.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns the free pages of every malloc arena to the system (glibc's `malloc_trim(0)`); whether any were.
/// Other allocators give memory back by themselves: there it does nothing and returns false.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn anon_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The test re-runs itself alone in a child process (marked by `FIELDBRIDGE_MEM_CHILD`), where the
    /// measuring happens: in the test process the other tests' allocations would move the RSS meanwhile.
    #[test]
    fn freed_memory_below_a_live_allocation_goes_back() {
        if std::env::var_os("FIELDBRIDGE_MEM_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "mem::tests::freed_memory_below_a_live_allocation_goes_back",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("FIELDBRIDGE_MEM_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("gave back"), "the child did not run: {text}");
            return;
        }
        // 64 MiB in 1 KiB blocks (from the heap, far below the mmap threshold), every 64th kept: the freed
        // blocks lie below live ones, so glibc cannot give them back from the top.
        let mut blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![i as u8; 1024]).collect();
        let mut kept = Vec::new();
        for (i, b) in blocks.drain(..).enumerate() {
            if i % 64 == 0 {
                kept.push(b);
            }
        }
        let before = anon_kib();
        assert!(release_freed(), "nothing was given back");
        let after = anon_kib();
        println!(
            "gave back {} KiB ({before} -> {after} KiB)",
            before.saturating_sub(after)
        );
        assert!(
            before.saturating_sub(after) >= 32 * 1024,
            "{before} -> {after} KiB"
        );
        assert_eq!(kept.len(), 1024);
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 64) as u8));
    }
}
