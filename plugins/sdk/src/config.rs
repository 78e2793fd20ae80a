//! Position-carrying configuration nodes.
//!
//! The core parses YAML into a tree of [`ConfigNode`]s, each knowing the file, line and column it came from and
//! its key path (`devices[2].points[0].address`). Adapters read their protocol-specific part from such nodes, so
//! every error they report points at the exact place in the user's file.
use std::fmt;
use std::sync::Arc;

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

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
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

/// One node of a parsed configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigNode {
    /// The value.
    pub kind: NodeKind,
    /// Where it starts.
    pub mark: Mark,
    /// Its key path from the file's root, e.g. `points[3].address`; empty for the root.
    pub path: String,
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
