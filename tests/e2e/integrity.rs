//! No silent rollback, against the real binary: a damaged or missing database refuses the start (exit
//! 64, the state directory and the way out named), `brainstemd recover --accept-loss` brings it back
//! without ever making a revoked token valid again; and a full disk refuses writes with
//! RESOURCE_EXHAUSTED while reads and Ping serve, then recovers by itself.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brainstem_client::Client;
use brainstem_client::v1::{
    AuditQueryRequest, Episode, IssueTokenRequest, PingRequest, RecentRequest, RevokeTokenRequest,
    StoreRequest, VerifyTokenRequest,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::{
    DaemonProcess, bin, eventually, health, http_get, metric_value, wait_for_audit,
};

/// Runs `brainstemd ARGS` to its end (at most 30 s): exit code, stdout + stderr.
async fn run_to_exit(args: &[&OsStr]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let mut child = Command::new(bin("brainstemd"))
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
        .spawn()
        .expect("spawn brainstemd");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("brainstemd {args:?} did not exit within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("err.log")).unwrap_or_default();
    (status.code().unwrap_or(-1), text)
}

async fn verify(client: &mut Client, token: &str) -> (bool, String) {
    let reply = client
        .tokens
        .verify(VerifyTokenRequest {
            token: token.to_owned(),
            capability: String::new(),
        })
        .await
        .expect("Verify answers")
        .into_inner();
    (reply.valid, reply.reason)
}

async fn issue(client: &mut Client) -> (String, String) {
    let reply = client
        .tokens
        .issue(IssueTokenRequest {
            principal: "spiffe://brainstem.dev/agent/web".to_owned(),
            capabilities: vec!["web.read".to_owned()],
            ttl_seconds: 600,
        })
        .await
        .expect("issue")
        .into_inner();
    (reply.id, reply.token)
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    for b in bytes.iter_mut().skip(at).take(16) {
        *b ^= 0xA5;
    }
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_revocation_refuses_the_start_and_recovery_never_revives_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let state = daemon.state_dir.clone();
    let mut client = daemon.client().await;
    let (revoked_id, revoked) = issue(&mut client).await;
    let (_, kept) = issue(&mut client).await;
    client
        .tokens
        .revoke(RevokeTokenRequest {
            id: revoked_id.clone(),
        })
        .await
        .unwrap();
    assert!(!verify(&mut client, &revoked).await.0);
    assert!(verify(&mut client, &kept).await.0);
    drop(client);
    daemon.stop().await;

    // Damage inside the revocation record (the only record with a `revoked_at` field).
    let log = state.join("db").join("db");
    let bytes = std::fs::read(&log).unwrap();
    let at = bytes
        .windows(b"\"revoked_at\"".len())
        .position(|w| w == b"\"revoked_at\"")
        .expect("the revocation is in sled's log");
    flip(&log, at);

    let state_arg = state.as_os_str();
    let (code, text) =
        run_to_exit(&[OsStr::new("--dev"), OsStr::new("--state-dir"), state_arg]).await;
    assert_eq!(code, 64, "a damaged store refuses the start: {text}");
    assert!(
        text.contains(&state.display().to_string()),
        "names the state dir: {text}"
    );
    assert!(
        text.contains("recover --accept-loss"),
        "names the way out: {text}"
    );

    // recover needs the explicit flag.
    let (code, text) = run_to_exit(&[
        OsStr::new("--dev"),
        OsStr::new("--state-dir"),
        state_arg,
        OsStr::new("recover"),
    ])
    .await;
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("--accept-loss"), "{text}");
    let (code, text) = run_to_exit(&[
        OsStr::new("--dev"),
        OsStr::new("--state-dir"),
        state_arg,
        OsStr::new("recover"),
        OsStr::new("--accept-loss"),
    ])
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("accepting the loss of"), "{text}");

    // It starts again; whatever the damage cost, the revoked token is not valid, and neither is any
    // token signed before the recovery (its revocation may be what was lost).
    let mut daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    let (valid, reason) = verify(&mut client, &revoked).await;
    assert!(!valid, "a revoked token came back: {reason}");
    let (valid, reason) = verify(&mut client, &kept).await;
    assert!(!valid && reason.starts_with("key_retired"), "{reason}");
    let (_, fresh) = issue(&mut client).await;
    assert!(verify(&mut client, &fresh).await.0, "new tokens verify");
    // The recovery is in the audit trail, with what was accepted as lost.
    let audited = wait_for_audit(
        &client,
        AuditQueryRequest {
            kind: "admin".to_owned(),
            action: "store.recover".to_owned(),
            ..Default::default()
        },
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(audited.len(), 1);
    assert!(
        audited[0]
            .reasons
            .iter()
            .any(|r| r.starts_with("retired_signing_keys=")),
        "{:?}",
        audited[0].reasons
    );
    drop(client);
    let log = daemon.stderr();
    assert!(
        log.contains("recovered with `brainstemd recover --accept-loss`"),
        "{log}"
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).await.success());

    // A later start does not retire the keys again: the recovery is announced once.
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    assert!(verify(&mut client, &fresh).await.0);
    drop(client);
    daemon.stop().await;

    // A deleted database is refused too, and nothing is created in its place.
    std::fs::remove_dir_all(state.join("db")).unwrap();
    let (code, text) =
        run_to_exit(&[OsStr::new("--dev"), OsStr::new("--state-dir"), state_arg]).await;
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("is missing"), "{text}");
    assert!(
        !state.join("db").exists(),
        "no empty database replaced the missing one"
    );
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn episode(text: &str) -> StoreRequest {
    StoreRequest {
        episode: Some(Episode {
            source: "disk-full-test".to_owned(),
            kind: "observation".to_owned(),
            text: text.to_owned(),
            embedding: vec![0.5; 384],
            ..Default::default()
        }),
    }
}

