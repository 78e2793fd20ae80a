//! Topic name and topic filter syntax.
//!
//! These are syntax checks only, shared by the decoder (topic names in PUBLISH and wills) and the broker (topic
//! filters, which it answers per filter with SUBACK 0x8F rather than dropping the connection). Matching lives in
//! the router.

/// Longest topic a two-byte length prefix can carry.
const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Whether `s` may be published to: non-empty, at most 65535 bytes, no `+`, `#` or U+0000.
///
/// An empty topic is legal on the wire only in an MQTT 5 PUBLISH that carries a topic alias; the decoder handles
/// that case itself, so this function answers for the resolved topic.
pub fn valid_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TOPIC_LEN && !s.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// Whether `s` may be subscribed to: non-empty, at most 65535 bytes, no U+0000, `+` only as a whole level, `#`
/// only as the whole last level. A `$share/{group}/{filter}` filter needs a non-empty group without `+`, `#` or
/// `/`, and a non-empty valid `{filter}`.
pub fn valid_topic_filter(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_TOPIC_LEN || s.as_bytes().contains(&0) {
        return false;
    }
    match s.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, filter)) => {
                !group.is_empty()
                    && !group.bytes().any(|b| matches!(b, b'+' | b'#'))
                    && !filter.is_empty()
                    && plain_filter(filter)
            }
            None => false,
        },
        None => plain_filter(s),
    }
}

/// Level-by-level wildcard placement check.
fn plain_filter(s: &str) -> bool {
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let plus = level.contains('+');
        let hash = level.contains('#');
        if plus && level != "+" {
            return false;
        }
        if hash && (level != "#" || !last) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in [
            "a",
            "a/b",
            "/",
            "a//b",
            "$SYS/x",
            " ",
            "sport/tennis/player1",
            "\u{1}",
        ] {
            assert!(valid_topic_name(ok), "{ok:?}");
        }
        for bad in ["", "a/+", "#", "a/#", "a+b", "a\0b"] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
        assert!(valid_topic_name(&"a".repeat(65535)));
        assert!(!valid_topic_name(&"a".repeat(65536)));
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "a",
            "#",
            "+",
            "/",
            "+/+",
            "a/+/c",
            "a/#",
            "/#",
            "+/tennis/#",
            "sport/tennis/#",
            "a//b",
            "$SYS/#",
            "$share/g/a/b",
            "$share/g/#",
            "$share/g/+",
            "$share/g//",
            "$share",
            "$shared/x",
        ] {
            assert!(valid_topic_filter(ok), "{ok:?}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "#/",
            "a+",
            "a/b+/c",
            "++",
            "##",
            "a\0",
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/g+/a",
            "$share/g#/a",
            "$share/g/a#",
        ] {
            assert!(!valid_topic_filter(bad), "{bad:?}");
        }
        assert!(!valid_topic_filter(&"a".repeat(65536)));
    }
}
