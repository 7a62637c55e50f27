//! `[store]`: when writes reach the disk, and sled's cache.

use crate::config::{MIB, Section, Table, Walker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushPolicy {
    /// Every acknowledged write is flushed to disk before the reply.
    Always,
    /// Writes are flushed in the background every `flush_interval_ms`; a crash can lose that window.
    Interval,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreConfig {
    pub flush: FlushPolicy,
    pub flush_interval_ms: u64,
    pub cache_capacity_bytes: u64,
    /// Writes are refused (RESOURCE_EXHAUSTED) while the filesystem has less than this free.
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            flush: FlushPolicy::Always,
            flush_interval_ms: 500,
            cache_capacity_bytes: 64 * MIB,
            min_free_bytes: 64 * MIB,
        }
    }
}

impl Section for StoreConfig {
    const KEY: &'static str = "store";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.choice(
            &t,
            "flush",
            &[
                ("always", FlushPolicy::Always),
                ("interval", FlushPolicy::Interval),
            ],
            &mut self.flush,
        );
        walker.integer(
            &t,
            "flush_interval_ms",
            1..=60_000,
            &mut self.flush_interval_ms,
        );
        walker.integer(
            &t,
            "cache_capacity_bytes",
            MIB..=64 * 1024 * MIB,
            &mut self.cache_capacity_bytes,
        );
        walker.integer(
            &t,
            "min_free_bytes",
            0..=1024 * 1024 * MIB,
            &mut self.min_free_bytes,
        );
        walker.finish(t);
    }

    fn default_text(&self) -> String {
        format!(
            r#"[store]
# "always": every acknowledged write is on disk before the reply.
# "interval": flushed every flush_interval_ms; a crash may lose that window.
flush = "{}"
flush_interval_ms = {}
cache_capacity_bytes = {}
# Writes are refused (RESOURCE_EXHAUSTED; reads keep serving) while the filesystem holding the state
# directory has less than this free, and resume by themselves when space returns. 0: only sled's own
# "no space" errors stop writes.
min_free_bytes = {}
"#,
            match self.flush {
                FlushPolicy::Always => "always",
                FlushPolicy::Interval => "interval",
            },
            self.flush_interval_ms,
            self.cache_capacity_bytes,
            self.min_free_bytes
        )
    }
}
