//! The supervisor loop: one task that owns every actor's state machine.
//!
//! ```text
//!            spawn                 ready                 exit / freeze / operator
//! Stopped ─────────▶ Starting ─────────▶ Running ─────────────────────────▶ Stopping ─┐
//!    ▲                  ▲                                                             │ returned, or
//!    │                  └──────────── Restarting (backoff) ◀── policy ◀───────────────┘ aborted at
//!    └── operator stop / normal exit / temporary                 └─▶ Failed (intensity)   its deadline
//! ```
//!
//! Actors report readiness and exits over one channel; operators send commands; timers drive backoff,
//! stop deadlines, the progress watchdog and the systemd ping. Nothing in the loop waits on an actor
//! except the final ordered stop, so a stuck actor cannot wedge it.
//!
//! Cancellation tree: the daemon's token → this loop. Actor tokens are children of `children`, a token
//! the loop owns and cancels actor by actor (reverse order) when it stops; a drop guard cancels it if
//! the loop itself ever ends early, so no actor outlives its supervisor.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::actor::{ActorShared, ActorState};
use super::events::{
    ActorEscalated, ActorExited, ActorGauges, ActorKilled, ActorRestarted, ActorStateChanged,
    CriticalDown, WatchdogPinged,
};
use super::policy::{Intensity, Rng, backoff};
use super::{
    ActorEvent, ActorInfo, Kind, SpawnFn, Spec, StopReport, Supervisor, SupervisorError,
    WatchdogPing,
};
use crate::runtime::tasks::Tasks;
use crate::supervisor::config::{RestartType, Strategy, SupervisorConfig};

