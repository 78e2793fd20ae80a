//! `acl_file` in mosquitto's syntax:
//!
//! ```text
//! # comment
//! topic read $SYS/#             # before any `user` line: for anonymous clients
//! user alice
//! topic readwrite plant/#       # for alice
//! topic deny plant/secret/#
//! pattern write clients/%c/#    # wherever it stands: for every client
//! ```
//!
//! `topic|pattern [read|write|readwrite|deny] <filter>`; without an access word the rule is `readwrite` (and a
//! single word is the filter, as in mosquitto). `read` covers subscribing and receiving, `write` publishing.
//! `topic` lines belong to the section they are in: the one before any `user` line applies to anonymous
//! clients, `user <name>` starts a user's section. `pattern` lines apply to every client and are the only
//! place where `%u` and `%c` are substituted.
//!
//! Mosquitto checks a client's `topic` rules before the patterns, denials first in each group, and the first
//! match decides. The file becomes rules in exactly that order: section denials, section grants, pattern
//! denials, pattern grants (so they keep mosquitto's meaning under the broker's first-match rule).
//!
//! Stricter than mosquitto, which skips lines it does not understand: an unknown keyword or access word, a
//! missing user name or an invalid filter is an error with its line and column.
use crate::broker::config::{AclAccess, AclRule, AclWho};
use crate::mqtt::valid_topic_filter;

use super::FileError;

/// Largest ACL file read.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Longest line accepted.
pub const MAX_LINE: usize = 4096;

/// Parses a whole file into rules in evaluation order; every problem is reported.
pub fn parse(text: &str) -> Result<Vec<AclRule>, Vec<FileError>> {
    let mut errors = Vec::new();
    let mut section: Option<String> = None;
    // Section denials, section grants, pattern denials, pattern grants.
    let mut groups: [Vec<AclRule>; 4] = Default::default();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i as u32 + 1;
        let l = raw.strip_suffix('\r').unwrap_or(raw);
        if l.len() > MAX_LINE {
            errors.push(FileError::new(
                line,
                1,
                format!("line longer than {MAX_LINE} bytes"),
            ));
            continue;
        }
        let body = l.trim_start();
        let indent = l.len() - body.len();
        let body = body.trim_end();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let (keyword, rest, rest_at) = word(body, indent);
        match keyword {
            "user" => {
                if rest.is_empty() {
                    errors.push(FileError::new(
                        line,
                        col(indent),
                        "`user` needs a user name",
                    ));
                } else {
                    section = Some(rest.to_string());
                }
            }
            "topic" | "pattern" => {
                if rest.is_empty() {
                    errors.push(FileError::new(
                        line,
                        col(indent),
                        format!("`{keyword}` needs a topic filter"),
                    ));
                    continue;
                }
                let (first, after, after_at) = word(rest, rest_at);
                let (access, filter, filter_at) = if after.is_empty() {
                    (Ok((AclAccess::All, true)), first, rest_at)
                } else {
                    let a = match first {
                        "read" => Ok((AclAccess::Subscribe, true)),
                        "write" => Ok((AclAccess::Publish, true)),
                        "readwrite" => Ok((AclAccess::All, true)),
                        "deny" => Ok((AclAccess::All, false)),
                        other => Err(FileError::new(
                            line,
                            col(rest_at),
                            format!(
                                "unknown access `{other}`: expected read, write, readwrite or deny"
                            ),
                        )),
                    };
                    (a, after, after_at)
                };
                let (access, allow) = match access {
                    Ok(a) => a,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                if !valid_topic_filter(filter) {
                    errors.push(FileError::new(
                        line,
                        col(filter_at),
                        format!("invalid topic filter `{filter}` (`+` and `#` must be whole levels, `#` the last)"),
                    ));
                    continue;
                }
                let pattern = keyword == "pattern";
                if !pattern && (filter.contains("%u") || filter.contains("%c")) {
                    errors.push(FileError::new(
                        line,
                        col(filter_at),
                        "`%u` and `%c` are substituted only in `pattern` lines",
                    ));
                    continue;
                }
                let who = match (pattern, &section) {
                    (true, _) => AclWho::Everyone,
                    (false, None) => AclWho::Anonymous,
                    (false, Some(u)) => AclWho::User(u.clone()),
                };
                let group = usize::from(pattern) * 2 + usize::from(allow);
                groups[group].push(AclRule {
                    who,
                    filter: filter.to_string(),
                    access,
                    allow,
                });
            }
            other => errors.push(FileError::new(
                line,
                col(indent),
                format!("unknown keyword `{other}`: expected `user`, `topic` or `pattern`"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(groups.into_iter().flatten().collect())
    } else {
        Err(errors)
    }
}

fn col(offset: usize) -> u32 {
    u32::try_from(offset + 1).unwrap_or(u32::MAX)
}

/// Splits the first whitespace-separated word off `s` (which starts at byte `at` of the line): the word, the
/// rest with its leading whitespace removed, and where that rest starts.
fn word(s: &str, at: usize) -> (&str, &str, usize) {
    match s.find([' ', '\t']) {
        None => (s, "", at + s.len()),
        Some(end) => {
            let rest = &s[end..];
            let trimmed = rest.trim_start();
            (&s[..end], trimmed, at + end + (rest.len() - trimmed.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(who: AclWho, filter: &str, access: AclAccess, allow: bool) -> AclRule {
        AclRule {
            who,
            filter: filter.into(),
            access,
            allow,
        }
    }

    #[test]
    fn sections_patterns_and_mosquitto_order() {
        let text = concat!(
            "# comment\n",
            "topic read $SYS/#\n",
            "\n",
            "user alice\n",
            "topic readwrite plant/#\n",
            "  topic deny plant/secret/#\n",
            "pattern write clients/%c/#\n",
            "user bob smith\n",
            "topic plant/public\n",
            "pattern deny clients/%u/admin\r\n",
        );
        let rules = parse(text).unwrap();
        let alice = || AclWho::User("alice".into());
        assert_eq!(
            rules,
            vec![
                r(alice(), "plant/secret/#", AclAccess::All, false),
                r(AclWho::Anonymous, "$SYS/#", AclAccess::Subscribe, true),
                r(alice(), "plant/#", AclAccess::All, true),
                r(
                    AclWho::User("bob smith".into()),
                    "plant/public",
                    AclAccess::All,
                    true
                ),
                r(AclWho::Everyone, "clients/%u/admin", AclAccess::All, false),
                r(AclWho::Everyone, "clients/%c/#", AclAccess::Publish, true),
            ]
        );
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let text = concat!(
            "topic read a/#\n",
            "topic reed a/b\n",
            "user\n",
            "topic write a/#/b\n",
            "  frobnicate x\n",
            "topic write c/%c\n",
            "topic\n",
        );
        let errors = parse(text).unwrap_err();
        let got: Vec<(u32, u32)> = errors.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(
            got,
            vec![(2, 7), (3, 1), (4, 13), (5, 3), (6, 13), (7, 1)],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("`reed`"));
        let long = format!("topic {}", "a".repeat(MAX_LINE));
        assert_eq!(parse(&long).unwrap_err()[0].line, 1);
    }
}
