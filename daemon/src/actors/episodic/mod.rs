//! The episodic buffer: the agent's short-term memory, and the supervisor's first real actor.
//!
//! - A ring of the last `capacity` episodes (id, timestamp, source, kind, text, embedding, importance,
//!   metadata); the oldest is evicted when a new one arrives at capacity.
//! - Query: exact top-k by `cos(query, e) × 2^(−age / half_life) × importance` ([`ring`]), with filters
//!   on time range (`since ≤ t < until`), source and kind; plus recent-N, get by id, forget by ids or
//!   filter.
//! - Persisted in the store (`trees::EPISODIC`): a write is acknowledged only after it is applied to the
//!   store (flushed under `store.flush = "always"`), so after a restart or kill -9 the ring comes back
//!   in the same order with nothing acknowledged lost.
//!
//! **Who does what.** Writes (store, store batch, forget) go through the actor's mailbox: one writer,
//! in order, with the mailbox's overflow policy as backpressure; the actor persists first, then applies
//! the change to the shared ring under a short write lock. Reads (query, recent, get) do not queue
//! behind writes: they take the ring's read lock directly, in parallel, and see either the state before
//! or after a write, never half of one. Each new incarnation of the actor reloads the ring from the
//! store, so a panic in the middle of a write cannot leave a half-applied ring behind. Until the first
//! load, reads answer UNAVAILABLE.
//!
//! A query cache answers repeated queries; every write bumps the ring's generation, which invalidates
//! it. Entries also expire after `query_cache_ttl_ms`, because decay moves scores as time passes.

mod actor;
pub mod api;
mod cache;
pub mod config;
pub mod events;
pub mod ring;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::actors::episodic::config::EpisodicConfig;
use crate::actors::episodic::events::{EpisodicQueried, EpisodicWritten};
use crate::error::{FieldViolation, ServiceError};
use crate::store::{Store, StoreError, trees};
use crate::supervisor::config::ActorConfig;
use crate::supervisor::{ActorRef, SupervisorBuilder, SupervisorError};

pub use actor::Command;
use cache::{QueryCache, QueryKey};
use ring::Ring;

/// The actor's name; its supervision settings live in `[episodic]` with the rest of its section.
pub const ACTOR_NAME: &str = "episodic";
/// gRPC health names that follow the actor's state.
pub const HEALTH_SERVICES: &[&str] = &["brainstem.v1.Episodic", "brainstem.actor.episodic"];

const MAX_SOURCE_BYTES: usize = 256;
const MAX_KIND_BYTES: usize = 128;
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_KEY_BYTES: usize = 128;
const MAX_METADATA_VALUE_BYTES: usize = 4096;
/// How far in the future a timestamp may be (clock skew between agent processes).
const MAX_FUTURE_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum EpisodicError {
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    #[error("no episode with id {0:?}")]
    NotFound(String),
    #[error("the episodic buffer is loading")]
    Loading,
    #[error(transparent)]
    Actor(#[from] SupervisorError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EpisodicError {
    /// The same error again, for each command of a group that failed together.
    pub(crate) fn duplicate(&self) -> EpisodicError {
        match self {
            EpisodicError::Invalid(violations) => EpisodicError::Invalid(violations.clone()),
            EpisodicError::NotFound(id) => EpisodicError::NotFound(id.clone()),
            EpisodicError::Loading => EpisodicError::Loading,
            EpisodicError::Store(err) => EpisodicError::Store(err.duplicate()),
            EpisodicError::Actor(err) => EpisodicError::Actor(err.clone()),
        }
    }
}

impl From<EpisodicError> for ServiceError {
    fn from(err: EpisodicError) -> Self {
        match err {
            EpisodicError::Invalid(violations) => ServiceError::InvalidArgument(violations),
            EpisodicError::NotFound(_) => ServiceError::NotFound(err.to_string()),
            EpisodicError::Loading => ServiceError::Unavailable(err.to_string()),
            EpisodicError::Actor(err) => err.into(),
            EpisodicError::Store(err) => ServiceError::Store(err),
        }
    }
}

/// An episode as a caller submits it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEpisode {
    /// Assigned by the buffer; must be empty.
    pub id: String,
    /// Unix milliseconds; `None` means now.
    pub timestamp_ms: Option<i64>,
    pub source: String,
    pub kind: String,
    pub text: String,
    pub embedding: Vec<f32>,
    /// In [0, 1]; `None` means 1.
    pub importance: Option<f32>,
    pub metadata: BTreeMap<String, String>,
}

/// The stored fields of an episode, apart from its embedding (which lives in the ring's matrix).
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeData {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub source: String,
    pub kind: String,
    pub text: String,
    pub importance: f32,
    pub metadata: BTreeMap<String, String>,
}

/// A stored episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub data: Arc<EpisodeData>,
    pub embedding: Vec<f32>,
}

impl Episode {
    pub fn id(&self) -> String {
        format_id(self.data.seq)
    }
}

/// A query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub episode: Episode,
    /// `similarity × decay × importance`.
    pub score: f32,
    /// Cosine similarity to the query.
    pub similarity: f32,
    /// `2^(−age / half_life)`.
    pub decay: f32,
}

