//! `brainstem.v1.Policy`: Check, BatchCheck, Explain, Validate, GetPolicySet.

use std::borrow::Cow;
use std::sync::Arc;

use brainstem_proto::v1::policy_server::{Policy, PolicyServer};
use brainstem_proto::v1::{
    BatchCheckReply, BatchCheckRequest, CheckReply, CheckRequest, ExplainReply, GetPolicySetReply,
    GetPolicySetRequest, PolicyInfo, ValidateReply, ValidateRequest,
};
use futures::future::{BoxFuture, Either, Ready, ready};
use tonic::{Request, Response, Status};

use crate::access::audit::AuditKind;
use crate::access::decide::{Waiting, settled};
use crate::access::{Access, Caller, Decided, DecisionRequest, caller};
use crate::error::{FieldViolation, ServiceError};
use crate::grpc::convert::timestamp_from_unix_ms as timestamp;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec, handler};
use crate::grpc::wire::{WireMethods, WireRoute, refusal};
use crate::policy::events::DecisionMetrics;
use crate::policy::wire::{CheckAnswer, CheckQuestion};
use crate::policy::{self, PolicyError};

/// Capability to ask about a principal other than oneself (the rule lives in `access::decide`).
pub use crate::access::CHECK_AS;
/// Longest policy text `Validate` accepts.
pub const MAX_POLICY_TEXT: usize = 1024 * 1024;
const MAX_CORRELATION_ID: usize = 256;

pub struct PolicyService {
    access: Arc<Access>,
    metrics: DecisionMetrics,
}

/// A `CheckRequest`'s fields, borrowed from the generated type or from the request's bytes
/// ([`super::wire::CheckQuestion`]).
#[derive(Debug, Clone, Copy)]
pub struct CheckParts<'q> {
    pub principal: &'q str,
    pub action: &'q str,
    pub resource: &'q str,
    pub context: Option<&'q prost_types::Struct>,
    pub correlation_id: &'q str,
}

impl<'q> From<&'q CheckRequest> for CheckParts<'q> {
    fn from(r: &'q CheckRequest) -> Self {
        CheckParts {
            principal: &r.principal,
            action: &r.action,
            resource: &r.resource,
            context: r.context.as_ref(),
            correlation_id: &r.correlation_id,
        }
    }
}

impl PolicyService {
    pub fn new(access: Arc<Access>) -> Self {
        PolicyService {
            access,
            metrics: DecisionMetrics::new("policy"),
        }
    }

    /// Validates one request; violations name fields under `prefix` (`items[3].`). The question
    /// borrows the request's strings.
    fn request<'q>(
        &self,
        prefix: &str,
        request: CheckParts<'q>,
        violations: &mut Vec<FieldViolation>,
    ) -> Option<DecisionRequest<'q>> {
        let context = request.context.map(struct_to_json).unwrap_or_default();
        let before = violations.len();
        violations.extend(policy::validate_query(
            prefix,
            request.principal,
            request.action,
            request.resource,
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
        Some(DecisionRequest {
            kind: AuditKind::Policy,
            principal: Cow::Borrowed(request.principal),
            action: Cow::Borrowed(request.action),
            resource: Cow::Borrowed(request.resource),
            context,
            correlation_id: Cow::Borrowed(request.correlation_id),
            rules: None,
        })
    }

    /// One Check: validated, decided, audited, counted. Answered at once (`Ok(Ok)`) unless the
    /// action is fail-closed: then the wait for its record (`Ok(Err)`), which counts the decision
    /// once it is known.
    fn check_now(
        &self,
        who: &Caller,
        request: CheckParts<'_>,
    ) -> Result<Result<Decided, Waiting>, Status> {
        let mut violations = Vec::new();
        let Some(question) = self.request("", request, &mut violations) else {
            return Err(ServiceError::InvalidArgument(violations).into());
        };
        Ok(match self.access.decide_now(who, question)? {
            Ok(decided) => {
                self.metrics.decided(decided.allowed);
                Ok(decided)
            }
            Err(waiting) => {
                let metrics = self.metrics.clone();
                Err(Box::pin(async move {
                    let decided = waiting.await;
                    metrics.decided(decided.allowed);
                    decided
                }))
            }
        })
    }

    /// The generated type's reply (BatchCheck; Check on the generated server).
    fn reply(decided: Decided) -> CheckReply {
        CheckReply {
            allowed: decided.allowed,
            reasons: decided.reasons.into_vec(),
            decision_id: decided.decision_id.to_string(),
            errors: decided.errors,
            advisory: decided.advisory,
        }
    }
}

