//! `brainstem.v1.Supervisor`: actor and worker state and control, detailed health, and the mapping of
//! actor states onto `grpc.health.v1` service names (the `health-sync` worker).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use brainstem_proto::v1::supervisor_server::Supervisor as SupervisorApi;
use brainstem_proto::v1::{
    ActorEvent, ActorStatus, GetActorRequest, GetActorResponse, GetHealthRequest,
    GetHealthResponse, ListActorsRequest, ListActorsResponse, RestartActorRequest,
    RestartActorResponse, StartActorRequest, StartActorResponse, StopActorRequest,
    StopActorResponse, WatchActorsRequest,
};
use futures::{FutureExt, Stream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::{FieldViolation, ServiceError};
use crate::grpc::admin::DaemonInfo;
use crate::grpc::convert::timestamp_now;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};
use crate::supervisor::config::RestartType;
use crate::supervisor::worker::until_cancelled;
use crate::supervisor::{
    self, ActorInfo, ActorResult, ActorState, Supervisor, Worker, WorkerContext, WorkerPolicy,
};

const MAX_NAME_BYTES: usize = 128;

pub struct SupervisorService {
    supervisor: Supervisor,
    info: Arc<DaemonInfo>,
    /// Ends open WatchActors streams when the server stops (so the drain does not wait on them).
    stop: CancellationToken,
    ready: Arc<AtomicBool>,
}

impl SupervisorService {
    pub fn new(
        supervisor: Supervisor,
        info: Arc<DaemonInfo>,
        stop: CancellationToken,
        ready: Arc<AtomicBool>,
    ) -> Self {
        SupervisorService {
            supervisor,
            info,
            stop,
            ready,
        }
    }
}

fn restart_type(restart: RestartType) -> &'static str {
    match restart {
        RestartType::Permanent => "permanent",
        RestartType::Transient => "transient",
        RestartType::Temporary => "temporary",
    }
}

pub fn actor_status(info: &ActorInfo) -> ActorStatus {
    ActorStatus {
        name: info.name.to_owned(),
        kind: info.kind.as_str().to_owned(),
        state: info.state.as_str().to_owned(),
        restarts: info.restarts,
        panics: info.panics,
        errors: info.errors,
        kills: info.kills,
        mailbox_depth: info.mailbox_depth,
        mailbox_capacity: info.mailbox_capacity,
        mailbox_drops: info.mailbox_drops,
        last_error: info.last_error.clone().unwrap_or_default(),
        status: info.status.clone(),
        seconds_since_progress: info.since_progress.as_secs_f64(),
        uptime_seconds: info.uptime.map_or(0.0, |u| u.as_secs_f64()),
        restart_type: restart_type(info.restart).to_owned(),
        critical: info.critical,
        health_services: info.health_services.clone(),
    }
}

/// A required actor name: non-empty, bounded. Whether it exists is the supervisor's answer.
fn name(name: &str) -> Result<&str, ServiceError> {
    if name.is_empty() {
        return Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
            "name",
            "is required (see ListActors)",
        )]));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
            "name",
            format!("more than {MAX_NAME_BYTES} bytes"),
        )]));
    }
    Ok(name)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ActorEvent, Status>> + Send>>;

struct Watch {
    pending: VecDeque<ActorEvent>,
    events: broadcast::Receiver<supervisor::ActorEvent>,
    supervisor: Supervisor,
    only: Option<String>,
    stop: CancellationToken,
}

impl Watch {
    fn snapshot(&mut self) {
        self.pending = self
            .supervisor
            .list()
            .iter()
            .filter(|a| self.only.as_deref().is_none_or(|n| n == a.name))
            .map(|a| ActorEvent {
                actor: Some(actor_status(a)),
                previous_state: String::new(),
                at: Some(timestamp_now()),
            })
            .collect();
    }

