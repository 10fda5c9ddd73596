//! Per-key request rates: a token bucket per API key (by name). A key over its rate gets
//! `429` with `Retry-After` (seconds until a request fits again). The rate is the key's own
//! (`rateLimit` of a key in the config file) or the server's default (`apiRateLimit`); 0 is
//! no limit. Buckets live in memory: a restart starts them full.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Requests per second, and how many may come at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `n` requests per second with a burst of `2 n` (at least 10); `None` for 0 (no limit).
    pub fn per_second(n: u32) -> Option<Rate> {
        (n > 0).then(|| Rate {
            per_second: f64::from(n),
            burst: (2.0 * f64::from(n)).max(10.0),
        })
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The rates of all keys and their buckets.
pub struct RateLimits {
    default: Option<Rate>,
    per_key: HashMap<String, Option<Rate>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Default for RateLimits {
    /// No limits (the API's unit tests; the binary configures its own).
    fn default() -> Self {
        RateLimits::new(None, HashMap::new())
    }
}

impl RateLimits {
    /// `per_key` overrides `default` for the keys it names (`None`: that key is unlimited).
    pub fn new(default: Option<Rate>, per_key: HashMap<String, Option<Rate>>) -> Self {
        RateLimits {
            default,
            per_key,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request of `key`'s rate, or says in how many whole seconds one fits.
    pub fn admit(&self, key: &str) -> Result<(), u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let rate = match self.per_key.get(key) {
            Some(r) => *r,
            None => self.default,
        };
        let Some(rate) = rate else { return Ok(()) };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_second).min(rate.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_over_its_rate_waits_and_others_do_not() {
        let mut per_key = HashMap::new();
        per_key.insert("fast".to_string(), None);
        per_key.insert("slow".to_string(), Rate::per_second(1));
        let l = RateLimits::new(Rate::per_second(5), per_key);
        let t = Instant::now();
        // "slow": a burst of 10, then one a second.
        for _ in 0..10 {
            assert_eq!(l.admit_at("slow", t), Ok(()));
        }
        assert_eq!(l.admit_at("slow", t), Err(1));
        assert_eq!(l.admit_at("slow", t + Duration::from_millis(1100)), Ok(()));
        // "fast" has no limit; a key not named takes the default (burst 10).
        for _ in 0..1000 {
            assert_eq!(l.admit_at("fast", t), Ok(()));
        }
        for _ in 0..10 {
            assert_eq!(l.admit_at("other", t), Ok(()));
        }
        assert!(l.admit_at("other", t).is_err());
    }
}
