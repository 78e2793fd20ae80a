//! CoAP adapter for fieldbridge (protocol name `coap`): GET polling and Observe against constrained devices,
//! block-wise transfer for large representations, SenML, write-back by PUT/POST, and an ingest listener that
//! devices POST or PUT readings to.
//!
//! Map of the crate:
//!
//! - [`wire`] — datagram decode/encode and option helpers (the fuzzed path); pure.
//! - [`uri`] — `coap://host:port/path?query`.
//! - [`content`] — representations -> values (text, JSON + pointer, CBOR, raw, SenML JSON/CBOR); pure.
//! - [`client`] — one server's endpoint: confirmable exchanges with RFC 7252 retransmission, Block2, Observe.
//! - [`ingest`] — the shared ingest listener (duplicate cache, diagnostics).
//! - [`config`] — the device map's CoAP keys, validated with positions.
//! - `device` (private): the SDK `PollDevice`, the observation tasks and the `Adapter`.
//! - [`probe`] — `fieldbridge coap discover|get|put`.
//!
//! The core registers [`CoapFactory`] under `coap`. Each factory owns the pool of ingest listeners (the SDK's
//! [`SharedPool`]): devices naming the same `ingest:` address share one socket, which lives as long as one of
//! them runs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod content;
mod device;
pub mod ingest;
pub mod probe;
pub mod uri;
pub mod wire;

use std::sync::Arc;

use fieldbridge_sdk::{Adapter, AdapterFactory, ConfigError, DeviceConfig, Lease, SharedPool};

pub use client::{Client, ClientError, Response, Transmission};
pub use config::{validate, CoapDevice, CoapPoint, Mode};
pub use content::Format;
pub use ingest::{IngestServer, IngestStats};
pub use probe::{Link, ProbeError};
pub use uri::CoapUri;

/// The protocol name in device maps.
pub const PROTOCOL: &str = "coap";

/// Builds CoAP adapters; owns the ingest listeners its devices share.
#[derive(Debug, Clone, Default)]
pub struct CoapFactory {
    ingest: SharedPool<IngestServer>,
}

impl CoapFactory {
    /// A factory with its own (empty) pool of ingest listeners.
    pub fn new() -> Self {
        CoapFactory::default()
    }

    /// The running ingest listener configured as `addr` (as written in the device map, e.g. `127.0.0.1:0`),
    /// if a device holds it: for metrics and tests (its real port, its counters).
    pub fn ingest(&self, addr: &str) -> Option<Lease<IngestServer>> {
        let key = addr
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| addr.to_owned(), |a| a.to_string());
        self.ingest.get(&key)
    }

    /// How many ingest listeners are open.
    pub fn open_listeners(&self) -> usize {
        self.ingest.open()
    }
}

impl AdapterFactory for CoapFactory {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn build(&self, device: &DeviceConfig) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        let device = validate(device)?;
        Ok(Box::new(device::CoapAdapter {
            device: Arc::new(device),
            ingest: self.ingest.clone(),
        }))
    }
}
