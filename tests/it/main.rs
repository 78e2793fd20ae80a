//! fieldbridge integration tests: one binary, talking to real peers over loopback.
mod util;

mod api;
mod bridge;
mod broker_flows;
mod broker_peers;
mod broker_transports;
#[cfg(feature = "coap")]
mod coap;
mod daemon;
mod pipeline;
