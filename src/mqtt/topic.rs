//! Topic name and topic filter syntax.
//!
//! Syntax checks shared by the decoder (topic names in PUBLISH and wills), the broker (topic filters, which it
//! answers per filter with SUBACK 0x8F rather than dropping the connection), the config and history queries, and
//! the one matching rule.

/// Longest topic a two-byte length prefix can carry.
const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Whether `s` may be published to: non-empty, at most 65535 bytes, no `+`, `#`, U+0000 or other
/// [`forbidden_char`].
///
/// An empty topic is legal on the wire only in an MQTT 5 PUBLISH that carries a topic alias; the decoder handles
/// that case itself, so this function answers for the resolved topic.
pub fn valid_topic_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TOPIC_LEN
        && !s.bytes().any(|b| matches!(b, b'+' | b'#'))
        && !has_forbidden_char(s)
}

/// Characters the MQTT spec says a topic SHOULD NOT contain and a receiver MAY treat as malformed (1.5.4):
/// U+0000..U+001F, U+007F..U+009F and the Unicode non-characters. mosquitto refuses a PUBLISH or SUBSCRIBE
/// with any of them as malformed and disconnects: a message accepted here with such a topic could never be
/// forwarded to it, so the broker refuses them too.
pub fn forbidden_char(c: char) -> bool {
    let u = c as u32;
    u <= 0x1F
        || (0x7F..=0x9F).contains(&u)
        || (0xFDD0..=0xFDEF).contains(&u)
        || u & 0xFFFE == 0xFFFE
}

/// Whether `s` holds a [`forbidden_char`] (ASCII is checked byte by byte: the common case).
pub fn has_forbidden_char(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| b <= 0x1F || b == 0x7F)
    } else {
        s.chars().any(forbidden_char)
    }
}

/// Why a topic filter is not valid. The texts are what `fieldbridge check` prints after the filter's position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The empty string.
    #[error("a topic filter cannot be empty")]
    Empty,
    /// Longer than a two-byte length prefix can carry.
    #[error("a topic filter is at most 65535 bytes")]
    TooLong,
    /// U+0000 somewhere.
    #[error("a topic filter cannot contain a NUL character")]
    Nul,
    /// A control character or a Unicode non-character (see [`forbidden_char`]).
    #[error("a topic filter cannot contain control characters (U+0001..U+001F, U+007F..U+009F) or Unicode non-characters")]
    Control,
    /// `+` next to other characters in one level.
    #[error("invalid topic filter `{filter}`: `+` must be a whole level (like `a/+/b`), found `{level}`")]
    Plus {
        /// The filter.
        filter: String,
        /// The offending level.
        level: String,
    },
    /// `#` next to other characters in one level.
    #[error(
        "invalid topic filter `{filter}`: `#` must be a whole level (like `a/#`), found `{level}`"
    )]
    Hash {
        /// The filter.
        filter: String,
        /// The offending level.
        level: String,
    },
    /// `#` before the last level.
    #[error("invalid topic filter `{filter}`: `#` must be the last level")]
    HashNotLast {
        /// The filter.
        filter: String,
    },
    /// `$share/` without a valid group and filter.
    #[error(
        "invalid topic filter `{filter}`: a shared subscription is `$share/{{group}}/{{filter}}`, with a group \
         without `+`, `#` or `/` and a non-empty filter"
    )]
    Share {
        /// The filter.
        filter: String,
    },
}

/// Checks that `s` may be subscribed to: non-empty, at most 65535 bytes, no U+0000, `+` only as a whole level,
/// `#` only as the whole last level. A `$share/{group}/{filter}` filter needs a non-empty group without `+`,
/// `#` or `/`, and a non-empty valid `{filter}`. The one filter grammar of the project: the broker (SUBSCRIBE,
/// the in-process link, persisted sessions), the config (record, forward and subscribe rules) and history
/// queries all call it.
pub fn check_topic_filter(s: &str) -> Result<(), FilterError> {
    if s.is_empty() {
        return Err(FilterError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(FilterError::TooLong);
    }
    if s.as_bytes().contains(&0) {
        return Err(FilterError::Nul);
    }
    if has_forbidden_char(s) {
        return Err(FilterError::Control);
    }
    match s.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, filter))
                if !group.is_empty()
                    && !group.bytes().any(|b| matches!(b, b'+' | b'#'))
                    && !filter.is_empty() =>
            {
                plain_filter(s, filter)
            }
            _ => Err(FilterError::Share { filter: s.into() }),
        },
        None => plain_filter(s, s),
    }
}

/// Whether `s` may be subscribed to (see [`check_topic_filter`]).
pub fn valid_topic_filter(s: &str) -> bool {
    check_topic_filter(s).is_ok()
}

/// Level-by-level wildcard placement check of `levels` (all of `whole`, or what follows a `$share` group).
fn plain_filter(whole: &str, levels: &str) -> Result<(), FilterError> {
    let mut it = levels.split('/').peekable();
    while let Some(level) = it.next() {
        let last = it.peek().is_none();
        if level.contains('+') && level != "+" {
            return Err(FilterError::Plus {
                filter: whole.into(),
                level: level.into(),
            });
        }
        if level.contains('#') {
            if level != "#" {
                return Err(FilterError::Hash {
                    filter: whole.into(),
                    level: level.into(),
                });
            }
            if !last {
                return Err(FilterError::HashNotLast {
                    filter: whole.into(),
                });
            }
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter` (both valid; a `$share/{group}/` prefix already removed): `+` matches one
/// level, `#` the rest (including the parent level itself), and a wildcard at the first level does not match a
/// `$` topic. One definition for routing, ACLs, logging, bridge rules and history queries.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
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
            "caf\u{e9}/\u{20ac}/\u{1F600}",
            "\u{A0}",
            "\u{FFFD}",
        ] {
            assert!(valid_topic_name(ok), "{ok:?}");
        }
        // What mosquitto refuses as malformed (so could never be forwarded to it): control characters, C1
        // controls and non-characters.
        for bad in [
            "",
            "a/+",
            "#",
            "a/#",
            "a+b",
            "a\0b",
            "\u{1}",
            "a\nb",
            "a\tb",
            "a\u{7F}",
            "a\u{85}",
            "a\u{9F}",
            "\u{FDD0}",
            "\u{FFFE}",
            "\u{FFFF}",
            "\u{1FFFF}",
            "\u{10FFFE}",
        ] {
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
        assert_eq!(check_topic_filter(""), Err(FilterError::Empty));
        assert_eq!(
            check_topic_filter("a/b#").unwrap_err().to_string(),
            "invalid topic filter `a/b#`: `#` must be a whole level (like `a/#`), found `b#`"
        );
        assert!(matches!(
            check_topic_filter("$share/g+/a"),
            Err(FilterError::Share { .. })
        ));
        assert!(matches!(
            check_topic_filter("$share/g/a#"),
            Err(FilterError::Hash { .. })
        ));
    }

    #[test]
    fn matching() {
        for (f, t, want) in [
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "x/y", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+/+/temp", "gw/d1/temp", true),
            ("+/+/temp", "gw/d1/hum", false),
        ] {
            assert_eq!(filter_matches(f, t), want, "{f} vs {t}");
        }
    }
}
