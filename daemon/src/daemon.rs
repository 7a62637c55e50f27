//! Lifecycle: start, reload, stop. The same code runs under `main` and in tests.
//!
//! Start: dev PKI (dev mode) → TLS material → store open + boot record → listeners bound → each
//! registered service's set-up step ([`crate::grpc::services`]) → actors and workers started in
//! declared order (each reports ready) → services served → `READY=1`. Any failure before binding is
//! reported and nothing is left listening.
//!
//! Stop (the `shutdown` token): `STOPPING=1` → health NOT_SERVING, `/readyz` 503 → stop accepting and
//! drain in-flight calls (≤ `drain_timeout_seconds`) → cancel background work and stop the actors and
//! workers in reverse order (each within its stop deadline; all within `stop_timeout_seconds`, stragglers named in
//! the log) → mark the clean stop and flush sled.
//!
//! A critical actor that escalates (restarted too often) stops the daemon the same way, with exit code
//! [`EXIT_CRITICAL_FAILURE`] when `supervisor.exit_on_critical_failure` is set, so systemd restarts it.
//!
//! Reload ([`Daemon::reload`], SIGHUP in `main`): re-read the configuration and the policy directory;
//! apply TLS material, grants, the policy set, rate limits, guardrails and log level as a whole, or
//! refuse the new set and keep the old one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::access::Access;
use crate::access::audit::{AuditKind, AuditLog, AuditRecord};
use crate::access::authz::{Authorizer, Grants};
use crate::config::{Config, ConfigError, ConfigSource, EXIT_CONFIG};
use crate::crypto::keyset::{KeyError, KeySet};
use crate::crypto::pki::{DevPki, Ensured, PkiError};
use crate::grpc;
use crate::grpc::services::{Setup, Shared};
use crate::grpc::tls::{self, ReloadableTls, TlsError};
use crate::runtime::events::{ConfigReloaded, ErrorOccurred};
use crate::runtime::notify::{Notifier, watchdog_interval};
use crate::runtime::tasks::Tasks;
use crate::runtime::telemetry::LogControl;
use crate::store::config::FlushPolicy;
use crate::store::{Store, StoreError};
pub use crate::supervisor::EXIT_CRITICAL_FAILURE;
use crate::supervisor::api::HealthSync;
use crate::supervisor::builtin::{
    MetricsListener, STORE_PROBE_DEADLINE, STORE_PROBE_EVERY, StoreFlusher, StoreProbe,
};
use crate::supervisor::{Supervisor, SupervisorBuilder, WatchdogPing};
use crate::tokens::{SystemClock, TokenError, TokenService};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a phase of the stop may run before the stragglers are logged (and systemd told to wait).
const STRAGGLER_REPORT_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("dev PKI: {0}")]
    Pki(#[from] PkiError),
    #[error("TLS material: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Policy(String),
    #[error("capability tokens: {0}")]
    Tokens(#[from] TokenError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("cannot set up {service}: {source}")]
    Setup {
        service: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// 64 for what the operator must fix in configuration or files; 1 for the rest (worth a restart).
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) | StartError::Tls(_) | StartError::Policy(_) => EXIT_CONFIG,
            StartError::Pki(PkiError::Permissions { .. } | PkiError::Principal { .. }) => {
                EXIT_CONFIG
            }
            StartError::Pki(PkiError::Io { .. } | PkiError::Generate(_)) => 1,
            // A restart cannot mend damaged files: 64 keeps systemd from restarting in a loop.
            StartError::Store(StoreError::Damaged { .. } | StoreError::Integrity { .. }) => {
                EXIT_CONFIG
            }
            StartError::Store(_) | StartError::Setup { .. } | StartError::Bind { .. } => 1,
            StartError::Tokens(TokenError::MasterKey { .. } | TokenError::Undecryptable { .. }) => {
                EXIT_CONFIG
            }
            StartError::Tokens(_) => 1,
            StartError::Keys(KeyError::Key { .. }) => EXIT_CONFIG,
            StartError::Keys(KeyError::Store(_)) => 1,
        }
    }
}

