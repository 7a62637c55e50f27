//! The supervisor: keeps the daemon's subsystem actors and background workers alive.
//!
//! - **Contract** ([`Actor`]): a name, `run(ctx)` returning when cancelled or failed, a status line.
//!   [`Context`] gives the incarnation a child cancellation token, a progress handle, its bounded
//!   mailbox, the store, and counters.
//! - **Workers** ([`Worker`]): every background loop of the daemon (audit writer, policy watch, token
//!   maintenance, metrics listener, store flusher, health sync) is an actor without messages, with
//!   its restart type and criticality chosen in code. Same panic capture, restarts, counters,
//!   watchdog and API; [`ActorInfo::kind`] tells them apart.
//! - **Readiness**: a critical actor or worker that is stopped or failed makes the daemon not ready
//!   ([`Supervisor::critical_down`]): `/readyz` 503, overall health NOT_SERVING.
//! - **Mailboxes** ([`mailbox`]): bounded, with the per-actor overflow policy from configuration.
//!   [`ActorRef`] is how the rest of the daemon talks to an actor.
//! - **Policy** ([`policy`]): restart types permanent / transient / temporary, strategies one_for_one /
//!   rest_for_one, exponential backoff with jitter, restart intensity (too many restarts → the actor is
//!   `failed`; a failed critical actor withholds the systemd watchdog ping and may exit the daemon).
//! - **Watchdog**: a busy actor that makes no progress for `hung_checks` consecutive checks (one every
//!   `hung_after / hung_checks`) is frozen: cancelled, aborted at its stop deadline, restarted by policy.
//! - **Lifecycle**: actors start in declared order (each waits for the previous to report ready) and
//!   stop in reverse, each within its stop deadline; one that ignores cancellation is aborted and named.
//!
//! All of it is one loop task ([`runtime`]) that owns every actor's state; the API reads copies
//! ([`ActorInfo`]) and sends commands. The systemd `WATCHDOG=1` ping is sent from that loop, so a wedged
//! loop (or runtime) stops the pings and systemd restarts the process.

pub mod actor;
pub mod api;
pub mod builtin;
pub mod config;
pub mod events;
pub mod mailbox;
pub mod policy;
pub mod process;
mod runtime;
pub mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use actor::{
    Actor, ActorError, ActorInfo, ActorResult, ActorState, BlockingSection, Context, Kind,
};
pub use mailbox::{Delivery, Mailbox, MailboxError};
pub use runtime::Outcome;
pub use worker::{Worker, WorkerContext, WorkerPolicy};

use crate::error::ServiceError;
use crate::runtime::tasks::Tasks;
use crate::store::Store;
use crate::supervisor::config::{ActorConfig, SupervisorConfig};
use actor::ActorShared;

/// Exit code of the daemon when a critical actor failed (sysexits `EX_SOFTWARE`); systemd restarts it.
pub const EXIT_CRITICAL_FAILURE: i32 = 70;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    #[error("no actor named {0:?}")]
    NotFound(String),
    #[error("an actor named {0:?} is already registered")]
    Duplicate(&'static str),
    #[error("the {actor} actor's mailbox is full")]
    MailboxFull {
        actor: &'static str,
        retry_after: Duration,
    },
    #[error("the {actor} actor's mailbox is full; the request was dropped")]
    Dropped {
        actor: &'static str,
        retry_after: Duration,
    },
    #[error("the {actor} actor is {}", .state.as_str())]
    NotRunning {
        actor: &'static str,
        state: ActorState,
    },
    #[error("the {actor} actor did not answer (it stopped or restarted before replying)")]
    NoReply { actor: &'static str },
    #[error("the supervisor is stopping")]
    Stopping,
}

impl From<SupervisorError> for ServiceError {
    fn from(err: SupervisorError) -> Self {
        match err {
            SupervisorError::NotFound(_) => ServiceError::NotFound(err.to_string()),
            SupervisorError::MailboxFull { actor, retry_after }
            | SupervisorError::Dropped { actor, retry_after } => ServiceError::ResourceExhausted {
                what: format!("the {actor} actor's mailbox"),
                retry_after,
            },
            SupervisorError::Duplicate(_) => ServiceError::FailedPrecondition(err.to_string()),
            SupervisorError::NotRunning { .. }
            | SupervisorError::NoReply { .. }
            | SupervisorError::Stopping => ServiceError::Unavailable(err.to_string()),
        }
    }
}

/// Sends messages to one actor through its mailbox.
pub struct ActorRef<M> {
    mailbox: Mailbox<M>,
    shared: Arc<ActorShared>,
}

impl<M> Clone for ActorRef<M> {
    fn clone(&self) -> Self {
        ActorRef {
            mailbox: self.mailbox.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<M: Send + 'static> ActorRef<M> {
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    pub fn state(&self) -> ActorState {
        self.shared.state()
    }

    /// Queues a message under the actor's overflow policy. A stopped or failed actor refuses at once
    /// (nobody would read the message); a restarting one queues it for its next incarnation.
    pub async fn send(&self, message: M) -> Result<(), SupervisorError> {
        let actor = self.shared.name;
        match self.shared.state() {
            state @ (ActorState::Stopped | ActorState::Failed) => {
                return Err(SupervisorError::NotRunning { actor, state });
            }
            ActorState::Starting
            | ActorState::Running
            | ActorState::Stopping
            | ActorState::Restarting => {}
        }
        match self.mailbox.send(message).await {
            Ok(Delivery::Queued) => Ok(()),
            Ok(Delivery::Dropped) => Err(SupervisorError::Dropped {
                actor,
                retry_after: mailbox::RETRY_AFTER,
            }),
            Err(MailboxError::Full { retry_after }) => {
                Err(SupervisorError::MailboxFull { actor, retry_after })
            }
            Err(MailboxError::Closed) => Err(SupervisorError::Stopping),
        }
    }

    /// Request and reply: `make` builds the message around the reply channel.
    pub async fn ask<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> M,
    ) -> Result<R, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| SupervisorError::NoReply {
            actor: self.shared.name,
        })
    }
}