/// Which episodes a query, recent-N or forget applies to. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Inclusive, unix milliseconds.
    pub since_ms: Option<i64>,
    /// Exclusive, unix milliseconds.
    pub until_ms: Option<i64>,
    pub source: Option<String>,
    pub kind: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self == &Filter::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ForgetTarget {
    Ids(Vec<String>),
    Filter(Filter),
}

/// What a store (single or batch) did.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The stored episodes' ids and timestamps, in request order.
    pub episodes: Vec<(String, i64)>,
    /// Older episodes evicted to make room.
    pub evicted: u64,
}

#[derive(Debug, Clone)]
pub struct QueryOutcome {
    pub results: Arc<Vec<Scored>>,
    pub cached: bool,
}

/// Episode ids are the sequence number in 16 hex digits: unique, ordered, never reused.
pub fn format_id(seq: u64) -> String {
    format!("{seq:016x}")
}

pub fn parse_id(id: &str) -> Option<u64> {
    if id.len() != 16 {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}

/// Limits and scoring parameters, from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub capacity: usize,
    pub dim: usize,
    pub half_life_ms: f64,
    pub max_text_bytes: usize,
    pub max_k: usize,
    pub max_batch: usize,
    pub cache_entries: usize,
    pub cache_ttl: Duration,
}

impl Settings {
    pub fn from_config(config: &EpisodicConfig) -> Settings {
        Settings {
            capacity: config.capacity as usize,
            dim: config.embedding_dimension as usize,
            half_life_ms: config.half_life_seconds as f64 * 1000.0,
            max_text_bytes: config.max_text_bytes as usize,
            max_k: config.max_k as usize,
            max_batch: config.max_batch as usize,
            cache_entries: config.query_cache_entries as usize,
            cache_ttl: Duration::from_millis(config.query_cache_ttl_ms),
        }
    }
}

