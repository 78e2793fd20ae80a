//! A serde `Deserializer` over a [`ConfigNode`] tree whose every error carries the mark and key path of the
//! exact node that failed.
//!
//! Locating errors: each `deserialize_*` call wraps the errors its visitor returns with its own node's position,
//! unless an inner call already did. So a wrong type is reported at the value, an unknown key at the key (the
//! derived field visitor fails while the key node is being deserialized), and a missing key at the mapping
//! (the derived struct visitor fails after the last key, inside the mapping's call).
//!
//! Reporting every problem ([`ConfigNode::deserialize_all`]): serde stops at the first error, so the tree is
//! deserialized again with the failing entry (the map entry or list item holding the bad node) hidden, until it
//! succeeds or the failure is at the root. A "missing key" that only exists because its entry was hidden is not
//! reported twice. The cost is one pass per problem, nothing for a valid file.
//!
//! Two types need the node itself rather than a value built from it: [`ConfigNode`] (an adapter's part of the
//! config, kept as a tree) and [`Spanned`]. They ask for a newtype struct with a reserved name; this
//! deserializer recognises the name and hands over the node (or its position) through a thread-local, since
//! serde's visitor API cannot carry arbitrary values. With any other deserializer they degrade gracefully: a
//! `ConfigNode` is built from the data without positions and a `Spanned` gets an unknown mark.
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, Visitor};
use serde::Deserialize;

use super::suggest::{did_you_mean, unknown_name_message};
use super::yaml::key_text;
use super::{ConfigError, ConfigNode, Mark, NodeKind, POINT_CORE_KEYS};

const NODE_MAGIC: &str = "$fieldbridge::private::ConfigNode";
const SPANNED_MAGIC: &str = "$fieldbridge::private::Spanned";

thread_local! {
    static NODE_STASH: RefCell<Option<ConfigNode>> = const { RefCell::new(None) };
    static SPAN_STASH: RefCell<Option<(Mark, String)>> = const { RefCell::new(None) };
}

fn unknown_mark() -> Mark {
    Mark {
        file: "<unknown>".into(),
        line: 0,
        col: 0,
    }
}

impl ConfigNode {
    /// Deserializes this node into `T`; the first problem is returned, at the exact node that failed.
    ///
    /// Messages: `unknown key `adress`, did you mean `address`? expected one of: …` (at the key),
    /// `expected an integer, found a string` (at the value), `missing required key `address`` (at the
    /// mapping), `expected an integer from 0 to 65535, found 70000`. A null node reads as an empty mapping or
    /// list, so `connection:` with nothing under it gets the struct's defaults (or its missing-key errors).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let poisoned = HashSet::new();
        T::deserialize(NodeDe::new(self, ptr(self), &poisoned))
            .map_err(|e| e.into_config_error(self))
    }

    /// Like [`ConfigNode::deserialize`], but reports every problem of the tree (unknown keys, wrong types,
    /// missing keys, bad values), sorted by position. Adapters should prefer it in
    /// [`crate::AdapterFactory::build`].
    pub fn deserialize_all<T: DeserializeOwned>(&self) -> Result<T, Vec<ConfigError>> {
        match self.deserialize_partial() {
            (Some(v), errors) if errors.is_empty() => Ok(v),
            (_, errors) => Err(errors),
        }
    }

    /// Every problem of the tree, plus the value built from the rest when one can be: entries that failed are
    /// left out, so a bad optional key takes its default. With a value in hand, a caller can still run its own
    /// checks on the keys that were fine, and report those problems in the same run. `None` when the failures
    /// leave nothing to build (a required key was bad, or the node itself has the wrong type).
    pub fn deserialize_partial<T: DeserializeOwned>(&self) -> (Option<T>, Vec<ConfigError>) {
        let root = ptr(self);
        let mut hidden = HashSet::new();
        let mut errors: Vec<ConfigError> = Vec::new();
        let value = loop {
            match T::deserialize(NodeDe::new(self, root, &hidden)) {
                Ok(v) => break Some(v),
                Err(e) => {
                    let target = e.loc.as_ref().map_or(root, |l| l.entry);
                    if !e.caused_by_hidden() {
                        let ce = e.into_config_error(self);
                        if !errors.contains(&ce) {
                            errors.push(ce);
                        }
                    }
                    if target == root || !hidden.insert(target) {
                        break None;
                    }
                }
            }
        };
        errors.sort();
        (value, errors)
    }
}

fn ptr(node: &ConfigNode) -> usize {
    node as *const ConfigNode as usize
}

