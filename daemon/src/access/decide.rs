//! Decide once: the one path from "may this principal take this action on this resource?" to an
//! audited answer. Policy.Check/BatchCheck, the guardrails and later services all come through here:
//!
//! 1. the check-as rule: asking about a principal other than the caller needs [`CHECK_AS`];
//! 2. the Cedar policies, for the principal with the roles its grants give it;
//! 3. merged with the built-in rules' verdict when there is one (guardrails): allowed only if both
//!    allow; the policies' reasons are kept when they deny or when everything allows;
//! 4. one audit record; an action in `[audit] fail_closed_actions` waits for its record to be on disk
//!    and is denied ([`AUDIT_UNAVAILABLE`]) when it cannot be written.
//!
//! Evaluation ([`Access::evaluate`]) and recording ([`Pending::record`]) are separate so a batch can
//! evaluate every item before it audits any; [`Access::decide`] does both.

use std::borrow::Cow;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::access::audit::{AuditKind, DecisionId, Entry};
use crate::access::caller::Caller;
use crate::access::events::WouldDeny;
use crate::access::{AUDIT_UNAVAILABLE, Access, WOULD_DENY};
use crate::error::ServiceError;
use crate::policy::{Decision, Query};

/// Capability to ask about a principal other than oneself.
pub const CHECK_AS: &str = "policy.check_as";

/// One question. Its strings may borrow the request they were read from (`Policy.Check` reads
/// them straight out of the request's bytes) or be owned.
#[derive(Debug, Clone)]
pub struct DecisionRequest<'q> {
    /// How the audit log files the decision.
    pub kind: AuditKind,
    /// The principal asked about; empty for the caller itself.
    pub principal: Cow<'q, str>,
    pub action: Cow<'q, str>,
    pub resource: Cow<'q, str>,
    pub context: Map<String, Value>,
    pub correlation_id: Cow<'q, str>,
    /// The built-in rules' verdict to combine with the policies' (guardrails); `None` when only the
    /// policies decide.
    pub rules: Option<RulesVerdict>,
}

/// What built-in rules said before the policies were asked.
#[derive(Debug, Clone, Default)]
pub struct RulesVerdict {
    pub allowed: bool,
    pub reasons: Vec<String>,
}

/// The audited answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub allowed: bool,
    pub reasons: Reasons,
    /// Policies that failed to evaluate (skipped).
    pub errors: Vec<String>,
    pub decision_id: DecisionId,
    /// Allowed only because dry-run mode made the policies' denial advisory ([`WOULD_DENY`]).
    pub advisory: bool,
}

/// A decision's reasons: most often exactly the policies' own, then shared with the cached
/// decision rather than copied for every answer; otherwise a list of their own (the built-in
/// rules' reasons, the dry-run marker, `audit-unavailable`).
#[derive(Debug, Clone)]
pub enum Reasons {
    Policy(Arc<Decision>),
    Owned(Vec<String>),
}

/// Equal when they list the same reasons, shared or not.
impl PartialEq for Reasons {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Reasons {}

impl Reasons {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Reasons::Policy(decision) => decision.reasons.clone(),
            Reasons::Owned(reasons) => reasons,
        }
    }
}

impl std::ops::Deref for Reasons {
    type Target = [String];

    fn deref(&self) -> &[String] {
        match self {
            Reasons::Policy(decision) => &decision.reasons,
            Reasons::Owned(reasons) => reasons,
        }
    }
}

/// An evaluated decision whose audit record is not written yet. It holds what the record is
/// encoded from (the query, the caller, the answer), so recording copies none of it.
#[must_use = "a decision counts only once it is recorded"]
pub struct Pending<'a> {
    access: &'a Access,
    caller: &'a Caller,
    kind: AuditKind,
    query: Query<'a>,
    allowed: bool,
    reasons: Reasons,
    decision_id: DecisionId,
    correlation_id: Cow<'a, str>,
    errors: Vec<String>,
    advisory: bool,
}

