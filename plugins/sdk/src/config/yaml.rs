//! YAML text -> [`ConfigNode`] tree, on the event API of `saphyr-parser` (a maintained, pure-Rust YAML 1.2
//! parser that reports the position of every event, which serde-based YAML crates throw away).
//!
//! Typing follows the YAML 1.2 core schema: plain `true`/`false`, `null`/`~`/empty, decimal, `0x` and `0o`
//! integers and floats (with `.inf`/`.nan`) are typed; everything quoted, and every other plain scalar, is a
//! string. YAML 1.1's `yes`/`no`/`on`/`off` are strings, so `enabled: yes` is reported as a type error rather
//! than silently read as true.
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use super::{ConfigError, ConfigNode, Mark, NodeKind};

/// Deeper nesting than this is refused: real configuration is a few levels deep, and the deserializer and
/// `Drop` recurse over the tree.
const MAX_DEPTH: usize = 64;
/// Cap on the nodes of one file, aliases expanded: a handful of aliases of aliases ("billion laughs") must not
/// exhaust memory.
const MAX_NODES: usize = 1_000_000;

/// Looks up an environment variable by name (`None`: unset).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// How [`parse_yaml_with`] treats scalars.
#[derive(Default)]
pub struct ParseOptions<'a> {
    /// Resolves environment variables for `${NAME}` references in values (not keys). `None`: values are kept
    /// as written. See [`parse_yaml_with`] for the syntax.
    pub env: Option<EnvLookup<'a>>,
}

impl fmt::Debug for ParseOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParseOptions")
            .field("env", &self.env.is_some())
            .finish()
    }
}

/// A parsed file: the tree, plus the problems that did not stop parsing (duplicate keys, unset environment
/// variables, unsupported tags). The tree is usable: a duplicate key keeps its first value, a scalar whose
/// `${NAME}` could not be resolved keeps its text as written (as a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The document's root (a null node at 1:1 for an empty file).
    pub root: ConfigNode,
    /// Problems found, in file order.
    pub errors: Vec<ConfigError>,
}

/// Parses `text` (read from `file`, used in marks) with no environment substitution; any problem is an error.
pub fn parse_yaml(file: &str, text: &str) -> Result<ConfigNode, Vec<ConfigError>> {
    match parse_yaml_with(file, text, &ParseOptions::default()) {
        Ok(p) if p.errors.is_empty() => Ok(p.root),
        Ok(p) => Err(p.errors),
        Err(e) => Err(vec![e]),
    }
}

/// Parses `text` (read from `file`, used in marks) into a position-carrying tree.
///
/// - A YAML syntax error stops parsing: it is the `Err`, at the position the parser gave up.
/// - A file holds one document; a second `---` document is an error.
/// - A key repeated in one mapping is an error at the second occurrence (the first value is kept).
/// - Anchors and aliases are supported: an alias is a copy of the anchored node, its key paths rewritten to
///   where the alias is used while its marks still point at the anchored text. The `<<` merge key (a mapping,
///   or a list of mappings, usually aliases) is supported too: keys written in the mapping win over merged
///   ones, and earlier merged mappings win over later ones. This is how a device map shares settings between
///   points without a templating language.
/// - Tags: the core-schema tags (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!map`, `!!seq`) are
///   honoured (`!!str 0012` stays text); any other tag is an error, since nothing would interpret it.
/// - With [`ParseOptions::env`], `${NAME}` in a value is replaced by the variable's value, and
///   `${NAME:-default}` falls back to `default` when the variable is unset or empty; `$${` writes a literal
///   `${`. Substitution happens before typing for plain scalars (`port: ${PORT}` is an integer) but a quoted
///   value stays a string (`password: "${PASSWORD}"` is text even when the password is all digits). An unset
///   variable is an error at the value.
pub fn parse_yaml_with(
    file: &str,
    text: &str,
    options: &ParseOptions<'_>,
) -> Result<Parsed, ConfigError> {
    let mut b = Builder {
        file: Arc::from(file),
        env: options.env,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        errors: Vec::new(),
        root: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(ev) = parser.next_event() {
        match ev {
            Ok((ev, span)) => b.event(ev, span)?,
            Err(e) => {
                let m = e.marker();
                let mark = Mark {
                    file: b.file.clone(),
                    line: m.line() as u32,
                    col: m.col() as u32 + 1,
                };
                return Err(ConfigError {
                    mark,
                    path: b.current_path(),
                    message: format!("YAML syntax error: {}{}", e.info(), syntax_hint(e.info())),
                });
            }
        }
    }
    let root = b.root.take().unwrap_or_else(|| {
        ConfigNode::null(
            Mark {
                file: b.file.clone(),
                line: 1,
                col: 1,
            },
            "",
        )
    });
    Ok(Parsed {
        root,
        errors: b.errors,
    })
}

struct Builder<'o> {
    file: Arc<str>,
    env: Option<EnvLookup<'o>>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (ConfigNode, usize)>,
    nodes: usize,
    errors: Vec<ConfigError>,
    root: Option<ConfigNode>,
    documents: usize,
}

