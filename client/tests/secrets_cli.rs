//! `brainstemctl secrets` end to end against a scripted `brainstem.v1.Secrets` server over mutual TLS
//! (the dev PKI in a temporary directory): what reaches the server, what the operator sees, and how
//! errors come out. The daemon's own service is tested with the daemon.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use brainstem_client::v1::secrets_server::{Secrets, SecretsServer};
use brainstem_client::v1::*;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const VALUE: &[u8] = b"s3cr\x00t with a newline\n";

#[derive(Clone, Default)]
struct Scripted {
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    puts: Vec<(PutSecretRequest, bool)>,
    updates: Vec<UpdateSecretMetadataRequest>,
    master_key_files: Vec<String>,
    rotations_keyed: Vec<bool>,
}

fn at() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: 1_796_216_400, // 2026-12-02T13:00:00Z
        nanos: 0,
    })
}

fn metadata(path: &str) -> SecretMetadata {
    SecretMetadata {
        path: path.to_owned(),
        current_version: 2,
        oldest_version: 1,
        max_versions: 10,
        versions: vec![
            SecretVersionInfo {
                version: 1,
                deleted: true,
                created_at: at(),
                deleted_at: at(),
                origin: "put".into(),
                ..Default::default()
            },
            SecretVersionInfo {
                version: 2,
                created_at: at(),
                origin: "rotate".into(),
                ..Default::default()
            },
        ],
        custom_metadata: HashMap::from([("owner".to_owned(), "web".to_owned())]),
        ..Default::default()
    }
}

