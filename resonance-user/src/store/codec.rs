//! The `latency_hist` BLOB: a sparse, versioned encoding of a latency
//! histogram, so that mostly-empty 80-bucket histograms cost a few bytes.
//!
//! Layout: one format byte (`1`), then for every non-empty bucket in
//! increasing index order the bucket index (one byte, below `HIST_BUCKETS`)
//! followed by its count as an unsigned LEB128 varint (7 bits per byte, low
//! bits first, high bit set on every byte but the last). An all-zero
//! histogram is the single byte `01`.

use resonance_common::HIST_BUCKETS;

/// First byte of every blob; bump it if the layout ever changes.
pub const FORMAT: u8 = 1;

/// Why a blob could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The blob has no format byte.
    #[error("empty histogram blob")]
    Empty,
    /// The format byte is not one this build knows.
    #[error("unknown histogram blob format {0}")]
    UnknownFormat(u8),
    /// A bucket index past the last bucket.
    #[error("bucket index {0} out of range (only {HIST_BUCKETS} buckets)")]
    IndexOutOfRange(u8),
    /// Indices must strictly increase, so each bucket appears once.
    #[error("bucket index {index} after {previous}: indices must increase")]
    IndexNotIncreasing {
        /// The offending index.
        index: u8,
        /// The index before it.
        previous: u8,
    },
    /// The blob ends inside an entry.
    #[error("blob truncated at byte {0}")]
    Truncated(usize),
    /// A count does not fit in 64 bits.
    #[error("count at byte {0} overflows 64 bits")]
    Overflow(usize),
}

/// Encodes `counts` (at most `HIST_BUCKETS` entries; zeros are skipped).
pub fn encode(counts: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + counts.iter().filter(|c| **c != 0).count() * 3);
    out.push(FORMAT);
    for (index, &count) in counts.iter().enumerate().take(HIST_BUCKETS) {
        if count == 0 {
            continue;
        }
        // `take(HIST_BUCKETS)` keeps the index below 80, so it fits in a byte.
        out.push(index as u8);
        let mut rest = count;
        loop {
            let low = (rest & 0x7f) as u8;
            rest >>= 7;
            if rest == 0 {
                out.push(low);
                break;
            }
            out.push(low | 0x80);
        }
    }
    out
}

/// Decodes a blob into exactly `HIST_BUCKETS` counts.
pub fn decode(blob: &[u8]) -> Result<Vec<u64>, CodecError> {
    let (&format, mut rest) = blob.split_first().ok_or(CodecError::Empty)?;
    if format != FORMAT {
        return Err(CodecError::UnknownFormat(format));
    }
    let mut counts = vec![0u64; HIST_BUCKETS];
    let mut previous: Option<u8> = None;
    while let Some((&index, after_index)) = rest.split_first() {
        let offset = blob.len() - rest.len();
        if usize::from(index) >= HIST_BUCKETS {
            return Err(CodecError::IndexOutOfRange(index));
        }
        if let Some(previous) = previous
            && index <= previous
        {
            return Err(CodecError::IndexNotIncreasing { index, previous });
        }
        previous = Some(index);
        let (count, after_count) = read_varint(after_index, offset + 1)?;
        counts[usize::from(index)] = count;
        rest = after_count;
    }
    Ok(counts)
}

/// Reads one LEB128 varint; `offset` is where it starts in the whole blob,
/// for error messages.
fn read_varint(bytes: &[u8], offset: usize) -> Result<(u64, &[u8]), CodecError> {
    let mut value: u64 = 0;
    for (position, &byte) in bytes.iter().enumerate() {
        let shift = 7 * position as u32;
        let payload = u64::from(byte & 0x7f);
        // The tenth byte may only carry the top bit of a u64.
        if shift >= 64 || (shift == 63 && payload > 1) {
            return Err(CodecError::Overflow(offset));
        }
        value |= payload << shift;
        if byte & 0x80 == 0 {
            return Ok((value, &bytes[position + 1..]));
        }
    }
    Err(CodecError::Truncated(offset + bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_sparse_dense_and_extreme_counts() {
        let empty = vec![0u64; HIST_BUCKETS];
        assert_eq!(encode(&empty), vec![FORMAT]);
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);

        let mut sparse = vec![0u64; HIST_BUCKETS];
        sparse[0] = 1;
        sparse[17] = 127;
        sparse[18] = 128;
        sparse[HIST_BUCKETS - 1] = u64::MAX;
        assert_eq!(decode(&encode(&sparse)).unwrap(), sparse);

        let dense: Vec<u64> = (0..HIST_BUCKETS as u64)
            .map(|i| i * i * 1_000_003 + 1)
            .collect();
        assert_eq!(decode(&encode(&dense)).unwrap(), dense);
    }

    #[test]
    fn layout_is_the_documented_one() {
        let mut counts = vec![0u64; HIST_BUCKETS];
        counts[3] = 300; // 300 = 0b10_0101100 -> ac 02
        counts[79] = 1;
        assert_eq!(encode(&counts), vec![1, 3, 0xac, 0x02, 79, 1]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(CodecError::Empty));
        assert_eq!(decode(&[7, 1, 1]), Err(CodecError::UnknownFormat(7)));
        assert_eq!(decode(&[1, 80, 1]), Err(CodecError::IndexOutOfRange(80)));
        assert_eq!(
            decode(&[1, 5, 1, 5, 1]),
            Err(CodecError::IndexNotIncreasing {
                index: 5,
                previous: 5
            })
        );
        assert_eq!(decode(&[1, 5]), Err(CodecError::Truncated(2)));
        assert_eq!(decode(&[1, 5, 0x80, 0x80]), Err(CodecError::Truncated(4)));
        let mut too_long = vec![1, 5];
        too_long.extend([0xff; 10]);
        too_long.push(0x01);
        assert_eq!(decode(&too_long), Err(CodecError::Overflow(2)));
        // Every short byte string decodes or fails cleanly.
        for a in 0..=255u8 {
            for b in [0u8, 1, 79, 80, 0x7f, 0x80, 0xff] {
                let _ = decode(&[1, a, b]);
                let _ = decode(&[a, b, a]);
            }
        }
    }
}
