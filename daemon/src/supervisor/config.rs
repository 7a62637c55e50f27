//! `[supervisor]`, and the supervision keys every actor's own section carries ([`ActorConfig`]).

use crate::config::{Config, Issues, Section, Table, Walker};

/// How the supervisor restarts its actors when one of them exits abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the actor that exited is restarted.
    OneForOne,
    /// The actor that exited and every actor declared after it (they depend on it) are restarted,
    /// in declared order.
    RestForOne,
}

/// When an actor that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartType {
    /// Always restarted, whatever the exit.
    Permanent,
    /// Restarted only after an abnormal exit (error, panic, freeze).
    Transient,
    /// Never restarted.
    Temporary,
}

/// What a full mailbox does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// The sender waits for room up to `mailbox_wait_ms`, then is refused.
    Wait,
    /// The oldest queued message is dropped (counted) to make room.
    DropOldest,
    /// The new message is dropped (counted).
    DropNewest,
    /// The sender is refused at once (RESOURCE_EXHAUSTED with a retry hint).
    Reject,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SupervisorConfig {
    pub strategy: Strategy,
    /// Restart intensity: more than `max_restarts` restarts of one actor within
    /// `restart_window_seconds` escalates (the actor is marked failed).
    pub max_restarts: u64,
    pub restart_window_seconds: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Each backoff is shortened by a random 0..=jitter percent.
    pub backoff_jitter_percent: u64,
    /// An actor that is busy and makes no progress for this long is frozen…
    pub hung_after_seconds: u64,
    /// …as seen by this many consecutive watchdog checks (one every hung_after / hung_checks).
    pub hung_checks: u64,
    /// Exit non-zero (so systemd restarts the daemon) when a critical actor fails.
    pub exit_on_critical_failure: bool,
    /// How long start waits for each actor to report ready before starting the next one.
    pub start_timeout_seconds: u64,
}

/// Settings of one supervised actor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActorConfig {
    pub restart: RestartType,
    /// A failed critical actor stops the systemd watchdog ping (and may exit the daemon).
    pub critical: bool,
    pub mailbox_capacity: u64,
    pub mailbox_overflow: OverflowPolicy,
    /// With `mailbox_overflow = "wait"`: how long a sender waits for room.
    pub mailbox_wait_ms: u64,
    /// On stop, restart or freeze: how long the actor gets to return after cancellation before it is
    /// aborted (and named in the log).
    pub stop_deadline_ms: u64,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            restart: RestartType::Permanent,
            critical: true,
            mailbox_capacity: 1024,
            mailbox_overflow: OverflowPolicy::Wait,
            mailbox_wait_ms: 100,
            stop_deadline_ms: 2000,
        }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            restart_window_seconds: 60,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            backoff_jitter_percent: 20,
            hung_after_seconds: 120,
            hung_checks: 3,
            exit_on_critical_failure: true,
            start_timeout_seconds: 30,
        }
    }
}

