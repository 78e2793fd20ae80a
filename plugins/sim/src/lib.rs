//! fieldbridge sim adapter.
#![forbid(unsafe_code)]
