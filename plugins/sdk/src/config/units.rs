//! Durations and sizes written the way people write them: `500ms`, `1m30s`, `7d`, `512MiB`, `10MB`.
//!
//! A bare number is a size in bytes, but never a duration (except `0`): `timeout: 5` could mean seconds or
//! milliseconds, and guessing wrong is worse than asking for a unit.
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const DURATION_UNITS: &str = "ms, s, m, h or d";

/// Parses a duration: one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d` (e.g. `500ms`, `1s`,
/// `1m30s`, `1.5h`, `7d`); `0` alone is zero. Errors are complete sentences naming the input.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = |why: String| Err(format!("invalid duration `{text}`: {why}"));
    if s.is_empty() {
        return bad("empty".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        if num.is_empty() {
            return bad(if rest.starts_with('-') {
                "a duration cannot be negative".into()
            } else {
                format!("expected a number at `{rest}`")
            });
        }
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_alphabetic() && c != 'µ')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "" => {
                return bad(format!(
                    "missing unit after `{num}` (write e.g. `{num}s`; units: {DURATION_UNITS})"
                ))
            }
            other => {
                let hint = match other {
                    "sec" | "secs" | "second" | "seconds" => " (write `s`)",
                    "min" | "mins" | "minute" | "minutes" => " (write `m`)",
                    "hour" | "hours" | "hr" => " (write `h`)",
                    "day" | "days" => " (write `d`)",
                    "us" | "µs" | "ns" => " (the smallest unit is `ms`)",
                    _ => "",
                };
                return bad(format!(
                    "unknown unit `{other}`{hint}; units: {DURATION_UNITS}"
                ));
            }
        };
        let Some(n) = scaled(num, nanos_per) else {
            return bad("too large".into());
        };
        total = total.saturating_add(n);
        rest = after.trim_start();
    }
    let secs = total / 1_000_000_000;
    if secs > u64::MAX as u128 {
        return bad("too large".into());
    }
    Ok(Duration::new(secs as u64, (total % 1_000_000_000) as u32))
}

/// `num` (digits, optionally with a fraction) times `unit`, exactly, rounded down.
fn scaled(num: &str, unit: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(unit)?;
    if !frac.is_empty() {
        let frac = &frac[..frac.len().min(18)];
        let f: u128 = frac.parse().ok()?;
        value = value.checked_add(f.checked_mul(unit)? / 10u128.pow(frac.len() as u32))?;
    }
    Some(value)
}

/// Splits leading `digits[.digits]` off `s`.
fn split_number(s: &str) -> (&str, &str) {
    let mut end = 0;
    let mut dot = false;
    for (i, c) in s.char_indices() {
        if c.is_ascii_digit() {
            end = i + 1;
        } else if c == '.' && !dot {
            dot = true;
            end = i + 1;
        } else {
            break;
        }
    }
    let num = &s[..end];
    if num == "." {
        return ("", s);
    }
    (num, &s[end..])
}

/// Formats a duration the way [`parse_duration`] reads it back: `1m30s`, `500ms`, `7d`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut ms = d.as_millis();
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if out.is_empty() {
        // Below a millisecond: not writable in the config, shown for completeness.
        out = format!("{}us", d.as_micros());
    }
    out
}

