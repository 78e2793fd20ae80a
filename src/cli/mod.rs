//! The client subcommands (`fieldbridge status`, `query`, `reload`): they talk to a running daemon through its
//! HTTP API, found at `api.bind` of the configuration file (or `--api ADDR`).
//!
//! They live in the library, written against [`std::io::Write`], so the integration tests run them against a
//! real daemon and read what an operator would see. `main.rs` only declares the subcommands (the `*Args`
//! structs are clap `Args`) and calls the `*_main` functions.
//!
//! Exit codes: 0 success; 1 the daemon cannot be reached or failed; 2 a bad argument (clap's code for usage
//! errors, also used when the daemon refuses a parameter); 64 `reload` refused because the configuration is
//! invalid (the same code as `check`).
mod client;
#[cfg(feature = "coap")]
pub mod coap;
mod export;
#[cfg(feature = "modbus")]
pub mod modbus;
mod query;
#[cfg(feature = "serial")]
pub mod serial;
mod status;
mod store;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldbridge_sdk::config::{parse_yaml_with, ParseOptions};
use fieldbridge_sdk::NodeKind;

pub use client::{encode_query_value, pinned_tls, ApiClient, ClientError};
pub use export::{export, export_main, ExportArgs, ExportFormat};
pub use query::{query, Format, OrderArg, QueryArgs};
pub use status::{status, StatusArgs};
pub use store::{store_main, StoreCmd};

use crate::api::ReloadDoc;

/// Success.
pub const EXIT_OK: u8 = 0;
/// The daemon cannot be reached, or a request failed.
pub const EXIT_FAILURE: u8 = 1;
/// A bad argument (as clap exits for usage errors).
pub const EXIT_USAGE: u8 = 2;
/// `reload` refused: the configuration file is invalid (as `fieldbridge check`).
pub const EXIT_CONFIG: u8 = crate::config::EXIT_CONFIG as u8;

/// The API port when an address is given without one (as `api.bind` defaults).
const DEFAULT_API_PORT: u16 = 8080;

/// Where the daemon is: options shared by the client subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The daemon's HTTP API: `IP:port`, `host:port`, or an IP (port 8080). Default: `api.bind` of the
    /// configuration file.
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// The configuration file whose `api.bind` tells where the daemon listens.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/fieldbridge/fieldbridge.yaml"
    )]
    pub config: PathBuf,
    /// The API token (default: `api.token`, or the `api-token` file in the state directory, as the
    /// configuration file says). Needed for `reload` and writes, and for reads when `api.auth_reads` is set.
    /// `FIELDBRIDGE_TOKEN` in the environment does the same.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

impl Target {
    /// The token to send: `--token`/`FIELDBRIDGE_TOKEN`, else what the configuration file names (none if
    /// it cannot be read: reads work without one by default).
    pub fn token(&self) -> Option<String> {
        if let Some(t) = self
            .token
            .clone()
            .or_else(|| std::env::var("FIELDBRIDGE_TOKEN").ok())
        {
            return Some(t.trim().to_string());
        }
        match crate::config::load(&self.config) {
            Ok(cfg) => {
                if let Some(t) = cfg.api.token {
                    return Some(t);
                }
                crate::api::auth::read_token_file(&cfg.api.token_file).ok()
            }
            // A broken configuration (the case `reload` is run to explain): the main file's keys alone.
            Err(_) => token_leniently(&self.config),
        }
    }
}

