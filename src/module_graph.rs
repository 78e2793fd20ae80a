//! The compile-time picture kept honest: the top-level modules of `src/` import each other without a cycle
//! (`mqtt` and `net` at the bottom, `confkit` (the configuration toolkit) above them, then the components,
//! which validate their own configuration sections with it, then `config`, `api`, `app` and `cli` that
//! assemble them). The test reads every file's `crate::…` paths, so a new `use` that closes a loop fails here with the
//! loop printed, one file per edge.
//!
//! Test-only code (`tests.rs` files and what follows `#[cfg(test)]`) is left out: a test may borrow a fixture
//! from a module above it without changing what the daemon is built from.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level module a file belongs to (`src/broker/auth/passwd.rs` -> `broker`); `None` for the crate
/// roots (`lib.rs`, `main.rs`), which declare every module and are not part of the graph.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file the daemon is built from: without `tests.rs`, the part after `#[cfg(test)]`, and `//`
/// comments (doc links name modules without importing them).
fn non_test_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("read source file");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules named by `crate::x` and by `crate::{x, y::z}` groups in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | ':')) {
            continue; // `fieldbridge_sdk::…crate::` is not ours; `$crate::` neither.
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The first level of a `{…}` group: names separated by commas at brace depth 0.
            let mut depth = 0usize;
            let mut at_name = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_name = true,
                    c if at_name && depth == 0 && !c.is_whitespace() => {
                        at_name = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() {
                            out.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Edges `from -> to` with one file that makes each.
type Graph = BTreeMap<String, BTreeMap<String, PathBuf>>;

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut graph = Graph::new();
    for file in files {
        let Some(from) = top_module(src, &file) else {
            continue;
        };
        let edges = graph.entry(from.clone()).or_default();
        for to in crate_paths(&non_test_code(&file)) {
            if to != from && to != "self" && to != "super" {
                edges.entry(to).or_insert_with(|| file.clone());
            }
        }
    }
    graph
}

/// One cycle of `graph`, as the list of modules along it (first repeated at the end), if there is any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let start = stack.iter().position(|m| m == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = visit(graph, next, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if !marks.contains_key(node) {
            if let Some(c) = visit(graph, node, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    // The scan sees the modules it must see (a parser that found nothing would pass vacuously).
    for (from, to) in [
        ("broker", "mqtt"),
        ("bridge", "net"),
        ("bridge", "confkit"),
        ("config", "broker"),
    ] {
        assert!(
            graph.get(from).is_some_and(|e| e.contains_key(to)),
            "the scan should find {from} -> {to}; it found {graph:#?}"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        let edges: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let file = &graph[&w[0]][&w[1]];
                let shown = file.strip_prefix(&src).unwrap_or(file);
                format!("  {} -> {} (in src/{})", w[0], w[1], shown.display())
            })
            .collect();
        panic!(
            "import cycle between top-level modules: {}\n{}",
            cycle.join(" -> "),
            edges.join("\n")
        );
    }
}

#[test]
fn paths_and_cycles_are_read_right() {
    let names = crate_paths(
        "use crate::{broker::{Broker, x}, mqtt};\nlet a = crate::store::f();\n$crate::no; x::crate::no;",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["broker", "mqtt", "store"]
    );
    let mut g = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), PathBuf::from("x.rs"));
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    assert_eq!(find_cycle(&g), None);
    edge(&mut g, "c", "a");
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
