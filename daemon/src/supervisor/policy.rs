//! Restart policy arithmetic: exponential backoff with jitter, and restart intensity.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::supervisor::config::SupervisorConfig;

/// Delay before restart number `consecutive` (1 = the first after a run that went well):
/// `initial * 2^(consecutive-1)`, capped at `max`, then shortened by a random `0..=jitter` percent so
/// that actors failing together do not restart in lockstep.
pub fn backoff(config: &SupervisorConfig, consecutive: u32, rng: &mut Rng) -> Duration {
    let exponent = consecutive.saturating_sub(1).min(32);
    let base = config
        .backoff_initial_ms
        .saturating_mul(1u64 << exponent)
        .min(config.backoff_max_ms);
    let jitter_ms = base * config.backoff_jitter_percent.min(100) / 100;
    let cut = if jitter_ms == 0 {
        0
    } else {
        rng.next_u64() % (jitter_ms + 1)
    };
    Duration::from_millis(base - cut)
}

/// Restart timestamps within the intensity window.
#[derive(Debug, Default)]
pub struct Intensity {
    restarts: VecDeque<Instant>,
}

impl Intensity {
    /// Records a restart at `now`; returns `true` when that makes more than `max` restarts within
    /// `window`, i.e. the actor must escalate instead of restarting.
    pub fn record(&mut self, now: Instant, max: u64, window: Duration) -> bool {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        self.restarts.len() as u64 > max
    }

    pub fn reset(&mut self) {
        self.restarts.clear();
    }
}

/// SplitMix64: enough randomness for jitter, no dependency, and seedable for tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn from_time() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(nanos ^ u64::from(std::process::id()).rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jitter: u64) -> SupervisorConfig {
        SupervisorConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            backoff_jitter_percent: jitter,
            ..crate::config::Config::default().supervisor
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut rng = Rng::new(1);
        let delays: Vec<u64> = (1..=6)
            .map(|n| backoff(&config(0), n, &mut rng).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            backoff(&config(0), u32::MAX, &mut rng),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn jitter_only_shortens_within_its_percentage() {
        let mut rng = Rng::new(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = backoff(&config(20), 3, &mut rng).as_millis() as u64;
            assert!((320..=400).contains(&d), "{d}");
            seen.insert(d);
        }
        assert!(seen.len() > 40, "jitter spreads restarts: {}", seen.len());
    }

    #[test]
    fn intensity_counts_restarts_inside_the_window() {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let mut intensity = Intensity::default();
        for i in 0..3 {
            assert!(!intensity.record(start + Duration::from_secs(i), 3, window));
        }
        assert!(intensity.record(start + Duration::from_secs(3), 3, window));
        // Later restarts outside the window of the first ones are fine again.
        let mut intensity = Intensity::default();
        for i in 0..10 {
            assert!(!intensity.record(start + Duration::from_secs(i * 4), 3, window));
        }
    }
}
