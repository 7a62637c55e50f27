//! Feature flag events: evaluations by reason, reloads by trigger and outcome, what is served.

use super::{EvalError, Reason, Resolution};

/// Registers the flags metrics' descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_flags_evaluations_total",
        "flag evaluations, by reason (STATIC, TARGETING_MATCH, DEFAULT, DISABLED, SPLIT, ERROR)"
    );
    metrics::describe_counter!(
        "brainstem_flags_reloads_total",
        "flag definition reloads, by trigger (watch, sighup) and outcome (applied, refused)"
    );
    metrics::describe_gauge!("brainstem_flags_defined", "flags defined in the served set");
    metrics::describe_gauge!("brainstem_flags_overrides", "runtime overrides in force");
}

/// How a reload ended, for the counter's `outcome` label.
#[derive(Debug, Clone, Copy)]
pub enum ReloadOutcomeKind {
    Applied,
    Refused,
}

/// Handles registered once: evaluation is the hot path.
#[derive(Clone)]
pub struct FlagsMetrics {
    by_reason: [metrics::Counter; 6],
    defined: metrics::Gauge,
    overrides: metrics::Gauge,
}

const REASONS: [Reason; 6] = [
    Reason::Static,
    Reason::TargetingMatch,
    Reason::Default,
    Reason::Disabled,
    Reason::Split,
    Reason::Error,
];

impl FlagsMetrics {
    pub fn new() -> Self {
        FlagsMetrics {
            by_reason: REASONS.map(|reason| {
                metrics::counter!("brainstem_flags_evaluations_total", "reason" => reason.as_str())
            }),
            defined: metrics::gauge!("brainstem_flags_defined"),
            overrides: metrics::gauge!("brainstem_flags_overrides"),
        }
    }

    pub fn evaluated(&self, result: &Result<Resolution, EvalError>) {
        let reason = result.as_ref().map_or(Reason::Error, |r| r.reason);
        let i = REASONS.iter().position(|r| *r == reason).unwrap_or(5);
        self.by_reason[i].increment(1);
    }

    pub fn loaded(&self, flags: usize, overrides: usize) {
        self.defined.set(flags as f64);
        self.overrides.set(overrides as f64);
    }

    pub fn reloaded(&self, trigger: &'static str, outcome: ReloadOutcomeKind) {
        let outcome = match outcome {
            ReloadOutcomeKind::Applied => "applied",
            ReloadOutcomeKind::Refused => "refused",
        };
        metrics::counter!("brainstem_flags_reloads_total", "trigger" => trigger, "outcome" => outcome)
            .increment(1);
    }
}

impl Default for FlagsMetrics {
    fn default() -> Self {
        Self::new()
    }
}
