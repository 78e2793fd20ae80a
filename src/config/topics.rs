//! Point topic templates (the generic template, filter and name grammars are in `confkit::topics`, a bridge's
//! url in `bridge/config.rs`).
//!
//! Each check returns a message (the caller adds the position), so the rules can be tested on plain strings.
use super::types::{TemplatePart, TopicTemplate};
pub(super) use crate::confkit::topics::{check_name, check_topic_name};
use crate::confkit::topics::{placeholder_tail, scan_template, Piece};

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
}
