//! Query-string parsing for the API, strict on purpose: an operator who typed `?devce=meter-3` must be told,
//! not handed every row of every device. Each error names the parameter and says what was expected.
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldbridge_sdk::config::unknown_name_message;

use crate::mqtt::valid_topic_filter;
use crate::store::{HistoryQuery, Order};

/// Most rows one history request may return: bounds the response (and the memory it takes) to a few tens of
/// megabytes. Larger extracts page with `from`.
pub const MAX_HISTORY_LIMIT: usize = 100_000;
/// Rows returned when `limit` is not given.
pub const DEFAULT_HISTORY_LIMIT: usize = 1000;

/// A parameter the API refuses, with the reason (the 400 body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// The query pairs as a map, refusing names outside `allowed` and names given twice. Empty values count as
/// absent, so an HTML form's blank fields mean "no filter".
pub fn check_params<'a>(
    pairs: &'a [(String, String)],
    allowed: &[&str],
) -> Result<HashMap<&'a str, &'a str>, ParamError> {
    let mut map = HashMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ParamError(unknown_name_message("parameter", k, allowed)));
        }
        if map.insert(k.as_str(), v.as_str()).is_some() {
            return Err(ParamError(format!(
                "parameter `{k}` is given more than once; give it once"
            )));
        }
    }
    map.retain(|_, v| !v.is_empty());
    Ok(map)
}

/// The parameters of `GET /api/history`.
pub const HISTORY_PARAMS: &[&str] = &["device", "point", "topic", "from", "to", "limit", "order"];

/// Parses the parameters of `GET /api/history` into a store query. `now` anchors relative times (`-15m`).
pub fn history_query(
    pairs: &[(String, String)],
    now: SystemTime,
) -> Result<HistoryQuery, ParamError> {
    let p = check_params(pairs, HISTORY_PARAMS)?;
    let mut q = HistoryQuery {
        device: p.get("device").map(|s| s.to_string()),
        point: p.get("point").map(|s| s.to_string()),
        limit: DEFAULT_HISTORY_LIMIT,
        ..HistoryQuery::default()
    };
    if let Some(t) = p.get("topic") {
        if !valid_topic_filter(t) {
            return Err(ParamError(format!(
                "parameter `topic`: `{t}` is not a valid MQTT topic filter (`#` only as the last level, \
                 `+` and `#` alone in their level)"
            )));
        }
        q.topic = Some(t.to_string());
    }
    for (name, slot) in [("from", &mut q.from_ms), ("to", &mut q.to_ms)] {
        if let Some(text) = p.get(name) {
            *slot = Some(
                parse_time(text, now)
                    .map_err(|why| ParamError(format!("parameter `{name}`: {why}")))?,
            );
        }
    }
    if let (Some(f), Some(t)) = (q.from_ms, q.to_ms) {
        if f >= t {
            return Err(ParamError(format!(
                "parameter `from` ({}) must be before `to` ({}): the range is [from, to)",
                p["from"], p["to"]
            )));
        }
    }
    if let Some(l) = p.get("limit") {
        q.limit = match l.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                return Err(ParamError(format!(
                    "parameter `limit`: `{l}` is not a number between 1 and {MAX_HISTORY_LIMIT}"
                )))
            }
        };
    }
    if let Some(o) = p.get("order") {
        q.order = match o.to_ascii_lowercase().as_str() {
            "asc" => Order::Asc,
            "desc" => Order::Desc,
            _ => {
                return Err(ParamError(format!(
                    "parameter `order`: `{o}` is not `asc` (oldest first) or `desc` (newest first)"
                )))
            }
        };
    }
    Ok(q)
}

/// Parses a point in time given by a person or a script, to unix milliseconds:
///
/// - RFC 3339 with a zone: `2026-11-22T02:00:00Z`, `2026-11-22T02:00:00.250+01:00` (a space may stand for
///   the `T`, and for a `+` that a URL turned into a space);
/// - unix milliseconds: `1795312800000`;
/// - `now`, or a time ago: `-15m`, `-2h`, `-7d`.
pub fn parse_time(text: &str, now: SystemTime) -> Result<i64, String> {
    let text = text.trim();
    let expected = "expected RFC 3339 (`2026-11-22T02:00:00Z`, `2026-11-22T03:00:00+01:00`), unix \
                    milliseconds (`1795312800000`), `now`, or a time ago (`-15m`, `-2h`, `-7d`)";
    if text.eq_ignore_ascii_case("now") {
        return to_ms(now).ok_or_else(|| "the clock is before 1970".to_string());
    }
    if let Some(ago) = text.strip_prefix('-') {
        let d = fieldbridge_sdk::config::parse_duration(ago)
            .map_err(|e| format!("invalid time ago `{text}` ({e}); {expected}"))?;
        let t = now
            .checked_sub(d)
            .ok_or_else(|| format!("`{text}` is too far back"))?;
        return to_ms(t).ok_or_else(|| format!("`{text}` is before 1970"));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map_err(|_| format!("`{text}` is too large for unix milliseconds"));
    }
    if !text.is_ascii() || text.len() < 19 {
        return Err(format!("invalid time `{text}`; {expected}"));
    }
    let b = text.as_bytes();
    let n = b.len();
    let (base, offset_secs) = if matches!(b[n - 1], b'Z' | b'z') {
        (&text[..n - 1], 0i64)
    } else if matches!(b[n - 6], b'+' | b'-' | b' ') && b[n - 3] == b':' {
        let hh: i64 = text[n - 5..n - 3]
            .parse()
            .map_err(|_| format!("invalid zone offset in `{text}`; {expected}"))?;
        let mm: i64 = text[n - 2..]
            .parse()
            .map_err(|_| format!("invalid zone offset in `{text}`; {expected}"))?;
        if hh > 23 || mm > 59 {
            return Err(format!("invalid zone offset in `{text}`; {expected}"));
        }
        let sign = if b[n - 6] == b'-' { -1 } else { 1 };
        (&text[..n - 6], sign * (hh * 3600 + mm * 60))
    } else if humantime::parse_rfc3339_weak(text).is_ok() {
        // A valid time without a zone: guessing UTC or the gateway's zone would be wrong half the time.
        return Err(format!(
            "`{text}` has no time zone: add `Z` for UTC or an offset like `+01:00`"
        ));
    } else {
        return Err(format!("invalid time `{text}`; {expected}"));
    };
    let mut base = base.to_string();
    if base.as_bytes().get(10) == Some(&b't') {
        base.replace_range(10..11, "T");
    }
    let t = humantime::parse_rfc3339_weak(&base)
        .map_err(|e| format!("invalid time `{text}` ({e}); {expected}"))?;
    let ms = to_ms(t).ok_or_else(|| format!("`{text}` is before 1970"))?;
    Ok(ms - offset_secs * 1000)
}

