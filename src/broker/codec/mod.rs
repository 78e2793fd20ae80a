//! MQTT 3.1.1 and 5.0 codec: pure functions over bytes, no I/O.
mod types;

pub use types::*;