/// A `brainstemd recover --accept-loss` ran since the last start: say so once (log, metric), and
/// since revocations may have been lost, retire every token signing key before serving — first, so
/// a crash in between repeats the retirement rather than skipping it.
async fn announce_recoveries(
    store: &Store,
    tokens: &TokenService,
    audit: &AuditLog,
) -> Result<(), StartError> {
    let fresh: Vec<_> = store
        .recoveries()?
        .into_iter()
        .filter(|r| !r.announced)
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let retired = tokens.distrust_all_keys().await?;
    for recovery in store.announce_recoveries()? {
        tracing::warn!(
            at_unix_ms = recovery.at_unix_ms,
            problems = %recovery.problems.join("; "),
            moved_aside = recovery.moved_aside.as_deref().unwrap_or("-"),
            retired_signing_keys = retired,
            "this state was recovered with `brainstemd recover --accept-loss`; tokens issued before it no longer verify"
        );
        ErrorOccurred {
            subsystem: "store",
            kind: "recovered_with_loss",
        }
        .emit();
        let mut reasons: Vec<String> = recovery
            .problems
            .iter()
            .map(|p| crate::error::truncate_to(p, 512).into_owned())
            .collect();
        reasons.push(format!("retired_signing_keys={retired}"));
        let record = AuditRecord {
            seq: 0,
            time_unix_ms: recovery.at_unix_ms,
            decision_id: audit.decision_id(),
            kind: AuditKind::Admin,
            caller: "brainstemd recover".to_owned(),
            principal: "operator".to_owned(),
            action: "store.recover".to_owned(),
            resource: store.path().display().to_string(),
            allowed: true,
            reasons,
            correlation_id: String::new(),
            count: 1,
        };
        if let Err(err) = audit.record(record) {
            tracing::warn!(error = %err, "the store recovery could not be audited");
        }
    }
    Ok(())
}

/// What the daemon needs from its environment besides the configuration.
pub struct RunEnv {
    /// Where the configuration came from; reload reads it again.
    pub source: ConfigSource,
    pub notifier: Notifier,
    /// Changes the log filter on reload; `None` where the caller owns logging (tests).
    pub log: Option<Arc<dyn LogControl>>,
}

/// The result of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Refused(String),
}

enum Control {
    Reload(oneshot::Sender<ReloadOutcome>),
}

/// A started daemon.
pub struct Daemon {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    control: mpsc::Sender<Control>,
    done: tokio::task::JoinHandle<i32>,
    supervisor: Supervisor,
}

