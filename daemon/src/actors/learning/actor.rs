//! The learning actor: the model's only writer. Each incarnation loads the checkpoint, then learns the
//! stored events after it in sequence order (the replay after a crash is the same loop), checkpoints
//! every `checkpoint_every` events and once more when it is stopped.
//!
//! A checkpoint is one atomic batch: the new [`CheckpointRecord`], the removal of the events it
//! covers, and of the deduplication keys older than the retention (only keys of events it covers).
//! So after any crash the store holds a checkpoint and exactly the events after it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::events::{CheckpointWritten, Learned, Loaded};
use super::model::Model;
use super::{
    CHECKPOINT_KEY, CheckpointRecord, EVENT_PREFIX, EXPIRY_PREFIX, EventRecord, ExpiryRecord,
    Shared, seq_key,
};
use crate::runtime::events::ErrorOccurred;
use crate::store::{Batch, StoreError};
use crate::supervisor::{Actor, ActorError, ActorResult, Context};

/// At most this many events are read from the store at once.
const READ_CHUNK: u64 = 256;
/// At most this many expired deduplication keys are removed by one checkpoint.
const PRUNE_KEYS_PER_CHECKPOINT: usize = 4096;

pub struct LearningActor {
    shared: Arc<Shared>,
}

impl LearningActor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        LearningActor { shared }
    }
}

impl Actor for LearningActor {
    type Message = ();

    fn name(&self) -> &'static str {
        super::ACTOR_NAME
    }

    async fn run(self: Arc<Self>, ctx: Context<()>) -> ActorResult {
        let shared = &self.shared;
        let settings = &shared.settings;
        let mut model = {
            let _section = ctx.blocking();
            load(shared)?
        };
        let mut checkpointed = model.learned_seq;
        let replay = shared.appended.load(Ordering::Acquire) - model.learned_seq;
        shared.replayed.store(replay, Ordering::Release);
        shared.checkpoint_seq.store(checkpointed, Ordering::Release);
        shared.learned.store(model.learned_seq, Ordering::Release);
        *shared.model.write().unwrap_or_else(|e| e.into_inner()) = Some(model.clone());
        Loaded {
            checkpoint: checkpointed,
            replay,
        }
        .emit();
        ctx.ready();

        loop {
            if ctx.is_cancelled() {
                break;
            }
            let appended = shared.appended.load(Ordering::Acquire);
            if model.learned_seq >= appended {
                ctx.set_status(status(&model, shared));
                tokio::select! {
                    biased;
                    _ = ctx.cancelled() => break,
                    _ = ctx.idle(shared.wake.notified()) => {}
                }
                continue;
            }
            let to = appended.min(model.learned_seq + READ_CHUNK);
            let events = read_events(shared, model.learned_seq + 1, to)?;
            let mut learned = 0;
            for (seq, event) in events {
                if let Some(gate) = &shared.gate {
                    tokio::select! {
                        biased;
                        _ = ctx.cancelled() => break,
                        permit = ctx.idle(gate.acquire()) => {
                            permit.map_err(|_| ActorError::new("learning gate closed"))?.forget();
                        }
                    }
                }
                if seq == shared.hang_at.load(Ordering::Acquire) {
                    shared.hang_at.store(0, Ordering::Release);
                    // A stuck step: busy, no progress, until the watchdog cancels it.
                    while !ctx.is_cancelled() {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    break;
                }
                match event {
                    Some((features, label)) => {
                        model.learn(seq, &features, label, settings.learning_rate);
                    }
                    None => {
                        // Damaged (logged): skipped, never learned as if valid.
                        model.learned_seq = seq;
                    }
                }
                learned += 1;
                ctx.progress();
                // Publish every event, so Predict and the queue follow the model closely.
                publish(shared, &model);
                if model.learned_seq - checkpointed >= settings.checkpoint_every {
                    checkpoint(shared, &model, checkpointed).await?;
                    checkpointed = model.learned_seq;
                    ctx.progress();
                }
            }
            Learned {
                events: learned,
                accuracy: model.window.accuracy(),
            }
            .emit();
            shared.publish_level();
        }

        if model.learned_seq > checkpointed && !shared.skip_final_checkpoint.load(Ordering::Acquire)
        {
            checkpoint(shared, &model, checkpointed).await?;
        }
        Ok(())
    }
}

