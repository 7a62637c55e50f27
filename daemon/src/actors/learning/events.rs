//! Learning actor events.

/// Registers the learning actor's metric descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_learning_feedback_total",
        "feedback events by result (accepted, duplicate, paused)"
    );
    metrics::describe_counter!(
        "brainstem_learning_learned_total",
        "events learned by the model (replays after a restart included)"
    );
    metrics::describe_gauge!(
        "brainstem_learning_pending",
        "accepted (durable) events waiting to be learned"
    );
    metrics::describe_gauge!(
        "brainstem_learning_paused",
        "1 while Feedback is refused because the pending queue passed its high-water mark"
    );
    metrics::describe_counter!(
        "brainstem_learning_pauses_total",
        "times the pending queue passed its high-water mark"
    );
    metrics::describe_gauge!(
        "brainstem_learning_accuracy",
        "prequential accuracy over the rolling window (each event predicted before it is learned)"
    );
    metrics::describe_counter!(
        "brainstem_learning_checkpoints_total",
        "model checkpoints written"
    );
    metrics::describe_counter!(
        "brainstem_learning_replayed_total",
        "events replayed from the store after the checkpoint when the actor started"
    );
}

/// One Feedback call's outcome.
pub struct FeedbackAnswered {
    /// "accepted", "duplicate" or "paused".
    pub result: &'static str,
}

impl FeedbackAnswered {
    pub fn emit(self) {
        metrics::counter!("brainstem_learning_feedback_total", "result" => self.result)
            .increment(1);
    }
}

/// The pending queue's level, and whether intake is paused.
pub struct QueueLevel {
    pub pending: u64,
    pub paused: bool,
}

impl QueueLevel {
    pub fn emit(self) {
        metrics::gauge!("brainstem_learning_pending").set(self.pending as f64);
        metrics::gauge!("brainstem_learning_paused").set(if self.paused { 1.0 } else { 0.0 });
    }
}

/// Intake paused or resumed.
pub struct PauseChanged {
    pub paused: bool,
    pub pending: u64,
}

impl PauseChanged {
    pub fn emit(self) {
        if self.paused {
            metrics::counter!("brainstem_learning_pauses_total").increment(1);
            tracing::warn!(
                pending = self.pending,
                "learning queue passed its high-water mark; feedback paused"
            );
        } else {
            tracing::info!(
                pending = self.pending,
                "learning queue drained to its low-water mark; feedback resumed"
            );
        }
        QueueLevel {
            pending: self.pending,
            paused: self.paused,
        }
        .emit();
    }
}

/// Events learned in one step of the actor.
pub struct Learned {
    pub events: u64,
    pub accuracy: Option<f64>,
}

impl Learned {
    pub fn emit(self) {
        metrics::counter!("brainstem_learning_learned_total").increment(self.events);
        if let Some(accuracy) = self.accuracy {
            metrics::gauge!("brainstem_learning_accuracy").set(accuracy);
        }
    }
}

pub struct CheckpointWritten {
    pub sequence: u64,
    pub pruned_events: u64,
    pub pruned_keys: u64,
}

impl CheckpointWritten {
    pub fn emit(self) {
        metrics::counter!("brainstem_learning_checkpoints_total").increment(1);
        tracing::debug!(
            sequence = self.sequence,
            pruned_events = self.pruned_events,
            pruned_keys = self.pruned_keys,
            "learning checkpoint written"
        );
    }
}

pub struct Loaded {
    pub checkpoint: u64,
    pub replay: u64,
}

impl Loaded {
    pub fn emit(self) {
        metrics::counter!("brainstem_learning_replayed_total").increment(self.replay);
        tracing::info!(
            checkpoint = self.checkpoint,
            replay = self.replay,
            "learning model loaded; replaying the events after its checkpoint"
        );
    }
}
