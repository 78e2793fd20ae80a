//! The configuration toolkit every component's validation is written with: [`Cx`], the state of one load
//! (errors collected with file:line:col and key path, warnings, the main file's directory, `${VAR}` lookup),
//! and the generic readers on it (a section's partial deserialization, YAML files, paths relative to the
//! main file, files that must exist, bounded file reads, `password`/`password_file` secrets, `bind`
//! addresses, topic templates expanded at load time), plus [`topics`], the string grammars they share.
//!
//! It sits below the components (it imports only the SDK and `mqtt`): `broker/config.rs`,
//! `store/config.rs` and `bridge/config.rs` validate their own sections with it (`impl Cx` blocks next to
//! their raw and typed forms), and `config/` assembles the whole load (files, globs, device maps, the
//! gateway, API, logging and device sections, cross-section checks).
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use fieldbridge_sdk::config::{parse_yaml_with, EnvLookup, ParseOptions, Spanned};
use fieldbridge_sdk::{ConfigError, ConfigNode, Mark};
use serde::de::DeserializeOwned;

pub(crate) mod topics;

/// The collected state of one load.
pub(crate) struct Cx<'a> {
    pub(crate) errors: Vec<ConfigError>,
    /// Positions that already have a parse-level error (an unset `${VAR}`, an unsupported tag): later errors at
    /// the same place are consequences, not news.
    pub(crate) noted: HashSet<Mark>,
    pub(crate) base: PathBuf,
    pub(crate) env: EnvLookup<'a>,
    /// Warnings (never a reason to refuse the load).
    pub(crate) warnings: Vec<ConfigError>,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(base: PathBuf, env: EnvLookup<'a>) -> Self {
        Cx {
            errors: Vec::new(),
            noted: HashSet::new(),
            base,
            env,
            warnings: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, e: ConfigError) {
        if !self.noted.contains(&e.mark) {
            self.errors.push(e);
        }
    }

    pub(crate) fn extend(&mut self, errors: impl IntoIterator<Item = ConfigError>) {
        for e in errors {
            self.push(e);
        }
    }

    pub(crate) fn at<T>(&mut self, s: &Spanned<T>, message: impl Into<String>) {
        self.push(s.error(message));
    }

    pub(crate) fn at_node(&mut self, n: &ConfigNode, message: impl Into<String>) {
        self.push(n.error(message));
    }

    /// Reads an optional section: its defaults when absent, the part that could be read (bad optional keys
    /// left at their defaults, their errors recorded) when present.
    pub(crate) fn read<T: DeserializeOwned + Default>(
        &mut self,
        node: Option<&ConfigNode>,
    ) -> Option<T> {
        match node {
            None => Some(T::default()),
            Some(n) => self.read_req(n),
        }
    }

    /// Reads a node; `None` when not even a partial value could be built (errors recorded either way), so the
    /// checks that follow still run on whatever was readable.
    pub(crate) fn read_req<T: DeserializeOwned>(&mut self, node: &ConfigNode) -> Option<T> {
        let (value, errors) = node.deserialize_partial::<T>();
        self.extend(errors);
        value
    }

    /// Reads and parses one YAML file. `reference` is where a device map was named (its errors go there).
    pub(crate) fn read_yaml(
        &mut self,
        path: &Path,
        reference: Option<&Spanned<String>>,
    ) -> Option<ConfigNode> {
        let file = path.display().to_string();
        let text = match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    self.push(ConfigError {
                        mark: Mark::file(file.as_str()),
                        path: String::new(),
                        message: "the file is not valid UTF-8".into(),
                    });
                    return None;
                }
            },
            Err(e) => {
                match reference {
                    Some(r) => self.at(
                        r,
                        format!("cannot read device map `{file}`: {}", io_msg(&e)),
                    ),
                    None => self.push(ConfigError {
                        mark: Mark::file(file.as_str()),
                        path: String::new(),
                        message: format!("cannot read the configuration file: {}", io_msg(&e)),
                    }),
                }
                return None;
            }
        };
        let env = self.env;
        let options = ParseOptions { env: Some(env) };
        match parse_yaml_with(&file, &text, &options) {
            Ok(parsed) => {
                for e in parsed.errors {
                    self.noted.insert(e.mark.clone());
                    self.errors.push(e);
                }
                Some(parsed.root)
            }
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    pub(crate) fn resolve(&self, p: &str) -> PathBuf {
        resolve(&self.base, p)
    }

    /// A path that must name an existing file (TLS material): checked now, so a typo fails `check`, not the
    /// first TLS handshake.
    pub(crate) fn existing_file(&mut self, s: &Spanned<String>, what: &str) -> PathBuf {
        let p = self.resolve(&s.value);
        if !p.is_file() {
            let msg = if p.as_os_str() == s.value.as_str() {
                format!("{what} `{}` not found", s.value)
            } else {
                format!(
                    "{what} `{}` not found (looked for `{}`)",
                    s.value,
                    p.display()
                )
            };
            self.at(s, msg);
        }
        p
    }

    /// `password` or `password_file` (never both); the file's trailing newline is not part of the secret.
    pub(crate) fn secret(
        &mut self,
        value: Option<Spanned<String>>,
        file: Option<Spanned<String>>,
        key: &str,
    ) -> Option<String> {
        match (value, file) {
            (Some(_), Some(f)) => {
                self.at(&f, format!("set either `{key}` or `{key}_file`, not both"));
                None
            }
            (Some(v), None) => Some(v.value),
            (None, Some(f)) => {
                let p = self.resolve(&f.value);
                match std::fs::read_to_string(&p) {
                    Ok(s) => {
                        let s = s.trim_end_matches(['\n', '\r']).to_string();
                        if s.is_empty() {
                            self.at(&f, format!("{key} file `{}` is empty", p.display()));
                        }
                        Some(s)
                    }
                    Err(e) => {
                        self.at(
                            &f,
                            format!("cannot read {key} file `{}`: {}", p.display(), io_msg(&e)),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }

    /// Expands a topic template whose placeholders are all known now and checks the result is a topic name.
    pub(crate) fn gateway_topic(
        &mut self,
        given: Option<&Spanned<String>>,
        default: &str,
        known: &[(&str, &str)],
    ) -> Option<String> {
        let text = given.map_or(default, |s| s.value.as_str());
        match topics::expand(text, known).and_then(|t| topics::check_topic_name(&t).map(|()| t)) {
            Ok(t) => Some(t),
            Err(m) => {
                // A default only fails through the gateway id, which is reported already.
                if let Some(s) = given {
                    self.at(s, m);
                }
                None
            }
        }
    }

    pub(crate) fn bind(&mut self, s: &Spanned<String>, default_port: u16) -> Option<SocketAddr> {
        let text = s.value.trim();
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        if let Ok(ip) = text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Some(SocketAddr::new(ip, default_port));
        }
        if let Some(port) = text.strip_prefix("localhost:") {
            if let Ok(p) = port.parse::<u16>() {
                return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
            }
        }
        if text == "localhost" {
            return Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                default_port,
            ));
        }
        self.at(
            s,
            format!("invalid bind address `{text}`: expected `IP:port`, like `127.0.0.1:{default_port}`, `0.0.0.0:{default_port}` or `[::]:{default_port}`"),
        );
        None
    }

    /// Reads a file named by `s` whole, refusing one larger than `max` bytes or not UTF-8.
    pub(crate) fn read_bounded(
        &mut self,
        s: &Spanned<String>,
        what: &str,
        max: u64,
    ) -> Option<(String, String)> {
        use std::io::Read;
        let p = self.resolve(&s.value);
        let shown = p.display().to_string();
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&p).and_then(|f| f.take(max + 1).read_to_end(&mut bytes));
        if let Err(e) = read {
            self.at(s, format!("cannot read {what} `{shown}`: {}", io_msg(&e)));
            return None;
        }
        if bytes.len() as u64 > max {
            self.at(s, format!("{what} `{shown}` is larger than {max} bytes"));
            return None;
        }
        match String::from_utf8(bytes) {
            Ok(t) => Some((shown, t)),
            Err(_) => {
                self.at(s, format!("{what} `{shown}` is not valid UTF-8"));
                None
            }
        }
    }
}

pub(crate) fn positive(
    cx: &mut Cx<'_>,
    s: Option<&Spanned<usize>>,
    default: usize,
    key: &str,
) -> usize {
    match s {
        None => default,
        Some(s) if s.value == 0 => {
            cx.at(s, format!("{key} must be at least 1"));
            default
        }
        Some(s) => s.value,
    }
}

/// Where `first` is, seen from `here`: `line 8, column 15` in the same file, the full `file:line:col` across
/// files.
pub(crate) fn place(first: &Mark, here: &Mark) -> String {
    if first.file == here.file {
        format!("line {}, column {}", first.line, first.col)
    } else {
        first.to_string()
    }
}

/// An I/O error in a few words, without the `(os error 2)` noise.
pub(crate) fn io_msg(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "file not found".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "it is a directory".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

/// `base` joined with `p` (unless `p` is absolute), with `.` components dropped so that error messages show
/// `config/devices/a.yaml` rather than `config/./devices/a.yaml`.
pub(crate) fn resolve(base: &Path, p: &str) -> PathBuf {
    let joined = base.join(p);
    let mut out = PathBuf::new();
    for c in joined.components() {
        if c != Component::CurDir {
            out.push(c);
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