type Events = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<SecretEvent, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl Secrets for Scripted {
    async fn put(&self, r: Request<PutSecretRequest>) -> Result<Response<PutSecretReply>, Status> {
        let keyed = r.metadata().get("idempotency-key").is_some();
        let r = r.into_inner();
        if r.cas == Some(7) {
            return Err(Status::failed_precondition(
                "check-and-set: the current version is 3",
            ));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.puts.push((r, keyed));
        Ok(Response::new(PutSecretReply {
            version: seen.puts.len() as u64,
            created_at: at(),
        }))
    }
    async fn get(&self, r: Request<GetSecretRequest>) -> Result<Response<GetSecretReply>, Status> {
        let r = r.into_inner();
        if r.path == "/missing" {
            return Err(Status::not_found("/missing: no such secret"));
        }
        Ok(Response::new(GetSecretReply {
            value: VALUE.to_vec(),
            version: r.version.unwrap_or(4),
            created_at: at(),
        }))
    }
    async fn list(
        &self,
        r: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsReply>, Status> {
        let r = r.into_inner();
        let (paths, next): (&[&str], &str) = match r.page_token.as_str() {
            "" => (&["/a/1", "/a/2"], "page-2"),
            "page-2" => (&["/a/3"], ""),
            other => return Err(Status::invalid_argument(format!("token {other}"))),
        };
        Ok(Response::new(ListSecretsReply {
            paths: paths.iter().map(|p| format!("{}{p}", r.prefix)).collect(),
            next_page_token: next.to_owned(),
        }))
    }
    async fn delete(
        &self,
        r: Request<SecretVersionsRequest>,
    ) -> Result<Response<SecretVersionsReply>, Status> {
        let versions = r.into_inner().versions;
        Ok(Response::new(SecretVersionsReply {
            versions: if versions.is_empty() {
                vec![4]
            } else {
                versions
            },
        }))
    }
    async fn undelete(
        &self,
        _: Request<SecretVersionsRequest>,
    ) -> Result<Response<SecretVersionsReply>, Status> {
        Ok(Response::new(SecretVersionsReply { versions: vec![] }))
    }
    async fn destroy(
        &self,
        r: Request<SecretVersionsRequest>,
    ) -> Result<Response<SecretVersionsReply>, Status> {
        Ok(Response::new(SecretVersionsReply {
            versions: r.into_inner().versions,
        }))
    }
    async fn metadata(
        &self,
        r: Request<SecretMetadataRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        Ok(Response::new(metadata(&r.into_inner().path)))
    }
    async fn update_metadata(
        &self,
        r: Request<UpdateSecretMetadataRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let r = r.into_inner();
        let mut reply = metadata(&r.path);
        reply.rotation_period_seconds = r.rotation_period_seconds.unwrap_or(0);
        reply.generator = r.generator.clone().unwrap_or_default();
        self.seen.lock().unwrap().updates.push(r);
        Ok(Response::new(reply))
    }
    async fn rotate_now(
        &self,
        r: Request<RotateSecretRequest>,
    ) -> Result<Response<RotateSecretReply>, Status> {
        let keyed = r.metadata().get("idempotency-key").is_some();
        self.seen.lock().unwrap().rotations_keyed.push(keyed);
        Ok(Response::new(RotateSecretReply { version: 9 }))
    }
    type WatchStream = Events;
    async fn watch(
        &self,
        r: Request<WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let prefix = r.into_inner().prefix;
        let events = ["put", "rotate"].map(|kind| {
            Ok(SecretEvent {
                path: format!("{prefix}/db"),
                version: if kind == "put" { 1 } else { 2 },
                kind: kind.to_owned(),
                at: at(),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }
    async fn rotate_master_key(
        &self,
        r: Request<RotateMasterKeyRequest>,
    ) -> Result<Response<RotateMasterKeyReply>, Status> {
        let file = r.into_inner().new_key_file;
        self.seen.lock().unwrap().master_key_files.push(file);
        Ok(Response::new(RotateMasterKeyReply {
            rewrapped: 12,
            signing_keys: 2,
            key_id: "k-test".into(),
        }))
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Fixture {
    async fn start() -> Fixture {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = brainstem_keys::pki::DevPki::new(dir.path());
        pki.ensure().unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read(&pki.server_cert()),
                read(&pki.server_key()),
            ))
            .client_ca_root(Certificate::from_pem(read(&pki.ca_cert())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scripted = Scripted::default();
        let seen = scripted.seen.clone();
        let server = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(SecretsServer::new(scripted));
        tokio::spawn(
            server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Fixture { dir, addr, seen }
    }

    /// Runs `brainstemctl ARGS` with `stdin` on its standard input (off the runtime's threads).
    async fn ctl(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_brainstemctl"));
        command
            .arg("--state-dir")
            .arg(self.dir.path())
            .arg("--endpoint")
            .arg(self.addr.to_string())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("BRAINSTEM_CA")
            .env_remove("BRAINSTEM_CERT")
            .env_remove("BRAINSTEM_KEY")
            .env_remove("BRAINSTEM_ENDPOINT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stdin = stdin.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), &stdin).unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_sends_every_byte_from_stdin_or_a_file_and_a_key() {
    let f = Fixture::start().await;
    let out = f.ctl(&["secrets", "put", "/agents/web/db"], VALUE).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "/agents/web/db: version 1 created 2026-12-02T13:00:00Z\n"
    );

    let out = f
        .ctl(
            &["secrets", "put", "/a", "--strip-newline", "--cas", "0"],
            VALUE,
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    std::fs::write(f.dir.path().join("value.txt"), b"from a file\n").unwrap();
    let out = f
        .ctl(
            &["-o", "json", "secrets", "put", "/a", "--file", "value.txt"],
            b"",
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["version"], 3);

    let args = [
        "secrets",
        "put",
        "/a",
        "--generate",
        "--generator",
        "hex:32",
        "--rotate-every",
        "1h",
    ];
    let out = f.ctl(&args, b"ignored").await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let seen = f.seen.lock().unwrap();
    let values: Vec<&[u8]> = seen.puts.iter().map(|(r, _)| &r.value[..]).collect();
    assert_eq!(
        values,
        [
            VALUE,
            &VALUE[..VALUE.len() - 1],
            b"from a file\n",
            b"" as &[u8]
        ]
    );
    assert_eq!(seen.puts[1].0.cas, Some(0));
    assert_eq!(seen.puts[0].0.cas, None);
    assert_eq!(seen.puts[3].0.generator, "hex:32");
    assert_eq!(seen.puts[3].0.rotation_period_seconds, 3600);
    assert!(seen.puts.iter().all(|(_, keyed)| *keyed), "every put keyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_writes_raw_bytes_to_stdout_or_a_private_file_and_json_never_holds_the_value() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::start().await;
    let out = f.ctl(&["secrets", "get", "/agents/web/db"], b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, VALUE);

    let out = f
        .ctl(
            &[
                "secrets",
                "get",
                "/agents/web/db",
                "--version",
                "2",
                "--out",
                "v2",
            ],
            b"",
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = f.dir.path().join("v2");
    assert_eq!(std::fs::read(&file).unwrap(), VALUE);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(text(&out.stdout).contains("version 2 written to v2"));

    for args in [
        &["secrets", "get", "/agents/web/db", "--json"][..],
        &["-o", "json", "secrets", "get", "/agents/web/db"],
    ] {
        let out = f.ctl(args, b"").await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"path": "/agents/web/db", "version": 4,
                               "created_at": "2026-12-02T13:00:00Z"})
        );
        assert!(!text(&out.stdout).contains("s3cr"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_follows_every_page_and_versions_commands_print_what_changed() {
    let f = Fixture::start().await;
    let out = f
        .ctl(&["secrets", "list", "/p", "--page-size", "2"], b"")
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/p/a/1\n/p/a/2\n/p/a/3\n");
    let out = f.ctl(&["-o", "json", "secrets", "list"], b"").await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["paths"], serde_json::json!(["/a/1", "/a/2", "/a/3"]));

    let out = f.ctl(&["secrets", "delete", "/p"], b"").await;
    assert_eq!(text(&out.stdout), "/p: deleted v4\n");
    let out = f
        .ctl(&["secrets", "destroy", "/p", "--versions", "1,2"], b"")
        .await;
    assert_eq!(text(&out.stdout), "/p: destroyed v1, v2\n");
    let out = f.ctl(&["secrets", "undelete", "/p"], b"").await;
    assert_eq!(text(&out.stdout), "/p: no version changed\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_shows_and_updates_settings() {
    let f = Fixture::start().await;
    let out = f.ctl(&["secrets", "metadata", "/p"], b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("current version   2 (oldest kept 1)"),
        "{shown}"
    );
    assert!(shown.contains("owner=web"), "{shown}");
    assert!(shown.contains("rotation          off"), "{shown}");

    let out = f
        .ctl(
            &[
                "secrets",
                "metadata",
                "/p",
                "--json",
                "--set",
                "rotation_period=1h",
                "--set",
                "generator=hex:32",
                "--set",
                "cas_required=false",
                "--custom",
                "team=infra",
            ],
            b"",
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rotation_period_seconds"], 3600);
    assert_eq!(json["versions"][0]["state"], "deleted");
    let seen = f.seen.lock().unwrap();
    let update = &seen.updates[0];
    assert_eq!(update.rotation_period_seconds, Some(3600));
    assert_eq!(update.cas_required, Some(false));
    assert_eq!(update.max_versions, None);
    assert_eq!(update.custom_metadata["team"], "infra");
    assert!(!update.replace_custom_metadata);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_watch_and_master_key_rotation() {
    let f = Fixture::start().await;
    let out = f.ctl(&["secrets", "rotate", "/p"], b"").await;
    assert_eq!(text(&out.stdout), "/p: rotated to version 9\n");
    assert_eq!(f.seen.lock().unwrap().rotations_keyed, [true]);

    // The scripted stream sends two events and ends: watch prints them and exits 0.
    let out = f.ctl(&["secrets", "watch", "/agents"], b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "2026-12-02T13:00:00Z put /agents/db v1\n2026-12-02T13:00:00Z rotate /agents/db v2\n"
    );
    let out = f.ctl(&["secrets", "watch", "--json"], b"").await;
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["kind"], "rotate");

    std::fs::create_dir(f.dir.path().join("keys")).unwrap();
    std::fs::write(f.dir.path().join("keys/new.key"), [7u8; 32]).unwrap();
    let out = f
        .ctl(
            &[
                "secrets",
                "rotate-master-key",
                "--new-key-file",
                "keys/../keys/new.key",
            ],
            b"",
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("k-test: 12 data key(s) and 2 token signing key(s)"));
    let sent = f.seen.lock().unwrap().master_key_files[0].clone();
    let expected = f.dir.path().join("keys/new.key").canonicalize().unwrap();
    assert_eq!(Path::new(&sent), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_code_and_message_and_exit_like_other_commands() {
    let f = Fixture::start().await;
    let out = f.ctl(&["secrets", "put", "/p", "--cas", "7"], b"v").await;
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        text(&out.stderr),
        "brainstemctl: FAILED_PRECONDITION: check-and-set: the current version is 3\n"
    );
    let out = f
        .ctl(&["-o", "json", "secrets", "get", "/missing"], b"")
        .await;
    assert_eq!(out.status.code(), Some(5));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["code"], "NOT_FOUND");

    // A refused command line never reaches the server.
    let out = f.ctl(&["secrets", "put", "/p"], b"").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is empty"));
    let out = f
        .ctl(
            &["secrets", "metadata", "/p", "--set", "max_versions=lots"],
            b"",
        )
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("a whole number"));
    let seen = f.seen.lock().unwrap();
    assert!(seen.puts.is_empty() && seen.updates.is_empty());
}