/// From actors to the loop.
#[derive(Debug)]
pub enum Report {
    Ready {
        index: usize,
        incarnation: u64,
    },
    Exit {
        index: usize,
        incarnation: u64,
        outcome: Outcome,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `run` returned `Ok`.
    Normal,
    Error(String),
    Panic(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Restart,
    Stop,
    Start,
}

pub enum Command {
    Actor {
        name: String,
        op: Op,
        reply: oneshot::Sender<Result<ActorInfo, SupervisorError>>,
    },
    #[cfg(test)]
    Wedge(oneshot::Receiver<()>),
}

/// What happens once a stopping actor has returned (or was aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Operator stop: stays stopped.
    Stop,
    /// Operator restart or a rest_for_one sibling: a new incarnation at this instant (no backoff, not
    /// counted against intensity).
    RestartAt(Instant),
    /// Frozen: restarted through the policy, like a failure.
    Failure,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Starting,
    Running,
    Stopping { deadline: Instant, then: Then },
    Restarting { at: Instant },
    Stopped,
    Failed,
}

impl Phase {
    fn state(self) -> ActorState {
        match self {
            Phase::Starting => ActorState::Starting,
            Phase::Running => ActorState::Running,
            Phase::Stopping { .. } => ActorState::Stopping,
            Phase::Restarting { .. } => ActorState::Restarting,
            Phase::Stopped => ActorState::Stopped,
            Phase::Failed => ActorState::Failed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Running,
    Stopped,
}

struct Live {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

struct Slot {
    shared: Arc<ActorShared>,
    spawn: SpawnFn,
    phase: Phase,
    incarnation: u64,
    live: Option<Live>,
    intensity: Intensity,
    consecutive: u32,
    started_at: Option<Instant>,
    seen_progress: u64,
    misses: u64,
    waiters: Vec<(Want, oneshot::Sender<Result<ActorInfo, SupervisorError>>)>,
}

pub struct Parts {
    /// Handed to every incarnation's context.
    pub handle: Supervisor,
    pub config: SupervisorConfig,
    pub specs: Vec<Spec>,
    pub reports: (
        mpsc::UnboundedSender<Report>,
        mpsc::UnboundedReceiver<Report>,
    ),
    pub commands: mpsc::Receiver<Command>,
    pub events: broadcast::Sender<ActorEvent>,
    pub tasks: Tasks,
    pub token: CancellationToken,
    pub failure: CancellationToken,
    pub ping: Option<(Duration, WatchdogPing)>,
    pub seed: Option<u64>,
}

pub struct Runtime {
    handle: Supervisor,
    config: SupervisorConfig,
    slots: Vec<Slot>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<ActorEvent>,
    tasks: Tasks,
    token: CancellationToken,
    children: CancellationToken,
    failure: CancellationToken,
    ping: Option<(Duration, WatchdogPing)>,
    next_ping: Instant,
    check_every: Duration,
    next_check: Instant,
    rng: Rng,
    /// The ordered start is done.
    started: bool,
}

impl Runtime {
    pub fn new(parts: Parts) -> Runtime {
        let now = Instant::now();
        let checks = parts.config.hung_checks.max(1);
        let check_every =
            Duration::from_secs(parts.config.hung_after_seconds.max(1)) / checks as u32;
        let slots = parts
            .specs
            .into_iter()
            .map(|spec| Slot {
                shared: spec.shared,
                spawn: spec.spawn,
                phase: Phase::Stopped,
                incarnation: 0,
                live: None,
                intensity: Intensity::default(),
                consecutive: 0,
                started_at: None,
                seen_progress: 0,
                misses: 0,
                waiters: Vec::new(),
            })
            .collect();
        Runtime {
            handle: parts.handle,
            config: parts.config,
            slots,
            reports_tx: parts.reports.0,
            reports: parts.reports.1,
            commands: parts.commands,
            events: parts.events,
            tasks: parts.tasks,
            token: parts.token,
            children: CancellationToken::new(),
            failure: parts.failure,
            // The first ping goes out at once: the loop is running.
            next_ping: now,
            ping: parts.ping,
            check_every,
            next_check: now + check_every,
            rng: parts.seed.map_or_else(Rng::from_time, Rng::new),
            started: false,
        }
    }

    pub async fn run(mut self, started: oneshot::Sender<()>, stopped: oneshot::Sender<StopReport>) {
        // If this task ends in any way, every actor is cancelled with it.
        let _children = self.children.clone().drop_guard();
        self.start_in_order().await;
        self.started = true;
        let _ = started.send(());
        while !self.token.is_cancelled() {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = self.token.cancelled() => break,
                Some(report) = self.reports.recv() => self.handle_report(report),
                Some(command) = self.commands.recv() => self.handle_command(command).await,
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.handle_timers(Instant::now());
        }
        let report = self.stop_all().await;
        let _ = stopped.send(report);
    }

    /// Starts each actor and waits for it to report ready (or exit, or `start_timeout_seconds`) before
    /// the next. Exits meanwhile go through the normal policy.
    async fn start_in_order(&mut self) {
        let timeout = Duration::from_secs(self.config.start_timeout_seconds);
        for index in 0..self.slots.len() {
            if self.token.is_cancelled() {
                return;
            }
            self.spawn(index);
            let deadline = Instant::now() + timeout;
            loop {
                if self.slots[index].phase != Phase::Starting {
                    break;
                }
                let wake = self.next_wake().min(deadline);
                tokio::select! {
                    biased;
                    _ = self.token.cancelled() => return,
                    Some(report) = self.reports.recv() => self.handle_report(report),
                    // Timers (pings, backoff, the watchdog) keep running during a slow start.
                    _ = tokio::time::sleep_until(wake), if wake < deadline => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!(actor = self.slots[index].shared.name, timeout_s = timeout.as_secs(), "actor did not report ready in time; starting the next one");
                        break;
                    }
                }
                self.handle_timers(Instant::now());
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.next_check;
        if self.ping.is_some() {
            wake = wake.min(self.next_ping);
        }
        for slot in &self.slots {
            match slot.phase {
                Phase::Stopping { deadline, .. } => wake = wake.min(deadline),
                Phase::Restarting { at } => wake = wake.min(at),
                Phase::Starting | Phase::Running | Phase::Stopped | Phase::Failed => {}
            }
        }
        wake
    }

    fn spawn(&mut self, index: usize) {
        self.launch(index, true);
    }

    /// Starts a fresh incarnation. `counts_as_restart`: false for an operator's `StartActor` of a
    /// stopped or failed actor (starting is not restarting; the restart counter measures trouble).
    fn launch(&mut self, index: usize, counts_as_restart: bool) {
        let reports = self.reports_tx.clone();
        let token = self.children.child_token();
        let slot = &mut self.slots[index];
        slot.incarnation += 1;
        let incarnation = slot.incarnation;
        let name = slot.shared.name;
        if incarnation > 1 && counts_as_restart {
            slot.shared.restarts.fetch_add(1, Ordering::Relaxed);
            ActorRestarted { actor: name }.emit();
        }
        let future = (slot.spawn)(
            slot.shared.clone(),
            self.handle.clone(),
            token.clone(),
            incarnation,
        );
        let handle = self.tasks.spawn(name, async move {
            let outcome = match AssertUnwindSafe(future).catch_unwind().await {
                Ok(Ok(())) => Outcome::Normal,
                Ok(Err(err)) => Outcome::Error(err.0),
                Err(panic) => Outcome::Panic(panic_message(panic.as_ref())),
            };
            let _ = reports.send(Report::Exit {
                index,
                incarnation,
                outcome,
            });
        });
        slot.live = Some(Live { token, handle });
        let now = Instant::now();
        slot.started_at = Some(now);
        slot.shared.bump_progress();
        slot.seen_progress = slot.shared.progress_count();
        slot.misses = 0;
        slot.shared.dynamic().started_at = Some(now);
        self.set_phase(index, Phase::Starting);
    }

    fn set_phase(&mut self, index: usize, phase: Phase) {
        let slot = &mut self.slots[index];
        let previous = slot.phase.state();
        slot.phase = phase;
        let state = phase.state();
        slot.shared.dynamic().state = state;
        if previous != state {
            ActorStateChanged {
                actor: slot.shared.name,
                kind: slot.shared.kind,
                from: previous,
                to: state,
            }
            .emit();
            if slot.shared.config.critical {
                let down = self.handle.critical_down();
                CriticalDown {
                    down: &down,
                    expected: !self.started || self.token.is_cancelled(),
                }
                .emit();
            }
            let info = slot.shared.info();
            let _ = self.events.send(ActorEvent {
                actor: info,
                previous,
            });
        }
        let done = match state {
            ActorState::Running => Some(Want::Running),
            ActorState::Stopped => Some(Want::Stopped),
            // A failed actor will not get anywhere else on its own: answer everyone.
            ActorState::Failed => None,
            ActorState::Starting | ActorState::Stopping | ActorState::Restarting => return,
        };
        let waiters = std::mem::take(&mut slot.waiters);
        for (want, reply) in waiters {
            if done.is_none_or(|d| d == want) {
                let _ = reply.send(Ok(slot.shared.info()));
            } else {
                slot.waiters.push((want, reply));
            }
        }
    }

    fn handle_report(&mut self, report: Report) {
        match report {
            Report::Ready { index, incarnation } => {
                let Some(slot) = self.slots.get(index) else {
                    return;
                };
                if slot.incarnation == incarnation && slot.phase == Phase::Starting {
                    self.set_phase(index, Phase::Running);
                }
            }
            Report::Exit {
                index,
                incarnation,
                outcome,
            } => self.handle_exit(index, incarnation, outcome),
        }
    }

    fn handle_exit(&mut self, index: usize, incarnation: u64, outcome: Outcome) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if slot.incarnation != incarnation || slot.live.is_none() {
            return; // an incarnation that was already aborted and replaced
        }
        slot.live = None;
        let name = slot.shared.name;
        match &outcome {
            Outcome::Normal => {}
            Outcome::Error(message) => {
                slot.shared.errors.fetch_add(1, Ordering::Relaxed);
                slot.shared.dynamic().last_error = Some(message.clone());
            }
            Outcome::Panic(message) => {
                slot.shared.panics.fetch_add(1, Ordering::Relaxed);
                slot.shared.dynamic().last_error = Some(format!("panicked: {message}"));
            }
        }
        let expected = matches!(slot.phase, Phase::Stopping { .. });
        ActorExited {
            actor: name,
            outcome: &outcome,
            expected,
        }
        .emit();
        // A long healthy run forgives earlier failures: the next backoff starts from the beginning.
        if slot
            .started_at
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(self.config.restart_window_seconds))
        {
            slot.consecutive = 0;
        }
        match slot.phase {
            Phase::Stopping { then, .. } => self.finish_stop(index, then),
            Phase::Starting | Phase::Running => {
                let abnormal = outcome != Outcome::Normal;
                self.after_exit(index, abnormal);
            }
            Phase::Restarting { .. } | Phase::Stopped | Phase::Failed => {}
        }
    }

    /// The restart type decides whether an exit is followed by a restart.
    fn after_exit(&mut self, index: usize, abnormal: bool) {
        let restart = match self.slots[index].shared.config.restart {
            RestartType::Permanent => true,
            RestartType::Transient => abnormal,
            RestartType::Temporary => false,
        };
        if restart {
            self.policy_restart(index);
        } else {
            self.set_phase(index, Phase::Stopped);
        }
    }

    /// A restart after a failure: checked against intensity, delayed by backoff.
    fn policy_restart(&mut self, index: usize) {
        let now = Instant::now();
        let window = Duration::from_secs(self.config.restart_window_seconds);
        let max = self.config.max_restarts;
        let slot = &mut self.slots[index];
        if slot.intensity.record(now, max, window) {
            self.escalate(index);
            return;
        }
        slot.consecutive = slot.consecutive.saturating_add(1);
        let delay = backoff(&self.config, slot.consecutive, &mut self.rng);
        tracing::info!(
            actor = slot.shared.name,
            delay_ms = delay.as_millis() as u64,
            consecutive = slot.consecutive,
            "restarting after backoff"
        );
        let at = now + delay;
        self.set_phase(index, Phase::Restarting { at });
        self.restart_dependents(index, at);
    }

    /// rest_for_one: the actors declared after `index` depend on it; they restart after it. Workers
    /// stand alone: they neither drag actors along nor are dragged.
    fn restart_dependents(&mut self, index: usize, at: Instant) {
        if self.config.strategy != Strategy::RestForOne
            || self.slots[index].shared.kind != Kind::Actor
        {
            return;
        }
        for dependent in index + 1..self.slots.len() {
            if self.slots[dependent].shared.kind != Kind::Actor {
                continue;
            }
            match self.slots[dependent].phase {
                Phase::Starting | Phase::Running => {
                    self.begin_stop(dependent, Then::RestartAt(at));
                }
                Phase::Stopping { deadline, then } => {
                    let then = match then {
                        Then::Stop => Then::Stop,
                        Then::RestartAt(t) => Then::RestartAt(t.max(at)),
                        Then::Failure => Then::RestartAt(at),
                    };
                    self.slots[dependent].phase = Phase::Stopping { deadline, then };
                }
                Phase::Restarting { at: t } => {
                    self.slots[dependent].phase = Phase::Restarting { at: t.max(at) };
                }
                Phase::Stopped | Phase::Failed => {}
            }
        }
    }

    fn escalate(&mut self, index: usize) {
        let slot = &self.slots[index];
        let name = slot.shared.name;
        let critical = slot.shared.config.critical;
        let exit = critical && self.config.exit_on_critical_failure;
        ActorEscalated {
            actor: name,
            max_restarts: self.config.max_restarts,
            window_seconds: self.config.restart_window_seconds,
            critical,
            exit,
        }
        .emit();
        // Whoever waits in its mailbox would wait for nothing.
        slot.shared.mailbox.clear();
        self.set_phase(index, Phase::Failed);
        if exit {
            self.failure.cancel();
        }
    }

    /// Cancels the running incarnation; `then` applies once it returned or was aborted.
    fn begin_stop(&mut self, index: usize, then: Then) {
        let slot = &mut self.slots[index];
        match &slot.live {
            Some(live) => {
                live.token.cancel();
                let deadline =
                    Instant::now() + Duration::from_millis(slot.shared.config.stop_deadline_ms);
                self.set_phase(index, Phase::Stopping { deadline, then });
            }
            None => self.finish_stop(index, then),
        }
    }

    fn finish_stop(&mut self, index: usize, then: Then) {
        match then {
            Then::Stop => {
                self.slots[index].shared.mailbox.clear();
                self.set_phase(index, Phase::Stopped);
            }
            Then::RestartAt(at) if at <= Instant::now() => self.spawn(index),
            Then::RestartAt(at) => self.set_phase(index, Phase::Restarting { at }),
            Then::Failure => self.after_exit(index, true),
        }
    }

    /// Aborts a stopping incarnation whose deadline passed. Returns its name.
    fn abort(&mut self, index: usize) -> &'static str {
        let slot = &mut self.slots[index];
        let name = slot.shared.name;
        if let Some(live) = slot.live.take() {
            live.handle.abort();
        }
        let frozen = matches!(
            slot.phase,
            Phase::Stopping {
                then: Then::Failure,
                ..
            }
        );
        if !frozen {
            // A frozen actor was counted as killed when it was found frozen.
            slot.shared.kills.fetch_add(1, Ordering::Relaxed);
        }
        let deadline_ms = slot.shared.config.stop_deadline_ms;
        slot.shared.dynamic().last_error = Some(format!(
            "ignored cancellation for {deadline_ms} ms; aborted"
        ));
        ActorKilled {
            actor: name,
            reason: "stop_deadline",
            detail: deadline_ms,
        }
        .emit();
        name
    }

    fn handle_timers(&mut self, now: Instant) {
        for index in 0..self.slots.len() {
            match self.slots[index].phase {
                Phase::Stopping { deadline, then } if deadline <= now => {
                    self.abort(index);
                    self.finish_stop(index, then);
                }
                Phase::Restarting { at } if at <= now => self.spawn(index),
                _ => {}
            }
        }
        if now >= self.next_check {
            self.check_progress();
            self.next_check = now + self.check_every;
        }
        if let Some((every, ping)) = &self.ping {
            if now >= self.next_ping {
                let withheld = self
                    .slots
                    .iter()
                    .any(|s| s.shared.config.critical && s.phase == Phase::Failed);
                if !withheld {
                    ping();
                }
                WatchdogPinged { sent: !withheld }.emit();
                self.next_ping = now + *every;
            }
        }
    }

    /// The progress watchdog: a busy actor whose progress counter did not move for `hung_checks`
    /// consecutive checks is frozen.
    fn check_progress(&mut self) {
        let hung_checks = self.config.hung_checks.max(1);
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            ActorGauges {
                actor: slot.shared.name,
                mailbox: (slot.shared.kind == Kind::Actor).then(|| {
                    (
                        slot.shared.mailbox.depth() as u64,
                        slot.shared.mailbox.drops(),
                    )
                }),
                since_progress: slot.shared.since_progress(),
            }
            .emit();
            if !matches!(slot.phase, Phase::Starting | Phase::Running) {
                continue;
            }
            let progress = slot.shared.progress_count();
            if slot.shared.expects_progress() && progress == slot.seen_progress {
                slot.misses += 1;
            } else {
                slot.misses = 0;
            }
            slot.seen_progress = progress;
            if slot.misses >= hung_checks {
                slot.misses = 0;
                let since = slot.shared.since_progress();
                slot.shared.kills.fetch_add(1, Ordering::Relaxed);
                slot.shared.dynamic().last_error = Some(format!(
                    "frozen: busy without progress for {} s",
                    since.as_secs()
                ));
                ActorKilled {
                    actor: slot.shared.name,
                    reason: "frozen",
                    detail: since.as_millis() as u64,
                }
                .emit();
                self.begin_stop(index, Then::Failure);
            }
        }
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::Actor { name, op, reply } => {
                let Some(index) = self.slots.iter().position(|s| s.shared.name == name) else {
                    let _ = reply.send(Err(SupervisorError::NotFound(name)));
                    return;
                };
                self.operate(index, op, reply);
            }
            #[cfg(test)]
            Command::Wedge(release) => {
                let _ = release.await;
            }
        }
    }