fn status(model: &Model, shared: &Shared) -> String {
    let accuracy = model
        .window
        .accuracy()
        .map_or_else(|| "-".to_owned(), |a| format!("{:.1}%", a * 100.0));
    format!(
        "{} events learned, {} pending{}, accuracy {accuracy}",
        model.events_learned,
        shared.pending(),
        if shared.paused.load(Ordering::Acquire) {
            " (paused)"
        } else {
            ""
        }
    )
}

fn publish(shared: &Shared, model: &Model) {
    *shared.model.write().unwrap_or_else(|e| e.into_inner()) = Some(model.clone());
    shared.learned.store(model.learned_seq, Ordering::Release);
    shared.update_pause();
}

/// The checkpoint, or a fresh model when there is none.
fn load(shared: &Shared) -> Result<Model, ActorError> {
    let settings = &shared.settings;
    match shared.tree.get::<CheckpointRecord>(CHECKPOINT_KEY)? {
        None => {
            let dimension = shared.dimension.load(Ordering::Acquire) as usize;
            Ok(Model::new(dimension, settings.window))
        }
        Some(record) => record.model(settings.window).map_err(|reason| {
            ErrorOccurred {
                subsystem: "learning",
                kind: "corrupt",
            }
            .emit();
            ActorError::new(format!("the learning checkpoint cannot be read: {reason}"))
        }),
    }
}

type ReadEvent = (u64, Option<(Vec<f64>, f64)>);

/// Events `from..=to`, in order. A damaged one is logged, counted and yielded as `None`.
fn read_events(shared: &Shared, from: u64, to: u64) -> Result<Vec<ReadEvent>, ActorError> {
    let start = seq_key(EVENT_PREFIX, from);
    let end = seq_key(EVENT_PREFIX, to);
    let mut out = Vec::with_capacity((to - from + 1) as usize);
    for item in shared.tree.range::<EventRecord, _>(start..=end, false) {
        match item {
            Ok((_, record)) => {
                let seq = record.seq;
                match record.decode() {
                    Ok(event) => out.push((seq, Some(event))),
                    Err(reason) => {
                        tracing::error!(seq, reason, "damaged learning event skipped");
                        out.push((seq, None));
                    }
                }
            }
            Err(StoreError::Corrupt { key, reason, .. }) => {
                tracing::error!(key, reason, "damaged learning event skipped");
                ErrorOccurred {
                    subsystem: "learning",
                    kind: "corrupt",
                }
                .emit();
                // Its sequence is in the key: the bytes after the prefix.
                let bytes = key.as_bytes();
                if bytes.len() == 9 {
                    let seq = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
                    out.push((seq, None));
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    // Sequences are dense; a gap would mean a lost write, which the store's integrity check refuses
    // at open. Still, never wait on a sequence that is not there: skip to `to`.
    if out.last().is_none_or(|(seq, _)| *seq < to) {
        tracing::error!(from, to, "learning events missing from the store; skipped");
        out.push((to, None));
    }
    Ok(out)
}

/// Writes `model` as the checkpoint and, in the same batch, removes the events it now covers and the
/// expired deduplication keys of covered events.
pub(crate) async fn checkpoint(
    shared: &Shared,
    model: &Model,
    previous: u64,
) -> Result<(), ActorError> {
    let mut batch = Batch::default();
    batch.put(&shared.tree, CHECKPOINT_KEY, &CheckpointRecord::of(model))?;
    for seq in previous + 1..=model.learned_seq {
        batch.remove(&seq_key(EVENT_PREFIX, seq));
    }
    let pruned_events = model.learned_seq - previous;
    let cutoff = shared
        .now_ms()
        .saturating_sub(shared.settings.dedup_retention_ms);
    let mut pruned_keys = 0;
    let end = seq_key(EXPIRY_PREFIX, model.learned_seq);
    for item in shared
        .tree
        .range::<ExpiryRecord, _>(EXPIRY_PREFIX.to_vec()..=end, false)
        .take(PRUNE_KEYS_PER_CHECKPOINT)
    {
        let (key, record) = match item {
            Ok(entry) => entry,
            Err(StoreError::Corrupt { .. }) => continue,
            Err(err) => return Err(err.into()),
        };
        if record.at_ms >= cutoff {
            break;
        }
        batch.remove(&key);
        if let Some(dedup) = decode_hex(&record.key) {
            batch.remove(&super::dedup_store_key(&dedup));
        }
        pruned_keys += 1;
    }
    shared.tree.apply_async(batch).await?;
    shared
        .checkpoint_seq
        .store(model.learned_seq, Ordering::Release);
    CheckpointWritten {
        sequence: model.learned_seq,
        pruned_events,
        pruned_keys,
    }
    .emit();
    Ok(())
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
