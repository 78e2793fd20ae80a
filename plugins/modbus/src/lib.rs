//! Modbus TCP, RTU and RTU-over-TCP adapter for fieldbridge (protocol name `modbus`).
//!
//! What it fixes that integrators fight elsewhere: byte/word orders done right for every width (golden-tested,
//! a 64-bit float is never returned as an integer), write-back of every kind, polling that recovers by itself
//! when a device or link was down at start-up or drops later, and RS-485 buses that stay healthy because
//! requests are coalesced and serialized per line.
//!
//! Map of the crate:
//!
//! - [`codec`]: register images <-> values (types, byte/word orders); pure.
//! - [`address`]: the four tables, 1-based references (`40001`) and 0-based offsets.
//! - [`plan`]: coalescing points into as few read requests as the device allows; pure.
//! - [`config`]: the device map's Modbus keys, validated with positions.
//! - [`transport`]: shared lines (one connection per serial port / TCP endpoint) and reconnection.
//! - `mbap` (private): the Modbus TCP client (one 260-byte buffer per connection).
//! - `device` (private): the SDK `PollDevice` and `Adapter` over a line.
//! - [`probe`]: one-shot reads and writes for the `fieldbridge modbus read|write` commissioning command.
//!
//! The core registers [`ModbusFactory`] under `modbus`. Each factory owns a [`transport::LineRegistry`] (the
//! SDK's shared-resource pool), and the core keeps one factory per running application, so every device naming
//! the same serial port or TCP endpoint shares one connection, across reloads too, without process-wide state.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod codec;
pub mod config;
mod device;
mod mbap;
mod ops;
pub mod plan;
pub mod probe;
pub mod transport;

use std::sync::Arc;

use fieldbridge_sdk::{Adapter, AdapterFactory, ConfigError, DeviceConfig};

pub use address::{Addressing, Table};
pub use codec::{DataType, Format, Order};
pub use config::{validate, ModbusDevice, ModbusPoint};
pub use ops::WriteOptions;
pub use probe::{
    parse_address, parse_value, probe_read, probe_write, ConnectionArgs, ProbeError, ProbeTarget,
    ProbeValue,
};
pub use transport::{Endpoint, LineLease, LineRegistry, Parity, SerialSettings};

/// The protocol name in device maps.
pub const PROTOCOL: &str = "modbus";

/// Builds Modbus adapters. Devices built by factories sharing a [`LineRegistry`] that name the same serial
/// port or TCP endpoint share one connection.
#[derive(Debug, Clone)]
pub struct ModbusFactory {
    registry: LineRegistry,
}

impl Default for ModbusFactory {
    fn default() -> Self {
        ModbusFactory::new()
    }
}

impl ModbusFactory {
    /// A factory with its own line registry. The core builds one per application and reuses it across
    /// reloads, so a reload hands the new adapters the port the old ones still hold, instead of opening an
    /// exclusive serial port twice.
    pub fn new() -> Self {
        ModbusFactory {
            registry: LineRegistry::new(),
        }
    }

    /// A factory on its own registry (tests, benchmarks, anything that must not share lines).
    pub fn with_registry(registry: LineRegistry) -> Self {
        ModbusFactory { registry }
    }

    /// The factory's lines (for metrics and tests).
    pub fn registry(&self) -> &LineRegistry {
        &self.registry
    }
}

impl AdapterFactory for ModbusFactory {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn build(&self, device: &DeviceConfig) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        let device = validate(device)?;
        Ok(Box::new(device::ModbusAdapter {
            device: Arc::new(device),
            registry: self.registry.clone(),
        }))
    }
}
