//! `brainstem.v1.Audit`: Query.

use std::sync::Arc;

use brainstem_proto::v1::audit_server::Audit;
use brainstem_proto::v1::{AuditQueryReply, AuditQueryRequest, AuditRecord as AuditRecordPb};
use tonic::{Request, Response, Status};

use crate::access::audit::{AuditKind, AuditLog, AuditQuery, MAX_QUERY_LIMIT};
use crate::error::{FieldViolation, ServiceError};
use crate::grpc::convert::{timestamp_from_unix_ms, timestamp_to_ms};
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};

pub struct AuditService {
    log: Arc<AuditLog>,
}

impl AuditService {
    pub fn new(log: Arc<AuditLog>) -> Self {
        AuditService { log }
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn query(
        &self,
        request: Request<AuditQueryRequest>,
    ) -> Result<Response<AuditQueryReply>, Status> {
        let r = request.into_inner();
        let mut violations = Vec::new();
        if r.limit as usize > MAX_QUERY_LIMIT {
            violations.push(FieldViolation::new(
                "limit",
                format!("at most {MAX_QUERY_LIMIT}"),
            ));
        }
        let kind = match r.kind.as_str() {
            "" => None,
            other => {
                let kind = AuditKind::parse(other);
                if kind.is_none() {
                    violations.push(FieldViolation::new(
                        "kind",
                        "one of policy, guardrail, access, token, admin, secret, registry",
                    ));
                }
                kind
            }
        };
        if !r.correlation_id.is_empty() && !crate::grpc::correlation::valid(&r.correlation_id) {
            violations.push(FieldViolation::new(
                "correlation_id",
                "at most 128 printable ASCII bytes, as an x-request-id",
            ));
        }
        if r.only_allowed && r.only_denied {
            violations.push(FieldViolation::new(
                "only_allowed",
                "only_allowed and only_denied exclude each other",
            ));
        }
        let mut bound = |field: &str, ts: Option<&prost_types::Timestamp>| match ts {
            None => 0,
            Some(ts) => timestamp_to_ms(field, ts)
                .ok()
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or_else(|| {
                    violations.push(FieldViolation::new(field, "not a valid time after 1970"));
                    0
                }),
        };
        let since = bound("since", r.since.as_ref());
        let until = bound("until", r.until.as_ref());
        if !violations.is_empty() {
            return Err(ServiceError::InvalidArgument(violations).into());
        }
        let query = AuditQuery {
            after: r.after,
            newest_first: r.newest_first,
            before: r.before,
            limit: r.limit as usize,
            principal: r.principal,
            action: r.action,
            kind,
            allowed: match (r.only_allowed, r.only_denied) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            since_unix_ms: since,
            until_unix_ms: until,
            correlation_id: r.correlation_id,
        };
        let log = self.log.clone();
        let (records, next) = self
            .log
            .tasks()
            .spawn_blocking("audit.query", move || log.query(&query))
            .await
            .map_err(|err| ServiceError::internal("audit", "audit query", err))?
            .map_err(ServiceError::from)?;
        Ok(Response::new(AuditQueryReply {
            records: records
                .into_iter()
                .map(|r| AuditRecordPb {
                    seq: r.seq,
                    time: Some(timestamp_from_unix_ms(r.time_unix_ms)),
                    decision_id: r.decision_id,
                    kind: r.kind.as_str().to_owned(),
                    caller: r.caller,
                    principal: r.principal,
                    action: r.action,
                    resource: r.resource,
                    allowed: r.allowed,
                    reasons: with_count(r.reasons, r.count),
                    correlation_id: r.correlation_id,
                })
                .collect(),
            next_after: next,
            total: self.log.len() as u64,
        }))
    }
}

/// An aggregated record (refusals) says how many events it stands for as a last reason,
/// `count=N`: the reply keeps its shape.
fn with_count(mut reasons: Vec<String>, count: u32) -> Vec<String> {
    if count > 1 {
        reasons.push(format!("count={count}"));
    }
    reasons
}

/// The Audit service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Audit",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: &[(
            "/brainstem.v1.Audit/Query",
            Requirement::Capability("audit.read"),
        )],
    },
    describe: crate::access::events::describe,
    setup: crate::stateless_setup!(
        |shared| brainstem_proto::v1::audit_server::AuditServer::new(AuditService::new(
            shared.access.audit.clone()
        ))
    ),
};
