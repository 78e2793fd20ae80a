//! Frame checksums: the algorithms, and where in a frame the checksum sits and what it covers.
//!
//! Each algorithm is checked against its catalogue check value (the checksum of the ASCII bytes `123456789`)
//! in the tests below, so that a device manual's algorithm name can be trusted to mean the same here.

use std::fmt;
use std::str::FromStr;

/// A checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Sum of the bytes, modulo 256.
    Sum8,
    /// Two's complement of the 8-bit sum (Modbus ASCII LRC, Intel HEX): the bytes plus it sum to 0.
    Lrc,
    /// XOR of the bytes (NMEA-style, many simple protocols).
    Xor8,
    /// CRC-16/MODBUS: poly 0x8005 reflected, init 0xFFFF. Check value 0x4B37. Sent low byte first.
    Crc16Modbus,
    /// CRC-16/CCITT-FALSE (also IBM-3740): poly 0x1021, init 0xFFFF, not reflected. Check value 0x29B1.
    Crc16CcittFalse,
    /// CRC-16/XMODEM: poly 0x1021, init 0, not reflected. Check value 0x31C3.
    Crc16Xmodem,
    /// CRC-8 (also CRC-8/SMBUS): poly 0x07, init 0, not reflected. Check value 0xF4.
    Crc8,
    /// CRC-8/MAXIM-DOW (Dallas/Maxim 1-Wire): poly 0x31 reflected, init 0. Check value 0xA1.
    Crc8Maxim,
}

