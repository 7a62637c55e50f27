//! Supervisor events: actor and worker lifecycle, counters, readiness and the systemd watchdog ping.
//! Workers share the actors' metrics: the `actor` label carries the (static) name of either kind.

use std::time::Duration;

use crate::runtime::events::ErrorOccurred;

/// Registers the supervisor's metric descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_supervisor_actor_restarts_total",
        "new incarnations of an actor or worker after its first start, by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_panics_total",
        "actor and worker runs that ended in a panic (caught), by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_errors_total",
        "actor and worker runs that returned an error, and errors they recorded and survived, by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_kills_total",
        "actors and workers killed by the supervisor, by actor and reason (frozen, stop_deadline)"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_escalations_total",
        "actors and workers marked failed for restarting too often, by actor"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_actor_up",
        "1 while the actor or worker is starting or running, else 0, by actor"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_actor_failed",
        "1 while the actor or worker is failed (escalated), else 0, by actor"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_actor_mailbox_depth",
        "messages waiting in the actor's mailbox, by actor (actors only)"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_mailbox_drops_total",
        "messages dropped by the drop_oldest / drop_newest overflow policies, by actor (actors only)"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_actor_since_progress_seconds",
        "time since the actor or worker last made progress, by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_watchdog_pings_total",
        "systemd watchdog ticks, by result (sent, withheld: a critical actor is failed)"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_critical_down",
        "critical actors and workers that are stopped or failed; above 0 the daemon is not ready"
    );
}

pub struct ActorStateChanged {
    pub actor: &'static str,
    pub kind: crate::supervisor::Kind,
    pub from: crate::supervisor::ActorState,
    pub to: crate::supervisor::ActorState,
}

impl ActorStateChanged {
    pub fn emit(self) {
        use crate::supervisor::ActorState;
        metrics::gauge!("brainstem_supervisor_actor_up", "actor" => self.actor)
            .set(if self.to.is_serving() { 1.0 } else { 0.0 });
        // Zero series once an actor has a state, so alert rules (config/alerts.yml) see the names
        // before the first restart or kill, and `increase()` counts the first one.
        metrics::counter!("brainstem_supervisor_actor_restarts_total", "actor" => self.actor)
            .increment(0);
        metrics::counter!("brainstem_supervisor_actor_kills_total", "actor" => self.actor, "reason" => "frozen")
            .increment(0);
        metrics::gauge!("brainstem_supervisor_actor_failed", "actor" => self.actor).set(
            if self.to == ActorState::Failed {
                1.0
            } else {
                0.0
            },
        );
        tracing::info!(
            actor = self.actor,
            kind = self.kind.as_str(),
            from = self.from.as_str(),
            to = self.to.as_str(),
            "actor state changed"
        );
    }
}

/// The set of critical actors and workers that are not running, after one of them changed state.
pub struct CriticalDown<'a> {
    pub down: &'a [&'static str],
    /// During the ordered start or the final stop units are down on purpose: nothing to warn about.
    pub expected: bool,
}

impl CriticalDown<'_> {
    pub fn emit(self) {
        metrics::gauge!("brainstem_supervisor_critical_down").set(self.down.len() as f64);
        if !self.down.is_empty() && !self.expected {
            tracing::warn!(down = ?self.down, "not ready: critical actors or workers are not running");
        }
    }
}

pub struct ActorRestarted {
    pub actor: &'static str,
}

impl ActorRestarted {
    pub fn emit(self) {
        metrics::counter!("brainstem_supervisor_actor_restarts_total", "actor" => self.actor)
            .increment(1);
    }
}

pub struct ActorExited<'a> {
    pub actor: &'static str,
    pub outcome: &'a crate::supervisor::Outcome,
    /// The supervisor asked it to stop.
    pub expected: bool,
}

