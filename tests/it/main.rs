//! fieldbridge integration tests: one binary, talking to real peers over loopback.
mod util;

mod api;
mod api_tls;
mod bridge;
mod broker_auth;
mod broker_flows;
mod broker_hardening;
mod broker_peers;
mod broker_state;
mod broker_transports;
#[cfg(feature = "coap")]
mod coap;
mod daemon;
mod dashboard;
mod ingest;
mod pipeline;
mod query;
#[cfg(feature = "serial")]
mod serial_cli;
mod snf;
mod systemd_notify;
