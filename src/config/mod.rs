//! Configuration: YAML -> raw structs -> validate() -> typed [`Config`], with file:line:col errors.
mod types;

pub use types::*;
