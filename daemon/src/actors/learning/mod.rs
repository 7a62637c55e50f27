//! The learning actor: an online model fed with feedback events, crash-exact (docs/LEARNING.md).
//!
//! **Model.** Logistic regression trained by SGD, one step per event ([`model`]); `Predict` returns
//! the probability of class 1. The target is the label in [0, 1]: a class (0 or 1) or a reward. Not a
//! contextual bandit: the callers tell us the outcome of what they observed, not of an action we
//! chose among several, so there is no exploration to manage and no per-action model; a probability
//! that the callers threshold (or feed to their own policy) is what they need.
//!
//! **Intake** ([`Learning::feedback`], on the caller's task): validate, compute the deduplication key,
//! then under the intake lock: a key already stored is a duplicate (counted in the same store flush
//! as any other write, so an acknowledged duplicate is durable too and is answered only once its
//! first copy is); else the event takes the next sequence number and is written with its key in one
//! atomic batch. The caller is answered after the committer's flush (acknowledged = durable);
//! concurrent callers share flushes (group commit), because the lock is held only while the batch is
//! applied, never across the flush.
//!
//! **Learning** ([`actor`]): the actor learns the stored events in sequence order, each exactly once:
//! it loads the checkpoint (weights, counters, last learned sequence), then reads and learns the
//! events after it; every `checkpoint_every` events it writes a new checkpoint atomically, in the same
//! batch that removes the events it covers. A kill -9 loses at most the work since the checkpoint,
//! which the next start replays from the stored events: nothing acknowledged is lost, nothing is
//! learned twice.
//!
//! **Backpressure.** Events accepted but not yet learned are the pending queue; once it holds
//! `queue_high_water` events, Feedback answers RESOURCE_EXHAUSTED with a retry hint until the actor
//! has drained it to `queue_low_water` (duplicates are still answered, they add nothing).
//!
//! Store layout (`trees::LEARNING`): `e` + big-endian sequence → [`EventRecord`]; `d` + SHA-256 key →
//! [`DedupRecord`]; `x` + big-endian sequence → [`ExpiryRecord`] (the order in which keys expire);
//! `m:checkpoint` → [`CheckpointRecord`]; `m:duplicates` → count; `m:dimension` → the dimension fixed
//! by the first event.

mod actor;
pub mod api;
pub mod config;
pub mod events;
pub mod model;
pub mod publish;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::actors::learning::config::LearningConfig;
use crate::actors::learning::events::{FeedbackAnswered, PauseChanged, QueueLevel};
use crate::error::{FieldViolation, ServiceError};
use crate::store::{Batch, Record, Store, StoreError, Tree, trees};
use crate::supervisor::{ActorRef, ActorState, SupervisorBuilder, SupervisorError};

pub use model::{DedupKey, Model, Snapshot};

/// The actor's name (`Supervisor.ListActors`); its supervision settings live in `[learning]`.
pub const ACTOR_NAME: &str = "learning";
/// gRPC health names that follow the actor's state.
pub const HEALTH_SERVICES: &[&str] = &["brainstem.v1.Learning", "brainstem.actor.learning"];
/// The longest `event_id`.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// The retry hint of a paused Feedback.
pub const RETRY_AFTER: Duration = Duration::from_millis(200);

pub(crate) const EVENT_PREFIX: &[u8] = b"e";
pub(crate) const DEDUP_PREFIX: &[u8] = b"d";
pub(crate) const EXPIRY_PREFIX: &[u8] = b"x";
pub(crate) const CHECKPOINT_KEY: &[u8] = b"m:checkpoint";
pub(crate) const DUPLICATES_KEY: &[u8] = b"m:duplicates";
pub(crate) const DIMENSION_KEY: &[u8] = b"m:dimension";

