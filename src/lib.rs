//! fieldbridge: an edge gateway daemon.
//!
//! Adapters produce readings; the core (the pipeline) decides topics; the embedded broker moves messages; the
//! store remembers them; bridges forward them upstream.
//!
//! Modules, bottom up (a unit test, `module_graph`, keeps the imports between them acyclic):
//! - [`mqtt`]: the project's MQTT library: the codec (v3.1.1 + v5), the one topic-name/filter grammar and
//!   matching rule, reason codes and their text; [`net`]: TLS loading and the WebSocket adapter;
//!   [`metrics`]: the counter-table type each component describes its counters with.
//! - The components, each owning its configuration section in a `config.rs`: [`broker`] (the embedded broker),
//!   [`store`] (the durable log), [`bridge`] (upstream links); [`pipeline`] and [`recorder`] tie them
//!   together.
//! - [`config`]: loading (YAML with positions, secrets, globs, device maps), validation into the components'
//!   typed forms, error collection; [`api`]: the HTTP API; [`app`]: builds and supervises everything;
//!   [`cli`]: the commands.
// One exception, in `mem`: glibc's `malloc_trim`, an FFI call without pointers.
#![deny(unsafe_code)]

pub mod api;
pub mod app;
pub mod bridge;
pub mod broker;
pub mod cli;
pub mod config;
pub(crate) mod confkit;
pub mod mem;
pub mod metrics;
pub mod mqtt;
pub mod net;
pub mod notify;
pub mod pipeline;
pub mod recorder;
pub mod store;

#[cfg(test)]
mod module_graph;