/// Waits until the `store.writes` health service reports `status`.
async fn store_writes_becomes(client: &Client, status: ServingStatus) {
    eventually(
        &format!("store.writes {status:?}"),
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move { (health(&mut client, "store.writes").await == status as i32).then_some(()) }
        },
    )
    .await;
}

/// The state directory on a 48 MiB tmpfs (needs root to mount; CI runs as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_serving_and_recovers_when_space_returns() {
    let outer = tempfile::tempdir().unwrap();
    let small = outer.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&small)
        .status()
        .expect("run mount");
    if !mounted.success() {
        // SAFETY: getuid has no preconditions.
        assert_ne!(unsafe { libc::getuid() }, 0, "root could not mount a tmpfs");
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let _unmount = Mounted(small.clone());
    let config = outer.path().join("brainstemd.toml");
    std::fs::write(&config, "[store]\nmin_free_bytes = 16777216\n").unwrap();
    let daemon =
        DaemonProcess::start_with(&small, &[OsStr::new("--config"), config.as_os_str()]).await;
    let mut client = daemon.client().await;
    client
        .episodic
        .store(episode("before"))
        .await
        .expect("a write while there is room");

    // Someone else fills the filesystem to 8 MiB free, below the 16 MiB reserve.
    let filler = small.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while brainstemd::store::space::available_bytes(&small).unwrap() > 8 << 20 {
            file.write_all(&chunk).unwrap();
        }
        file.sync_all().unwrap();
    }

    let refused = eventually("a write to be refused", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { client.episodic.store(episode("during")).await.err() }
    })
    .await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("full"), "{}", refused.message());
    let details = tonic_types::StatusExt::get_error_details(&refused);
    assert!(
        details.retry_info().is_some(),
        "RetryInfo tells when to retry"
    );
    for i in 0..50 {
        let err = client
            .episodic
            .store(episode(&format!("more {i}")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
    }
    // Reads, Ping and the overall health serve; the write path says it does not.
    client
        .admin
        .ping(PingRequest::default())
        .await
        .expect("Ping serves");
    let recent = client
        .episodic
        .recent(RecentRequest {
            n: 10,
            filter: None,
        })
        .await
        .expect("reads serve")
        .into_inner();
    assert!(recent.episodes.iter().any(|e| e.text == "before"));
    assert!(!recent.episodes.iter().any(|e| e.text.starts_with("more")));
    assert_eq!(health(&mut client, "").await, ServingStatus::Serving as i32);
    store_writes_becomes(&client, ServingStatus::NotServing).await;
    let (_, metrics) = http_get(daemon.metrics_addr, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "brainstem_store_disk_full"),
        Some(1.0),
        "{metrics}"
    );
    assert!(metric_value(&metrics, "brainstem_store_writes_refused_total").unwrap_or(0.0) >= 51.0);
    // One log line for the change, not one per refused write.
    let lines = daemon
        .stderr()
        .matches("the filesystem is full; writes are refused")
        .count();
    assert_eq!(lines, 1, "{}", daemon.stderr());

    // Space returns: writes resume by themselves, without a restart.
    std::fs::remove_file(&filler).unwrap();
    eventually(
        "a write to go through again",
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            async move { client.episodic.store(episode("after")).await.ok() }
        },
    )
    .await;
    store_writes_becomes(&client, ServingStatus::Serving).await;
    let (_, metrics) = http_get(daemon.metrics_addr, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "brainstem_store_disk_full"),
        Some(0.0)
    );
    assert!(daemon.stderr().contains("disk space is available again"));
    drop(client);
    daemon.stop().await;
}
