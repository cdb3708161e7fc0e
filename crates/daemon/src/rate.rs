//! Token-bucket rate limits (`docs/design/security.md`, "Rate limits"):
//! per client (its token, or its IP address without one) on the HTTP API,
//! and per peer on incoming replication traffic. Each key has a bucket of
//! `burst` tokens refilled at `per_s` a second; a request takes one.
//!
//! Memory is bounded: at most [`RATE_KEYS_MAX`] buckets. A full bucket holds
//! no information (a fresh one is full too), so when the table is full the
//! full ones are dropped first; if every bucket is still in use (a flood
//! from that many distinct keys), new keys share one overflow bucket, so
//! the flood as a whole stays limited and nothing is ever refused for lack
//! of room.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets one limiter keeps at most.
pub const RATE_KEYS_MAX: usize = 65_536;

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_s: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_s).min(burst);
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, per_s: f64) -> Result<(), Duration> {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_s))
        }
    }
}

struct Table<K> {
    buckets: HashMap<K, Bucket>,
    overflow: Bucket,
    /// When full buckets were last dropped: at most once per
    /// [`SWEEP_INTERVAL`], so a flood of new keys cannot make every request
    /// walk the whole table.
    swept_at: Option<Instant>,
}

/// Shortest time between two sweeps of a full table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A rate limit over keys `K`. `per_s = 0` turns it off.
pub struct RateLimiter<K> {
    per_s: f64,
    burst: f64,
    keys_max: usize,
    table: Mutex<Table<K>>,
}

impl<K> std::fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("per_s", &self.per_s).field("burst", &self.burst).finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_s` tokens a second, at most `burst` at once (at least one).
    pub fn new(per_s: u64, burst: u64) -> Self {
        Self::with_keys_max(per_s, burst, RATE_KEYS_MAX)
    }

    fn with_keys_max(per_s: u64, burst: u64, keys_max: usize) -> Self {
        let burst = burst.max(1) as f64;
        RateLimiter {
            per_s: per_s as f64,
            burst,
            keys_max,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                overflow: Bucket { tokens: burst, at: Instant::now() },
                swept_at: None,
            }),
        }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.per_s > 0.0
    }

    /// Takes one token of `key`'s bucket at `now`; `Err` says how long
    /// until the next token (the `Retry-After` of a refusal).
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let (per_s, burst) = (self.per_s, self.burst);
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let table = &mut *table;
        if let Some(bucket) = table.buckets.get_mut(key) {
            bucket.refill(now, per_s, burst);
            return bucket.take(per_s);
        }
        let sweep_due = table.swept_at.is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_INTERVAL);
        if table.buckets.len() >= self.keys_max && sweep_due {
            table.swept_at = Some(now);
            table.buckets.retain(|_, b| {
                b.refill(now, per_s, burst);
                b.tokens < burst
            });
        }
        if table.buckets.len() >= self.keys_max {
            table.overflow.refill(now, per_s, burst);
            return table.overflow.take(per_s);
        }
        let mut bucket = Bucket { tokens: burst, at: now };
        let taken = bucket.take(per_s);
        table.buckets.insert(key.clone(), bucket);
        taken
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner).buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check(&"a", t0).is_ok());
        }
        let wait = limiter.check(&"a", t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Another key has its own bucket.
        assert!(limiter.check(&"b", t0).is_ok());
        // 100 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.check(&"a", t1).is_ok());
        assert!(limiter.check(&"a", t1).is_err());
        // Refill stops at the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.check(&"a", t2).is_ok());
        }
        assert!(limiter.check(&"a", t2).is_err());
    }

    #[test]
    fn off_allows_everything_and_keeps_nothing() {
        let limiter = RateLimiter::new(0, 0);
        let now = Instant::now();
        for i in 0..1_000 {
            assert!(limiter.check(&i, now).is_ok());
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_keys() {
        let limiter = RateLimiter::with_keys_max(1, 1, 100);
        let now = Instant::now();
        // 10,000 distinct keys, each spending its one token: the table
        // never exceeds its bound, and the overflow bucket limits the rest.
        let mut allowed = 0;
        for i in 0..10_000u32 {
            if limiter.check(&i, now).is_ok() {
                allowed += 1;
            }
            assert!(limiter.len() <= 100);
        }
        assert_eq!(allowed, 101, "100 buckets and one overflow token");
        // Once refilled, buckets are dropped to make room for new keys.
        let later = now + Duration::from_secs(5);
        assert!(limiter.check(&20_000, later).is_ok());
        assert_eq!(limiter.len(), 1);
    }
}
