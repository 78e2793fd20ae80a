//! The `fieldbridge` binary as a test peer: where it is, a port for it, and a running daemon with its log.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::peers::run;
use super::WAIT;

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fieldbridge"))
}

/// A free loopback port for a daemon to bind (below the ephemeral range: see `util::free_low_port`).
pub fn free_port() -> u16 {
    crate::util::free_low_port()
}

/// A running daemon, killed when dropped. Its log (stderr, level `warn` and up) can be waited on. A task
/// reads the log as it comes (a daemon whose stderr pipe nobody reads would block once the pipe is full).
pub struct Daemon {
    pub child: Child,
    pub mqtt: SocketAddr,
    log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Daemon {
    pub async fn start(config: &Path, mqtt_port: u16) -> Daemon {
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(config)
            .env("FIELDBRIDGE_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn fieldbridge");
        let mut child = child;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stderr.take().unwrap(),
        ));
        let (tx, log) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Ends with the daemon (end of file) or the test's runtime.
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
        let mqtt: SocketAddr = format!("127.0.0.1:{mqtt_port}").parse().unwrap();
        super::eventually(&format!("fieldbridge to listen on {mqtt}"), || async {
            tokio::net::TcpStream::connect(mqtt).await.ok().map(drop)
        })
        .await;
        Daemon { child, mqtt, log }
    }

    /// Waits for a log line containing `needle`; returns it.
    pub async fn log_line(&mut self, needle: &str) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.log.recv()).await {
                Ok(Some(l)) if l.contains(needle) => return l,
                Ok(Some(_)) => {}
                other => panic!("no log line with `{needle}`: {other:?}"),
            }
        }
    }

    /// The log lines written so far and not yet waited on (for a failure message).
    pub fn log_so_far(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.log.try_recv() {
            out.push(l);
        }
        out
    }

    pub fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }

    pub async fn signal(&self, sig: &str) {
        let (code, _, err) = run(Command::new("kill").args([sig, &self.pid()])).await;
        assert_eq!(code, 0, "kill {sig}: {err}");
    }

    pub async fn wait(&mut self) -> Option<i32> {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("daemon exits")
            .expect("wait")
            .code()
    }
}
