//! The history index's block format.
//!
//! `history` holds, per stream, blocks of up to [`BLOCK`] keys `(ts, seq)` sorted by `(ts, seq)`, with the
//! block's time and seq bounds in columns for the search. One block replaces a hundred b-tree entries: an index
//! pass inserts a row per block, not per message, which is what keeps indexing cheap next to appending.
//!
//! Blob format v1: the byte `1`; the entry count (LEB128); the first entry's ts (zigzag LEB128) and seq
//! (LEB128); then for each further entry the ts delta (LEB128, never negative: entries are sorted by ts) and
//! the seq delta (zigzag LEB128: equal or out-of-order timestamps can make it negative). 2 to 4 bytes a key.

/// Most keys in one block.
pub(crate) const BLOCK: usize = 128;

const FORMAT_V1: u8 = 1;

/// Encodes keys sorted by `(ts, seq)` into `out` (cleared first).
pub(crate) fn encode(keys: &[(i64, i64)], out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT_V1);
    put(out, keys.len() as u64);
    let mut prev: Option<(i64, i64)> = None;
    for &(ts, seq) in keys {
        match prev {
            None => {
                put(out, zigzag(ts));
                put(out, seq as u64);
            }
            Some((pts, pseq)) => {
                put(out, ts.wrapping_sub(pts) as u64);
                put(out, zigzag(seq.wrapping_sub(pseq)));
            }
        }
        prev = Some((ts, seq));
    }
}

/// Calls `f(ts, seq)` for each key of a block; an error for a malformed blob.
pub(crate) fn decode(mut b: &[u8], mut f: impl FnMut(i64, i64)) -> Result<(), String> {
    if take_byte(&mut b)? != FORMAT_V1 {
        return Err("unknown history block format".into());
    }
    let n = get(&mut b)?;
    let (mut ts, mut seq) = (0i64, 0i64);
    for i in 0..n {
        if i == 0 {
            ts = unzigzag(get(&mut b)?);
            seq = get(&mut b)? as i64;
        } else {
            ts = ts.wrapping_add(get(&mut b)? as i64);
            seq = seq.wrapping_add(unzigzag(get(&mut b)?));
        }
        f(ts, seq);
    }
    Ok(())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_byte(b: &mut &[u8]) -> Result<u8, String> {
    let (&first, rest) = b.split_first().ok_or("truncated history block")?;
    *b = rest;
    Ok(first)
}

fn get(b: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take_byte(b)?;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("bad varint in history block".into())
}

/// Value blobs (`history.vals`, schema v3): the numeric value of each key of the block, in the block's order
/// (NaN: the row has no numeric value). They let bucket queries and readings come from the index alone. A
/// format byte, the count (LEB128), then:
/// - `1`: one f64 per key, little-endian (8 bytes a key);
/// - `2`: nothing (no key has a numeric value: text points, raw publishes);
/// - `3`: decimal: a scale byte `d` (0..=6), then each value times 10^d as an integer, the first zigzag
///   LEB128, the others as zigzag deltas. Chosen only when every value comes back bit for bit (`i / 10^d`),
///   which is the case for readings with a fixed resolution: 1-3 bytes a key instead of 8. Small rows matter:
///   a block row over about 1000 bytes spills to overflow pages.
const VALUES_F64: u8 = 1;
const VALUES_NONE: u8 = 2;
const VALUES_DECIMAL: u8 = 3;

fn decimal_of(vals: &[Option<f64>]) -> Option<(u8, Vec<i64>)> {
    'scale: for d in 0..=6u8 {
        let p = 10f64.powi(i32::from(d));
        let mut ints = Vec::with_capacity(vals.len());
        for v in vals {
            let v = (*v)?;
            let i = (v * p).round();
            // The check is the decoder's own computation, so what comes back is bit for bit what went in.
            if !i.is_finite()
                || i.abs() > 9.0e15
                || ((i as i64) as f64 / p).to_bits() != v.to_bits()
            {
                continue 'scale;
            }
            ints.push(i as i64);
        }
        return Some((d, ints));
    }
    None
}

/// Encodes the values of a block's keys into `out` (cleared first).
pub(crate) fn encode_values(vals: &[Option<f64>], out: &mut Vec<u8>) {
    out.clear();
    let vals: Vec<Option<f64>> = vals.iter().map(|v| v.filter(|x| !x.is_nan())).collect();
    if vals.iter().all(Option::is_none) {
        out.push(VALUES_NONE);
        put(out, vals.len() as u64);
        return;
    }
    if let Some((d, ints)) = decimal_of(&vals) {
        out.push(VALUES_DECIMAL);
        put(out, ints.len() as u64);
        out.push(d);
        let mut prev = 0i64;
        for (k, i) in ints.iter().enumerate() {
            put(out, zigzag(if k == 0 { *i } else { i.wrapping_sub(prev) }));
            prev = *i;
        }
        return;
    }
    out.push(VALUES_F64);
    put(out, vals.len() as u64);
    for v in &vals {
        out.extend_from_slice(&v.unwrap_or(f64::NAN).to_le_bytes());
    }
}

