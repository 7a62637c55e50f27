//! `brainstem.v1.Policy`: Check, BatchCheck, Explain, Validate, GetPolicySet.

use std::sync::Arc;

use brainstem_proto::v1::policy_server::Policy;
use brainstem_proto::v1::{
    BatchCheckReply, BatchCheckRequest, CheckReply, CheckRequest, ExplainReply, GetPolicySetReply,
    GetPolicySetRequest, PolicyInfo, ValidateReply, ValidateRequest,
};
use tonic::{Request, Response, Status};

use crate::access::audit::{AuditKind, AuditRecord};
use crate::access::{AUDIT_UNAVAILABLE, Access};
use crate::error::{FieldViolation, ServiceError};
use crate::grpc::admin::{caller, timestamp};
use crate::grpc::layer::Caller;
use crate::policy::events::DecisionMetrics;
use crate::policy::{self, Decision, PolicyError, Query};

/// Capability to ask about a principal other than oneself.
pub const CHECK_AS: &str = "policy.check_as";
/// Longest policy text `Validate` accepts.
pub const MAX_POLICY_TEXT: usize = 1024 * 1024;
const MAX_CORRELATION_ID: usize = 256;

pub struct PolicyService {
    access: Arc<Access>,
    metrics: DecisionMetrics,
}

impl PolicyService {
    pub fn new(access: Arc<Access>) -> Self {
        PolicyService {
            access,
            metrics: DecisionMetrics::new("policy"),
        }
    }

    /// Validates one request; violations name fields under `prefix` (`items[3].`).
    fn query(
        &self,
        caller: &str,
        prefix: &str,
        request: &CheckRequest,
        violations: &mut Vec<FieldViolation>,
    ) -> Option<(Query, bool)> {
        let context = request
            .context
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_default();
        let before = violations.len();
        violations.extend(policy::validate_query(
            prefix,
            &request.principal,
            &request.action,
            &request.resource,
            &context,
        ));
        if request.correlation_id.len() > MAX_CORRELATION_ID {
            violations.push(FieldViolation::new(
                format!("{prefix}correlation_id"),
                format!("at most {MAX_CORRELATION_ID} bytes"),
            ));
        }
        if violations.len() > before {
            return None;
        }
        let on_behalf = !request.principal.is_empty() && request.principal != caller;
        let principal = if request.principal.is_empty() {
            caller.to_owned()
        } else {
            request.principal.clone()
        };
        Some((
            Query {
                roles: self.access.roles_of(&principal),
                principal,
                action: request.action.clone(),
                resource: request.resource.clone(),
                context,
            },
            on_behalf,
        ))
    }

    fn require_check_as(&self, caller: &Caller) -> Result<(), ServiceError> {
        if caller.may(&self.access.authorizer, CHECK_AS) {
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied(format!(
                "asking about another principal needs capability {CHECK_AS:?}"
            )))
        }
    }

    fn decide(&self, query: &Query) -> Result<Decision, ServiceError> {
        self.access
            .policy
            .decide(query)
            .map_err(|v| ServiceError::InvalidArgument(vec![v]))
    }

    /// Audits a decision and builds the reply; a fail-closed action whose record cannot be written
    /// is denied.
    async fn answer(
        &self,
        caller: &str,
        query: Query,
        correlation_id: String,
        decision: Decision,
    ) -> CheckReply {
        let decision_id = self.access.audit.decision_id();
        let Decision {
            mut allowed,
            mut reasons,
            errors,
        } = decision;
        let record = AuditRecord {
            seq: 0,
            time_unix_ms: 0,
            decision_id: decision_id.clone(),
            kind: AuditKind::Policy,
            caller: caller.to_owned(),
            principal: query.principal,
            action: query.action,
            resource: query.resource,
            allowed,
            reasons: reasons.clone(),
            correlation_id,
        };
        if !self.access.audit_decision(record).await && allowed {
            allowed = false;
            reasons = vec![AUDIT_UNAVAILABLE.to_owned()];
        }
        self.metrics.decided(allowed);
        CheckReply {
            allowed,
            reasons,
            decision_id,
            errors,
        }
    }
}

