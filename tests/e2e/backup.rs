//! Backup and restore against the real binaries: writes of every kind run concurrently while
//! `brainstemctl backup --out` takes a backup; `brainstemd restore` builds a fresh state directory
//! from it, and a dev-mode daemon started there with the same master key serves every write that
//! was acknowledged before the backup began. `backup verify` tells a good file from a damaged one;
//! restore refuses a non-empty directory and a damaged file, leaving the directory as it was.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brainstem_client::Client;
use brainstem_client::v1::{
    AuditQueryRequest, CheckRequest, Episode, EvaluateFlagRequest, GetEpisodeRequest,
    GetSecretRequest, IssueTokenRequest, PutSecretRequest, RevokeTokenRequest,
    SetFlagOverrideRequest, StoreRequest, VerifyTokenRequest,
};

use crate::harness::{DaemonProcess, bin, http_get, metric_value};

/// One acknowledged write and when its reply arrived.
#[derive(Debug, Clone)]
enum Write {
    Episode(String),
    Token { token: String, revoked: bool },
    Check(String),
    Secret { path: String, value: Vec<u8> },
}

fn run(program: &str, args: &[&OsStr]) -> Output {
    Command::new(bin(program))
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("run {program}: {err}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One writer: round-robin over the kinds until `stop`, noting each acknowledged write.
async fn load(
    mut client: Client,
    writer: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<(Instant, Write)>>>,
) {
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let write = match n % 4 {
            0 => {
                let reply = client
                    .episodic
                    .store(StoreRequest {
                        episode: Some(Episode {
                            source: "backup-test".to_owned(),
                            kind: "observation".to_owned(),
                            text: format!("writer {writer} episode {n}"),
                            embedding: vec![0.25; 384],
                            ..Default::default()
                        }),
                    })
                    .await
                    .expect("store")
                    .into_inner();
                Write::Episode(reply.id)
            }
            1 => {
                let issued = client
                    .tokens
                    .issue(IssueTokenRequest {
                        principal: "spiffe://brainstem.dev/agent/web".to_owned(),
                        capabilities: vec!["web.read".to_owned()],
                        ttl_seconds: 3600,
                    })
                    .await
                    .expect("issue")
                    .into_inner();
                let revoked = n % 8 == 1;
                if revoked {
                    client
                        .tokens
                        .revoke(RevokeTokenRequest {
                            id: issued.id.clone(),
                        })
                        .await
                        .expect("revoke");
                }
                Write::Token {
                    token: issued.token,
                    revoked,
                }
            }
            2 => {
                // secrets.* is fail-closed: answered once its audit record is on disk.
                let reply = client
                    .policy
                    .check(CheckRequest {
                        action: "secrets.read".to_owned(),
                        resource: format!("backup-test/{writer}/{n}"),
                        ..Default::default()
                    })
                    .await
                    .expect("check")
                    .into_inner();
                Write::Check(reply.decision_id)
            }
            _ => {
                let path = format!("/backup/w{writer}/s{n}");
                let value = format!("value {writer} {n}").into_bytes();
                client
                    .secrets
                    .put(PutSecretRequest {
                        path: path.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("put");
                Write::Secret { path, value }
            }
        };
        acked.lock().unwrap().push((Instant::now(), write));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_write_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let source_dir = dir.path().join("source");
    std::fs::create_dir(&source_dir).unwrap();
    let daemon = DaemonProcess::start_in(&source_dir).await;
    let mut client = daemon.client().await;
    client
        .flags
        .set_override(SetFlagOverrideRequest {
            key: "safety.dry_run_mode".into(),
            state: String::new(),
            default_variant: "on".into(),
            rollout: None,
        })
        .await
        .expect("override");

    // The backup metrics are there from the first scrape.
    let (_, metrics) = http_get(daemon.metrics_addr, "/metrics").await;
    for name in [
        "brainstem_backup_last_success_timestamp_seconds",
        "brainstem_backup_failures_total",
        "brainstem_backup_duration_seconds",
        "brainstem_backup_size_bytes",
        "brainstem_backup_writer_pause_seconds",
    ] {
        assert!(
            metric_value(&metrics, name).is_some(),
            "{name} missing:\n{metrics}"
        );
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for writer in 0..3 {
        writers.push(tokio::spawn(load(
            daemon.client().await,
            writer,
            stop.clone(),
            acked.clone(),
        )));
    }
    // Let the writers get going, then back up while they write.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 60 {
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = dir.path().join("state.bsbackup");
    let endpoint = daemon.grpc_addr.to_string();
    let state = daemon.state_dir.clone();
    let began = Instant::now();
    let out = {
        let (file, endpoint, state) = (file.clone(), endpoint.clone(), state.clone());
        tokio::task::spawn_blocking(move || {
            run(
                "brainstemctl",
                &[
                    OsStr::new("--endpoint"),
                    OsStr::new(&endpoint),
                    OsStr::new("--state-dir"),
                    state.as_os_str(),
                    OsStr::new("backup"),
                    OsStr::new("--out"),
                    file.as_os_str(),
                ],
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(out.status.code(), Some(0), "backup: {}", text(&out));
    eprintln!("backup: {}", text(&out).trim());
    // Keep writing a little after the backup, then stop.
    let after = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < after + 20 {
        assert!(
            Instant::now() < deadline,
            "the writers stalled after the backup"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let (_, metrics) = http_get(daemon.metrics_addr, "/metrics").await;
    assert!(
        metric_value(&metrics, "brainstem_backup_last_success_timestamp_seconds")
            .is_some_and(|v| v > 0.0),
        "{metrics}"
    );
    assert!(metric_value(&metrics, "brainstem_backup_size_bytes").is_some_and(|v| v > 0.0));
    // The backup left an audit record (on disk before the file was sent) naming who took it.
    let taken = crate::harness::wait_for_audit(
        &client,
        AuditQueryRequest {
            action: "backup.create".into(),
            limit: 10,
            ..Default::default()
        },
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(taken[0].kind, "admin", "{taken:?}");
    assert!(taken[0].resource.starts_with("backup:"), "{taken:?}");
    assert!(!taken[0].caller.is_empty(), "{taken:?}");

    // A second backup without --force does not overwrite the first.
    let again = run(
        "brainstemctl",
        &[
            OsStr::new("--endpoint"),
            OsStr::new(&endpoint),
            OsStr::new("--state-dir"),
            state.as_os_str(),
            OsStr::new("backup"),
            OsStr::new("--out"),
            file.as_os_str(),
        ],
    );
    assert_ne!(again.status.code(), Some(0), "{}", text(&again));
    drop(client);
    daemon.stop().await;

    // verify: a good file passes, a damaged one fails.
    let verify = |path: &Path| {
        run(
            "brainstemctl",
            &[OsStr::new("backup"), OsStr::new("verify"), path.as_os_str()],
        )
    };
    let good = verify(&file);
    assert_eq!(good.status.code(), Some(0), "{}", text(&good));
    let damaged = dir.path().join("damaged.bsbackup");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    let bad = verify(&damaged);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("not a valid backup"), "{}", text(&bad));

    let key = state.join("master.key");
    let restore = |target: &Path, from: &Path| {
        run(
            "brainstemd",
            &[
                OsStr::new("--dev"),
                OsStr::new("--state-dir"),
                target.as_os_str(),
                OsStr::new("restore"),
                OsStr::new("--from"),
                from.as_os_str(),
                OsStr::new("--master-key-file"),
                key.as_os_str(),
            ],
        )
    };
    // A damaged file is refused and the target left as it was (absent).
    let untouched = dir.path().join("untouched");
    let refused = restore(&untouched.join("state"), &damaged);
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    assert!(
        !untouched.exists(),
        "a refused restore created {}",
        untouched.display()
    );
    // A non-empty target is refused and left as it was.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(busy.join("state")).unwrap();
    std::fs::write(busy.join("state/notes"), b"mine").unwrap();
    let refused = restore(&busy.join("state"), &file);
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    assert!(text(&refused).contains("not empty"), "{}", text(&refused));
    assert_eq!(std::fs::read(busy.join("state/notes")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(busy.join("state")).unwrap().count(), 1);

    // The drill: restore into a fresh directory, start a dev daemon there.
    let target_dir = dir.path().join("restored");
    std::fs::create_dir(&target_dir).unwrap();
    let started = Instant::now();
    let restored = restore(&target_dir.join("state"), &file);
    assert_eq!(restored.status.code(), Some(0), "{}", text(&restored));
    eprintln!(
        "restore: {} ({:?})",
        text(&restored).trim(),
        started.elapsed()
    );
    let daemon = DaemonProcess::start_in(&target_dir).await;
    eprintln!("restore + start took {:?}", started.elapsed());
    let mut client = daemon.client().await;

    let before: Vec<Write> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at < began)
        .map(|(_, w)| w.clone())
        .collect();
    assert!(
        before.len() >= 60,
        "{} writes before the backup",
        before.len()
    );
    let decisions = audit_decisions(&client).await;
    for write in &before {
        match write {
            Write::Episode(id) => {
                let got = client
                    .episodic
                    .get(GetEpisodeRequest { id: id.clone() })
                    .await
                    .unwrap_or_else(|s| panic!("episode {id} lost: {s:?}"));
                assert!(got.into_inner().episode.is_some(), "episode {id} lost");
            }
            Write::Token { token, revoked } => {
                let reply = client
                    .tokens
                    .verify(VerifyTokenRequest {
                        token: token.clone(),
                        capability: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(
                    reply.valid, !revoked,
                    "token (revoked: {revoked}): {}",
                    reply.reason
                );
            }
            Write::Check(decision) => {
                assert!(decisions.contains(decision), "audit record {decision} lost");
            }
            Write::Secret { path, value } => {
                let got = client
                    .secrets
                    .get(GetSecretRequest {
                        path: path.clone(),
                        version: None,
                    })
                    .await
                    .unwrap_or_else(|s| panic!("secret {path} lost: {s:?}"))
                    .into_inner();
                assert_eq!(&got.value, value, "secret {path}");
            }
        }
    }
    let flag = client
        .flags
        .evaluate(EvaluateFlagRequest {
            key: "safety.dry_run_mode".into(),
            context: None,
            r#type: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(flag.variant, "on", "the flag override was lost");
    drop(client);
    daemon.stop().await;
}

/// Every decision id in the audit log.
async fn audit_decisions(client: &Client) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let page = client
            .audit
            .clone()
            .query(AuditQueryRequest {
                after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if page.records.is_empty() {
            return out;
        }
        after = page.next_after;
        out.extend(page.records.into_iter().map(|r| r.decision_id));
    }
}