struct Frame {
    mark: Mark,
    path: String,
    anchor: usize,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<ConfigNode>),
    Map {
        entries: Vec<(ConfigNode, ConfigNode)>,
        /// The key whose value comes next; `merge` for a plain `<<`.
        key: Option<(ConfigNode, bool)>,
        /// The mappings named by `<<`, in order.
        merges: Vec<ConfigNode>,
    },
}

/// Where the next node goes.
enum Slot {
    Root,
    Item(String),
    Key,
    Value(String),
}

impl Builder<'_> {
    fn mark(&self, span: &Span) -> Mark {
        Mark {
            file: self.file.clone(),
            line: span.start.line() as u32,
            col: span.start.col() as u32 + 1,
        }
    }

    fn fatal(&self, mark: Mark, path: String, message: impl Into<String>) -> ConfigError {
        ConfigError {
            mark,
            path,
            message: message.into(),
        }
    }

    /// The path of the innermost node being built, for syntax errors.
    fn current_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame {
                kind: FrameKind::Map {
                    key: Some((k, _)), ..
                },
                ..
            }) => k.path.clone(),
            Some(f) => f.path.clone(),
        }
    }

    fn slot(&self) -> Slot {
        match self.stack.last() {
            None => Slot::Root,
            Some(f) => match &f.kind {
                FrameKind::Seq(items) => Slot::Item(format!("{}[{}]", f.path, items.len())),
                FrameKind::Map { key: None, .. } => Slot::Key,
                FrameKind::Map {
                    key: Some((k, _)), ..
                } => Slot::Value(k.path.clone()),
            },
        }
    }

    fn parent_path(&self) -> &str {
        self.stack.last().map_or("", |f| f.path.as_str())
    }

    fn count(&mut self, n: usize, mark: &Mark, path: &str) -> Result<(), ConfigError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(self.fatal(
                mark.clone(),
                path.to_string(),
                format!("the file expands to more than {MAX_NODES} nodes (aliases of aliases?)"),
            ));
        }
        Ok(())
    }

    fn event(&mut self, ev: Event<'_>, span: Span) -> Result<(), ConfigError> {
        let mark = self.mark(&span);
        match ev {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self.fatal(
                        mark,
                        String::new(),
                        "a configuration file holds one YAML document, found a second one (`---`)",
                    ));
                }
                Ok(())
            }
            Event::Alias(id) => {
                let path = match self.slot() {
                    Slot::Root => String::new(),
                    Slot::Item(p) | Slot::Value(p) => p,
                    Slot::Key => {
                        let Some((node, _)) = self.anchors.get(&id) else {
                            return Err(self.fatal(mark, self.current_path(), "unknown anchor"));
                        };
                        if matches!(node.kind, NodeKind::Seq(_) | NodeKind::Map(_)) {
                            return Err(self.fatal(
                                mark,
                                self.current_path(),
                                "a mapping key must be a scalar, not an alias of a list or mapping",
                            ));
                        }
                        let mut key = node.clone();
                        key.path = child_path(self.parent_path(), &key_text(&key));
                        key.mark = mark;
                        return self.attach(key);
                    }
                };
                let Some((node, n)) = self.anchors.get(&id) else {
                    return Err(self.fatal(mark, path, "unknown anchor"));
                };
                let (mut node, n) = (node.clone(), *n);
                self.count(n, &mark, &path)?;
                repath(&mut node, &path);
                self.attach(node)
            }
            Event::Scalar(value, style, anchor, tag) => {
                self.count(1, &mark, "")?;
                let (path, is_key) = match self.slot() {
                    Slot::Root => (String::new(), false),
                    Slot::Item(p) | Slot::Value(p) => (p, false),
                    Slot::Key => (String::new(), true),
                };
                let merge = is_key && style == ScalarStyle::Plain && tag.is_none() && value == "<<";
                let kind = self.scalar_kind(value, style, tag.as_deref(), is_key, &mark, &path);
                let path = if is_key {
                    child_path(self.parent_path(), &key_text_of(&kind))
                } else {
                    path
                };
                let node = ConfigNode { kind, mark, path };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), 1));
                }
                if is_key {
                    if let Some(Frame {
                        kind: FrameKind::Map { key, .. },
                        ..
                    }) = self.stack.last_mut()
                    {
                        *key = Some((node, merge));
                    }
                    Ok(())
                } else {
                    self.attach(node)
                }
            }
            Event::SequenceStart(anchor, tag) => {
                self.start(mark, anchor, tag.as_deref(), FrameKind::Seq(Vec::new()))
            }
            Event::MappingStart(anchor, tag) => self.start(
                mark,
                anchor,
                tag.as_deref(),
                FrameKind::Map {
                    entries: Vec::new(),
                    key: None,
                    merges: Vec::new(),
                },
            ),
            Event::SequenceEnd | Event::MappingEnd => self.end(),
        }
    }

    fn start(
        &mut self,
        mark: Mark,
        anchor: usize,
        tag: Option<&Tag>,
        kind: FrameKind,
    ) -> Result<(), ConfigError> {
        let path = match self.slot() {
            Slot::Root => String::new(),
            Slot::Item(p) | Slot::Value(p) => p,
            Slot::Key => {
                return Err(self.fatal(
                    mark,
                    self.current_path(),
                    "a mapping key must be a scalar, not a list or mapping",
                ))
            }
        };
        self.count(1, &mark, &path)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.fatal(
                mark,
                path,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        if let Some(tag) = tag {
            let want = if matches!(kind, FrameKind::Seq(_)) {
                "seq"
            } else {
                "map"
            };
            if !(tag.is_yaml_core_schema() && tag.suffix == want) {
                self.errors.push(ConfigError {
                    mark: mark.clone(),
                    path: path.clone(),
                    message: format!("unsupported tag `{}`", show_tag(tag)),
                });
            }
        }
        self.stack.push(Frame {
            mark,
            path,
            anchor,
            kind,
        });
        Ok(())
    }

    fn end(&mut self) -> Result<(), ConfigError> {
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        let kind = match frame.kind {
            FrameKind::Seq(items) => NodeKind::Seq(items),
            FrameKind::Map {
                mut entries,
                merges,
                ..
            } => {
                for source in merges {
                    let NodeKind::Map(src) = source.kind else {
                        continue;
                    };
                    for (k, v) in src {
                        if entries.iter().any(|(e, _)| e.kind == k.kind) {
                            continue;
                        }
                        let p = child_path(&frame.path, &key_text(&k));
                        let mut k = k;
                        k.path = p.clone();
                        let mut v = v;
                        repath(&mut v, &p);
                        entries.push((k, v));
                    }
                }
                NodeKind::Map(entries)
            }
        };
        let node = ConfigNode {
            kind,
            mark: frame.mark,
            path: frame.path,
        };
        if frame.anchor > 0 {
            let n = node_count(&node);
            self.anchors.insert(frame.anchor, (node.clone(), n));
        }
        self.attach(node)
    }

    /// Puts a finished node where it belongs: the root, a list item, or the value of the pending key.
    fn attach(&mut self, node: ConfigNode) -> Result<(), ConfigError> {
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match &mut frame.kind {
            FrameKind::Seq(items) => items.push(node),
            FrameKind::Map {
                entries,
                key,
                merges,
            } => match key.take() {
                // An alias used as a key: it becomes the pending key.
                None => *key = Some((node, false)),
                Some((k, true)) => match node.kind {
                    NodeKind::Map(_) => merges.push(node),
                    NodeKind::Seq(items)
                        if items.iter().all(|i| matches!(i.kind, NodeKind::Map(_))) =>
                    {
                        merges.extend(items)
                    }
                    _ => self.errors.push(ConfigError {
                        mark: k.mark,
                        path: k.path,
                        message: format!(
                            "the merge key `<<` takes a mapping or a list of mappings, found {}",
                            node.type_name()
                        ),
                    }),
                },
                Some((k, false)) => {
                    if let Some((first, _)) = entries.iter().find(|(e, _)| e.kind == k.kind) {
                        self.errors.push(ConfigError {
                            message: format!(
                                "duplicate key `{}` (first defined at line {}, column {})",
                                key_text(&k),
                                first.mark.line,
                                first.mark.col
                            ),
                            mark: k.mark,
                            path: k.path,
                        });
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
        Ok(())
    }

    fn scalar_kind(
        &mut self,
        value: Cow<'_, str>,
        style: ScalarStyle,
        tag: Option<&Tag>,
        is_key: bool,
        mark: &Mark,
        path: &str,
    ) -> NodeKind {
        let mut text = value.into_owned();
        if let (Some(env), false) = (self.env, is_key) {
            match substitute(&text, env) {
                Ok(t) => text = t,
                Err(problems) => {
                    for message in problems {
                        self.errors.push(ConfigError {
                            mark: mark.clone(),
                            path: path.to_string(),
                            message,
                        });
                    }
                    return NodeKind::String(text);
                }
            }
        }
        if let Some(tag) = tag {
            if tag.handle == "!" && tag.suffix.is_empty() {
                return NodeKind::String(text);
            }
            let typed =
                if tag.is_yaml_core_schema() {
                    match tag.suffix.as_str() {
                        "str" => Some(NodeKind::String(text.clone())),
                        "int" => resolve_int(&text),
                        "float" => resolve_float(&text)
                            .or_else(|| resolve_int(&text))
                            .map(|k| match k {
                                NodeKind::Int(i) => NodeKind::Float(i as f64),
                                k => k,
                            }),
                        "bool" => resolve_bool(&text).map(NodeKind::Bool),
                        "null" => is_null(&text).then_some(NodeKind::Null),
                        _ => None,
                    }
                } else {
                    None
                };
            return match typed {
                Some(k) => k,
                None => {
                    self.errors.push(ConfigError {
                        mark: mark.clone(),
                        path: path.to_string(),
                        message: if tag.is_yaml_core_schema()
                            && ["int", "float", "bool", "null"].contains(&tag.suffix.as_str())
                        {
                            format!("`{text}` is not a valid `{}`", show_tag(tag))
                        } else {
                            format!("unsupported tag `{}`", show_tag(tag))
                        },
                    });
                    NodeKind::String(text)
                }
            };
        }
        if style == ScalarStyle::Plain {
            resolve_plain(text)
        } else {
            NodeKind::String(text)
        }
    }
}

/// The usual cause of the parser's most common complaints, in the words of someone editing a config file.
fn syntax_hint(info: &str) -> &'static str {
    if info.contains("quoted scalar") {
        "; is a closing quote missing?"
    } else if info.contains("tab") {
        "; indent with spaces, not tabs"
    } else if info.contains("did not find expected key")
        || info.contains("did not find expected '-'")
        || info.contains("invalid indentation")
        || info.contains("mapping values are not allowed")
    {
        "; check the indentation of this line and the lines above it"
    } else {
        ""
    }
}

fn show_tag(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else {
        tag.to_string()
    }
}

/// `parent.key`, or `key` at the root.
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A key as it appears in a key path.
pub(crate) fn key_text(node: &ConfigNode) -> String {
    key_text_of(&node.kind)
}

fn key_text_of(kind: &NodeKind) -> String {
    match kind {
        NodeKind::Null => "~".to_string(),
        NodeKind::Bool(b) => b.to_string(),
        NodeKind::Int(i) => i.to_string(),
        NodeKind::Float(f) => f.to_string(),
        NodeKind::String(s) => s.clone(),
        NodeKind::Seq(_) => "[..]".to_string(),
        NodeKind::Map(_) => "{..}".to_string(),
    }
}

/// Rewrites the key paths of a copied subtree to its new place (marks are kept: they point at the text).
pub(crate) fn repath(node: &mut ConfigNode, path: &str) {
    node.path = path.to_string();
    match &mut node.kind {
        NodeKind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                repath(item, &format!("{path}[{i}]"));
            }
        }
        NodeKind::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let p = child_path(path, &key_text(k));
                k.path = p.clone();
                repath(v, &p);
            }
        }
        _ => {}
    }
}