#[derive(Debug, thiserror::Error)]
pub enum LearningError {
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    #[error("{0}")]
    NotReady(String),
    #[error("the learning queue holds {pending} events (high-water mark {high_water})")]
    Paused { pending: u64, high_water: u64 },
    #[error("the learning model is loading")]
    Loading,
    #[error(transparent)]
    Actor(#[from] SupervisorError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<LearningError> for ServiceError {
    fn from(err: LearningError) -> Self {
        match err {
            LearningError::Invalid(violations) => ServiceError::InvalidArgument(violations),
            LearningError::NotReady(message) => ServiceError::FailedPrecondition(message),
            LearningError::Paused { .. } => ServiceError::ResourceExhausted {
                what: format!("the learning queue ({err})"),
                retry_after: RETRY_AFTER,
            },
            LearningError::Loading => ServiceError::Unavailable(err.to_string()),
            LearningError::Actor(err) => err.into(),
            LearningError::Store(err) => ServiceError::Store(err),
        }
    }
}

/// One feedback event as a caller submits it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedbackEvent {
    pub features: Vec<f64>,
    pub label: f64,
    pub event_id: Option<String>,
}

/// How a Feedback was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Durable; will be learned exactly once.
    Accepted { seq: u64 },
    /// Accepted before (its first copy's sequence); not learned again.
    Duplicate { seq: u64 },
}

/// What `GetStats` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub events_learned: u64,
    pub duplicates: u64,
    pub events_accepted: u64,
    pub pending: u64,
    pub paused: bool,
    pub accuracy: Option<f64>,
    pub accuracy_window: u64,
    pub dimension: u64,
    pub checkpoint_seq: u64,
    pub replayed: u64,
}

/// One stored event. Features are base64 of their f64 LE bytes and the label its f64 bits, so the
/// replay sees exactly the values that were acknowledged (JSON numbers could round).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub features: String,
    pub label_bits: u64,
}

impl Record for EventRecord {
    const VERSION: u8 = 1;
}

impl EventRecord {
    pub fn new(seq: u64, features: &[f64], label: f64) -> EventRecord {
        let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
        EventRecord {
            seq,
            features: BASE64.encode(bytes),
            label_bits: label.to_bits(),
        }
    }

    pub fn decode(&self) -> Result<(Vec<f64>, f64), String> {
        let bytes = BASE64
            .decode(&self.features)
            .map_err(|err| format!("features are not base64: {err}"))?;
        let features = model::f64s_le(&bytes)
            .ok_or_else(|| format!("{} feature bytes are not whole f64s", bytes.len()))?;
        Ok((features, f64::from_bits(self.label_bits)))
    }
}

/// A deduplication key's entry: the first copy's sequence and when it was accepted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DedupRecord {
    pub seq: u64,
    pub at_ms: u64,
}

impl Record for DedupRecord {
    const VERSION: u8 = 1;
}

/// The expiry index: which key was accepted with this sequence, and when.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpiryRecord {
    pub key: String,
    pub at_ms: u64,
}

impl Record for ExpiryRecord {
    const VERSION: u8 = 1;
}

/// The model at one point of the event sequence. Weights are base64 of [`Model::weight_bytes`] (the
/// bytes a registry would publish); the prequential window is kept too, so a replay continues it
/// exactly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointRecord {
    pub dimension: u64,
    pub weights: String,
    pub learned_seq: u64,
    pub events_learned: u64,
    pub window_bits: String,
    pub window_len: u64,
    pub written_ms: u64,
}

impl Record for CheckpointRecord {
    const VERSION: u8 = 1;
}

impl CheckpointRecord {
    pub fn of(model: &Model) -> CheckpointRecord {
        CheckpointRecord {
            dimension: model.weights.len() as u64,
            weights: BASE64.encode(model.weight_bytes()),
            learned_seq: model.learned_seq,
            events_learned: model.events_learned,
            window_bits: BASE64.encode(model.window.to_bits()),
            window_len: model.window.len() as u64,
            written_ms: crate::store::unix_ms_now(),
        }
    }

