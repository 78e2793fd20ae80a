//! fieldbridge modbus adapter.
#![forbid(unsafe_code)]
