//! Counters of one serial device, shared with whoever holds the `Arc` (tests, the monitor, metrics).
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters (relaxed atomics: each exact, not a consistent snapshot across counters).
#[derive(Debug, Default)]
pub struct SerialStats {
    /// Bytes read from the port.
    pub bytes: AtomicU64,
    /// Complete frames.
    pub frames: AtomicU64,
    /// Frames over `max_frame` (or impossible length headers) discarded.
    pub oversized: AtomicU64,
    /// Bytes discarded: garbage before a frame start, oversized frames, partial frames ended by a gap.
    pub discarded_bytes: AtomicU64,
    /// Frames that failed their parser (checksums excluded).
    pub parse_errors: AtomicU64,
    /// Frames that failed their checksum.
    pub checksum_errors: AtomicU64,
    /// Values that did not convert to the point's type.
    pub conversion_errors: AtomicU64,
    /// Readings handed on (good and bad).
    pub readings: AtomicU64,
    /// Times the port was opened.
    pub opens: AtomicU64,
    /// Failed opens and I/O errors on an open port.
    pub port_errors: AtomicU64,
    /// Requests sent (polled devices).
    pub requests: AtomicU64,
    /// Requests without any answer in time.
    pub timeouts: AtomicU64,
    /// Frames of a polled device thrown away because no request was waiting for them: a late answer to a
    /// request that timed out, or output between exchanges. Never published. Their bytes are also in
    /// `discarded_bytes`.
    pub stale_frames: AtomicU64,
    /// Writes that succeeded.
    pub writes_ok: AtomicU64,
    /// Writes that failed (device refused, timeout, port error, bad value).
    pub writes_failed: AtomicU64,
}

/// A copy of [`SerialStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub bytes: u64,
    pub frames: u64,
    pub oversized: u64,
    pub discarded_bytes: u64,
    pub parse_errors: u64,
    pub checksum_errors: u64,
    pub conversion_errors: u64,
    pub readings: u64,
    pub opens: u64,
    pub port_errors: u64,
    pub requests: u64,
    pub timeouts: u64,
    pub stale_frames: u64,
    pub writes_ok: u64,
    pub writes_failed: u64,
}

impl SerialStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// All counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            bytes: g(&self.bytes),
            frames: g(&self.frames),
            oversized: g(&self.oversized),
            discarded_bytes: g(&self.discarded_bytes),
            parse_errors: g(&self.parse_errors),
            checksum_errors: g(&self.checksum_errors),
            conversion_errors: g(&self.conversion_errors),
            readings: g(&self.readings),
            opens: g(&self.opens),
            port_errors: g(&self.port_errors),
            requests: g(&self.requests),
            timeouts: g(&self.timeouts),
            stale_frames: g(&self.stale_frames),
            writes_ok: g(&self.writes_ok),
            writes_failed: g(&self.writes_failed),
        }
    }
}
