//! The `registry-drift` worker: every `[registry] drift_check_interval_seconds` it runs each
//! configured drift rule (`DetectDrift` on the rule's model, version and metric). A rule that
//! starts drifting is counted and audited once (kind `registry`, action `registry.drift`); it is
//! audited again only after a check found it steady. The gauge shows how many rules drift now.

use std::sync::Arc;
use std::time::Duration;

use super::Registry;
use super::config::DriftRule;
use crate::error::ServiceError;
use crate::supervisor::worker::until_cancelled;
use crate::supervisor::{ActorResult, Worker, WorkerContext, WorkerPolicy};

pub struct RegistryDrift {
    registry: Arc<Registry>,
    rules: Vec<DriftRule>,
    interval: Duration,
}

impl RegistryDrift {
    pub fn new(registry: Arc<Registry>, rules: Vec<DriftRule>, interval: Duration) -> Self {
        RegistryDrift {
            registry,
            rules,
            interval,
        }
    }

    /// Checks every rule once; `drifting[i]` is rule i's state from the last check, updated here.
    /// Returns the rules that fired (were steady, now drift).
    pub fn check(&self, drifting: &mut [bool]) -> Vec<String> {
        let mut fired = Vec::new();
        for (rule, was) in self.rules.iter().zip(drifting.iter_mut()) {
            let result = self.registry.detect_drift(
                &rule.model,
                &rule.version,
                &rule.metric,
                rule.threshold_percent,
                rule.window_seconds,
            );
            let outcome = match result {
                Ok(drift) if drift.drifted => {
                    if !*was {
                        self.registry.audit_drift(rule, &drift);
                        tracing::warn!(
                            rule = %rule.name,
                            model = %rule.model,
                            version = %rule.version,
                            metric = %rule.metric,
                            baseline = drift.baseline,
                            recent = drift.recent,
                            change_percent = drift.relative_change_percent,
                            "a drift rule fired"
                        );
                        fired.push(rule.name.clone());
                    }
                    *was = true;
                    "drifted"
                }
                Ok(_) => {
                    *was = false;
                    "steady"
                }
                Err(ServiceError::FailedPrecondition(_) | ServiceError::NotFound(_)) => "no_data",
                Err(err) => {
                    tracing::warn!(rule = %rule.name, error = %err, "a drift rule could not be checked");
                    "failed"
                }
            };
            self.registry.metrics.drift_checked(outcome);
        }
        self.registry
            .metrics
            .drifting(drifting.iter().filter(|d| **d).count());
        fired
    }
}

impl Worker for RegistryDrift {
    fn name(&self) -> &'static str {
        "registry-drift"
    }

    /// Optional: without it drift is not watched; the registry itself goes on.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::OPTIONAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        ctx.ready();
        let mut drifting = vec![false; self.rules.len()];
        loop {
            if !self.rules.is_empty() {
                // A store scan per rule: short, but marked so the watchdog does not count it.
                let section = ctx.blocking();
                let fired = self.check(&mut drifting);
                drop(section);
                if !fired.is_empty() {
                    ctx.set_status(format!("drifting: {}", fired.join(", ")));
                }
            }
            ctx.progress();
            let sleep = tokio::time::sleep(self.interval);
            if ctx.idle(until_cancelled(&ctx, sleep)).await.is_none() {
                return Ok(());
            }
        }
    }
}
