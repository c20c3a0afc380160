//! Token buckets per key (a project, a client address), for the per-project ingest quota and
//! the limit on failed authentications per client address.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` per second; a request takes `n`
//! tokens at once (the events of a batch) or is refused with the time until it would fit. That
//! is ~40 lines, so it is written here rather than taken from `governor`, whose cells-per-request
//! API and state snapshots fit the `RateLimit-*` answer headers less directly.
//!
//! The map of buckets is bounded: when it holds `max_keys`, full (idle) buckets are dropped,
//! and if none is, the whole map is cleared, which forgives every key at once (safe: it can only
//! make the limit looser for a moment, never refuse a key that is within it).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The rate and burst of a limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// Why a request was refused, and what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refused {
    /// Tokens left now (whole).
    pub remaining: u64,
    /// Until the request would fit, rounded up to whole seconds (for `Retry-After`); `None`
    /// when it never fits (more than the burst).
    pub retry_after_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct KeyedBuckets<K> {
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub fn new(max_keys: usize) -> Self {
        Self { max_keys: max_keys.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `n` tokens from `key`'s bucket; the tokens left, or why not.
    pub fn take(&self, key: &K, n: f64, rate: Rate) -> Result<u64, Refused> {
        self.take_at(key, n, rate, Instant::now())
    }

    /// Whether `key` has at least one token, without taking it.
    pub fn allows(&self, key: &K, rate: Rate) -> bool {
        let now = Instant::now();
        let buckets = self.buckets.lock().expect("rate-limit map poisoned");
        buckets.get(key).is_none_or(|bucket| refill(*bucket, rate, now).tokens >= 1.0)
    }

    fn take_at(&self, key: &K, n: f64, rate: Rate, now: Instant) -> Result<u64, Refused> {
        let mut buckets = self.buckets.lock().expect("rate-limit map poisoned");
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            buckets.retain(|_, bucket| refill(*bucket, rate, now).tokens < rate.burst);
            if buckets.len() >= self.max_keys {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { tokens: rate.burst, at: now });
        *bucket = refill(*bucket, rate, now);
        if n > rate.burst {
            return Err(Refused { remaining: bucket.tokens as u64, retry_after_secs: None });
        }
        if bucket.tokens >= n {
            bucket.tokens -= n;
            return Ok(bucket.tokens as u64);
        }
        let wait = (n - bucket.tokens) / rate.per_second;
        Err(Refused { remaining: bucket.tokens as u64, retry_after_secs: Some(wait.ceil().max(1.0) as u64) })
    }
}

fn refill(bucket: Bucket, rate: Rate, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    Bucket { tokens: (bucket.tokens + elapsed * rate.per_second).min(rate.burst), at: now }
}

/// Seconds until a bucket that has `remaining` tokens is full again (`RateLimit-Reset`).
pub fn seconds_to_full(remaining: u64, rate: Rate) -> u64 {
    let missing = (rate.burst - remaining as f64).max(0.0);
    Duration::from_secs_f64(missing / rate.per_second.max(f64::MIN_POSITIVE)).as_secs_f64().ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate { per_second: 100.0, burst: 200.0 };

    #[test]
    fn a_burst_passes_then_the_rate_and_the_wait_is_told() {
        let buckets = KeyedBuckets::new(10);
        let start = Instant::now();
        assert_eq!(buckets.take_at(&"a", 150.0, RATE, start), Ok(50));
        let refused = buckets.take_at(&"a", 100.0, RATE, start).unwrap_err();
        assert_eq!(refused, Refused { remaining: 50, retry_after_secs: Some(1) });
        // Half a second later 50 more tokens: 100 fit.
        assert_eq!(buckets.take_at(&"a", 100.0, RATE, start + Duration::from_millis(500)), Ok(0));
        assert_eq!(buckets.take_at(&"b", 200.0, RATE, start), Ok(0), "another key has its own bucket");
        assert_eq!(buckets.take_at(&"a", 201.0, RATE, start).unwrap_err().retry_after_secs, None, "never fits");
    }

    #[test]
    fn the_map_stays_bounded() {
        let buckets = KeyedBuckets::new(4);
        let start = Instant::now();
        for key in 0..100 {
            let _ = buckets.take_at(&key, 1.0, RATE, start);
        }
        assert!(buckets.buckets.lock().unwrap().len() <= 4);
        assert_eq!(seconds_to_full(0, RATE), 2);
        assert_eq!(seconds_to_full(200, RATE), 0);
    }
}
