//! The in-memory ring: episodes in sequence order, at most `capacity` of them, with an exact top-k
//! scan laid out for memory bandwidth.
//!
//! Layout (struct of arrays, indexed by slot): raw embeddings in one contiguous `Vec<f32>` (row = slot),
//! the inverse norm of each row (computed once at insert, so cosine needs one dot product and one
//! multiply per row), timestamps, importance, interned source/kind symbols, and the episode's other
//! fields behind an `Arc` for cheap result building. `order` maps sequence → slot; evicting the oldest
//! is `pop_first`, and a freed slot is reused by the next insert.
//!
//! Score: `cos(query, e) × 2^(−age / half_life) × importance`, age = `now − timestamp` (never negative).
//! Both weights are in [0, 1], so `max(cos, 0)` bounds a row's score: once the top-k heap is full, a row
//! whose bound is below the k-th score is skipped without computing its decay. Results are exact.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use super::{Episode, EpisodeData, Filter, Scored};

const FREE: u64 = u64::MAX;

pub struct Ring {
    dim: usize,
    capacity: usize,
    vectors: Vec<f32>,
    inv_norm: Vec<f32>,
    ts_ms: Vec<i64>,
    importance: Vec<f32>,
    source: Vec<u32>,
    kind: Vec<u32>,
    seq_of: Vec<u64>,
    data: Vec<Option<Arc<EpisodeData>>>,
    order: BTreeMap<u64, u32>,
    free: Vec<u32>,
    symbols: HashMap<String, u32>,
    /// The sequence number the next episode gets (never reused, also across restarts).
    pub next_seq: u64,
    /// Bumped by every write; cached answers from another generation are stale.
    pub generation: u64,
}

/// A filter resolved against the ring's symbols.
struct Resolved {
    since: i64,
    until: i64,
    source: Option<u32>,
    kind: Option<u32>,
}

impl Ring {
    pub fn new(dim: usize, capacity: usize) -> Ring {
        Ring {
            dim,
            capacity: capacity.max(1),
            vectors: Vec::new(),
            inv_norm: Vec::new(),
            ts_ms: Vec::new(),
            importance: Vec::new(),
            source: Vec::new(),
            kind: Vec::new(),
            seq_of: Vec::new(),
            data: Vec::new(),
            order: BTreeMap::new(),
            free: Vec::new(),
            symbols: HashMap::new(),
            next_seq: 0,
            generation: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The `n` oldest sequence numbers, oldest first.
    pub fn oldest(&self, n: usize) -> Vec<u64> {
        self.order.keys().take(n).copied().collect()
    }

    /// Sequence numbers, oldest first.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.keys().copied()
    }

    fn symbol(&mut self, name: &str) -> u32 {
        if let Some(id) = self.symbols.get(name) {
            return *id;
        }
        let id = self.symbols.len() as u32;
        self.symbols.insert(name.to_owned(), id);
        id
    }

    /// Adds an episode (its embedding must have `dim` values and a non-zero norm: validated before).
    /// Evicts and returns the oldest sequence number when full.
    pub fn insert(&mut self, data: EpisodeData, embedding: &[f32]) -> Option<u64> {
        let evicted = if self.order.len() >= self.capacity {
            self.order.first_key_value().map(|(seq, _)| *seq)
        } else {
            None
        };
        if let Some(seq) = evicted {
            self.remove(seq);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot as usize,
            None => {
                let slot = self.seq_of.len();
                self.vectors.resize((slot + 1) * self.dim, 0.0);
                self.inv_norm.push(0.0);
                self.ts_ms.push(0);
                self.importance.push(0.0);
                self.source.push(0);
                self.kind.push(0);
                self.seq_of.push(FREE);
                self.data.push(None);
                slot
            }
        };
        let norm = embedding
            .iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt();
        self.vectors[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(embedding);
        self.inv_norm[slot] = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
        self.ts_ms[slot] = data.timestamp_ms;
        self.importance[slot] = data.importance;
        self.source[slot] = self.symbol(&data.source);
        self.kind[slot] = self.symbol(&data.kind);
        self.seq_of[slot] = data.seq;
        self.order.insert(data.seq, slot as u32);
        self.next_seq = self.next_seq.max(data.seq + 1);
        self.data[slot] = Some(Arc::new(data));
        evicted
    }

    pub fn remove(&mut self, seq: u64) -> bool {
        let Some(slot) = self.order.remove(&seq) else {
            return false;
        };
        let slot = slot as usize;
        self.seq_of[slot] = FREE;
        self.data[slot] = None;
        self.inv_norm[slot] = 0.0;
        self.free.push(slot as u32);
        true
    }

    fn episode(&self, slot: usize) -> Option<Episode> {
        let data = self.data[slot].clone()?;
        Some(Episode {
            embedding: self.vectors[slot * self.dim..(slot + 1) * self.dim].to_vec(),
            data,
        })
    }

    pub fn get(&self, seq: u64) -> Option<Episode> {
        self.order
            .get(&seq)
            .and_then(|slot| self.episode(*slot as usize))
    }

    fn resolve(&self, filter: &Filter) -> Option<Resolved> {
        let lookup = |name: &Option<String>| match name {
            None => Some(None),
            Some(name) => self.symbols.get(name).map(|id| Some(*id)),
        };
        Some(Resolved {
            since: filter.since_ms.unwrap_or(i64::MIN),
            until: filter.until_ms.unwrap_or(i64::MAX),
            // An unknown source or kind matches nothing.
            source: lookup(&filter.source)?,
            kind: lookup(&filter.kind)?,
        })
    }

    #[inline]
    fn admits(&self, f: &Resolved, slot: usize) -> bool {
        let ts = self.ts_ms[slot];
        self.seq_of[slot] != FREE
            && ts >= f.since
            && ts < f.until
            && f.source.is_none_or(|s| self.source[slot] == s)
            && f.kind.is_none_or(|k| self.kind[slot] == k)
    }

    /// Sequence numbers of the episodes the filter matches, oldest first.
    pub fn matching(&self, filter: &Filter) -> Vec<u64> {
        let Some(f) = self.resolve(filter) else {
            return Vec::new();
        };
        self.order
            .iter()
            .filter(|(_, slot)| self.admits(&f, **slot as usize))
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// The `n` newest episodes the filter matches, newest first.
    pub fn recent(&self, n: usize, filter: &Filter) -> Vec<Episode> {
        let Some(f) = self.resolve(filter) else {
            return Vec::new();
        };
        self.order
            .values()
            .rev()
            .filter(|slot| self.admits(&f, **slot as usize))
            .take(n)
            .filter_map(|slot| self.episode(*slot as usize))
            .collect()
    }

    /// The exact top `k` by score (see the module docs), best first; ties go to the newer episode.
    ///
    /// One thread: the scan is memory-bound, and splitting a 100k × 384 scan over this machine's two
    /// cores measured no faster (docs/PERFORMANCE.md) while taking the core concurrent calls need.
    pub fn query(
        &self,
        embedding: &[f32],
        k: usize,
        filter: &Filter,
        now_ms: i64,
        half_life_ms: f64,
    ) -> Vec<Scored> {
        self.query_with(embedding, k, filter, now_ms, half_life_ms, 1)
    }

    /// [`Ring::query`] split over `threads` scoped threads (the benchmark compares).
    pub fn query_with(
        &self,
        embedding: &[f32],
        k: usize,
        filter: &Filter,
        now_ms: i64,
        half_life_ms: f64,
        threads: usize,
    ) -> Vec<Scored> {
        if k == 0 || embedding.len() != self.dim {
            return Vec::new();
        }
        let Some(f) = self.resolve(filter) else {
            return Vec::new();
        };
        let norm = embedding
            .iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            return Vec::new();
        }
        let query: Vec<f32> = embedding
            .iter()
            .map(|x| (f64::from(*x) / norm) as f32)
            .collect();
        let scan = Scan {
            ring: self,
            query: &query,
            filter: &f,
            k,
            now_ms,
            // 2^(−age/h) = exp2(age × −1/h); 0 means no decay.
            decay_rate: if half_life_ms > 0.0 {
                -1.0 / half_life_ms
            } else {
                0.0
            },
        };
        let rows = self.seq_of.len();
        let threads = threads.clamp(1, rows.max(1));
        let mut heap = if threads <= 1 {
            scan.rows(0, rows)
        } else {
            let chunk = rows.div_ceil(threads);
            let scan = &scan;
            let heaps: Vec<BinaryHeap<Candidate>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| scope.spawn(move || scan.rows(t * chunk, ((t + 1) * chunk).min(rows))))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            let mut merged = BinaryHeap::with_capacity(k + 1);
            for candidate in heaps.into_iter().flatten() {
                push_bounded(&mut merged, candidate, k);
            }
            merged
        };
        let mut best = Vec::with_capacity(heap.len());
        while let Some(candidate) = heap.pop() {
            best.push(candidate);
        }
        best.reverse();
        best.into_iter()
            .filter_map(|c| {
                self.episode(c.slot).map(|episode| Scored {
                    episode,
                    score: c.score,
                    similarity: c.similarity,
                    decay: c.decay,
                })
            })
            .collect()
    }
}

struct Scan<'a> {
    ring: &'a Ring,
    query: &'a [f32],
    filter: &'a Resolved,
    k: usize,
    now_ms: i64,
    decay_rate: f64,
}

