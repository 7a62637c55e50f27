//! Secrets over mutual TLS against the real daemon: Vault KV v2 semantics and their errors, path
//! scopes, Watch without values, audit with the correlation id, acknowledged puts surviving kill -9,
//! a wrong master key refused at start, and no value in any log line, audit record or error.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use brainstem_client::v1::{
    AuditQueryRequest, GetSecretRequest, ListSecretsRequest, PutSecretRequest, RotateSecretRequest,
    SecretMetadataRequest, SecretVersionsRequest, UpdateSecretMetadataRequest, WatchSecretsRequest,
};
use tonic::Code;

use crate::harness::{DaemonProcess, eventually, options_for, violations, wait_for_audit};

const WEB: &str = "spiffe://brainstem.dev/agent/web";

/// A config that grants the web agent read and write below /agents/web/ only.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("brainstemd.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[roles]
admin = ["*"]
web = ["secrets.read:/agents/web/*", "secrets.write:/agents/web/*"]
[[grants]]
principal = "{WEB}"
roles = ["web"]
"#
        ),
    )
    .unwrap();
    path
}

async fn start(dir: &Path) -> DaemonProcess {
    let config = write_config(dir);
    // Debug logging: more lines that could leak a value.
    DaemonProcess::start_logging(dir, &[OsStr::new("--config"), config.as_os_str()], "debug").await
}

fn put(path: &str, value: &[u8], cas: Option<u64>) -> PutSecretRequest {
    PutSecretRequest {
        path: path.into(),
        value: value.to_vec(),
        cas,
        ..Default::default()
    }
}

fn get(path: &str, version: Option<u64>) -> GetSecretRequest {
    GetSecretRequest {
        path: path.into(),
        version,
    }
}

fn with_request_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

const VALUE_1: &[u8] = b"pg-password-0xA1B2C3-first";
const VALUE_2: &[u8] = b"pg-password-0xD4E5F6-second";
const OTHER: &[u8] = b"other-team-api-key-77aa";

/// Every error a caller gets, collected so the test can check none of them holds a value.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn expect(
        &mut self,
        result: Result<impl std::fmt::Debug, tonic::Status>,
        code: Code,
        needle: &str,
    ) -> tonic::Status {
        let status = result.expect_err("expected an error");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{:?} does not mention {needle:?}",
            status.message()
        );
        self.0.push(format!("{status:?} {:?}", status.details()));
        status
    }
}

