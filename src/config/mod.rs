//! Configuration: YAML -> raw structs -> validate() -> typed [`Config`], with file:line:col errors.
//!
//! # Pipeline
//!
//! 1. Each file is parsed into a position-carrying [`fieldbridge_sdk::ConfigNode`] tree
//!    ([`fieldbridge_sdk::config::parse_yaml_with`]): syntax errors, duplicate keys and unset `${VAR}`s are
//!    found here.
//! 2. Each section, device and point is deserialized on its own (`deny_unknown_fields`), so one bad device
//!    does not hide the problems of the next. The broker's, store's and bridges' raw and typed forms live next
//!    to those components (`broker/config.rs`, `store/config.rs`, `bridge/config.rs`); the gateway, API,
//!    logging and device sections are in `raw.rs` and `types.rs`. The typed forms are re-exported here.
//! 3. Defaults and the rules serde cannot express (ranges, templates, filters, URLs, files that must exist,
//!    unique names, topics that would collide) are applied by each section's owner: the broker, store and
//!    bridge sections by their components' `config.rs` (`impl Cx` blocks on `confkit::Cx`, the
//!    load's error collector, which sits below the components), the gateway, API, logging and device
//!    sections and the checks across sections by `validate.rs`, which also runs the whole load. Then each
//!    enabled device's protocol part goes to its adapter factory ([`AdapterRegistry`]), whose errors join the
//!    same report.
//! 4. Any problem: [`ConfigErrors`], every problem sorted by file, line and column, printed one per line as
//!    `file:line:col: key.path: message`. `fieldbridge check` prints it and exits [`EXIT_CONFIG`].
//!
//! # Schema decisions
//!
//! - Paths in the main file (device maps, storage, TLS files, password files) are relative to the main file's
//!   directory, so the gateway behaves the same whatever its working directory.
//! - `device_maps:` entries are paths or globs (`devices/*.yaml`, wildcards within a component, no `**`, hidden
//!   files skipped). A glob matching nothing is fine (an empty `devices/` directory); a plain path that does
//!   not exist is an error. A file named twice is loaded once. A device-map file has one key, `devices:`.
//! - Top-level keys starting with `x-` are ignored in the main file and in device maps: a place to define YAML
//!   anchors (`x-holding: &holding {…}`) that points merge with `<<: *holding`.
//! - `${NAME}` / `${NAME:-default}` are replaced in every value of every file (`$${` is a literal `${`). Keys
//!   are never substituted. Quote a reference when the value must stay text (`password: "${PASS}"`).
//! - Secrets: `password` or `password_file` (users and bridges), never both; a password file's trailing newline
//!   is dropped.
//! - Disabled devices (`enabled: false`) are type-checked (a typo is still caught) but take no part in name
//!   uniqueness or topic checks, are not given to an adapter (their protocol may not be built in) and are left
//!   out of [`Config::devices`].
//! - A point with a `deadband` and no `publish` publishes `on_change`; a deadband with an explicit
//!   `publish: every_poll` is an error (it would do nothing).
//! - Each point's topic is rendered at load time (all placeholders are known then): two points publishing on
//!   one topic, or a point publishing on a status or write-back topic (a point named `status` under the default
//!   template), is an error.
//! - Bridges: `forward:` absent means `["{gateway}/#"]` (a bridge forwards the gateway's readings unless told
//!   otherwise); `forward: []` forwards nothing. A rule may be a bare filter string. `{gateway}` is expanded in
//!   bridge filters and templates, ACL filters, storage `record` filters and status topics at load time.
//! - ACL rules: `{allow|deny: publish|subscribe|all, topic: <filter>, user: <name>?}`; first match decides;
//!   with rules and no match, access is denied (see `broker::auth`). A rule's `user` must be a defined user
//!   (in `users` or the `password_file`).
//! - Mosquitto files: `broker.password_file` (mosquitto_passwd `$6$`/`$7$` hashes) adds users (a name in both it
//!   and `users` is an error); `broker.acl_file` (mosquitto ACL syntax) adds rules after `acl:`, in mosquitto's
//!   order. Both are bounded in size and line length, and their problems are reported as `file:line:col` of
//!   the file itself. A reload re-reads them like the rest of the configuration.
//! - Warnings (`Config::warnings`) never fail a load: a listener on a non-loopback address that accepts
//!   anonymous clients is one; `fieldbridge check` prints them.
//! - Listener and API `bind` take `IP:port`, or an IP alone with the protocol's default port (tcp 1883,
//!   tls 8883, ws 8083, wss 8084, api 8080); `localhost` means 127.0.0.1.
use std::path::Path;

