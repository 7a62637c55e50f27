//! The voice actor: PCM audio arrives over a gRPC client stream from whatever captures it (the daemon
//! assumes no microphone); voice activity detection ([`vad`]) cuts utterance segments, and each is
//! written as an `utterance` episode. docs/PERCEPTION.md is the operator's view.
//!
//! **Who does what.** The API validates each chunk (even byte count, sample rate 8–48 kHz and the same
//! for the whole stream, size) and hands it to the actor with the stream's detector state; the actor
//! runs the detector and hands the state back with the segments it closed, marking progress after
//! every chunk, so a VAD pass that gets stuck is seen frozen by the watchdog. The state travels with
//! the chunk rather than living in the actor: a stream that ends or breaks leaves nothing behind, and
//! the actor holds no per-stream table to bound. Segments spanning chunk boundaries are found because
//! the state carries the partial frame and the open segment across chunks.
//!
//! **Episodic disabled.** Then segments are still detected and returned, but no episodes are written.

mod actor;
pub mod api;
pub mod config;
pub mod events;
pub mod vad;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::actors::episodic::{Episodic, EpisodicError, NewEpisode};
use crate::actors::voice::config::VoiceConfig;
use crate::error::{FieldViolation, ServiceError};
use crate::supervisor::config::ActorConfig;
use crate::supervisor::{ActorRef, SupervisorBuilder, SupervisorError};

pub use actor::Command;
pub use vad::{Segment, Vad, VadParams};

/// The actor's name (also what the `modules.voice` flag switches).
pub const ACTOR_NAME: &str = "voice";
/// gRPC health names that follow the actor's state.
pub const HEALTH_SERVICES: &[&str] = &["brainstem.v1.Voice", "brainstem.actor.voice"];
/// The episode kind of an utterance.
pub const UTTERANCE_KIND: &str = "utterance";
pub const MIN_RATE: u32 = 8_000;
pub const MAX_RATE: u32 = 48_000;

const MAX_SOURCE_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    #[error("invalid audio chunk")]
    Invalid(Vec<FieldViolation>),
    #[error(transparent)]
    Actor(#[from] SupervisorError),
    #[error(transparent)]
    Episodic(#[from] EpisodicError),
}

impl From<VoiceError> for ServiceError {
    fn from(err: VoiceError) -> Self {
        match err {
            VoiceError::Invalid(violations) => ServiceError::InvalidArgument(violations),
            VoiceError::Actor(err) => err.into(),
            VoiceError::Episodic(err) => err.into(),
        }
    }
}

/// Limits and VAD parameters, from `[voice]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_chunk_bytes: usize,
    pub params: VadParams,
    /// The episodic buffer's embedding dimension (0 when it is disabled).
    pub embedding_dim: usize,
    /// Test hook: a chunk of a stream from this source makes the actor hang (busy, no progress)
    /// until cancelled, the way a VAD pass stuck in a loop would. Never set from configuration.
    pub hang_source: Option<String>,
}

impl Settings {
    pub fn from_config(config: &VoiceConfig, embedding_dim: usize) -> Settings {
        Settings {
            max_chunk_bytes: config.max_chunk_bytes as usize,
            params: config.vad_params(),
            embedding_dim,
            hang_source: None,
        }
    }
}

/// One chunk as the API hands it over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    pub source: String,
    pub sample_rate: u32,
    pub pcm: Vec<u8>,
}

/// One client stream: its source, its detector and the segments found so far.
#[derive(Debug, Default)]
pub struct AudioStream {
    source: String,
    vad: Option<Box<Vad>>,
    pub segments: Vec<Segment>,
    /// Episode ids written for the segments, in order (empty when the buffer is disabled).
    pub episode_ids: Vec<String>,
}

impl AudioStream {
    pub fn audio_ms(&self) -> u64 {
        self.vad.as_ref().map_or(0, |v| v.elapsed_ms())
    }
}

/// The voice actor as the API sees it.
#[derive(Clone)]
pub struct Voice {
    actor: ActorRef<Command>,
    settings: Arc<Settings>,
    episodic: Option<Episodic>,
}

impl Voice {
    pub fn register(
        builder: &mut SupervisorBuilder,
        settings: Settings,
        actor_config: ActorConfig,
        episodic: Option<Episodic>,
    ) -> Result<Voice, SupervisorError> {
        let settings = Arc::new(settings);
        let actor = builder.add(
            actor::VoiceActor::new(settings.clone()),
            actor_config,
            HEALTH_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        )?;
        Ok(Voice {
            actor,
            settings,
            episodic,
        })
    }

