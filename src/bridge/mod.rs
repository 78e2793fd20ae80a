//! Upstream bridges.
