//! The framework's own background loops as workers: the metrics listener, the store flusher and the
//! store probe.
//! (Capabilities keep theirs beside their code: `audit-writer` in `access::audit`, `policy-watch` in
//! `access`, `token-maintenance` in `tokens`; `health-sync` is in [`super::api`].) They live here, not
//! in `runtime` or `store`, so those stay below the supervisor: it imports them, never the reverse.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::worker::until_cancelled;
use super::{ActorError, ActorResult, Worker, WorkerContext, WorkerPolicy};
use crate::runtime::events::ErrorOccurred;
use crate::store::events::StoreStalled;
use crate::store::{Durable, Store, StoreError, Tree, trees};

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

/// The `store-probe` worker: every `every`, a canary write to `meta/probe_canary` handed to the
/// committer with a flush, awaited under `deadline`. A canary that is not durable in time is a
/// stalled store: one ERROR line ([`StoreStalled`]), and the worker fails. The outstanding canary is
/// kept across restarts, so each restart fails at once while it is still pending and the supervisor
/// escalates within its restart intensity: the worker is failed, the daemon not ready, `WATCHDOG=1`
/// withheld (and, with `exit_on_critical_failure`, the daemon stops with exit 70).
pub struct StoreProbe {
    meta: Tree,
    every: Duration,
    deadline: Duration,
    /// Canaries written (the value of the last one).
    canaries: AtomicU64,
    /// The canary still pending when an incarnation gave up on it: since when, and its wait.
    outstanding: Mutex<Option<(tokio::time::Instant, Durable)>>,
    /// A stall was reported and no canary has completed since.
    stalled: AtomicBool,
}

/// How often the daemon's probe writes its canary.
pub const STORE_PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long a canary may take to become durable before the store counts as stalled.
pub const STORE_PROBE_DEADLINE: Duration = Duration::from_secs(5);

const CANARY_KEY: &[u8] = b"probe_canary";

impl StoreProbe {
    pub fn new(store: &Store, every: Duration, deadline: Duration) -> Result<Self, StoreError> {
        Ok(StoreProbe {
            meta: store.tree(trees::META)?,
            every,
            deadline,
            canaries: AtomicU64::new(0),
            outstanding: Mutex::new(None),
            stalled: AtomicBool::new(false),
        })
    }

    /// Canaries that became durable or are pending (for tests and the status line).
    pub fn canaries(&self) -> u64 {
        self.canaries.load(Ordering::Relaxed)
    }

