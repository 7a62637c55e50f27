//! `[learning]`: the online model, its queue and checkpoints, and its actor's supervision keys.

use crate::config::{Config, Issues, Section, Table, Walker};
use crate::supervisor::config::ActorConfig;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LearningConfig {
    pub enabled: bool,
    /// Features per event; 0: fixed by the first event ever accepted (then kept in the store).
    pub feature_dimension: u64,
    /// Upper bound on the dimension (and on an event's feature count).
    pub max_features: u64,
    /// SGD step size.
    pub learning_rate: f64,
    /// The model is checkpointed after this many learned events (and at a clean stop).
    pub checkpoint_every: u64,
    /// Feedback is refused while this many accepted events wait to be learned…
    pub queue_high_water: u64,
    /// …until the queue has drained to this many.
    pub queue_low_water: u64,
    /// Events in the rolling prequential accuracy.
    pub accuracy_window: u64,
    /// How long an event's deduplication key is kept after it was accepted.
    pub dedup_retention_seconds: u64,
    /// Publish the model to the registry under this name (e.g. `learning/online`); empty: never.
    pub publish_as: String,
    /// How often the `learning-publish` worker publishes a model that learned something new.
    pub publish_interval_seconds: u64,
    /// How the supervisor runs the actor.
    #[serde(flatten)]
    pub actor: ActorConfig,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            enabled: true,
            feature_dimension: 0,
            max_features: 4096,
            learning_rate: 0.1,
            checkpoint_every: 100,
            queue_high_water: 10_000,
            queue_low_water: 5_000,
            accuracy_window: 1000,
            dedup_retention_seconds: 7 * 86_400,
            publish_as: String::new(),
            publish_interval_seconds: 300,
            // The daemon keeps serving without its learner.
            actor: ActorConfig {
                critical: false,
                ..ActorConfig::default()
            },
        }
    }
}

impl Section for LearningConfig {
    const KEY: &'static str = "learning";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.boolean(&t, "enabled", &mut self.enabled);
        walker.integer(
            &t,
            "feature_dimension",
            0..=1_000_000,
            &mut self.feature_dimension,
        );
        walker.integer(&t, "max_features", 1..=1_000_000, &mut self.max_features);
        walker.float(&t, "learning_rate", 1e-9..=100.0, &mut self.learning_rate);
        walker.integer(
            &t,
            "checkpoint_every",
            1..=10_000_000,
            &mut self.checkpoint_every,
        );
        walker.integer(
            &t,
            "queue_high_water",
            1..=100_000_000,
            &mut self.queue_high_water,
        );
        walker.integer(
            &t,
            "queue_low_water",
            0..=100_000_000,
            &mut self.queue_low_water,
        );
        walker.integer(
            &t,
            "accuracy_window",
            1..=1_000_000,
            &mut self.accuracy_window,
        );
        walker.integer(
            &t,
            "dedup_retention_seconds",
            60..=10 * 365 * 86_400,
            &mut self.dedup_retention_seconds,
        );
        walker.string(&t, "publish_as", &mut self.publish_as);
        walker.integer(
            &t,
            "publish_interval_seconds",
            1..=7 * 86_400,
            &mut self.publish_interval_seconds,
        );
        self.actor.parse_keys(walker, &t);
        walker.finish(t);
    }

    fn validate(&self, config: &Config, issues: &mut Issues) {
        if !self.publish_as.is_empty() {
            if let Err(v) = crate::registry::validate_name(&self.publish_as, "learning.publish_as")
            {
                issues.push("learning.publish_as", v.description);
            } else if !config.registry.enabled {
                issues.push(
                    "learning.publish_as",
                    "needs the model registry ([registry] enabled = true)",
                );
            }
        }
        if self.queue_low_water >= self.queue_high_water {
            issues.push(
                "learning.queue_low_water",
                format!(
                    "{} is not below learning.queue_high_water ({})",
                    self.queue_low_water, self.queue_high_water
                ),
            );
        }
        if self.feature_dimension > self.max_features {
            issues.push(
                "learning.feature_dimension",
                format!(
                    "{} is more than learning.max_features ({})",
                    self.feature_dimension, self.max_features
                ),
            );
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[learning]
# An online logistic-regression model fed with feedback events (docs/LEARNING.md). An event is durable
# before it is acknowledged and learned exactly once, also across kill -9.
enabled = {enabled}
# Features per event; 0: fixed by the first event ever accepted.
feature_dimension = {dimension}
max_features = {max_features}
learning_rate = {rate:?}
# The model (weights, counters, last learned event) is checkpointed atomically every
# checkpoint_every learned events and at a clean stop; a start replays the events after it.
checkpoint_every = {checkpoint_every}
# Backpressure: Feedback answers RESOURCE_EXHAUSTED (with RetryInfo) once queue_high_water accepted
# events wait to be learned, until the queue has drained to queue_low_water.
queue_high_water = {high}
queue_low_water = {low}
# Prequential accuracy: each event is predicted before it is learned; over the last accuracy_window.
accuracy_window = {window}
# A repeated event (same event_id, or same features and label) is recognised for this long.
dedup_retention_seconds = {retention}
# Publish the model to the registry as versions of this model (weights file under the registry's
# first artifact root, its hash, events learned, the prequential accuracy) whenever it learned
# something new, every publish_interval_seconds; the accuracy is also recorded as the quality metric
# prequential_accuracy, so DetectDrift and [[registry.drift_rules]] watch it. Empty: never.
publish_as = "{publish_as}"
publish_interval_seconds = {publish_interval}
{actor}"#,
            enabled = self.enabled,
            dimension = self.feature_dimension,
            max_features = self.max_features,
            rate = self.learning_rate,
            checkpoint_every = self.checkpoint_every,
            high = self.queue_high_water,
            low = self.queue_low_water,
            window = self.accuracy_window,
            retention = self.dedup_retention_seconds,
            publish_as = self.publish_as,
            publish_interval = self.publish_interval_seconds,
            actor = self.actor.default_text(),
        )
    }
}
