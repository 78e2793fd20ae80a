//! The embedded MQTT broker (3.1.1 and 5.0).
//!
//! The wire format is [`crate::mqtt`]'s and the TLS/WebSocket plumbing is [`crate::net`]'s; here:
//! - `session`: per-client state without I/O; `router`: the topic tree, shared subscriptions, retained store;
//! - `core`: the registry, publish path, wills and expiry; `connection`: one socket's event loop;
//! - `listener`: TCP, TLS and WebSocket accept loops; `link`: the in-process client;
//! - `auth`: credentials and ACL; `sys`: `$SYS` topics.
pub mod auth;
pub mod config;
mod connection;
mod core;
pub mod link;
pub mod listener;
pub mod message;
pub mod persist;
pub mod router;
pub mod session;
mod sys;

pub use self::core::{
    AdmissionFuture, Broker, BrokerStats, CommitFuture, HookRefusal, Metrics, PublishHook, METRICS,
};
pub use connection::Io;
pub use message::Message;
