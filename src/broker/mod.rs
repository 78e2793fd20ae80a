//! The embedded MQTT broker (3.1.1 and 5.0).
pub mod codec;
