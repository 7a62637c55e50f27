//! Query cache: repeated queries (same embedding bits, k and filter) within the same ring generation
//! and `ttl` are answered without a scan. Bounded; the oldest entry goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Filter, Scored};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryKey {
    embedding: Vec<u32>,
    k: u32,
    filter: Filter,
}

impl QueryKey {
    pub fn new(embedding: &[f32], k: u32, filter: &Filter) -> QueryKey {
        QueryKey {
            embedding: embedding.iter().map(|x| x.to_bits()).collect(),
            k,
            filter: filter.clone(),
        }
    }
}

struct Entry {
    generation: u64,
    at: Instant,
    results: Arc<Vec<Scored>>,
}

pub struct QueryCache {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<QueryKey, Entry>,
    order: VecDeque<QueryKey>,
}

impl QueryCache {
    pub fn new(capacity: usize, ttl: Duration) -> QueryCache {
        QueryCache {
            capacity,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A fresh answer for `key` computed on this `generation` of the ring.
    pub fn get(&self, key: &QueryKey, generation: u64) -> Option<Arc<Vec<Scored>>> {
        let entry = self.entries.get(key)?;
        (entry.generation == generation && entry.at.elapsed() < self.ttl)
            .then(|| entry.results.clone())
    }

    pub fn insert(&mut self, key: QueryKey, generation: u64, results: Arc<Vec<Scored>>) {
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        if self
            .entries
            .insert(
                key.clone(),
                Entry {
                    generation,
                    at: Instant::now(),
                    results,
                },
            )
            .is_none()
        {
            self.order.push_back(key);
        }
    }

    /// Drops everything (a write made every entry stale).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
