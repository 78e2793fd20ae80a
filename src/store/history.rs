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

/// Value blobs (`history.vals`, schema v3): the byte `1`, the count (LEB128), then one f64 per key of the
/// block, in the block's order, little-endian; NaN where the row has no numeric value. They let bucket
/// queries aggregate from the index alone, without reading the rows.
const VALUES_V1: u8 = 1;

/// Encodes the values of a block's keys into `out` (cleared first).
pub(crate) fn encode_values(vals: &[Option<f64>], out: &mut Vec<u8>) {
    out.clear();
    out.push(VALUES_V1);
    put(out, vals.len() as u64);
    for v in vals {
        out.extend_from_slice(&v.unwrap_or(f64::NAN).to_le_bytes());
    }
}

/// The values of a value blob (NaN: no numeric value); an error for a malformed blob.
pub(crate) fn decode_values(mut b: &[u8]) -> Result<Vec<f64>, String> {
    if take_byte(&mut b)? != VALUES_V1 {
        return Err("unknown history values format".into());
    }
    let n = get(&mut b)?;
    if n > BLOCK as u64 * 64 || b.len() as u64 != n * 8 {
        return Err("history values blob of the wrong size".into());
    }
    Ok(b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0xff; 8])))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_roundtrip() {
        let mut buf = Vec::new();
        encode_values(&[Some(1.5), None, Some(-0.0)], &mut buf);
        let v = decode_values(&buf).unwrap();
        assert_eq!((v[0], v[2]), (1.5, -0.0));
        assert!(v[1].is_nan());
        assert!(decode_values(&buf[..buf.len() - 1]).is_err());
        assert!(decode_values(&[2, 0]).is_err());
        assert!(decode_values(&[]).is_err());
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
