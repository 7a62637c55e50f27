//! Test harness: the real `brainstemd` binary under a `NOTIFY_SOCKET` the test owns, or the daemon
//! in-process; both on 127.0.0.1 port 0, each with its own temp state directory and dev PKI.
//! Everything a test starts is stopped when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use brainstem_client::{Client, ConnectOptions};
use tokio::net::UnixDatagram;

/// Polls `check` until it returns `Some` or `deadline` passes. No sleeps as synchronisation.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the audit trail with `query` until it holds at least `count` records, or fails the test at
/// `deadline`. Returns the records of the last answer (newest first, as the service orders them), so the
/// caller can assert the exact number and their fields. Audit records are written in the background, so
/// a test that just made calls must wait for them this way, never with a sleep.
pub async fn wait_for_audit(
    client: &Client,
    query: brainstem_client::v1::AuditQueryRequest,
    count: usize,
    deadline: Duration,
) -> Vec<brainstem_client::v1::AuditRecord> {
    let what = format!("{count} audit records matching {query:?}");
    eventually(&what, deadline, || {
        let mut audit = client.audit.clone();
        let query = query.clone();
        async move {
            let reply = audit.query(query).await.ok()?.into_inner();
            (reply.records.len() >= count).then_some(reply.records)
        }
    })
    .await
}

static BUILD: Mutex<bool> = Mutex::new(false);

/// Path of a workspace binary next to this test's target directory, built on first use if missing
/// (`cargo test` builds only the binaries of the package under test).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_owned();
    let path = dir.join(name);
    let mut built = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "brainstemd",
            "-p",
            "brainstem-client",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        *built = true;
    }
    assert!(path.exists(), "{} not found after building", path.display());
    path
}

/// Options for the dev admin identity of a state directory.
pub fn admin_options(state_dir: &Path, addr: std::net::SocketAddr) -> ConnectOptions {
    let mut options = ConnectOptions::dev(state_dir, &addr.to_string());
    options.connect_timeout = Duration::from_secs(5);
    options.call_timeout = Duration::from_secs(10);
    options
}

/// Mints a client certificate from the dev CA of `state_dir` and returns options that use it.
pub fn options_for(
    state_dir: &Path,
    addr: std::net::SocketAddr,
    principal: &str,
) -> ConnectOptions {
    let pki = brainstemd::crypto::pki::DevPki::new(state_dir);
    let (cert, key) = pki
        .issue_client(principal, &state_dir.join("test-clients"), 1)
        .expect("issue client certificate");
    admin_options(state_dir, addr).with_identity(cert, key)
}

/// A running `brainstemd` process.
pub struct DaemonProcess {
    pub child: Child,
    /// Owned by the test, so a restart can reuse it.
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub grpc_addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    notify: UnixDatagram,
    /// Every notify message received so far.
    pub messages: Vec<String>,
}

impl DaemonProcess {
    /// Starts (or restarts) `brainstemd --dev` over `dir/state` and waits for `READY=1`.
    pub async fn start_in(dir: &Path) -> DaemonProcess {
        DaemonProcess::start_with(dir, &[]).await
    }

    /// [`DaemonProcess::start_in`] with further arguments (e.g. `--config FILE`).
    pub async fn start_with(dir: &Path, args: &[&std::ffi::OsStr]) -> DaemonProcess {
        DaemonProcess::start_logging(dir, args, "info").await
    }

    /// [`DaemonProcess::start_with`] with `RUST_LOG=log`.
    pub async fn start_logging(dir: &Path, args: &[&std::ffi::OsStr], log: &str) -> DaemonProcess {
        let mut process = DaemonProcess::spawn_only(dir, args, log);
        let ready = process
            .wait_message("READY=1", Duration::from_secs(30))
            .await;
        let status = ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .expect("READY carries a STATUS line");
        let field = |name: &str| {
            status
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {status:?}"))
        };
        process.grpc_addr = field("grpc=");
        process.metrics_addr = field("metrics=");
        process
    }

    /// Spawns `brainstemd --dev` over `dir/state` without waiting for anything (a start expected to
    /// fail, or one the test follows itself).
    pub fn spawn_only(dir: &Path, args: &[&std::ffi::OsStr], log: &str) -> DaemonProcess {
        let state_dir = dir.join("state");
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let notify = UnixDatagram::bind(&socket_path).expect("bind notify socket");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let child = Command::new(bin("brainstemd"))
            .args(["--dev", "--state-dir"])
            .arg(&state_dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn brainstemd");
        DaemonProcess {
            child,
            dir: dir.to_owned(),
            state_dir,
            grpc_addr: "0.0.0.0:0".parse().expect("placeholder"),
            metrics_addr: "0.0.0.0:0".parse().expect("placeholder"),
            notify,
            messages: Vec::new(),
        }
    }

    /// Waits for a notify datagram containing `needle`; fails early if the process exits.
    pub async fn wait_message(&mut self, needle: &str, deadline: Duration) -> String {
        if let Some(found) = self.messages.iter().find(|m| m.contains(needle)) {
            return found.clone();
        }
        let until = Instant::now() + deadline;
        let mut buf = vec![0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(200), self.notify.recv(&mut buf)).await
            {
                Ok(Ok(n)) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.messages.push(message.clone());
                    if message.contains(needle) {
                        return message;
                    }
                }
                Ok(Err(err)) => panic!("notify socket: {err}"),
                Err(_) => {}
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "brainstemd exited ({status}) before sending {needle:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < until,
                "no {needle:?} within {deadline:?}; got {:?}; stderr:\n{}",
                self.messages,
                self.stderr()
            );
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn options(&self) -> ConnectOptions {
        admin_options(&self.state_dir, self.grpc_addr)
    }

    pub async fn client(&self) -> Client {
        self.options().connect().await.expect("connect as admin")
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits for the process to exit, polling.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = &mut self.child;
        eventually("brainstemd to exit", deadline, || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }

    /// Stops gracefully and asserts exit 0.
    pub async fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "exit {status}; stderr:\n{}",
            self.stderr()
        );
    }

    /// Kills with SIGKILL: a crash.
    pub async fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).await;
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET on the metrics listener; returns (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("HTTP status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of an unlabelled gauge or counter in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Calls `Admin.GetStatus` (needs `admin.status`), asserts PERMISSION_DENIED and returns the status.
pub async fn get_status_denied(client: &mut Client) -> tonic::Status {
    let denied = client
        .admin
        .get_status(brainstem_client::v1::GetStatusRequest {})
        .await
        .expect_err("GetStatus without admin.status must be refused");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    denied
}

/// Asserts the daemon refuses these credentials: at connect, or (TLS 1.3 finishes the client's side of
/// the handshake before the server's verdict arrives) on the first call.
pub async fn assert_refused(options: &ConnectOptions, what: &str) {
    if let Ok(mut client) = options.connect().await {
        let result = client
            .admin
            .ping(brainstem_client::v1::PingRequest::default())
            .await;
        assert!(result.is_err(), "{what}: a call got through");
    }
}

/// The fields an INVALID_ARGUMENT answer names in its google.rpc.BadRequest detail.
pub fn violations(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    tonic_types::StatusExt::get_error_details(status)
        .bad_request()
        .expect("BadRequest detail")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

/// The `grpc.health.v1` status of `service` ("" for the daemon as a whole).
pub async fn health(client: &mut Client, service: &str) -> i32 {
    client
        .health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}
