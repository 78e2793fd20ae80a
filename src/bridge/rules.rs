//! Forward and subscribe rules compiled for the hot path: a filter, and a topic template split into pieces
//! once, so mapping a topic is a match plus a few string pushes.
use std::sync::Arc;

use crate::bridge::config::{ForwardRule, SubscribeRule};
use crate::mqtt::filter_matches;
use crate::mqtt::QoS;

/// One piece of a topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    /// `{topic}`: the whole source topic.
    Topic,
    /// `{n}` (1-based): what the n-th wildcard of the filter matched.
    Capture(usize),
}

/// A compiled `{topic}` / `{1}`… template. `{gateway}` was already expanded by the config loader; any other
/// placeholder was refused there, so an unknown one is kept as literal text rather than failing here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
    /// True for the plain `{topic}` template: the source topic's `Arc` is reused, no allocation per message.
    identity: bool,
}

impl Template {
    pub(crate) fn parse(text: &str) -> Template {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut lit = String::new();
        while let Some(open) = rest.find('{') {
            lit.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) => {
                    let name = &after[..close];
                    let piece = match name {
                        "topic" => Some(Piece::Topic),
                        n => n
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n >= 1)
                            .map(Piece::Capture),
                    };
                    match piece {
                        Some(p) => {
                            if !lit.is_empty() {
                                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                            }
                            pieces.push(p);
                        }
                        None => {
                            lit.push('{');
                            lit.push_str(name);
                            lit.push('}');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    lit.push_str(&rest[open..]);
                    rest = "";
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        let identity = pieces == [Piece::Topic];
        Template { pieces, identity }
    }

    /// The mapped topic, or `None` when the result would not be a valid topic name (empty, which a `{1}`
    /// template gives for `a/#` matching `a`).
    pub(crate) fn render(&self, filter: &str, topic: &Arc<str>) -> Option<Arc<str>> {
        if self.identity {
            return Some(topic.clone());
        }
        let needs_captures = self.pieces.iter().any(|p| matches!(p, Piece::Capture(_)));
        let caps = if needs_captures {
            captures(filter, topic)
        } else {
            Vec::new()
        };
        let mut out = String::with_capacity(topic.len() + 16);
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Topic => out.push_str(topic),
                Piece::Capture(n) => out.push_str(caps.get(n - 1).copied().unwrap_or("")),
            }
        }
        (!out.is_empty()).then(|| Arc::from(out))
    }
}

/// What each wildcard of `filter` matched in `topic` (which must match it): a `+` gives its level, a `#` the
/// rest of the topic (empty when `a/#` matches the parent `a`).
pub(crate) fn captures<'t>(filter: &str, topic: &'t str) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut levels = topic.split('/');
    let mut consumed = 0usize;
    for f in filter.split('/') {
        match f {
            "#" => {
                out.push(topic.get(consumed..).unwrap_or(""));
                break;
            }
            _ => {
                let Some(level) = levels.next() else { break };
                if f == "+" {
                    out.push(level);
                }
                consumed = (consumed + level.len() + 1).min(topic.len());
            }
        }
    }
    out
}

/// A compiled `forward` rule.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    pub filter: String,
    pub template: Template,
    pub qos: Option<QoS>,
    pub retain: bool,
}

/// A compiled `subscribe` rule.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    pub filter: String,
    pub template: Template,
    pub qos: QoS,
}

/// Both rule lists of a bridge.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub forward: Vec<Forward>,
    pub subscribe: Vec<Inbound>,
}

impl Rules {
    pub(crate) fn compile(forward: &[ForwardRule], subscribe: &[SubscribeRule]) -> Rules {
        Rules {
            forward: forward
                .iter()
                .map(|r| Forward {
                    filter: r.filter.clone(),
                    template: Template::parse(&r.topic),
                    qos: r.qos,
                    retain: r.retain,
                })
                .collect(),
            subscribe: subscribe
                .iter()
                .map(|r| Inbound {
                    filter: r.filter.clone(),
                    template: Template::parse(&r.topic),
                    qos: r.qos,
                })
                .collect(),
        }
    }

    /// The first forward rule matching a local topic (rules are tried in configuration order).
    pub(crate) fn forward_for(&self, topic: &str) -> Option<&Forward> {
        self.forward
            .iter()
            .find(|r| filter_matches(&r.filter, topic))
    }

    /// The first subscribe rule matching a topic received from upstream.
    pub(crate) fn inbound_for(&self, topic: &str) -> Option<&Inbound> {
        self.subscribe
            .iter()
            .find(|r| filter_matches(&r.filter, topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(filter: &str, tpl: &str, topic: &str) -> Option<String> {
        Template::parse(tpl)
            .render(filter, &Arc::from(topic))
            .map(|t| t.to_string())
    }

    #[test]
    fn templates() {
        assert_eq!(map("gw/#", "{topic}", "gw/a/b").unwrap(), "gw/a/b");
        assert_eq!(map("gw/#", "up/{topic}", "gw/a/b").unwrap(), "up/gw/a/b");
        assert_eq!(
            map("gw/+/alarm", "alarms/gw1/{1}", "gw/boiler/alarm").unwrap(),
            "alarms/gw1/boiler"
        );
        assert_eq!(map("gw/+/+/set", "{2}/{1}", "gw/d/p/set").unwrap(), "p/d");
        assert_eq!(map("gw/#", "x/{1}", "gw/a/b/c").unwrap(), "x/a/b/c");
        assert_eq!(map("gw/+/#", "{1}:{2}", "gw/a/b/c").unwrap(), "a:b/c");
        assert_eq!(map("gw/#", "x/{1}", "gw").unwrap(), "x/");
        assert_eq!(map("gw/#", "{1}", "gw"), None);
        assert_eq!(map("+/#", "{2}/{1}", "a/b").unwrap(), "b/a");
        assert_eq!(map("#", "{1}", "a/b").unwrap(), "a/b");
        assert_eq!(map("a/+", "{1}", "a/").unwrap_or_default(), "");
        assert_eq!(map("a/b", "{x}/{topic}", "a/b").unwrap(), "{x}/a/b");
        assert_eq!(map("a/b", "{", "a/b").unwrap(), "{");
        assert!(Template::parse("{topic}").identity);
    }

    #[test]
    fn first_rule_wins() {
        let rules = Rules::compile(
            &[
                ForwardRule {
                    filter: "gw/+/alarm".into(),
                    topic: "alarms/{1}".into(),
                    qos: Some(QoS::ExactlyOnce),
                    retain: false,
                },
                ForwardRule {
                    filter: "gw/#".into(),
                    topic: "{topic}".into(),
                    qos: None,
                    retain: true,
                },
            ],
            &[],
        );
        assert_eq!(
            rules.forward_for("gw/b/alarm").unwrap().filter,
            "gw/+/alarm"
        );
        assert_eq!(rules.forward_for("gw/b/temp").unwrap().filter, "gw/#");
        assert!(rules.forward_for("other/x").is_none());
    }
}
