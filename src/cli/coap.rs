//! `fieldbridge coap discover|get|put`: commission a CoAP device with the adapter's own client (retransmission,
//! block-wise transfer), decoder and link-format parser: what `get` prints is what the daemon reads for the
//! same resource with `format: auto`.
use std::io::Write;
use std::time::Duration;

use fieldbridge_coap::content::{extract_all, Extract};
use fieldbridge_coap::probe::{self, ProbeError};
use fieldbridge_coap::{Format, Transmission};

/// Transmission settings shared by the subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct CoapTransmission {
    /// ACK_TIMEOUT (first retransmission timeout), e.g. `2s`, `500ms`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// MAX_RETRANSMIT (retransmissions before giving up).
    #[arg(long, default_value_t = 4)]
    pub max_retransmit: u32,
    /// Largest representation accepted (bytes).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    fieldbridge_sdk::config::parse_duration(s)
}

impl CoapTransmission {
    fn get(&self) -> Transmission {
        Transmission {
            ack_timeout: self.ack_timeout,
            max_retransmit: self.max_retransmit.min(10),
            max_body: self.max_body,
            ..Transmission::default()
        }
    }
}

/// `fieldbridge coap …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CoapCmd {
    /// List a server's resources (`/.well-known/core`, RFC 6690 link format).
    Discover {
        /// The server, `coap://host[:port]`.
        uri: String,
        #[command(flatten)]
        tx: CoapTransmission,
    },
    /// GET a resource and show its value as the daemon decodes it.
    Get {
        /// `coap://host[:port]/path[?query]`.
        uri: String,
        /// JSON pointer, for JSON and CBOR representations.
        #[arg(long)]
        pointer: Option<String>,
        #[command(flatten)]
        tx: CoapTransmission,
    },
    /// PUT (or POST) a value to a resource, encoded as the daemon writes it.
    Put {
        /// `coap://host[:port]/path[?query]`.
        uri: String,
        /// The value, e.g. `21.5`, `true`, `on`.
        #[arg(allow_negative_numbers = true)]
        payload: String,
        /// POST instead of PUT.
        #[arg(long)]
        post: bool,
        /// text, json, cbor or raw.
        #[arg(long, default_value = "text")]
        format: Format,
        #[command(flatten)]
        tx: CoapTransmission,
    },
}

/// Exit codes: 0 ok, 64 bad arguments, 69 server unreachable, 1 the server refused (4.xx/5.xx) or sent
/// something that does not decode.
fn exit_code(e: &ProbeError) -> u8 {
    match e {
        ProbeError::Uri(_) | ProbeError::Invalid(_) => 64,
        ProbeError::Transport(_) => 69,
        ProbeError::Refused(_) | ProbeError::LinkFormat(_) => 1,
    }
}

/// Runs a `coap` subcommand, printing to `out`/`err`; returns the exit code.
pub async fn run(cmd: &CoapCmd, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let result = async {
        match cmd {
            CoapCmd::Discover { uri, tx } => {
                for l in probe::discover(uri, tx.get()).await? {
                    let attrs: Vec<String> = l
                        .attrs
                        .iter()
                        .map(|(k, v)| {
                            if v.is_empty() {
                                k.clone()
                            } else {
                                format!("{k}={v}")
                            }
                        })
                        .collect();
                    let _ = writeln!(out, "{}\t{}", l.target, attrs.join(" "));
                }
                Ok(())
            }
            CoapCmd::Get { uri, pointer, tx } => {
                let resp = probe::get(uri, tx.get()).await?;
                let spec = Extract {
                    format: Format::Auto,
                    pointer: pointer.clone().unwrap_or_default(),
                    senml_name: String::new(),
                };
                let decoded = extract_all(&resp.payload, resp.content_format, &[&spec]).remove(0);
                let cf = resp
                    .content_format
                    .map_or_else(|| "none".to_owned(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "{} (content format {cf}, {} bytes)",
                    resp.describe(),
                    resp.payload.len()
                );
                match decoded {
                    Ok(Some(d)) => {
                        let _ = writeln!(out, "{}", d.value);
                    }
                    // SenML and anything else that is not one value: show the text.
                    _ => {
                        let _ = writeln!(out, "{}", String::from_utf8_lossy(&resp.payload));
                    }
                }
                Ok(())
            }
            CoapCmd::Put {
                uri,
                payload,
                post,
                format,
                tx,
            } => {
                let method = if *post {
                    coap_lite_method::POST
                } else {
                    coap_lite_method::PUT
                };
                let resp = probe::put(uri, payload, method, *format, tx.get()).await?;
                let _ = writeln!(out, "{}", resp.describe());
                Ok(())
            }
        }
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "fieldbridge coap: {e}");
            exit_code(&e)
        }
    }
}

/// The request methods, re-exported by the adapter crate so the CLI needs no CoAP dependency of its own.
mod coap_lite_method {
    pub use fieldbridge_coap::probe::{POST, PUT};
}

/// Runs a `coap` subcommand on its own runtime (called from `main`).
pub fn main(cmd: &CoapCmd) -> u8 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cmd, &mut std::io::stdout(), &mut std::io::stderr())),
        Err(e) => {
            eprintln!("fieldbridge: cannot start the runtime: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// libcoap's server on a free port, killed on drop.
    struct Server(std::process::Child, u16);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn server() -> Server {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("coap-server-notls")
            .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coap-server-notls (install libcoap3-bin)");
        Server(child, port)
    }

    fn tx() -> CoapTransmission {
        CoapTransmission {
            ack_timeout: Duration::from_millis(200),
            max_retransmit: 4,
            max_body: 1 << 20,
        }
    }

    async fn cli(cmd: CoapCmd) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(&cmd, &mut out, &mut err).await;
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[tokio::test]
    async fn discover_put_get_against_libcoap() {
        let s = server();
        let base = format!("coap://127.0.0.1:{}", s.1);
        // Retransmission covers the server's start-up (max_retransmit 4 at 200 ms: several seconds).
        let (code, out, err) = cli(CoapCmd::Discover {
            uri: base.clone(),
            tx: tx(),
        })
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("/time\t") && l.contains("obs") && l.contains("rt=ticks")),
            "{out}"
        );
        let (code, out, err) = cli(CoapCmd::Put {
            uri: format!("{base}/x"),
            payload: "21.5".into(),
            post: false,
            format: Format::Text,
            tx: tx(),
        })
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("2.01"), "{out}");
        let (code, out, err) = cli(CoapCmd::Get {
            uri: format!("{base}/x"),
            pointer: None,
            tx: tx(),
        })
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("2.05 Content"), "{out}");
        assert!(out.lines().nth(1) == Some("21.5"), "{out}");
        let (code, _, err) = cli(CoapCmd::Get {
            uri: format!("{base}/missing"),
            pointer: None,
            tx: tx(),
        })
        .await;
        assert_eq!(code, 1);
        assert!(err.contains("4.04"), "{err}");
        let (code, _, err) = cli(CoapCmd::Get {
            uri: "http://x".into(),
            pointer: None,
            tx: tx(),
        })
        .await;
        assert_eq!(code, 64, "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_exits_69() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let (code, _, err) = cli(CoapCmd::Get {
            uri: format!("coap://127.0.0.1:{port}/x"),
            pointer: None,
            tx: CoapTransmission {
                ack_timeout: Duration::from_millis(50),
                max_retransmit: 1,
                max_body: 1024,
            },
        })
        .await;
        assert_eq!(code, 69, "{err}");
        assert!(err.contains("no answer after 2 transmissions"), "{err}");
    }
}