/// State shared by the actor (the writer) and the read paths.
pub(crate) struct Shared {
    settings: Settings,
    ring: RwLock<Option<Ring>>,
    cache: Mutex<QueryCache>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Shared {
    fn new(settings: Settings) -> Shared {
        Shared {
            cache: Mutex::new(QueryCache::new(settings.cache_entries, settings.cache_ttl)),
            settings,
            ring: RwLock::new(None),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Option<Ring>>, EpisodicError> {
        // Writers replace whole values under the lock; a poisoned lock (a panic while writing) is
        // repaired by the next incarnation's reload, and until then reads see a consistent ring.
        let guard = self.ring.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(EpisodicError::Loading);
        }
        Ok(guard)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, QueryCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The episodic buffer as the API sees it: validated reads on the shared ring, writes through the actor.
#[derive(Clone)]
pub struct Episodic {
    shared: Arc<Shared>,
    actor: ActorRef<Command>,
}

impl Episodic {
    /// Declares the actor with the supervisor and returns the handle the API uses.
    pub fn register(
        builder: &mut SupervisorBuilder,
        config: &EpisodicConfig,
        actor_config: ActorConfig,
        store: &Store,
    ) -> Result<Episodic, EpisodicError> {
        let shared = Arc::new(Shared::new(Settings::from_config(config)));
        let tree = store.tree(trees::EPISODIC)?;
        let actor = builder.add(
            actor::EpisodicActor::new(shared.clone(), tree),
            actor_config,
            HEALTH_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        )?;
        Ok(Episodic { shared, actor })
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Stores episodes atomically (all or none), in order. `field` names the request field for errors:
    /// `"episode"` for a single store, `"episodes"` for a batch.
    pub async fn store(
        &self,
        field: &str,
        episodes: Vec<NewEpisode>,
    ) -> Result<Stored, EpisodicError> {
        let settings = &self.shared.settings;
        let now_ms = now_ms();
        let mut violations = Vec::new();
        if episodes.is_empty() {
            violations.push(FieldViolation::new(
                field,
                "at least one episode is required",
            ));
        } else if episodes.len() > settings.max_batch {
            violations.push(FieldViolation::new(
                field,
                format!(
                    "{} episodes is more than the maximum batch of {}",
                    episodes.len(),
                    settings.max_batch
                ),
            ));
        }
        let single = episodes.len() == 1 && field == "episode";
        for (i, episode) in episodes.iter().enumerate() {
            let prefix = if single {
                field.to_owned()
            } else {
                format!("{field}[{i}]")
            };
            validate::new_episode(&prefix, episode, settings, now_ms, &mut violations);
        }
        if !violations.is_empty() {
            return Err(EpisodicError::Invalid(violations));
        }
        let stored = self
            .actor
            .ask(|reply| Command::Store {
                episodes,
                now_ms,
                reply,
                span: if crate::runtime::traces::enabled() {
                    tracing::Span::current()
                } else {
                    tracing::Span::none()
                },
            })
            .await??;
        Ok(stored)
    }

    pub async fn forget(&self, target: ForgetTarget) -> Result<u64, EpisodicError> {
        let mut violations = Vec::new();
        match &target {
            ForgetTarget::Ids(ids) => {
                if ids.is_empty() {
                    violations.push(FieldViolation::new(
                        "ids",
                        "give ids or a filter (with at least one criterion)",
                    ));
                }
                if ids.len() > self.shared.settings.max_batch {
                    violations.push(FieldViolation::new(
                        "ids",
                        format!(
                            "{} ids is more than the maximum of {}",
                            ids.len(),
                            self.shared.settings.max_batch
                        ),
                    ));
                }
                for (i, id) in ids.iter().enumerate() {
                    if parse_id(id).is_none() {
                        violations.push(FieldViolation::new(
                            format!("ids[{i}]"),
                            format!("{:?} is not an episode id (16 hex digits)", truncate(id)),
                        ));
                    }
                }
            }
            ForgetTarget::Filter(filter) => {
                if filter.is_empty() {
                    violations.push(FieldViolation::new(
                        "filter",
                        "an empty filter would forget everything; give at least one criterion",
                    ));
                }
                validate::filter("filter", filter, &mut violations);
            }
        }
        if !violations.is_empty() {
            return Err(EpisodicError::Invalid(violations));
        }
        let removed = self
            .actor
            .ask(|reply| Command::Forget { target, reply })
            .await??;
        Ok(removed)
    }

    /// Top `k` by decayed, importance-weighted cosine similarity.
    pub fn query(
        &self,
        embedding: &[f32],
        k: u32,
        filter: &Filter,
    ) -> Result<QueryOutcome, EpisodicError> {
        self.query_at(embedding, k, filter, now_ms())
    }

    pub(crate) fn query_at(
        &self,
        embedding: &[f32],
        k: u32,
        filter: &Filter,
        now_ms: i64,
    ) -> Result<QueryOutcome, EpisodicError> {
        let settings = &self.shared.settings;
        let mut violations = Vec::new();
        validate::embedding("embedding", embedding, settings.dim, &mut violations);
        validate::k("k", k, settings.max_k, &mut violations);
        validate::filter("filter", filter, &mut violations);
        if !violations.is_empty() {
            return Err(EpisodicError::Invalid(violations));
        }
        let guard = self.shared.read()?;
        let Some(ring) = guard.as_ref() else {
            return Err(EpisodicError::Loading);
        };
        let key = (settings.cache_entries > 0).then(|| QueryKey::new(embedding, k, filter));
        if let Some(key) = &key {
            if let Some(results) = self.shared.cache().get(key, ring.generation) {
                self.shared.hits.fetch_add(1, Ordering::Relaxed);
                EpisodicQueried {
                    cached: true,
                    duration: Duration::ZERO,
                }
                .emit();
                return Ok(QueryOutcome {
                    results,
                    cached: true,
                });
            }
        }
        let started = Instant::now();
        let results =
            Arc::new(ring.query(embedding, k as usize, filter, now_ms, settings.half_life_ms));
        self.shared.misses.fetch_add(1, Ordering::Relaxed);
        EpisodicQueried {
            cached: false,
            duration: started.elapsed(),
        }
        .emit();
        if let Some(key) = key {
            self.shared
                .cache()
                .insert(key, ring.generation, results.clone());
        }
        Ok(QueryOutcome {
            results,
            cached: false,
        })
    }

    /// The newest `n` episodes matching `filter`, newest first.
    pub fn recent(&self, n: u32, filter: &Filter) -> Result<Vec<Episode>, EpisodicError> {
        let mut violations = Vec::new();
        validate::k("n", n, self.shared.settings.max_k, &mut violations);
        validate::filter("filter", filter, &mut violations);
        if !violations.is_empty() {
            return Err(EpisodicError::Invalid(violations));
        }
        let guard = self.shared.read()?;
        Ok(guard
            .as_ref()
            .map(|ring| ring.recent(n as usize, filter))
            .unwrap_or_default())
    }

    pub fn get(&self, id: &str) -> Result<Episode, EpisodicError> {
        let Some(seq) = parse_id(id) else {
            return Err(EpisodicError::Invalid(vec![FieldViolation::new(
                "id",
                format!("{:?} is not an episode id (16 hex digits)", truncate(id)),
            )]));
        };
        let guard = self.shared.read()?;
        guard
            .as_ref()
            .and_then(|ring| ring.get(seq))
            .ok_or_else(|| EpisodicError::NotFound(id.to_owned()))
    }

    /// Episodes held now.
    pub fn len(&self) -> Result<usize, EpisodicError> {
        Ok(self.shared.read()?.as_ref().map_or(0, Ring::len))
    }

    pub fn is_empty(&self) -> Result<bool, EpisodicError> {
        Ok(self.len()? == 0)
    }

    /// (hits, misses) of the query cache since start.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.shared.hits.load(Ordering::Relaxed),
            self.shared.misses.load(Ordering::Relaxed),
        )
    }
}

fn now_ms() -> i64 {
    crate::store::unix_ms_now() as i64
}

/// At most 64 characters of an input, for error messages.
fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

pub(crate) fn written(stored: u64, evicted: u64, forgotten: u64, held: usize) {
    EpisodicWritten {
        stored,
        evicted,
        forgotten,
        held: held as u64,
    }
    .emit();
}
