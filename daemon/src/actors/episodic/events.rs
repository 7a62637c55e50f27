//! Episodic buffer events.

use std::time::Duration;

/// Registers the episodic buffer's metric descriptions.
pub fn describe() {
    metrics::describe_gauge!(
        "brainstem_episodic_episodes",
        "episodes held by the episodic buffer"
    );
    metrics::describe_counter!(
        "brainstem_episodic_stored_total",
        "episodes stored (acknowledged)"
    );
    metrics::describe_counter!(
        "brainstem_episodic_evicted_total",
        "episodes evicted because the ring was full"
    );
    metrics::describe_counter!(
        "brainstem_episodic_forgotten_total",
        "episodes removed by Forget"
    );
    metrics::describe_counter!(
        "brainstem_episodic_query_cache_total",
        "episodic queries by cache result (hit, miss)"
    );
    metrics::describe_histogram!(
        "brainstem_episodic_store_group_commands",
        "Store commands that shared one write and one flush (the episodic actor's group commit)"
    );
    metrics::describe_histogram!(
        "brainstem_episodic_query_duration_seconds",
        metrics::Unit::Seconds,
        "time to scan the ring for one query (cache misses only)"
    );
}

pub struct EpisodicQueried {
    pub cached: bool,
    /// Scan time (zero for a cache hit).
    pub duration: Duration,
}

impl EpisodicQueried {
    pub fn emit(self) {
        let result = if self.cached { "hit" } else { "miss" };
        metrics::counter!("brainstem_episodic_query_cache_total", "result" => result).increment(1);
        if !self.cached {
            metrics::histogram!("brainstem_episodic_query_duration_seconds")
                .record(self.duration.as_secs_f64());
        }
    }
}

pub struct EpisodicWritten {
    pub stored: u64,
    pub evicted: u64,
    pub forgotten: u64,
    /// Episodes held after the write.
    pub held: u64,
}

impl EpisodicWritten {
    pub fn emit(self) {
        metrics::gauge!("brainstem_episodic_episodes").set(self.held as f64);
        if self.stored > 0 {
            metrics::counter!("brainstem_episodic_stored_total").increment(self.stored);
        }
        if self.evicted > 0 {
            metrics::counter!("brainstem_episodic_evicted_total").increment(self.evicted);
        }
        if self.forgotten > 0 {
            metrics::counter!("brainstem_episodic_forgotten_total").increment(self.forgotten);
            tracing::info!(
                forgotten = self.forgotten,
                held = self.held,
                "episodes forgotten"
            );
        }
    }
}

/// Several queued Store commands were written together.
pub struct StoreGrouped {
    pub commands: usize,
}

impl StoreGrouped {
    pub fn emit(self) {
        metrics::histogram!("brainstem_episodic_store_group_commands").record(self.commands as f64);
    }
}