/// The values of a value blob (NaN: no numeric value); an error for a malformed blob.
pub(crate) fn decode_values(mut b: &[u8]) -> Result<Vec<f64>, String> {
    let format = take_byte(&mut b)?;
    let n = get(&mut b)?;
    if n > BLOCK as u64 * 64 {
        return Err("history values blob too long".into());
    }
    match format {
        VALUES_NONE if b.is_empty() => Ok(vec![f64::NAN; n as usize]),
        VALUES_F64 if b.len() as u64 == n * 8 => Ok(b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0xff; 8])))
            .collect()),
        VALUES_DECIMAL => {
            let d = take_byte(&mut b)?;
            if d > 6 {
                return Err("bad decimal scale in history values".into());
            }
            let p = 10f64.powi(i32::from(d));
            let mut out = Vec::with_capacity(n as usize);
            let mut prev = 0i64;
            for k in 0..n {
                let z = unzigzag(get(&mut b)?);
                let i = if k == 0 { z } else { prev.wrapping_add(z) };
                out.push(i as f64 / p);
                prev = i;
            }
            if !b.is_empty() {
                return Err("trailing bytes in history values".into());
            }
            Ok(out)
        }
        _ => Err("malformed history values blob".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_roundtrip() {
        let check = |vals: &[Option<f64>], format: u8, max_len: usize| {
            let mut buf = Vec::new();
            encode_values(vals, &mut buf);
            assert_eq!(buf[0], format, "{vals:?}");
            assert!(buf.len() <= max_len, "{} bytes for {vals:?}", buf.len());
            let back = decode_values(&buf).unwrap();
            assert_eq!(back.len(), vals.len());
            for (a, b) in vals.iter().zip(back) {
                match a {
                    Some(a) => assert_eq!(a.to_bits(), b.to_bits(), "{vals:?}"),
                    None => assert!(b.is_nan()),
                }
            }
        };
        check(
            &[Some(230.12), Some(230.15), Some(229.98)],
            VALUES_DECIMAL,
            12,
        );
        check(&[Some(1.0), Some(0.0), Some(1.0)], VALUES_DECIMAL, 8);
        check(&[Some(-0.0)], VALUES_F64, 16);
        check(&[Some(1.5), None, Some(2.5)], VALUES_F64, 40);
        check(&[Some(0.1 + 0.2), Some(1.0)], VALUES_F64, 40);
        check(&[None, None], VALUES_NONE, 2);
        check(&[Some(1e300), Some(2.0)], VALUES_F64, 40);
        let mut buf = Vec::new();
        encode_values(&[Some(1.5), Some(2.5)], &mut buf);
        assert!(decode_values(&buf[..buf.len() - 1]).is_err());
        assert!(decode_values(&[9, 0]).is_err());
        assert!(decode_values(&[]).is_err());
        assert!(decode_values(&[VALUES_DECIMAL, 1, 7, 0]).is_err());
        assert!(decode_values(&[VALUES_NONE, 1, 0]).is_err());
    }

    fn roundtrip(keys: &[(i64, i64)]) -> Vec<(i64, i64)> {
        let mut buf = Vec::new();
        encode(keys, &mut buf);
        let mut out = Vec::new();
        decode(&buf, |t, s| out.push((t, s))).unwrap();
        out
    }

    #[test]
    fn blocks_roundtrip() {
        let keys = [
            (1_700_000_000_000, 5),
            (1_700_000_000_000, 9),
            (1_700_000_000_001, 7), // seq goes back
            (1_700_000_000_500, 1_000_000),
        ];
        assert_eq!(roundtrip(&keys), keys);
        assert_eq!(roundtrip(&[]), []);
        assert_eq!(
            roundtrip(&[(-5, 0), (i64::MAX, i64::MAX)]),
            [(-5, 0), (i64::MAX, i64::MAX)]
        );
        let many: Vec<(i64, i64)> = (0..BLOCK as i64)
            .map(|i| (1_700_000_000_000 + i * 1000, 40 + i * 1000))
            .collect();
        let mut buf = Vec::new();
        encode(&many, &mut buf);
        assert!(buf.len() <= 4 * BLOCK + 16, "{} bytes", buf.len());
        assert_eq!(roundtrip(&many), many);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert!(decode(&[], |_, _| {}).is_err());
        assert!(decode(&[2, 0], |_, _| {}).is_err());
        assert!(decode(&[1, 3, 0], |_, _| {}).is_err());
        assert!(decode(&[1, 1, 0xff], |_, _| {}).is_err());
    }
}
