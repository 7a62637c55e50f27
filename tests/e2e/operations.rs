//! Operations end to end: correlation ids on every reply, in audit records and in errors; the log
//! level at runtime; the metrics the alert rules and the dashboard use.

use std::time::Duration;

use brainstem_client::v1::{AuditQueryRequest, CheckRequest, GetStatusRequest, PingRequest};
use tonic::metadata::MetadataMap;

use crate::harness::{DaemonProcess, options_for, wait_for_audit};

const HEADER: &str = "x-request-id";

fn with_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(HEADER, id.parse().expect("an ASCII header value"));
    request
}

fn echoed(metadata: &MetadataMap) -> String {
    metadata
        .get(HEADER)
        .unwrap_or_else(|| panic!("no {HEADER} in {metadata:?}"))
        .to_str()
        .expect("ASCII")
        .to_owned()
}

fn generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The correlation id in an error's ErrorInfo.
fn error_info_id(status: &tonic::Status) -> String {
    let details = tonic_types::StatusExt::get_error_details(status);
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "brainstem");
    info.metadata
        .get("correlation_id")
        .cloned()
        .unwrap_or_else(|| panic!("no correlation_id in {info:?}"))
}

fn check(action: &str, correlation_id: &str) -> CheckRequest {
    CheckRequest {
        action: action.to_owned(),
        resource: "https://example.org/x".to_owned(),
        correlation_id: correlation_id.to_owned(),
        ..Default::default()
    }
}