/// `api.token`, or the token file named by `api.token_file` or next to `storage.path`, from the main file
/// alone (without validating the rest).
fn token_leniently(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let env = |name: &str| std::env::var(name).ok();
    let opts = ParseOptions { env: Some(&env) };
    let parsed = parse_yaml_with(&path.display().to_string(), &text, &opts).ok()?;
    let string = |section: &str, key: &str| match parsed.root.get(section).and_then(|s| s.get(key))
    {
        Some(n) => match &n.kind {
            NodeKind::String(s) => Some(s.clone()),
            _ => None,
        },
        None => None,
    };
    if let Some(t) = string("api", "token") {
        return Some(t.trim().to_string());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let file = match (string("api", "token_file"), string("storage", "path")) {
        (Some(f), _) => base.join(f),
        (None, Some(db)) => base
            .join(db)
            .parent()
            .unwrap_or(Path::new("."))
            .join("api-token"),
        (None, None) => PathBuf::from("/var/lib/fieldbridge/api-token"),
    };
    crate::api::auth::read_token_file(&file).ok()
}

/// Why `path` cannot be a log file (`--db`): it does not exist, or it is a directory. `None` when it is a file
/// (or something else the store will judge).
pub(crate) fn not_a_log_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Some(format!(
            "{} is a directory, not a log file: pass the database file itself (`storage.path` of the \
             configuration, e.g. {})",
            path.display(),
            path.join("fieldbridge.db").display()
        )),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Some(if dir.is_dir() {
                format!(
                    "no log file {} (no such file in {}; the log is `storage.path` of the configuration)",
                    path.display(),
                    dir.display()
                )
            } else {
                format!(
                    "no log file {}: its directory {} does not exist",
                    path.display(),
                    dir.display()
                )
            })
        }
        Err(e) => Some(format!("cannot read the log file {}: {e}", path.display())),
    }
}

/// The problems of a main configuration file that is not even YAML (a syntax error: the daemon would refuse
/// it, and its `api.bind` cannot be read), or `None` when it parses (or cannot be read: said elsewhere).
fn unparsable(path: &Path) -> Option<crate::config::ConfigErrors> {
    let text = std::fs::read_to_string(path).ok()?;
    let env = |name: &str| std::env::var(name).ok();
    let opts = ParseOptions { env: Some(&env) };
    parse_yaml_with(&path.display().to_string(), &text, &opts).err()?;
    crate::config::load(path).err()
}

/// Make a running daemon re-read its configuration; exit 64 with every problem if it is invalid.
#[derive(Debug, Clone, clap::Args)]
pub struct ReloadArgs {
    /// Where the daemon is.
    #[command(flatten)]
    pub target: Target,
}

/// Where the subcommands write: stdout, stderr, and whether stdout is a terminal (redrawing and colours are
/// used only then).
pub struct Console<O: Write, E: Write> {
    /// Results.
    pub out: O,
    /// Messages (errors, notes).
    pub err: E,
    /// Whether `out` is a terminal.
    pub tty: bool,
}

impl Console<std::io::Stdout, std::io::Stderr> {
    /// The process's stdout and stderr.
    pub fn stdio() -> Self {
        let out = std::io::stdout();
        let tty = out.is_terminal();
        Console {
            out,
            err: std::io::stderr(),
            tty,
        }
    }
}

impl<O: Write, E: Write> Console<O, E> {
    /// Writes `text` to `out`. A closed pipe (`fieldbridge query | head`) is not an error worth a message.
    pub(crate) fn print(&mut self, text: &str) -> bool {
        self.out
            .write_all(text.as_bytes())
            .and_then(|_| self.out.flush())
            .is_ok()
    }

    /// Writes one line to `err` (best effort: nowhere else to report a failure to write it).
    pub(crate) fn eprintln(&mut self, text: &str) {
        let _ = writeln!(self.err, "{text}");
    }
}

/// Finds the daemon's API: `--api`, else `api.bind` of the configuration file.
///
/// The file is first loaded and validated as the daemon does; if that fails (a broken device map — the very
/// case where an operator runs `reload` to see the errors, or a `${VAR}` unset in this shell), only the main
/// file's `api` section is read, so the daemon can still be found.
pub fn resolve_api(target: &Target) -> Result<SocketAddr, String> {
    if let Some(a) = &target.api {
        return parse_addr(a).map(loopback_for_unspecified);
    }
    let path = &target.config;
    let bind = match crate::config::load(path) {
        Ok(cfg) => cfg.api.bind,
        Err(_) => api_bind_leniently(path)?,
    };
    match bind {
        Some(b) => Ok(loopback_for_unspecified(b)),
        None => Err(format!(
            "the HTTP API is disabled in {} (`api.enabled: false`): enable it and restart fieldbridge, or \
             pass --api ADDR",
            path.display()
        )),
    }
}

