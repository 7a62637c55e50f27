//! `brainstem.v1.Admin`: Ping (the benchmark baseline), WhoAmI, GetStatus, and the log filter at
//! runtime (GetLogLevel, SetLogLevel: audited as kind `admin`, action [`LOG_LEVEL_ACTION`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use brainstem_proto::v1::admin_server::Admin;
use brainstem_proto::v1::{
    GetLogLevelRequest, GetStatusReply, GetStatusRequest, LogLevelReply, PingReply, PingRequest,
    SetLogLevelRequest, WhoAmIReply, WhoAmIRequest,
};
use tonic::{Request, Response, Status};

use super::convert::timestamp_from_unix_ms as timestamp;
use crate::access::audit::{AuditKind, AuditLog, AuditRecord};
use crate::access::authz::Authorizer;
use crate::access::caller;
use crate::error::{FieldViolation, ServiceError};
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};
use crate::runtime::telemetry::LogControl;
use crate::store::{BootInfo, Store};

/// Longest `PingRequest.delay_ms` accepted.
pub const MAX_PING_DELAY_MS: u32 = 10_000;

/// Facts about this run of the daemon.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub version: &'static str,
    pub dev_mode: bool,
    /// Monotonic start, for uptime. The wall-clock start is `boot.started_unix_ms`.
    pub started: Instant,
    pub boot: BootInfo,
}

/// The audit action of a log filter change (by SetLogLevel or by a reload).
pub const LOG_LEVEL_ACTION: &str = "log.level.set";

/// Capability SetLogLevel needs.
pub const LOG_LEVEL_CAPABILITY: &str = "admin.log-level";

pub struct AdminService {
    authorizer: Arc<Authorizer>,
    info: Arc<DaemonInfo>,
    store: Store,
    log: Option<Arc<dyn LogControl>>,
    audit: Arc<AuditLog>,
}

impl AdminService {
    pub fn new(
        authorizer: Arc<Authorizer>,
        info: Arc<DaemonInfo>,
        store: Store,
        log: Option<Arc<dyn LogControl>>,
        audit: Arc<AuditLog>,
    ) -> Self {
        AdminService {
            authorizer,
            info,
            store,
            log,
            audit,
        }
    }

    fn log(&self) -> Result<&Arc<dyn LogControl>, ServiceError> {
        self.log.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition(
                "this daemon does not own its logging (embedded); its log filter cannot be changed here"
                    .to_owned(),
            )
        })
    }
}

fn log_reply(log: &dyn LogControl, previous: String) -> LogLevelReply {
    LogLevelReply {
        filter: log.filter(),
        previous,
        configured: log.configured(),
        env_override: log.env_override(),
    }
}

/// Audits and logs a change of the log filter. `caller` is the principal, or `brainstemd reload`.
pub fn audit_log_level(audit: &AuditLog, caller: &str, previous: &str, filter: &str) {
    tracing::warn!(caller, previous, filter, "log filter changed");
    let record = AuditRecord {
        seq: 0,
        time_unix_ms: 0,
        decision_id: audit.decision_id(),
        kind: AuditKind::Admin,
        caller: caller.to_owned(),
        principal: caller.to_owned(),
        action: LOG_LEVEL_ACTION.to_owned(),
        resource: crate::error::truncate_to(filter, 512).into_owned(),
        allowed: true,
        reasons: vec![format!(
            "previous={}",
            crate::error::truncate_to(previous, 512)
        )],
        correlation_id: String::new(),
        count: 1,
    };
    if let Err(err) = audit.record(record) {
        tracing::warn!(error = %err, "the log filter change could not be audited");
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let PingRequest { payload, delay_ms } = request.into_inner();
        if delay_ms > MAX_PING_DELAY_MS {
            return Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
                "delay_ms",
                format!("{delay_ms} is more than the maximum of {MAX_PING_DELAY_MS}"),
            )])
            .into());
        }
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
        }
        Ok(Response::new(PingReply { payload }))
    }

    #[tracing::instrument(skip_all)]
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        let principal = caller(&request)?.principal.clone();
        let grants = self.authorizer.grants();
        let holdings = grants
            .holdings(&principal.name)
            .cloned()
            .unwrap_or_default();
        Ok(Response::new(WhoAmIReply {
            principal: principal.name.clone(),
            principal_source: principal.source.as_str().to_owned(),
            roles: holdings.roles.to_vec(),
            capabilities: holdings.capabilities,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusReply>, Status> {
        let schema_version = self.store.schema_version().map_err(ServiceError::from)?;
        let info = &self.info;
        Ok(Response::new(GetStatusReply {
            version: info.version.to_owned(),
            dev_mode: info.dev_mode,
            started_at: Some(timestamp(info.boot.started_unix_ms)),
            uptime_seconds: info.started.elapsed().as_secs(),
            boot_count: info.boot.boot_count,
            first_start: Some(timestamp(info.boot.first_start_unix_ms)),
            previous_shutdown_clean: info.boot.previous_shutdown_clean,
            schema_version,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_log_level(
        &self,
        _request: Request<GetLogLevelRequest>,
    ) -> Result<Response<LogLevelReply>, Status> {
        let log = self.log()?;
        Ok(Response::new(log_reply(log.as_ref(), String::new())))
    }

    #[tracing::instrument(skip_all)]
    async fn set_log_level(
        &self,
        request: Request<SetLogLevelRequest>,
    ) -> Result<Response<LogLevelReply>, Status> {
        let principal = caller(&request)?.principal.name.clone();
        let SetLogLevelRequest { filter } = request.into_inner();
        let log = self.log()?;
        let previous = log.set_filter(&filter).map_err(|why| {
            ServiceError::InvalidArgument(vec![FieldViolation::new("filter", why)])
        })?;
        audit_log_level(&self.audit, &principal, &previous, &filter);
        Ok(Response::new(log_reply(log.as_ref(), previous)))
    }
}

/// The Admin service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Admin",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: &[
            ("/brainstem.v1.Admin/Ping", Requirement::Authenticated),
            ("/brainstem.v1.Admin/WhoAmI", Requirement::Authenticated),
            (
                "/brainstem.v1.Admin/GetStatus",
                Requirement::Capability("admin.status"),
            ),
            (
                "/brainstem.v1.Admin/GetLogLevel",
                Requirement::Capability("admin.status"),
            ),
            (
                "/brainstem.v1.Admin/SetLogLevel",
                Requirement::Capability(LOG_LEVEL_CAPABILITY),
            ),
        ],
    },
    describe: crate::runtime::events::describe_none,
    setup: crate::stateless_setup!(
        |shared| brainstem_proto::v1::admin_server::AdminServer::new(AdminService::new(
            shared.access.authorizer.clone(),
            shared.info.clone(),
            shared.store.clone(),
            shared.log.clone(),
            shared.access.audit.clone()
        ))
    ),
};