impl Scan<'_> {
    fn rows(&self, from: usize, to: usize) -> BinaryHeap<Candidate> {
        let ring = self.ring;
        let dim = ring.dim;
        let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(self.k + 1);
        for slot in from..to {
            if !ring.admits(self.filter, slot) {
                continue;
            }
            let row = &ring.vectors[slot * dim..(slot + 1) * dim];
            let similarity = dot(self.query, row) * ring.inv_norm[slot];
            if heap.len() == self.k {
                if let Some(worst) = heap.peek() {
                    if similarity.max(0.0) < worst.score {
                        continue;
                    }
                }
            }
            let age = (self.now_ms - ring.ts_ms[slot]).max(0) as f64;
            let decay = if self.decay_rate == 0.0 {
                1.0
            } else {
                (age * self.decay_rate).exp2() as f32
            };
            let score = similarity * decay * ring.importance[slot];
            push_bounded(
                &mut heap,
                Candidate {
                    score,
                    similarity,
                    decay,
                    seq: ring.seq_of[slot],
                    slot,
                },
                self.k,
            );
        }
        heap
    }
}

/// Keeps the best `k`: the heap's top is the worst kept candidate.
fn push_bounded(heap: &mut BinaryHeap<Candidate>, candidate: Candidate, k: usize) {
    if heap.len() < k {
        heap.push(candidate);
    } else if let Some(mut worst) = heap.peek_mut() {
        if candidate.better_than(&worst) {
            *worst = candidate;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    similarity: f32,
    decay: f32,
    seq: u64,
    slot: usize,
}

impl Candidate {
    fn better_than(&self, other: &Candidate) -> bool {
        self.rank(other) == Ordering::Greater
    }

    fn rank(&self, other: &Candidate) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(self.seq.cmp(&other.seq))
    }
}

// The heap orders by "worse is greater", so its top is the candidate to replace.
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank(self)
    }
}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}

/// Dot product over 16 independent lanes, so the compiler keeps several vector registers busy instead
/// of one serial chain of additions.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