/// `api.bind` from the main file alone, without validating the rest.
fn api_bind_leniently(path: &Path) -> Result<Option<SocketAddr>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {} to find the API address (`api.bind`): {e}; pass --config FILE or --api ADDR",
            path.display()
        )
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let opts = ParseOptions { env: Some(&env) };
    let parsed = parse_yaml_with(&path.display().to_string(), &text, &opts)
        .map_err(|e| format!("cannot find the API address: {e}; pass --api ADDR"))?;
    let Some(api) = parsed.root.get("api") else {
        return Ok(Some(default_api()));
    };
    if matches!(
        api.get("enabled").map(|n| &n.kind),
        Some(NodeKind::Bool(false))
    ) {
        return Ok(None);
    }
    let Some(bind) = api.get("bind") else {
        return Ok(Some(default_api()));
    };
    let text = match &bind.kind {
        NodeKind::String(s) => s.clone(),
        NodeKind::Null => return Ok(Some(default_api())),
        _ => {
            return Err(format!(
                "{}: `api.bind` is {}, not an address; pass --api ADDR",
                bind.mark,
                bind.type_name()
            ))
        }
    };
    parse_addr(&text)
        .map(Some)
        .map_err(|e| format!("{}: api.bind: {e}", bind.mark))
}

fn default_api() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_API_PORT)
}

