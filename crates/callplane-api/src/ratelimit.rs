//! Per-key request rates: a token bucket per API key (by name). A key over its rate gets
//! `429` with `Retry-After` (seconds until a request fits again). The rate is the key's own
//! (`rateLimit`, from the config file or `POST /v1/apikeys`) or the server's default
//! (`apiRateLimit`); 0 is no limit. Buckets live in memory: a restart starts them full.

use callplane_store::ApiKey;
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

/// The default rate and every key's bucket.
pub struct RateLimits {
    default: Option<Rate>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Default for RateLimits {
    /// No limits (the API's unit tests; the binary configures its own).
    fn default() -> Self {
        RateLimits::new(None)
    }
}

impl RateLimits {
    /// `default` for keys without a `rateLimit` of their own.
    pub fn new(default: Option<Rate>) -> Self {
        RateLimits {
            default,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The rate `key` runs at (`None`: no limit).
    pub fn rate_of(&self, key: &ApiKey) -> Option<Rate> {
        match key.rate_limit {
            Some(n) => Rate::per_second(n),
            None => self.default,
        }
    }

    /// Takes one request of `key`'s rate, or says in how many whole seconds one fits.
    pub fn admit(&self, key: &ApiKey) -> Result<(), u64> {
        self.admit_at(&key.name, self.rate_of(key), Instant::now())
    }

    fn admit_at(&self, name: &str, rate: Option<Rate>, now: Instant) -> Result<(), u64> {
        let Some(rate) = rate else { return Ok(()) };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.entry(name.to_string()).or_insert(Bucket {
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
    use callplane_store::ApiRealm;
    use std::time::Duration;

    fn key(name: &str, rate_limit: Option<u32>) -> ApiKey {
        ApiKey {
            name: name.into(),
            realm: ApiRealm::Admin,
            tenant: None,
            reseller: None,
            sip_user: None,
            rate_limit,
            created: None,
        }
    }

    #[test]
    fn a_key_over_its_rate_waits_and_others_do_not() {
        let l = RateLimits::new(Rate::per_second(5));
        let (fast, slow, other) = (
            key("fast", Some(0)),
            key("slow", Some(1)),
            key("other", None),
        );
        let t = Instant::now();
        // "slow": a burst of 10, then one a second.
        for _ in 0..10 {
            assert_eq!(l.admit_at("slow", l.rate_of(&slow), t), Ok(()));
        }
        assert_eq!(l.admit_at("slow", l.rate_of(&slow), t), Err(1));
        let later = t + Duration::from_millis(1100);
        assert_eq!(l.admit_at("slow", l.rate_of(&slow), later), Ok(()));
        // "fast" has no limit; a key without its own rate takes the default (burst 10).
        for _ in 0..1000 {
            assert_eq!(l.admit_at("fast", l.rate_of(&fast), t), Ok(()));
        }
        for _ in 0..10 {
            assert_eq!(l.admit_at("other", l.rate_of(&other), t), Ok(()));
        }
        assert!(l.admit_at("other", l.rate_of(&other), t).is_err());
    }
}
