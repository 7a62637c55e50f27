//! Capability tokens over mutual TLS against the real binary: Issue, Verify, Attenuate, List, Revoke
//! with the dev admin; revocations across a restart; refusals for a principal without grants.

use brainstem_client::Client;
use brainstem_client::v1::{
    AttenuateTokenRequest, IssueTokenRequest, ListTokensRequest, RevokeTokenRequest,
    RotateKeyRequest, VerifyTokenRequest,
};
use tonic::Code;

use crate::harness::{DaemonProcess, http_get, options_for};

const WEB: &str = "spiffe://brainstem.dev/agent/web";

async fn verify(client: &mut Client, token: &str, capability: &str) -> (bool, String) {
    let reply = client
        .tokens
        .verify(VerifyTokenRequest {
            token: token.to_owned(),
            capability: capability.to_owned(),
        })
        .await
        .expect("Verify answers valid=false rather than failing")
        .into_inner();
    (reply.valid, reply.reason)
}

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = tonic_types::StatusExt::get_error_details(status);
    details
        .bad_request()
        .expect("BadRequest detail")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_verify_attenuate_list_revoke_over_mtls_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;

    let parent = client
        .tokens
        .issue(IssueTokenRequest {
            principal: WEB.to_owned(),
            capabilities: vec!["vision.*".to_owned(), "web.read".to_owned()],
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(parent.token.starts_with("bst1.k1."), "{}", parent.token);
    assert!(parent.expires_at.is_some());

    assert_eq!(
        verify(&mut client, &parent.token, "vision.capture").await,
        (true, String::new())
    );
    let (valid, reason) = verify(&mut client, &parent.token, "web.post").await;
    assert!(!valid);
    assert!(reason.starts_with("not_covered: "), "{reason}");
    let (valid, reason) = verify(&mut client, "bst1.k1.garbage", "").await;
    assert!(!valid);
    assert!(reason.starts_with("malformed: "), "{reason}");
    let mut tampered = parent.token.clone();
    tampered.pop();
    let (valid, reason) = verify(&mut client, &tampered, "").await;
    assert!(!valid && !reason.is_empty(), "{reason}");

    let child = client
        .tokens
        .attenuate(AttenuateTokenRequest {
            token: parent.token.clone(),
            capabilities: vec!["vision.capture".to_owned()],
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(child.parent_id, parent.id);
    assert!(verify(&mut client, &child.token, "vision.capture").await.0);
    assert!(!verify(&mut client, &child.token, "web.read").await.0);
    let widen = client
        .tokens
        .attenuate(AttenuateTokenRequest {
            token: child.token.clone(),
            capabilities: vec!["vision.*".to_owned()],
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(widen.code(), Code::PermissionDenied, "{widen:?}");
    let outlive = client
        .tokens
        .attenuate(AttenuateTokenRequest {
            token: child.token.clone(),
            capabilities: vec!["vision.capture".to_owned()],
            ttl_seconds: 3600,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&outlive), ["ttl_seconds"]);

    // Bad input names its fields.
    let err = client
        .tokens
        .issue(IssueTokenRequest {
            principal: String::new(),
            capabilities: vec!["Not A Pattern".to_owned()],
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&err),
        ["principal", "capabilities[0]", "ttl_seconds"]
    );
    let err = client
        .tokens
        .issue(IssueTokenRequest {
            principal: WEB.to_owned(),
            capabilities: vec!["web.read".to_owned()],
            ttl_seconds: 10_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["ttl_seconds"]);

    let listed = client
        .tokens
        .list(ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let mut ids: Vec<_> = listed.iter().map(|t| t.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = [parent.id.as_str(), child.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let listed_child = listed.iter().find(|t| t.id == child.id).unwrap();
    assert_eq!(listed_child.parent_ids, std::slice::from_ref(&parent.id));
    assert_eq!(listed_child.principal, WEB);
    assert!(listed.iter().all(|t| !t.revoked));

    let revoked = client
        .tokens
        .revoke(RevokeTokenRequest {
            id: parent.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((revoked.already_revoked, revoked.descendants), (false, 1));
    for token in [&parent.token, &child.token] {
        let (valid, reason) = verify(&mut client, token, "").await;
        assert!(!valid);
        assert!(reason.starts_with("revoked: "), "{reason}");
    }
    let missing = client
        .tokens
        .revoke(RevokeTokenRequest { id: "0".repeat(32) })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    let (code, metrics) = http_get(daemon.metrics_addr, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "brainstem_tokens_issued_total",
        "brainstem_tokens_verified_total",
        "brainstem_tokens_rejected_total{reason=\"revoked\"}",
        "brainstem_tokens_revoked_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // Keys and revocations survive a restart.
    let rotated = client
        .tokens
        .rotate_key(RotateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.key_id, "k2");
    let survivor = client
        .tokens
        .issue(IssueTokenRequest {
            principal: WEB.to_owned(),
            capabilities: vec!["web.read".to_owned()],
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    drop(client);
    daemon.stop().await;
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    let (valid, reason) = verify(&mut client, &child.token, "vision.capture").await;
    assert!(!valid && reason.starts_with("revoked: "), "{reason}");
    assert!(verify(&mut client, &survivor.token, "web.read").await.0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_without_grants_is_denied_every_tokens_method() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let admin_token = daemon
        .client()
        .await
        .tokens
        .issue(IssueTokenRequest {
            principal: WEB.to_owned(),
            capabilities: vec!["web.read".to_owned()],
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let mut client = options_for(&daemon.state_dir, daemon.grpc_addr, WEB)
        .connect()
        .await
        .unwrap();
    let t = &mut client.tokens;
    let results = [
        (
            "Issue",
            t.issue(IssueTokenRequest {
                principal: WEB.to_owned(),
                capabilities: vec!["web.read".to_owned()],
                ttl_seconds: 60,
            })
            .await
            .map(drop),
        ),
        (
            "Verify",
            t.verify(VerifyTokenRequest {
                token: admin_token.token.clone(),
                capability: String::new(),
            })
            .await
            .map(drop),
        ),
        (
            "Revoke",
            t.revoke(RevokeTokenRequest {
                id: admin_token.id.clone(),
            })
            .await
            .map(drop),
        ),
        ("List", t.list(ListTokensRequest::default()).await.map(drop)),
        (
            "Attenuate",
            t.attenuate(AttenuateTokenRequest {
                token: admin_token.token.clone(),
                capabilities: vec!["web.read".to_owned()],
                ttl_seconds: 0,
            })
            .await
            .map(drop),
        ),
        (
            "RotateKey",
            t.rotate_key(RotateKeyRequest {}).await.map(drop),
        ),
    ];
    for (method, result) in results {
        let status = result.expect_err(method);
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{method}: {status:?}"
        );
        assert!(status.message().contains("tokens."), "{method}: {status:?}");
    }
    daemon.stop().await;
}