/// `IP:port`, `[v6]:port`, an IP alone, `localhost[:port]` or `host:port` (resolved).
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = t
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_API_PORT));
    }
    if t == "localhost" {
        return Ok(default_api());
    }
    let with_port = if t.contains(':') {
        t.to_string()
    } else {
        format!("{t}:{DEFAULT_API_PORT}")
    };
    match with_port.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{t}` resolves to no address")),
        Err(e) => Err(format!(
            "invalid API address `{t}` ({e}): expected `IP:port` like `127.0.0.1:8080`, or `host:port`"
        )),
    }
}

/// A daemon bound to every interface (`0.0.0.0`, `::`) is reached on loopback.
fn loopback_for_unspecified(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), a.port())
        }
        _ => a,
    }
}

/// The client for `target`, or the exit code after explaining why there is none.
pub(crate) fn client_for<O: Write, E: Write>(
    target: &Target,
    timeout: Duration,
    con: &mut Console<O, E>,
) -> Result<ApiClient, u8> {
    match resolve_api(target) {
        Ok(addr) => {
            // A TLS API (`api.tls`): the CLI pins the certificate the daemon serves.
            let tls = match crate::config::load(&target.config) {
                Ok(cfg) => match &cfg.api.tls {
                    Some(t) => match client::pinned_tls(&t.cert) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            con.eprintln(&format!("fieldbridge: api.tls.cert: {e}"));
                            return Err(EXIT_FAILURE);
                        }
                    },
                    None => None,
                },
                Err(_) => None,
            };
            Ok(ApiClient::new(addr, timeout)
                .with_token(target.token())
                .with_tls(tls))
        }
        Err(msg) => {
            con.eprintln(&format!("fieldbridge: {msg}"));
            Err(if target.api.is_some() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}

/// Reports a failed request and returns the exit code for it.
pub(crate) fn report<O: Write, E: Write>(e: &ClientError, con: &mut Console<O, E>) -> u8 {
    con.eprintln(&format!("fieldbridge: {e}"));
    if let ClientError::Api { status, doc } = e {
        for line in &doc.errors {
            con.eprintln(line);
        }
        // A refused parameter, or a device or point the log does not know (v1 answers 404 with the closest).
        if *status == 400 || *status == 404 {
            return EXIT_USAGE;
        }
    }
    EXIT_FAILURE
}

/// `fieldbridge reload`: asks the daemon to re-read its configuration and prints what changed, or every
/// problem (`file:line:col: path: message`, on stdout like `check`) and exits 64 when the file is invalid —
/// the daemon then keeps its running configuration.
pub async fn reload<O: Write, E: Write>(args: &ReloadArgs, con: &mut Console<O, E>) -> u8 {
    // A file that is not YAML: the daemon (which re-reads this file) would refuse it, and where it listens
    // cannot be read from it. Said like `check` says it, without asking the daemon.
    if args.target.api.is_none() {
        if let Some(errors) = unparsable(&args.target.config) {
            con.print(&format!("{errors}\n"));
            con.eprintln(&format!(
                "fieldbridge: reload refused: {} has {} problem(s); the daemon was not asked and keeps its \
                 running configuration",
                args.target.config.display(),
                errors.len()
            ));
            return EXIT_CONFIG;
        }
    }
    // Stopping changed devices waits for their adapters; a minute covers slow device timeouts.
    let client = match client_for(&args.target, Duration::from_secs(60), con) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.post_json::<ReloadDoc>("/api/reload").await {
        Ok(doc) => {
            let list = |v: &[String]| {
                if v.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", v.join(", "))
                }
            };
            let mut text = format!(
                "configuration reloaded: {} added{}, {} removed{}, {} restarted{}, {} unchanged\n",
                doc.added.len(),
                list(&doc.added),
                doc.removed.len(),
                list(&doc.removed),
                doc.restarted.len(),
                list(&doc.restarted),
                doc.unchanged.len()
            );
            for n in &doc.notes {
                text.push_str(&format!("note: {n}\n"));
            }
            con.print(&text);
            EXIT_OK
        }
        Err(ClientError::Api { status: 422, doc }) => {
            let mut text = doc.errors.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            con.print(&text);
            con.eprintln(&format!("fieldbridge: reload refused: {}", doc.error));
            EXIT_CONFIG
        }
        Err(e) => report(&e, con),
    }
}

pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("fieldbridge: cannot start the runtime: {e}");
            None
        }
    }
}

/// `fieldbridge status` on the process's stdout/stderr; returns the exit code.
pub fn status_main(args: &StatusArgs) -> u8 {
    let Some(rt) = runtime() else {
        return EXIT_FAILURE;
    };
    rt.block_on(status(args, &mut Console::stdio()))
}

/// `fieldbridge query` on the process's stdout/stderr; returns the exit code.
pub fn query_main(args: &QueryArgs) -> u8 {
    let Some(rt) = runtime() else {
        return EXIT_FAILURE;
    };
    rt.block_on(query(args, &mut Console::stdio()))
}

/// `fieldbridge reload` on the process's stdout/stderr; returns the exit code.
pub fn reload_main(args: &ReloadArgs) -> u8 {
    let Some(rt) = runtime() else {
        return EXIT_FAILURE;
    };
    rt.block_on(reload(args, &mut Console::stdio()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(api: Option<&str>, config: &Path) -> Target {
        Target {
            api: api.map(str::to_string),
            config: config.to_path_buf(),
            token: None,
        }
    }

    #[test]
    fn addresses() {
        let none = Path::new("/nonexistent/fieldbridge.yaml");
        let r = |a| resolve_api(&target(Some(a), none));
        assert_eq!(r("127.0.0.1:9000"), Ok("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(r("127.0.0.1"), Ok("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(r("[::1]"), Ok("[::1]:8080".parse().unwrap()));
        assert_eq!(r("0.0.0.0:81"), Ok("127.0.0.1:81".parse().unwrap()));
        assert_eq!(r("localhost"), Ok("127.0.0.1:8080".parse().unwrap()));
        assert!(r("not an address")
            .unwrap_err()
            .contains("invalid API address"));
        let e = resolve_api(&target(None, none)).unwrap_err();
        assert!(
            e.contains("cannot read /nonexistent/fieldbridge.yaml"),
            "{e}"
        );
        assert!(e.contains("--api ADDR"), "{e}");
    }

    #[test]
    fn address_from_an_invalid_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fb.yaml");
        // Invalid as a whole (unknown key, missing device map), but `api.bind` is readable.
        std::fs::write(
            &p,
            "gateway: {id: t}\nbogus: 1\ndevice_maps: [missing.yaml]\napi:\n  bind: 127.0.0.1:9123\n",
        )
        .unwrap();
        assert_eq!(
            resolve_api(&target(None, &p)),
            Ok("127.0.0.1:9123".parse().unwrap())
        );
        std::fs::write(&p, "gateway: {id: t}\nbogus: 1\napi: {enabled: false}\n").unwrap();
        assert!(resolve_api(&target(None, &p))
            .unwrap_err()
            .contains("disabled"));
        std::fs::write(&p, "gateway: {id: t}\nbogus: 1\n").unwrap();
        assert_eq!(
            resolve_api(&target(None, &p)),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        std::fs::write(&p, "gateway: [\n").unwrap();
        assert!(resolve_api(&target(None, &p))
            .unwrap_err()
            .contains("cannot find the API address"));
    }
}
