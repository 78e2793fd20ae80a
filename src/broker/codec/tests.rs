//! Cross-packet tests.