/// A value with the position it was read from, for checks made after deserialization (a range that depends
/// on another key, a name that must be unique) that must still point at the right place.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub mark: Mark,
    /// Its key path.
    pub path: String,
}

impl<T> Spanned<T> {
    /// An error located at this value.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            mark: self.mark.clone(),
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The value, without its position.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                // Taken before the value is read, so a nested Spanned cannot see this one's position.
                let span = SPAN_STASH.with(|s| s.borrow_mut().take());
                let value = T::deserialize(d)?;
                let (mark, path) = span.unwrap_or_else(|| (unknown_mark(), String::new()));
                Ok(Spanned { value, mark, path })
            }
        }
        d.deserialize_newtype_struct(SPANNED_MAGIC, V(PhantomData))
    }
}

impl<'de> Deserialize<'de> for ConfigNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(NODE_MAGIC, NodeVisitor)
    }
}

/// Receives the stashed node from our deserializer, or builds a position-less node from any other format.
struct NodeVisitor;

fn bare(kind: NodeKind) -> ConfigNode {
    ConfigNode {
        kind,
        mark: unknown_mark(),
        path: String::new(),
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = ConfigNode;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<ConfigNode, E> {
        Ok(NODE_STASH
            .with(|s| s.borrow_mut().take())
            .unwrap_or_else(|| bare(NodeKind::Null)))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<ConfigNode, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_none<E: de::Error>(self) -> Result<ConfigNode, E> {
        Ok(bare(NodeKind::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<ConfigNode, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ConfigNode, E> {
        Ok(bare(NodeKind::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfigNode, E> {
        Ok(bare(NodeKind::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigNode, E> {
        Ok(bare(match i64::try_from(v) {
            Ok(i) => NodeKind::Int(i),
            Err(_) => NodeKind::Float(v as f64),
        }))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ConfigNode, E> {
        Ok(bare(NodeKind::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigNode, E> {
        Ok(bare(NodeKind::String(v.to_string())))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ConfigNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed)? {
            items.push(item);
        }
        Ok(bare(NodeKind::Seq(items)))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<ConfigNode, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry_seed(NodeSeed, NodeSeed)? {
            entries.push((k, v));
        }
        Ok(bare(NodeKind::Map(entries)))
    }
}

struct NodeSeed;
impl<'de> DeserializeSeed<'de> for NodeSeed {
    type Value = ConfigNode;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ConfigNode, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// The error type of the node deserializer.
#[derive(Debug)]
pub(crate) struct DeError {
    kind: Kind,
    loc: Option<Loc>,
}

#[derive(Debug)]
enum Kind {
    Message(String),
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    MissingField {
        field: &'static str,
        hidden: bool,
    },
}

#[derive(Debug)]
struct Loc {
    mark: Mark,
    path: String,
    /// The entry to hide for the next pass of `deserialize_all`.
    entry: usize,
}

impl DeError {
    fn msg(message: impl Into<String>) -> Self {
        DeError {
            kind: Kind::Message(message.into()),
            loc: None,
        }
    }

    fn caused_by_hidden(&self) -> bool {
        matches!(self.kind, Kind::MissingField { hidden: true, .. })
    }

    fn message(&self, path: &str) -> String {
        match &self.kind {
            Kind::Message(m) => m.clone(),
            Kind::UnknownField { field, expected } => {
                let mut msg = unknown_name_message("key", field, expected);
                // An adapter's "unknown key" inside a device-map point may be a misspelled core key (the core
                // took the correct ones out before the adapter saw the point).
                if did_you_mean(field, expected.iter().copied()).is_none() && in_point(path) {
                    if let Some(core) = did_you_mean(field, POINT_CORE_KEYS.iter().copied()) {
                        let head = format!("unknown key `{field}`");
                        msg = msg.replacen(&head, &format!("{head}, did you mean `{core}`?"), 1);
                        msg = msg.replacen("?, expected", "? expected", 1);
                    }
                }
                msg
            }
            Kind::UnknownVariant { variant, expected } => {
                unknown_name_message("value", variant, expected)
            }
            Kind::MissingField { field, .. } => format!("missing required key `{field}`"),
        }
    }

    fn into_config_error(self, root: &ConfigNode) -> ConfigError {
        let (mark, path) = match &self.loc {
            Some(l) => (l.mark.clone(), l.path.clone()),
            None => (root.mark.clone(), root.path.clone()),
        };
        ConfigError {
            message: self.message(&path),
            mark,
            path,
        }
    }
}

/// Whether `path` is a key directly inside a device-map point (`….points[3].key`).
fn in_point(path: &str) -> bool {
    let Some((parent, _)) = path.rsplit_once('.') else {
        return false;
    };
    let Some(open) = parent.rfind("points[") else {
        return false;
    };
    let idx = &parent[open + "points[".len()..];
    idx.strip_suffix(']')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        && (open == 0 || parent[..open].ends_with('.'))
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.loc {
            Some(l) => write!(f, "{}: {}", l.mark, self.message(&l.path)),
            None => f.write_str(&self.message("")),
        }
    }
}

impl std::error::Error for DeError {}

/// What a value is, for "found …".
fn describe_unexpected(u: &de::Unexpected<'_>) -> String {
    use de::Unexpected as U;
    match u {
        U::Bool(_) => "a boolean".into(),
        U::Unsigned(_) | U::Signed(_) => "an integer".into(),
        U::Float(_) => "a number".into(),
        U::Char(_) | U::Str(_) => "a string".into(),
        U::Bytes(_) => "bytes".into(),
        U::Unit | U::Option => "an empty value".into(),
        U::Seq => "a list".into(),
        U::Map => "a mapping".into(),
        U::NewtypeStruct | U::NewtypeVariant | U::TupleVariant | U::StructVariant => {
            "a value".into()
        }
        U::UnitVariant | U::Enum => "a name".into(),
        U::Other(s) => (*s).to_string(),
    }
}

/// serde's own wording of what was expected, in the words of a YAML user.
fn describe_expected(exp: &str) -> String {
    match exp {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128"
        | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        "unit" => "an empty value".into(),
        "a borrowed string" => "a string".into(),
        s if s.starts_with("struct ") => "a mapping".into(),
        s if s.starts_with("tuple of ") || s.starts_with("a tuple of size") => "a list".into(),
        s => s.into(),
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::msg(msg.to_string())
    }
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::msg(format!(
            "expected {}, found {}",
            describe_expected(&exp.to_string()),
            describe_unexpected(&unexp)
        ))
    }
    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        use de::Unexpected as U;
        let found = match unexp {
            U::Unsigned(v) => v.to_string(),
            U::Signed(v) => v.to_string(),
            U::Float(v) => v.to_string(),
            U::Str(s) => format!("`{s}`"),
            U::Bool(b) => b.to_string(),
            U::Char(c) => format!("`{c}`"),
            other => describe_unexpected(&other),
        };
        DeError::msg(format!(
            "expected {}, found {found}",
            describe_expected(&exp.to_string())
        ))
    }
    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DeError::msg(format!(
            "expected {}, found {len} item{}",
            describe_expected(&exp.to_string()),
            if len == 1 { "" } else { "s" }
        ))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            kind: Kind::UnknownVariant {
                variant: variant.to_string(),
                expected,
            },
            loc: None,
        }
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            kind: Kind::UnknownField {
                field: field.to_string(),
                expected,
            },
            loc: None,
        }
    }
    fn missing_field(field: &'static str) -> Self {
        DeError {
            kind: Kind::MissingField {
                field,
                hidden: false,
            },
            loc: None,
        }
    }
    fn duplicate_field(field: &'static str) -> Self {
        DeError::msg(format!("duplicate key `{field}`"))
    }
}

/// Deserializes one node. `entry` is the node to hide when this one fails (itself when it is a map value, a
/// map key or a list item; its enclosing entry for an enum's parts).
#[derive(Clone, Copy)]
struct NodeDe<'a> {
    node: &'a ConfigNode,
    entry: usize,
    hidden: &'a HashSet<usize>,
}

impl<'a> NodeDe<'a> {
    fn new(node: &'a ConfigNode, entry: usize, hidden: &'a HashSet<usize>) -> Self {
        NodeDe {
            node,
            entry,
            hidden,
        }
    }

    fn child(&self, node: &'a ConfigNode) -> Self {
        NodeDe::new(node, ptr(node), self.hidden)
    }

    fn is_hidden(&self, node: &ConfigNode) -> bool {
        self.hidden.contains(&ptr(node))
    }

    /// Gives a position to an error that has none yet.
    fn locate(&self, mut e: DeError) -> DeError {
        if e.loc.is_none() {
            if let Kind::MissingField { field, hidden } = &mut e.kind {
                if let NodeKind::Map(entries) = &self.node.kind {
                    *hidden = entries.iter().any(|(k, v)| {
                        key_text(k) == *field && (self.is_hidden(k) || self.is_hidden(v))
                    });
                }
            }
            e.loc = Some(Loc {
                mark: self.node.mark.clone(),
                path: self.node.path.clone(),
                entry: self.entry,
            });
        }
        e
    }

    fn fail(&self, message: impl Into<String>) -> DeError {
        self.locate(DeError::msg(message))
    }

    fn found(&self) -> &'static str {
        match self.node.kind {
            NodeKind::Null => "an empty value",
            _ => self.node.type_name(),
        }
    }

    fn type_err(&self, expected: &str) -> DeError {
        let hint = match (&self.node.kind, expected) {
            (NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Bool(_), "a string") => {
                " (put it in quotes to make it text)"
            }
            _ => "",
        };
        self.fail(format!("expected {expected}, found {}{hint}", self.found()))
    }

    fn visit<V, F>(&self, f: F) -> Result<V, DeError>
    where
        F: FnOnce() -> Result<V, DeError>,
    {
        f().map_err(|e| self.locate(e))
    }

    fn items(&self) -> Vec<&'a ConfigNode> {
        match &self.node.kind {
            NodeKind::Seq(items) => items.iter().filter(|i| !self.is_hidden(i)).collect(),
            _ => Vec::new(),
        }
    }

    fn entries(&self) -> Vec<(&'a ConfigNode, &'a ConfigNode)> {
        match &self.node.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .filter(|(k, v)| !self.is_hidden(k) && !self.is_hidden(v))
                .map(|(k, v)| (k, v))
                .collect(),
            _ => Vec::new(),
        }
    }
}

macro_rules! int_method {
    ($method:ident, $ty:ty, $visit:ident) => {
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.node.kind {
                NodeKind::Int(i) => match <$ty>::try_from(i) {
                    Ok(v) => self.visit(|| visitor.$visit(v)),
                    Err(_) => Err(self.fail(format!(
                        "expected an integer from {} to {}, found {i}",
                        <$ty>::MIN,
                        <$ty>::MAX
                    ))),
                },
                _ => Err(self.type_err("an integer")),
            }
        }
    };
}

impl<'a> Deserializer<'a> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Null => self.visit(|| visitor.visit_unit()),
            NodeKind::Bool(b) => self.visit(|| visitor.visit_bool(*b)),
            NodeKind::Int(i) => self.visit(|| visitor.visit_i64(*i)),
            NodeKind::Float(x) => self.visit(|| visitor.visit_f64(*x)),
            NodeKind::String(s) => self.visit(|| visitor.visit_borrowed_str(s)),
            NodeKind::Seq(_) => self.deserialize_seq(visitor),
            NodeKind::Map(_) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Bool(b) => self.visit(|| visitor.visit_bool(b)),
            _ => Err(self.type_err("a boolean (`true` or `false`)")),
        }
    }

    int_method!(deserialize_i8, i8, visit_i8);
    int_method!(deserialize_i16, i16, visit_i16);
    int_method!(deserialize_i32, i32, visit_i32);
    int_method!(deserialize_i64, i64, visit_i64);
    int_method!(deserialize_i128, i128, visit_i128);
    int_method!(deserialize_u8, u8, visit_u8);
    int_method!(deserialize_u16, u16, visit_u16);
    int_method!(deserialize_u32, u32, visit_u32);
    int_method!(deserialize_u64, u64, visit_u64);
    int_method!(deserialize_u128, u128, visit_u128);

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Int(i) => self.visit(|| visitor.visit_f32(i as f32)),
            NodeKind::Float(x) => self.visit(|| visitor.visit_f32(x as f32)),
            _ => Err(self.type_err("a number")),
        }
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Int(i) => self.visit(|| visitor.visit_f64(i as f64)),
            NodeKind::Float(x) => self.visit(|| visitor.visit_f64(x)),
            _ => Err(self.type_err("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::String(s) if s.chars().count() == 1 => {
                let c = s.chars().next().unwrap_or_default();
                self.visit(|| visitor.visit_char(c))
            }
            _ => Err(self.type_err("a single character")),
        }
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::String(s) => self.visit(|| visitor.visit_borrowed_str(s)),
            _ => Err(self.type_err("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::String(s) => self.visit(|| visitor.visit_borrowed_bytes(s.as_bytes())),
            NodeKind::Seq(_) => self.deserialize_seq(visitor),
            _ => Err(self.type_err("a string or a list of bytes")),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Null => self.visit(|| visitor.visit_none()),
            _ => self.visit(|| visitor.visit_some(self)),
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Null => self.visit(|| visitor.visit_unit()),
            _ => Err(self.type_err("an empty value")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == NODE_MAGIC {
            NODE_STASH.with(|s| *s.borrow_mut() = Some(self.node.clone()));
            return self.visit(|| visitor.visit_unit());
        }
        if name == SPANNED_MAGIC {
            SPAN_STASH
                .with(|s| *s.borrow_mut() = Some((self.node.mark.clone(), self.node.path.clone())));
        }
        self.visit(|| visitor.visit_newtype_struct(self))
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Seq(_) | NodeKind::Null => {
                let items = self.items();
                self.visit(|| {
                    visitor.visit_seq(SeqAcc {
                        de: self,
                        items: items.into_iter(),
                    })
                })
            }
            _ => Err(self.type_err("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Seq(_) if self.items().len() != len => Err(self.fail(format!(
                "expected a list of {len} items, found {}",
                self.items().len()
            ))),
            _ => self.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Map(_) | NodeKind::Null => {
                let entries = self.entries();
                self.visit(|| {
                    visitor.visit_map(MapAcc {
                        de: self,
                        entries: entries.into_iter(),
                        value: None,
                    })
                })
            }
            _ => Err(self.type_err("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::String(_) => self.visit(|| {
                visitor.visit_enum(EnumAcc {
                    de: self,
                    variant: self.node,
                    value: None,
                })
            }),
            NodeKind::Map(_) => {
                let entries = self.entries();
                match entries.as_slice() {
                    [(k, v)] => {
                        let (k, v) = (*k, *v);
                        self.visit(|| {
                            visitor.visit_enum(EnumAcc {
                                de: self,
                                variant: k,
                                value: Some(v),
                            })
                        })
                    }
                    _ => Err(self.fail(format!(
                        "expected one of: {}, or a mapping with one of them as its only key, found a mapping with {} keys",
                        variants.join(", "),
                        entries.len()
                    ))),
                }
            }
            _ => Err(self.fail(format!(
                "expected one of: {}, found {}",
                variants.join(", "),
                self.found()
            ))),
        }
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::String(s) => self.visit(|| visitor.visit_borrowed_str(s)),
            _ => Err(self.type_err("a name")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit(|| visitor.visit_unit())
    }
}

struct SeqAcc<'a> {
    de: NodeDe<'a>,
    items: std::vec::IntoIter<&'a ConfigNode>,
}

