//! In-process tests: the daemon library started by the test itself (same code as `main`), for reload,
//! limits, deadlines and shutdown behaviour.

use std::path::{Path, PathBuf};
use std::time::Duration;

use brainstem_client::ConnectOptions;
use brainstem_client::v1::{GetStatusRequest, PingRequest};
use brainstemd::config::ConfigSource;
use brainstemd::runtime::notify::Notifier;
use brainstemd::{Daemon, ReloadOutcome, RunEnv};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::harness::{admin_options, assert_refused, get_status_denied, options_for};

pub struct InProcess {
    daemon: Option<Daemon>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    pub state_dir: PathBuf,
}

/// A config file: dev mode in `state_dir`, gRPC on port 0, no metrics listener, plus `server` keys and
/// any further sections.
pub fn config_text(state_dir: &Path, server: &str, rest: &str) -> String {
    format!(
        "dev_mode = true\nstate_dir = {state:?}\n[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[metrics]\nenabled = false\n{rest}\n",
        state = state_dir.display().to_string()
    )
}

impl InProcess {
    pub async fn start(server: &str, rest: &str) -> InProcess {
        brainstemd::grpc::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let config_path = dir.path().join("brainstemd.toml");
        std::fs::write(&config_path, config_text(&state_dir, server, rest)).unwrap();
        let source = ConfigSource {
            file: Some(config_path.clone()),
            overrides: Default::default(),
        };
        let config = source.load().expect("valid test config");
        let shutdown = CancellationToken::new();
        let env = RunEnv {
            source,
            notifier: Notifier::disabled(),
            log: None,
        };
        let daemon = Daemon::start(config, env, shutdown.clone())
            .await
            .expect("daemon starts");
        InProcess {
            daemon: Some(daemon),
            shutdown,
            _dir: dir,
            config_path,
            state_dir,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.daemon.as_ref().expect("running").grpc_addr
    }

    pub fn admin(&self) -> ConnectOptions {
        admin_options(&self.state_dir, self.addr())
    }

    pub fn rewrite(&self, server: &str, rest: &str) {
        std::fs::write(
            &self.config_path,
            config_text(&self.state_dir, server, rest),
        )
        .unwrap();
    }

    pub async fn reload(&self) -> ReloadOutcome {
        self.daemon.as_ref().expect("running").reload().await
    }

    pub async fn client(&self) -> brainstem_client::Client {
        self.admin().connect().await.expect("connect as admin")
    }

    /// Stops the daemon and returns its exit code.
    pub async fn stop(mut self) -> i32 {
        self.shutdown.cancel();
        let daemon = self.daemon.take().expect("running");
        tokio::time::timeout(Duration::from_secs(20), daemon.wait())
            .await
            .expect("daemon stops")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

const READER_GRANT: &str = r#"
[roles]
admin = ["*"]
observer = ["admin.status"]
[[grants]]
principal = "reader"
roles = ["observer"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_grants_and_refuses_invalid_or_restart_only_changes() {
    let daemon = InProcess::start("", "").await;
    let reader = options_for(&daemon.state_dir, daemon.addr(), "reader");
    let mut client = reader.connect().await.unwrap();
    get_status_denied(&mut client).await;

    daemon.rewrite("", READER_GRANT);
    assert_eq!(daemon.reload().await, ReloadOutcome::Applied);
    // Same connection: grants are looked up per call.
    client
        .admin
        .get_status(GetStatusRequest {})
        .await
        .expect("granted after reload");

    // An invalid file is refused whole; the old grants keep deciding.
    daemon.rewrite(
        "",
        &format!("{READER_GRANT}\n[[grants]]\nprincipal = \"x\"\nroles = [\"no-such-role\"]\n"),
    );
    match daemon.reload().await {
        ReloadOutcome::Refused(reason) => assert!(reason.contains("no-such-role"), "{reason}"),
        ReloadOutcome::Applied => panic!("invalid configuration applied"),
    }
    client
        .admin
        .get_status(GetStatusRequest {})
        .await
        .expect("old grants still apply");

    // A restart-only setting is refused too.
    daemon.rewrite("max_connections = 7", READER_GRANT);
    match daemon.reload().await {
        ReloadOutcome::Refused(reason) => assert!(reason.contains("server"), "{reason}"),
        ReloadOutcome::Applied => panic!("restart-only change applied live"),
    }

    // Revoking the grant takes effect at the next reload.
    daemon.rewrite("", "");
    assert_eq!(daemon.reload().await, ReloadOutcome::Applied);
    get_status_denied(&mut client).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_tls_certificates_for_new_connections() {
    let daemon = InProcess::start("", "").await;
    let pki = brainstemd::crypto::pki::DevPki::new(&daemon.state_dir);
    let old_ca = daemon.state_dir.join("old-ca.pem");
    std::fs::copy(pki.ca_cert(), &old_ca).unwrap();
    let mut old_options = daemon.admin();
    old_options.ca = old_ca;
    let mut established = old_options.connect().await.unwrap();

    // Re-mint the whole dev PKI (new CA) and reload.
    for file in [pki.ca_cert(), pki.ca_key()] {
        std::fs::remove_file(file).unwrap();
    }
    pki.ensure().unwrap();
    assert_eq!(daemon.reload().await, ReloadOutcome::Applied);

    // New connections use the new CA; old credentials no longer get in.
    daemon
        .admin()
        .connect()
        .await
        .unwrap()
        .admin
        .ping(PingRequest::default())
        .await
        .unwrap();
    assert_refused(&old_options, "credentials from the replaced CA").await;
    // A connection made before the reload keeps its session.
    established
        .admin
        .ping(PingRequest::default())
        .await
        .unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let daemon =
        InProcess::start("max_message_bytes = 2048\nrequest_timeout_seconds = 1", "").await;
    let mut client = daemon.admin().connect().await.unwrap();

    let err = client
        .admin
        .ping(PingRequest {
            payload: vec![],
            delay_ms: 10_001,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&err);
    let bad = details.bad_request().expect("BadRequest detail");
    assert_eq!(bad.field_violations[0].field, "delay_ms");

    let err = client
        .admin
        .ping(PingRequest {
            payload: vec![7; 4096],
            delay_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "oversized message: {err:?}");

    // The server's default deadline (1 s) applies to a call that carries none…
    let mut patient = daemon.admin();
    patient.call_timeout = Duration::from_secs(30);
    let mut client = patient.connect().await.unwrap();
    let mut request = tonic::Request::new(PingRequest {
        payload: vec![],
        delay_ms: 3_000,
    });
    request.metadata_mut().remove("grpc-timeout");
    let err = client.admin.ping(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    // …and a shorter caller deadline wins. tonic's client would also time the call itself and answer
    // CANCELLED when its own timer fires first, so this call goes over plain HTTP/2: the only timer is
    // the server's, which must honour the caller's 100 ms rather than its own 1 s or the 900 ms delay.
    let (code, message) = raw_unary(
        &daemon,
        "/brainstem.v1.Admin/Ping",
        Some("100m"),
        &PingRequest {
            payload: vec![],
            delay_ms: 900,
        },
    )
    .await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    // "deadline of 100 ms exceeded" (grpc-message may percent-encode the spaces).
    assert!(message.replace("%20", " ").contains("100 ms"), "{message}");

    // The connection is fine afterwards.
    client.admin.ping(PingRequest::default()).await.unwrap();
    daemon.stop().await;
}

/// One unary call over HTTP/2 without tonic's client (which enforces `grpc-timeout` itself), as the
/// dev admin. Returns the call's `grpc-status` and `grpc-message`.
async fn raw_unary(
    daemon: &InProcess,
    path: &str,
    grpc_timeout: Option<&str>,
    message: &impl prost::Message,
) -> (Code, String) {
    let reply = raw_call(daemon, path, grpc_timeout, &message.encode_to_vec()).await;
    (reply.code, reply.message)
}

/// What [`raw_call`] saw.
pub struct RawReply {
    pub code: Code,
    /// `grpc-message`, as sent (percent-encoded).
    pub message: String,
    /// Bytes of the header or trailer block that carried the status (names and values).
    pub status_block_bytes: usize,
}

/// One unary call whose message is `payload`, any bytes at all, framed as gRPC (uncompressed) and sent
/// over plain HTTP/2 as the dev admin: undecodable requests cannot be built with tonic's client.
pub async fn raw_call(
    daemon: &InProcess,
    path: &str,
    grpc_timeout: Option<&str>,
    payload: &[u8],
) -> RawReply {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let pki = brainstemd::crypto::pki::DevPki::new(&daemon.state_dir);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca_cert()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(pki.admin_cert())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.admin_key()).unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(daemon.addr()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut h2, connection) = h2::client::handshake(stream).await.unwrap();
    let driver = tokio::spawn(connection);

    let mut request = http::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = grpc_timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let (response, mut body) = h2.send_request(request.body(()).unwrap(), false).unwrap();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    body.send_data(bytes::Bytes::from(frame), true).unwrap();

    let response = response.await.unwrap();
    let (head, mut incoming) = response.into_parts();
    // A trailers-only answer carries the status in its headers; otherwise it follows the body.
    let mut fields = head.headers;
    if !fields.contains_key("grpc-status") {
        while let Some(chunk) = incoming.data().await {
            let chunk = chunk.unwrap();
            let _ = incoming.flow_control().release_capacity(chunk.len());
        }
        fields = incoming.trailers().await.unwrap().expect("trailers");
    }
    driver.abort();
    let code = fields
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .expect("grpc-status");
    let message = fields
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status_block_bytes = fields
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    RawReply {
        code: Code::from_i32(code),
        message,
        status_block_bytes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_the_extra_connection() {
    let daemon = InProcess::start("max_connections = 1", "").await;
    let mut first = daemon.admin().connect().await.unwrap();
    first.admin.ping(PingRequest::default()).await.unwrap();
    // The slot is taken (the first call went through its connection), so the listener closes the
    // second TCP connection before any TLS: the client's eager connect fails in the handshake.
    let second = daemon.admin().connect().await;
    assert!(
        second.is_err(),
        "a second connection was established past max_connections = 1"
    );
    first.admin.ping(PingRequest::default()).await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_dir_reopens_as_soon_as_the_daemon_has_stopped() {
    let mut daemon = InProcess::start("", "").await;
    let mut client = daemon.client().await;
    client.admin.ping(PingRequest::default()).await.unwrap();
    daemon.shutdown.cancel();
    let code = daemon.daemon.take().expect("running").wait().await;
    assert_eq!(code, 0);
    // No waiting and no retries: the stop closed the store, so sled's lock is already free.
    let store = brainstemd::store::Store::open(
        &daemon.state_dir,
        &brainstemd::config::Config::default().store,
    )
    .expect("the store opens right after the stop");
    let boot = store.record_boot().unwrap();
    assert_eq!(boot.boot_count, 2);
    assert!(boot.previous_shutdown_clean);
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_shutdown_fail_unavailable() {
    let daemon = InProcess::start("", "").await;
    let options = daemon.admin();
    let mut client = options.connect().await.unwrap();
    client.admin.ping(PingRequest::default()).await.unwrap();
    daemon.stop().await;
    let err = client.admin.ping(PingRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(options.connect().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_announces_not_serving_before_refusing_connections() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;

    let daemon = InProcess::start("shutdown_grace_seconds = 2", "").await;
    let options = daemon.admin();
    let mut client = options.connect().await.unwrap();
    let check = HealthCheckRequest {
        service: String::new(),
    };
    let status = client
        .health
        .check(check.clone())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    daemon.shutdown.cancel();
    crate::harness::eventually(
        "NOT_SERVING during the grace period",
        Duration::from_secs(2),
        || {
            let mut client = client.clone();
            let check = check.clone();
            async move {
                let status = client.health.check(check).await.ok()?.into_inner().status;
                (status == ServingStatus::NotServing as i32).then_some(())
            }
        },
    )
    .await;
    // Still accepting new connections during the grace period.
    options
        .connect()
        .await
        .expect("new connection during grace");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issuer_cannot_mint_more_than_it_holds() {
    use brainstem_client::v1::{IssueTokenRequest, VerifyTokenRequest};
    let daemon = InProcess::start(
        "",
        r#"
[roles]
admin = ["*"]
[[grants]]
principal = "minter"
capabilities = ["tokens.issue", "tokens.verify", "vision.*"]
"#,
    )
    .await;
    let mut client = options_for(&daemon.state_dir, daemon.addr(), "minter")
        .connect()
        .await
        .unwrap();
    let request = |caps: &[&str]| IssueTokenRequest {
        principal: "spiffe://brainstem.dev/agent/camera".to_owned(),
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
        ttl_seconds: 60,
    };
    let issued = client
        .tokens
        .issue(request(&["vision.capture", "vision.*"]))
        .await
        .expect("within the minter's grants")
        .into_inner();
    let verified = client
        .tokens
        .verify(VerifyTokenRequest {
            token: issued.token,
            capability: "vision.capture".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid, "{verified:?}");
    for caps in [
        &["*"][..],
        &["web.read"][..],
        &["vision.capture", "secrets.read"][..],
    ] {
        let err = client.tokens.issue(request(caps)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{caps:?}: {err:?}");
        assert!(err.message().contains("never carries more"), "{err:?}");
    }
    daemon.stop().await;
}