impl Access {
    /// The check-as rule: `Ok` when `principal` is empty or the caller itself, or the caller may
    /// exercise [`CHECK_AS`].
    pub fn require_check_as(&self, caller: &Caller, principal: &str) -> Result<(), ServiceError> {
        if principal.is_empty()
            || principal == caller.principal.name
            || caller.may(&self.authorizer, CHECK_AS)
        {
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied(format!(
                "asking about another principal needs capability {CHECK_AS:?}"
            )))
        }
    }

    /// The policy query for `principal` (empty: the caller), with the roles its grants give it,
    /// after the check-as rule. The strings move into the query (borrowed ones stay borrowed: no
    /// copies on the Check path).
    pub fn query<'q>(
        &self,
        caller: &'q Caller,
        principal: Cow<'q, str>,
        action: Cow<'q, str>,
        resource: Cow<'q, str>,
        context: Map<String, Value>,
    ) -> Result<Query<'q>, ServiceError> {
        self.require_check_as(caller, &principal)?;
        let principal = if principal.is_empty() {
            Cow::Borrowed(caller.principal.name.as_str())
        } else {
            principal
        };
        Ok(Query {
            roles: self.roles_of(&principal),
            principal,
            action,
            resource,
            context,
        })
    }

    /// Steps 1 to 3: the check-as rule, the policies, the rules' verdict. Nothing is audited yet.
    pub fn evaluate<'a>(
        &'a self,
        caller: &'a Caller,
        request: DecisionRequest<'a>,
    ) -> Result<Pending<'a>, ServiceError> {
        let DecisionRequest {
            kind,
            principal,
            action,
            resource,
            context,
            correlation_id,
            rules,
        } = request;
        let query = self.query(caller, principal, action, resource, context)?;
        let policy = self
            .policy
            .decide(&query)
            .map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
        let rules = rules.unwrap_or(RulesVerdict {
            allowed: true,
            reasons: Vec::new(),
        });
        // Dry-run mode: a denial only policies marked advisory determine (never file writes or
        // purchases; never the built-in rules' own) is let through and audited as would-deny.
        let advisory = !policy.allowed && policy.advisory && rules.allowed && self.dry_run();
        let allowed = (rules.allowed && policy.allowed) || advisory;
        let policy_reasons = !policy.allowed || allowed;
        let errors = policy.errors.clone();
        let reasons = if rules.reasons.is_empty() && !advisory && policy_reasons {
            Reasons::Policy(policy)
        } else {
            let mut reasons = rules.reasons;
            if advisory {
                reasons.push(WOULD_DENY.to_owned());
                WouldDeny {
                    action: &query.action,
                    policies: &policy.reasons,
                }
                .emit();
            }
            if policy_reasons {
                reasons.extend(policy.reasons.iter().cloned());
            }
            Reasons::Owned(reasons)
        };
        Ok(Pending {
            access: self,
            caller,
            kind,
            allowed,
            reasons,
            decision_id: self.audit.new_decision_id(),
            correlation_id,
            errors,
            advisory,
            query,
        })
    }

    /// Evaluates and records one decision.
    pub async fn decide<'a>(
        &'a self,
        caller: &'a Caller,
        request: DecisionRequest<'a>,
    ) -> Result<Decided, ServiceError> {
        Ok(settled(self.decide_now(caller, request)?).await)
    }

    /// [`Access::decide`] without a future unless the decision waits for its record
    /// ([`Pending::record_now`]): `Policy.Check` answers most decisions from its `call`.
    pub fn decide_now(
        &self,
        caller: &Caller,
        request: DecisionRequest<'_>,
    ) -> Result<Result<Decided, Waiting>, ServiceError> {
        Ok(self.evaluate(caller, request)?.record_now())
    }
}

/// A fail-closed decision waiting for its record to be on disk; it borrows nothing.
pub type Waiting = BoxFuture<'static, Decided>;