    pub fn model(&self, window: usize) -> Result<Model, String> {
        let bytes = BASE64
            .decode(&self.weights)
            .map_err(|err| format!("weights are not base64: {err}"))?;
        let (weights, bias) = Model::weights_from_bytes(&bytes)?;
        if weights.len() as u64 != self.dimension {
            return Err(format!(
                "{} weights for dimension {}",
                weights.len(),
                self.dimension
            ));
        }
        let bits = BASE64
            .decode(&self.window_bits)
            .map_err(|err| format!("window is not base64: {err}"))?;
        Ok(Model {
            weights,
            bias,
            learned_seq: self.learned_seq,
            events_learned: self.events_learned,
            window: model::Window::from_bits(window, &bits, self.window_len as usize),
        })
    }
}

pub(crate) fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn dedup_store_key(key: &DedupKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.extend_from_slice(DEDUP_PREFIX);
    out.extend_from_slice(key);
    out
}

/// Limits and parameters, from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// 0: fixed by the first event.
    pub dimension: usize,
    pub max_features: usize,
    pub learning_rate: f64,
    pub checkpoint_every: u64,
    pub high_water: u64,
    pub low_water: u64,
    pub window: usize,
    pub dedup_retention_ms: u64,
}

impl Settings {
    pub fn from_config(config: &LearningConfig) -> Settings {
        Settings {
            dimension: config.feature_dimension as usize,
            max_features: config.max_features as usize,
            learning_rate: config.learning_rate,
            checkpoint_every: config.checkpoint_every,
            high_water: config.queue_high_water,
            low_water: config.queue_low_water,
            window: config.accuracy_window as usize,
            dedup_retention_ms: config.dedup_retention_seconds.saturating_mul(1000),
        }
    }
}

/// What the intake lock guards: the next sequence number and the dimension once known.
struct Intake {
    next_seq: u64,
    dimension: Option<usize>,
    duplicates: u64,
}

/// State shared by the intake (callers' tasks), the actor and the read paths.
pub(crate) struct Shared {
    settings: Settings,
    tree: Tree,
    intake: Mutex<Intake>,
    /// The last sequence number written (all events up to it are in the tree).
    appended: AtomicU64,
    /// The last sequence number the model learned.
    learned: AtomicU64,
    paused: AtomicBool,
    duplicates: AtomicU64,
    /// The dimension once known (0 before), readable without the intake lock.
    dimension: AtomicU64,
    /// The live model (Predict reads it); `None` until the actor has loaded it.
    model: RwLock<Option<Model>>,
    checkpoint_seq: AtomicU64,
    replayed: AtomicU64,
    /// Wakes the actor when an event was appended.
    wake: tokio::sync::Notify,
    /// Tests: the actor takes one permit per event it learns, so a test drives the queue exactly.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Tests: a stop without the final checkpoint, as a kill -9 would leave the store.
    skip_final_checkpoint: AtomicBool,
    /// Tests: the learning step of this sequence hangs (busy, no progress) once, as a stuck step would.
    hang_at: AtomicU64,
    /// Tests: added to the wall clock when checkpoints decide which deduplication keys expired.
    clock_offset_ms: AtomicU64,
}

impl Shared {
    /// Now, in unix milliseconds, for key expiry.
    fn now_ms(&self) -> u64 {
        crate::store::unix_ms_now().saturating_add(self.clock_offset_ms.load(Ordering::Acquire))
    }

    fn read_model(&self) -> std::sync::RwLockReadGuard<'_, Option<Model>> {
        // The actor replaces the model whole under the lock, and each incarnation reloads it from the
        // store: a poisoned lock still holds a consistent model.
        self.model.read().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> u64 {
        self.appended
            .load(Ordering::Acquire)
            .saturating_sub(self.learned.load(Ordering::Acquire))
    }

