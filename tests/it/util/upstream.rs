//! Debian's mosquitto as the upstream "cloud" broker: started on a free loopback port with a generated
//! config (plain, TLS with the test CA, a password file made with `mosquitto_passwd`), killed and restarted
//! on the same port, and `mosquitto_sub` subscribers that count what arrives.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::peers::{mosquitto_pub, mosquitto_sub, require, run, Peer};
use super::tls::TestPki;
use super::WAIT;

/// How the upstream is set up.
#[derive(Default, Clone)]
pub struct UpstreamOpts {
    /// TLS listener with the test CA's server certificate (files of this PKI).
    pub tls: Option<PathBuf>,
    /// Require a client certificate signed by the test CA.
    pub require_client_cert: bool,
    /// Users for a password file (anonymous access is then refused).
    pub users: Vec<(String, String)>,
    /// Extra config lines.
    pub extra: Vec<String>,
}

impl UpstreamOpts {
    pub fn tls(pki: &TestPki) -> UpstreamOpts {
        UpstreamOpts {
            tls: Some(pki.dir.path().to_path_buf()),
            ..Default::default()
        }
    }

    pub fn users(users: &[(&str, &str)]) -> UpstreamOpts {
        UpstreamOpts {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            ..Default::default()
        }
    }
}

/// A mosquitto process, killed when dropped.
pub struct Upstream {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub opts: UpstreamOpts,
    child: Option<Child>,
}

/// A free loopback port below the ephemeral range (see `util::free_low_port`); `start` still retries on
/// another port if mosquitto cannot bind.
pub fn free_port() -> u16 {
    super::free_low_port()
}

