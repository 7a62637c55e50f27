//! The actor contract: a name, a `run(ctx)` that returns when cancelled (`Ok`) or failed (`Err` or a
//! panic), and a status line it may set through its context.
//!
//! ```ignore
//! struct Counter;
//! impl Actor for Counter {
//!     type Message = u64;
//!     fn name(&self) -> &'static str { "counter" }
//!     async fn run(self: Arc<Self>, mut ctx: Context<u64>) -> ActorResult {
//!         let mut total = 0;
//!         while let Some(n) = ctx.recv().await {   // idle while waiting; None once cancelled
//!             total += n;                           // busy: the watchdog expects progress…
//!             ctx.progress();                       // …and gets it
//!             ctx.set_status(format!("total {total}"));
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! The same `Arc<Self>` runs every incarnation; state that must survive a restart belongs in the store
//! (or in whatever the actor shares), not in the future.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Supervisor;
use super::mailbox::{Inbox, MailboxStats};
use super::runtime::Report;
use crate::store::{Store, StoreError};
use crate::supervisor::config::{ActorConfig, RestartType};

/// Why an actor's run failed. The supervisor counts it, keeps the message as `last_error`, and
/// restarts through the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ActorError(pub String);

impl ActorError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        ActorError(message.to_string())
    }
}

impl From<StoreError> for ActorError {
    fn from(err: StoreError) -> Self {
        ActorError(err.to_string())
    }
}

pub type ActorResult = Result<(), ActorError>;

/// A supervised actor.
pub trait Actor: Send + Sync + 'static {
    /// What its mailbox carries; `()` for an actor without one.
    type Message: Send + 'static;

    /// Unique among the supervisor's actors; used in logs, metrics labels and the API.
    fn name(&self) -> &'static str;

    /// Runs one incarnation. Returns `Ok` when `ctx` is cancelled, `Err` when it cannot go on.
    fn run(
        self: Arc<Self>,
        ctx: Context<Self::Message>,
    ) -> impl Future<Output = ActorResult> + Send + 'static;
}

/// What a supervised unit is: an actor (a subsystem with a mailbox the API talks to) or a worker (a
/// background loop without messages: the audit writer, the policy watch, …). Both run under the same
/// machinery; the kind only changes how they are shown and that rest_for_one ties actors alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Actor,
    Worker,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Actor => "actor",
            Kind::Worker => "worker",
        }
    }
}

/// Lifecycle state of an actor, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorState {
    /// Spawned, not yet reported ready.
    Starting,
    Running,
    /// Cancelled; waiting for it to return (aborted at its stop deadline).
    Stopping,
    /// Waiting out its backoff before the next incarnation.
    Restarting,
    /// Not running and not going to be restarted (operator stop, normal exit, temporary actor).
    Stopped,
    /// Escalated: restarted too often. Needs an operator `start`.
    Failed,
}

impl ActorState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorState::Starting => "starting",
            ActorState::Running => "running",
            ActorState::Stopping => "stopping",
            ActorState::Restarting => "restarting",
            ActorState::Stopped => "stopped",
            ActorState::Failed => "failed",
        }
    }

    /// Whether the actor is serving (its health services report SERVING).
    pub fn is_serving(self) -> bool {
        matches!(self, ActorState::Starting | ActorState::Running)
    }
}

/// A copy of one actor's state and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorInfo {
    pub name: &'static str,
    pub kind: Kind,
    pub state: ActorState,
    pub restart: RestartType,
    pub critical: bool,
    pub restarts: u64,
    pub panics: u64,
    pub errors: u64,
    pub kills: u64,
    pub mailbox_depth: u64,
    pub mailbox_capacity: u64,
    pub mailbox_drops: u64,
    pub last_error: Option<String>,
    /// What the actor last said about itself ([`Context::set_status`]).
    pub status: String,
    pub since_progress: Duration,
    /// Time since the current incarnation started; `None` when not running.
    pub uptime: Option<Duration>,
    pub health_services: Vec<String>,
}

const MODE_BUSY: u8 = 0;
const MODE_IDLE: u8 = 1;

