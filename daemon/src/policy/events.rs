//! Policy engine events.

use crate::runtime::events::ErrorOccurred;

/// Registers the policy metrics' descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_policy_decisions_total",
        "policy decisions, by kind (check, batch) and decision (allow, deny)"
    );
    metrics::describe_counter!(
        "brainstem_policy_reloads_total",
        "policy set reloads, by trigger and result (applied, refused)"
    );
    metrics::describe_gauge!("brainstem_policy_policies", "policies in the set in force");
    metrics::describe_counter!(
        "brainstem_policy_cache_total",
        "decision cache lookups, by result (hit, miss)"
    );
}

/// The decision cache's hit and miss counters, registered once (every decision looks it up).
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: metrics::Counter,
    pub misses: metrics::Counter,
}

impl Default for CacheMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheMetrics {
    pub fn new() -> Self {
        CacheMetrics {
            hits: metrics::counter!("brainstem_policy_cache_total", "result" => "hit"),
            misses: metrics::counter!("brainstem_policy_cache_total", "result" => "miss"),
        }
    }
}

/// Policy decisions: handles registered once (the Check path is hot).
#[derive(Clone)]
pub struct DecisionMetrics {
    allowed: metrics::Counter,
    denied: metrics::Counter,
}

impl DecisionMetrics {
    pub fn new(kind: &'static str) -> Self {
        DecisionMetrics {
            allowed: metrics::counter!("brainstem_policy_decisions_total", "kind" => kind, "decision" => "allow"),
            denied: metrics::counter!("brainstem_policy_decisions_total", "kind" => kind, "decision" => "deny"),
        }
    }

    pub fn decided(&self, allowed: bool) {
        if allowed {
            self.allowed.increment(1);
        } else {
            self.denied.increment(1);
        }
    }
}

pub struct PolicyReloaded<'a> {
    pub applied: bool,
    pub trigger: &'static str,
    pub detail: &'a str,
    pub policies: usize,
}

impl PolicyReloaded<'_> {
    pub fn emit(self) {
        let result = if self.applied { "applied" } else { "refused" };
        metrics::counter!("brainstem_policy_reloads_total", "result" => result, "trigger" => self.trigger)
            .increment(1);
        if self.applied {
            metrics::gauge!("brainstem_policy_policies").set(self.policies as f64);
            tracing::info!(
                trigger = self.trigger,
                policies = self.policies,
                digest = self.detail,
                "policy set loaded"
            );
        } else {
            ErrorOccurred {
                subsystem: "policy",
                kind: "reload_refused",
            }
            .emit();
            tracing::error!(
                trigger = self.trigger,
                errors = self.detail,
                "policy set refused; the previous set keeps deciding"
            );
        }
    }
}
