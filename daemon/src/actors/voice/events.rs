//! Voice events.

use std::time::Duration;

/// Registers the voice actor's metric descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_voice_chunks_total",
        "audio chunks processed by the voice actor"
    );
    metrics::describe_counter!(
        "brainstem_voice_audio_milliseconds_total",
        "audio processed by the voice actor, in milliseconds"
    );
    metrics::describe_counter!("brainstem_voice_segments_total", "utterance segments found");
    metrics::describe_histogram!(
        "brainstem_voice_chunk_duration_seconds",
        metrics::Unit::Seconds,
        "time to run voice activity detection over one chunk"
    );
}

pub struct ChunkProcessed {
    pub samples: u64,
    pub rate: u32,
    pub segments: u64,
    pub duration: Duration,
}

impl ChunkProcessed {
    pub fn emit(self) {
        metrics::counter!("brainstem_voice_chunks_total").increment(1);
        metrics::counter!("brainstem_voice_audio_milliseconds_total")
            .increment(self.samples * 1000 / u64::from(self.rate.max(1)));
        if self.segments > 0 {
            metrics::counter!("brainstem_voice_segments_total").increment(self.segments);
        }
        metrics::histogram!("brainstem_voice_chunk_duration_seconds")
            .record(self.duration.as_secs_f64());
    }
}