#[tonic::async_trait]
impl Policy for PolicyService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let who = caller(&request)?.clone();
        let caller = who.principal.name.clone();
        let request = request.into_inner();
        let mut violations = Vec::new();
        let Some((query, on_behalf)) = self.query(&caller, "", &request, &mut violations) else {
            return Err(ServiceError::InvalidArgument(violations).into());
        };
        if on_behalf {
            self.require_check_as(&who)?;
        }
        let decision = self.decide(&query)?;
        Ok(Response::new(
            self.answer(&caller, query, request.correlation_id, decision)
                .await,
        ))
    }

    async fn batch_check(
        &self,
        request: Request<BatchCheckRequest>,
    ) -> Result<Response<BatchCheckReply>, Status> {
        let who = caller(&request)?.clone();
        let caller = who.principal.name.clone();
        let items = request.into_inner().items;
        let max = self.access.max_batch();
        if items.is_empty() || items.len() > max {
            return Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
                "items",
                format!("1 to {max} items; got {}", items.len()),
            )])
            .into());
        }
        let mut violations = Vec::new();
        let mut queries = Vec::with_capacity(items.len());
        let mut on_behalf = false;
        for (i, item) in items.iter().enumerate() {
            if let Some((query, other)) =
                self.query(&caller, &format!("items[{i}]."), item, &mut violations)
            {
                on_behalf |= other;
                queries.push(query);
            }
        }
        if !violations.is_empty() {
            return Err(ServiceError::InvalidArgument(violations).into());
        }
        if on_behalf {
            self.require_check_as(&who)?;
        }
        let mut decided = Vec::with_capacity(queries.len());
        for (query, item) in queries.into_iter().zip(items) {
            let decision = self.decide(&query)?;
            decided.push(self.answer(&caller, query, item.correlation_id, decision));
        }
        // Fail-closed items wait for their records; the others are ready at once.
        let results = futures::future::join_all(decided).await;
        Ok(Response::new(BatchCheckReply { results }))
    }

    async fn explain(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<ExplainReply>, Status> {
        let who = caller(&request)?.clone();
        let caller = who.principal.name.clone();
        let request = request.into_inner();
        let mut violations = Vec::new();
        let Some((query, on_behalf)) = self.query(&caller, "", &request, &mut violations) else {
            return Err(ServiceError::InvalidArgument(violations).into());
        };
        if on_behalf {
            self.require_check_as(&who)?;
        }
        let e = self
            .access
            .policy
            .explain(&query)
            .map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
        Ok(Response::new(ExplainReply {
            allowed: e.decision.allowed,
            reasons: e.decision.reasons,
            matched_permits: e.matched_permits,
            matched_forbids: e.matched_forbids,
            errors: e.decision.errors,
            principal_entity: e.principal_entity,
            principal_parents: e.principal_parents,
            action_entity: e.action_entity,
            action_parents: e.action_parents,
            resource_entity: e.resource_entity,
            context: Some(json_to_struct(&e.context)),
            policy_set_digest: e.digest,
        }))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateReply>, Status> {
        let ValidateRequest { policies, schema } = request.into_inner();
        let mut violations = Vec::new();
        if policies.trim().is_empty() {
            violations.push(FieldViolation::new("policies", "must not be empty"));
        }
        for (field, text) in [("policies", &policies), ("schema", &schema)] {
            if text.len() > MAX_POLICY_TEXT {
                violations.push(FieldViolation::new(
                    field,
                    format!("at most {MAX_POLICY_TEXT} bytes"),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(ServiceError::InvalidArgument(violations).into());
        }
        let schema = if schema.is_empty() {
            self.access.policy.current().schema_text.clone()
        } else {
            schema
        };
        // Parsing and validating a large set is CPU work; keep it off the runtime threads.
        let result = tokio::task::spawn_blocking(move || policy::validate_text(&policies, &schema))
            .await
            .map_err(|_| Status::internal("validation did not complete"))?;
        Ok(Response::new(match result {
            Ok(count) => ValidateReply {
                valid: true,
                errors: Vec::new(),
                warnings: Vec::new(),
                policy_count: count as u32,
            },
            Err(PolicyError::Invalid(errors)) => ValidateReply {
                valid: false,
                errors,
                warnings: Vec::new(),
                policy_count: 0,
            },
        }))
    }

    async fn get_policy_set(
        &self,
        _request: Request<GetPolicySetRequest>,
    ) -> Result<Response<GetPolicySetReply>, Status> {
        let set = self.access.policy.current();
        let status = self.access.policy.reload_status();
        Ok(Response::new(GetPolicySetReply {
            digest: set.digest.clone(),
            loaded_at: Some(timestamp(set.loaded_unix_ms)),
            origin: set.origin.clone(),
            policies: set
                .policies
                .iter()
                .map(|p| PolicyInfo {
                    id: p.id.clone(),
                    effect: if p.permit { "permit" } else { "forbid" }.to_owned(),
                    source: p.source.clone(),
                    signed: p.signed,
                    text: p.text.clone(),
                })
                .collect(),
            last_reload_error: status.last_error.unwrap_or_default(),
            last_reload_attempt: (status.last_attempt_unix_ms > 0)
                .then(|| timestamp(status.last_attempt_unix_ms)),
        }))
    }
}

// Struct ↔ JSON is shared with brainstemctl, so it lives beside the generated types.
pub use brainstem_proto::json::{json_to_struct, struct_to_json};