/// The answer of a decision answered at once (`Ok`) or once its record is written (`Err`).
pub async fn settled(answer: Result<Decided, Waiting>) -> Decided {
    match answer {
        Ok(decided) => decided,
        Err(waiting) => waiting.await,
    }
}

impl Pending<'_> {
    /// Step 4: audits the decision. A fail-closed action whose record cannot be written is denied.
    pub async fn record(self) -> Decided {
        settled(self.record_now()).await
    }

    /// Step 4 without a future when nothing waits: a decision on an action that is not
    /// fail-closed is queued for the log and answered at once (`Ok`); a fail-closed one is queued
    /// too and returns the wait for its record (`Err`), boxed (its timer and select are large)
    /// and holding only the answer, so the request it was asked from can go.
    pub fn record_now(self) -> Result<Decided, Waiting> {
        if self.access.audit.fails_closed(&self.query.action) {
            let durable = self.access.audit.queue_durable(self.entry());
            let decided = self.answer();
            return Err(Box::pin(async move {
                match durable.written().await {
                    Ok(()) => decided,
                    Err(_) => decided.unrecorded(),
                }
            }));
        }
        // A lost record is counted by the audit log; the decision stands.
        let _ = self.access.audit.record_entry(self.entry());
        Ok(self.answer())
    }

    /// The record, encoded from what the decision holds (no copies).
    fn entry(&self) -> Entry<'_> {
        Entry {
            time_unix_ms: 0,
            decision_id: self.decision_id.as_str(),
            kind: self.kind,
            caller: &self.caller.principal.name,
            principal: &self.query.principal,
            action: &self.query.action,
            resource: &self.query.resource,
            allowed: self.allowed,
            reasons: &self.reasons,
            correlation_id: &self.correlation_id,
            count: 1,
        }
    }

    /// The answer; its reasons and id move out of the decision.
    fn answer(self) -> Decided {
        let Pending {
            allowed,
            reasons,
            decision_id,
            errors,
            advisory,
            ..
        } = self;
        Decided {
            allowed,
            reasons,
            errors,
            decision_id,
            advisory,
        }
    }
}

