//! `brainstemctl vision submit` / `voice submit`: stream frames or audio from files to the perception
//! actors (docs/PERCEPTION.md). Meant for trying the daemon out and for scripts; capture processes
//! use the gRPC streams directly.

use std::path::PathBuf;

use brainstem_client::v1::vision_client::VisionClient;
use brainstem_client::v1::voice_client::VoiceClient;
use brainstem_client::v1::{AudioChunk, Frame};
use brainstem_client::{ConnectOptions, exit};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::{CliError, Output, print};

#[derive(Clone, Copy, ValueEnum)]
pub enum FrameFormat {
    Gray8,
    Rgb8,
    Png,
    Jpeg,
}

impl FrameFormat {
    fn name(self) -> &'static str {
        match self {
            FrameFormat::Gray8 => "gray8",
            FrameFormat::Rgb8 => "rgb8",
            FrameFormat::Png => "png",
            FrameFormat::Jpeg => "jpeg",
        }
    }
}

#[derive(Subcommand)]
pub enum VisionCommand {
    /// Send each FILE as one frame, in order, in one stream (needs vision.submit); prints the counts.
    Submit {
        #[arg(long)]
        source: String,
        #[arg(long, value_enum)]
        format: FrameFormat,
        /// Pixels; required for gray8 and rgb8 (raw files hold exactly width × height × channels bytes).
        #[arg(long, default_value_t = 0)]
        width: u32,
        #[arg(long, default_value_t = 0)]
        height: u32,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum VoiceCommand {
    /// Send FILE (raw PCM s16le mono) as one stream in chunks (needs voice.submit); prints the
    /// utterance segments found.
    Submit {
        #[arg(long)]
        source: String,
        /// Samples per second, 8000 to 48000.
        #[arg(long, default_value_t = 16_000)]
        rate: u32,
        /// Bytes per chunk (even; at most the daemon's voice.max_chunk_bytes).
        #[arg(long, default_value_t = 32_000)]
        chunk_bytes: usize,
        file: PathBuf,
    },
}

fn read(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|err| CliError::Local(format!("{}: {err}", path.display())))
}

pub async fn vision(
    options: &ConnectOptions,
    output: Output,
    command: &VisionCommand,
) -> Result<u8, CliError> {
    let VisionCommand::Submit {
        source,
        format,
        width,
        height,
        files,
    } = command;
    let mut frames = Vec::with_capacity(files.len());
    for path in files {
        frames.push(Frame {
            source: source.clone(),
            width: *width,
            height: *height,
            format: format.name().to_owned(),
            data: read(path)?,
        });
    }
    let client = options.connect().await?;
    let reply = VisionClient::new(client.channel.clone())
        .submit_frames(tonic::codegen::tokio_stream::iter(frames))
        .await?
        .into_inner();
    print(
        output,
        format!(
            "received {}  duplicates {}  motion events {}",
            reply.received, reply.duplicates, reply.motion_events
        ),
        json!({
            "received": reply.received,
            "duplicates": reply.duplicates,
            "motion_events": reply.motion_events,
        }),
    );
    Ok(exit::OK)
}

pub async fn voice(
    options: &ConnectOptions,
    output: Output,
    command: &VoiceCommand,
) -> Result<u8, CliError> {
    let VoiceCommand::Submit {
        source,
        rate,
        chunk_bytes,
        file,
    } = command;
    if *chunk_bytes == 0 || chunk_bytes % 2 != 0 {
        return Err(CliError::Usage(
            "--chunk-bytes must be a positive even number".to_owned(),
        ));
    }
    let pcm = read(file)?;
    let chunks: Vec<AudioChunk> = pcm
        .chunks(*chunk_bytes)
        .map(|c| AudioChunk {
            source: source.clone(),
            sample_rate: *rate,
            pcm: c.to_vec(),
        })
        .collect();
    let client = options.connect().await?;
    let reply = VoiceClient::new(client.channel.clone())
        .submit_audio(tonic::codegen::tokio_stream::iter(chunks))
        .await?
        .into_inner();
    let mut human = format!(
        "{} ms of audio, {} utterances",
        reply.audio_ms,
        reply.segments.len()
    );
    for s in &reply.segments {
        human.push_str(&format!(
            "\n  {:>8} – {:>8} ms  peak {:.1} dBFS  mean {:.1} dBFS",
            s.start_ms, s.end_ms, s.peak_dbfs, s.mean_dbfs
        ));
    }
    let segments: Vec<_> = reply
        .segments
        .iter()
        .map(|s| {
            json!({
                "start_ms": s.start_ms,
                "end_ms": s.end_ms,
                "peak_dbfs": s.peak_dbfs,
                "mean_dbfs": s.mean_dbfs,
            })
        })
        .collect();
    print(
        output,
        human,
        json!({"audio_ms": reply.audio_ms, "segments": segments}),
    );
    Ok(exit::OK)
}
