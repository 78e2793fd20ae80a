//! Position-carrying configuration nodes.
//!
//! The core parses YAML into a tree of [`ConfigNode`]s, each knowing the file, line and column it came from and
//! its key path (`devices[2].points[0].address`). Adapters read their protocol-specific part from such nodes, so
//! every error they report points at the exact place in the user's file.
//!
//! - [`parse_yaml`] / [`parse_yaml_with`] turn YAML text into a [`ConfigNode`] tree (syntax errors and duplicate
//!   keys carry their position; anchors, aliases and `<<` merge keys are supported, see [`parse_yaml_with`]).
//! - [`ConfigNode::deserialize`] and [`ConfigNode::deserialize_all`] run serde over a node: an unknown key is
//!   reported at that key with a "did you mean", a wrong type at the offending value, a missing key at the
//!   enclosing mapping. Adapters use them on `DeviceConfig::connection` and `PointConfig::spec` with
//!   `#[serde(deny_unknown_fields)]` structs.
//! - [`Spanned`] keeps a value's position for checks done after deserialization (ranges, cross-field rules).
//! - [`parse_duration`], [`parse_size`], [`HumanDuration`], [`HumanSize`] and the `serde_*` modules read the
//!   units people write (`500ms`, `1m30s`, `512MiB`).
use std::fmt;
use std::sync::Arc;

mod de;
mod suggest;
#[cfg(test)]
mod tests;
mod units;
mod yaml;

pub use de::Spanned;
pub use suggest::{did_you_mean, unknown_name_message};
pub use units::{
    format_duration, format_size, parse_duration, parse_size, serde_duration,
    serde_option_duration, serde_size, HumanDuration, HumanSize,
};
pub use yaml::{parse_yaml, parse_yaml_with, EnvLookup, ParseOptions, Parsed};

/// The keys of a device-map point that the core owns (scaling, topics, publishing). The core removes them
/// before handing the rest of the point to the adapter as [`crate::PointConfig::spec`]; they are listed here so
/// that an adapter's "unknown key" error can still suggest a misspelled core key (`scael` -> `scale`).
pub const POINT_CORE_KEYS: &[&str] = &[
    "name",
    "scale",
    "offset",
    "deadband",
    "publish",
    "unit",
    "topic",
    "payload",
    "qos",
    "retain",
    "writable",
    "poll_interval",
    "description",
    "record",
];

/// Where a node starts: file, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark {
    /// The file's path as the user gave it.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
}

impl Mark {
    /// A mark for a whole file (line 0): used for problems that have no line, such as a file that cannot be
    /// read.
    pub fn file(file: impl Into<Arc<str>>) -> Self {
        Mark {
            file: file.into(),
            line: 0,
            col: 0,
        }
    }
}

impl fmt::Display for Mark {
    /// `file:line:col`, or just `file` for a whole-file mark (line 0), so that an unreadable file is not
    /// reported at a made-up `:0:0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A float, or an integer too large for i64.
    Float(f64),
    /// Any other scalar, as written (quoted or not).
    String(String),
    /// A sequence.
    Seq(Vec<ConfigNode>),
    /// A mapping in file order; keys are nodes too (so a bad key has its own position).
    Map(Vec<(ConfigNode, ConfigNode)>),
}

/// One node of a parsed configuration file. Two nodes are equal when their values and key paths are: where
/// they are in the file does not count (a line added above a device must not make a reload restart it).
#[derive(Debug, Clone)]
pub struct ConfigNode {
    /// The value.
    pub kind: NodeKind,
    /// Where it starts.
    pub mark: Mark,
    /// Its key path from the file's root, e.g. `points[3].address`; empty for the root.
    pub path: String,
}

impl PartialEq for ConfigNode {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.path == other.path
    }
}

/// One configuration problem: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigError {
    /// Where the offending node starts.
    pub mark: Mark,
    /// The key path of the offending node.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.mark, self.message)
        } else {
            write!(f, "{}: {}: {}", self.mark, self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigNode {
    /// A null node at `mark` (used for absent optional sections).
    pub fn null(mark: Mark, path: impl Into<String>) -> Self {
        ConfigNode {
            kind: NodeKind::Null,
            mark,
            path: path.into(),
        }
    }

    /// An error located at this node.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            mark: self.mark.clone(),
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The value of `key` when this node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&ConfigNode> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.kind, NodeKind::String(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::String(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of a mapping node, in file order.
    pub fn as_map(&self) -> Option<&[(ConfigNode, ConfigNode)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The items of a list node.
    pub fn as_seq(&self) -> Option<&[ConfigNode]> {
        match &self.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// Whether this is a null node.
    pub fn is_null(&self) -> bool {
        matches!(self.kind, NodeKind::Null)
    }

    /// A short name of the node's type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::String(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}
