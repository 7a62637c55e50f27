//! Workers: the daemon's background loops, supervised like actors.
//!
//! A worker is an actor without messages. It gets the same [`Context`] (cancellation, progress,
//! status line, recorded errors), the same panic capture, restart policy, backoff, intensity and
//! watchdog, and shows in `ListActors` with kind `worker`. What differs is where its settings come
//! from: a worker declares its [`WorkerPolicy`] in code, beside the loop it runs.
//!
//! ```ignore
//! struct Flusher { store: Store }
//! impl Worker for Flusher {
//!     fn name(&self) -> &'static str { "store-flusher" }
//!     async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
//!         ctx.ready();                                   // set up: the next one may start
//!         let mut tick = tokio::time::interval(PERIOD);
//!         while ctx.idle(until_cancelled(&ctx, tick.tick())).await.is_some() {
//!             self.store.flush_async().await?;           // busy: expected to progress
//!             ctx.progress();
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! State that must outlive an incarnation (a queue's receiver, a bound socket) belongs to the worker
//! value, which every incarnation shares, not to the `run` future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::actor::{Actor, ActorResult, Context};
use crate::supervisor::config::{ActorConfig, OverflowPolicy, RestartType};

/// What a worker's incarnation gets: a context whose mailbox nobody writes to.
pub type WorkerContext = Context<()>;

/// A supervised background loop.
pub trait Worker: Send + Sync + 'static {
    /// Unique among actors and workers; kebab-case (`audit-writer`). Used in logs, metric labels and
    /// the API.
    fn name(&self) -> &'static str;

    /// Restart type, criticality and stop deadline.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::OPTIONAL
    }

    /// Runs one incarnation: calls `ctx.ready()` once set up (start in declared order waits for
    /// it), returns `Ok` when `ctx` is cancelled, `Err` when it cannot go on.
    fn run(
        self: Arc<Self>,
        ctx: WorkerContext,
    ) -> impl Future<Output = ActorResult> + Send + 'static;
}

/// How the supervisor treats a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerPolicy {
    pub restart: RestartType,
    /// Not running (stopped or failed) makes the daemon not ready; failed withholds the systemd
    /// watchdog ping and, with `exit_on_critical_failure`, stops the daemon.
    pub critical: bool,
    /// How long it gets to return after cancellation before it is aborted.
    pub stop_deadline: Duration,
}

impl WorkerPolicy {
    /// The daemon cannot do its job without it (the audit writer, the health sync).
    pub const CRITICAL: WorkerPolicy = WorkerPolicy {
        restart: RestartType::Permanent,
        critical: true,
        stop_deadline: Duration::from_secs(2),
    };

    /// Wanted, restarted, but the daemon still serves without it (maintenance passes).
    pub const OPTIONAL: WorkerPolicy = WorkerPolicy {
        restart: RestartType::Permanent,
        critical: false,
        stop_deadline: Duration::from_secs(2),
    };

    pub const fn stop_deadline(mut self, deadline: Duration) -> WorkerPolicy {
        self.stop_deadline = deadline;
        self
    }

    pub(super) fn actor_config(self) -> ActorConfig {
        ActorConfig {
            restart: self.restart,
            critical: self.critical,
            // Never written to; the smallest queue there is.
            mailbox_capacity: 1,
            mailbox_overflow: OverflowPolicy::Reject,
            mailbox_wait_ms: 0,
            stop_deadline_ms: self.stop_deadline.as_millis() as u64,
        }
    }
}

/// Runs a worker through the actor machinery.
pub(super) struct AsActor<W>(pub Arc<W>);

impl<W: Worker> Actor for AsActor<W> {
    type Message = ();

    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn run(
        self: Arc<Self>,
        ctx: Context<()>,
    ) -> impl Future<Output = ActorResult> + Send + 'static {
        self.0.clone().run(ctx)
    }
}

/// `future`'s output, or `None` once `ctx` is cancelled: the usual wait of a worker loop, to be
/// awaited through [`Context::idle`].
pub async fn until_cancelled<F: Future>(ctx: &WorkerContext, future: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = ctx.cancelled() => None,
        output = future => Some(output),
    }
}