    fn operate(
        &mut self,
        index: usize,
        op: Op,
        reply: oneshot::Sender<Result<ActorInfo, SupervisorError>>,
    ) {
        let now = Instant::now();
        tracing::info!(
            actor = self.slots[index].shared.name,
            ?op,
            "operator command"
        );
        let want = match op {
            Op::Stop => Want::Stopped,
            Op::Restart | Op::Start => Want::Running,
        };
        let phase = self.slots[index].phase;
        match (op, phase) {
            (Op::Stop, Phase::Stopped | Phase::Failed) | (Op::Start, Phase::Running) => {
                let _ = reply.send(Ok(self.slots[index].shared.info()));
                return;
            }
            (Op::Stop, Phase::Restarting { .. }) => {
                let _ = reply.send(Ok(self.slots[index].shared.info()));
                self.set_phase(index, Phase::Stopped);
                return;
            }
            _ => {}
        }
        self.slots[index].waiters.push((want, reply));
        match (op, phase) {
            (Op::Stop, Phase::Starting | Phase::Running) => self.begin_stop(index, Then::Stop),
            (Op::Stop, Phase::Stopping { deadline, .. }) => {
                self.slots[index].phase = Phase::Stopping {
                    deadline,
                    then: Then::Stop,
                };
            }
            (Op::Restart, Phase::Starting | Phase::Running) => {
                self.begin_stop(index, Then::RestartAt(now));
                self.restart_dependents(index, now);
            }
            (Op::Restart | Op::Start, Phase::Stopping { deadline, .. }) => {
                self.slots[index].phase = Phase::Stopping {
                    deadline,
                    then: Then::RestartAt(now),
                };
            }
            (Op::Restart | Op::Start, Phase::Restarting { .. }) => self.spawn(index),
            (Op::Restart | Op::Start, Phase::Stopped | Phase::Failed) => {
                let slot = &mut self.slots[index];
                slot.intensity.reset();
                slot.consecutive = 0;
                self.launch(index, matches!(op, Op::Restart));
            }
            // Already starting: the waiter is answered once it reports ready.
            (Op::Start, Phase::Starting) => {}
            // Answered above.
            (Op::Stop, Phase::Stopped | Phase::Failed | Phase::Restarting { .. })
            | (Op::Start, Phase::Running) => {}
        }
    }