/// Sends `WATCHDOG=1` (or, in tests, counts).
pub type WatchdogPing = Arc<dyn Fn() + Send + Sync>;

/// A state change, as `WatchActors` streams it.
#[derive(Debug, Clone)]
pub struct ActorEvent {
    pub actor: ActorInfo,
    pub previous: ActorState,
}

/// What the final stop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Actors that ignored cancellation past their stop deadline and were aborted, in stop order.
    pub aborted: Vec<&'static str>,
}

type SpawnFn = Arc<
    dyn Fn(Arc<ActorShared>, Supervisor, CancellationToken, u64) -> BoxFuture<'static, ActorResult>
        + Send
        + Sync,
>;

struct Spec {
    shared: Arc<ActorShared>,
    spawn: SpawnFn,
}

/// Declares the actors (in start order) before the supervisor starts.
pub struct SupervisorBuilder {
    config: SupervisorConfig,
    store: Store,
    specs: Vec<Spec>,
    reports: (
        mpsc::UnboundedSender<runtime::Report>,
        mpsc::UnboundedReceiver<runtime::Report>,
    ),
    seed: Option<u64>,
}

impl SupervisorBuilder {
    pub fn new(config: SupervisorConfig, store: Store) -> Self {
        SupervisorBuilder {
            config,
            store,
            specs: Vec::new(),
            reports: mpsc::unbounded_channel(),
            seed: None,
        }
    }

    /// Fixes the jitter's random seed (tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds an actor after the ones already added. `health_services` are the `grpc.health.v1` names
    /// that report SERVING exactly while it runs.
    pub fn add<A: Actor>(
        &mut self,
        actor: A,
        config: ActorConfig,
        health_services: Vec<String>,
    ) -> Result<ActorRef<A::Message>, SupervisorError> {
        self.add_kind(Kind::Actor, actor, config, health_services)
    }

    /// Adds a background worker after the ones already added; its restart type, criticality and stop
    /// deadline come from [`Worker::policy`].
    ///
    /// # Panics
    /// When the name is taken: worker names are fixed in code, so that is a build defect.
    pub fn add_worker<W: Worker>(&mut self, worker: W) {
        let config = worker.policy().actor_config();
        let name = worker.name();
        if let Err(err) = self.add_kind(
            Kind::Worker,
            worker::AsActor(Arc::new(worker)),
            config,
            Vec::new(),
        ) {
            panic!("worker {name:?}: {err}");
        }
    }

    fn add_kind<A: Actor>(
        &mut self,
        kind: Kind,
        actor: A,
        config: ActorConfig,
        health_services: Vec<String>,
    ) -> Result<ActorRef<A::Message>, SupervisorError> {
        let name = actor.name();
        if self.specs.iter().any(|s| s.shared.name == name) {
            return Err(SupervisorError::Duplicate(name));
        }
        let mailbox: Mailbox<A::Message> = Mailbox::new(
            config.mailbox_capacity as usize,
            config.mailbox_overflow,
            Duration::from_millis(config.mailbox_wait_ms),
        );
        let shared = Arc::new(ActorShared::new(
            name,
            kind,
            config,
            health_services,
            mailbox.stats(),
            self.specs.len(),
            self.reports.0.clone(),
        ));
        let actor = Arc::new(actor);
        let store = self.store.clone();
        let inbox_source = mailbox.clone();
        let spawn: SpawnFn = Arc::new(move |shared, supervisor, token, incarnation| {
            let ctx = Context::new(
                shared,
                supervisor,
                token,
                inbox_source.inbox(),
                store.clone(),
                incarnation,
            );
            Box::pin(actor.clone().run(ctx))
        });
        self.specs.push(Spec {
            shared: shared.clone(),
            spawn,
        });
        Ok(ActorRef { mailbox, shared })
    }