    /// Applies the high/low-water hysteresis to the current queue; whether intake is paused.
    fn update_pause(&self) -> bool {
        let pending = self.pending();
        let paused = self.paused.load(Ordering::Acquire);
        if !paused && pending >= self.settings.high_water {
            if self
                .paused
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                PauseChanged {
                    paused: true,
                    pending,
                }
                .emit();
            }
            return true;
        }
        if paused && pending <= self.settings.low_water {
            if self
                .paused
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                PauseChanged {
                    paused: false,
                    pending,
                }
                .emit();
            }
            return false;
        }
        paused
    }

    fn publish_level(&self) {
        QueueLevel {
            pending: self.pending(),
            paused: self.paused.load(Ordering::Acquire),
        }
        .emit();
    }
}

/// The learning actor as the API sees it.
#[derive(Clone)]
pub struct Learning {
    shared: Arc<Shared>,
    actor: ActorRef<()>,
}

impl Learning {
    /// Opens the tree, reads what intake needs (next sequence, dimension, duplicate count), declares
    /// the actor and returns the handle the API uses.
    pub fn register(
        builder: &mut SupervisorBuilder,
        config: &LearningConfig,
        store: &Store,
    ) -> Result<Learning, LearningError> {
        Learning::register_with(builder, config, store, None)
    }