impl Daemon {
    /// Starts everything and returns once listeners are bound and `READY=1` is sent. The daemon stops
    /// when `shutdown` is cancelled; [`Daemon::wait`] returns when the stop is complete.
    pub async fn start(
        config: Config,
        env: RunEnv,
        shutdown: CancellationToken,
    ) -> Result<Daemon, StartError> {
        let started = Instant::now();
        env.notifier.status("starting");

        if config.dev_mode {
            let pki = DevPki::new(&config.state_dir);
            if pki.ensure()? == Ensured::Created {
                tracing::warn!(dir = %pki.dir.display(), "dev mode: created a local CA and certificates; never use them in production");
            }
        }
        let tls_paths = config.tls_paths()?;
        let tls = Arc::new(ReloadableTls::new(tls::server_config(&tls_paths)?));
        let access_parts = Access::prepare(&config).map_err(StartError::Policy)?;

        let store = Store::open(&config.state_dir, &config.store)?;
        let boot = store.record_boot()?;
        if !boot.previous_shutdown_clean {
            tracing::warn!(
                boot_count = boot.boot_count,
                "the previous run did not stop cleanly; the store recovered"
            );
            ErrorOccurred {
                subsystem: "daemon",
                kind: "unclean_previous_shutdown",
            }
            .emit();
        }

        let root = CancellationToken::new();
        let tasks = Tasks::new();
        // Records queue from here; the `audit-writer` worker writes them once the supervisor runs.
        let (audit, audit_writer) = AuditLog::open(&config.state_dir, &config.audit, &tasks)
            .map_err(|err| StartError::Setup {
                service: "audit log",
                source: Box::new(err),
            })?;

        crate::runtime::metrics::recorder();
        crate::runtime::events::describe(VERSION);
        crate::store::events::describe();
        grpc::services::describe();
        grpc::events::describe_tls();
        if crate::runtime::traces::enabled() {
            crate::runtime::traces::events::describe();
        }
        grpc::events::TlsCertificatesLoaded {
            expiry: tls::certificate_expiry(&tls_paths),
        }
        .emit();
        crate::runtime::events::Booted {
            boot_count: boot.boot_count,
        }
        .emit();

        // After the recorder: the service registers its hot-path counters once.
        let key_path = config.master_key_path()?;
        let master = crate::tokens::load_master_key(&key_path)?;
        // Checked against the state's record before anything is unsealed (a wrong key overwrites
        // nothing); recorded once the token signing keys opened with it.
        let keys = Arc::new(KeySet::open(&store, master, &key_path)?);
        let tokens = Arc::new(
            TokenService::open(&config.tokens, keys.clone(), &store, Arc::new(SystemClock))
                .map_err(|err| match err {
                    TokenError::Undecryptable { kid } => TokenError::MasterKey {
                        path: key_path.display().to_string(),
                        reason: format!(
                            "not the key this state was sealed with (id {}): signing key {kid} does not open with it; nothing was changed",
                            keys.current().id()
                        ),
                    },
                    other => other,
                })?,
        );
        keys.adopt()?;
        announce_recoveries(&store, &tokens, &audit).await?;

        let grpc_listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Bind {
                what: "gRPC",
                addr: config.server.listen,
                source,
            })?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "gRPC",
                addr: config.server.listen,
                source,
            })?;
        // Not ready until the end of the start; false again once the stop begins.
        let ready = Arc::new(AtomicBool::new(false));
        let (metrics_listener, metrics_addr) = if config.metrics.enabled {
            let bind_error = |source| StartError::Bind {
                what: "metrics",
                addr: config.metrics.listen,
                source,
            };
            let listener = TcpListener::bind(config.metrics.listen)
                .await
                .map_err(bind_error)?;
            let addr = listener.local_addr().ok();
            let worker = MetricsListener::new(listener, ready.clone()).map_err(bind_error)?;
            (Some(worker), addr)
        } else {
            (None, None)
        };

        // Actors and workers are declared in start order (they stop in reverse: the audit writer
        // last): the framework's workers first, then every registered service sets itself up (opens
        // its state, declares its actors and workers); they start below, once nothing can fail.
        let mut actors = SupervisorBuilder::new(config.supervisor.clone(), store.clone());
        actors.add_worker(audit_writer);
        if config.store.flush == FlushPolicy::Interval {
            let every = Duration::from_millis(config.store.flush_interval_ms);
            actors.add_worker(StoreFlusher::new(store.clone(), every));
        }
        actors.add_worker(StoreProbe::new(
            &store,
            STORE_PROBE_EVERY,
            STORE_PROBE_DEADLINE,
        )?);
        let handlers = grpc::services::setup(&mut Setup {
            config: &config,
            store: &store,
            keys: &keys,
            actors: &mut actors,
            parts: &mut Default::default(),
        })?;

        // Nothing below can fail: from here on the daemon is up.
        let server_token = root.child_token();
        let authorizer = Arc::new(Authorizer::new(Grants::from_config(&config)));
        let access = Arc::new(Access::new(authorizer.clone(), audit, access_parts));
        let (health, health_service) = grpc::health();
        grpc::set_health(&health, ServingStatus::Serving).await;
        let watch_interval = Duration::from_secs(config.policy.watch_interval_seconds);
        actors.add_worker(access.policy_watch(watch_interval));
        actors.add_worker(tokens.maintenance_worker());
        if let Some(listener) = metrics_listener {
            actors.add_worker(listener);
        }
        actors.add_worker(
            HealthSync::new(health.clone(), ready.clone()).with_store_writes(store.space_watch()),
        );

        // systemd's watchdog is pinged from the supervisor loop, at half the interval systemd asked
        // for, and only while no critical actor is failed.
        let ping = watchdog_interval().map(|interval| {
            let notifier = env.notifier.clone();
            let ping: WatchdogPing = Arc::new(move || notifier.watchdog());
            (interval / 2, ping)
        });
        env.notifier.status("starting actors");
        let supervisor = actors.start(&tasks, root.child_token(), ping).await;

        let info = Arc::new(grpc::admin::DaemonInfo {
            version: VERSION,
            dev_mode: config.dev_mode,
            started,
            boot,
        });
        let server = grpc::serve(
            grpc_listener,
            &config.server,
            tls.clone(),
            health_service,
            handlers,
            Shared {
                access: access.clone(),
                tokens: tokens.clone(),
                store: store.clone(),
                supervisor: supervisor.clone(),
                info,
                server_token: server_token.clone(),
                ready: ready.clone(),
                log: env.log.clone(),
            },
            &tasks,
            server_token.clone(),
        );

        ready.store(true, Ordering::Release);
        crate::supervisor::api::set_actor_health(&health, &supervisor, true).await;
        let metrics_text = metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        env.notifier.ready(&format!(
            "serving grpc={grpc_addr} metrics={metrics_text} boot={}",
            boot.boot_count
        ));
        tracing::info!(
            grpc = %grpc_addr,
            metrics = %metrics_text,
            dev_mode = config.dev_mode,
            boot_count = boot.boot_count,
            startup_ms = started.elapsed().as_millis() as u64,
            "brainstemd ready"
        );

        let (control_tx, control_rx) = mpsc::channel(4);
        let running = Running {
            config,
            env,
            tls,
            authorizer,
            access,
            health,
            ready,
            store,
            tasks,
            root,
            server_token,
            server,
            supervisor: supervisor.clone(),
        };
        // The lifecycle task is owned by the returned Daemon (awaited by `wait`), not by `tasks`, which
        // it shuts down.
        let done = tokio::spawn(running.run(shutdown, control_rx));
        Ok(Daemon {
            grpc_addr,
            metrics_addr,
            control: control_tx,
            done,
            supervisor,
        })
    }

    /// Re-reads the configuration and applies it, or refuses it and keeps the old one.
    pub async fn reload(&self) -> ReloadOutcome {
        self.reloader().reload().await
    }

    /// A handle that can ask for reloads while another owner waits for the stop.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            control: self.control.clone(),
        }
    }

    /// The actor supervisor (state, counters, operator control).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Waits until the daemon has stopped completely; returns the process exit code: 0 after a
    /// requested stop, [`EXIT_CRITICAL_FAILURE`] after a critical actor failed.
    pub async fn wait(self) -> i32 {
        match self.done.await {
            Ok(code) => code,
            Err(err) => {
                tracing::error!(error = %err, "lifecycle task failed");
                1
            }
        }
    }
}

