//! The latency histogram of the rollups: bucket 0 holds durations under 1 ms, bucket i
//! (1..[`LATENCY_BUCKETS`]) those under 2^(i/4) ms, about 19 % wide; the last one (from
//! 2^19.5 ms, about 12 min) also holds everything longer. Rows store it sparse (ids ascending
//! and their counts: most rows hold a few calls, and a dense 80-bucket array made each row
//! ~640 bytes); ClickHouse sums it with `sumMap`, and percentiles are read from the summed
//! buckets as the upper bound of the bucket that holds the rank.

/// The number of buckets.
pub const LATENCY_BUCKETS: usize = 80;

/// The bucket of a duration in microseconds.
pub fn latency_bucket(duration_us: i64) -> u8 {
    let millis = duration_us as f64 / 1_000.0;
    if millis < 1.0 {
        return 0;
    }
    let index = (millis.log2() * 4.0).floor() as usize + 1;
    index.min(LATENCY_BUCKETS - 1) as u8
}

/// Upper bound of a bucket in milliseconds (what percentiles report).
pub fn bucket_upper_ms(index: usize) -> f64 {
    2f64.powf(index as f64 / 4.0)
}

/// Counts one call in the sparse histogram `(ids, counts)`.
pub fn add_sparse(ids: &mut Vec<u8>, counts: &mut Vec<u64>, bucket: u8) {
    match ids.binary_search(&bucket) {
        Ok(position) => counts[position] += 1,
        Err(position) => {
            ids.insert(position, bucket);
            counts.insert(position, 1);
        }
    }
}

/// Dense bucket counts, to which sparse histograms are added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dense(Vec<u64>);

impl Dense {
    /// Adds a sparse histogram (ids out of range are ignored: they cannot come from
    /// [`latency_bucket`]).
    pub fn add_sparse(&mut self, ids: &[u8], counts: &[u64]) {
        if self.0.len() < LATENCY_BUCKETS {
            self.0.resize(LATENCY_BUCKETS, 0);
        }
        for (id, count) in ids.iter().zip(counts) {
            if let Some(bucket) = self.0.get_mut(usize::from(*id)) {
                *bucket += count;
            }
        }
    }

    /// The `quantile` (0..=1) in milliseconds, rounded to 0.01 ms; `None` without calls.
    pub fn percentile(&self, quantile: f64) -> Option<f64> {
        let total: u64 = self.0.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (quantile * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.0.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some((bucket_upper_ms(index) * 100.0).round() / 100.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_log_spaced() {
        assert_eq!(latency_bucket(500), 0);
        assert_eq!(latency_bucket(1_000), 1);
        assert_eq!(latency_bucket(2_000), 5);
        assert_eq!(usize::from(latency_bucket(i64::MAX / 2)), LATENCY_BUCKETS - 1);
        for duration_ms in [1.5f64, 10.0, 123.0, 999.0, 45_000.0] {
            let index = usize::from(latency_bucket((duration_ms * 1000.0) as i64));
            assert!(duration_ms < bucket_upper_ms(index) && duration_ms >= bucket_upper_ms(index - 1), "{duration_ms} {index}");
        }
    }

    #[test]
    fn sparse_histograms_stay_sorted() {
        let (mut ids, mut counts) = (Vec::new(), Vec::new());
        for bucket in [40, 4, 40, 60, 4, 4] {
            add_sparse(&mut ids, &mut counts, bucket);
        }
        assert_eq!((ids.as_slice(), counts.as_slice()), ([4u8, 40, 60].as_slice(), [3u64, 2, 1].as_slice()));
    }

    #[test]
    fn percentiles_from_buckets() {
        let mut dense = Dense::default();
        dense.add_sparse(&[4, 40, 60], &[50, 45, 5]); // < 2 ms, < 1024 ms, < 32768 ms
        assert_eq!(dense.percentile(0.5), Some(2.0));
        assert_eq!(dense.percentile(0.95), Some(1024.0));
        assert_eq!(dense.percentile(0.99), Some(32768.0));
        assert_eq!(Dense::default().percentile(0.5), None);
    }
}