    async fn next(mut self) -> Option<(Result<ActorEvent, Status>, Watch)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                received = self.events.recv() => match received {
                    Ok(event) => {
                        if self.only.as_deref().is_none_or(|n| n == event.actor.name) {
                            let event = ActorEvent {
                                actor: Some(actor_status(&event.actor)),
                                previous_state: event.previous.as_str().to_owned(),
                                at: Some(timestamp_now()),
                            };
                            return Some((Ok(event), self));
                        }
                    }
                    // Fell behind: start again from the current state.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.snapshot(),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

#[tonic::async_trait]
impl SupervisorApi for SupervisorService {
    async fn list_actors(
        &self,
        _request: Request<ListActorsRequest>,
    ) -> Result<Response<ListActorsResponse>, Status> {
        Ok(Response::new(ListActorsResponse {
            actors: self.supervisor.list().iter().map(actor_status).collect(),
        }))
    }

    async fn get_actor(
        &self,
        request: Request<GetActorRequest>,
    ) -> Result<Response<GetActorResponse>, Status> {
        let request = request.into_inner();
        let info = self
            .supervisor
            .get(name(&request.name)?)
            .map_err(ServiceError::from)?;
        Ok(Response::new(GetActorResponse {
            actor: Some(actor_status(&info)),
        }))
    }

    #[tracing::instrument(skip_all, fields(actor = %request.get_ref().name))]
    async fn restart_actor(
        &self,
        request: Request<RestartActorRequest>,
    ) -> Result<Response<RestartActorResponse>, Status> {
        let request = request.into_inner();
        let info = self
            .supervisor
            .restart(name(&request.name)?)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(RestartActorResponse {
            actor: Some(actor_status(&info)),
        }))
    }

    #[tracing::instrument(skip_all, fields(actor = %request.get_ref().name))]
    async fn stop_actor(
        &self,
        request: Request<StopActorRequest>,
    ) -> Result<Response<StopActorResponse>, Status> {
        let request = request.into_inner();
        let info = self
            .supervisor
            .stop_actor(name(&request.name)?)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(StopActorResponse {
            actor: Some(actor_status(&info)),
        }))
    }

    #[tracing::instrument(skip_all, fields(actor = %request.get_ref().name))]
    async fn start_actor(
        &self,
        request: Request<StartActorRequest>,
    ) -> Result<Response<StartActorResponse>, Status> {
        let request = request.into_inner();
        let info = self
            .supervisor
            .start_actor(name(&request.name)?)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(StartActorResponse {
            actor: Some(actor_status(&info)),
        }))
    }

    type WatchActorsStream = EventStream;

    async fn watch_actors(
        &self,
        request: Request<WatchActorsRequest>,
    ) -> Result<Response<Self::WatchActorsStream>, Status> {
        let request = request.into_inner();
        let only = if request.name.is_empty() {
            None
        } else {
            let name = name(&request.name)?;
            self.supervisor.get(name).map_err(ServiceError::from)?;
            Some(name.to_owned())
        };
        // Subscribed before the snapshot, so no change falls between the two.
        let mut watch = Watch {
            pending: VecDeque::new(),
            events: self.supervisor.subscribe(),
            supervisor: self.supervisor.clone(),
            only,
            stop: self.stop.clone(),
        };
        watch.snapshot();
        let stream = futures::stream::unfold(watch, Watch::next);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_health(
        &self,
        _request: Request<GetHealthRequest>,
    ) -> Result<Response<GetHealthResponse>, Status> {
        let process = supervisor::process::stats();
        let actors = self.supervisor.list();
        let not_ready = self.supervisor.critical_down();
        Ok(Response::new(GetHealthResponse {
            live: true,
            ready: self.ready.load(Ordering::Acquire) && not_ready.is_empty(),
            not_ready: not_ready.into_iter().map(str::to_owned).collect(),
            uptime_seconds: self.info.started.elapsed().as_secs_f64(),
            rss_bytes: process.rss_bytes.unwrap_or(0),
            threads: process.threads.unwrap_or(0),
            actors: actors.iter().map(actor_status).collect(),
            version: self.info.version.to_owned(),
        }))
    }
}