fn to_ms(t: SystemTime) -> Option<i64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// Unix milliseconds to RFC 3339 UTC with milliseconds (`1970-01-01T00:00:00.000Z` for out-of-range values,
/// which the store never holds).
pub fn ms_to_rfc3339(ms: i64) -> String {
    let t = u64::try_from(ms)
        .ok()
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_312_800_000)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn times() {
        let base = 1_795_312_800_000; // 2026-11-22T02:00:00Z
        assert_eq!(parse_time("2026-11-22T02:00:00Z", now()), Ok(base));
        assert_eq!(parse_time("2026-11-22t02:00:00z", now()), Ok(base));
        assert_eq!(parse_time("2026-11-22 02:00:00Z", now()), Ok(base));
        assert_eq!(
            parse_time("2026-11-22T02:00:00.250Z", now()),
            Ok(base + 250)
        );
        assert_eq!(parse_time("2026-11-22T03:00:00+01:00", now()), Ok(base));
        assert_eq!(parse_time("2026-11-22T03:00:00 01:00", now()), Ok(base));
        assert_eq!(parse_time("2026-11-21T23:30:00-02:30", now()), Ok(base));
        assert_eq!(parse_time("1795312800000", now()), Ok(base));
        assert_eq!(parse_time("now", now()), Ok(base));
        assert_eq!(parse_time("-15m", now()), Ok(base - 15 * 60_000));
        assert_eq!(parse_time("-1d", now()), Ok(base - 86_400_000));
        let e = parse_time("2026-11-22T02:00:00", now()).unwrap_err();
        assert!(e.contains("no time zone"), "{e}");
        let e = parse_time("yesterday", now()).unwrap_err();
        assert!(e.contains("expected RFC 3339"), "{e}");
        let e = parse_time("2026-13-22T02:00:00Z", now()).unwrap_err();
        assert!(e.contains("invalid time"), "{e}");
        let e = parse_time("-15 parsecs", now()).unwrap_err();
        assert!(e.contains("invalid time ago"), "{e}");
        // Non-ASCII text of the right length must not be sliced mid-character.
        assert!(parse_time("2026-11-22T02:00:00ééé", now()).is_err());
        assert!(parse_time("ééééééééééééééééééééé", now()).is_err());
    }

    #[test]
    fn history_params() {
        let q = history_query(
            &pairs(&[
                ("device", "boiler"),
                ("point", "flow_temp"),
                ("from", "2026-11-22T02:00:00Z"),
                ("to", "now"),
                ("limit", "10"),
                ("order", "DESC"),
                ("topic", ""),
            ]),
            now() + Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(q.device.as_deref(), Some("boiler"));
        assert_eq!(q.point.as_deref(), Some("flow_temp"));
        assert_eq!(q.topic, None);
        assert_eq!(q.from_ms, Some(1_795_312_800_000));
        assert_eq!(q.to_ms, Some(1_795_312_860_000));
        assert_eq!(q.limit, 10);
        assert_eq!(q.order, Order::Desc);

        let err = |list: &[(&str, &str)]| history_query(&pairs(list), now()).unwrap_err().0;
        let e = err(&[("devce", "x")]);
        assert!(
            e.contains("unknown parameter `devce`, did you mean `device`?"),
            "{e}"
        );
        assert!(err(&[("limit", "0")]).contains("parameter `limit`"));
        assert!(err(&[("limit", "100001")]).contains("between 1 and 100000"));
        assert!(err(&[("limit", "ten")]).contains("`ten`"));
        assert!(err(&[("order", "up")]).contains("parameter `order`"));
        assert!(err(&[("topic", "a/#/b")]).contains("parameter `topic`"));
        assert!(err(&[("from", "soon")]).starts_with("parameter `from`: "));
        assert!(err(&[("from", "now"), ("to", "-1h")]).contains("must be before `to`"));
        assert!(err(&[("device", "a"), ("device", "b")]).contains("more than once"));
    }

    #[test]
    fn rfc3339_out() {
        assert_eq!(ms_to_rfc3339(1_795_312_800_250), "2026-11-22T02:00:00.250Z");
        assert_eq!(ms_to_rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }
}
