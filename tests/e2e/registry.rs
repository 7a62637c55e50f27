//! The model registry over mutual TLS against the real daemon: registration with files the daemon
//! hashes under `<state_dir>/artifacts/`, scopes by model name, paths outside the roots and
//! symlinks leading out refused, aliases with their history, drift, tamper detection, signed cards
//! verified offline by `brainstemctl` (exit 0 / 1), and acknowledged registrations surviving a
//! restart and kill -9.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use brainstem_client::v1::{
    AliasHistoryRequest, AuditQueryRequest, DetectDriftRequest, ExportModelCardRequest,
    GetLatestRequest, GetModelRequest, RecordQualityMetricRequest, RegisterRequest,
    SetAliasRequest, VerifyArtifactsRequest,
};
use tonic::Code;

use crate::harness::{DaemonProcess, bin, options_for, wait_for_audit};

const VISION: &str = "spiffe://brainstem.dev/agent/vision";

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("brainstemd.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[roles]
admin = ["*"]
vision = ["registry.read:/vision/*", "registry.write:/vision/*"]
[[grants]]
principal = "{VISION}"
roles = ["vision"]
"#
        ),
    )
    .unwrap();
    path
}

fn artifact(state_dir: &Path, name: &str, bytes: &[u8]) -> String {
    let root = state_dir.join("artifacts");
    std::fs::create_dir_all(&root).unwrap();
    let path = root.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn register(name: &str, version: &str, weights: &str) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        version: version.into(),
        algorithm: "yolo".into(),
        weights_path: weights.into(),
        ..Default::default()
    }
}

fn ctl(daemon: &DaemonProcess, args: &[&OsStr]) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin("brainstemctl"))
        .arg("--endpoint")
        .arg(daemon.grpc_addr.to_string())
        .arg("--state-dir")
        .arg(&daemon.state_dir)
        .args(args)
        .output()
        .expect("run brainstemctl");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `brainstemctl registry verify-card`, offline: no endpoint, no certificates.
