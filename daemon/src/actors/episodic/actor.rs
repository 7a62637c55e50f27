//! The episodic actor: the buffer's only writer. Each incarnation reloads the ring from the store, then
//! applies writes in mailbox order: persist (one atomic batch, flushed per the store's flush policy),
//! then apply to the shared ring, then reply. A write that fails to persist changes nothing.
//!
//! Store layout (`trees::EPISODIC`): `e` + big-endian sequence number → [`EpisodeRecord`], so a prefix
//! scan returns the ring in order; `m:next_seq` → the next sequence number, so ids are never reused even
//! after everything was forgotten.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::sync::oneshot;

use super::ring::Ring;
use super::{EpisodeData, EpisodicError, ForgetTarget, NewEpisode, Shared, Stored, parse_id};
use crate::runtime::events::ErrorOccurred;
use crate::store::{Batch, Record, StoreError, Tree};
use crate::supervisor::{Actor, ActorError, ActorResult, Context};

const EPISODE_PREFIX: &[u8] = b"e";
const NEXT_SEQ_KEY: &[u8] = b"m:next_seq";
/// Progress is reported every this many records while loading.
const LOAD_PROGRESS_EVERY: usize = 1024;

/// Messages the actor handles.
pub enum Command {
    Store {
        episodes: Vec<NewEpisode>,
        now_ms: i64,
        reply: oneshot::Sender<Result<Stored, EpisodicError>>,
        /// The caller's span, the parent of the actor's (disabled unless traces are exported).
        span: tracing::Span,
    },
    Forget {
        target: ForgetTarget,
        reply: oneshot::Sender<Result<u64, EpisodicError>>,
    },
}

/// One episode as stored. The embedding is base64 of its little-endian f32 values: exact, and a third
/// of the size of JSON numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpisodeRecord {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub source: String,
    pub kind: String,
    pub text: String,
    pub embedding: String,
    pub importance: f32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Record for EpisodeRecord {
    const VERSION: u8 = 1;
}

