//! Process-level tests: the real `brainstemd` binary, signals, sd_notify, exit codes, crash recovery.

use std::process::Command;
use std::time::Duration;

use brainstem_client::ConnectOptions;
use brainstem_client::v1::{GetStatusRequest, PingRequest, WhoAmIRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::{
    DaemonProcess, assert_refused, bin, eventually, get_status_denied, http_get, metric_value,
    options_for,
};

async fn health(options: &ConnectOptions, service: &str) -> i32 {
    let mut client = options.connect().await.expect("connect");
    client
        .health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_then_serving_whoami_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let ready = daemon
        .messages
        .iter()
        .find(|m| m.contains("READY=1"))
        .unwrap();
    assert!(ready.contains("STATUS=serving grpc=127.0.0.1:"), "{ready}");

    // Dev PKI files, keys private.
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "admin.pem",
        "admin.key",
    ] {
        let path = daemon.state_dir.join("pki").join(name);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        if name.ends_with(".key") {
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    let options = daemon.options();
    for service in ["", "brainstem.v1.Admin"] {
        assert_eq!(
            health(&options, service).await,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let me = daemon
        .client()
        .await
        .admin
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(me.principal.contains("admin"), "{me:?}");
    assert_eq!(me.principal_source, "san_uri");
    assert_eq!(me.capabilities, ["*"]);

    // A certificate from the dev CA with no grants: Ping and WhoAmI only.
    let reader = options_for(&daemon.state_dir, daemon.grpc_addr, "reader");
    let mut reader_client = reader.connect().await.unwrap();
    reader_client
        .admin
        .ping(PingRequest::default())
        .await
        .unwrap();
    let who = reader_client
        .admin
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (who.principal.as_str(), who.capabilities.len()),
        ("reader", 0)
    );
    let denied = get_status_denied(&mut reader_client).await;
    assert!(
        denied.message().contains("admin.status"),
        "{}",
        denied.message()
    );

    // No client certificate: the handshake fails, so does the call.
    let anonymous = {
        let ca = std::fs::read(daemon.state_dir.join("pki/ca.pem")).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("https://{}", daemon.grpc_addr))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .timeout(Duration::from_secs(5));
        match endpoint.connect().await {
            Err(_) => None,
            Ok(channel) => Some(
                brainstem_client::v1::admin_client::AdminClient::new(channel)
                    .ping(PingRequest::default())
                    .await,
            ),
        }
    };
    if let Some(result) = anonymous {
        assert!(
            result.is_err(),
            "a call without a client certificate succeeded"
        );
    }

    // A certificate from another CA: refused the same way.
    let other = tempfile::tempdir().unwrap();
    brainstemd::crypto::pki::DevPki::new(other.path())
        .ensure()
        .unwrap();
    let foreign = daemon.options().with_identity(
        other.path().join("pki/admin.pem"),
        other.path().join("pki/admin.key"),
    );
    assert_refused(&foreign, "a certificate from another CA").await;

    // The metrics listener tells the same story.
    let (code, body) = http_get(daemon.metrics_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("brainstem_build_info{version=\"0.1.0\"} 1"),
        "{body}"
    );
    assert!(body.contains("code=\"PERMISSION_DENIED\""), "{body}");
    assert!(body.contains("outcome=\"handshake_failed\""), "{body}");
    assert_eq!(http_get(daemon.metrics_addr, "/readyz").await.0, 200);

    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start_in(dir.path()).await;
    let client = daemon.client().await;
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .admin
                    .ping(PingRequest {
                        payload: vec![i],
                        delay_ms: 1500,
                    })
                    .await
                    .map(|r| r.into_inner().payload)
            })
        })
        .collect();
    let metrics_addr = daemon.metrics_addr;
    eventually(
        "8 calls in flight",
        Duration::from_secs(10),
        || async move {
            let (_, body) = http_get(metrics_addr, "/metrics").await;
            (metric_value(&body, "brainstem_grpc_requests_in_flight")? >= 8.0).then_some(())
        },
    )
    .await;

    daemon.signal(libc::SIGTERM);
    daemon
        .wait_message("STOPPING=1", Duration::from_secs(3))
        .await;
    for (i, call) in calls.into_iter().enumerate() {
        let payload = call
            .await
            .unwrap()
            .expect("in-flight call completes during drain");
        assert_eq!(payload, vec![i as u8]);
    }
    // Bounds a hung test only (drain 10 s + stop 5 s by default); the claims are below.
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    let stderr = daemon.stderr();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    // The stop waited for the calls instead of cutting them off at the drain deadline, and every task
    // ended when asked: nothing was aborted or abandoned.
    assert!(
        !stderr.contains("did not finish in time"),
        "the drain hit its deadline:\n{stderr}"
    );
    assert!(
        !stderr.contains("abandoning them"),
        "tasks ignored cancellation:\n{stderr}"
    );
    let stop_ms = logged_number(&stderr, "stop_ms")
        .unwrap_or_else(|| panic!("no \"brainstemd stopped\" line with stop_ms:\n{stderr}"));
    assert!(
        stop_ms < DEFAULT_DRAIN_TIMEOUT.as_millis() as u64,
        "stop took {stop_ms} ms, not less than the drain deadline"
    );

    // Nothing listens any more.
    let after = daemon.options().connect().await;
    assert!(after.is_err(), "connected after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_with_the_notify_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start_in(dir.path()).await;
    daemon.signal(libc::SIGHUP);
    let reloading = daemon
        .wait_message("RELOADING=1", Duration::from_secs(10))
        .await;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = daemon
        .wait_message("configuration reloaded", Duration::from_secs(10))
        .await;
    assert!(ready.contains("READY=1"), "{ready}");
    assert_eq!(
        health(&daemon.options(), "").await,
        ServingStatus::Serving as i32
    );
    daemon.stop().await;
}