fn node_count(node: &ConfigNode) -> usize {
    1 + match &node.kind {
        NodeKind::Seq(items) => items.iter().map(node_count).sum(),
        NodeKind::Map(entries) => entries
            .iter()
            .map(|(k, v)| node_count(k) + node_count(v))
            .sum(),
        _ => 0,
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

fn resolve_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn resolve_int(s: &str) -> Option<NodeKind> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Parse the magnitude as u128 so that i64::MIN and integers beyond i64 are handled exactly.
    let mag = u128::from_str_radix(digits, radix).ok();
    let value = mag.and_then(|m| {
        if neg {
            0i128.checked_sub(m as i128)
        } else {
            Some(m as i128)
        }
    });
    match value.and_then(|v| i64::try_from(v).ok()) {
        Some(i) => Some(NodeKind::Int(i)),
        None => {
            // Too large for i64: a float, as the node model documents.
            let f = mag.map_or(f64::INFINITY, |m| m as f64);
            Some(NodeKind::Float(if neg { -f } else { f }))
        }
    }
}

fn resolve_float(s: &str) -> Option<NodeKind> {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    match body {
        ".inf" | ".Inf" | ".INF" => {
            return Some(NodeKind::Float(if s.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }))
        }
        ".nan" | ".NaN" | ".NAN" if body.len() == s.len() => {
            return Some(NodeKind::Float(f64::NAN))
        }
        _ => {}
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let b = body.as_bytes();
    let mut i = 0;
    let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    if i != b.len() {
        return None;
    }
    s.parse::<f64>().ok().map(NodeKind::Float)
}

/// Types a plain scalar by the YAML 1.2 core schema.
fn resolve_plain(text: String) -> NodeKind {
    if is_null(&text) {
        return NodeKind::Null;
    }
    if let Some(b) = resolve_bool(&text) {
        return NodeKind::Bool(b);
    }
    if let Some(k) = resolve_int(&text).or_else(|| resolve_float(&text)) {
        return k;
    }
    NodeKind::String(text)
}

/// Replaces `${NAME}`, `${NAME:-default}` and `$${`; returns every problem found.
fn substitute(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                problems.push(format!(
                    "unterminated `${{` in `{text}` (write `$${{` for a literal `${{`)"
                ));
                out.push_str(tail);
                rest = "";
                break;
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push(format!(
                    "invalid environment variable reference `${{{inner}}}`: expected `${{NAME}}` or `${{NAME:-default}}`"
                ));
            } else {
                match (env(name), default) {
                    (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        problems.push(format!("environment variable `{name}` is not set"))
                    }
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