pub fn episode_key(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.extend_from_slice(EPISODE_PREFIX);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn encode_embedding(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    BASE64.encode(bytes)
}

pub fn decode_embedding(text: &str) -> Result<Vec<f32>, String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|err| format!("embedding is not base64: {err}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "embedding has {} bytes, not whole f32s",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

pub struct EpisodicActor {
    shared: Arc<Shared>,
    tree: Tree,
}

impl EpisodicActor {
    pub fn new(shared: Arc<Shared>, tree: Tree) -> Self {
        EpisodicActor { shared, tree }
    }
}

impl Actor for EpisodicActor {
    type Message = Command;

    fn name(&self) -> &'static str {
        super::ACTOR_NAME
    }

    async fn run(self: Arc<Self>, mut ctx: Context<Command>) -> ActorResult {
        let loaded = {
            let _section = ctx.blocking();
            load(&self.tree, &self.shared.settings, &ctx)?
        };
        let held = loaded.ring.len();
        {
            let mut ring = self.shared.ring.write().unwrap_or_else(|e| e.into_inner());
            let generation = ring.as_ref().map_or(0, |r| r.generation + 1);
            let mut fresh = loaded.ring;
            fresh.generation = generation;
            *ring = Some(fresh);
        }
        self.shared.cache().clear();
        super::written(0, 0, 0, held);
        let status = |held: usize| format!("{held} episodes");
        if loaded.skipped > 0 {
            ctx.record_error(&format!(
                "{} stored episodes could not be read and were skipped (see the log)",
                loaded.skipped
            ));
        }
        ctx.set_status(status(held));
        ctx.ready();
        tracing::info!(
            episodes = held,
            skipped = loaded.skipped,
            "episodic buffer loaded"
        );

        let mut next = ctx.recv().await;
        while let Some(command) = next.take() {
            match command {
                Command::Store {
                    episodes,
                    now_ms,
                    reply,
                    span,
                } => {
                    // Group commit: the Store commands queued behind this one share its write and
                    // its flush (concurrent callers no longer wait for one flush each).
                    let mut group = vec![(episodes, now_ms, reply)];
                    let mut total = group[0].0.len();
                    while total < MAX_GROUP_EPISODES {
                        match ctx.try_recv() {
                            Some(Command::Store {
                                episodes,
                                now_ms,
                                reply,
                                span: _,
                            }) => {
                                total += episodes.len();
                                group.push((episodes, now_ms, reply));
                            }
                            Some(other) => {
                                next = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    let commands = group.len();
                    // One span for the group, under the first caller's: the write it shares.
                    let work = tracing::debug_span!(
                        parent: &span,
                        "episodic.store",
                        commands,
                        episodes = total
                    );
                    let (results, replies) =
                        tracing::Instrument::instrument(self.store_group(group), work).await;
                    for (result, reply) in results.into_iter().zip(replies) {
                        if let Err(err) = &result {
                            ctx.record_error(err);
                        }
                        let _ = reply.send(result);
                    }
                    super::events::StoreGrouped { commands }.emit();
                }
                Command::Forget { target, reply } => {
                    let result = self.forget(target).await;
                    if let Err(err) = &result {
                        ctx.record_error(err);
                    }
                    let _ = reply.send(result);
                }
            }
            ctx.progress();
            ctx.set_status(status(self.held()));
            if next.is_none() {
                next = ctx.recv().await;
            }
        }
        Ok(())
    }
}

struct Loaded {
    ring: Ring,
    skipped: usize,
}

/// Rebuilds the ring from the store, oldest first. A record that cannot be read (damaged, or from a
/// different embedding dimension) is logged, counted and skipped: never served as if valid.
fn load(
    tree: &Tree,
    settings: &super::Settings,
    ctx: &Context<Command>,
) -> Result<Loaded, ActorError> {
    let mut ring = Ring::new(settings.dim, settings.capacity);
    let mut skipped = 0;
    let mut evicted = Vec::new();
    for (i, item) in tree
        .scan_prefix::<EpisodeRecord>(EPISODE_PREFIX)
        .enumerate()
    {
        if i % LOAD_PROGRESS_EVERY == 0 {
            ctx.progress();
        }
        let record = match item {
            Ok((_, record)) => record,
            Err(StoreError::Corrupt { key, reason, .. }) => {
                tracing::error!(key, reason, "damaged episode skipped");
                ErrorOccurred {
                    subsystem: "episodic",
                    kind: "corrupt",
                }
                .emit();
                skipped += 1;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let embedding = match decode_embedding(&record.embedding) {
            Ok(values) if values.len() == settings.dim => values,
            Ok(values) => {
                tracing::error!(
                    seq = record.seq,
                    stored = values.len(),
                    configured = settings.dim,
                    "episode with another embedding dimension skipped"
                );
                skipped += 1;
                continue;
            }
            Err(reason) => {
                tracing::error!(seq = record.seq, reason, "damaged episode skipped");
                skipped += 1;
                continue;
            }
        };
        let data = EpisodeData {
            seq: record.seq,
            timestamp_ms: record.timestamp_ms,
            source: record.source,
            kind: record.kind,
            text: record.text,
            importance: record.importance,
            metadata: record.metadata,
        };
        // A smaller capacity than last run: the oldest go.
        if let Some(old) = ring.insert(data, &embedding) {
            evicted.push(old);
        }
    }
    if let Some(next) = tree.get::<u64>(NEXT_SEQ_KEY)? {
        ring.next_seq = ring.next_seq.max(next);
    }
    if !evicted.is_empty() {
        tracing::info!(
            evicted = evicted.len(),
            capacity = settings.capacity,
            "capacity is smaller than the stored ring; evicting the oldest"
        );
        let mut batch = Batch::default();
        for seq in evicted {
            batch.remove(&episode_key(seq));
        }
        tree.apply(batch)?;
    }
    Ok(Loaded { ring, skipped })
}

/// At most this many episodes share one group commit.
const MAX_GROUP_EPISODES: usize = 1024;

type StoreReply = oneshot::Sender<Result<Stored, EpisodicError>>;

impl EpisodicActor {
    /// Stores several commands' episodes in one write and one flush, answering each command as if it
    /// had been stored alone, in order: its own ids and timestamps, and the older episodes its
    /// episodes evicted. A failed write fails every command of the group (none of it was applied).
    async fn store_group(
        &self,
        group: Vec<(Vec<NewEpisode>, i64, StoreReply)>,
    ) -> (Vec<Result<Stored, EpisodicError>>, Vec<StoreReply>) {
        let mut replies = Vec::with_capacity(group.len());
        if group.len() == 1 {
            let (episodes, now_ms, reply) = group.into_iter().next().expect("one command");
            replies.push(reply);
            return (vec![self.store(episodes, now_ms).await], replies);
        }
        let (mut held, capacity) = match self.shared.read() {
            Ok(guard) => match guard.as_ref() {
                Some(ring) => (ring.len(), ring.capacity()),
                None => (0, 0),
            },
            Err(_) => (0, 0),
        };
        let mut counts = Vec::with_capacity(group.len());
        let mut all = Vec::new();
        let mut last_now = 0;
        for (mut episodes, now_ms, reply) in group {
            // Each command keeps its own "now".
            for episode in &mut episodes {
                episode.timestamp_ms.get_or_insert(now_ms);
            }
            // What storing this command alone would have evicted.
            let n = episodes.len();
            let evicted = ((held + n).saturating_sub(capacity)).min(held) as u64;
            held = (held + n).min(capacity);
            counts.push((n, evicted));
            all.extend(episodes);
            replies.push(reply);
            last_now = now_ms;
        }
        let results = match self.store(all, last_now).await {
            Ok(stored) => {
                let mut ids = stored.episodes.into_iter();
                counts
                    .into_iter()
                    .map(|(n, evicted)| {
                        Ok(Stored {
                            episodes: ids.by_ref().take(n).collect(),
                            evicted,
                        })
                    })
                    .collect()
            }
            Err(err) => counts.iter().map(|_| Err(err.duplicate())).collect(),
        };
        (results, replies)
    }

    fn held(&self) -> usize {
        self.shared
            .ring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, Ring::len)
    }

    async fn store(&self, episodes: Vec<NewEpisode>, now_ms: i64) -> Result<Stored, EpisodicError> {
        let n = episodes.len();
        // Plan under the read lock: only this actor writes, so the plan still holds when applied.
        let (first_seq, evict_old, capacity) = {
            let guard = self.shared.read()?;
            let Some(ring) = guard.as_ref() else {
                return Err(EpisodicError::Loading);
            };
            let overflow = (ring.len() + n).saturating_sub(ring.capacity());
            (
                ring.next_seq,
                ring.oldest(overflow.min(ring.len())),
                ring.capacity(),
            )
        };
        // A batch larger than the ring keeps only its newest `capacity` episodes.
        let skip_new = n.saturating_sub(capacity);
        let mut batch = Batch::default();
        for seq in &evict_old {
            batch.remove(&episode_key(*seq));
        }
        let mut prepared = Vec::with_capacity(n);
        for (i, episode) in episodes.into_iter().enumerate() {
            let data = EpisodeData {
                seq: first_seq + i as u64,
                timestamp_ms: episode.timestamp_ms.unwrap_or(now_ms),
                source: episode.source,
                kind: episode.kind,
                text: episode.text,
                importance: episode.importance.unwrap_or(1.0),
                metadata: episode.metadata,
            };
            if i >= skip_new {
                let record = EpisodeRecord {
                    seq: data.seq,
                    timestamp_ms: data.timestamp_ms,
                    source: data.source.clone(),
                    kind: data.kind.clone(),
                    text: data.text.clone(),
                    embedding: encode_embedding(&episode.embedding),
                    importance: data.importance,
                    metadata: data.metadata.clone(),
                };
                batch.put(&self.tree, &episode_key(data.seq), &record)?;
            }
            prepared.push((data, episode.embedding));
        }
        let next_seq = first_seq + n as u64;
        batch.put(&self.tree, NEXT_SEQ_KEY, &next_seq)?;
        self.tree.apply_async(batch).await?;

        let mut stored = Vec::with_capacity(n);
        let held = {
            let mut guard = self.shared.ring.write().unwrap_or_else(|e| e.into_inner());
            let Some(ring) = guard.as_mut() else {
                return Err(EpisodicError::Loading);
            };
            for (i, (data, embedding)) in prepared.into_iter().enumerate() {
                stored.push((super::format_id(data.seq), data.timestamp_ms));
                if i >= skip_new {
                    ring.insert(data, &embedding);
                }
            }
            ring.next_seq = next_seq;
            ring.generation += 1;
            ring.len()
        };
        self.shared.cache().clear();
        let evicted = (evict_old.len() + skip_new) as u64;
        super::written(n as u64, evicted, 0, held);
        Ok(Stored {
            episodes: stored,
            evicted,
        })
    }

    async fn forget(&self, target: ForgetTarget) -> Result<u64, EpisodicError> {
        let seqs: Vec<u64> = {
            let guard = self.shared.read()?;
            let Some(ring) = guard.as_ref() else {
                return Err(EpisodicError::Loading);
            };
            match &target {
                ForgetTarget::Ids(ids) => ids
                    .iter()
                    .filter_map(|id| parse_id(id))
                    .filter(|seq| ring.get(*seq).is_some())
                    .collect(),
                ForgetTarget::Filter(filter) => ring.matching(filter),
            }
        };
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::default();
        for seq in &seqs {
            batch.remove(&episode_key(*seq));
        }
        self.tree.apply_async(batch).await?;
        let (removed, held) = {
            let mut guard = self.shared.ring.write().unwrap_or_else(|e| e.into_inner());
            let Some(ring) = guard.as_mut() else {
                return Err(EpisodicError::Loading);
            };
            let removed = seqs.iter().filter(|seq| ring.remove(**seq)).count() as u64;
            ring.generation += 1;
            (removed, ring.len())
        };
        self.shared.cache().clear();
        super::written(0, 0, removed, held);
        Ok(removed)
    }
}