use fieldbridge_sdk::{Adapter, AdapterFactory, ConfigError};

mod glob;
mod raw;
mod topics;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use types::*;

/// The exit status of `fieldbridge check` and `run` when the configuration is invalid (EX_USAGE, as the design
/// asks; systemd's `ExecStartPre` sees it).
pub const EXIT_CONFIG: i32 = 64;

/// The adapter factories compiled into this build, by protocol name.
pub trait AdapterRegistry {
    /// The factory for `protocol`, if this build has one.
    fn factory(&self, protocol: &str) -> Option<&dyn AdapterFactory>;
    /// Every protocol this build knows, for "unknown protocol, expected one of" messages.
    fn protocols(&self) -> Vec<&'static str>;
}

/// A plain list of factories is a registry (each answers to its own [`AdapterFactory::protocol`]).
impl AdapterRegistry for Vec<Box<dyn AdapterFactory>> {
    fn factory(&self, protocol: &str) -> Option<&dyn AdapterFactory> {
        self.iter()
            .find(|f| f.protocol() == protocol)
            .map(|f| f.as_ref())
    }

    fn protocols(&self) -> Vec<&'static str> {
        self.iter().map(|f| f.protocol()).collect()
    }
}

/// Every problem found in a configuration, sorted by file, line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The problems, sorted, without duplicates.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Sorts and de-duplicates `errors`.
    pub fn new(mut errors: Vec<ConfigError>) -> Self {
        errors.sort();
        errors.dedup();
        ConfigErrors { errors }
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether there are none (never the case for an error returned by a load).
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

/// One problem per line: `file:line:col: key.path: message`.
impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A configured load: where environment variables come from, and which adapters validate devices.
///
/// `load` and `load_with` cover the daemon; the builder exists so tests (and a future `check --env-file`) can
/// supply variables without touching the process environment.
pub struct Loader<'a> {
    registry: Option<&'a dyn AdapterRegistry>,
    env: BoxedEnv<'a>,
}

type BoxedEnv<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

impl Default for Loader<'_> {
    fn default() -> Self {
        Loader::new()
    }
}

impl<'a> Loader<'a> {
    /// Variables from the process environment, no adapter validation.
    pub fn new() -> Self {
        Loader {
            registry: None,
            env: Box::new(|name| std::env::var(name).ok()),
        }
    }

    /// Validates each enabled device with its adapter factory, and builds the adapters.
    pub fn registry(mut self, registry: &'a dyn AdapterRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Where `${NAME}` values come from.
    pub fn env(mut self, env: impl Fn(&str) -> Option<String> + 'a) -> Self {
        self.env = Box::new(env);
        self
    }

    /// Loads `path` and every device map it names. The adapters (empty without a registry) are in the order
    /// of [`Config::devices`].
    pub fn load(&self, path: &Path) -> Result<(Config, Vec<Box<dyn Adapter>>), ConfigErrors> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate::Load::new(base, &*self.env).load(path, self.registry)
    }
}

/// Loads and validates the main file at `path` and every device map it names, with `${NAME}` taken from the
/// process environment. Protocol-specific parts are not checked (no registry): use [`load_with`] to run.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    Loader::new().load(path).map(|(config, _)| config)
}

/// Like [`load`], and each enabled device is also validated and built by its protocol's factory, so protocol
/// errors (a bad Modbus address) are in the same report. The adapters are in the order of
/// [`Config::devices`].
pub fn load_with(
    path: &Path,
    registry: &dyn AdapterRegistry,
) -> Result<(Config, Vec<Box<dyn Adapter>>), ConfigErrors> {
    Loader::new().registry(registry).load(path)
}