impl Decided {
    /// The answer when its fail-closed record could not be written: an allowed decision is
    /// denied ([`AUDIT_UNAVAILABLE`]); a denial stands.
    fn unrecorded(self) -> Decided {
        if !self.allowed {
            return self;
        }
        Decided {
            allowed: false,
            advisory: false,
            reasons: Reasons::Owned(vec![AUDIT_UNAVAILABLE.to_owned()]),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::audit::AuditQuery;
    use crate::access::authz::Grants;
    use crate::access::testing::{Fixture, caller};
    use crate::config::{Config, DEV_ADMIN_PRINCIPAL};

    const AGENT: &str = "spiffe://h/agent";

    /// Dry-run mode against the shipped policies with two forbids marked advisory: `web.post`'s
    /// and the unsigned file-write rule (which must stay enforced whatever its mark says).
    #[tokio::test]
    async fn dry_run_lets_only_marked_denials_through_as_would_deny() {
        let dir = tempfile::tempdir().unwrap();
        let marked = crate::policy::builtin_policies()
            .replace(
                "@id(\"forbid-web-post\")",
                "@id(\"forbid-web-post\")\n@dry_run(\"advisory\")",
            )
            .replace(
                "@id(\"forbid-unsigned-fs-write\")",
                "@id(\"forbid-unsigned-fs-write\")\n@dry_run(\"advisory\")",
            );
        std::fs::write(dir.path().join("default.cedar"), marked).unwrap();
        std::fs::write(
            dir.path().join("schema.cedarschema"),
            crate::policy::builtin_schema(),
        )
        .unwrap();
        let mut config = Config {
            dev_mode: true,
            ..Config::default()
        };
        config.policy.dir = dir.path().display().to_string();
        let f = Fixture::with_config(config).await;
        let access = &f.access;
        let agent = caller(AGENT);
        let ask = |action: &'static str, rules| access.decide(&agent, question("", action, rules));

        // Off: the marked forbid is enforced like any other.
        let post = ask("web.post", None).await.unwrap();
        assert!(!post.allowed && !post.advisory, "{post:?}");

        access.set_dry_run(true);
        let post = ask("web.post", None).await.unwrap();
        assert!(post.allowed && post.advisory, "{post:?}");
        assert_eq!(post.reasons[..], vec![WOULD_DENY, "forbid-web-post"]);
        // Unmarked forbids, file writes (marked or not), and nothing-permits stay denied.
        for action in ["web.tweet", "fs.write", "web.purchase", "fs.delete"] {
            let d = ask(action, None).await.unwrap();
            assert!(!d.allowed && !d.advisory, "{action}: {d:?}");
        }
        // A built-in rule's own denial (guardrails) is not the policies' to soften.
        let ruled = ask(
            "web.post",
            Some(RulesVerdict {
                allowed: false,
                reasons: vec!["domain-not-allowed".into()],
            }),
        )
        .await
        .unwrap();
        assert!(!ruled.allowed && !ruled.advisory, "{ruled:?}");

        // The audit log files the advisory decision as allowed with the would-deny reason.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let (records, _) = access
                    .audit
                    .query(&AuditQuery {
                        action: "web.post".into(),
                        allowed: Some(true),
                        limit: 10,
                        ..AuditQuery::default()
                    })
                    .unwrap();
                if let Some(r) = records.first() {
                    assert_eq!(r.reasons, vec![WOULD_DENY, "forbid-web-post"]);
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the would-deny record is written");

        access.set_dry_run(false);
        assert!(!ask("web.post", None).await.unwrap().allowed);
        f.stop_audit().await;
    }

    fn question<'q>(
        principal: &'q str,
        action: &'q str,
        rules: Option<RulesVerdict>,
    ) -> DecisionRequest<'q> {
        DecisionRequest {
            kind: AuditKind::Policy,
            principal: principal.into(),
            action: action.into(),
            resource: "https://docs.rs/".into(),
            context: Map::new(),
            correlation_id: "c-1".into(),
            rules,
        }
    }

    #[tokio::test]
    async fn check_as_is_needed_to_ask_about_someone_else() {
        let f = Fixture::new().await;
        let agent = caller(AGENT);
        let err = f
            .access
            .decide(&agent, question(DEV_ADMIN_PRINCIPAL, "fs.read", None))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ServiceError::PermissionDenied(m) if m.contains(CHECK_AS)),
            "{err:?}"
        );
        // About oneself, named or not, no extra capability is needed.
        for principal in ["", AGENT] {
            let decided = f
                .access
                .decide(&agent, question(principal, "fs.read", None))
                .await
                .unwrap();
            assert!(decided.allowed, "{decided:?}");
        }
        // The dev admin holds `*`, so it may ask about the agent.
        let admin = caller(DEV_ADMIN_PRINCIPAL);
        assert!(
            f.access
                .decide(&admin, question(AGENT, "web.post", None))
                .await
                .is_ok()
        );
        f.stop_audit().await;
        // Every decision was audited, with the caller and the principal asked about.
        let (records, _) = f.access.audit.query(&AuditQuery::default()).unwrap();
        let last = records.last().unwrap();
        assert_eq!(
            (last.caller.as_str(), last.principal.as_str(), last.allowed),
            (DEV_ADMIN_PRINCIPAL, AGENT, false)
        );
        assert_eq!(last.reasons, ["forbid-web-post"]);
        assert_eq!(records.len(), 3, "the refused check-as is not a decision");
    }

    #[tokio::test]
    async fn the_rules_verdict_merges_with_the_policies() {
        let f = Fixture::new().await;
        let agent = caller(AGENT);
        let refused_by_rules = RulesVerdict {
            allowed: false,
            reasons: vec!["guardrail-domain-safelist".to_owned()],
        };
        let decided = f
            .access
            .decide(&agent, question("", "fs.read", Some(refused_by_rules)))
            .await
            .unwrap();
        // The policies allowed, so only the rule that refused is given.
        assert!(!decided.allowed);
        assert_eq!(decided.reasons[..], ["guardrail-domain-safelist"]);
        assert!(matches!(decided.reasons, Reasons::Owned(_)));
        let passed = RulesVerdict {
            allowed: true,
            reasons: vec![],
        };
        let decided = f
            .access
            .decide(&agent, question("", "web.post", Some(passed)))
            .await
            .unwrap();
        assert!(!decided.allowed);
        assert_eq!(decided.reasons[..], ["forbid-web-post"]);

        // Without a rules' verdict the policies' reasons are the cached decision's, shared rather
        // than copied into every answer.
        let ask = || f.access.decide(&agent, question("", "web.post", None));
        let (first, second) = (ask().await.unwrap(), ask().await.unwrap());
        assert_eq!(first.reasons[..], ["forbid-web-post"]);
        match (&first.reasons, &second.reasons) {
            (Reasons::Policy(a), Reasons::Policy(b)) => assert!(Arc::ptr_eq(a, b)),
            other => panic!("copied reasons: {other:?}"),
        }
        assert_eq!(first.reasons.clone().into_vec(), ["forbid-web-post"]);
        // Compared by what they list, shared or not.
        assert_eq!(
            first.reasons,
            Reasons::Owned(vec!["forbid-web-post".to_owned()])
        );
        assert_ne!(first.reasons, Reasons::Owned(Vec::new()));
        f.stop_audit().await;
    }

    #[tokio::test]
    async fn a_fail_closed_decision_is_denied_when_its_record_cannot_be_written() {
        let f = Fixture::new().await;
        let agent = caller(AGENT);
        let written = f
            .access
            .decide(&agent, question("", "web.read", None))
            .await
            .unwrap();
        assert!(written.allowed, "{written:?}");
        f.stop_audit().await;
        let lost = f
            .access
            .decide(&agent, question("", "web.read", None))
            .await
            .unwrap();
        assert!(!lost.allowed);
        assert_eq!(lost.reasons[..], [AUDIT_UNAVAILABLE]);
        assert_ne!(lost.decision_id, written.decision_id);
        // Not fail-closed: the decision stands though its record is lost.
        let stands = f
            .access
            .decide(&agent, question("", "fs.read", None))
            .await
            .unwrap();
        assert!(stands.allowed);
        // A denial stays a denial with its own reasons.
        let denied = f
            .access
            .decide(&agent, question("", "web.post", None))
            .await
            .unwrap();
        assert_eq!(denied.reasons[..], ["forbid-web-post"]);
    }

    #[tokio::test]
    async fn a_resource_outside_the_scope_is_refused_and_audited() {
        let f = Fixture::new().await;
        let config = crate::config::parse(
            "t",
            r#"
            [[grants]]
            principal = "spiffe://h/agent"
            capabilities = ["secrets.read:/agents/web/*"]
            "#,
        )
        .unwrap();
        f.access.authorizer.replace(Grants::from_config(&config));
        let agent = caller(AGENT);
        assert!(
            f.access
                .require_scope(&agent, "secrets.read", "/agents/web/key")
                .is_ok()
        );
        let err = f
            .access
            .require_scope(&agent, "secrets.read", "/agents/db/key")
            .unwrap_err();
        assert!(matches!(err, ServiceError::PermissionDenied(_)), "{err:?}");
        f.stop_audit().await;
        let (records, _) = f.access.audit.query(&AuditQuery::default()).unwrap();
        assert_eq!(
            records.len(),
            1,
            "only the refusal is recorded: {records:?}"
        );
        let refusal = &records[0];
        assert_eq!(
            (
                refusal.kind,
                refusal.principal.as_str(),
                refusal.action.as_str(),
                refusal.resource.as_str(),
                refusal.allowed
            ),
            (
                AuditKind::Access,
                AGENT,
                "secrets.read",
                "/agents/db/key",
                false
            )
        );
        assert_eq!(refusal.reasons[..], ["outside-scope"]);
    }
}
