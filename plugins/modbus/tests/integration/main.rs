//! Integration tests of the Modbus adapter against real peers: pymodbus as the device (TCP, RTU over TCP,
//! RTU on a socat pty pair). A missing peer fails the test with a message saying what to install.
mod coalesce;
mod config;
mod decode;
mod faults;
mod probe;
mod rtu;
mod util;
mod writes;
