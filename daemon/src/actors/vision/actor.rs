//! The vision actor: the per-frame work, one frame at a time, with a progress mark after each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::decode::{self, BufferPool};
use super::frame::{self, FrameResult, Layout, PixelView, Scratch, SourceState};
use super::{Format, Frame, Settings, VisionError};
use crate::supervisor::{Actor, ActorResult, Context};

/// Decoded-pixel buffers kept for reuse.
const POOL_BUFFERS: usize = 4;

pub enum Command {
    Frame {
        frame: Frame,
        reply: oneshot::Sender<Result<Processed, VisionError>>,
    },
}

/// What the actor made of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    pub result: FrameResult,
    /// Decoded size.
    pub width: u32,
    pub height: u32,
    /// For a motion event when the episodic buffer is enabled: the frame's embedding.
    pub embedding: Option<Vec<f32>>,
}

pub struct VisionActor {
    settings: Arc<Settings>,
}

impl VisionActor {
    pub fn new(settings: Arc<Settings>) -> Self {
        VisionActor { settings }
    }
}

/// One incarnation's working state: the sources' reference frames and the reusable buffers.
pub struct Working {
    pub sources: HashMap<String, SourceState>,
    pub scratch: Scratch,
    pub pool: BufferPool,
    clock: u64,
}

impl Working {
    pub fn new(settings: &Settings) -> Working {
        Working {
            sources: HashMap::new(),
            scratch: Scratch::new(&settings.params),
            pool: BufferPool::new(POOL_BUFFERS),
            clock: 0,
        }
    }

    /// Marks `source` used, creating its state (evicting the least recently used beyond the limit).
    fn touch(&mut self, settings: &Settings, source: &str) {
        self.clock += 1;
        if !self.sources.contains_key(source) {
            if self.sources.len() >= settings.max_sources {
                if let Some(oldest) = self
                    .sources
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| k.clone())
                {
                    self.sources.remove(&oldest);
                }
            }
            self.sources
                .insert(source.to_owned(), SourceState::new(&settings.params));
        }
        if let Some(state) = self.sources.get_mut(source) {
            state.last_used = self.clock;
        }
    }
}

/// Decodes (if needed) and processes one frame.
pub fn handle(
    settings: &Settings,
    working: &mut Working,
    frame: &Frame,
) -> Result<Processed, VisionError> {
    let decoded = match frame.format {
        Format::Gray8 | Format::Rgb8 => None,
        Format::Png | Format::Jpeg => Some(
            decode::decode(
                frame.format,
                &frame.data,
                (frame.width, frame.height),
                settings,
                &mut working.pool,
            )
            .map_err(|err| VisionError::invalid(err.field, err.message))?,
        ),
    };
    let view = match &decoded {
        Some(d) => PixelView {
            data: &d.pixels,
            width: d.width,
            height: d.height,
            layout: d.layout,
        },
        None => PixelView {
            data: &frame.data,
            width: frame.width,
            height: frame.height,
            layout: if frame.format == Format::Rgb8 {
                Layout::RGB8
            } else {
                Layout::GRAY8
            },
        },
    };
    let (width, height) = (view.width, view.height);
    let params = settings.params;
    working.touch(settings, &frame.source);
    let Working {
        sources, scratch, ..
    } = &mut *working;
    let Some(state) = sources.get_mut(frame.source.as_str()) else {
        return Err(VisionError::invalid("source", "no state for this source"));
    };
    let result = frame::process(&view, state, scratch, &params);
    let embedding = (result.motion.is_some() && settings.embedding_dim > 0)
        .then(|| frame::embedding(state.grid(), params.grid, settings.embedding_dim));
    if let Some(d) = decoded {
        working.pool.give(d.pixels);
    }
    Ok(Processed {
        result,
        width,
        height,
        embedding,
    })
}

impl Actor for VisionActor {
    type Message = Command;

    fn name(&self) -> &'static str {
        super::ACTOR_NAME
    }

    async fn run(self: Arc<Self>, mut ctx: Context<Command>) -> ActorResult {
        let settings = &self.settings;
        let mut working = Working::new(settings);
        let mut frames: u64 = 0;
        ctx.set_status("no frames yet");
        ctx.ready();
        while let Some(command) = ctx.recv().await {
            match command {
                Command::Frame { frame, reply } => {
                    if settings.hang_source.as_deref() == Some(frame.source.as_str()) {
                        // The injected hang: busy and making no progress, like a decoder stuck in a
                        // loop, until the watchdog cancels this incarnation.
                        ctx.cancelled().await;
                        return Ok(());
                    }
                    let started = Instant::now();
                    let result = handle(settings, &mut working, &frame);
                    super::events::FrameProcessed {
                        outcome: &result,
                        duration: started.elapsed(),
                    }
                    .emit();
                    frames += 1;
                    let _ = reply.send(result);
                }
            }
            ctx.progress();
            ctx.set_status(format!(
                "{frames} frames, {} sources",
                working.sources.len()
            ));
        }
        Ok(())
    }
}