    fn take_outstanding(&self) -> Option<(tokio::time::Instant, Durable)> {
        self.outstanding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl Worker for StoreProbe {
    fn name(&self) -> &'static str {
        "store-probe"
    }

    /// Critical: a store that makes no progress makes the daemon useless, and only a restart of the
    /// process clears a wedged sled.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::CRITICAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        ctx.ready();
        loop {
            let (since, mut pending) = match self.take_outstanding() {
                Some(outstanding) => outstanding,
                None => {
                    let n = self.canaries.fetch_add(1, Ordering::Relaxed) + 1;
                    let pending = self
                        .meta
                        .put_then_flush(CANARY_KEY, &n)
                        .map_err(|err| ActorError::new(format!("store probe: {err}")))?;
                    (tokio::time::Instant::now(), pending)
                }
            };
            let waited = tokio::time::timeout_at(since + self.deadline, pending.wait());
            match until_cancelled(&ctx, waited).await {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {
                    if self.stalled.swap(false, Ordering::Relaxed) {
                        tracing::info!("store probe: a canary write is durable again");
                    }
                    ctx.progress();
                    ctx.set_status(format!("canary {} durable", self.canaries()));
                }
                // The disk is full: the store is alive and refuses writes on purpose (its guard
                // logs and publishes that); the canary goes through again once space returns.
                Some(Ok(Err(StoreError::NoSpace { .. }))) => {
                    ctx.progress();
                    ctx.set_status("writes refused: the filesystem is full".to_owned());
                }
                Some(Ok(Err(err))) => {
                    return Err(ActorError::new(format!(
                        "store probe: the canary write failed: {err}"
                    )));
                }
                Some(Err(_elapsed)) => {
                    if !self.stalled.swap(true, Ordering::Relaxed) {
                        StoreStalled {
                            waited: self.deadline,
                        }
                        .emit();
                    }
                    *self.outstanding.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((since, pending));
                    return Err(ActorError::new(format!(
                        "store stalled: a canary write was not durable within {:?}",
                        self.deadline
                    )));
                }
            }
            let pause = tokio::time::sleep(self.every);
            if ctx.idle(until_cancelled(&ctx, pause)).await.is_none() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::Config;
    use crate::runtime::tasks::Tasks;
    use crate::supervisor::{ActorState, Supervisor, SupervisorBuilder, WatchdogPing};

    struct Probed {
        supervisor: Supervisor,
        tasks: Tasks,
        token: CancellationToken,
        pings: Arc<AtomicU64>,
    }

    async fn start(store: &Store, every: Duration, deadline: Duration) -> Probed {
        let mut builder =
            SupervisorBuilder::new(Config::default().supervisor, store.clone()).seed(7);
        builder.add_worker(StoreProbe::new(store, every, deadline).unwrap());
        let (tasks, token) = (Tasks::new(), CancellationToken::new());
        let pings = Arc::new(AtomicU64::new(0));
        let counter = pings.clone();
        let ping: WatchdogPing = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let supervisor = builder
            .start(&tasks, token.clone(), Some((Duration::from_secs(1), ping)))
            .await;
        Probed {
            supervisor,
            tasks,
            token,
            pings,
        }
    }

    impl Probed {
        async fn stop(self) {
            self.token.cancel();
            self.supervisor.wait_stopped().await;
            self.tasks.close();
            self.tasks.wait().await;
        }
    }

    /// Paused time: while the committer is held no canary completes, the runtime is idle and the
    /// clock jumps to each deadline.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_store_fails_the_probe_and_withholds_the_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Config::default().store).unwrap();
        store.hold_commits(true);
        let started = tokio::time::Instant::now();
        let probed = start(&store, Duration::from_secs(1), STORE_PROBE_DEADLINE).await;
        let info = loop {
            let info = probed.supervisor.get("store-probe").unwrap();
            if info.state == ActorState::Failed {
                break info;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the probe never failed: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let max_restarts = Config::default().supervisor.max_restarts;
        assert_eq!(info.errors, max_restarts + 1);
        assert!(
            info.last_error
                .as_deref()
                .unwrap_or("")
                .contains("store stalled"),
            "{info:?}"
        );
        // One deadline, then every restart fails at once on the same outstanding canary: failed
        // after the deadline plus the backoffs, not after a deadline per restart.
        assert!(
            started.elapsed() < STORE_PROBE_DEADLINE * 2,
            "failed only after {:?}",
            started.elapsed()
        );
        assert!(probed.supervisor.critical_failed());
        assert_eq!(probed.supervisor.critical_down(), ["store-probe"]);
        assert!(probed.supervisor.critical_failure().is_cancelled());
        let pings = probed.pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            probed.pings.load(Ordering::SeqCst),
            pings,
            "watchdog withheld"
        );
        store.hold_commits(false);
        probed.stop().await;
    }

    #[tokio::test]
    async fn a_healthy_store_keeps_the_probe_running() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Config::default().store).unwrap();
        let probed = start(&store, Duration::from_millis(5), STORE_PROBE_DEADLINE).await;
        let meta = store.tree(trees::META).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Canary 3 applied means canaries 1 and 2 were durable (the probe waits for each).
        while meta.get::<u64>(CANARY_KEY).unwrap().unwrap_or(0) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the probe wrote no third canary"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let info = probed.supervisor.get("store-probe").unwrap();
        assert_eq!(info.state, ActorState::Running);
        assert_eq!(info.errors, 0);
        assert!(probed.supervisor.critical_down().is_empty());
        probed.stop().await;
    }
}