/// The loop-owned facts about an actor that readers copy.
#[derive(Debug)]
pub(crate) struct Dynamic {
    pub state: ActorState,
    pub last_error: Option<String>,
    pub status: String,
    pub started_at: Option<tokio::time::Instant>,
}

/// Everything about one actor that outlives its incarnations: counters, progress, state.
pub(crate) struct ActorShared {
    pub name: &'static str,
    pub kind: Kind,
    pub config: ActorConfig,
    pub health_services: Vec<String>,
    pub mailbox: Arc<dyn MailboxStats>,
    epoch: tokio::time::Instant,
    progress: AtomicU64,
    last_progress_ns: AtomicU64,
    mode: AtomicU8,
    blocking: AtomicU32,
    pub restarts: AtomicU64,
    pub panics: AtomicU64,
    pub errors: AtomicU64,
    pub kills: AtomicU64,
    dynamic: Mutex<Dynamic>,
    /// Position in declared order.
    pub index: usize,
    /// To the supervisor loop: ready and exit reports.
    pub reports: mpsc::UnboundedSender<Report>,
}

impl ActorShared {
    pub fn new(
        name: &'static str,
        kind: Kind,
        config: ActorConfig,
        health_services: Vec<String>,
        mailbox: Arc<dyn MailboxStats>,
        index: usize,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Self {
        ActorShared {
            name,
            kind,
            config,
            health_services,
            mailbox,
            epoch: tokio::time::Instant::now(),
            progress: AtomicU64::new(0),
            last_progress_ns: AtomicU64::new(0),
            mode: AtomicU8::new(MODE_BUSY),
            blocking: AtomicU32::new(0),
            restarts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            kills: AtomicU64::new(0),
            dynamic: Mutex::new(Dynamic {
                state: ActorState::Stopped,
                last_error: None,
                status: String::new(),
                started_at: None,
            }),
            index,
            reports,
        }
    }

    pub fn dynamic(&self) -> MutexGuard<'_, Dynamic> {
        // Only plain field writes happen under this lock; a poisoned guard still holds valid data.
        self.dynamic.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> ActorState {
        self.dynamic().state
    }

    pub fn progress_count(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
    }

    pub fn bump_progress(&self) {
        self.progress.fetch_add(1, Ordering::AcqRel);
        let ns = self.epoch.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.last_progress_ns.store(ns, Ordering::Release);
    }

    /// Busy, not in a known blocking section: the watchdog expects progress.
    pub fn expects_progress(&self) -> bool {
        self.mode.load(Ordering::Acquire) == MODE_BUSY && self.blocking.load(Ordering::Acquire) == 0
    }

    pub fn set_idle(&self, idle: bool) {
        self.mode
            .store(if idle { MODE_IDLE } else { MODE_BUSY }, Ordering::Release);
    }

    pub fn since_progress(&self) -> Duration {
        let last = Duration::from_nanos(self.last_progress_ns.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub fn info(&self) -> ActorInfo {
        let dynamic = self.dynamic();
        // A worker's mailbox is a formality (nothing sends to it): show none.
        let has_mailbox = self.kind == Kind::Actor;
        ActorInfo {
            name: self.name,
            kind: self.kind,
            state: dynamic.state,
            restart: self.config.restart,
            critical: self.config.critical,
            restarts: self.restarts.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            kills: self.kills.load(Ordering::Relaxed),
            mailbox_depth: if has_mailbox {
                self.mailbox.depth() as u64
            } else {
                0
            },
            mailbox_capacity: if has_mailbox {
                self.mailbox.capacity() as u64
            } else {
                0
            },
            mailbox_drops: if has_mailbox { self.mailbox.drops() } else { 0 },
            last_error: dynamic.last_error.clone(),
            status: dynamic.status.clone(),
            since_progress: self.since_progress(),
            uptime: dynamic
                .started_at
                .filter(|_| dynamic.state.is_serving())
                .map(|t| t.elapsed()),
            health_services: self.health_services.clone(),
        }
    }
}

/// What one incarnation of an actor gets from the supervisor.
pub struct Context<M> {
    shared: Arc<ActorShared>,
    supervisor: Supervisor,
    token: CancellationToken,
    inbox: Inbox<M>,
    store: Store,
    incarnation: u64,
    ready_sent: std::sync::atomic::AtomicBool,
}

impl<M: Send> Context<M> {
    pub(crate) fn new(
        shared: Arc<ActorShared>,
        supervisor: Supervisor,
        token: CancellationToken,
        inbox: Inbox<M>,
        store: Store,
        incarnation: u64,
    ) -> Self {
        shared.set_idle(false);
        shared.blocking.store(0, Ordering::Release);
        Context {
            shared,
            supervisor,
            token,
            inbox,
            store,
            incarnation,
            ready_sent: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    /// This incarnation's token: a child of the supervisor's, cancelled on stop, restart or freeze.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Whether this cancellation is the supervisor's final stop (the daemon is stopping), as opposed
    /// to an operator stop, a restart or a freeze after which another incarnation may run. Work that
    /// must close something for good (the audit queue) does it only then.
    pub fn is_final_stop(&self) -> bool {
        self.supervisor.is_stopping()
    }

    /// The supervisor this incarnation runs under (its state, to report or react to).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Resolves when this incarnation is asked to stop.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Reports startup done; start in declared order waits for it before starting the next actor.
    /// The first [`Context::recv`] reports it too.
    pub fn ready(&self) {
        if !self.ready_sent.swap(true, Ordering::AcqRel) {
            let _ = self.shared.reports.send(Report::Ready {
                index: self.shared.index,
                incarnation: self.incarnation,
            });
        }
    }

    /// The next message, or `None` once this incarnation is cancelled (queued messages stay for the
    /// next one). Idle while waiting, busy again when a message arrives.
    pub async fn recv(&mut self) -> Option<M> {
        self.ready();
        self.shared.set_idle(true);
        let message = tokio::select! {
            biased;
            _ = self.token.cancelled() => None,
            message = self.inbox.recv() => message,
        };
        self.shared.set_idle(false);
        self.shared.bump_progress();
        message
    }

    /// The next message if one is already queued, without waiting (an actor batching the work that
    /// piled up behind the message it is handling); `None` when none is, or once cancelled.
    pub fn try_recv(&mut self) -> Option<M> {
        if self.token.is_cancelled() {
            return None;
        }
        self.inbox.try_recv()
    }

    /// Heartbeat: "I am busy and moving". A busy actor without progress for `hung_after` is frozen.
    pub fn progress(&self) {
        self.shared.bump_progress();
    }

    /// Awaits `future` as idle (waiting for work or a timer is not being stuck).
    pub async fn idle<F: Future>(&self, future: F) -> F::Output {
        self.shared.set_idle(true);
        let output = future.await;
        self.shared.set_idle(false);
        self.shared.bump_progress();
        output
    }

    /// Marks a known blocking section (a long load, a slow device call): the watchdog does not count
    /// it as frozen until the guard drops.
    pub fn blocking(&self) -> BlockingSection {
        self.shared.blocking.fetch_add(1, Ordering::AcqRel);
        BlockingSection {
            shared: self.shared.clone(),
        }
    }

    /// A one-line status shown by the API (`brainstemctl actors get`).
    pub fn set_status(&self, status: impl Into<String>) {
        self.shared.dynamic().status = status.into();
    }

    /// Counts an error the actor recovered from (it keeps running); kept as `last_error`.
    pub fn record_error(&self, error: &dyn std::fmt::Display) {
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
        let message = error.to_string();
        super::events::ActorErrorRecorded {
            actor: self.shared.name,
            error: &message,
        }
        .emit();
        self.shared.dynamic().last_error = Some(message);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Messages waiting in the mailbox.
    pub fn backlog(&self) -> usize {
        self.inbox.len()
    }
}

/// See [`Context::blocking`].
pub struct BlockingSection {
    shared: Arc<ActorShared>,
}

impl Drop for BlockingSection {
    fn drop(&mut self) {
        // Saturating: a guard that outlives its incarnation must not wrap the next one's count.
        let _ = self
            .shared
            .blocking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        self.shared.bump_progress();
    }
}