/// Parses a size in bytes: a plain number (`4096`), or a number with a unit: binary `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024) or decimal `B`, `kB`/`KB`, `MB`, `GB`, `TB` (powers of 1000). A fraction is allowed
/// (`1.5GiB`). `M`, `G` and other unit-less letters are refused as ambiguous.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let bad = |why: String| Err(format!("invalid size `{text}`: {why}"));
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return bad(if s.starts_with('-') {
            "a size cannot be negative".into()
        } else {
            "expected a number, e.g. `512MiB`".into()
        });
    }
    let unit = unit.trim();
    let mult: u128 = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            let upper = other.to_ascii_uppercase();
            let hint = match upper.trim_end_matches('B') {
                "K" | "KI" => " (write `KiB` for 1024 bytes or `kB` for 1000)",
                "M" | "MI" => " (write `MiB` for 1048576 bytes or `MB` for 1000000)",
                "G" | "GI" => " (write `GiB` for 1073741824 bytes or `GB` for 1000000000)",
                "T" | "TI" => " (write `TiB` or `TB`)",
                _ => "",
            };
            return bad(format!(
                "unknown unit `{other}`{hint}; units: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB"
            ));
        }
    };
    if unit.is_empty() && num.contains('.') {
        return bad("a number of bytes must be whole".into());
    }
    match scaled(num, mult).and_then(|v| u64::try_from(v).ok()) {
        Some(v) => Ok(v),
        None => bad("too large".into()),
    }
}

/// Formats a size with the largest binary unit that divides it exactly (`512MiB`, `1GiB`, `1000B`).
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// A [`Duration`] read from `500ms`, `1m30s`, `7d`… (see [`parse_duration`]); for struct fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> HumanDuration {
        HumanDuration(d)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration like `500ms`, `30s`, `5m`, `1h` or `7d`")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v == 0 {
            Ok(Duration::ZERO)
        } else {
            Err(E::custom(format!(
                "invalid duration `{v}`: missing unit (write e.g. `{v}s`; units: {DURATION_UNITS})"
            )))
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "invalid duration `{v}`: missing unit (write e.g. `{v}s`; units: {DURATION_UNITS})"
        )))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor).map(HumanDuration)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A size in bytes read from `512MiB`, `10MB`, `4096`… (see [`parse_size`]); for struct fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanSize(pub u64);

impl From<HumanSize> for u64 {
    fn from(s: HumanSize) -> u64 {
        s.0
    }
}

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size like `512MiB`, `10MB` or a number of bytes")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_size(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("invalid size `{v}`: a size cannot be negative")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        Err(E::custom(format!(
            "invalid size `{v}`: a number of bytes must be whole"
        )))
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor).map(HumanSize)
    }
}

impl Serialize for HumanSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

/// `#[serde(with = "fieldbridge_sdk::config::serde_duration")]` on a `Duration` field.
pub mod serde_duration {
    use super::*;

    /// Reads a human duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// Writes it back as `1m30s`.
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*v))
    }
}

/// `#[serde(default, with = "fieldbridge_sdk::config::serde_option_duration")]` on an `Option<Duration>`
/// field (the `default` makes an absent key `None`).
pub mod serde_option_duration {
    use super::*;

    /// Reads an optional human duration (`~` or absent: `None`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<HumanDuration>::deserialize(d)?.map(|h| h.0))
    }

    /// Writes it back as `1m30s`, or nothing.
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&HumanDuration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// `#[serde(with = "fieldbridge_sdk::config::serde_size")]` on a `u64` byte-count field.
pub mod serde_size {
    use super::*;

    /// Reads a human size.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(SizeVisitor)
    }

    /// Writes it back as `512MiB`.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("1s"), Ok(ms(1000)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("7d"), Ok(ms(7 * 86_400_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h 2m 3s 4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("30").unwrap_err(),
            "invalid duration `30`: missing unit after `30` (write e.g. `30s`; units: ms, s, m, h or d)"
        );
        assert_eq!(
            parse_duration("5 sec").unwrap_err(),
            "invalid duration `5 sec`: unknown unit `sec` (write `s`); units: ms, s, m, h or d"
        );
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn durations_round_trip() {
        for s in ["1m30s", "500ms", "7d", "1h1ms", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert_eq!(parse_size("2kB"), Ok(2000));
        assert!(parse_size("10M").unwrap_err().contains("write `MiB`"));
        assert!(parse_size("-1").unwrap_err().contains("negative"));
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("99999999TiB").is_err());
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(1000), "1000B");
    }
}