#[tonic::async_trait]
impl Policy for PolicyService {
    /// The generated trait's method. The daemon routes `Check` through [`PolicyWire`], so this is
    /// reached only by a `PolicyServer` built without that route; it answers alike.
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let who = caller(&request)?;
        let decided = settled(self.check_now(who, request.get_ref().into())?).await;
        Ok(Response::new(Self::reply(decided)))
    }

    async fn batch_check(
        &self,
        request: Request<BatchCheckRequest>,
    ) -> Result<Response<BatchCheckReply>, Status> {
        let who = caller(&request)?;
        let items = &request.get_ref().items;
        let max = self.access.max_batch();
        if items.is_empty() || items.len() > max {
            return Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
                "items",
                format!("1 to {max} items; got {}", items.len()),
            )])
            .into());
        }
        let mut violations = Vec::new();
        let mut questions = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(question) =
                self.request(&format!("items[{i}]."), item.into(), &mut violations)
            {
                questions.push(question);
            }
        }
        if !violations.is_empty() {
            return Err(ServiceError::InvalidArgument(violations).into());
        }
        // Every item is authorized, then evaluated, before any is audited: a bad item fails the
        // whole call without leaving records of the others.
        for question in &questions {
            self.access.require_check_as(who, &question.principal)?;
        }
        let mut pending = Vec::with_capacity(questions.len());
        for question in questions {
            pending.push(self.access.evaluate(who, question)?);
        }
        // Fail-closed items wait for their records; the others are ready at once.
        let decided = futures::future::join_all(pending.into_iter().map(|p| p.record())).await;
        let results = decided
            .into_iter()
            .map(|d| {
                self.metrics.decided(d.allowed);
                Self::reply(d)
            })
            .collect();
        Ok(Response::new(BatchCheckReply { results }))
    }

    async fn explain(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<ExplainReply>, Status> {
        let who = caller(&request)?;
        let mut violations = Vec::new();
        let Some(question) = self.request("", request.get_ref().into(), &mut violations) else {
            return Err(ServiceError::InvalidArgument(violations).into());
        };
        let query = self.access.query(
            who,
            question.principal,
            question.action,
            question.resource,
            question.context,
        )?;
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
        let result = self
            .access
            .tasks()
            .spawn_blocking("policy.validate", move || {
                policy::validate_text(&policies, &schema)
            })
            .await
            .map_err(|err| ServiceError::internal("policy", "policy validation", err))?;
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

/// The Policy service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Policy",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: &[
            (
                "/brainstem.v1.Policy/Check",
                Requirement::Capability("policy.check"),
            ),
            (
                "/brainstem.v1.Policy/BatchCheck",
                Requirement::Capability("policy.check"),
            ),
            (
                "/brainstem.v1.Policy/Explain",
                Requirement::Capability("policy.explain"),
            ),
            (
                "/brainstem.v1.Policy/Validate",
                Requirement::Capability("policy.validate"),
            ),
            (
                "/brainstem.v1.Policy/GetPolicySet",
                Requirement::Capability("policy.read"),
            ),
        ],
    },
    describe: crate::policy::events::describe,
    setup: |_| {
        Ok(Some(handler(|shared, routes, limits| {
            let service = Arc::new(PolicyService::new(shared.access.clone()));
            let max = limits.max_message_bytes;
            routes.add_service(WireRoute::new(
                PolicyServer::from_arc(service.clone())
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
                PolicyWire(service),
                max,
            ));
        })))
    },
};

/// The `Policy` method served through the hand-written codec: `Check` (see [`super::wire`]).
#[derive(Clone)]
pub struct PolicyWire(Arc<PolicyService>);

impl WireMethods for PolicyWire {
    type Request = CheckQuestion;
    type Reply = CheckAnswer;
    type Method = CheckMethod;

    fn method(&self, name: &str) -> Option<CheckMethod> {
        (name == "Check").then(|| CheckMethod(self.0.clone()))
    }
}

/// `Policy.Check` for [`tonic::server::UnaryService`]: decided within `call`, so most answers
/// are ready futures; only a fail-closed action's wait for its audit record is boxed. (An async
/// handler cost a boxed future and three nested state machines, each copied when first moved.)
pub struct CheckMethod(Arc<PolicyService>);

type CheckReplyFuture = Either<
    Ready<Result<Response<CheckAnswer>, Status>>,
    BoxFuture<'static, Result<Response<CheckAnswer>, Status>>,
>;

impl tonic::server::UnaryService<CheckQuestion> for CheckMethod {
    type Response = CheckAnswer;
    type Future = CheckReplyFuture;

