//! fieldbridge: an edge gateway daemon.
//!
//! Adapters produce readings; the core (the pipeline) decides topics; the embedded broker moves messages; the
//! store remembers them; bridges forward them upstream.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bridge;
pub mod broker;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod mqtt;
pub mod net;
pub mod notify;
pub mod pipeline;
pub mod recorder;
pub mod store;

#[cfg(test)]
mod module_graph;
