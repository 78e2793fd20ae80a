//! fieldbridge integration tests: one binary, talking to real peers over loopback.
mod util;

mod api;
mod bridge;
mod broker_flows;
mod broker_peers;
mod broker_transports;
mod daemon;
mod pipeline;
#[cfg(feature = "serial")]
mod serial_cli;
