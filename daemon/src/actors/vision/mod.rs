//! The vision actor: frames arrive over a gRPC client stream from whatever captures them (the daemon
//! assumes no camera); the actor decodes, downscales, hashes and compares each one with the previous
//! kept frame of its source, drops near-duplicates, and writes a `motion` episode into the episodic
//! buffer when enough of the picture changed. docs/PERCEPTION.md is the operator's view.
//!
//! **Who does what.** The API validates each message (format, sizes, source) and hands the frame to the
//! actor through its bounded mailbox, one at a time per stream; the actor does the CPU work and marks
//! progress after every frame, so a decode that gets stuck is seen frozen by the supervisor's watchdog
//! and the actor is restarted. The per-source reference frames live in the incarnation (a restart
//! forgets them: the next frame of each source is a first frame again). The episode is written by the
//! handle after the actor replied, so the actor never waits on the store.
//!
//! **Episodic disabled.** Then the actor still runs and counts motion, but writes no episodes (the
//! setup logs it once): perception without memory is still useful to a caller reading the counts.

mod actor;
pub mod api;
pub mod config;
pub mod decode;
pub mod events;
pub mod frame;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::actors::episodic::{Episodic, EpisodicError, NewEpisode};
use crate::actors::vision::config::VisionConfig;
use crate::error::{FieldViolation, ServiceError};
use crate::supervisor::config::ActorConfig;
use crate::supervisor::{ActorRef, SupervisorBuilder, SupervisorError};

pub use actor::{Command, Processed};
pub use frame::{BoundingBox, FrameResult, Params};

/// The actor's name (also what the `modules.vision` flag switches).
pub const ACTOR_NAME: &str = "vision";
/// gRPC health names that follow the actor's state.
pub const HEALTH_SERVICES: &[&str] = &["brainstem.v1.Vision", "brainstem.actor.vision"];
/// The episode kind of a motion event.
pub const MOTION_KIND: &str = "motion";

const MAX_SOURCE_BYTES: usize = 256;

/// A frame's pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gray8,
    Rgb8,
    Png,
    Jpeg,
}

impl Format {
    pub const NAMES: &'static str = "gray8, rgb8, png or jpeg";

    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "gray8" => Some(Format::Gray8),
            "rgb8" => Some(Format::Rgb8),
            "png" => Some(Format::Png),
            "jpeg" => Some(Format::Jpeg),
            _ => None,
        }
    }

    /// Bytes per pixel of a raw format; `None` for an encoded one.
    pub fn raw_channels(self) -> Option<u64> {
        match self {
            Format::Gray8 => Some(1),
            Format::Rgb8 => Some(3),
            Format::Png | Format::Jpeg => None,
        }
    }
}

/// One frame as the API hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub source: String,
    pub width: u32,
    pub height: u32,
    pub format: Format,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("invalid frame")]
    Invalid(Vec<FieldViolation>),
    #[error(transparent)]
    Actor(#[from] SupervisorError),
    #[error(transparent)]
    Episodic(#[from] EpisodicError),
}

impl VisionError {
    pub fn invalid(field: &str, message: impl Into<String>) -> VisionError {
        VisionError::Invalid(vec![FieldViolation::new(field, message)])
    }
}

impl From<VisionError> for ServiceError {
    fn from(err: VisionError) -> Self {
        match err {
            VisionError::Invalid(violations) => ServiceError::InvalidArgument(violations),
            VisionError::Actor(err) => err.into(),
            VisionError::Episodic(err) => err.into(),
        }
    }
}

/// Limits and parameters, from `[vision]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_width: u32,
    pub max_height: u32,
    pub params: Params,
    /// Sources whose reference frame is kept; the least recently used is forgotten beyond this.
    pub max_sources: usize,
    /// The episodic buffer's embedding dimension (0 when it is disabled).
    pub embedding_dim: usize,
    /// Test hook: a frame from this source makes the actor hang (busy, no progress) until cancelled,
    /// the way a decoder stuck in a loop would. Never set from configuration.
    pub hang_source: Option<String>,
}

impl Settings {
    pub fn from_config(config: &VisionConfig, embedding_dim: usize) -> Settings {
        Settings {
            max_width: config.max_width as u32,
            max_height: config.max_height as u32,
            params: Params {
                grid: config.grid_size as usize,
                dedup_distance: config.dedup_distance as u32,
                cell_threshold: config.cell_threshold as u8,
                motion_threshold: config.motion_threshold_permille as f32 / 1000.0,
            },
            max_sources: config.max_sources as usize,
            embedding_dim,
            hang_source: None,
        }
    }

    /// The most a decode may allocate: the largest frame at 4 channels of 16 bits.
    pub fn max_decoded_bytes(&self) -> u64 {
        u64::from(self.max_width) * u64::from(self.max_height) * 8
    }
}

