//! The `fieldbridge` command line.
//!
//! Exit codes: 0 success; 64 the configuration is invalid (every problem printed as `file:line:col: path:
//! message`), or bad `modbus` arguments; 1 a runtime failure (a port in use, an unreadable database, a daemon
//! that cannot be reached); 2 bad command-line arguments; 69 (`modbus`) the device cannot be reached.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fieldbridge::app::{self, App, Registry};

/// Exit code for an invalid configuration (64, sysexits' EX_USAGE, as systemd and scripts expect from `check`).
use fieldbridge::cli::EXIT_CONFIG;

#[derive(Parser)]
#[command(
    name = "fieldbridge",
    version,
    about = "Edge gateway: field devices -> MQTT, with a durable store-and-forward log"
)]
// `pub(crate)`: tools/gen-docs compiles this file as a module to write the man pages and completions.
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Run {
        /// The main configuration file.
        #[arg(short, long, default_value = "/etc/fieldbridge/fieldbridge.yaml")]
        config: PathBuf,
    },
    /// Show a running daemon's bridges (state, lag, drain rate, time to drain), devices and store.
    Status(fieldbridge::cli::StatusArgs),
    /// Print the buffered history: rows, time buckets (--every) or latest values (table, CSV or JSON).
    Query(fieldbridge::cli::QueryArgs),
    /// Export a time range of the log to CSV or NDJSON (streamed).
    Export(fieldbridge::cli::ExportArgs),
    /// Make a running daemon re-read its configuration; exit 64 with every problem if it is invalid.
    Reload(fieldbridge::cli::ReloadArgs),
    /// Probe a Modbus device (commissioning), with the daemon's own decoder.
    #[cfg(feature = "modbus")]
    #[command(subcommand)]
    Modbus(fieldbridge::cli::modbus::ModbusCmd),
    /// Check or salvage a log file offline (`store check --db PATH`, `store salvage --db PATH`).
    #[command(subcommand)]
    Store(fieldbridge::cli::StoreCmd),
    /// Watch a serial port (commissioning): frames and points as the daemon would parse them.
    #[cfg(feature = "serial")]
    #[command(subcommand)]
    Serial(fieldbridge::cli::serial::SerialCmd),
    /// Commission a CoAP device (discover, get, put), with the adapter's own client and decoder.
    #[cfg(feature = "coap")]
    #[command(subcommand)]
    Coap(fieldbridge::cli::coap::CoapCmd),
    /// Validate a configuration (and every device map it names) without starting anything.
    Check {
        /// The main configuration file.
        #[arg(short, long, default_value = "/etc/fieldbridge/fieldbridge.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config } => check(&config),
        Cmd::Status(args) => ExitCode::from(fieldbridge::cli::status_main(&args)),
        Cmd::Query(args) => ExitCode::from(fieldbridge::cli::query_main(&args)),
        Cmd::Export(args) => ExitCode::from(fieldbridge::cli::export_main(&args)),
        Cmd::Reload(args) => ExitCode::from(fieldbridge::cli::reload_main(&args)),
        Cmd::Store(cmd) => ExitCode::from(fieldbridge::cli::store_main(
            &cmd,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        #[cfg(feature = "modbus")]
        Cmd::Modbus(cmd) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fieldbridge: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = rt.block_on(fieldbridge::cli::modbus::run(
                &cmd,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            ));
            ExitCode::from(code)
        }
        #[cfg(feature = "serial")]
        Cmd::Serial(cmd) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fieldbridge: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = rt.block_on(async {
                let cancel = tokio_util::sync::CancellationToken::new();
                let on_ctrl_c = cancel.clone();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        on_ctrl_c.cancel();
                    }
                });
                fieldbridge::cli::serial::run(
                    &cmd,
                    &mut std::io::stdout(),
                    &mut std::io::stderr(),
                    cancel,
                )
                .await
            });
            ExitCode::from(code)
        }
        #[cfg(feature = "coap")]
        Cmd::Coap(cmd) => ExitCode::from(fieldbridge::cli::coap::main(&cmd)),
        Cmd::Run { config } => {
            let registry = Registry::default();
            let cfg = match app::load_config(&config, &registry) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!(
                        "fieldbridge: {} configuration problem(s); not starting",
                        errors.len()
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_tracing(&cfg.logging.level);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fieldbridge: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(cfg, registry)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("fieldbridge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    let registry = Registry::default();
    match app::load_config(config, &registry) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} device(s), {} bridge(s), {} listener(s))",
                config.display(),
                cfg.devices.len(),
                cfg.bridges.len(),
                cfg.broker.listeners.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            eprintln!("{}: {} problem(s)", config.display(), errors.len());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIELDBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Logs go to stderr (journald keeps them), with colours only on a terminal.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(cfg: fieldbridge::config::Config, registry: Registry) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let app = App::start(cfg, registry).await.context("starting")?;
    // The handlers before READY: a stop that follows READY at once must find them (the default action would
    // end the process without a clean stop and the final save of the broker's state).
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Listeners bound, API up: tell systemd (Type=notify), and ping its watchdog if WatchdogSec= is set.
    let mut systemd = fieldbridge::notify::Systemd::ready();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = app.reload().await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    systemd.stopping();
    app.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