/// Asks a running daemon to reload (see [`Daemon::reloader`]).
#[derive(Clone)]
pub struct Reloader {
    control: mpsc::Sender<Control>,
}

impl Reloader {
    pub async fn reload(&self) -> ReloadOutcome {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Reload(tx)).await.is_err() {
            return ReloadOutcome::Refused("the daemon is stopping".to_owned());
        }
        rx.await
            .unwrap_or_else(|_| ReloadOutcome::Refused("the daemon is stopping".to_owned()))
    }
}

struct Running {
    config: Config,
    env: RunEnv,
    tls: Arc<ReloadableTls>,
    authorizer: Arc<Authorizer>,
    access: Arc<Access>,
    health: tonic_health::server::HealthReporter,
    ready: Arc<AtomicBool>,
    store: Store,
    tasks: Tasks,
    root: CancellationToken,
    server_token: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    supervisor: Supervisor,
}

impl Running {
    async fn run(
        mut self,
        shutdown: CancellationToken,
        mut control: mpsc::Receiver<Control>,
    ) -> i32 {
        let failure = self.supervisor.critical_failure().clone();
        let mut exit_code = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = failure.cancelled() => {
                    tracing::error!(exit_code = EXIT_CRITICAL_FAILURE, "a critical actor failed; stopping so that the service manager restarts the daemon");
                    exit_code = EXIT_CRITICAL_FAILURE;
                    break;
                }
                Some(message) = control.recv() => match message {
                    Control::Reload(reply) => {
                        let outcome = self.reload();
                        let _ = reply.send(outcome);
                    }
                },
            }
        }
        drop(control);
        self.stop().await;
        exit_code
    }

    fn reload(&mut self) -> ReloadOutcome {
        self.env.notifier.reloading();
        let outcome = match self.prepare_reload() {
            Ok(apply) => {
                apply(self);
                ConfigReloaded {
                    applied: true,
                    detail: "tls, grants, policies, rate limits, guardrails and log level applied",
                }
                .emit();
                ReloadOutcome::Applied
            }
            Err(reason) => {
                ConfigReloaded {
                    applied: false,
                    detail: &reason,
                }
                .emit();
                ReloadOutcome::Refused(reason)
            }
        };
        let status = match &outcome {
            ReloadOutcome::Applied => "serving; configuration reloaded".to_owned(),
            ReloadOutcome::Refused(reason) => format!("serving; reload refused: {reason}"),
        };
        self.env
            .notifier
            .notify(&format!("READY=1\nSTATUS={status}"));
        outcome
    }

    /// Does every fallible step of a reload; the returned closure applies the result and cannot fail.
    fn prepare_reload(&self) -> Result<impl FnOnce(&mut Running) + use<>, String> {
        let new = self.env.source.load().map_err(|err| err.to_string())?;
        let restart_only = self.config.restart_only_changes(&new);
        if !restart_only.is_empty() {
            return Err(format!(
                "changes to {} need a restart",
                restart_only.join(", ")
            ));
        }
        let paths = new.tls_paths().map_err(|err| err.to_string())?;
        let tls = tls::server_config(&paths).map_err(|err| err.to_string())?;
        let expiry = tls::certificate_expiry(&paths);
        let grants = Grants::from_config(&new);
        let access = Access::prepare(&new).inspect_err(|err| {
            self.access.policy.note_refused(err);
            crate::policy::events::PolicyReloaded {
                applied: false,
                trigger: "sighup",
                detail: err,
                policies: 0,
            }
            .emit();
        })?;
        Ok(move |running: &mut Running| {
            running.tls.replace(tls);
            grpc::events::TlsCertificatesLoaded { expiry }.emit();
            running.authorizer.replace(grants);
            running.access.apply(access);
            if let Some(log) = &running.env.log {
                // `[log] level` again, also over a filter SetLogLevel set since; audited if it
                // changes what is logged.
                let before = log.filter();
                match log.set_level(&new.log.level) {
                    Ok(()) => {
                        let after = log.filter();
                        if after != before {
                            grpc::admin::audit_log_level(
                                &running.access.audit,
                                "brainstemd reload",
                                &before,
                                &after,
                            );
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "log level not changed"),
                }
            }
            running.config = new;
        })
    }

    async fn stop(self) {
        let stop_started = Instant::now();
        let notifier = &self.env.notifier;
        notifier.stopping();
        tracing::info!("stopping: draining in-flight calls");
        self.ready.store(false, Ordering::Release);
        grpc::set_health(&self.health, ServingStatus::NotServing).await;
        crate::supervisor::api::set_actor_health(&self.health, &self.supervisor, false).await;
        let grace = Duration::from_secs(self.config.server.shutdown_grace_seconds);
        if !grace.is_zero() {
            // Still accepting, answering NOT_SERVING, so health checkers move traffic away first.
            tracing::info!(
                seconds = grace.as_secs(),
                "announcing NOT_SERVING before refusing connections"
            );
            tokio::time::sleep(grace).await;
        }

        // Phase 1: stop accepting, let in-flight calls finish.
        self.server_token.cancel();
        let drain = Duration::from_secs(self.config.server.drain_timeout_seconds);
        let mut server = self.server;
        let drained = wait_reporting(&mut server, drain, "drain", &self.tasks, notifier).await;
        if !drained {
            tracing::warn!(
                drain_timeout_seconds = drain.as_secs(),
                "in-flight calls did not finish in time; closing their connections"
            );
            server.abort();
        }

        // Phase 2: background work; the supervisor stops its actors in reverse declared order.
        self.root.cancel();
        self.tasks.close();
        let stop = Duration::from_secs(self.config.server.stop_timeout_seconds);
        let mut all_done = Box::pin(self.tasks.wait());
        if !wait_reporting(&mut all_done, stop, "stop", &self.tasks, notifier).await {
            tracing::warn!(still_running = ?self.tasks.running(), "tasks ignored cancellation; abandoning them");
        }

        // Phase 3: state. The other holders of store handles are gone (the tasks ended, the server
        // with its services); the access layer's audit log goes now. Closing then leaves the state
        // directory free for the next start (a restart in this process, a test) at once.
        let Running { store, access, .. } = self;
        // The audit writer drained the queue at its final stop (finish writes what a stopped or
        // abandoned writer left); anything not written keeps the stop from being marked clean
        // (logged once, reported by the next start).
        let audit_lost = access.audit.finish().await;
        drop(access);
        if audit_lost == 0 {
            if let Err(err) = store.mark_clean_shutdown() {
                tracing::error!(error = %err, "final store flush failed");
            }
        }
        if let Err(err) = store.close() {
            tracing::warn!(error = %err, "the store was not closed cleanly");
        }
        tracing::info!(
            stop_ms = stop_started.elapsed().as_millis() as u64,
            "brainstemd stopped"
        );
    }
}

/// Waits for `fut` up to `limit`; every few seconds logs who is still running and asks systemd for
/// more time. Returns whether `fut` finished.
async fn wait_reporting<F>(
    fut: &mut F,
    limit: Duration,
    phase: &'static str,
    tasks: &Tasks,
    notifier: &Notifier,
) -> bool
where
    F: std::future::Future + Unpin,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next_report = (tokio::time::Instant::now() + STRAGGLER_REPORT_EVERY).min(deadline);
        tokio::select! {
            _ = &mut *fut => return true,
            _ = tokio::time::sleep_until(next_report) => {
                if next_report >= deadline {
                    return false;
                }
                let remaining = deadline - tokio::time::Instant::now();
                tracing::info!(phase, still_running = ?tasks.running(), remaining_ms = remaining.as_millis() as u64, "stop in progress");
                notifier.extend_timeout(remaining + STRAGGLER_REPORT_EVERY);
            }
        }
    }
}
