//! Drop and stall episodes: one log line when an episode starts and one summary when it has been quiet.
use super::*;

impl Writer {
    // ---- episodes ------------------------------------------------------------------------------------------

    /// Logs the start of a drop (or stall/block) episode at once, and its summary once it has been quiet for
    /// `episode_quiet`: one line each, never one per message.
    pub(super) fn note_drops(&mut self) {
        self.note_drops_at(Instant::now(), false);
    }

    /// `closing`: end every episode now (summaries at shutdown).
    pub(super) fn note_drops_at(&mut self, now: Instant, closing: bool) {
        let quiet = self.s.opts.episode_quiet;
        let path = self.s.path.display().to_string();
        for i in 0..self.episodes.len() {
            let kind = self.episodes[i].kind;
            let (value, persisting) = match kind {
                EpisodeKind::Oldest => (self.shared.dropped_oldest.load(Ordering::Relaxed), false),
                EpisodeKind::Newest => (self.shared.dropped_newest.load(Ordering::Relaxed), false),
                EpisodeKind::WriteFailed => (
                    self.shared.dropped_write_failed.load(Ordering::Relaxed),
                    false,
                ),
                EpisodeKind::Stalled => (self.stall_count, self.stall.is_some()),
                EpisodeKind::Blocked => (self.blocked_count, self.state == WriterState::Full),
            };
            let lost_by_bridge = || {
                let t = self.shared.cursors.lock();
                let mut v: Vec<String> = t
                    .map
                    .iter()
                    .filter(|(_, c)| c.lost > 0)
                    .map(|(k, c)| format!("{k} {}", c.lost))
                    .collect();
                v.sort();
                v.join(", ")
            };
            let ep = &mut self.episodes[i];
            if value > ep.seen {
                if ep.active.is_none() {
                    ep.active = Some((now, ep.seen));
                    let cause = self.full_cause;
                    let err = self.shared.last_error.lock().clone().unwrap_or_default();
                    match kind {
                        EpisodeKind::Oldest => tracing::error!(
                            path,
                            "store full ({cause}): deleting the oldest undelivered messages (when_full: drop_oldest)"
                        ),
                        EpisodeKind::Newest => {
                            tracing::error!(path, "store full ({cause}): refusing new messages (when_full: drop_newest)")
                        }
                        EpisodeKind::WriteFailed => {
                            tracing::error!(path, "store cannot write ({err}): messages are being lost")
                        }
                        EpisodeKind::Stalled => {
                            let what = match self.s.policy {
                                WhenFull::Block => "publishers wait",
                                WhenFull::DropNewest | WhenFull::DropOldest => "new messages are refused",
                            };
                            tracing::error!(path, "store cannot write ({err}); {what} while it retries")
                        }
                        EpisodeKind::Blocked => tracing::warn!(
                            path,
                            "store full ({cause}): publishers wait until bridges deliver (when_full: block)"
                        ),
                    }
                }
                ep.seen = value;
                ep.last_event = now;
            } else if persisting {
                ep.last_event = now;
            } else if let Some((started, base)) = ep.active {
                if closing || now.duration_since(ep.last_event) >= quiet {
                    ep.active = None;
                    let n = ep.seen - base;
                    let took = now.duration_since(started).as_secs();
                    match kind {
                        EpisodeKind::Oldest => {
                            let lost = lost_by_bridge();
                            tracing::error!(
                                path,
                                "store: episode over: {n} oldest undelivered messages dropped in {took} s \
                                 (lost per bridge since start: {lost})"
                            )
                        }
                        EpisodeKind::Newest => {
                            tracing::error!(
                                path,
                                "store: episode over: {n} new messages refused in {took} s"
                            )
                        }
                        EpisodeKind::WriteFailed => {
                            tracing::error!(path, "store: episode over: {n} messages could not be written in {took} s")
                        }
                        EpisodeKind::Stalled => {
                            tracing::warn!(path, "store: writing normally again (after {took} s)")
                        }
                        EpisodeKind::Blocked => {
                            tracing::info!(path, "store: publishers unblocked (after {took} s)")
                        }
                    }
                }
            }
        }
    }
}
