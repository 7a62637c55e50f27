//! The voice actor: runs the detector over each chunk, with a progress mark after each.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::Settings;
use super::vad::{Segment, Vad};
use crate::supervisor::{Actor, ActorResult, Context};

pub enum Command {
    /// Runs `vad` over `pcm` (then ends the stream if `finish`) and hands it back with the segments
    /// it closed.
    Chunk {
        vad: Box<Vad>,
        pcm: Vec<u8>,
        finish: bool,
        source: String,
        reply: oneshot::Sender<(Box<Vad>, Vec<Segment>)>,
    },
}

pub struct VoiceActor {
    settings: Arc<Settings>,
}

impl VoiceActor {
    pub fn new(settings: Arc<Settings>) -> Self {
        VoiceActor { settings }
    }
}

impl Actor for VoiceActor {
    type Message = Command;

    fn name(&self) -> &'static str {
        super::ACTOR_NAME
    }

    async fn run(self: Arc<Self>, mut ctx: Context<Command>) -> ActorResult {
        let mut chunks: u64 = 0;
        let mut segments_found: u64 = 0;
        ctx.set_status("no audio yet");
        ctx.ready();
        while let Some(command) = ctx.recv().await {
            match command {
                Command::Chunk {
                    mut vad,
                    pcm,
                    finish,
                    source,
                    reply,
                } => {
                    if self.settings.hang_source.as_deref() == Some(source.as_str()) {
                        // The injected hang: busy and making no progress, like a VAD pass stuck in
                        // a loop, until the watchdog cancels this incarnation.
                        ctx.cancelled().await;
                        return Ok(());
                    }
                    let started = Instant::now();
                    let mut segments = Vec::new();
                    vad.push(&pcm, &mut segments);
                    if finish {
                        vad.finish(&mut segments);
                    }
                    super::events::ChunkProcessed {
                        samples: (pcm.len() / 2) as u64,
                        rate: vad.rate(),
                        segments: segments.len() as u64,
                        duration: started.elapsed(),
                    }
                    .emit();
                    chunks += 1;
                    segments_found += segments.len() as u64;
                    let _ = reply.send((vad, segments));
                }
            }
            ctx.progress();
            ctx.set_status(format!("{chunks} chunks, {segments_found} utterances"));
        }
        Ok(())
    }
}