impl<'a> de::SeqAccess<'a> for SeqAcc<'a> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(item) => seed.deserialize(self.de.child(item)).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAcc<'a> {
    de: NodeDe<'a>,
    entries: std::vec::IntoIter<(&'a ConfigNode, &'a ConfigNode)>,
    value: Option<&'a ConfigNode>,
}

impl<'a> de::MapAccess<'a> for MapAcc<'a> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(self.de.child(k)).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(v) => seed.deserialize(self.de.child(v)),
            None => Err(self.de.fail("a mapping value was read before its key")),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAcc<'a> {
    de: NodeDe<'a>,
    variant: &'a ConfigNode,
    value: Option<&'a ConfigNode>,
}

impl<'a> de::EnumAccess<'a> for EnumAcc<'a> {
    type Error = DeError;
    type Variant = VariantAcc<'a>;
    fn variant_seed<V: DeserializeSeed<'a>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantAcc<'a>), DeError> {
        // The variant's own errors (unknown name) are located at the name, but hiding acts on the whole entry.
        let name_de = NodeDe::new(self.variant, self.de.entry, self.de.hidden);
        let v = seed.deserialize(name_de)?;
        Ok((
            v,
            VariantAcc {
                de: self.de,
                variant: self.variant,
                value: self.value,
            },
        ))
    }
}

