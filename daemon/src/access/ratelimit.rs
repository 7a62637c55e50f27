//! Token buckets: per principal and method for `[[rate_limits]]`, and per principal and domain for
//! the click guardrail. Time is passed in, so the arithmetic is tested without clocks; the callers
//! read it from an injected [`Ticker`] (the system's monotonic clock, or a [`ManualTicker`] that
//! tests move), never from `Instant::now()` directly.
//!
//! A bucket holds up to `burst` tokens and refills at `per_minute / 60` tokens a second; a call takes
//! one token or is refused with the time until one is available.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::access::config::RateLimit;
use crate::grpc::methods;

/// Monotonic time for the buckets.
pub trait Ticker: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemTicker;

impl Ticker for SystemTicker {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualTicker {
    base: Instant,
    offset_nanos: AtomicU64,
}

impl Default for ManualTicker {
    fn default() -> Self {
        ManualTicker {
            base: Instant::now(),
            offset_nanos: AtomicU64::new(0),
        }
    }
}

impl ManualTicker {
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Ticker for ManualTicker {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

/// The clock every bucket user gets unless a test injects another.
pub fn system_ticker() -> Arc<dyn Ticker> {
    Arc::new(SystemTicker)
}

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
#[derive(Debug)]
pub struct RateLimiter {
    rates: HashMap<&'static str, Rate>,
    buckets: Buckets<(String, &'static str)>,
    clock: Arc<dyn Ticker>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            rates: HashMap::new(),
            buckets: Buckets::default(),
            clock: system_ticker(),
        }
    }
}

impl RateLimiter {
    /// A method named by several rules takes the strictest.
    pub fn from_config(limits: &[RateLimit]) -> Self {
        Self::with_clock(limits, system_ticker())
    }

    /// [`RateLimiter::from_config`] reading time from `clock`.
    pub fn with_clock(limits: &[RateLimit], clock: Arc<dyn Ticker>) -> Self {
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
            clock,
        }
    }

    /// Now, by this limiter's clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// [`RateLimiter::check`] at the clock's now: what the authorization layer calls.
    pub fn take(&self, principal: &str, method: &'static str) -> Result<(), Duration> {
        self.check(principal, method, self.now())
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
    fn the_limiter_reads_its_injected_clock() {
        let clock = Arc::new(ManualTicker::default());
        let limiter = RateLimiter::with_clock(
            &[RateLimit {
                methods: vec!["/brainstem.v1.Policy/Explain".into()],
                per_minute: 60,
                burst: 2,
            }],
            clock.clone(),
        );
        let explain = "/brainstem.v1.Policy/Explain";
        assert!(limiter.take("a", explain).is_ok());
        assert!(limiter.take("a", explain).is_ok());
        // However long the calls took in real time, the clock has not moved: a full second to wait.
        assert_eq!(limiter.take("a", explain), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_millis(500));
        assert_eq!(limiter.take("a", explain), Err(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(500));
        assert!(limiter.take("a", explain).is_ok());
        assert!(limiter.take("a", explain).is_err());
        // Sweeping by the same clock forgets the bucket once it has refilled.
        clock.advance(Duration::from_secs(5));
        limiter.sweep(limiter.now());
        assert!(limiter.buckets.is_empty());
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
