//! `password_file` in `mosquitto_passwd` format, one user per line: `name:$6$<salt>$<hash>` (salted SHA-512 of
//! password then salt) or `name:$7$<iterations>$<salt>$<hash>` (PBKDF2-HMAC-SHA512), salt and hash in
//! standard base64, the hash 64 bytes. That is what mosquitto 2.0's `mosquitto_passwd` writes (`$7$` with 101
//! iterations by default, `$6$` with `-H sha512`). Blank lines and lines starting with `#` are skipped.
//!
//! Plain-text entries are refused rather than taken as passwords: mosquitto 2 refuses them too, and a file
//! meant to hold hashes that holds clear text is a mistake to report (`mosquitto_passwd -U` converts one).
use std::collections::HashMap;

use crate::broker::config::Password;

use super::FileError;

/// Largest password file read (a few hundred bytes per user).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Longest line accepted.
pub const MAX_LINE: usize = 4096;
/// Most PBKDF2 iterations accepted: each login computes them on the connection's thread (101 is the default;
/// a million take about half a second on a Pi).
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// The length of a SHA-512 digest, the only hash length mosquitto writes.
const HASH_LEN: usize = 64;

/// One user of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// User name.
    pub username: String,
    /// The stored hash.
    pub password: Password,
    /// 1-based line of the entry.
    pub line: u32,
}

/// Parses a whole file; every problem is reported, with its line and column.
pub fn parse(text: &str) -> Result<Vec<Entry>, Vec<FileError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
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
        if l.trim().is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((name, hash)) = l.split_once(':') else {
            errors.push(FileError::new(
                line,
                1,
                "expected `username:hash`, as written by mosquitto_passwd",
            ));
            continue;
        };
        if name.is_empty() {
            errors.push(FileError::new(line, 1, "empty user name"));
            continue;
        }
        let col = name.len() as u32 + 2;
        let password = match parse_hash(hash.trim_end()) {
            Ok(p) => p,
            Err((offset, message)) => {
                errors.push(FileError::new(line, col + offset as u32, message));
                continue;
            }
        };
        if let Some(first) = seen.get(name) {
            errors.push(FileError::new(
                line,
                1,
                format!("user `{name}` is already defined on line {first}"),
            ));
            continue;
        }
        seen.insert(name.to_string(), line);
        out.push(Entry {
            username: name.to_string(),
            password,
            line,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A `$6$…` or `$7$…` field; on error the byte offset in the field and the message.
fn parse_hash(field: &str) -> Result<Password, (usize, String)> {
    let b64 = |s: &str, at: usize, what: &str| -> Result<Vec<u8>, (usize, String)> {
        if s.is_empty() {
            return Err((at, format!("empty {what}")));
        }
        data_encoding::BASE64
            .decode(s.as_bytes())
            .map_err(|_| (at, format!("the {what} is not valid base64")))
    };
    let parts: Vec<&str> = field.split('$').collect();
    // Offsets of each `$`-separated part within the field.
    let mut offsets = Vec::with_capacity(parts.len());
    let mut at = 0;
    for p in &parts {
        offsets.push(at);
        at += p.len() + 1;
    }
    let check_len = |hash: Vec<u8>, at: usize| {
        if hash.len() == HASH_LEN {
            Ok(hash)
        } else {
            Err((
                at,
                format!(
                    "the hash is {} bytes, expected {HASH_LEN} (SHA-512)",
                    hash.len()
                ),
            ))
        }
    };
    match parts.as_slice() {
        ["", "6", salt, hash] => {
            let salt = b64(salt, offsets[2], "salt")?;
            let hash = check_len(b64(hash, offsets[3], "hash")?, offsets[3])?;
            Ok(Password::Sha512 { salt, hash })
        }
        ["", "7", iterations, salt, hash] => {
            let iterations = match iterations.parse::<u32>() {
                Ok(n) if (1..=MAX_ITERATIONS).contains(&n) => n,
                _ => {
                    return Err((
                        offsets[2],
                        format!(
                            "the iteration count must be a number from 1 to {MAX_ITERATIONS}, found `{iterations}`"
                        ),
                    ))
                }
            };
            let salt = b64(salt, offsets[3], "salt")?;
            let hash = check_len(b64(hash, offsets[4], "hash")?, offsets[4])?;
            Ok(Password::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            })
        }
        ["", "6" | "7", ..] => Err((0, "malformed hash: expected `$6$salt$hash` or `$7$iterations$salt$hash`".into())),
        _ => Err((
            0,
            "not a mosquitto_passwd hash (`$6$…` or `$7$…`): a plain-text password file can be converted with `mosquitto_passwd -U <file>`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_point_at_line_and_column() {
        let text = "# users\n\nalice:$7$101$IQh11kX33+xbzn6p$MgggMs92guxqRG9N8PH9aZrFWQw57Qik9MFwoIcyAM6QGNwSuQRoJyvF4pfkuuVyZqqoMaw8LFhRY1+c29yqTA==\r\n\
bob:plain\n\
carl:$7$0$AAAA$AAAA\n\
dave:$6$!!!!$AAAA\n\
eve:$6$AAAA$AAAA\n\
nocolon\n\
alice:$6$AySTSnQn0fZIXgsH$9L6YiKRN7A7v7M1l644ADh8C9nc8ykYUKAKiHTI95yDIwCecfFigh+rAoIQ3TO4b/ZvUw/mgiK1LO9XYIoAhfg==\n";
        let errors = parse(text).unwrap_err();
        let got: Vec<(u32, u32)> = errors.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(
            got,
            vec![(4, 5), (5, 9), (6, 9), (7, 13), (8, 1), (9, 1)],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("mosquitto_passwd -U"));
        assert!(errors[5].message.contains("line 3"));
        let long = format!("a:{}", "x".repeat(MAX_LINE));
        assert_eq!(parse(&long).unwrap_err()[0].line, 1);
    }

    #[test]
    fn both_hash_kinds_parse() {
        let h = data_encoding::BASE64.encode(&[7u8; 64]);
        let e = parse(&format!("a:$6$AAAA${h}\n")).unwrap();
        assert!(matches!(e[0].password, Password::Sha512 { .. }));
        let e = parse(&format!("a:$7$5$AAAA${h}")).unwrap();
        assert!(matches!(
            e[0].password,
            Password::Pbkdf2Sha512 { iterations: 5, .. }
        ));
    }
}