/// What one submitted frame did.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameOutcome {
    pub duplicate: bool,
    /// A motion event (and the episode's id when one was written).
    pub motion: Option<(f32, BoundingBox, Option<String>)>,
}

/// The vision actor as the API sees it.
#[derive(Clone)]
pub struct Vision {
    actor: ActorRef<Command>,
    settings: Arc<Settings>,
    episodic: Option<Episodic>,
}

impl Vision {
    /// Declares the actor with the supervisor. `episodic` is `None` when the buffer is disabled.
    pub fn register(
        builder: &mut SupervisorBuilder,
        settings: Settings,
        actor_config: ActorConfig,
        episodic: Option<Episodic>,
    ) -> Result<Vision, SupervisorError> {
        let settings = Arc::new(settings);
        let actor = builder.add(
            actor::VisionActor::new(settings.clone()),
            actor_config,
            HEALTH_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        )?;
        Ok(Vision {
            actor,
            settings,
            episodic,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Validates and processes one frame, and writes its motion episode.
    pub async fn submit(&self, frame: Frame) -> Result<FrameOutcome, VisionError> {
        validate(&self.settings, &frame)?;
        let source = frame.source.clone();
        let processed = self
            .actor
            .ask(|reply| Command::Frame { frame, reply })
            .await??;
        let Some(bbox) = processed.result.motion else {
            return Ok(FrameOutcome {
                duplicate: processed.result.duplicate,
                motion: None,
            });
        };
        let score = processed.result.score;
        let size = (processed.width, processed.height);
        let id = match (&self.episodic, processed.embedding) {
            (Some(episodic), Some(embedding)) => {
                let episode = motion_episode(&source, score, bbox, size, embedding);
                let stored = episodic.store("episode", vec![episode]).await?;
                stored.episodes.into_iter().next().map(|(id, _)| id)
            }
            _ => None,
        };
        Ok(FrameOutcome {
            duplicate: false,
            motion: Some((score, bbox, id)),
        })
    }
}

/// Checks what can be checked without decoding; every problem is reported.
pub fn validate(s: &Settings, frame: &Frame) -> Result<(), VisionError> {
    let mut out = Vec::new();
    if frame.source.trim().is_empty() {
        out.push(FieldViolation::new("source", "must not be empty"));
    } else if frame.source.len() > MAX_SOURCE_BYTES {
        out.push(FieldViolation::new(
            "source",
            format!("more than {MAX_SOURCE_BYTES} bytes"),
        ));
    }
    if frame.data.is_empty() {
        out.push(FieldViolation::new("data", "must not be empty"));
    }
    if frame.width > s.max_width {
        out.push(FieldViolation::new(
            "width",
            format!(
                "{} is more than the maximum of {}",
                frame.width, s.max_width
            ),
        ));
    }
    if frame.height > s.max_height {
        out.push(FieldViolation::new(
            "height",
            format!(
                "{} is more than the maximum of {}",
                frame.height, s.max_height
            ),
        ));
    }
    if let Some(channels) = frame.format.raw_channels() {
        if frame.width == 0 {
            out.push(FieldViolation::new("width", "is required for raw formats"));
        }
        if frame.height == 0 {
            out.push(FieldViolation::new("height", "is required for raw formats"));
        }
        let expected = u64::from(frame.width) * u64::from(frame.height) * channels;
        if frame.width > 0 && frame.height > 0 && frame.data.len() as u64 != expected {
            out.push(FieldViolation::new(
                "data",
                format!(
                    "{} bytes, but {} × {} × {channels} is {expected}",
                    frame.data.len(),
                    frame.width,
                    frame.height
                ),
            ));
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(VisionError::Invalid(out))
    }
}

fn motion_episode(
    source: &str,
    score: f32,
    bbox: BoundingBox,
    (width, height): (u32, u32),
    embedding: Vec<f32>,
) -> NewEpisode {
    let metadata = BTreeMap::from([
        ("score".to_owned(), format!("{score:.4}")),
        ("bbox_x".to_owned(), bbox.x.to_string()),
        ("bbox_y".to_owned(), bbox.y.to_string()),
        ("bbox_width".to_owned(), bbox.width.to_string()),
        ("bbox_height".to_owned(), bbox.height.to_string()),
        ("frame_width".to_owned(), width.to_string()),
        ("frame_height".to_owned(), height.to_string()),
    ]);
    NewEpisode {
        source: source.to_owned(),
        kind: MOTION_KIND.to_owned(),
        text: format!(
            "motion {:.1}% at x={} y={} {}×{} in a {}×{} frame",
            score * 100.0,
            bbox.x,
            bbox.y,
            bbox.width,
            bbox.height,
            width,
            height
        ),
        embedding,
        metadata,
        ..NewEpisode::default()
    }
}
