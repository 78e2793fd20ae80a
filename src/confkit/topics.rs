//! Topic templates, topic filters and names: the string grammars the configuration's sections share.
//!
//! Each check returns a message (the caller adds the position), so the rules can be tested on plain strings.
/// A piece of a template before its placeholders are given a meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Lit(String),
    Ph(String),
}

/// Splits `a/{b}/c` into literals and placeholders. Braces must pair up; `+` and `#` are refused because a
/// template produces topic names, which cannot hold wildcards.
pub(crate) fn scan_template(text: &str) -> Result<Vec<Piece>, String> {
    if text.is_empty() {
        return Err("a topic template cannot be empty".into());
    }
    if text.starts_with('$') {
        return Err(format!(
            "topic template `{text}` starts with `$`, which is reserved for broker topics like `$SYS`"
        ));
    }
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    match c {
                        '}' => {
                            closed = true;
                            break;
                        }
                        '{' => break,
                        c => name.push(c),
                    }
                }
                if !closed {
                    return Err(format!("unbalanced `{{` in topic template `{text}`"));
                }
                if name.is_empty() {
                    return Err(format!("empty placeholder `{{}}` in topic template `{text}`"));
                }
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Ph(name));
            }
            '}' => return Err(format!("unbalanced `}}` in topic template `{text}`")),
            '+' | '#' => {
                return Err(format!(
                    "topic template `{text}` contains the wildcard `{c}`; a published topic cannot hold wildcards"
                ))
            }
            '\0' => return Err("a topic template cannot contain a NUL character".into()),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// `, did you mean `{device}`? expected one of: {gateway}, {device}, …` for an unknown placeholder.
pub(crate) fn placeholder_tail(name: &str, known: &[&str]) -> String {
    let mut out = String::new();
    if let Some(s) = fieldbridge_sdk::config::did_you_mean(name, known.iter().copied()) {
        out.push_str(&format!(", did you mean `{{{s}}}`?"));
    } else {
        out.push(',');
    }
    let list: Vec<String> = known.iter().map(|k| format!("{{{k}}}")).collect();
    out.push_str(&format!(" expected one of: {}", list.join(", ")));
    out
}

/// Renders a template whose placeholders all have values in `known`; used for templates that only name
/// things known at load time (`{gateway}`, a bridge's `{name}`).
pub(crate) fn expand(text: &str, known: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::new();
    for piece in scan_template(text)? {
        match piece {
            Piece::Lit(s) => out.push_str(&s),
            Piece::Ph(name) => match known.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    let names: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
                    return Err(format!("unknown placeholder `{{{name}}}`")
                        + &placeholder_tail(&name, &names));
                }
            },
        }
    }
    Ok(out)
}

/// Replaces `{gateway}` in a topic filter or a template and leaves every other placeholder alone (bridge
/// rules also use `{topic}` and `{1}`…, which are filled per message).
pub(crate) fn expand_gateway(text: &str, gateway: &str) -> String {
    text.replace("{gateway}", gateway)
}

/// Checks a topic filter with the project's one filter grammar ([`crate::mqtt::check_topic_filter`]); the
/// caller puts the message at the filter's position.
pub(crate) fn check_filter(filter: &str) -> Result<(), String> {
    crate::mqtt::check_topic_filter(filter).map_err(|e| e.to_string())
}

/// Number of wildcard levels in a valid filter (what `{1}`…`{n}` of a bridge template can refer to).
pub(crate) fn wildcard_count(filter: &str) -> usize {
    filter.split('/').filter(|l| *l == "+" || *l == "#").count()
}

/// Checks a bridge rule's target template: `{topic}`, `{gateway}` and `{1}`..`{wildcards}`.
pub(crate) fn check_rule_template(text: &str, wildcards: usize) -> Result<(), String> {
    for piece in scan_template(text)? {
        if let Piece::Ph(name) = piece {
            if name == "topic" || name == "gateway" {
                continue;
            }
            match name.parse::<usize>() {
                Ok(n) if n >= 1 && n <= wildcards => {}
                Ok(n) => {
                    return Err(format!(
                        "placeholder `{{{n}}}` refers to wildcard {n}, but the filter has {wildcards} wildcard{}",
                        if wildcards == 1 { "" } else { "s" }
                    ))
                }
                Err(_) => {
                    let mut known = vec!["topic".to_string(), "gateway".to_string()];
                    known.extend((1..=wildcards).map(|i| i.to_string()));
                    let known: Vec<&str> = known.iter().map(String::as_str).collect();
                    return Err(format!("unknown placeholder `{{{name}}}`")
                        + &placeholder_tail(&name, &known));
                }
            }
        }
    }
    Ok(())
}

/// A topic name: no wildcards, not empty, not `$`-prefixed.
pub(crate) fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if topic.len() > 65535 {
        return Err(format!("topic `{topic}` is longer than 65535 bytes"));
    }
    if topic.contains(['+', '#']) {
        return Err(format!("topic `{topic}` contains a wildcard (`+` or `#`)"));
    }
    if topic.starts_with('$') {
        return Err(format!(
            "topic `{topic}` starts with `$`, which is reserved for broker topics"
        ));
    }
    Ok(())
}

/// A device, point or gateway name: it becomes a topic level (or levels, for the gateway), so it cannot hold
/// wildcards, braces (they would read as placeholders) or control characters.
pub(crate) fn check_name(what: &str, name: &str, allow_slash: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} cannot be empty"));
    }
    if let Some(c) = name.chars().find(|c| {
        matches!(c, '+' | '#' | '{' | '}') || c.is_control() || (!allow_slash && *c == '/')
    }) {
        let shown = if c.is_control() {
            format!("{:?}", c)
        } else {
            format!("`{c}`")
        };
        return Err(format!(
            "{what} `{name}` contains {shown}; it is used in topics, so it cannot contain {}",
            if allow_slash {
                "`+`, `#`, `{`, `}` or control characters"
            } else {
                "`/`, `+`, `#`, `{`, `}` or control characters"
            }
        ));
    }
    if allow_slash && (name.starts_with('/') || name.ends_with('/')) {
        return Err(format!("{what} `{name}` cannot start or end with `/`"));
    }
    if name.starts_with('$') {
        return Err(format!(
            "{what} `{name}` cannot start with `$` (reserved for broker topics)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/+/b", "a/#", "+/+/#", "/a", "a//b"] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a+/b", "a/#/b", "a/b#", "a/+b"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(wildcard_count("a/+/b/#"), 2);
        assert_eq!(check_rule_template("cloud/{1}/{topic}", 1), Ok(()));
        assert!(check_rule_template("cloud/{2}", 1).is_err());
        assert!(check_rule_template("cloud/{topc}", 1)
            .unwrap_err()
            .contains("did you mean `{topic}`"));
    }

    #[test]
    fn names() {
        assert_eq!(check_name("device name", "boiler-1", false), Ok(()));
        assert!(check_name("device name", "a/b", false).is_err());
        assert_eq!(check_name("gateway id", "site1/gw", true), Ok(()));
        assert!(check_name("gateway id", "gw/", true).is_err());
        assert!(check_name("point name", "t+", false).is_err());
        assert!(check_name("point name", "", false).is_err());
    }
}