fn assert_no_value(text: &str, what: &str) {
    for value in [VALUE_1, VALUE_2, OTHER] {
        let value = std::str::from_utf8(value).unwrap();
        assert!(!text.contains(value), "{what} holds a secret value: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_follow_kv_v2_with_scopes_and_no_value_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path()).await;
    let mut admin = daemon.client().await;
    let mut web = options_for(&daemon.state_dir, daemon.grpc_addr, WEB)
        .connect()
        .await
        .unwrap();
    let mut errors = Errors::default();

    // Watch before writing: the web agent follows its folder.
    let mut watch = web
        .secrets
        .watch(WatchSecretsRequest {
            prefix: "/agents/web".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let v1 = admin
        .secrets
        .put(with_request_id(
            put("/agents/web/db", VALUE_1, Some(0)),
            "req-42",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.version, 1);
    admin
        .secrets
        .put(put("/agents/other/key", OTHER, None))
        .await
        .unwrap();

    // The web agent reads its own secret, and nothing outside its folder.
    let got = web
        .secrets
        .get(get("agents/web/db", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.value.as_slice(), got.version), (VALUE_1, 1));
    errors.expect(
        web.secrets.get(get("/agents/other/key", None)).await,
        Code::PermissionDenied,
        "secrets.read",
    );
    errors.expect(
        web.secrets
            .put(put("/agents/other/key", b"overwrite-attempt", None))
            .await,
        Code::PermissionDenied,
        "secrets.write",
    );
    let listed = web
        .secrets
        .list(ListSecretsRequest {
            prefix: "/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.paths, vec!["/agents/web/db"]);

    // Check-and-set names the current version; a refused write changes nothing.
    let status = errors.expect(
        web.secrets
            .put(put("/agents/web/db", VALUE_2, Some(7)))
            .await,
        Code::FailedPrecondition,
        "is 1, not 7",
    );
    assert_no_value(status.message(), "a CAS error");
    assert_eq!(
        web.secrets
            .put(put("/agents/web/db", VALUE_2, Some(1)))
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );

    // Soft delete, undelete, destroy (admin only) and their NOT_FOUND states.
    web.secrets
        .delete(SecretVersionsRequest {
            path: "/agents/web/db".into(),
            versions: vec![2],
        })
        .await
        .unwrap();
    errors.expect(
        web.secrets.get(get("/agents/web/db", None)).await,
        Code::NotFound,
        "version 2 of /agents/web/db is deleted",
    );
    errors.expect(
        web.secrets
            .destroy(SecretVersionsRequest {
                path: "/agents/web/db".into(),
                versions: vec![1],
            })
            .await,
        Code::PermissionDenied,
        "secrets.admin",
    );
    admin
        .secrets
        .destroy(SecretVersionsRequest {
            path: "/agents/web/db".into(),
            versions: vec![1],
        })
        .await
        .unwrap();
    errors.expect(
        web.secrets.get(get("/agents/web/db", Some(1))).await,
        Code::NotFound,
        "is destroyed",
    );
    web.secrets
        .undelete(SecretVersionsRequest {
            path: "/agents/web/db".into(),
            versions: vec![2],
        })
        .await
        .unwrap();
    assert_eq!(
        web.secrets
            .get(get("/agents/web/db", None))
            .await
            .unwrap()
            .into_inner()
            .value,
        VALUE_2
    );
    let meta = web
        .secrets
        .metadata(SecretMetadataRequest {
            path: "/agents/web/db".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let states: Vec<(u64, bool, bool)> = meta
        .versions
        .iter()
        .map(|v| (v.version, v.deleted, v.destroyed))
        .collect();
    assert_eq!(states, vec![(1, false, true), (2, false, false)]);
    assert_eq!((meta.current_version, meta.max_versions), (2, 10));
    errors.expect(
        web.secrets.get(get("/agents/web/missing", None)).await,
        Code::NotFound,
        "does not exist",
    );

    // Bad input names the field.
    let status = errors.expect(
        web.secrets.put(put("/agents/web/../db", b"x", None)).await,
        Code::InvalidArgument,
        "path",
    );
    assert!(
        violations(&status).iter().any(|v| v.starts_with("path")),
        "{:?}",
        violations(&status)
    );
    let status = errors.expect(
        web.secrets
            .put(put("/agents/web/big", &vec![b'x'; 600 * 1024], None))
            .await,
        Code::InvalidArgument,
        "max_value_bytes",
    );
    assert!(violations(&status).iter().any(|v| v.starts_with("value")));
    errors.expect(
        web.secrets
            .put(PutSecretRequest {
                path: "/agents/web/gen".into(),
                generator: "hex:0".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "generator",
    );

    // Rotation: a generated value, RotateNow, a rotation period in the metadata.
    let generated = web
        .secrets
        .put(PutSecretRequest {
            path: "/agents/web/token".into(),
            generator: "alphanumeric:32".into(),
            rotation_period_seconds: 3600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(generated.version, 1);
    let first = web
        .secrets
        .get(get("/agents/web/token", None))
        .await
        .unwrap()
        .into_inner()
        .value;
    assert_eq!(first.len(), 32);
    let rotated = web
        .secrets
        .rotate_now(RotateSecretRequest {
            path: "/agents/web/token".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.version, 2);
    assert_ne!(
        web.secrets
            .get(get("/agents/web/token", None))
            .await
            .unwrap()
            .into_inner()
            .value,
        first
    );
    errors.expect(
        web.secrets
            .rotate_now(RotateSecretRequest {
                path: "/agents/web/db".into(),
            })
            .await,
        Code::FailedPrecondition,
        "no generator",
    );
    let meta = admin
        .secrets
        .update_metadata(UpdateSecretMetadataRequest {
            path: "/agents/web/token".into(),
            custom_metadata: BTreeMap::from([("owner".to_owned(), "web-team".to_owned())])
                .into_iter()
                .collect(),
            replace_custom_metadata: true,
            max_versions: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.custom_metadata["owner"], "web-team");
    assert_eq!((meta.max_versions, meta.rotation_period_seconds), (5, 3600));
    assert!(meta.next_rotation_at.is_some());

    // The watcher saw the changes in order: path, version, kind; never a value.
    let mut seen = Vec::new();
    while seen.len() < 8 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a change within 10 s")
            .unwrap()
            .expect("the stream stays open");
        assert_no_value(&format!("{event:?}"), "a Watch event");
        seen.push((event.path, event.version, event.kind));
    }
    assert_eq!(
        seen,
        vec![
            ("/agents/web/db".to_owned(), 1, "put".to_owned()),
            ("/agents/web/db".to_owned(), 2, "put".to_owned()),
            ("/agents/web/db".to_owned(), 2, "delete".to_owned()),
            ("/agents/web/db".to_owned(), 1, "destroy".to_owned()),
            ("/agents/web/db".to_owned(), 2, "undelete".to_owned()),
            ("/agents/web/token".to_owned(), 1, "put".to_owned()),
            ("/agents/web/token".to_owned(), 2, "rotate".to_owned()),
            ("/agents/web/token".to_owned(), 2, "metadata".to_owned()),
        ],
        "the other team's secret is not in the web agent's stream"
    );

    // Audited: kind secret, principal, correlation id; never a value.
    let records = wait_for_audit(
        &admin,
        AuditQueryRequest {
            kind: "secret".into(),
            limit: 1000,
            ..Default::default()
        },
        // put ×2, put, delete, destroy, undelete, put, rotate, metadata.
        9,
        Duration::from_secs(10),
    )
    .await;
    let first = &records[0];
    assert_eq!(first.action, "secrets.put");
    assert_eq!(first.resource, "secret:/agents/web/db");
    assert_eq!(first.correlation_id, "req-42");
    assert!(
        records
            .iter()
            .any(|r| r.principal == WEB && r.action == "secrets.delete")
    );
    let all = admin
        .audit
        .query(AuditQueryRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_no_value(&format!("{:?}", all.records), "the audit log");
    assert!(
        all.records
            .iter()
            .any(|r| r.reasons.iter().any(|x| x == "outside-scope"))
    );

    for error in &errors.0 {
        assert_no_value(error, "an error reply");
    }

    // A log line that would quote a stored value (an operator pasted it into the flags file): the
    // redactor takes it out.
    let flags = daemon.state_dir.join("flags.json");
    let pasted = std::str::from_utf8(VALUE_2).unwrap();
    std::fs::write(&flags, format!(r#"{{"flags": {{"x": {{"state": "{pasted}", "variants": {{"on": true}}, "defaultVariant": "on"}}}}}}"#)).unwrap();
    eventually(
        "the refused flags file in the log",
        Duration::from_secs(15),
        || {
            let log = daemon.stderr();
            async move { log.contains("is not ENABLED or DISABLED").then_some(()) }
        },
    )
    .await;
    let log = daemon.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("is not ENABLED or DISABLED"))
        .unwrap();
    assert!(
        line.contains("x.state: \"[redacted]\"") || line.contains("[redacted]"),
        "{line}"
    );
    let (_, metrics) = crate::harness::http_get(daemon.metrics_addr, "/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("brainstem_log_redactions_total{rule=\"value\"}")
                && !l.ends_with(" 0")
        ),
        "no value redaction counted"
    );
    drop(watch);
    let stderr = daemon.stderr();
    daemon.stop().await;
    assert_no_value(&stderr, "the daemon's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill_9_and_a_wrong_master_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let client = daemon.client().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut client = client.clone();
        let tx = tx.clone();
        writers.push(tokio::spawn(async move {
            for i in 0u64.. {
                let path = format!("/crash/w{w}/s{}", i % 4);
                let value = format!("value-{w}-{i}");
                match client.secrets.put(put(&path, value.as_bytes(), None)).await {
                    Ok(reply) => {
                        if tx.send((path, reply.into_inner().version, value)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acknowledged: BTreeMap<String, (u64, String)> = BTreeMap::new();
    while acknowledged.values().map(|(v, _)| *v).sum::<u64>() < 200 {
        let (path, version, value) = rx.recv().await.expect("writers run");
        let entry = acknowledged.entry(path).or_insert((0, String::new()));
        if version > entry.0 {
            *entry = (version, value);
        }
    }
    daemon.kill9().await;
    for writer in writers {
        let _ = writer.await;
    }
    // Acknowledgements that raced the kill are acknowledged too.
    while let Ok((path, version, value)) = rx.try_recv() {
        let entry = acknowledged.entry(path).or_insert((0, String::new()));
        if version > entry.0 {
            *entry = (version, value);
        }
    }

    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    for (path, (version, value)) in &acknowledged {
        let got = client
            .secrets
            .get(get(path, Some(*version)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, value.as_bytes(), "{path} v{version}");
        let current = client
            .secrets
            .get(get(path, None))
            .await
            .unwrap()
            .into_inner();
        assert!(
            current.version >= *version,
            "{path}: v{} < acknowledged v{version}",
            current.version
        );
    }
    daemon.stop().await;

    // Another master key: a clear refusal naming the key file, nothing overwritten.
    let key = dir.path().join("state/master.key");
    let original = std::fs::read(&key).unwrap();
    brainstemd::crypto::files::write_private(&key, &[0x5a; 32]).unwrap();
    let mut refused = DaemonProcess::spawn_only(dir.path(), &[], "info");
    let status = refused.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(64), "stderr:\n{}", refused.stderr());
    let stderr = refused.stderr();
    assert!(stderr.contains("master.key"), "{stderr}");
    assert!(stderr.contains("not the key"), "{stderr}");
    drop(refused);
    brainstemd::crypto::files::write_private(&key, &original).unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    let (path, (version, value)) = acknowledged.iter().next().unwrap();
    let got = eventually(
        "a read after the right key is back",
        Duration::from_secs(10),
        || {
            let mut secrets = client.secrets.clone();
            let request = get(path, Some(*version));
            async move { secrets.get(request).await.ok() }
        },
    )
    .await;
    assert_eq!(got.into_inner().value, value.as_bytes());
    client.secrets.get(get(path, None)).await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_rotates_online_and_the_old_key_is_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    for i in 0..20 {
        client
            .secrets
            .put(put(
                &format!("/rot/s{i}"),
                format!("value-{i}-xyz").as_bytes(),
                None,
            ))
            .await
            .unwrap();
    }
    let new_key = dir.path().join("new-master.key");
    brainstemd::crypto::files::write_private(&new_key, &[0x42; 32]).unwrap();

    // Bad files are refused with the field, and nothing changes.
    let relative = client
        .secrets
        .rotate_master_key(brainstem_client::v1::RotateMasterKeyRequest {
            new_key_file: "new-master.key".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(relative.code(), Code::InvalidArgument);
    let short = dir.path().join("short.key");
    brainstemd::crypto::files::write_private(&short, &[1; 16]).unwrap();
    let status = client
        .secrets
        .rotate_master_key(brainstem_client::v1::RotateMasterKeyRequest {
            new_key_file: short.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("32 bytes"),
        "{}",
        status.message()
    );

    let reply = client
        .secrets
        .rotate_master_key(brainstem_client::v1::RotateMasterKeyRequest {
            new_key_file: new_key.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.rewrapped, 20);
    assert!(reply.signing_keys >= 1);
    assert_eq!(reply.key_id.len(), 16);
    // The running daemon reads and writes under the new key at once.
    assert_eq!(
        client
            .secrets
            .get(get("/rot/s3", None))
            .await
            .unwrap()
            .into_inner()
            .value,
        b"value-3-xyz"
    );
    client
        .secrets
        .put(put("/rot/after", b"written-after-rotation", None))
        .await
        .unwrap();
    daemon.stop().await;

    // The old key is refused, naming the new key's file.
    let mut refused = DaemonProcess::spawn_only(dir.path(), &[], "info");
    let status = refused.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(64));
    assert!(
        refused.stderr().contains("new-master.key"),
        "{}",
        refused.stderr()
    );
    drop(refused);

    // Pointed at the new key, everything reads, token signing keys included.
    let config = dir.path().join("brainstemd.toml");
    std::fs::write(
        &config,
        format!("[keys]\nmaster_key_file = \"{}\"\n", new_key.display()),
    )
    .unwrap();
    let daemon =
        DaemonProcess::start_with(dir.path(), &[OsStr::new("--config"), config.as_os_str()]).await;
    let mut client = daemon.client().await;
    for i in 0..20 {
        let got = client
            .secrets
            .get(get(&format!("/rot/s{i}"), None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, format!("value-{i}-xyz").as_bytes());
    }
    assert_eq!(
        client
            .secrets
            .get(get("/rot/after", None))
            .await
            .unwrap()
            .into_inner()
            .value,
        b"written-after-rotation"
    );
    daemon.stop().await;
}
