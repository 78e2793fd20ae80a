//! Integration tests of the CoAP adapter against real peers: libcoap's `coap-server-notls` and
//! `coap-client-notls` (Debian libcoap3-bin) and a scripted aiocoap server (`tests/peers/aiocoap_server.py`),
//! on loopback and free UDP ports. A missing peer fails the test with a message naming the package.
mod util;

mod client;
mod config;
mod ingest;
mod observe;
mod poll;
