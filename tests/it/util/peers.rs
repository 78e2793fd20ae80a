//! Real peer processes (mosquitto, mosquitto_pub/sub, python with paho-mqtt). A missing peer fails the test
//! with a message naming the package to install; it never skips.
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::WAIT;

/// The path of a required executable, or a failure that says how to get it.
pub fn require(cmd: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(cmd);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("test peer `{cmd}` is missing: install it with `{package}` (scripts/test does this)");
}

/// A python3 that has `module`, or a failure naming the pip package.
pub fn require_python_module(module: &str, pip: &str) -> PathBuf {
    let py = require("python3", "apt-get install python3");
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "python module `{module}` is missing: install it with `pip install {pip}` (scripts/test does this)");
    py
}

/// A child process killed when dropped, with its stdout as lines.
pub struct Peer {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    pub fn spawn(cmd: &mut Command) -> Peer {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn peer process");
        let stdout = child.stdout.take().expect("piped stdout");
        Peer {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next stdout line; fails after [`WAIT`] or at EOF.
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => panic!("peer exited before printing the expected line"),
            Ok(Err(e)) => panic!("reading peer output: {e}"),
            Err(_) => panic!("peer printed nothing within {WAIT:?}"),
        }
    }

    /// Reads lines until one satisfies `pred`; returns it.
    pub async fn line_where(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self.line().await;
            if pred(&l) {
                return l;
            }
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait(&mut self) -> i32 {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("peer did not exit in time")
            .expect("wait for peer");
        status.code().unwrap_or(-1)
    }

    /// Collects the remaining stdout lines until the process exits.
    pub async fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Ok(Some(l))) = tokio::time::timeout(WAIT, self.lines.next_line()).await {
            out.push(l);
        }
        out
    }
}

/// Runs a command to completion (bounded by [`WAIT`]) and returns (exit code, stdout, stderr).
pub async fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = tokio::time::timeout(WAIT, cmd.stdin(Stdio::null()).kill_on_drop(true).output())
        .await
        .expect("command did not finish in time")
        .expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn mosquitto_pub() -> Command {
    Command::new(require(
        "mosquitto_pub",
        "apt-get install mosquitto-clients",
    ))
}

pub fn mosquitto_sub() -> Command {
    Command::new(require(
        "mosquitto_sub",
        "apt-get install mosquitto-clients",
    ))
}

/// The directory of the Python peer scripts.
pub fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers")
}
