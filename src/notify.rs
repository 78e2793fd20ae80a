//! systemd readiness and watchdog notifications (the `sd_notify` protocol), without libsystemd.
//!
//! Under `Type=notify`, systemd passes a datagram socket in `$NOTIFY_SOCKET`: a path, or an abstract socket
//! name written with a leading `@`. The daemon sends `READY=1` once its listeners are bound and the HTTP API
//! answers, `STOPPING=1` when it starts shutting down, and, when the unit sets `WatchdogSec=`, `WATCHDOG=1`
//! every half of `$WATCHDOG_USEC` (systemd kills and restarts a daemon whose runtime stops scheduling that
//! task). Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op.
//!
//! A failure to notify is logged and otherwise ignored: the daemon must not stop serving because the service
//! manager went away.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Longest notification sent (systemd reads up to its pipe buffer; ours are a few bytes).
const MAX_STATE: usize = 4096;
/// Shortest watchdog period honoured: a smaller `WATCHDOG_USEC` would only burn CPU.
const MIN_WATCHDOG: Duration = Duration::from_millis(10);

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error("NOTIFY_SOCKET `{0}` is not an absolute path or an @abstract name")]
    BadAddress(String),
    /// The socket could not be created or the datagram not sent.
    #[error("notifying systemd: {0}")]
    Io(#[from] std::io::Error),
    /// The state is empty, too long, or has an empty line.
    #[error("invalid notification state ({0} bytes)")]
    BadState(usize),
}

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when the daemon does not run under `Type=notify`.
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) if !v.is_empty() => Notifier::new(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for the socket named like `$NOTIFY_SOCKET`: `/run/systemd/notify` or `@name`.
    pub fn new(name: &OsStr) -> Result<Notifier, NotifyError> {
        let bytes = name.as_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(name)?,
            Some(b'@') if bytes.len() > 1 => abstract_addr(&bytes[1..])?,
            _ => return Err(NotifyError::BadAddress(name.to_string_lossy().into_owned())),
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends `state`: newline-separated `KEY=value` assignments, e.g. `READY=1`.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        if state.is_empty() || state.len() > MAX_STATE || state.lines().any(|l| !l.contains('=')) {
            return Err(NotifyError::BadState(state.len()));
        }
        self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> Result<SocketAddr, NotifyError> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    Ok(SocketAddr::from_abstract_name(name)?)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(name: &[u8]) -> Result<SocketAddr, NotifyError> {
    Err(NotifyError::BadAddress(format!(
        "@{}",
        String::from_utf8_lossy(name)
    )))
}

/// The watchdog period systemd asked for: `$WATCHDOG_USEC`, when `$WATCHDOG_PID` is unset or names this
/// process (systemd sets it so a child of the daemon does not answer for it).
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The daemon's link to systemd: readiness now, the watchdog while it runs, `STOPPING=1` at the end.
#[derive(Debug, Default)]
pub struct Systemd {
    notifier: Option<std::sync::Arc<Notifier>>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl Systemd {
    /// Tells systemd the daemon is ready and, under `WatchdogSec=`, starts pinging its watchdog every half
    /// period. Must be called inside the tokio runtime. Outside systemd, does nothing.
    pub fn ready() -> Systemd {
        let notifier = match Notifier::from_env() {
            Ok(Some(n)) => std::sync::Arc::new(n),
            Ok(None) => return Systemd::default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot notify systemd");
                return Systemd::default();
            }
        };
        send(&notifier, "READY=1\nSTATUS=running");
        let period = watchdog_period(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        );
        let watchdog = period.map(|p| {
            let every = (p / 2).max(MIN_WATCHDOG);
            tracing::info!(period = ?p, "systemd watchdog enabled");
            let n = notifier.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    send(&n, "WATCHDOG=1");
                }
            })
        });
        Systemd {
            notifier: Some(notifier),
            watchdog,
        }
    }

    /// Tells systemd the daemon is stopping, and stops the watchdog pings.
    pub fn stopping(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if let Some(n) = &self.notifier {
            send(n, "STOPPING=1\nSTATUS=stopping");
        }
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}

fn send(n: &Notifier, state: &str) {
    if let Err(e) = n.notify(state) {
        // Once per state change (ready, stopping) or per failed ping: never per message.
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifies_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.as_os_str()).unwrap();
        n.notify("READY=1").unwrap();
        assert_eq!(recv(&server), "READY=1");
        n.notify("STOPPING=1\nSTATUS=bye").unwrap();
        assert_eq!(recv(&server), "STOPPING=1\nSTATUS=bye");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notifies_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fieldbridge-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        n.notify("WATCHDOG=1").unwrap();
        assert_eq!(recv(&server), "WATCHDOG=1");
    }

    #[test]
    fn refuses_bad_addresses_and_states() {
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(
                matches!(
                    Notifier::new(OsStr::new(bad)),
                    Err(NotifyError::BadAddress(_))
                ),
                "{bad:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.as_os_str()).unwrap();
        assert!(matches!(n.notify(""), Err(NotifyError::BadState(0))));
        assert!(matches!(n.notify("READY"), Err(NotifyError::BadState(5))));
        let long = format!("STATUS={}", "x".repeat(MAX_STATE));
        assert!(matches!(n.notify(&long), Err(NotifyError::BadState(_))));
        // No one listening: an error, not a panic.
        drop(_server);
        assert!(matches!(n.notify("READY=1"), Err(NotifyError::Io(_))));
    }

    #[test]
    fn watchdog_period_from_the_environment() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_period(Some("3000000"), None),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            watchdog_period(Some("3000000"), Some(&me)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(watchdog_period(Some("3000000"), Some("1")), None);
        assert_eq!(watchdog_period(Some("3000000"), Some("not a pid")), None);
        assert_eq!(watchdog_period(Some("0"), None), None);
        assert_eq!(watchdog_period(Some("soon"), None), None);
        assert_eq!(watchdog_period(None, Some(&me)), None);
    }
}