impl Section for SupervisorConfig {
    const KEY: &'static str = "supervisor";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.choice(
            &t,
            "strategy",
            &[
                ("one_for_one", Strategy::OneForOne),
                ("rest_for_one", Strategy::RestForOne),
            ],
            &mut self.strategy,
        );
        walker.integer(&t, "max_restarts", 0..=10_000, &mut self.max_restarts);
        walker.integer(
            &t,
            "restart_window_seconds",
            1..=86_400,
            &mut self.restart_window_seconds,
        );
        walker.integer(
            &t,
            "backoff_initial_ms",
            1..=600_000,
            &mut self.backoff_initial_ms,
        );
        walker.integer(
            &t,
            "backoff_max_ms",
            1..=3_600_000,
            &mut self.backoff_max_ms,
        );
        walker.integer(
            &t,
            "backoff_jitter_percent",
            0..=100,
            &mut self.backoff_jitter_percent,
        );
        walker.integer(
            &t,
            "hung_after_seconds",
            1..=86_400,
            &mut self.hung_after_seconds,
        );
        walker.integer(&t, "hung_checks", 1..=100, &mut self.hung_checks);
        walker.boolean(
            &t,
            "exit_on_critical_failure",
            &mut self.exit_on_critical_failure,
        );
        walker.integer(
            &t,
            "start_timeout_seconds",
            1..=3600,
            &mut self.start_timeout_seconds,
        );
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        if self.backoff_initial_ms > self.backoff_max_ms {
            issues.push(
                "supervisor.backoff_initial_ms",
                format!(
                    "{} is more than supervisor.backoff_max_ms ({})",
                    self.backoff_initial_ms, self.backoff_max_ms
                ),
            );
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[supervisor]
# Subsystem actors (the episodic buffer, …) run under one supervisor.
# "one_for_one": only the actor that exited is restarted. "rest_for_one": the actors declared after it
# (which depend on it) are restarted with it, in declared order.
strategy = "{strategy}"
# Restart intensity: more than max_restarts restarts of one actor within restart_window_seconds
# escalates: the actor is marked failed and its gRPC health service turns NOT_SERVING. A failed critical
# actor stops the systemd watchdog ping and, with exit_on_critical_failure, exits the daemon with 70.
max_restarts = {max_restarts}
restart_window_seconds = {restart_window_seconds}
exit_on_critical_failure = {exit_on_critical_failure}
# Exponential backoff between restarts: initial, doubled per consecutive failure, capped at max, each
# shortened by a random 0..=jitter percent.
backoff_initial_ms = {backoff_initial_ms}
backoff_max_ms = {backoff_max_ms}
backoff_jitter_percent = {backoff_jitter_percent}
# Progress watchdog: an actor that is busy and makes no progress in hung_checks consecutive checks
# (one every hung_after_seconds / hung_checks) is frozen: cancelled, aborted after its stop deadline,
# and restarted through the policy above. Sections marked as known-blocking are not counted.
hung_after_seconds = {hung_after_seconds}
hung_checks = {hung_checks}
# Actors start in declared order; each gets this long to report ready before the next one starts.
start_timeout_seconds = {start_timeout_seconds}
"#,
            strategy = match self.strategy {
                Strategy::OneForOne => "one_for_one",
                Strategy::RestForOne => "rest_for_one",
            },
            max_restarts = self.max_restarts,
            restart_window_seconds = self.restart_window_seconds,
            exit_on_critical_failure = self.exit_on_critical_failure,
            backoff_initial_ms = self.backoff_initial_ms,
            backoff_max_ms = self.backoff_max_ms,
            backoff_jitter_percent = self.backoff_jitter_percent,
            hung_after_seconds = self.hung_after_seconds,
            hung_checks = self.hung_checks,
            start_timeout_seconds = self.start_timeout_seconds,
        )
    }
}

impl ActorConfig {
    /// Reads the supervision keys from the actor's own section (`[episodic]`, …).
    pub fn parse_keys(&mut self, walker: &mut Walker, t: &Table<'_>) {
        walker.choice(
            t,
            "restart",
            &[
                ("permanent", RestartType::Permanent),
                ("transient", RestartType::Transient),
                ("temporary", RestartType::Temporary),
            ],
            &mut self.restart,
        );
        walker.boolean(t, "critical", &mut self.critical);
        walker.integer(
            t,
            "mailbox_capacity",
            1..=1_000_000,
            &mut self.mailbox_capacity,
        );
        walker.choice(
            t,
            "mailbox_overflow",
            &[
                ("wait", OverflowPolicy::Wait),
                ("drop_oldest", OverflowPolicy::DropOldest),
                ("drop_newest", OverflowPolicy::DropNewest),
                ("reject", OverflowPolicy::Reject),
            ],
            &mut self.mailbox_overflow,
        );
        walker.integer(t, "mailbox_wait_ms", 0..=600_000, &mut self.mailbox_wait_ms);
        walker.integer(
            t,
            "stop_deadline_ms",
            0..=600_000,
            &mut self.stop_deadline_ms,
        );
    }

    /// The supervision keys' part of an actor's default section.
    pub fn default_text(&self) -> String {
        format!(
            r#"# Supervision. restart: "permanent" (always restarted), "transient" (only after an error, panic
# or freeze), "temporary" (never). critical: a failed critical actor makes the daemon not ready and
# stops the systemd watchdog ping. mailbox_overflow: "wait" (up to mailbox_wait_ms, then refused),
# "drop_oldest", "drop_newest" (drops are counted) or "reject" (RESOURCE_EXHAUSTED with a retry
# hint). stop_deadline_ms: how long the actor may take to return after cancellation before it is
# aborted.
restart = "{restart}"
critical = {critical}
mailbox_capacity = {mailbox_capacity}
mailbox_overflow = "{overflow}"
mailbox_wait_ms = {mailbox_wait_ms}
stop_deadline_ms = {stop_deadline_ms}
"#,
            restart = match self.restart {
                RestartType::Permanent => "permanent",
                RestartType::Transient => "transient",
                RestartType::Temporary => "temporary",
            },
            critical = self.critical,
            mailbox_capacity = self.mailbox_capacity,
            overflow = match self.mailbox_overflow {
                OverflowPolicy::Wait => "wait",
                OverflowPolicy::DropOldest => "drop_oldest",
                OverflowPolicy::DropNewest => "drop_newest",
                OverflowPolicy::Reject => "reject",
            },
            mailbox_wait_ms = self.mailbox_wait_ms,
            stop_deadline_ms = self.stop_deadline_ms,
        )
    }
}
