//! NMEA 0183 sentences: checksum, and the fields of GGA, RMC and VTG as named values.
//!
//! Every sentence also yields its raw fields by position (`XDR.1`, `XDR.2`, …), so sentences without named
//! fields here can still be mapped. The talker (`GP`, `GN`, `GL`, …) is ignored: a receiver that switches from
//! GPS-only to multi-constellation keeps publishing the same points.

use std::collections::HashMap;

/// Why a sentence was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NmeaError {
    /// Not starting with `$` or `!`.
    #[error("not an NMEA sentence (no leading `$`)")]
    NoStart,
    /// No `*hh` checksum while one is required.
    #[error("no `*hh` checksum")]
    NoChecksum,
    /// `*` not followed by two hex digits.
    #[error("malformed checksum `{0}`")]
    BadChecksumField(String),
    /// Checksum mismatch.
    #[error("checksum mismatch: sentence says {found:02X}, computed {computed:02X}")]
    Checksum {
        /// In the sentence.
        found: u8,
        /// Over the sentence.
        computed: u8,
    },
    /// Address field too short.
    #[error("sentence without a type")]
    NoType,
}

/// Degrees-and-minutes (`ddmm.mmmm`) and a hemisphere -> signed decimal degrees.
fn degrees(value: &str, hemi: &str, deg_digits: usize) -> Option<String> {
    if value.len() < deg_digits + 1 {
        return None;
    }
    let d: f64 = value.get(..deg_digits)?.parse().ok()?;
    let m: f64 = value.get(deg_digits..)?.parse().ok()?;
    if !(0.0..60.0).contains(&m) {
        return None;
    }
    let v = d + m / 60.0;
    let v = match hemi {
        "N" | "E" => v,
        "S" | "W" => -v,
        _ => return None,
    };
    Some(format!("{v}"))
}

