//! Log-linear latency buckets: two buckets per power of two of nanoseconds.
//!
//! Bucket `0` holds 0 and 1 ns; above that, bucket `2*k + h` holds values
//! whose highest set bit is `k` and whose next bit is `h`. The error of any
//! value reported from a bucket (its middle) is at most 25 % from 2 ns to
//! 1.5 x 2^39 ns (about 13.7 minutes); `HIST_BUCKETS` ends there, and larger
//! values land in the open last bucket.

/// Number of buckets in every latency histogram.
pub const HIST_BUCKETS: usize = 80;

/// The bucket a value in nanoseconds falls into.
#[inline(always)]
pub fn bucket_index(value: u64) -> usize {
    if value < 2 {
        return 0;
    }
    // Branch-free log2 that the BPF verifier accepts (no loops, no clz).
    let mut v = value;
    let mut log = 0u64;
    let mut shift;
    shift = ((v > 0xFFFF_FFFF) as u64) << 5;
    v >>= shift;
    log |= shift;
    shift = ((v > 0xFFFF) as u64) << 4;
    v >>= shift;
    log |= shift;
    shift = ((v > 0xFF) as u64) << 3;
    v >>= shift;
    log |= shift;
    shift = ((v > 0xF) as u64) << 2;
    v >>= shift;
    log |= shift;
    shift = ((v > 0x3) as u64) << 1;
    v >>= shift;
    log |= shift;
    log |= v >> 1;
    let half = (value >> (log - 1)) & 1;
    let index = (2 * log + half) as usize;
    if index >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        index
    }
}

/// Smallest value (ns) that lands in `index`.
pub fn bucket_lower_bound(index: usize) -> u64 {
    if index < 2 {
        return index as u64;
    }
    let log = (index / 2) as u32;
    let half = (index % 2) as u64;
    (1u64 << log) | (half << (log - 1))
}

/// Largest value (ns) that lands in `index` (the last bucket is open-ended).
pub fn bucket_upper_bound(index: usize) -> u64 {
    // Bucket 0 holds 0 and 1; bucket 1 stays empty (the first split is 2|3).
    if index < 2 {
        return 1;
    }
    if index + 1 >= HIST_BUCKETS {
        return u64::MAX;
    }
    bucket_lower_bound(index + 1)
        .saturating_sub(1)
        .max(bucket_lower_bound(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_within_its_bucket_bounds() {
        let mut samples = [0u64; 200];
        let mut x = 1u64;
        for (i, slot) in samples.iter_mut().enumerate() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *slot = x >> (i % 60);
        }
        for value in samples
            .into_iter()
            .chain([0, 1, 2, 3, 4, 5, 6, 7, 8, 1000, 1 << 39])
        {
            let index = bucket_index(value);
            assert!(
                bucket_lower_bound(index) <= value,
                "{value} below bucket {index}"
            );
            assert!(
                value <= bucket_upper_bound(index),
                "{value} above bucket {index}"
            );
        }
    }

    #[test]
    fn buckets_split_each_power_of_two_in_half() {
        assert_eq!(bucket_index(4), 4);
        assert_eq!(bucket_index(5), 4);
        assert_eq!(bucket_index(6), 5);
        assert_eq!(bucket_index(7), 5);
        assert_eq!(bucket_index(1024), 20);
        assert_eq!(bucket_index(1536), 21);
        assert_eq!(bucket_index(u64::MAX), HIST_BUCKETS - 1);
    }
}