#[test]
fn bad_config_exits_64_and_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
state_dir = 3
listen_port = 1
[server]
max_connections = -1
drain_timeout_seconds = "ten"
[log]
format = "yaml"
"#,
    )
    .unwrap();
    for subcommand in [None, Some("check-config")] {
        let mut cmd = Command::new(bin("brainstemd"));
        cmd.arg("--config").arg(&path);
        cmd.args(subcommand);
        let output = cmd.output().unwrap();
        assert_eq!(output.status.code(), Some(64), "{subcommand:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for key in [
            "state_dir",
            "listen_port: unknown key",
            "server.max_connections",
            "server.drain_timeout_seconds",
            "log.format",
        ] {
            assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
        }
    }

    // Unparseable flags are usage errors too; a good dev config checks clean.
    let output = Command::new(bin("brainstemd"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let output = Command::new(bin("brainstemd"))
        .args(["--dev", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A policy set that does not validate stops the start before anything binds, naming the file.
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        include_str!("../../config/policies/schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(
        policies.join("typo.cedar"),
        "@id(\"t\") permit (principal, action == Action::\"web.raed\", resource);",
    )
    .unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "dev_mode = true\nstate_dir = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n[policy]\ndir = {:?}\n",
            dir.path().join("state").display().to_string(),
            policies.display().to_string()
        ),
    )
    .unwrap();
    for subcommand in [None, Some("check-config")] {
        let mut cmd = Command::new(bin("brainstemd"));
        cmd.arg("--config").arg(&path);
        cmd.args(subcommand);
        let output = cmd.output().unwrap();
        assert_eq!(output.status.code(), Some(64), "{subcommand:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("typo.cedar") && stderr.contains("web.raed"),
            "{subcommand:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let status = |daemon: &DaemonProcess| {
        let options = daemon.options();
        async move {
            let mut client = options.connect().await.unwrap();
            client
                .admin
                .get_status(GetStatusRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };

    let daemon = DaemonProcess::start_in(dir.path()).await;
    let first = status(&daemon).await;
    assert_eq!(first.boot_count, 1);
    let admin_cert = std::fs::read(daemon.state_dir.join("pki/admin.pem")).unwrap();
    daemon.stop().await;

    let daemon = DaemonProcess::start_in(dir.path()).await;
    let second = status(&daemon).await;
    assert_eq!(second.boot_count, 2);
    assert_eq!(second.first_start, first.first_start);
    assert!(second.previous_shutdown_clean);
    // The dev PKI is kept: certificates handed out stay valid.
    assert_eq!(
        std::fs::read(daemon.state_dir.join("pki/admin.pem")).unwrap(),
        admin_cert
    );
    daemon.kill9().await;

    let daemon = DaemonProcess::start_in(dir.path()).await;
    let third = status(&daemon).await;
    assert_eq!(
        third.boot_count, 3,
        "the boot acknowledged before kill -9 is not lost"
    );
    assert!(
        !third.previous_shutdown_clean,
        "kill -9 is reported as an unclean stop"
    );
    assert_eq!(third.first_start, first.first_start);
    assert_eq!(
        health(&daemon.options(), "").await,
        ServingStatus::Serving as i32
    );
    daemon.stop().await;
}

/// `[server] drain_timeout_seconds` by default: how long a stop may wait for in-flight calls.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The number a log line gives a field (`stop_ms=812` in human logs, `"stop_ms":812` in JSON).
fn logged_number(log: &str, field: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| {
        let rest = &line[line.find(field)? + field.len()..];
        let digits: String = rest
            .trim_start_matches(['=', '"', ':'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}
