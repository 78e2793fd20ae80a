//! Byte strings as people write them in YAML: text with escapes (`"W\r\n"`, `"\x02P\x03"`) or hex
//! (`"01 03 00 00 00 02"`).
//!
//! YAML double-quoted strings already understand `\r`, `\n` and `\xNN`, but single-quoted and plain scalars do
//! not, and people write all three. So every text byte string goes through [`unescape`] once more: in a
//! double-quoted YAML string the user writes `\\r` to mean a literal backslash-r (rare), and in the other styles
//! `\r` means CR as they expect. A byte above 0x7F written as `\xNN` is that byte, not a UTF-8 sequence.

/// Why a byte string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscapeError {
    /// A backslash followed by something that is not a known escape.
    #[error("unknown escape `\\{0}` (known: \\r \\n \\t \\0 \\\\ \\xNN)")]
    Unknown(char),
    /// `\x` not followed by two hex digits.
    #[error("`\\x` must be followed by two hex digits")]
    BadHex,
    /// A backslash at the very end.
    #[error("the string ends with a lone backslash")]
    Trailing,
    /// A hex string with a character that is not a hex digit, a space, `:` or `-`.
    #[error("`{0}` is not a hex digit (write bytes like `01 03 ff` or `0103ff`)")]
    NotHex(char),
    /// A hex string with an odd number of digits.
    #[error("odd number of hex digits: every byte needs two")]
    OddHex,
}

/// Text with escapes -> bytes.
pub fn unescape(s: &str) -> Result<Vec<u8>, EscapeError> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            None => return Err(EscapeError::Trailing),
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') | Some('X') => {
                let hi = chars.next().and_then(|c| c.to_digit(16));
                let lo = chars.next().and_then(|c| c.to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(EscapeError::BadHex),
                }
            }
            Some(other) => return Err(EscapeError::Unknown(other)),
        }
    }
    Ok(out)
}

/// Hex digits, optionally separated by spaces, `:` or `-`, optionally `0x`-prefixed per byte -> bytes.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, EscapeError> {
    let mut digits = Vec::with_capacity(s.len());
    for word in s.split(|c: char| c.is_whitespace() || c == ':' || c == '-' || c == ',') {
        let word = word
            .strip_prefix("0x")
            .or_else(|| word.strip_prefix("0X"))
            .unwrap_or(word);
        if word.len() % 2 != 0 {
            return Err(EscapeError::OddHex);
        }
        for c in word.chars() {
            digits.push(c.to_digit(16).ok_or(EscapeError::NotHex(c))? as u8);
        }
    }
    Ok(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// Bytes -> text for logs and the monitor: printable ASCII as is, the rest as `\r`, `\n`, `\t` or `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Bytes -> `01 03 ff`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(unescape(r"W\r\n").unwrap(), b"W\r\n");
        assert_eq!(unescape(r"\x02P\x03\xff").unwrap(), vec![2, b'P', 3, 0xff]);
        assert_eq!(unescape(r"a\\b\t\0").unwrap(), b"a\\b\t\0");
        assert_eq!(unescape("°").unwrap(), "°".as_bytes());
        assert_eq!(unescape(r"\q"), Err(EscapeError::Unknown('q')));
        assert_eq!(unescape(r"\x4"), Err(EscapeError::BadHex));
        assert_eq!(unescape("a\\"), Err(EscapeError::Trailing));
    }

    #[test]
    fn hex_strings() {
        assert_eq!(parse_hex("01 03 ff").unwrap(), vec![1, 3, 0xff]);
        assert_eq!(parse_hex("0103FF").unwrap(), vec![1, 3, 0xff]);
        assert_eq!(parse_hex("0x01,0x02").unwrap(), vec![1, 2]);
        assert_eq!(parse_hex("01:0a-0b").unwrap(), vec![1, 0x0a, 0x0b]);
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
        assert_eq!(parse_hex("013"), Err(EscapeError::OddHex));
        assert_eq!(parse_hex("0g"), Err(EscapeError::NotHex('g')));
    }

    #[test]
    fn escape_round_trip() {
        let raw = b"ST,GS,+001.25kg\r\n\x02\xff";
        assert_eq!(unescape(&escape(raw)).unwrap(), raw);
        assert_eq!(hex(&[1, 0xab]), "01 ab");
    }
}