/// Parses one sentence (without its line terminator) into fields.
pub fn parse(text: &str, require_checksum: bool) -> Result<HashMap<String, String>, NmeaError> {
    let text = text.trim();
    let body = text
        .strip_prefix('$')
        .or_else(|| text.strip_prefix('!'))
        .ok_or(NmeaError::NoStart)?;
    let body = match body.rsplit_once('*') {
        Some((body, sum)) => {
            let found = (sum.len() == 2)
                .then(|| u8::from_str_radix(sum, 16).ok())
                .flatten()
                .ok_or_else(|| NmeaError::BadChecksumField(sum.chars().take(8).collect()))?;
            let computed = body.bytes().fold(0u8, |a, b| a ^ b);
            if found != computed {
                return Err(NmeaError::Checksum { found, computed });
            }
            body
        }
        None if require_checksum => return Err(NmeaError::NoChecksum),
        None => body,
    };
    let fields: Vec<&str> = body.split(',').collect();
    let address = fields[0];
    let kind = if address.starts_with('P') {
        address
    } else if address.len() >= 5 {
        // `get`: the address may hold non-ASCII bytes from line noise (found by the fuzz target).
        address.get(address.len() - 3..).ok_or(NmeaError::NoType)?
    } else {
        return Err(NmeaError::NoType);
    };
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(NmeaError::NoType);
    }
    let mut out = HashMap::new();
    out.insert("type".to_owned(), kind.to_owned());
    for (i, f) in fields.iter().enumerate().skip(1) {
        if !f.is_empty() {
            out.insert(format!("{kind}.{i}"), (*f).to_owned());
        }
    }
    let get = |i: usize| fields.get(i).copied().filter(|s| !s.is_empty());
    let mut put = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            out.insert(format!("{kind}.{name}"), v);
        }
    };
    let own = |i: usize| get(i).map(str::to_owned);
    let lat = |i: usize| degrees(get(i)?, get(i + 1)?, 2);
    let lon = |i: usize| degrees(get(i)?, get(i + 1)?, 3);
    match kind {
        "GGA" => {
            put("time", own(1));
            put("latitude", lat(2));
            put("longitude", lon(4));
            put("fix_quality", own(6));
            put("satellites", own(7));
            put("hdop", own(8));
            put("altitude", own(9));
            put("geoid_separation", own(11));
        }
        "RMC" => {
            put("time", own(1));
            put(
                "valid",
                get(2).map(|s| if s == "A" { "true" } else { "false" }.to_owned()),
            );
            put("latitude", lat(3));
            put("longitude", lon(5));
            put("speed_knots", own(7));
            put("course", own(8));
            put("date", own(9));
        }
        "VTG" => {
            put("course_true", own(1));
            put("course_magnetic", own(3));
            put("speed_knots", own(5));
            put("speed_kmh", own(7));
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GGA: &str = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
    const RMC: &str = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A";
    const VTG: &str = "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48";

    fn num(m: &HashMap<String, String>, k: &str) -> f64 {
        m[k].parse().unwrap()
    }

    #[test]
    fn gga() {
        let m = parse(GGA, true).unwrap();
        assert!((num(&m, "GGA.latitude") - 48.1173).abs() < 1e-9);
        assert!((num(&m, "GGA.longitude") - 11.516_666_666).abs() < 1e-6);
        assert_eq!(m["GGA.fix_quality"], "1");
        assert_eq!(m["GGA.satellites"], "08");
        assert_eq!(m["GGA.altitude"], "545.4");
        assert_eq!(m["GGA.9"], "545.4");
        assert_eq!(m["type"], "GGA");
    }

    #[test]
    fn rmc_and_vtg() {
        let m = parse(RMC, true).unwrap();
        assert_eq!(m["RMC.valid"], "true");
        assert_eq!(m["RMC.speed_knots"], "022.4");
        assert_eq!(m["RMC.date"], "230394");
        let m = parse(VTG, true).unwrap();
        assert_eq!(m["VTG.speed_kmh"], "010.2");
        assert_eq!(m["VTG.course_true"], "054.7");
    }

    #[test]
    fn southern_western_and_other_talkers() {
        let body = "GNGGA,000000,3351.000,S,15112.000,W,1,05,1.0,10.0,M,0,M,,";
        let sum = body.bytes().fold(0u8, |a, b| a ^ b);
        let m = parse(&format!("${body}*{sum:02X}\r"), true).unwrap();
        assert!((num(&m, "GGA.latitude") + 33.85).abs() < 1e-9);
        assert!((num(&m, "GGA.longitude") + 151.2).abs() < 1e-9);
    }

    #[test]
    fn bad_checksum_and_garbage() {
        let bad = GGA.replace("*47", "*48");
        assert_eq!(
            parse(&bad, true),
            Err(NmeaError::Checksum {
                found: 0x48,
                computed: 0x47
            })
        );
        let flipped = GGA.replace("545.4", "545.5");
        assert!(matches!(
            parse(&flipped, true),
            Err(NmeaError::Checksum { .. })
        ));
        assert_eq!(parse("GPGGA,1*00", true), Err(NmeaError::NoStart));
        assert_eq!(parse("$GPGGA,1", true), Err(NmeaError::NoChecksum));
        assert!(parse("$GPGGA,1", false).is_ok());
        assert!(matches!(
            parse("$GPGGA,1*4", true),
            Err(NmeaError::BadChecksumField(_))
        ));
        assert_eq!(parse("$*00", true), Err(NmeaError::NoType));
        // Line noise in the address (multi-byte characters) is rejected, not a panic (fuzz regression).
        assert_eq!(
            parse("$\u{fffd}\u{fffd}\u{fffd},1", false),
            Err(NmeaError::NoType)
        );
        assert_eq!(parse("$GP\u{fffd}x,1", false), Err(NmeaError::NoType));
        // Empty fields are absent, not zero.
        let m = parse("$GPGGA,,,,,,0,,,,,,,,*66", true).unwrap();
        assert!(!m.contains_key("GGA.latitude"));
    }
}
