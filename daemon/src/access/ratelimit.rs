//! Token buckets: per principal and method for `[[rate_limits]]`, and per principal and domain for
//! the click guardrail. Time is passed in, so the arithmetic is tested without clocks.
//!
//! A bucket holds up to `burst` tokens and refills at `per_minute / 60` tokens a second; a call takes
//! one token or is refused with the time until one is available.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::access::config::RateLimit;
use crate::grpc::methods;

/// A refill rate and a capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub fn per_minute(per_minute: u64, burst: u64) -> Self {
        Rate {
            per_second: per_minute as f64 / 60.0,
            burst: burst.max(1) as f64,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets by key, created full on first use. Buckets that are full again are dropped by
/// [`Buckets::sweep`], so the map holds only recently active keys.
#[derive(Debug)]
pub struct Buckets<K> {
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq> Default for Buckets<K> {
    fn default() -> Self {
        Buckets {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> Buckets<K> {
    /// Takes one token from `key`'s bucket, or says how long until one is there.
    pub fn take(&self, key: K, rate: Rate, now: Instant) -> Result<(), Duration> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: rate.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate.per_second;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }

    /// Forgets buckets that have refilled completely (they would be recreated full).
    pub fn sweep(&self, rate_of: impl Fn(&K) -> Option<Rate>, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|key, bucket| {
            rate_of(key).is_some_and(|rate| {
                let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
                bucket.tokens + elapsed * rate.per_second < rate.burst
            })
        });
    }

    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `[[rate_limits]]` of one configuration: the rate of each limited method.
#[derive(Debug, Default)]
pub struct RateLimiter {
    rates: HashMap<&'static str, Rate>,
    buckets: Buckets<(String, &'static str)>,
}

impl RateLimiter {
    /// A method named by several rules takes the strictest.
    pub fn from_config(limits: &[RateLimit]) -> Self {
        let mut rates: HashMap<&'static str, Rate> = HashMap::new();
        for limit in limits {
            let rate = Rate::per_minute(limit.per_minute, limit.burst);
            for pattern in &limit.methods {
                for method in methods::matching(pattern) {
                    rates
                        .entry(method)
                        .and_modify(|r| {
                            if rate.per_second < r.per_second {
                                *r = rate;
                            }
                        })
                        .or_insert(rate);
                }
            }
        }
        RateLimiter {
            rates,
            buckets: Buckets::default(),
        }
    }

    /// Is `method` limited at all? (Unlimited methods skip the bucket map entirely.)
    pub fn limits(&self, method: &str) -> bool {
        self.rates.contains_key(method)
    }

    /// Takes a token for `principal` calling `method`, or answers how long to wait.
    pub fn check(
        &self,
        principal: &str,
        method: &'static str,
        now: Instant,
    ) -> Result<(), Duration> {
        match self.rates.get(method) {
            None => Ok(()),
            Some(rate) => self
                .buckets
                .take((principal.to_owned(), method), *rate, now),
        }
    }

    pub fn sweep(&self, now: Instant) {
        self.buckets
            .sweep(|(_, method)| self.rates.get(method).copied(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let buckets = Buckets::default();
        let rate = Rate::per_minute(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take("k", rate, t0).is_ok());
        }
        let wait = buckets.take("k", rate, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(990) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Other keys have their own bucket.
        assert!(buckets.take("other", rate, t0).is_ok());
        // Half a second gives half a token: still refused, with half the wait.
        let wait = buckets
            .take("k", rate, t0 + Duration::from_millis(500))
            .unwrap_err();
        assert!(
            wait > Duration::from_millis(490) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(
            buckets
                .take("k", rate, t0 + Duration::from_millis(1000))
                .is_ok()
        );
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(buckets.take("k", rate, later).is_ok());
        }
        assert!(buckets.take("k", rate, later).is_err());
    }

    #[test]
    fn seed_guardrail_rate_is_ten_a_minute() {
        let buckets = Buckets::default();
        let rate = Rate::per_minute(10, 10);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(buckets.take(("p", "example.org"), rate, t0).is_ok());
        }
        let wait = buckets.take(("p", "example.org"), rate, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(5900) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        assert!(buckets.take(("p", "docs.rs"), rate, t0).is_ok());
    }

    #[test]
    fn limiter_applies_rules_per_principal_and_method() {
        let limiter = RateLimiter::from_config(&[
            RateLimit {
                methods: vec!["/brainstem.v1.Admin/*".into()],
                per_minute: 120,
                burst: 2,
            },
            RateLimit {
                methods: vec!["/brainstem.v1.Admin/GetStatus".into()],
                per_minute: 60,
                burst: 1,
            },
        ]);
        let t0 = Instant::now();
        let status = "/brainstem.v1.Admin/GetStatus";
        let ping = "/brainstem.v1.Admin/Ping";
        assert!(limiter.limits(ping) && limiter.limits(status));
        // GetStatus takes the stricter rule: one call, then a one-second wait.
        assert!(limiter.check("a", status, t0).is_ok());
        let wait = limiter.check("a", status, t0).unwrap_err();
        assert!(wait > Duration::from_millis(990), "{wait:?}");
        assert!(limiter.check("b", status, t0).is_ok(), "per principal");
        assert!(limiter.check("a", ping, t0).is_ok());
        assert!(limiter.check("a", ping, t0).is_ok());
        assert!(limiter.check("a", ping, t0).is_err());
        assert_eq!(limiter.buckets.len(), 3);
        limiter.sweep(t0 + Duration::from_secs(60));
        assert!(limiter.buckets.is_empty(), "refilled buckets are forgotten");
    }
}