async fn audited_ids(
    client: &brainstem_client::Client,
    principal: &str,
    action: &str,
    count: usize,
) -> Vec<String> {
    let records = wait_for_audit(
        client,
        AuditQueryRequest {
            principal: principal.to_owned(),
            action: action.to_owned(),
            ..Default::default()
        },
        count,
        Duration::from_secs(10),
    )
    .await;
    records.into_iter().map(|r| r.correlation_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_carries_the_correlation_id_and_so_do_its_audit_records_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let client = daemon.client().await;
    let mut admin = client.admin.clone();

    // A valid id is echoed as sent.
    let reply = admin
        .ping(with_id(PingRequest::default(), "op-ping-1"))
        .await
        .unwrap();
    assert_eq!(echoed(reply.metadata()), "op-ping-1");

    // None sent: one is generated, and each call gets its own.
    let a = echoed(admin.ping(PingRequest::default()).await.unwrap().metadata());
    let b = echoed(admin.ping(PingRequest::default()).await.unwrap().metadata());
    assert!(generated(&a) && generated(&b), "{a} {b}");
    assert_ne!(a, b);

    // An unusable id is replaced, not echoed.
    for bad in ["has space".to_owned(), "x".repeat(129)] {
        let reply = admin
            .ping(with_id(PingRequest::default(), &bad))
            .await
            .unwrap();
        let id = echoed(reply.metadata());
        assert!(generated(&id), "{bad:?} became {id:?}");
    }

    // A handler's error carries it in metadata and in ErrorInfo.
    let err = admin
        .ping(with_id(
            PingRequest {
                delay_ms: 1_000_000,
                ..Default::default()
            },
            "op-bad-ping",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(echoed(err.metadata()), "op-bad-ping");
    assert_eq!(error_info_id(&err), "op-bad-ping");

    // Policy.Check: the header's id is the audit record's correlation_id, unless the request names
    // its own.
    let mut policy = client.policy.clone();
    let reply = policy
        .check(with_id(check("ops.header", ""), "op-check-header"))
        .await
        .unwrap();
    assert_eq!(echoed(reply.metadata()), "op-check-header");
    policy
        .check(with_id(check("ops.field", "from-the-field"), "op-check-2"))
        .await
        .unwrap();
    let admin_principal = client
        .admin
        .clone()
        .who_am_i(brainstem_client::v1::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .principal;
    assert_eq!(
        audited_ids(&client, &admin_principal, "ops.header", 1).await,
        ["op-check-header"]
    );
    assert_eq!(
        audited_ids(&client, &admin_principal, "ops.field", 1).await,
        ["from-the-field"]
    );
    // Audit.Query finds one call's records by its id alone.
    let mut audit = client.audit.clone();
    let by_id = audit
        .query(AuditQueryRequest {
            correlation_id: "op-check-header".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(by_id.len(), 1, "{by_id:?}");
    assert_eq!(by_id[0].action, "ops.header");
    let bad = audit
        .query(AuditQueryRequest {
            correlation_id: "has space".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("correlation_id"),
        "{}",
        bad.message()
    );

    // A refusal by the layer itself: echoed, in ErrorInfo, and in its (aggregated) audit record.
    let options = options_for(
        &daemon.state_dir,
        daemon.grpc_addr,
        "spiffe://brainstem.dev/ops-nobody",
    );
    let mut nobody = options.connect().await.unwrap();
    let denied = nobody
        .admin
        .get_status(with_id(GetStatusRequest {}, "op-denied-1"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert_eq!(echoed(denied.metadata()), "op-denied-1");
    assert_eq!(error_info_id(&denied), "op-denied-1");
    assert_eq!(
        audited_ids(
            &client,
            "spiffe://brainstem.dev/ops-nobody",
            "/brainstem.v1.Admin/GetStatus",
            1
        )
        .await,
        ["op-denied-1"]
    );
    drop(nobody);
    drop(client);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_changes_at_runtime_audited_and_a_reload_applies_the_configured_one() {
    use brainstem_client::v1::{GetLogLevelRequest, SetLogLevelRequest};
    let dir = tempfile::tempdir().unwrap();
    // An empty RUST_LOG: the configuration's `[log] level` ("info") is in force.
    let mut daemon = DaemonProcess::start_logging(dir.path(), &[], "").await;
    let client = daemon.client().await;
    let mut admin = client.admin.clone();
    let now = admin
        .get_log_level(GetLogLevelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (now.filter.as_str(), now.configured.as_str()),
        ("info", "info")
    );
    assert!(!now.env_override);

    let filter = "debug,h2=info,hyper=info,tower=info";
    let reply = admin
        .set_log_level(with_id(
            SetLogLevelRequest {
                filter: filter.to_owned(),
            },
            "op-log-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.filter.as_str(), reply.previous.as_str()),
        (filter, "info")
    );
    assert_eq!(
        admin
            .get_log_level(GetLogLevelRequest {})
            .await
            .unwrap()
            .into_inner()
            .filter,
        filter
    );
    // Logged inside the call's span, so the line names the call's correlation id.
    let line = crate::harness::eventually("the change in the log", Duration::from_secs(10), || {
        let stderr = daemon.stderr();
        async move {
            stderr
                .lines()
                .find(|l| l.contains("log filter changed"))
                .map(str::to_owned)
        }
    })
    .await;
    assert!(line.contains("correlation_id=op-log-1"), "{line}");
    // Audited with the call's id.
    let records = wait_for_audit(
        &client,
        AuditQueryRequest {
            action: "log.level.set".to_owned(),
            ..Default::default()
        },
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(records[0].resource, filter);
    assert_eq!(records[0].correlation_id, "op-log-1");
    assert_eq!(records[0].kind, "admin");

    // An invalid filter changes nothing and names the field.
    let err = admin
        .set_log_level(SetLogLevelRequest {
            filter: "brainstemd=bogus".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(crate::harness::violations(&err), ["filter"]);
    assert_eq!(
        admin
            .get_log_level(GetLogLevelRequest {})
            .await
            .unwrap()
            .into_inner()
            .filter,
        filter
    );

    // SIGHUP applies `[log] level` again, audited as the reload's doing.
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_message("configuration reloaded", Duration::from_secs(10))
        .await;
    assert_eq!(
        admin
            .get_log_level(GetLogLevelRequest {})
            .await
            .unwrap()
            .into_inner()
            .filter,
        "info"
    );
    let records = wait_for_audit(
        &client,
        AuditQueryRequest {
            action: "log.level.set".to_owned(),
            newest_first: true,
            ..Default::default()
        },
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        (records[0].caller.as_str(), records[0].resource.as_str()),
        ("brainstemd reload", "info")
    );
    drop(client);
    daemon.stop().await;
}

/// The certificate the daemon presents to a new connection (DER), via a raw TLS handshake as the
/// dev admin.
async fn served_certificate(daemon: &DaemonProcess) -> Vec<u8> {
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
    let tcp = tokio::net::TcpStream::connect(daemon.grpc_addr)
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, connection) = stream.get_ref();
    connection.peer_certificates().unwrap()[0].to_vec()
}

fn file_certificate(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

async fn server_expiry(daemon: &DaemonProcess) -> f64 {
    let (code, text) = crate::harness::http_get(daemon.metrics_addr, "/metrics").await;
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("brainstem_tls_certificate_expiry_timestamp_seconds{cert=\"server\"} ")
        })
        .unwrap_or_else(|| panic!("no server expiry gauge in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate_without_dropping_a_live_stream() {
    use brainstem_client::v1::{RestartActorRequest, WatchActorsRequest};
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start_in(dir.path()).await;
    let pki = brainstemd::crypto::pki::DevPki::new(&daemon.state_dir);
    let client = daemon.client().await;
    let before = server_expiry(&daemon).await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    assert!(before > now() + 14.0 * 86_400.0, "{before}");
    let ca = client_ca_expiry(&daemon).await;
    assert!(ca > now(), "{ca}");
    assert_eq!(
        served_certificate(&daemon).await,
        file_certificate(&pki.server_cert())
    );

    // A stream opened before the reload: its initial snapshot arrives.
    let mut watch = client
        .supervisor
        .clone()
        .watch_actors(WatchActorsRequest {
            name: "token-maintenance".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch
        .message()
        .await
        .unwrap()
        .expect("the initial snapshot");
    assert_eq!(first.actor.unwrap().name, "token-maintenance");

    // Renew the server certificate (same CA) once the wall clock passed the second the old one was
    // issued in, so the new one expires later; then SIGHUP.
    crate::harness::eventually("a new second", Duration::from_secs(5), || async {
        // The dev server certificate is valid for 825 days from its issue.
        (now() > before - 825.0 * 86_400.0 + 1.0).then_some(())
    })
    .await;
    std::fs::remove_file(pki.server_cert()).unwrap();
    std::fs::remove_file(pki.server_key()).unwrap();
    pki.ensure().unwrap();
    let renewed = file_certificate(&pki.server_cert());
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_message("configuration reloaded", Duration::from_secs(10))
        .await;

    // New connections get the renewed certificate; the gauge follows it.
    assert_eq!(served_certificate(&daemon).await, renewed);
    assert!(server_expiry(&daemon).await > before);

    // The stream opened before the reload still delivers.
    client
        .supervisor
        .clone()
        .restart_actor(RestartActorRequest {
            name: "token-maintenance".to_owned(),
        })
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("an event on the old stream")
        .expect("the stream is still open")
        .expect("not ended");
    assert_eq!(event.actor.unwrap().name, "token-maintenance");
    drop(watch);
    drop(client);
    daemon.stop().await;
}

async fn client_ca_expiry(daemon: &DaemonProcess) -> f64 {
    let (_, text) = crate::harness::http_get(daemon.metrics_addr, "/metrics").await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("brainstem_tls_certificate_expiry_timestamp_seconds{cert=\"ca\"} ")
        })
        .unwrap_or_else(|| panic!("no ca expiry gauge in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Every `brainstem_…` token in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("brainstem_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_and_the_dashboard_use_only_exported_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("config/alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("config/grafana/brainstem.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let used: std::collections::BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    assert!(
        used.contains("brainstem_backup_last_success_timestamp_seconds"),
        "the rules watch backups"
    );

    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    // A connection and a call, as any scraped daemon has seen.
    let client = daemon.client().await;
    client
        .admin
        .clone()
        .ping(PingRequest::default())
        .await
        .unwrap();
    let (code, text) = crate::harness::http_get(daemon.metrics_addr, "/metrics").await;
    assert_eq!(code, 200);
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "used in config/alerts.yml or config/grafana/brainstem.json but not exported: {missing:?}\nexported: {exported:?}"
    );
    drop(client);
    daemon.stop().await;
}

/// The value of one `brainstem_grpc_requests_total` series (0 when it is not exported yet).
fn requests(text: &str, method: &str, code: &str) -> f64 {
    let series = format!("brainstem_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_counted_when_it_ends_with_the_code_its_end_carries() {
    use brainstem_client::v1::CreateBackupRequest;
    use brainstem_client::v1::WatchActorsRequest;
    use brainstem_client::v1::backup_client::BackupClient;
    const WATCH: &str = "/brainstem.v1.Supervisor/WatchActors";
    const BACKUP: &str = "/brainstem.v1.Backup/Create";
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let client = daemon.client().await;
    let scrape = || async {
        let (code, body) = crate::harness::http_get(daemon.metrics_addr, "/metrics").await;
        assert_eq!(code, 200);
        body
    };
    let counted_once = |method: &'static str, code: &'static str| {
        crate::harness::eventually(
            "the stream counted once",
            Duration::from_secs(10),
            move || async move { (requests(&scrape().await, method, code) == 1.0).then_some(()) },
        )
    };

    // A stream the caller walks away from: not counted while it is open, CANCELLED once dropped
    // (before, every stream was counted OK at its headers).
    let mut watch = client
        .supervisor
        .clone()
        .watch_actors(WatchActorsRequest {
            name: "token-maintenance".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    let open = scrape().await;
    assert_eq!(requests(&open, WATCH, "OK"), 0.0, "counted while open");
    assert_eq!(requests(&open, WATCH, "CANCELLED"), 0.0);
    drop(watch);
    counted_once(WATCH, "CANCELLED").await;
    assert_eq!(requests(&scrape().await, WATCH, "OK"), 0.0);

    // A stream that runs to its end is counted OK, once, when its trailers pass.
    let channel = daemon.options().channel().await.unwrap();
    let mut backup = BackupClient::new(channel)
        .create(CreateBackupRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    while backup.message().await.unwrap().is_some() {
        chunks += 1;
    }
    assert!(chunks > 0);
    counted_once(BACKUP, "OK").await;
    assert_eq!(requests(&scrape().await, BACKUP, "CANCELLED"), 0.0);
}
