//! The framework's own background loops as workers: the metrics listener and the store flusher.
//! (Capabilities keep theirs beside their code: `audit-writer` in `access::audit`, `policy-watch` in
//! `access`, `token-maintenance` in `tokens`; `health-sync` is in [`super::api`].) They live here, not
//! in `runtime` or `store`, so those stay below the supervisor: it imports them, never the reverse.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::worker::until_cancelled;
use super::{ActorError, ActorResult, Worker, WorkerContext, WorkerPolicy};
use crate::runtime::events::ErrorOccurred;
use crate::store::Store;

/// The `metrics-listener` worker: `/metrics`, `/healthz`, `/readyz` on the loopback listener. It
/// keeps the bound socket, so a restarted incarnation serves on the same address.
pub struct MetricsListener {
    listener: std::net::TcpListener,
    started: Arc<AtomicBool>,
}

impl MetricsListener {
    /// `started`: the daemon is up and not stopping; `/readyz` also asks the supervisor whether
    /// every critical actor and worker runs.
    pub fn new(
        listener: tokio::net::TcpListener,
        started: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        Ok(MetricsListener {
            listener: listener.into_std()?,
            started,
        })
    }
}

impl Worker for MetricsListener {
    fn name(&self) -> &'static str {
        "metrics-listener"
    }

    /// Optional: the daemon serves without it (only probes and scrapes go unanswered).
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::OPTIONAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        let listener = self
            .listener
            .try_clone()
            .and_then(|l| tokio::net::TcpListener::from_std(l))
            .map_err(|err| ActorError::new(format!("metrics listener socket: {err}")))?;
        let supervisor = ctx.supervisor().clone();
        let started = self.started.clone();
        let ready: crate::runtime::metrics::ReadyCheck = Arc::new(move || {
            started.load(Ordering::Acquire) && supervisor.critical_down().is_empty()
        });
        ctx.ready();
        // Serving is waiting for requests: idle, as far as the watchdog is concerned.
        ctx.idle(crate::runtime::metrics::serve(
            listener,
            ready,
            ctx.token().clone(),
        ))
        .await
        .map_err(|err| ActorError::new(format!("metrics listener failed: {err}")))
    }
}

/// The `store-flusher` worker (`store.flush = "interval"`): flushes sled every interval.
pub struct StoreFlusher {
    store: Store,
    every: Duration,
}

impl StoreFlusher {
    pub fn new(store: Store, every: Duration) -> Self {
        StoreFlusher { store, every }
    }
}

impl Worker for StoreFlusher {
    fn name(&self) -> &'static str {
        "store-flusher"
    }

    /// Critical: without it acknowledged writes are not made durable on the promised schedule.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::CRITICAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ctx.ready();
        while ctx.idle(until_cancelled(&ctx, tick.tick())).await.is_some() {
            if let Err(err) = self.store.flush_async().await {
                ErrorOccurred {
                    subsystem: "store",
                    kind: "flush",
                }
                .emit();
                ctx.record_error(&err);
            }
            ctx.progress();
        }
        Ok(())
    }
}