impl ActorExited<'_> {
    pub fn emit(self) {
        use crate::supervisor::Outcome;
        match self.outcome {
            Outcome::Normal if self.expected => {
                tracing::info!(actor = self.actor, "actor stopped")
            }
            Outcome::Normal => tracing::warn!(actor = self.actor, "actor returned unexpectedly"),
            Outcome::Error(error) => {
                metrics::counter!("brainstem_supervisor_actor_errors_total", "actor" => self.actor)
                    .increment(1);
                tracing::warn!(actor = self.actor, error = %error, "actor failed");
            }
            Outcome::Panic(message) => {
                metrics::counter!("brainstem_supervisor_actor_panics_total", "actor" => self.actor)
                    .increment(1);
                ErrorOccurred {
                    subsystem: "supervisor",
                    kind: "actor_panic",
                }
                .emit();
                tracing::error!(actor = self.actor, panic = %message, "actor panicked");
            }
        }
    }
}

pub struct ActorErrorRecorded<'a> {
    pub actor: &'static str,
    pub error: &'a str,
}

impl ActorErrorRecorded<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_supervisor_actor_errors_total", "actor" => self.actor)
            .increment(1);
        tracing::warn!(
            actor = self.actor,
            error = self.error,
            "actor recorded an error"
        );
    }
}

pub struct ActorKilled {
    pub actor: &'static str,
    /// "frozen" or "stop_deadline".
    pub reason: &'static str,
    /// Milliseconds without progress (frozen) or the stop deadline that passed.
    pub detail: u64,
}

impl ActorKilled {
    pub fn emit(self) {
        metrics::counter!("brainstem_supervisor_actor_kills_total", "actor" => self.actor, "reason" => self.reason)
            .increment(1);
        match self.reason {
            "frozen" => tracing::error!(
                actor = self.actor,
                no_progress_ms = self.detail,
                "actor frozen: busy without progress; cancelling and restarting it"
            ),
            _ => tracing::warn!(
                actor = self.actor,
                stop_deadline_ms = self.detail,
                "actor ignored cancellation past its stop deadline; aborted"
            ),
        }
    }
}

pub struct ActorEscalated {
    pub actor: &'static str,
    pub max_restarts: u64,
    pub window_seconds: u64,
    pub critical: bool,
    pub exit: bool,
}

impl ActorEscalated {
    pub fn emit(self) {
        metrics::counter!("brainstem_supervisor_actor_escalations_total", "actor" => self.actor)
            .increment(1);
        ErrorOccurred {
            subsystem: "supervisor",
            kind: "escalation",
        }
        .emit();
        tracing::error!(
            actor = self.actor,
            max_restarts = self.max_restarts,
            window_seconds = self.window_seconds,
            critical = self.critical,
            exiting = self.exit,
            "actor restarted too often; marked failed"
        );
    }
}

pub struct ActorGauges {
    pub actor: &'static str,
    /// (depth, drops); `None` for a worker, which has no mailbox worth showing.
    pub mailbox: Option<(u64, u64)>,
    pub since_progress: Duration,
}

impl ActorGauges {
    pub fn emit(self) {
        if let Some((depth, drops)) = self.mailbox {
            metrics::gauge!("brainstem_supervisor_actor_mailbox_depth", "actor" => self.actor)
                .set(depth as f64);
            metrics::counter!("brainstem_supervisor_actor_mailbox_drops_total", "actor" => self.actor)
                .absolute(drops);
        }
        metrics::gauge!("brainstem_supervisor_actor_since_progress_seconds", "actor" => self.actor)
            .set(self.since_progress.as_secs_f64());
    }
}

pub struct WatchdogPinged {
    /// False: withheld because a critical actor is failed.
    pub sent: bool,
}

impl WatchdogPinged {
    pub fn emit(self) {
        let result = if self.sent { "sent" } else { "withheld" };
        metrics::counter!("brainstem_supervisor_watchdog_pings_total", "result" => result)
            .increment(1);
        if !self.sent {
            tracing::warn!("systemd watchdog ping withheld: a critical actor is failed");
        }
    }
}