    fn call(&mut self, request: Request<CheckQuestion>) -> Self::Future {
        let answer = |decided| Ok(Response::new(CheckAnswer::new(decided)));
        let decided = match caller(&request) {
            Ok(who) => (request.get_ref().parts())
                .map_err(refusal)
                .and_then(|parts| self.0.check_now(who, parts)),
            Err(err) => Err(err.into()),
        };
        match decided {
            Ok(Ok(decided)) => Either::Left(ready(answer(decided))),
            Ok(Err(waiting)) => Either::Right(Box::pin(async move { answer(waiting.await) })),
            Err(status) => Either::Left(ready(Err(status))),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;
    use tonic::server::UnaryService;

    use super::*;
    use crate::access::audit::AuditQuery;
    use crate::access::testing::{Fixture, caller};
    use crate::config::DEV_ADMIN_PRINCIPAL;
    use crate::grpc::wire::{WireReply, WireRequest};

    const AGENT: &str = "spiffe://h/agent";

    fn with_caller<T>(message: T, who: &Caller) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(who.clone());
        request
    }

    /// The daemon answers `Check` through its own route; the generated trait's method is there
    /// for a `PolicyServer` built without it. Both must answer every request alike: the same
    /// reply (the decision id aside, which is new for each decision), the same error, the same
    /// audit record.
    #[tokio::test]
    async fn the_route_and_the_generated_method_answer_alike() {
        let f = Fixture::new().await;
        let service = Arc::new(PolicyService::new(f.access.clone()));
        let agent = caller(AGENT);
        let context = brainstem_proto::json::json_to_struct(
            serde_json::json!({"hour": 10}).as_object().unwrap(),
        );
        let ask = |action: &str| CheckRequest {
            action: action.to_owned(),
            resource: "https://example.org/a".to_owned(),
            ..Default::default()
        };
        let cases = [
            // Allowed, and fail-closed in the fixture: on disk before the answer.
            ask("web.read"),
            ask("web.post"),
            ask("zz.unknown"),
            CheckRequest {
                context: Some(context),
                correlation_id: "corr-1".to_owned(),
                ..ask("fs.read")
            },
            CheckRequest {
                principal: AGENT.to_owned(),
                ..ask("fs.read")
            },
            // Refused: a bad action, someone else without check_as, an over-long correlation id.
            ask("Web Read"),
            CheckRequest {
                principal: DEV_ADMIN_PRINCIPAL.to_owned(),
                ..ask("fs.read")
            },
            CheckRequest {
                correlation_id: "c".repeat(257),
                ..ask("fs.read")
            },
        ];
        let mut decisions = 0;
        for request in &cases {
            let generated = service
                .check(with_caller(request.clone(), &agent))
                .await
                .map(|r| r.into_inner());
            let question = CheckQuestion::decode(Bytes::from(request.encode_to_vec())).unwrap();
            let routed = CheckMethod(service.clone())
                .call(with_caller(question, &agent))
                .await
                .map(|answer| {
                    let mut bytes = Vec::new();
                    answer.get_ref().encode(&mut bytes);
                    CheckReply::decode(&bytes[..]).unwrap()
                });
            match (generated, routed) {
                (Ok(mut g), Ok(mut r)) => {
                    assert!(!g.decision_id.is_empty() && g.decision_id != r.decision_id);
                    assert_eq!(g.decision_id.len(), r.decision_id.len());
                    (g.decision_id, r.decision_id) = (String::new(), String::new());
                    assert_eq!(g, r, "{request:?}");
                    decisions += 1;
                }
                (Err(g), Err(r)) => {
                    assert_eq!(g.code(), r.code(), "{request:?}");
                    assert_eq!(g.message(), r.message(), "{request:?}");
                }
                (g, r) => panic!("{request:?}: generated {g:?}, routed {r:?}"),
            }
        }
        assert_eq!(decisions, 5);

        f.stop_audit().await;
        let (records, _) = f
            .access
            .audit
            .query(&AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(records.len(), 2 * decisions);
        for pair in records.chunks(2) {
            let strip = |r: &crate::access::audit::AuditRecord| {
                (
                    r.caller.clone(),
                    r.principal.clone(),
                    r.action.clone(),
                    r.resource.clone(),
                    r.allowed,
                    r.reasons.clone(),
                    r.correlation_id.clone(),
                )
            };
            assert_eq!(strip(&pair[0]), strip(&pair[1]));
        }
        assert_eq!(records[6].correlation_id, "corr-1");
    }
}