fn verify_card(key: &Path, card: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin("brainstemctl"))
        .args(["registry", "verify-card", "--public-key"])
        .arg(key)
        .arg(card)
        .output()
        .expect("run brainstemctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_scopes_aliases_drift_and_signed_cards_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let daemon =
        DaemonProcess::start_with(dir.path(), &[OsStr::new("--config"), config.as_os_str()]).await;
    let mut admin = daemon.client().await;
    let mut vision = options_for(&daemon.state_dir, daemon.grpc_addr, VISION)
        .connect()
        .await
        .unwrap();
    let weights_bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let weights = artifact(&daemon.state_dir, "detector.bin", &weights_bytes);

    // Registration over mTLS by a scoped principal: the daemon hashes, the caller is the creator.
    let mut request = register("vision/detector", "", &weights);
    request.weights_sha256 = Some(sha256_hex(&weights_bytes));
    request.metrics = HashMap::from([("accuracy".to_owned(), 0.9)]);
    let reply = vision
        .registry
        .register(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, "1.0.0");
    assert_eq!(reply.weights_sha256, sha256_hex(&weights_bytes));
    let got = vision
        .registry
        .get(GetModelRequest {
            name: "vision/detector".into(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.created_by, VISION);
    let reply = vision
        .registry
        .register(register("vision/detector", "1.1.0", &weights))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, "1.1.0");
    let latest = vision
        .registry
        .get_latest(GetLatestRequest {
            name: "vision/detector".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.version, "1.1.0");

    // Outside its scope: PERMISSION_DENIED.
    let status = vision
        .registry
        .register(register("speech/asr", "1.0.0", &weights))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A path outside the artifact roots, and a symlink inside them that leads out: PERMISSION_DENIED.
    let outside = dir.path().join("outside.bin");
    std::fs::write(&outside, b"not an artifact").unwrap();
    let status = admin
        .registry
        .register(register(
            "vision/detector",
            "9.0.0",
            &outside.display().to_string(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let link = daemon.state_dir.join("artifacts/link.bin");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let status = admin
        .registry
        .register(register(
            "vision/detector",
            "9.0.0",
            &link.display().to_string(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A declared hash that differs names both; a duplicate version is ALREADY_EXISTS; NaN is
    // INVALID_ARGUMENT; an unknown version NOT_FOUND.
    let mut wrong = register("vision/detector", "2.0.0", &weights);
    wrong.weights_sha256 = Some("ab".repeat(32));
    let status = admin.registry.register(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&"ab".repeat(32)));
    assert!(status.message().contains(&sha256_hex(&weights_bytes)));
    let status = admin
        .registry
        .register(register("vision/detector", "1.0.0", &weights))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = admin
        .registry
        .record_quality_metric(RecordQualityMetricRequest {
            name: "vision/detector".into(),
            version: "1.0.0".into(),
            metric: "accuracy".into(),
            value: f64::NAN,
            at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("value"), "{status:?}");
    let status = admin
        .registry
        .get(GetModelRequest {
            name: "vision/detector".into(),
            version: "7.0.0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Aliases and their history, with who moved them.
    for version in ["1.0.0", "1.1.0"] {
        let who = if version == "1.0.0" {
            &mut vision
        } else {
            &mut admin
        };
        who.registry
            .set_alias(SetAliasRequest {
                name: "vision/detector".into(),
                alias: "production".into(),
                version: version.into(),
            })
            .await
            .unwrap();
    }
    let history = vision
        .registry
        .alias_history(AliasHistoryRequest {
            name: "vision/detector".into(),
            alias: "production".into(),
            at: None,
        })
        .await
        .unwrap()
        .into_inner();
    let entries: Vec<_> = history
        .entries
        .iter()
        .map(|e| (e.version.as_str(), e.principal.as_str()))
        .collect();
    assert_eq!(
        entries,
        [("1.0.0", VISION), ("1.1.0", "spiffe://brainstem.dev/admin")],
        "{history:?}"
    );

    // Drift against the registered baseline.
    for value in [0.80, 0.81, 0.79] {
        vision
            .registry
            .record_quality_metric(RecordQualityMetricRequest {
                name: "vision/detector".into(),
                version: "1.0.0".into(),
                metric: "accuracy".into(),
                value,
                at: None,
            })
            .await
            .unwrap();
    }
    let drift = vision
        .registry
        .detect_drift(DetectDriftRequest {
            name: "vision/detector".into(),
            version: "1.0.0".into(),
            metric: "accuracy".into(),
            threshold_percent: 5.0,
            window_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(drift.drifted, "{drift:?}");
    assert_eq!(drift.recent_samples, 3);

    // The card verifies offline with brainstemctl; one changed byte makes it invalid (exit 1).
    let card = vision
        .registry
        .export_model_card(ExportModelCardRequest {
            name: "vision/detector".into(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .card;
    let card_file = dir.path().join("card.json");
    std::fs::write(&card_file, &card).unwrap();
    let key_file = dir.path().join("card.pub");
    let (code, out) = ctl(
        &daemon,
        &[
            OsStr::new("registry"),
            OsStr::new("public-key"),
            OsStr::new("--out"),
            key_file.as_os_str(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let verify = |card: &Path| verify_card(&key_file, card);
    let (code, out) = verify(&card_file);
    assert_eq!(code, Some(0), "{out}");
    let mut tampered = card.clone().into_bytes();
    let at = card.find("yolo").unwrap();
    tampered[at] = b'Y';
    let tampered_file = dir.path().join("tampered.json");
    std::fs::write(&tampered_file, &tampered).unwrap();
    let (code, out) = verify(&tampered_file);
    assert_eq!(code, Some(1), "{out}");
    // The CLI's own export writes exactly the signed bytes.
    let exported = dir.path().join("exported.json");
    let (code, out) = ctl(
        &daemon,
        &[
            OsStr::new("registry"),
            OsStr::new("card"),
            OsStr::new("vision/detector"),
            OsStr::new("1.0.0"),
            OsStr::new("--out"),
            exported.as_os_str(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(verify(&exported).0, Some(0));

    // Tamper detection: the weights change on disk.
    std::fs::write(&weights, b"swapped weights").unwrap();
    let verified = admin
        .registry
        .verify_artifacts(VerifyArtifactsRequest {
            name: "vision/detector".into(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!verified.ok);
    assert_eq!(verified.files[0].result, "mismatch");

    // Changes are audited with kind "registry".
    let records = wait_for_audit(
        &admin,
        AuditQueryRequest {
            kind: "registry".into(),
            action: "registry.register".into(),
            ..Default::default()
        },
        2,
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(records.iter().any(|r| r.principal == VISION));

    // Persistence across a clean restart.
    drop((admin, vision));
    daemon.stop().await;
    let daemon =
        DaemonProcess::start_with(dir.path(), &[OsStr::new("--config"), config.as_os_str()]).await;
    let mut admin = daemon.client().await;
    let history = admin
        .registry
        .alias_history(AliasHistoryRequest {
            name: "vision/detector".into(),
            alias: "production".into(),
            at: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries.len(), 2);
    // The same signing key after the restart: the old card still verifies against a fresh export
    // of the key.
    let (code, out) = ctl(
        &daemon,
        &[
            OsStr::new("registry"),
            OsStr::new("public-key"),
            OsStr::new("--out"),
            key_file.as_os_str(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(verify_card(&key_file, &card_file).0, Some(0));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registrations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let client = daemon.client().await;
    let weights = artifact(&daemon.state_dir, "w.bin", b"weights");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut client = client.clone();
        let tx = tx.clone();
        let weights = weights.clone();
        writers.push(tokio::spawn(async move {
            for i in 0u64.. {
                let name = format!("crash/w{w}");
                let request = register(&name, &format!("1.0.{i}"), &weights);
                match client.registry.register(request).await {
                    Ok(reply) => {
                        if tx.send((name, reply.into_inner().version)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 60 {
        acknowledged.push(rx.recv().await.expect("writers run"));
    }
    daemon.kill9().await;
    for writer in writers {
        let _ = writer.await;
    }
    while let Ok(ack) = rx.try_recv() {
        acknowledged.push(ack);
    }

    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    for (name, version) in &acknowledged {
        let got = client
            .registry
            .get(GetModelRequest {
                name: name.clone(),
                version: version.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged {name}@{version} lost: {s:?}"))
            .into_inner();
        assert_eq!(got.weights_sha256, sha256_hex(b"weights"));
    }
    daemon.stop().await;
}