    /// Validates and processes one chunk of `stream`, writing the episodes of the segments it closed.
    pub async fn chunk(&self, stream: &mut AudioStream, chunk: Chunk) -> Result<(), VoiceError> {
        validate(&self.settings, stream, &chunk)?;
        let vad = match stream.vad.take() {
            Some(vad) => vad,
            None => {
                stream.source = chunk.source.clone();
                Box::new(Vad::new(chunk.sample_rate, self.settings.params))
            }
        };
        self.run(stream, vad, chunk.pcm, false).await
    }

    /// Ends `stream`: a segment still open is closed and written.
    pub async fn finish(&self, stream: &mut AudioStream) -> Result<(), VoiceError> {
        match stream.vad.take() {
            Some(vad) => self.run(stream, vad, Vec::new(), true).await,
            None => Ok(()),
        }
    }

    async fn run(
        &self,
        stream: &mut AudioStream,
        vad: Box<Vad>,
        pcm: Vec<u8>,
        finish: bool,
    ) -> Result<(), VoiceError> {
        let source = stream.source.clone();
        let (vad, segments) = self
            .actor
            .ask(|reply| Command::Chunk {
                vad,
                pcm,
                finish,
                source,
                reply,
            })
            .await?;
        stream.vad = Some(vad);
        for segment in segments {
            if let (Some(episodic), dim @ 1..) = (&self.episodic, self.settings.embedding_dim) {
                let episode = utterance_episode(&stream.source, &segment, dim);
                let stored = episodic.store("episode", vec![episode]).await?;
                stream
                    .episode_ids
                    .extend(stored.episodes.into_iter().map(|(id, _)| id));
            }
            stream.segments.push(segment);
        }
        Ok(())
    }
}

/// Checks one chunk against the stream so far; every problem is reported.
pub fn validate(
    settings: &Settings,
    stream: &AudioStream,
    chunk: &Chunk,
) -> Result<(), VoiceError> {
    let mut out = Vec::new();
    let first = stream.vad.is_none();
    if first && chunk.source.trim().is_empty() {
        out.push(FieldViolation::new(
            "source",
            "must not be empty in the first chunk",
        ));
    } else if chunk.source.len() > MAX_SOURCE_BYTES {
        out.push(FieldViolation::new(
            "source",
            format!("more than {MAX_SOURCE_BYTES} bytes"),
        ));
    } else if !first && !chunk.source.is_empty() && chunk.source != stream.source {
        out.push(FieldViolation::new(
            "source",
            "differs from the stream's first chunk; one stream is one source",
        ));
    }
    if !(MIN_RATE..=MAX_RATE).contains(&chunk.sample_rate) {
        out.push(FieldViolation::new(
            "sample_rate",
            format!("{} Hz is not supported (8000 to 48000)", chunk.sample_rate),
        ));
    } else if let Some(vad) = &stream.vad {
        if vad.rate() != chunk.sample_rate {
            out.push(FieldViolation::new(
                "sample_rate",
                format!(
                    "{} Hz differs from the stream's {} Hz",
                    chunk.sample_rate,
                    vad.rate()
                ),
            ));
        }
    }
    if chunk.pcm.len() % 2 != 0 {
        out.push(FieldViolation::new(
            "pcm",
            format!(
                "{} bytes is not a whole number of 16-bit samples",
                chunk.pcm.len()
            ),
        ));
    }
    if chunk.pcm.len() > settings.max_chunk_bytes {
        out.push(FieldViolation::new(
            "pcm",
            format!(
                "{} bytes is more than the maximum of {}",
                chunk.pcm.len(),
                settings.max_chunk_bytes
            ),
        ));
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(VoiceError::Invalid(out))
    }
}

fn utterance_episode(source: &str, segment: &Segment, dim: usize) -> NewEpisode {
    let metadata = BTreeMap::from([
        ("start_ms".to_owned(), segment.start_ms.to_string()),
        ("end_ms".to_owned(), segment.end_ms.to_string()),
        ("peak_dbfs".to_owned(), format!("{:.1}", segment.peak_dbfs)),
        ("mean_dbfs".to_owned(), format!("{:.1}", segment.mean_dbfs)),
    ]);
    NewEpisode {
        source: source.to_owned(),
        kind: UTTERANCE_KIND.to_owned(),
        text: format!(
            "utterance from {} ms to {} ms of the stream (peak {:.1} dBFS, mean {:.1} dBFS)",
            segment.start_ms, segment.end_ms, segment.peak_dbfs, segment.mean_dbfs
        ),
        embedding: vad::embedding(segment, dim),
        metadata,
        ..NewEpisode::default()
    }
}