    /// Starts the actors in declared order (each reports ready, or gets `start_timeout_seconds`, before
    /// the next starts) and returns once all are started. The supervisor stops its actors in reverse
    /// order when `token` is cancelled; `ping` is the systemd watchdog and its period.
    pub async fn start(
        self,
        tasks: &Tasks,
        token: CancellationToken,
        ping: Option<(Duration, WatchdogPing)>,
    ) -> Supervisor {
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(256);
        let failure = CancellationToken::new();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        let (started_tx, started_rx) = oneshot::channel();
        let actors: Arc<[Arc<ActorShared>]> = self.specs.iter().map(|s| s.shared.clone()).collect();
        let supervisor = Supervisor {
            commands: commands_tx,
            actors,
            events: events.clone(),
            failure: failure.clone(),
            stopped: Arc::new(tokio::sync::Mutex::new(Some(stopped_rx))),
            token: token.clone(),
        };
        let runtime = runtime::Runtime::new(runtime::Parts {
            handle: supervisor.clone(),
            config: self.config,
            specs: self.specs,
            reports: self.reports,
            commands: commands_rx,
            events: events.clone(),
            tasks: tasks.clone(),
            token,
            failure: failure.clone(),
            ping,
            seed: self.seed,
        });
        tasks.spawn("supervisor", runtime.run(started_tx, stopped_tx));
        // The loop answers once every actor has started (or the supervisor was stopped meanwhile).
        let _ = started_rx.await;
        supervisor
    }
}

/// A handle on the running supervisor. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    commands: mpsc::Sender<runtime::Command>,
    actors: Arc<[Arc<ActorShared>]>,
    events: broadcast::Sender<ActorEvent>,
    failure: CancellationToken,
    stopped: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<StopReport>>>>,
    /// The supervisor's own token: cancelled when the final stop begins.
    token: CancellationToken,
}

impl Supervisor {
    /// Every actor and worker, in declared order.
    pub fn list(&self) -> Vec<ActorInfo> {
        self.actors.iter().map(|a| a.info()).collect()
    }

    pub fn get(&self, name: &str) -> Result<ActorInfo, SupervisorError> {
        self.actors
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.info())
            .ok_or_else(|| SupervisorError::NotFound(name.to_owned()))
    }

    /// Cancels the actor and starts a fresh incarnation (its dependents too under rest_for_one);
    /// clears a failed actor's restart history. Returns once it runs again.
    pub async fn restart(&self, name: &str) -> Result<ActorInfo, SupervisorError> {
        self.command(name, runtime::Op::Restart).await
    }

    /// Stops the actor (within its stop deadline); it stays stopped until started.
    pub async fn stop_actor(&self, name: &str) -> Result<ActorInfo, SupervisorError> {
        self.command(name, runtime::Op::Stop).await
    }

    /// Starts a stopped or failed actor (a running one is left alone).
    pub async fn start_actor(&self, name: &str) -> Result<ActorInfo, SupervisorError> {
        self.command(name, runtime::Op::Start).await
    }

    async fn command(&self, name: &str, op: runtime::Op) -> Result<ActorInfo, SupervisorError> {
        self.get(name)?;
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(runtime::Command::Actor {
                name: name.to_owned(),
                op,
                reply,
            })
            .await
            .map_err(|_| SupervisorError::Stopping)?;
        rx.await.map_err(|_| SupervisorError::Stopping)?
    }

    /// State changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ActorEvent> {
        self.events.subscribe()
    }

    /// Cancelled when a critical actor failed and the configuration says to exit.
    pub fn critical_failure(&self) -> &CancellationToken {
        &self.failure
    }

    /// Critical actors and workers that are not running: stopped or failed. Any of them makes the
    /// daemon not ready (overall health NOT_SERVING, `/readyz` 503); restarting ones do not, a
    /// backoff is expected to end.
    pub fn critical_down(&self) -> Vec<&'static str> {
        self.actors
            .iter()
            .filter(|a| {
                a.config.critical && matches!(a.state(), ActorState::Stopped | ActorState::Failed)
            })
            .map(|a| a.name)
            .collect()
    }

    /// Whether the final stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Whether any critical actor is failed (the systemd watchdog ping is withheld).
    pub fn critical_failed(&self) -> bool {
        self.actors
            .iter()
            .any(|a| a.config.critical && a.state() == ActorState::Failed)
    }

    /// Waits until the supervisor has stopped every actor (after its token was cancelled). Only the
    /// first caller gets the report.
    pub async fn wait_stopped(&self) -> Option<StopReport> {
        let rx = self.stopped.lock().await.take()?;
        rx.await.ok()
    }

    /// Parks the supervisor loop until `release` resolves: a wedged loop, for tests.
    #[cfg(test)]
    pub(crate) async fn wedge(&self, release: oneshot::Receiver<()>) {
        let _ = self.commands.send(runtime::Command::Wedge(release)).await;
    }
}