    pub(crate) fn register_with(
        builder: &mut SupervisorBuilder,
        config: &LearningConfig,
        store: &Store,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Result<Learning, LearningError> {
        let settings = Settings::from_config(config);
        let tree = store.tree(trees::LEARNING)?;
        let checkpoint = tree.get::<CheckpointRecord>(CHECKPOINT_KEY)?;
        let checkpoint_seq = checkpoint.as_ref().map_or(0, |c| c.learned_seq);
        let last_event = match tree.scan_prefix::<EventRecord>(EVENT_PREFIX).last() {
            Some(item) => item?.1.seq,
            None => 0,
        };
        let appended = last_event.max(checkpoint_seq);
        let stored_dimension = tree.get::<u64>(DIMENSION_KEY)?.map(|d| d as usize);
        let dimension = match (settings.dimension, stored_dimension) {
            (0, stored) => stored,
            (configured, None) => Some(configured),
            (configured, Some(stored)) if configured == stored => Some(configured),
            (configured, Some(stored)) => {
                return Err(LearningError::NotReady(format!(
                    "learning.feature_dimension is {configured} but the stored model has dimension \
                     {stored}; set it to {stored} (or 0), or remove the `learning` tree's state"
                )));
            }
        };
        let duplicates = tree.get::<u64>(DUPLICATES_KEY)?.unwrap_or(0);
        let shared = Arc::new(Shared {
            settings,
            tree,
            intake: Mutex::new(Intake {
                next_seq: appended + 1,
                dimension,
                duplicates,
            }),
            appended: AtomicU64::new(appended),
            learned: AtomicU64::new(checkpoint_seq),
            paused: AtomicBool::new(false),
            duplicates: AtomicU64::new(duplicates),
            dimension: AtomicU64::new(dimension.unwrap_or(0) as u64),
            model: RwLock::new(None),
            checkpoint_seq: AtomicU64::new(checkpoint_seq),
            replayed: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            gate,
            skip_final_checkpoint: AtomicBool::new(false),
            hang_at: AtomicU64::new(0),
            clock_offset_ms: AtomicU64::new(0),
        });
        let actor = builder.add(
            actor::LearningActor::new(shared.clone()),
            config.actor.clone(),
            HEALTH_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        )?;
        Ok(Learning { shared, actor })
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Accepts one event durably (or recognises a repeat); see the module docs.
    pub async fn feedback(&self, event: FeedbackEvent) -> Result<Outcome, LearningError> {
        let settings = &self.shared.settings;
        let mut violations = Vec::new();
        validate_features(&event.features, settings.max_features, &mut violations);
        if !event.label.is_finite() {
            violations.push(FieldViolation::new(
                "label",
                format!("{} is not a finite number", event.label),
            ));
        } else if !(0.0..=1.0).contains(&event.label) {
            violations.push(FieldViolation::new(
                "label",
                format!("{} is outside [0, 1]", event.label),
            ));
        }
        if let Some(id) = &event.event_id {
            if id.is_empty() {
                violations.push(FieldViolation::new(
                    "event_id",
                    "must not be empty when given",
                ));
            } else if id.len() > MAX_EVENT_ID_BYTES {
                violations.push(FieldViolation::new(
                    "event_id",
                    format!(
                        "{} bytes is longer than the maximum of {MAX_EVENT_ID_BYTES}",
                        id.len()
                    ),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(LearningError::Invalid(violations));
        }
        // A stopped or failed learner (an operator stop, `modules.learning` off) takes no events:
        // nobody would learn them. A restarting one does; it learns them when it is back.
        match self.actor.state() {
            state @ (ActorState::Stopped | ActorState::Failed) => {
                return Err(LearningError::Actor(SupervisorError::NotRunning {
                    actor: ACTOR_NAME,
                    state,
                }));
            }
            ActorState::Starting
            | ActorState::Running
            | ActorState::Stopping
            | ActorState::Restarting => {}
        }
        let key = model::dedup_key(&event.features, event.label, event.event_id.as_deref());
        let shared = &self.shared;
        let (outcome, mut durable) = {
            let mut intake = shared.intake.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(first) = shared.tree.get::<DedupRecord>(&dedup_store_key(&key))? {
                // Counted durably, in a flush that starts after the first copy's write: the duplicate
                // is answered only once its first copy is durable too.
                let duplicates = intake.duplicates + 1;
                let mut batch = Batch::default();
                batch.put(&shared.tree, DUPLICATES_KEY, &duplicates)?;
                let durable = shared.tree.apply_now(batch)?;
                intake.duplicates = duplicates;
                shared.duplicates.store(duplicates, Ordering::Release);
                (Outcome::Duplicate { seq: first.seq }, durable)
            } else {
                if let Some(dimension) = intake.dimension
                    && dimension != event.features.len()
                {
                    return Err(LearningError::Invalid(vec![dimension_violation(
                        "features",
                        event.features.len(),
                        dimension,
                    )]));
                }
                if shared.update_pause() {
                    FeedbackAnswered { result: "paused" }.emit();
                    return Err(LearningError::Paused {
                        pending: shared.pending(),
                        high_water: settings.high_water,
                    });
                }
                let seq = intake.next_seq;
                let at_ms = crate::store::unix_ms_now();
                let mut batch = Batch::default();
                batch.put(
                    &shared.tree,
                    &seq_key(EVENT_PREFIX, seq),
                    &EventRecord::new(seq, &event.features, event.label),
                )?;
                batch.put(
                    &shared.tree,
                    &dedup_store_key(&key),
                    &DedupRecord { seq, at_ms },
                )?;
                batch.put(
                    &shared.tree,
                    &seq_key(EXPIRY_PREFIX, seq),
                    &ExpiryRecord {
                        key: model::hex(&key),
                        at_ms,
                    },
                )?;
                let first_event = intake.dimension.is_none();
                if first_event {
                    batch.put(&shared.tree, DIMENSION_KEY, &(event.features.len() as u64))?;
                }
                let durable = shared.tree.apply_now(batch)?;
                intake.next_seq = seq + 1;
                if first_event {
                    intake.dimension = Some(event.features.len());
                    shared
                        .dimension
                        .store(event.features.len() as u64, Ordering::Release);
                }
                shared.appended.store(seq, Ordering::Release);
                (Outcome::Accepted { seq }, durable)
            }
        };
        if matches!(outcome, Outcome::Accepted { .. }) {
            shared.wake.notify_one();
            shared.publish_level();
        }
        durable.wait().await?;
        FeedbackAnswered {
            result: match outcome {
                Outcome::Accepted { .. } => "accepted",
                Outcome::Duplicate { .. } => "duplicate",
            },
        }
        .emit();
        Ok(outcome)
    }

    /// P(class 1 | features) under the live model, and the events it had learned.
    pub fn predict(&self, features: &[f64]) -> Result<(f64, u64), LearningError> {
        let mut violations = Vec::new();
        validate_features(features, self.shared.settings.max_features, &mut violations);
        if !violations.is_empty() {
            return Err(LearningError::Invalid(violations));
        }
        let dimension = self.shared.dimension.load(Ordering::Acquire) as usize;
        if dimension == 0 {
            return Err(LearningError::NotReady(
                "the model's dimension is not known yet: send a Feedback event first, or set \
                 learning.feature_dimension"
                    .to_owned(),
            ));
        }
        if features.len() != dimension {
            return Err(LearningError::Invalid(vec![dimension_violation(
                "features",
                features.len(),
                dimension,
            )]));
        }
        let guard = self.shared.read_model();
        let Some(model) = guard.as_ref() else {
            return Err(LearningError::Loading);
        };
        Ok((model.predict(features), model.events_learned))
    }

    pub fn stats(&self) -> Result<Stats, LearningError> {
        let shared = &self.shared;
        let guard = shared.read_model();
        let Some(model) = guard.as_ref() else {
            return Err(LearningError::Loading);
        };
        let appended = shared.appended.load(Ordering::Acquire);
        Ok(Stats {
            events_learned: model.events_learned,
            duplicates: shared.duplicates.load(Ordering::Acquire),
            events_accepted: appended,
            pending: appended.saturating_sub(model.learned_seq),
            paused: shared.paused.load(Ordering::Acquire),
            accuracy: model.window.accuracy(),
            accuracy_window: model.window.len() as u64,
            dimension: shared.dimension.load(Ordering::Acquire),
            checkpoint_seq: shared.checkpoint_seq.load(Ordering::Acquire),
            replayed: shared.replayed.load(Ordering::Acquire),
        })
    }

    /// The live model as a registry would publish it (weights, their SHA-256, metrics).
    pub fn snapshot(&self) -> Result<Snapshot, LearningError> {
        let guard = self.shared.read_model();
        guard
            .as_ref()
            .map(Snapshot::of)
            .ok_or(LearningError::Loading)
    }

    /// The actor's handle (its state, for the API's UNAVAILABLE answers and tests).
    pub fn actor(&self) -> &ActorRef<()> {
        &self.actor
    }

    /// Tests: the model as it is now.
    #[cfg(test)]
    pub(crate) fn model(&self) -> Option<Model> {
        self.shared.read_model().clone()
    }

    /// Tests: the step that learns `seq` hangs once (busy without progress) until cancelled.
    #[cfg(test)]
    pub(crate) fn hang_once_at(&self, seq: u64) {
        self.shared.hang_at.store(seq, Ordering::Release);
    }

    /// Tests: checkpoints see the clock this much later.
    #[cfg(test)]
    pub(crate) fn advance_clock(&self, by: Duration) {
        self.shared
            .clock_offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::AcqRel);
    }

    /// Tests: the next stop leaves no final checkpoint (the store as a kill -9 leaves it).
    #[cfg(test)]
    pub(crate) fn crash_on_stop(&self) {
        self.shared
            .skip_final_checkpoint
            .store(true, Ordering::Release);
    }
}

fn dimension_violation(field: &str, got: usize, dimension: usize) -> FieldViolation {
    FieldViolation::new(
        field,
        format!("has {got} values; the model's dimension is {dimension}"),
    )
}

fn validate_features(features: &[f64], max: usize, out: &mut Vec<FieldViolation>) {
    if features.is_empty() {
        out.push(FieldViolation::new(
            "features",
            "at least one feature is required",
        ));
        return;
    }
    if features.len() > max {
        out.push(FieldViolation::new(
            "features",
            format!(
                "{} values is more than learning.max_features ({max})",
                features.len()
            ),
        ));
        return;
    }
    for (i, value) in features.iter().enumerate() {
        if !value.is_finite() {
            out.push(FieldViolation::new(
                format!("features[{i}]"),
                format!("{value} is not a finite number"),
            ));
        }
    }
}
