//! `brainstem.v1.Guardrails`: the built-in web rules, then the Cedar policies, one audited decision.

use std::sync::Arc;

use brainstem_proto::v1::guardrails_server::Guardrails as GuardrailsApi;
use brainstem_proto::v1::{ClickRequest, FormSubmitRequest, GuardrailReply, NavigationRequest};
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use crate::access::audit::AuditKind;
use crate::access::events::GuardrailDecided;
use crate::access::guardrails::Verdict;
use crate::access::{Access, Caller, DecisionRequest, RulesVerdict, caller};
use crate::error::{FieldViolation, ServiceError};
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};

const MAX_CORRELATION_ID: usize = 256;
const MAX_TARGET: usize = 1024;

pub struct GuardrailsService {
    access: Arc<Access>,
}

impl GuardrailsService {
    pub fn new(access: Arc<Access>) -> Self {
        GuardrailsService { access }
    }

    /// Asks the policies about `action` on `url`, merges with the rules' verdict, audits: one
    /// [`Access::decide`].
    async fn decide(
        &self,
        rule: &'static str,
        caller: &Caller,
        action: &str,
        url: String,
        correlation_id: String,
        verdict: Verdict,
    ) -> Result<GuardrailReply, ServiceError> {
        let mut context = Map::new();
        context.insert("domain".to_owned(), Value::String(verdict.domain.clone()));
        let decided = self
            .access
            .decide(
                caller,
                DecisionRequest {
                    kind: AuditKind::Guardrail,
                    principal: "".into(),
                    action: action.into(),
                    resource: url.into(),
                    context,
                    correlation_id: correlation_id.into(),
                    rules: Some(RulesVerdict {
                        allowed: verdict.allowed,
                        reasons: verdict.reasons,
                    }),
                },
            )
            .await?;
        GuardrailDecided {
            rule,
            allowed: decided.allowed,
        }
        .emit();
        Ok(GuardrailReply {
            allowed: decided.allowed,
            reasons: decided.reasons.into_vec(),
            decision_id: decided.decision_id.to_string(),
            retry_after: verdict
                .retry_after
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
        })
    }
}

fn check_correlation(id: &str, violations: &mut Vec<FieldViolation>) {
    if id.len() > MAX_CORRELATION_ID {
        violations.push(FieldViolation::new(
            "correlation_id",
            format!("at most {MAX_CORRELATION_ID} bytes"),
        ));
    }
}

fn invalid(violations: Vec<FieldViolation>) -> Status {
    ServiceError::InvalidArgument(violations).into()
}

#[tonic::async_trait]
impl GuardrailsApi for GuardrailsService {
    async fn check_navigation(
        &self,
        request: Request<NavigationRequest>,
    ) -> Result<Response<GuardrailReply>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let mut violations = Vec::new();
        check_correlation(&r.correlation_id, &mut violations);
        let verdict = self.access.guardrails().navigation(&r.url);
        let verdict = match verdict {
            Ok(v) if violations.is_empty() => v,
            Ok(_) => return Err(invalid(violations)),
            Err(v) => {
                violations.insert(0, v);
                return Err(invalid(violations));
            }
        };
        let reply = self
            .decide(
                "navigation",
                &caller,
                "web.navigate",
                r.url,
                r.correlation_id,
                verdict,
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn check_click(
        &self,
        request: Request<ClickRequest>,
    ) -> Result<Response<GuardrailReply>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let mut violations = Vec::new();
        check_correlation(&r.correlation_id, &mut violations);
        if r.target.len() > MAX_TARGET {
            violations.push(FieldViolation::new(
                "target",
                format!("at most {MAX_TARGET} bytes"),
            ));
        }
        let guardrails = self.access.guardrails();
        // Validate first, so a bad request spends no click token.
        if let Err(v) = crate::access::guardrails::host_of("url", &r.url) {
            violations.insert(0, v);
        }
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let verdict = guardrails
            .click(&caller.principal.name, &r.url, guardrails.now())
            .map_err(|v| invalid(vec![v]))?;
        let reply = self
            .decide(
                "click",
                &caller,
                "web.click",
                r.url,
                r.correlation_id,
                verdict,
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn check_form_submit(
        &self,
        request: Request<FormSubmitRequest>,
    ) -> Result<Response<GuardrailReply>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let fields: Vec<(String, String)> =
            r.fields.into_iter().map(|f| (f.name, f.value)).collect();
        let mut violations = Vec::new();
        let verdict = self.access.guardrails().form(&r.url, &fields);
        let verdict = match verdict {
            Ok(v) => v,
            Err(v) => {
                violations = v;
                Verdict {
                    allowed: false,
                    reasons: Vec::new(),
                    retry_after: None,
                    domain: String::new(),
                }
            }
        };
        check_correlation(&r.correlation_id, &mut violations);
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let reply = self
            .decide(
                "form",
                &caller,
                "web.submit",
                r.url,
                r.correlation_id,
                verdict,
            )
            .await?;
        Ok(Response::new(reply))
    }
}

/// The Guardrails service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Guardrails",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: &[
            (
                "/brainstem.v1.Guardrails/CheckNavigation",
                Requirement::Capability("guardrails.check"),
            ),
            (
                "/brainstem.v1.Guardrails/CheckClick",
                Requirement::Capability("guardrails.check"),
            ),
            (
                "/brainstem.v1.Guardrails/CheckFormSubmit",
                Requirement::Capability("guardrails.check"),
            ),
        ],
    },
    describe: crate::access::events::describe,
    setup: crate::stateless_setup!(|shared| {
        brainstem_proto::v1::guardrails_server::GuardrailsServer::new(GuardrailsService::new(
            shared.access.clone(),
        ))
    }),
};