    /// Stops every actor in reverse declared order, each within its stop deadline.
    async fn stop_all(&mut self) -> StopReport {
        let mut report = StopReport::default();
        for index in (0..self.slots.len()).rev() {
            let name = self.slots[index].shared.name;
            if self.slots[index].live.is_some() {
                let deadline = match self.slots[index].phase {
                    Phase::Stopping { deadline, .. } => deadline,
                    _ => {
                        Instant::now()
                            + Duration::from_millis(
                                self.slots[index].shared.config.stop_deadline_ms,
                            )
                    }
                };
                if let Some(live) = &self.slots[index].live {
                    live.token.cancel();
                }
                self.slots[index].phase = Phase::Stopping {
                    deadline,
                    then: Then::Stop,
                };
                self.slots[index].shared.dynamic().state = ActorState::Stopping;
                tracing::info!(actor = name, "stopping actor");
                while self.slots[index].live.is_some() {
                    tokio::select! {
                        Some(report) = self.reports.recv() => {
                            if let Report::Exit { index: i, incarnation, outcome } = report {
                                // Exits only: nothing restarts during the final stop.
                                let slot = &mut self.slots[i];
                                if slot.incarnation == incarnation {
                                    slot.live = None;
                                    ActorExited { actor: slot.shared.name, outcome: &outcome, expected: true }.emit();
                                }
                            }
                        }
                        _ = tokio::time::sleep_until(deadline) => {
                            tracing::warn!(actor = name, "actor ignored cancellation past its stop deadline; aborting it");
                            self.abort(index);
                            report.aborted.push(name);
                        }
                    }
                }
            }
            self.slots[index].shared.mailbox.close();
            self.set_phase(index, Phase::Stopped);
            for (_, reply) in self.slots[index].waiters.drain(..) {
                let _ = reply.send(Err(SupervisorError::Stopping));
            }
        }
        self.children.cancel();
        report
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