impl Upstream {
    pub async fn start(opts: UpstreamOpts) -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut up = Upstream {
            port: 0,
            dir,
            opts,
            child: None,
        };
        up.write_password_file();
        for _ in 0..5 {
            up.port = free_port();
            if up.spawn().await {
                return up;
            }
        }
        panic!("mosquitto did not start on a free port (5 tries)");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn write_password_file(&self) {
        if self.opts.users.is_empty() {
            return;
        }
        let file = self.dir.path().join("passwd");
        let _ = std::fs::remove_file(&file);
        let bin = require("mosquitto_passwd", "apt-get install mosquitto");
        for (i, (u, p)) in self.opts.users.iter().enumerate() {
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("-b");
            if i == 0 {
                cmd.arg("-c");
            }
            let out = cmd
                .arg(&file)
                .arg(u)
                .arg(p)
                .output()
                .expect("run mosquitto_passwd");
            assert!(
                out.status.success(),
                "mosquitto_passwd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Replaces the password file's users (takes effect at the next (re)start).
    pub fn set_users(&mut self, users: &[(&str, &str)]) {
        self.opts.users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        self.write_password_file();
    }

    fn config(&self) -> String {
        let d = self.dir.path();
        let mut c = format!(
            "listener {} 127.0.0.1\npersistence false\nuser root\nlog_dest stderr\nlog_type error\nlog_type warning\n\
             max_queued_messages 0\nmax_keepalive 65535\n",
            self.port
        );
        if self.opts.users.is_empty() {
            c.push_str("allow_anonymous true\n");
        } else {
            c.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                d.join("passwd").display()
            ));
        }
        if let Some(pki) = &self.opts.tls {
            c.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                pki.join("ca.pem").display(),
                pki.join("server.pem").display(),
                pki.join("server.key").display()
            ));
            if self.opts.require_client_cert {
                c.push_str("require_certificate true\n");
            }
        }
        // FB_MOSQUITTO_LOG=1 shows every packet mosquitto handles (debugging a failing test).
        if std::env::var_os("FB_MOSQUITTO_LOG").is_some() {
            c.push_str("log_type all\n");
        }
        for l in &self.opts.extra {
            c.push_str(l);
            c.push('\n');
        }
        c
    }

    /// Starts mosquitto on `self.port`; false if it exited (port taken).
    async fn spawn(&mut self) -> bool {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, self.config()).expect("write mosquitto.conf");
        let bin = require("mosquitto", "apt-get install mosquitto");
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                self.child = Some(child);
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on {} in time",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9` (no clean close of connections: a crashed cloud broker).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Starts it again on the same port (after [`Upstream::kill`]).
    pub async fn restart(&mut self) {
        self.kill().await;
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto did not restart on port {}", self.port);
    }

    /// Connection options for mosquitto_sub/pub against this broker.
    pub fn client_args(&self, user: Option<(&str, &str)>) -> Vec<String> {
        let mut a = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
        ];
        if let Some(pki) = &self.opts.tls {
            a.push("--cafile".into());
            a.push(pki.join("ca.pem").display().to_string());
            if self.opts.require_client_cert {
                a.push("--cert".into());
                a.push(pki.join("client.pem").display().to_string());
                a.push("--key".into());
                a.push(pki.join("client.key").display().to_string());
            }
        }
        let user = user.or_else(|| {
            self.opts
                .users
                .first()
                .map(|(u, p)| (u.as_str(), p.as_str()))
        });
        if let Some((u, p)) = user {
            a.extend(["-u".into(), u.into(), "-P".into(), p.into()]);
        }
        a
    }

    /// A `mosquitto_sub -v -q 1` on `filters`, returned once it is subscribed (checked with a probe message).
    pub async fn subscribe(&self, filters: &[&str]) -> Sub {
        let probe = format!("probe/{}", rand_suffix());
        let mut cmd = mosquitto_sub();
        cmd.args(self.client_args(None))
            .args(["-v", "-q", "1", "-t", &probe]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut peer = Peer::spawn(&mut cmd);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut p = mosquitto_pub();
            p.args(self.client_args(None))
                .args(["-t", &probe, "-m", "x"]);
            let _ = run(&mut p).await;
            if let Ok(Ok(Some(l))) =
                tokio::time::timeout(Duration::from_millis(300), peer.lines.next_line()).await
            {
                if l.starts_with(&probe) {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto_sub did not subscribe in time"
            );
        }
        Sub {
            peer,
            probe,
            got: Vec::new(),
            distinct: std::collections::HashSet::new(),
        }
    }

    /// Reads a retained message (or `None`) with `mosquitto_sub -C 1 -W 2`.
    pub async fn retained(&self, topic: &str) -> Option<String> {
        let mut cmd = mosquitto_sub();
        cmd.args(self.client_args(None)).args([
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "2",
            "--retained-only",
        ]);
        let (code, out, _) = run(&mut cmd).await;
        (code == 0).then(|| out.trim_end().to_string())
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id())
}

/// What a subscriber received: (topic, payload) in arrival order, probes excluded.
pub struct Sub {
    peer: Peer,
    probe: String,
    pub got: Vec<(String, String)>,
    /// The distinct payloads among `got`.
    pub distinct: std::collections::HashSet<String>,
}

impl Sub {
    fn push(&mut self, l: String) {
        if l.starts_with(&self.probe) {
            return;
        }
        let (t, p) = l.split_once(' ').unwrap_or((l.as_str(), ""));
        self.distinct.insert(p.to_string());
        self.got.push((t.to_string(), p.to_string()));
    }

    /// Reads until `pred(self)` holds; fails after `limit`.
    pub async fn until(&mut self, what: &str, limit: Duration, pred: impl Fn(&Sub) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !pred(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.peer.lines.next_line()).await {
                Ok(Ok(Some(l))) => self.push(l),
                Ok(Ok(None)) => panic!(
                    "mosquitto_sub exited while waiting for {what} (got {})",
                    self.got.len()
                ),
                Ok(Err(e)) => panic!("reading mosquitto_sub: {e}"),
                Err(_) => panic!(
                    "timed out waiting for {what} (got {} messages)",
                    self.got.len()
                ),
            }
        }
    }

    /// Reads whatever arrives within `d` (to check that nothing more comes).
    pub async fn drain_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Ok(Some(l))) =
            tokio::time::timeout_at(deadline, self.peer.lines.next_line()).await
        {
            self.push(l);
        }
    }
}
