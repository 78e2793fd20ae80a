//! `device_maps: [devices/*.yaml]`: a small glob, enough for device-map directories, without a dependency.
//!
//! Wildcards work within one path component: `*` (any run of characters), `?` (one character), `[abc]`,
//! `[a-z]`, `[!abc]`. There is no `**`. As in a shell, `*` does not match a leading `.` (editor swap files and
//! `.hidden.yaml` are not loaded by accident). Matches are sorted, so devices load in a stable order.
use std::io;
use std::path::{Component, Path, PathBuf};

/// Whether `s` is a pattern rather than a plain path.
pub(super) fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files matching `pattern`, relative to `base`, sorted. A pattern matching nothing gives an empty list;
/// an unreadable directory on the way is an error.
pub(super) fn glob(base: &Path, pattern: &str) -> io::Result<Vec<PathBuf>> {
    let full = base.join(pattern);
    let mut current: Vec<PathBuf> = vec![PathBuf::new()];
    for comp in full.components() {
        let text = comp.as_os_str().to_string_lossy();
        let wild = matches!(comp, Component::Normal(_)) && is_glob(&text);
        if !wild {
            if comp != Component::CurDir {
                for p in &mut current {
                    p.push(comp);
                }
            }
            continue;
        }
        let pat: Vec<char> = text.chars().collect();
        let mut next = Vec::new();
        for dir in &current {
            let read_from = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            let entries = match std::fs::read_dir(read_from) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && pat.first() != Some(&'.') {
                    continue;
                }
                let name_chars: Vec<char> = name.chars().collect();
                if matches(&pat, &name_chars) {
                    next.push(dir.join(&name));
                }
            }
        }
        current = next;
    }
    let mut files: Vec<PathBuf> = current.into_iter().filter(|p| p.is_file()).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Matches one component against one pattern component.
fn matches(pat: &[char], name: &[char]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some('*') => (0..=name.len()).any(|i| matches(&pat[1..], &name[i..])),
        Some('?') => !name.is_empty() && matches(&pat[1..], &name[1..]),
        Some('[') => {
            let Some(c) = name.first() else {
                return false;
            };
            match class(&pat[1..], *c) {
                Some((hit, rest)) => hit && matches(rest, &name[1..]),
                // An unclosed `[` is a literal `[`.
                None => *c == '[' && matches(&pat[1..], &name[1..]),
            }
        }
        Some(p) => name.first() == Some(p) && matches(&pat[1..], &name[1..]),
    }
}

/// Evaluates a `[...]` class (the text after `[`) against `c`: whether it matched, and the pattern after `]`.
fn class(pat: &[char], c: char) -> Option<(bool, &[char])> {
    let (negate, mut i) = match pat.first() {
        Some('!') | Some('^') => (true, 1),
        _ => (false, 0),
    };
    let mut hit = false;
    let mut first = true;
    while i < pat.len() {
        if pat[i] == ']' && !first {
            return Some((hit != negate, &pat[i + 1..]));
        }
        first = false;
        if i + 2 < pat.len() && pat[i + 1] == '-' && pat[i + 2] != ']' {
            if pat[i] <= c && c <= pat[i + 2] {
                hit = true;
            }
            i += 3;
        } else {
            if pat[i] == c {
                hit = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confkit::resolve;

    fn m(p: &str, n: &str) -> bool {
        matches(
            &p.chars().collect::<Vec<_>>(),
            &n.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn patterns() {
        assert!(m("*.yaml", "boiler.yaml"));
        assert!(!m("*.yaml", "boiler.yml"));
        assert!(m("meter-?.yaml", "meter-3.yaml"));
        assert!(m("[a-c]*.yaml", "b.yaml"));
        assert!(!m("[!a-c]*.yaml", "b.yaml"));
        assert!(m("*", ""));
        assert!(m("a[", "a["));
    }

    #[test]
    fn globbing_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("devices");
        std::fs::create_dir(&d).unwrap();
        for f in ["b.yaml", "a.yaml", ".swp.yaml", "c.txt"] {
            std::fs::write(d.join(f), "").unwrap();
        }
        let found = glob(dir.path(), "devices/*.yaml").unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yaml"]);
        assert!(glob(dir.path(), "nothing/*.yaml").unwrap().is_empty());
        assert_eq!(
            resolve(Path::new("config"), "./x/./y.db"),
            PathBuf::from("config/x/y.db")
        );
        assert_eq!(resolve(Path::new(""), "y.db"), PathBuf::from("y.db"));
        assert_eq!(
            resolve(Path::new("config"), "/abs/y.db"),
            PathBuf::from("/abs/y.db")
        );
    }
}
