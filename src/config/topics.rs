//! Topic templates, topic filters, bridge URLs and names: the string grammars of the configuration.
//!
//! Each check returns a message (the caller adds the position), so the rules can be tested on plain strings.
use fieldbridge_sdk::config::unknown_name_message;

use super::types::{BridgeScheme, BridgeUrl, TemplatePart, TopicTemplate};

/// A piece of a template before its placeholders are given a meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Lit(String),
    Ph(String),
}

/// Splits `a/{b}/c` into literals and placeholders. Braces must pair up; `+` and `#` are refused because a
/// template produces topic names, which cannot hold wildcards.
pub(super) fn scan_template(text: &str) -> Result<Vec<Piece>, String> {
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

/// A point's topic template: `{gateway}`, `{device}`, `{point}` and the device's labels.
pub(super) fn point_template(text: &str, labels: &[&str]) -> Result<TopicTemplate, String> {
    let mut parts = Vec::new();
    for piece in scan_template(text)? {
        parts.push(match piece {
            Piece::Lit(s) => TemplatePart::Literal(s),
            Piece::Ph(name) => match name.as_str() {
                "gateway" => TemplatePart::Gateway,
                "device" => TemplatePart::Device,
                "point" => TemplatePart::Point,
                n if labels.contains(&n) => TemplatePart::Label(name),
                _ => {
                    let mut known = vec!["gateway", "device", "point"];
                    known.extend(labels);
                    return Err(format!("unknown placeholder `{{{name}}}`")
                        + &placeholder_tail(&name, &known));
                }
            },
        });
    }
    Ok(TopicTemplate { parts })
}

/// `, did you mean `{device}`? expected one of: {gateway}, {device}, …` for an unknown placeholder.
fn placeholder_tail(name: &str, known: &[&str]) -> String {
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
pub(super) fn expand(text: &str, known: &[(&str, &str)]) -> Result<String, String> {
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

/// Renders a point template with everything known at load time.
pub(super) fn render(
    t: &TopicTemplate,
    gateway: &str,
    device: &str,
    point: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    for part in &t.parts {
        match part {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::Gateway => out.push_str(gateway),
            TemplatePart::Device => out.push_str(device),
            TemplatePart::Point => out.push_str(point),
            TemplatePart::Label(l) => out.push_str(labels.get(l).map_or("", String::as_str)),
        }
    }
    out
}

/// Replaces `{gateway}` in a topic filter or a template and leaves every other placeholder alone (bridge
/// rules also use `{topic}` and `{1}`…, which are filled per message).
pub(super) fn expand_gateway(text: &str, gateway: &str) -> String {
    text.replace("{gateway}", gateway)
}

/// Checks a topic filter with the project's one filter grammar ([`crate::mqtt::check_topic_filter`]); the
/// caller puts the message at the filter's position.
pub(super) fn check_filter(filter: &str) -> Result<(), String> {
    crate::mqtt::check_topic_filter(filter).map_err(|e| e.to_string())
}

/// Number of wildcard levels in a valid filter (what `{1}`…`{n}` of a bridge template can refer to).
pub(super) fn wildcard_count(filter: &str) -> usize {
    filter.split('/').filter(|l| *l == "+" || *l == "#").count()
}

/// Checks a bridge rule's target template: `{topic}`, `{gateway}` and `{1}`..`{wildcards}`.
pub(super) fn check_rule_template(text: &str, wildcards: usize) -> Result<(), String> {
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
pub(super) fn check_topic_name(topic: &str) -> Result<(), String> {
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
pub(super) fn check_name(what: &str, name: &str, allow_slash: bool) -> Result<(), String> {
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

/// Parses `mqtt://host[:port]`, `mqtts://…`, `ws://host[:port][/path]`, `wss://…`.
pub(super) fn parse_bridge_url(url: &str) -> Result<BridgeUrl, String> {
    let bad = |why: &str| Err(format!("invalid bridge url `{url}`: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("expected `mqtt://`, `mqtts://`, `ws://` or `wss://` followed by a host");
    };
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" | "tcp" => (BridgeScheme::Mqtt, 1883),
        "mqtts" | "ssl" | "tls" => (BridgeScheme::Mqtts, 8883),
        "ws" => (BridgeScheme::Ws, 80),
        "wss" => (BridgeScheme::Wss, 443),
        other => {
            return Err(format!("invalid bridge url `{url}`: ")
                + &unknown_name_message("scheme", other, &["mqtt", "mqtts", "ws", "wss"]))
        }
    };
    if rest.contains(['?', '#']) {
        return bad("query strings and fragments are not supported");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return bad("put credentials in `username` and `password`, not in the url");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return bad("unbalanced `[` in an IPv6 address");
        };
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return bad("expected `:port` after `]`"),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("the host is missing");
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return bad("the host contains spaces");
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return bad("port 0 is not a port to connect to"),
            Ok(p) => p,
            Err(_) => return bad("the port must be a number from 1 to 65535"),
        },
    };
    let path = match scheme {
        BridgeScheme::Ws | BridgeScheme::Wss => {
            if path.is_empty() {
                "/mqtt".to_string()
            } else {
                path.to_string()
            }
        }
        BridgeScheme::Mqtt | BridgeScheme::Mqtts => {
            if !path.is_empty() && path != "/" {
                return bad("a path is only meaningful with `ws://` or `wss://`");
            }
            String::new()
        }
    };
    Ok(BridgeUrl {
        scheme,
        host: host.to_string(),
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = point_template("{gateway}/{site}/{device}/{point}", &["site"]).unwrap();
        assert_eq!(t.parts.len(), 7);
        assert_eq!(
            point_template("{gateway}/{devcie}", &["site"]).unwrap_err(),
            "unknown placeholder `{devcie}`, did you mean `{device}`? expected one of: {gateway}, {device}, {point}, {site}"
        );
        assert_eq!(
            point_template("{gateway}/{zone}", &[]).unwrap_err(),
            "unknown placeholder `{zone}`, expected one of: {gateway}, {device}, {point}"
        );
        assert!(point_template("a/{b", &[])
            .unwrap_err()
            .contains("unbalanced `{`"));
        assert!(point_template("a/b}", &[])
            .unwrap_err()
            .contains("unbalanced `}`"));
        assert!(point_template("a/{{b}}", &[])
            .unwrap_err()
            .contains("unbalanced"));
        assert!(point_template("a/+/b", &[])
            .unwrap_err()
            .contains("wildcard `+`"));
        assert!(point_template("a/#", &[])
            .unwrap_err()
            .contains("wildcard `#`"));
        assert!(point_template("$SYS/x", &[])
            .unwrap_err()
            .contains("reserved"));
        assert!(point_template("", &[]).is_err());
    }

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
    fn urls() {
        let u = parse_bridge_url("mqtts://broker.example.com").unwrap();
        assert_eq!(
            (u.scheme, u.port, u.path.as_str()),
            (BridgeScheme::Mqtts, 8883, "")
        );
        let u = parse_bridge_url("wss://h:8084").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8084, "/mqtt"));
        let u = parse_bridge_url("ws://[::1]/ws").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 80, "/ws")
        );
        assert_eq!(parse_bridge_url("mqtt://h").unwrap().port, 1883);
        assert_eq!(parse_bridge_url("wss://h").unwrap().port, 443);
        assert!(parse_bridge_url("http://h")
            .unwrap_err()
            .contains("unknown scheme `http`"));
        assert!(parse_bridge_url("mqtt://h:99999").is_err());
        assert!(parse_bridge_url("mqtt://u:p@h").is_err());
        assert!(parse_bridge_url("mqtt://h/path").is_err());
        assert!(parse_bridge_url("broker.example.com").is_err());
        assert!(parse_bridge_url("mqtt://:1883").is_err());
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
