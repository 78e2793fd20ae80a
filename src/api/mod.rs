//! Local HTTP API.
