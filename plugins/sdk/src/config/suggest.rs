//! "Did you mean" suggestions for misspelled names (keys, enum values, protocols, placeholders).

/// The candidate closest to `word`, when it is close enough to be a likely typo.
///
/// Closeness is the optimal-string-alignment distance (a swap of two neighbours counts as one edit) on
/// lower-cased text, so `adress`, `adderss` and `Address` all suggest `address`. The allowed distance grows with
/// the length of the word: 1 up to four letters, 2 up to eight, 3 beyond; a short word far from everything gets
/// no suggestion rather than a silly one. Ties go to the earlier candidate.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let word_lc = word.to_lowercase();
    let max = match word_lc.chars().count() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &'a str)> = None;
    for cand in candidates {
        if cand == word {
            continue;
        }
        let d = strsim::osa_distance(&word_lc, &cand.to_lowercase());
        if d <= max && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// `unknown {what} `{word}`, did you mean `{x}`? expected one of: a, b, c` — the one wording used for every
/// "not one of these names" error, so users learn to read it once.
pub fn unknown_name_message(what: &str, word: &str, expected: &[&str]) -> String {
    let mut msg = format!("unknown {what} `{word}`");
    if let Some(s) = did_you_mean(word, expected.iter().copied()) {
        msg.push_str(&format!(", did you mean `{s}`?"));
    }
    if expected.is_empty() {
        msg.push_str(", none is allowed here");
    } else {
        if !msg.ends_with('?') {
            msg.push(',');
        }
        msg.push_str(" expected one of: ");
        msg.push_str(&expected.join(", "));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["address", "type", "count", "byte_order"];
        assert_eq!(did_you_mean("adress", keys), Some("address"));
        assert_eq!(did_you_mean("Address", keys), Some("address"));
        assert_eq!(did_you_mean("tpye", keys), Some("type"));
        assert_eq!(did_you_mean("byteorder", keys), Some("byte_order"));
        assert_eq!(did_you_mean("zzz", keys), None);
        assert_eq!(did_you_mean("x", ["qos"]), None);
    }

    #[test]
    fn message_shapes() {
        assert_eq!(
            unknown_name_message("key", "adress", &["address", "type"]),
            "unknown key `adress`, did you mean `address`? expected one of: address, type"
        );
        assert_eq!(
            unknown_name_message("key", "zzz", &["address", "type"]),
            "unknown key `zzz`, expected one of: address, type"
        );
        assert_eq!(
            unknown_name_message("key", "zzz", &[]),
            "unknown key `zzz`, none is allowed here"
        );
    }
}
