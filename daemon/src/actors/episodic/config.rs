//! `[episodic]`: the episodic buffer, and its actor's supervision keys.

use crate::config::{Section, Table, Walker};
use crate::supervisor::config::ActorConfig;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpisodicConfig {
    pub enabled: bool,
    /// Ring size: the oldest episode is evicted when a new one arrives at capacity.
    pub capacity: u64,
    pub embedding_dimension: u64,
    /// Decay half-life: an episode this old scores half of a fresh one. 0 disables decay.
    pub half_life_seconds: u64,
    pub max_text_bytes: u64,
    pub max_k: u64,
    pub max_batch: u64,
    /// Query results kept for repeated queries; any write invalidates them. 0 disables the cache.
    pub query_cache_entries: u64,
    /// A cached answer is reused for at most this long (decay moves scores as time passes).
    pub query_cache_ttl_ms: u64,
    /// How the supervisor runs the actor (restart type, mailbox, stop deadline).
    #[serde(flatten)]
    pub actor: ActorConfig,
}

impl Default for EpisodicConfig {
    fn default() -> Self {
        EpisodicConfig {
            enabled: true,
            capacity: 10_000,
            embedding_dimension: 384,
            half_life_seconds: 3600,
            max_text_bytes: 8192,
            max_k: 100,
            max_batch: 256,
            query_cache_entries: 256,
            query_cache_ttl_ms: 1000,
            actor: ActorConfig::default(),
        }
    }
}

impl Section for EpisodicConfig {
    const KEY: &'static str = "episodic";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.boolean(&t, "enabled", &mut self.enabled);
        walker.integer(&t, "capacity", 1..=10_000_000, &mut self.capacity);
        walker.integer(
            &t,
            "embedding_dimension",
            1..=8192,
            &mut self.embedding_dimension,
        );
        walker.integer(
            &t,
            "half_life_seconds",
            0..=10 * 365 * 86_400,
            &mut self.half_life_seconds,
        );
        walker.integer(
            &t,
            "max_text_bytes",
            1..=1024 * 1024,
            &mut self.max_text_bytes,
        );
        walker.integer(&t, "max_k", 1..=10_000, &mut self.max_k);
        walker.integer(&t, "max_batch", 1..=10_000, &mut self.max_batch);
        walker.integer(
            &t,
            "query_cache_entries",
            0..=100_000,
            &mut self.query_cache_entries,
        );
        walker.integer(
            &t,
            "query_cache_ttl_ms",
            0..=3_600_000,
            &mut self.query_cache_ttl_ms,
        );
        self.actor.parse_keys(walker, &t);
        walker.finish(t);
    }

    fn default_text(&self) -> String {
        format!(
            r#"[episodic]
# The agent's short-term memory: a ring of the last `capacity` episodes, persisted in the store.
enabled = {enabled}
capacity = {capacity}
embedding_dimension = {dimension}
# Query score = cosine(query, episode) * 2^(-age / half_life_seconds) * importance
# (age = now - episode timestamp, never negative; half_life_seconds = 0 disables decay).
half_life_seconds = {half_life}
max_text_bytes = {max_text}
# Largest k for Query and n for Recent; largest StoreBatch.
max_k = {max_k}
max_batch = {max_batch}
# Repeated queries are answered from a cache that every write invalidates; an answer is reused for at
# most query_cache_ttl_ms (scores decay with time). query_cache_entries = 0 disables it.
query_cache_entries = {cache_entries}
query_cache_ttl_ms = {cache_ttl}
{actor}"#,
            enabled = self.enabled,
            capacity = self.capacity,
            dimension = self.embedding_dimension,
            half_life = self.half_life_seconds,
            max_text = self.max_text_bytes,
            max_k = self.max_k,
            max_batch = self.max_batch,
            cache_entries = self.query_cache_entries,
            cache_ttl = self.query_cache_ttl_ms,
            actor = self.actor.default_text(),
        )
    }
}
