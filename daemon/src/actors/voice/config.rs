//! `[voice]`: the voice actor's limits and VAD parameters, and its supervision keys.

use super::vad::{FRAME_MS, VadParams};
use crate::config::{Section, Table, Walker};
use crate::supervisor::config::ActorConfig;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VoiceConfig {
    pub enabled: bool,
    /// Largest PCM chunk, in bytes.
    pub max_chunk_bytes: u64,
    /// Speech needs a frame energy this many dB above the adaptive noise floor…
    pub speech_above_noise_db: u64,
    /// …and above −min_level_dbfs dB relative to full scale…
    pub min_level_dbfs: u64,
    /// …and at most this many zero crossings per 100 samples.
    pub max_zero_crossings_percent: u64,
    /// Speech this long (consecutive 10 ms frames) starts a segment.
    pub min_speech_ms: u64,
    /// Silence this long ends it.
    pub hangover_ms: u64,
    #[serde(flatten)]
    pub actor: ActorConfig,
}

impl Default for VoiceConfig {
    fn default() -> Self {
        VoiceConfig {
            enabled: true,
            max_chunk_bytes: 192_000,
            speech_above_noise_db: 6,
            min_level_dbfs: 50,
            max_zero_crossings_percent: 35,
            min_speech_ms: 30,
            hangover_ms: 200,
            actor: crate::actors::vision::config::perception_actor(),
        }
    }
}

impl VoiceConfig {
    pub fn vad_params(&self) -> VadParams {
        let frames = |ms: u64| (ms.div_ceil(FRAME_MS)).max(1) as u32;
        VadParams {
            ratio: 10f64.powf(self.speech_above_noise_db as f64 / 10.0),
            min_energy: 10f64.powf(-(self.min_level_dbfs as f64) / 10.0),
            max_zcr: self.max_zero_crossings_percent as f64 / 100.0,
            min_speech_frames: frames(self.min_speech_ms),
            hangover_frames: frames(self.hangover_ms),
        }
    }
}

impl Section for VoiceConfig {
    const KEY: &'static str = "voice";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.boolean(&t, "enabled", &mut self.enabled);
        walker.integer(
            &t,
            "max_chunk_bytes",
            2..=16 * 1024 * 1024,
            &mut self.max_chunk_bytes,
        );
        walker.integer(
            &t,
            "speech_above_noise_db",
            0..=60,
            &mut self.speech_above_noise_db,
        );
        walker.integer(&t, "min_level_dbfs", 0..=120, &mut self.min_level_dbfs);
        walker.integer(
            &t,
            "max_zero_crossings_percent",
            1..=100,
            &mut self.max_zero_crossings_percent,
        );
        walker.integer(&t, "min_speech_ms", 10..=10_000, &mut self.min_speech_ms);
        walker.integer(&t, "hangover_ms", 10..=10_000, &mut self.hangover_ms);
        self.actor.parse_keys(walker, &t);
        walker.finish(t);
    }

    fn default_text(&self) -> String {
        format!(
            r#"[voice]
# Audio submitted over brainstem.v1.Voice/SubmitAudio (PCM s16le mono, 8-48 kHz); docs/PERCEPTION.md.
enabled = {enabled}
max_chunk_bytes = {max_chunk}
# Voice activity detection on 10 ms frames: a frame is speech when its energy is at least
# speech_above_noise_db above the adaptive noise floor and above -min_level_dbfs dBFS, with at most
# max_zero_crossings_percent zero crossings per 100 samples. min_speech_ms of speech starts an
# utterance (an `utterance` episode); hangover_ms without speech ends it.
speech_above_noise_db = {above}
min_level_dbfs = {level}
max_zero_crossings_percent = {zcr}
min_speech_ms = {min_speech}
hangover_ms = {hangover}
{actor}"#,
            enabled = self.enabled,
            max_chunk = self.max_chunk_bytes,
            above = self.speech_above_noise_db,
            level = self.min_level_dbfs,
            zcr = self.max_zero_crossings_percent,
            min_speech = self.min_speech_ms,
            hangover = self.hangover_ms,
            actor = self.actor.default_text(),
        )
    }
}
