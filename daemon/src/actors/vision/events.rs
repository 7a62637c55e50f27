//! Vision events.

use std::time::Duration;

use super::{Processed, VisionError};

/// Registers the vision actor's metric descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_vision_frames_total",
        "frames processed by the vision actor, by result (first, kept, duplicate, invalid)"
    );
    metrics::describe_counter!(
        "brainstem_vision_motion_events_total",
        "frames whose motion score crossed the threshold"
    );
    metrics::describe_histogram!(
        "brainstem_vision_frame_duration_seconds",
        metrics::Unit::Seconds,
        "time to decode and process one frame"
    );
}

pub struct FrameProcessed<'a> {
    pub outcome: &'a Result<Processed, VisionError>,
    pub duration: Duration,
}

impl FrameProcessed<'_> {
    pub fn emit(self) {
        let result = match self.outcome {
            Ok(p) if p.result.first => "first",
            Ok(p) if p.result.duplicate => "duplicate",
            Ok(_) => "kept",
            Err(_) => "invalid",
        };
        metrics::counter!("brainstem_vision_frames_total", "result" => result).increment(1);
        if matches!(self.outcome, Ok(p) if p.result.motion.is_some()) {
            metrics::counter!("brainstem_vision_motion_events_total").increment(1);
        }
        metrics::histogram!("brainstem_vision_frame_duration_seconds")
            .record(self.duration.as_secs_f64());
    }
}
