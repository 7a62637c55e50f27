//! Authorization end to end: every method refuses an ungranted principal, Policy decisions and their
//! audit trail, rate limits, policy hot reload, guardrails.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use brainstem_client::v1::{
    AuditQueryRequest, BatchCheckRequest, CheckRequest, ClickRequest, FormField, FormSubmitRequest,
    GetPolicySetRequest, NavigationRequest, ValidateRequest,
};
use brainstemd::ReloadOutcome;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{eventually, options_for, violations, wait_for_audit};
use crate::inprocess::InProcess;

const DEFAULT_POLICIES: &str = include_str!("../../config/policies/default.cedar");
const SCHEMA: &str = include_str!("../../config/policies/schema.cedarschema");

fn check(action: &str) -> CheckRequest {
    CheckRequest {
        action: action.to_owned(),
        resource: "https://example.org/x".to_owned(),
        ..Default::default()
    }
}

fn context(pairs: &[(&str, prost_types::value::Kind)]) -> prost_types::Struct {
    prost_types::Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    prost_types::Value {
                        kind: Some(v.clone()),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Every `brainstem.v1` method in the compiled descriptor set, as `/pkg.Service/Method`.
fn all_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(brainstem_proto::v1::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    methods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_refuses_a_principal_without_the_grant() {
    let daemon = InProcess::start("", "").await;
    let stranger = options_for(
        &daemon.state_dir,
        daemon.addr(),
        "spiffe://brainstem.dev/stranger",
    );
    let client = stranger.connect().await.unwrap();
    let methods = all_methods();
    assert!(methods.len() >= 12, "{methods:?}");
    for path in &methods {
        let mut grpc = tonic::client::Grpc::new(client.channel.clone());
        grpc.ready().await.unwrap();
        let result = grpc
            .unary(
                tonic::Request::new(()),
                tonic::codegen::http::uri::PathAndQuery::from_str(path).unwrap(),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await;
        let open = path == "/brainstem.v1.Admin/Ping" || path == "/brainstem.v1.Admin/WhoAmI";
        match result {
            Ok(_) => assert!(open, "{path} answered an ungranted principal"),
            Err(status) => {
                assert!(!open, "{path}: {status:?}");
                assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
            }
        }
    }
    // Each refusal is in the audit log, under the stranger's name — except that the layer keeps at
    // most REFUSAL_KEYS_PER_SECOND distinct refusals a second, folding the rest into one
    // `refusal-budget-exceeded` record with their count (there are more methods than that budget,
    // so a fast run folds some). Either way every refusal is counted exactly once.
    let admin = daemon.admin().connect().await.unwrap();
    let expected = methods.len() - 2;
    let query = |principal: &str| AuditQueryRequest {
        kind: "access".into(),
        principal: principal.into(),
        limit: 1000,
        ..Default::default()
    };
    let (refused, folded) = eventually(
        &format!("{expected} refusals audited"),
        Duration::from_secs(10),
        || {
            let mut audit = admin.audit.clone();
            let (mine, all) = (query("spiffe://brainstem.dev/stranger"), query("*"));
            async move {
                let refused = audit.query(mine).await.ok()?.into_inner().records;
                let folded: u64 = audit
                    .query(all)
                    .await
                    .ok()?
                    .into_inner()
                    .records
                    .iter()
                    .filter(|r| {
                        r.reasons
                            .first()
                            .is_some_and(|x| x == "refusal-budget-exceeded")
                    })
                    // The count of an aggregated record is its `count=N` reason (absent: 1).
                    .map(|r| {
                        r.reasons
                            .iter()
                            .find_map(|x| x.strip_prefix("count=")?.parse::<u64>().ok())
                            .unwrap_or(1)
                    })
                    .sum();
                (refused.len() as u64 + folded == expected as u64).then_some((refused, folded))
            }
        },
    )
    .await;
    assert!(
        refused.len() >= brainstemd::access::audit::REFUSAL_KEYS_PER_SECOND.min(expected),
        "{} own records, {folded} folded",
        refused.len()
    );
    assert!(
        refused
            .iter()
            .all(|r| !r.allowed && r.reasons == ["missing-capability"])
    );
    let mut admin = admin;
    let _ = admin
        .admin
        .ping(brainstem_client::v1::PingRequest::default())
        .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_check_contract_and_audit_trail() {
    let daemon = InProcess::start(
        "",
        r#"
[roles]
admin = ["*"]
checker = ["policy.check"]
[[grants]]
principal = "spiffe://brainstem.dev/checker"
roles = ["checker"]
"#,
    )
    .await;
    let mut admin = daemon.admin().connect().await.unwrap();

    let post = admin
        .policy
        .check(check("web.post"))
        .await
        .unwrap()
        .into_inner();
    assert!(!post.allowed);
    assert_eq!(post.reasons, ["forbid-web-post"]);
    assert_eq!(post.decision_id.len(), 20);
    let capture = admin
        .policy
        .check(check("vision.capture"))
        .await
        .unwrap()
        .into_inner();
    assert!(capture.allowed);
    assert_eq!(capture.reasons, ["permit-vision-capture"]);
    assert_ne!(capture.decision_id, post.decision_id);
    let unknown = admin
        .policy
        .check(check("net.scan"))
        .await
        .unwrap()
        .into_inner();
    // Default deny; an action no schema entry or policy knows is marked (a typo reads differently).
    assert!(
        !unknown.allowed && unknown.reasons == ["unknown-action"],
        "default deny: {unknown:?}"
    );
    let write = admin
        .policy
        .check(check("fs.write"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(write.reasons, ["forbid-unsigned-fs-write"]);

    // Context passes through; floats, nulls and the reserved key are refused by field.
    use prost_types::value::Kind;
    let mut with_context = check("ml.train");
    with_context.context = Some(context(&[
        ("hour", Kind::NumberValue(10.0)),
        ("tags", Kind::StringValue("x".into())),
    ]));
    assert!(
        admin
            .policy
            .check(with_context)
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let mut bad = check("Web.Post");
    bad.context = Some(context(&[
        ("ratio", Kind::NumberValue(0.5)),
        ("signed_permit", Kind::BoolValue(true)),
    ]));
    let mut fields = violations(&admin.policy.check(bad).await.unwrap_err());
    fields.sort();
    assert_eq!(fields, ["action", "context.ratio", "context.signed_permit"]);
    assert_eq!(
        violations(&admin.policy.check(check("")).await.unwrap_err()),
        ["action"]
    );

    // Asking about someone else needs policy.check_as: the admin has it, the checker does not.
    let checker_opts = options_for(
        &daemon.state_dir,
        daemon.addr(),
        "spiffe://brainstem.dev/checker",
    );
    let mut checker = checker_opts.connect().await.unwrap();
    let mut on_behalf = check("vision.capture");
    on_behalf.principal = "spiffe://brainstem.dev/other".into();
    assert!(
        admin
            .policy
            .check(on_behalf.clone())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let denied = checker.policy.check(on_behalf).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("policy.check_as"),
        "{}",
        denied.message()
    );
    let own = checker
        .policy
        .check(check("vision.capture"))
        .await
        .unwrap()
        .into_inner();
    assert!(own.allowed);
    // The checker may check, not explain.
    assert_eq!(
        checker
            .policy
            .explain(check("web.post"))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // BatchCheck: answers in order; a bad item is named by index; size is bounded.
    let items: Vec<_> = (0..100)
        .map(|i| check(if i % 2 == 0 { "web.post" } else { "web.read" }))
        .collect();
    let batch = admin
        .policy
        .batch_check(BatchCheckRequest { items })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 100);
    assert!(
        batch
            .results
            .iter()
            .enumerate()
            .all(|(i, r)| r.allowed == (i % 2 == 1))
    );
    let bad_batch = BatchCheckRequest {
        items: vec![check("web.read"), check("web..read")],
    };
    assert_eq!(
        violations(&admin.policy.batch_check(bad_batch).await.unwrap_err()),
        ["items[1].action"]
    );
    assert_eq!(
        violations(
            &admin
                .policy
                .batch_check(BatchCheckRequest::default())
                .await
                .unwrap_err()
        ),
        ["items"]
    );

    // Explain shows every match.
    let explained = admin
        .policy
        .explain(check("web.post"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.matched_forbids, ["forbid-web-post"]);
    assert_eq!(explained.action_parents, [r#"Action::"web""#]);
    assert!(!explained.policy_set_digest.is_empty());

    // Validate, without applying.
    let ok = admin
        .policy
        .validate(ValidateRequest {
            policies: DEFAULT_POLICIES.into(),
            schema: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.valid && ok.policy_count == 12, "{ok:?}");
    let broken = admin
        .policy
        .validate(ValidateRequest {
            policies: "@id(\"x\") permit (principal, action == Action::\"nope\", resource);".into(),
            schema: SCHEMA.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !broken.valid && broken.errors.iter().any(|e| e.contains("nope")),
        "{broken:?}"
    );

    // Every decision is in the audit log with its decision id; explain is not.
    let records = wait_for_audit(
        &admin,
        AuditQueryRequest {
            kind: "policy".into(),
            limit: 1000,
            ..Default::default()
        },
        107,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(records.len(), 107);
    assert_eq!(records[0].decision_id, post.decision_id);
    assert_eq!(records[0].action, "web.post");
    assert!(!records[0].allowed);
    assert_eq!(
        records[0].principal,
        brainstemd::config::DEV_ADMIN_PRINCIPAL
    );
    let denied_web = admin
        .audit
        .query(AuditQueryRequest {
            action: "web".into(),
            only_denied: true,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied_web.records.len(), 51);
    assert_eq!(
        violations(
            &admin
                .audit
                .query(AuditQueryRequest {
                    kind: "bogus".into(),
                    limit: 5000,
                    ..Default::default()
                })
                .await
                .unwrap_err()
        ),
        ["limit", "kind"]
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_resource_exhausted_with_retry_info() {
    let daemon = InProcess::start(
        "",
        r#"
[[rate_limits]]
methods = ["/brainstem.v1.Policy/Explain"]
per_minute = 1
burst = 2
"#,
    )
    .await;
    let mut admin = daemon.admin().connect().await.unwrap();
    // One token a minute: the bucket cannot refill during any plausible run of this test, and the
    // wait is checked against the time the calls really took, so a slow machine cannot fail it.
    let started = std::time::Instant::now();
    for _ in 0..2 {
        admin.policy.explain(check("web.read")).await.unwrap();
    }
    let status = admin.policy.explain(check("web.read")).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status
        .get_error_details()
        .retry_info()
        .cloned()
        .expect("RetryInfo");
    let delay = retry.retry_delay.expect("a delay");
    // A full minute less whatever refilled between the first call and the refusal.
    let refill = Duration::from_secs(60);
    assert!(
        delay <= refill && delay + Duration::from_millis(1) >= refill.saturating_sub(elapsed),
        "{delay:?} after {elapsed:?}"
    );
    // Other methods are not limited.
    for _ in 0..5 {
        admin.policy.check(check("web.read")).await.unwrap();
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_directory_hot_reload_refuses_invalid_sets() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(policies.path().join("default.cedar"), DEFAULT_POLICIES).unwrap();
    let rest = format!(
        "[policy]\ndir = {:?}\nwatch_interval_seconds = 1\n",
        policies.path().display().to_string()
    );
    let daemon = InProcess::start("", &rest).await;
    let mut admin = daemon.admin().connect().await.unwrap();
    let before = admin
        .policy
        .get_policy_set(GetPolicySetRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.policies.len(), 12);
    assert!(before.last_reload_error.is_empty());

    // A broken file is noticed and refused; the old set keeps deciding.
    std::fs::write(policies.path().join("extra.cedar"), "@id(\"x\") permit (").unwrap();
    let refused = eventually("broken set refused", Duration::from_secs(15), || {
        let mut policy = admin.policy.clone();
        async move {
            let set = policy
                .get_policy_set(GetPolicySetRequest {})
                .await
                .ok()?
                .into_inner();
            (!set.last_reload_error.is_empty()).then_some(set)
        }
    })
    .await;
    assert_eq!(refused.digest, before.digest);
    assert!(
        refused.last_reload_error.contains("extra.cedar"),
        "{}",
        refused.last_reload_error
    );
    assert!(
        admin
            .policy
            .check(check("vision.capture"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // SIGHUP refuses it too, and says why.
    match daemon.reload().await {
        ReloadOutcome::Refused(reason) => assert!(reason.contains("extra.cedar"), "{reason}"),
        ReloadOutcome::Applied => panic!("an invalid policy set was applied"),
    }

    // A valid change is applied.
    std::fs::write(
        policies.path().join("extra.cedar"),
        "@id(\"no-capture\") forbid (principal, action == Action::\"vision.capture\", resource);",
    )
    .unwrap();
    let applied = eventually("valid set applied", Duration::from_secs(15), || {
        let mut policy = admin.policy.clone();
        async move {
            let set = policy
                .get_policy_set(GetPolicySetRequest {})
                .await
                .ok()?
                .into_inner();
            (set.policies.len() == 13).then_some(set)
        }
    })
    .await;
    assert!(applied.last_reload_error.is_empty());
    let capture = admin
        .policy
        .check(check("vision.capture"))
        .await
        .unwrap()
        .into_inner();
    assert!(!capture.allowed);
    assert_eq!(capture.reasons, ["no-capture"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrails_over_grpc() {
    let daemon = InProcess::start(
        "",
        "[guardrails]\nallowed_domains = [\"docs.rs\", \"*.example.org\"]\nclicks_per_minute = 1\n",
    )
    .await;
    let mut admin = daemon.admin().connect().await.unwrap();
    let g = &mut admin.guardrails;
    let nav = |url: &str| NavigationRequest {
        url: url.into(),
        correlation_id: "c-1".into(),
    };
    let ok = g
        .check_navigation(nav("https://docs.rs/tokio"))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.reasons, ["permit-web-automation"]);
    let off = g
        .check_navigation(nav("https://evil.com/"))
        .await
        .unwrap()
        .into_inner();
    assert!(!off.allowed);
    assert_eq!(off.reasons, ["guardrail-domain-safelist"]);
    assert_eq!(
        violations(&g.check_navigation(nav("ftp://docs.rs/")).await.unwrap_err()),
        ["url"]
    );

    let click = |url: &str| ClickRequest {
        url: url.into(),
        target: "#next".into(),
        correlation_id: String::new(),
    };
    // One click a minute (the bucket holds one): no plausible run of this test refills it, and the
    // wait is checked against the time the calls really took.
    let started = std::time::Instant::now();
    assert!(
        g.check_click(click("https://a.example.org/"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let limited = g
        .check_click(click("https://a.example.org/"))
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    assert!(!limited.allowed);
    assert_eq!(limited.reasons, ["guardrail-click-rate"]);
    let wait = Duration::try_from(limited.retry_after.expect("retry_after")).unwrap();
    let refill = Duration::from_secs(60);
    assert!(
        wait <= refill && wait + Duration::from_millis(1) >= refill.saturating_sub(elapsed),
        "{wait:?} after {elapsed:?}"
    );
    assert!(
        g.check_click(click("https://docs.rs/"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    let form = |fields: &[(&str, &str)]| FormSubmitRequest {
        url: "https://docs.rs/search".into(),
        fields: fields
            .iter()
            .map(|(n, v)| FormField {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
        correlation_id: String::new(),
    };
    assert!(
        g.check_form_submit(form(&[("q", "tokio"), ("csrf_token", "t")]))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let buy = g
        .check_form_submit(form(&[("action", "buy"), ("q", "x")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        buy.reasons,
        ["guardrail-dangerous-field", "guardrail-csrf-missing"]
    );
    assert_eq!(
        violations(&g.check_form_submit(form(&[("", "x")])).await.unwrap_err()),
        ["fields[0].name"]
    );
    daemon.stop().await;
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii header"),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presented_token_narrows_the_caller() {
    let daemon = InProcess::start(
        "",
        r#"
[roles]
admin = ["*"]
agent = ["policy.check", "policy.explain", "tokens.issue"]
[[grants]]
principal = "spiffe://brainstem.dev/agent"
roles = ["agent"]
"#,
    )
    .await;
    let opts = options_for(
        &daemon.state_dir,
        daemon.addr(),
        "spiffe://brainstem.dev/agent",
    );
    let mut agent = opts.connect().await.unwrap();
    let issued = agent
        .tokens
        .issue(brainstem_client::v1::IssueTokenRequest {
            principal: "spiffe://brainstem.dev/agent".into(),
            capabilities: vec!["policy.check".into()],
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();

    // Without the token the agent may explain; with it, only check.
    agent.policy.explain(check("web.read")).await.unwrap();
    let narrowed = agent
        .policy
        .explain(with_token(check("web.read"), &issued.token))
        .await
        .unwrap_err();
    assert_eq!(narrowed.code(), Code::PermissionDenied);
    assert!(
        narrowed.message().contains("token does not cover"),
        "{}",
        narrowed.message()
    );
    let allowed = agent
        .policy
        .check(with_token(check("web.read"), &issued.token))
        .await
        .unwrap()
        .into_inner();
    assert!(allowed.allowed);

    // With the token, it cannot mint a token wider than the token.
    let wider = agent
        .tokens
        .issue(with_token(
            brainstem_client::v1::IssueTokenRequest {
                principal: "spiffe://brainstem.dev/agent".into(),
                capabilities: vec!["policy.explain".into()],
                ttl_seconds: 60,
            },
            &issued.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(wider.code(), Code::PermissionDenied, "{wider:?}");

    // A damaged token, a header that is not a bearer token, and someone else's token are refused.
    let mut damaged = issued.token.clone();
    damaged.pop();
    for token in [damaged.as_str(), "garbage"] {
        let refused = agent
            .policy
            .check(with_token(check("web.read"), token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused.message().contains("capability token refused"),
            "{}",
            refused.message()
        );
    }
    let mut basic = tonic::Request::new(check("web.read"));
    basic
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    assert_eq!(
        agent.policy.check(basic).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut admin = daemon.admin().connect().await.unwrap();
    let refused = admin
        .policy
        .check(with_token(check("web.read"), &issued.token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Revoked, the token stops working at once.
    admin
        .tokens
        .revoke(brainstem_client::v1::RevokeTokenRequest {
            id: issued.id.clone(),
        })
        .await
        .unwrap();
    let revoked = agent
        .policy
        .check(with_token(check("web.read"), &issued.token))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::PermissionDenied);
    daemon.stop().await;
}
