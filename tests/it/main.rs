//! fieldbridge integration tests: one binary, talking to real peers over loopback.
mod util;

mod broker_flows;
mod broker_peers;
mod broker_transports;
mod daemon;
mod pipeline;