impl Algorithm {
    /// Every algorithm with its configuration name.
    pub const ALL: [(Algorithm, &'static str); 8] = [
        (Algorithm::Sum8, "sum8"),
        (Algorithm::Lrc, "lrc"),
        (Algorithm::Xor8, "xor8"),
        (Algorithm::Crc16Modbus, "crc16_modbus"),
        (Algorithm::Crc16CcittFalse, "crc16_ccitt_false"),
        (Algorithm::Crc16Xmodem, "crc16_xmodem"),
        (Algorithm::Crc8, "crc8"),
        (Algorithm::Crc8Maxim, "crc8_maxim"),
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        Algorithm::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("?", |(_, n)| n)
    }

    /// Size of the checksum in bytes (1 or 2).
    pub fn width(self) -> usize {
        match self {
            Algorithm::Crc16Modbus | Algorithm::Crc16CcittFalse | Algorithm::Crc16Xmodem => 2,
            _ => 1,
        }
    }

    /// Whether the device sends it low byte first by default (only CRC-16/MODBUS does, by its spec).
    pub fn little_endian_default(self) -> bool {
        matches!(self, Algorithm::Crc16Modbus)
    }

    /// The checksum of `data`.
    pub fn compute(self, data: &[u8]) -> u16 {
        match self {
            Algorithm::Sum8 => u16::from(data.iter().fold(0u8, |a, b| a.wrapping_add(*b))),
            Algorithm::Lrc => u16::from(
                data.iter()
                    .fold(0u8, |a, b| a.wrapping_add(*b))
                    .wrapping_neg(),
            ),
            Algorithm::Xor8 => u16::from(data.iter().fold(0u8, |a, b| a ^ b)),
            Algorithm::Crc16Modbus => fieldbridge_sdk::checksum::crc16_modbus(data),
            Algorithm::Crc16CcittFalse => crc16_normal(data, 0x1021, 0xFFFF),
            Algorithm::Crc16Xmodem => crc16_normal(data, 0x1021, 0x0000),
            Algorithm::Crc8 => u16::from(crc8_normal(data, 0x07, 0x00)),
            Algorithm::Crc8Maxim => u16::from(crc8_reflected(data, 0x8C, 0x00)),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s
            .trim()
            .to_ascii_lowercase()
            .replace(['-', '/', ' '], "_")
            .replace("crc_16", "crc16")
            .replace("crc_8", "crc8");
        let alias = match norm.as_str() {
            "sum" => "sum8",
            "xor" => "xor8",
            "crc16" | "modbus" => "crc16_modbus",
            "crc16_ccitt" | "crc16_ibm_3740" => "crc16_ccitt_false",
            "crc8_smbus" => "crc8",
            "crc8_dallas" | "crc8_maxim_dow" | "crc8_1wire" => "crc8_maxim",
            other => other,
        };
        Algorithm::ALL
            .iter()
            .find(|(_, n)| *n == alias)
            .map(|(a, _)| *a)
            .ok_or_else(|| {
                let names: Vec<&str> = Algorithm::ALL.iter().map(|(_, n)| *n).collect();
                format!(
                    "unknown checksum `{s}`; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

fn crc16_normal(data: &[u8], poly: u16, init: u16) -> u16 {
    let mut crc = init;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ poly
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn crc8_normal(data: &[u8], poly: u8, init: u8) -> u8 {
    let mut crc = init;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ poly
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn crc8_reflected(data: &[u8], poly: u8, init: u8) -> u8 {
    let mut crc = init;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// How the checksum is written in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Raw bytes (1 or 2).
    Binary,
    /// Upper- or lower-case ASCII hex digits (2 or 4), as text protocols do.
    AsciiHex,
}

/// A checksum and where it is: computed over `from..to` of the frame, stored at `at`. Negative positions count
/// from the end of the frame (`-2` = the second-to-last byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumSpec {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// First covered byte.
    pub from: i64,
    /// End of the covered bytes (exclusive); `None` = where the checksum starts.
    pub to: Option<i64>,
    /// Where the checksum starts; `None` = the last bytes of the frame.
    pub at: Option<i64>,
    /// Low byte first (16-bit, binary encoding).
    pub little_endian: bool,
    /// Binary or ASCII hex.
    pub encoding: Encoding,
}

/// Why a frame's checksum does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    /// The frame is too short for the configured positions.
    #[error("frame of {len} bytes too short for the checksum's range")]
    OutOfRange {
        /// Frame length.
        len: usize,
    },
    /// The stored checksum is not valid ASCII hex.
    #[error("checksum field is not hex")]
    NotHex,
    /// Mismatch.
    #[error("{algorithm} mismatch: frame says {found:#06x}, computed {computed:#06x}")]
    Mismatch {
        /// The algorithm.
        algorithm: Algorithm,
        /// What the frame carries.
        found: u16,
        /// What the covered bytes give.
        computed: u16,
    },
}

fn resolve(pos: i64, len: usize) -> Option<usize> {
    let len_i = i64::try_from(len).ok()?;
    let p = if pos < 0 {
        len_i.checked_add(pos)?
    } else {
        pos
    };
    if (0..=len_i).contains(&p) {
        usize::try_from(p).ok()
    } else {
        None
    }
}

impl ChecksumSpec {
    /// A spec with the algorithm's defaults: covers everything before the checksum, which is at the end.
    pub fn new(algorithm: Algorithm) -> Self {
        ChecksumSpec {
            algorithm,
            from: 0,
            to: None,
            at: None,
            little_endian: algorithm.little_endian_default(),
            encoding: Encoding::Binary,
        }
    }

    /// Size of the stored checksum in bytes.
    pub fn stored_width(&self) -> usize {
        match self.encoding {
            Encoding::Binary => self.algorithm.width(),
            Encoding::AsciiHex => self.algorithm.width() * 2,
        }
    }

    /// Positions `(from, to, at)` in a frame of `len` bytes.
    fn positions(&self, len: usize) -> Result<(usize, usize, usize), ChecksumError> {
        let w = self.stored_width();
        let err = ChecksumError::OutOfRange { len };
        let at = match self.at {
            Some(a) => resolve(a, len).ok_or(err.clone())?,
            None => len.checked_sub(w).ok_or(err.clone())?,
        };
        if at + w > len {
            return Err(err);
        }
        let from = resolve(self.from, len).ok_or(err.clone())?;
        let to = match self.to {
            Some(t) => resolve(t, len).ok_or(err.clone())?,
            None => at,
        };
        if from > to {
            return Err(err);
        }
        Ok((from, to, at))
    }

    /// Checks a frame.
    pub fn verify(&self, frame: &[u8]) -> Result<(), ChecksumError> {
        let (from, to, at) = self.positions(frame.len())?;
        let computed = self.algorithm.compute(&frame[from..to]);
        let stored = &frame[at..at + self.stored_width()];
        let found = match self.encoding {
            Encoding::Binary => match stored {
                [b] => u16::from(*b),
                [a, b] if self.little_endian => u16::from_le_bytes([*a, *b]),
                [a, b] => u16::from_be_bytes([*a, *b]),
                _ => return Err(ChecksumError::OutOfRange { len: frame.len() }),
            },
            Encoding::AsciiHex => std::str::from_utf8(stored)
                .ok()
                .and_then(|s| u16::from_str_radix(s, 16).ok())
                .ok_or(ChecksumError::NotHex)?,
        };
        if found == computed {
            Ok(())
        } else {
            Err(ChecksumError::Mismatch {
                algorithm: self.algorithm,
                found,
                computed,
            })
        }
    }

    /// The stored form of the checksum of `data` (for write templates).
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let v = self.algorithm.compute(data);
        match (self.encoding, self.algorithm.width()) {
            (Encoding::Binary, 1) => vec![v as u8],
            (Encoding::Binary, _) if self.little_endian => v.to_le_bytes().to_vec(),
            (Encoding::Binary, _) => v.to_be_bytes().to_vec(),
            (Encoding::AsciiHex, 1) => format!("{:02X}", v as u8).into_bytes(),
            (Encoding::AsciiHex, _) => format!("{v:04X}").into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: &[u8] = b"123456789";

    #[test]
    fn catalogue_check_values() {
        assert_eq!(Algorithm::Crc16Modbus.compute(CHECK), 0x4B37);
        assert_eq!(Algorithm::Crc16CcittFalse.compute(CHECK), 0x29B1);
        assert_eq!(Algorithm::Crc16Xmodem.compute(CHECK), 0x31C3);
        assert_eq!(Algorithm::Crc8.compute(CHECK), 0xF4);
        assert_eq!(Algorithm::Crc8Maxim.compute(CHECK), 0xA1);
        // 0x31 + … + 0x39 = 477 = 0x1DD.
        assert_eq!(Algorithm::Sum8.compute(CHECK), 0xDD);
        assert_eq!(Algorithm::Lrc.compute(CHECK), 0x23);
        assert_eq!(Algorithm::Xor8.compute(CHECK), 0x31);
    }

    #[test]
    fn modbus_request_crc_is_low_byte_first() {
        // Read holding registers, unit 1, address 0, count 1: the well-known frame 01 03 00 00 00 01 84 0A.
        let frame = [0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A];
        let spec = ChecksumSpec::new(Algorithm::Crc16Modbus);
        assert_eq!(spec.verify(&frame), Ok(()));
        assert_eq!(spec.encode(&frame[..6]), vec![0x84, 0x0A]);
        let mut bad = frame;
        bad[3] = 1;
        assert!(matches!(
            spec.verify(&bad),
            Err(ChecksumError::Mismatch { .. })
        ));
    }

    #[test]
    fn ranges_and_positions() {
        // STX, payload, ETX, then xor over the payload only, followed by a trailing CR.
        let mut f = vec![0x02, b'A', b'B', 0x03];
        f.push(b'A' ^ b'B');
        f.push(b'\r');
        let spec = ChecksumSpec {
            from: 1,
            to: Some(3),
            at: Some(-2),
            ..ChecksumSpec::new(Algorithm::Xor8)
        };
        assert_eq!(spec.verify(&f), Ok(()));
        assert_eq!(spec.verify(&[1]), Err(ChecksumError::OutOfRange { len: 1 }));
        assert_eq!(
            ChecksumSpec::new(Algorithm::Crc16Modbus).verify(&[]),
            Err(ChecksumError::OutOfRange { len: 0 })
        );
    }

    #[test]
    fn ascii_hex_encoding() {
        let spec = ChecksumSpec {
            encoding: Encoding::AsciiHex,
            ..ChecksumSpec::new(Algorithm::Xor8)
        };
        let mut f = b"123456789".to_vec();
        f.extend_from_slice(b"31");
        assert_eq!(spec.verify(&f), Ok(()));
        f.truncate(9);
        f.extend_from_slice(b"zz");
        assert_eq!(spec.verify(&f), Err(ChecksumError::NotHex));
    }

    #[test]
    fn names() {
        assert_eq!(
            "CRC-16/MODBUS".parse::<Algorithm>(),
            Ok(Algorithm::Crc16Modbus)
        );
        assert_eq!("crc8_dallas".parse::<Algorithm>(), Ok(Algorithm::Crc8Maxim));
        assert_eq!("xor".parse::<Algorithm>(), Ok(Algorithm::Xor8));
        assert!("md5"
            .parse::<Algorithm>()
            .unwrap_err()
            .contains("crc16_modbus"));
        for (a, n) in Algorithm::ALL {
            assert_eq!(n.parse::<Algorithm>(), Ok(a));
        }
    }
}