struct VariantAcc<'a> {
    de: NodeDe<'a>,
    variant: &'a ConfigNode,
    value: Option<&'a ConfigNode>,
}

impl<'a> VariantAcc<'a> {
    fn name(&self) -> String {
        key_text(self.variant)
    }

    fn content(&self) -> Result<NodeDe<'a>, DeError> {
        match self.value {
            Some(v) => Ok(NodeDe::new(v, self.de.entry, self.de.hidden)),
            None => {
                let name = self.name();
                Err(
                    NodeDe::new(self.variant, self.de.entry, self.de.hidden).fail(format!(
                        "`{name}` needs a value: write it as `{name}: <value>`"
                    )),
                )
            }
        }
    }
}

impl<'a> de::VariantAccess<'a> for VariantAcc<'a> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        match self.value {
            None => Ok(()),
            Some(v) if v.is_null() => Ok(()),
            Some(v) => Err(NodeDe::new(v, self.de.entry, self.de.hidden).fail(format!(
                "`{}` takes no value: write just `{}`",
                self.name(),
                self.name()
            ))),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self.content()?)
    }
    fn tuple_variant<V: Visitor<'a>>(self, len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.content()?.deserialize_tuple(len, visitor)
    }
    fn struct_variant<V: Visitor<'a>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.content()?.deserialize_struct("", fields, visitor)
    }
}
