//! Serial adapter for fieldbridge (protocol name `serial`): devices that print lines or frames on RS-232,
//! RS-485 or USB serial ports — scales, GPS receivers (NMEA 0183), analyzers, weather stations, Arduino
//! sketches, barcode readers — and devices that answer a poll string.
//!
//! Map of the crate:
//!
//! - [`framing`]: cutting the byte stream into frames (lines, fixed length, delimiters, length prefix), bounded.
//! - [`parse`]: frames into fields (regex, CSV, JSON, key=value, NMEA, binary) and fields into values.
//! - [`nmea`], [`binary`], [`checksum`]: the pieces those use; [`escape`]: byte strings in YAML.
//! - [`template`]: write-back templates.
//! - [`config`]: the device map's serial keys, validated with positions.
//! - `device` (private): the running adapter; streaming devices in its own loop, polled devices on the SDK's
//!   `Poller`.
//! - [`monitor`]: `fieldbridge serial monitor`, for commissioning.
//!
//! Every key and every decision is documented in `plugins/serial/README.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod binary;
pub mod checksum;
pub mod config;
mod device;
pub mod escape;
pub mod framing;
pub mod monitor;
pub mod nmea;
pub mod parse;
pub mod stats;
pub mod template;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fieldbridge_sdk::{Adapter, AdapterFactory, ConfigError, DeviceConfig};

pub use config::{validate, SerialDevice};
pub use stats::{SerialStats, StatsSnapshot};

/// The protocol name in device maps.
pub const PROTOCOL: &str = "serial";

/// Builds serial adapters, and keeps each device's counters (the latest build of each name).
#[derive(Debug, Clone, Default)]
pub struct SerialFactory {
    stats: Arc<Mutex<HashMap<Arc<str>, Arc<SerialStats>>>>,
}

impl SerialFactory {
    /// A factory.
    pub fn new() -> Self {
        SerialFactory::default()
    }

    /// The counters of the device last built under `name`.
    pub fn stats(&self, name: &str) -> Option<Arc<SerialStats>> {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

impl AdapterFactory for SerialFactory {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn build(&self, device: &DeviceConfig) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        let device = validate(device)?;
        let stats = Arc::new(SerialStats::default());
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device.name.clone(), stats.clone());
        Ok(Box::new(device::SerialAdapter {
            device: Arc::new(device),
            stats,
        }))
    }
}
