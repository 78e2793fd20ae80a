//! Integration tests of the serial adapter over real socat pty pairs (a fresh pair per test): the test plays
//! the device on one end, the adapter reads the other. A missing socat fails the test with a message saying
//! what to install.
mod config;
mod framing;
mod monitor;
mod parsers;
mod polled;
mod reconnect;
mod util;
mod writes;
