//! The durable log (store-and-forward).