fn serving(state: ActorState, ready: bool) -> ServingStatus {
    if ready && state.is_serving() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// The overall ("") status: the daemon is ready and no critical actor or worker is down.
fn overall(supervisor: &Supervisor, ready: bool) -> ServingStatus {
    if ready && supervisor.critical_down().is_empty() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Sets every actor's health services from its current state, and the overall ("") status from
/// readiness (NOT_SERVING for all when `ready` is false).
pub async fn set_actor_health(health: &HealthReporter, supervisor: &Supervisor, ready: bool) {
    for actor in supervisor.list() {
        for service in &actor.health_services {
            health
                .set_service_status(service, serving(actor.state, ready))
                .await;
        }
    }
    health
        .set_service_status("", overall(supervisor, ready))
        .await;
}

/// The `health-sync` worker: keeps each actor's `grpc.health.v1` services in step with its state
/// (SERVING while it starts or runs and the daemon is ready, NOT_SERVING otherwise), and the overall
/// ("") status with readiness: NOT_SERVING while a critical actor or worker is stopped or failed.
/// It also keeps the `store.writes` health service: NOT_SERVING while the store refuses writes for
/// lack of disk space (reads, and so the overall status, keep serving).
pub struct HealthSync {
    health: HealthReporter,
    ready: Arc<AtomicBool>,
    store_writes: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The `grpc.health.v1` service name of the store's write path.
pub const STORE_WRITES_HEALTH: &str = "store.writes";

impl HealthSync {
    pub fn new(health: HealthReporter, ready: Arc<AtomicBool>) -> Self {
        HealthSync {
            health,
            ready,
            store_writes: None,
        }
    }

    /// Also publishes `store.writes` from the store's disk-space watch (`true`: writes refused).
    pub fn with_store_writes(mut self, full: tokio::sync::watch::Receiver<bool>) -> Self {
        self.store_writes = Some(full);
        self
    }

    async fn set_store_writes(&self, full: bool) {
        let status = if full {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        self.health
            .set_service_status(STORE_WRITES_HEALTH, status)
            .await;
    }
}

impl Worker for HealthSync {
    fn name(&self) -> &'static str {
        "health-sync"
    }

    /// Critical: without it health answers go stale.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::CRITICAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        let result = AssertUnwindSafe(self.sync(&ctx)).catch_unwind().await;
        // However this incarnation ends, nobody keeps health current from here on: do not claim
        // SERVING meanwhile. A restarted incarnation syncs again at once.
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        match result {
            Ok(result) => result,
            // Still the supervisor's to count as a panic.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl HealthSync {
    async fn sync(&self, ctx: &WorkerContext) -> ActorResult {
        let supervisor = ctx.supervisor().clone();
        // Subscribed before the first sync, so no change falls between the two.
        let mut events = supervisor.subscribe();
        let ready = || self.ready.load(Ordering::Acquire);
        set_actor_health(&self.health, &supervisor, ready()).await;
        let mut store_writes = self.store_writes.clone();
        if let Some(full) = store_writes.as_mut() {
            let now = *full.borrow_and_update();
            self.set_store_writes(now).await;
        }
        ctx.ready();
        let mut synced = 0u64;
        loop {
            let step = async {
                let space_changed = async {
                    if let Some(full) = store_writes.as_mut()
                        && full.changed().await.is_ok()
                    {
                        return *full.borrow_and_update();
                    }
                    std::future::pending().await
                };
                tokio::select! {
                    received = events.recv() => Ok(received),
                    full = space_changed => Err(full),
                }
            };
            let received = match ctx.idle(until_cancelled(ctx, step)).await {
                None => break,
                Some(Err(full)) => {
                    self.set_store_writes(full).await;
                    ctx.progress();
                    continue;
                }
                Some(Ok(received)) => received,
            };
            match received {
                Ok(event) => {
                    let status = serving(event.actor.state, ready());
                    for service in &event.actor.health_services {
                        self.health.set_service_status(service, status).await;
                    }
                    self.health
                        .set_service_status("", overall(&supervisor, ready()))
                        .await;
                }
                // Fell behind: sync everything from the current state.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    set_actor_health(&self.health, &supervisor, ready()).await;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
            synced += 1;
            ctx.progress();
            ctx.set_status(format!("{synced} state changes applied"));
        }
        Ok(())
    }
}

/// The Supervisor service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Supervisor",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: &[
            (
                "/brainstem.v1.Supervisor/ListActors",
                Requirement::Capability("supervisor.read"),
            ),
            (
                "/brainstem.v1.Supervisor/GetActor",
                Requirement::Capability("supervisor.read"),
            ),
            (
                "/brainstem.v1.Supervisor/WatchActors",
                Requirement::Capability("supervisor.read"),
            ),
            (
                "/brainstem.v1.Supervisor/GetHealth",
                Requirement::Capability("supervisor.read"),
            ),
            (
                "/brainstem.v1.Supervisor/RestartActor",
                Requirement::Capability("supervisor.admin"),
            ),
            (
                "/brainstem.v1.Supervisor/StopActor",
                Requirement::Capability("supervisor.admin"),
            ),
            (
                "/brainstem.v1.Supervisor/StartActor",
                Requirement::Capability("supervisor.admin"),
            ),
        ],
    },
    describe: crate::supervisor::events::describe,
    setup: crate::stateless_setup!(|shared| {
        brainstem_proto::v1::supervisor_server::SupervisorServer::new(SupervisorService::new(
            shared.supervisor.clone(),
            shared.info.clone(),
            shared.server_token.clone(),
            shared.ready.clone(),
        ))
    }),
};
