//! The `learning-publish` worker: publishes the online model to the model registry
//! (`[learning] publish_as`).
//!
//! Every `publish_interval_seconds`, when the model learned something since the last version, the
//! worker writes the weights (the checkpoint's bytes) to `<artifact root>/learning/<name>/<seq>.bin`,
//! registers them as the next version of `publish_as` (the registry hashes the file itself; metrics
//! `prequential_accuracy` and `events_learned`, tags with the learned sequence and dimension), and
//! records the accuracy as the quality metric `prequential_accuracy` of that version, so
//! `DetectDrift` and `[[registry.drift_rules]]` watch the learner. A failure is logged and retried at
//! the next interval; the learner never waits for it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Learning;
use crate::registry::{Actor as RegistryActor, Registration, Registry};
use crate::supervisor::actor::ActorResult;
use crate::supervisor::worker::{Worker, WorkerContext, until_cancelled};

/// The quality metric the worker records.
pub const ACCURACY_METRIC: &str = "prequential_accuracy";
/// The principal the registry names as the creator of published versions.
pub const PUBLISHER: &str = "brainstemd/learning";

/// See the module docs.
pub struct LearningPublish {
    learning: Learning,
    registry: Arc<Registry>,
    name: String,
    dir: PathBuf,
    every: Duration,
}

impl LearningPublish {
    pub fn new(
        learning: Learning,
        registry: Arc<Registry>,
        name: String,
        dir: PathBuf,
        every: Duration,
    ) -> Self {
        LearningPublish {
            learning,
            registry,
            name,
            dir,
            every,
        }
    }

    /// Publishes the model if it learned something since `last` (its learned sequence); the
    /// published sequence and version.
    async fn publish(&self, last: u64) -> Result<Option<(u64, String)>, String> {
        let snapshot = self.learning.snapshot().map_err(|err| err.to_string())?;
        if snapshot.events_learned == 0 || snapshot.learned_seq == last {
            return Ok(None);
        }
        let path = self.dir.join(format!("{}.bin", snapshot.learned_seq));
        std::fs::create_dir_all(&self.dir)
            .map_err(|err| format!("{}: {err}", self.dir.display()))?;
        brainstem_keys::files::write_private(&path, &snapshot.weights)
            .map_err(|err| err.to_string())?;
        let mut metrics =
            BTreeMap::from([("events_learned".to_owned(), snapshot.events_learned as f64)]);
        if let Some(accuracy) = snapshot.accuracy {
            metrics.insert(ACCURACY_METRIC.to_owned(), accuracy);
        }
        let actor = RegistryActor {
            principal: PUBLISHER.to_owned(),
            correlation_id: String::new(),
        };
        let version = self
            .registry
            .register(
                &actor,
                Registration {
                    name: self.name.clone(),
                    algorithm: "logistic-regression-sgd".to_owned(),
                    weights_path: path.display().to_string(),
                    weights_sha256: Some(snapshot.sha256_hex.clone()),
                    metrics,
                    tags: BTreeMap::from([
                        ("learned_seq".to_owned(), snapshot.learned_seq.to_string()),
                        ("dimension".to_owned(), snapshot.dimension.to_string()),
                    ]),
                    description: "published by the learning actor".to_owned(),
                    ..Registration::default()
                },
            )
            .await
            .map_err(|err| err.to_string())?
            .version
            .clone();
        if let Some(accuracy) = snapshot.accuracy {
            self.registry
                .record_quality_metric(&self.name, &version, ACCURACY_METRIC, accuracy, None)
                .await
                .map_err(|err| err.to_string())?;
        }
        Ok(Some((snapshot.learned_seq, version)))
    }
}

impl Worker for LearningPublish {
    fn name(&self) -> &'static str {
        "learning-publish"
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        ctx.ready();
        let mut last = 0;
        loop {
            if ctx
                .idle(until_cancelled(&ctx, tokio::time::sleep(self.every)))
                .await
                .is_none()
            {
                return Ok(());
            }
            match self.publish(last).await {
                Ok(Some((seq, version))) => {
                    last = seq;
                    tracing::info!(model = %self.name, %version, learned_seq = seq, "learning model published");
                    ctx.set_status(format!("published {}@{version}", self.name));
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(model = %self.name, error = %err, "learning model not published; trying again later");
                    ctx.set_status(format!("last publish failed: {err}"));
                }
            }
            ctx.progress();
        }
    }
}
