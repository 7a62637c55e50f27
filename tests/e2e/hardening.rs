//! Bad input from the network and the host, each with a clear answer (issue 9): idle TCP connections,
//! a notify socket nobody drains, ambiguous or lower-case `authorization` headers.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use brainstem_client::v1::{CheckRequest, IssueTokenRequest, PingRequest};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;

use crate::harness::{admin_options, bin, eventually, http_get, metric_value, options_for};
use crate::inprocess::InProcess;

/// Reads from a connection the test opened and never wrote to; `true` once the daemon closed it
/// (end of stream or reset), `false` if it is still open at `deadline`.
async fn closed_by_daemon(stream: &mut TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(deadline, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("the daemon sent {n} bytes to a connection that said nothing"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_does_not_lock_out_a_client() {
    // Deadlines far longer than the test: only evicting silent connections can let the client in.
    let daemon = InProcess::start(
        "max_connections = 4\nmax_pending_handshakes = 8\nmax_pending_handshakes_per_address = 8\n\
         first_byte_timeout_seconds = 30\nhandshake_timeout_seconds = 30",
        "",
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(daemon.addr()).await.unwrap());
    }
    // The client's connection queues behind all 64 and still gets in.
    let started = Instant::now();
    let mut client = tokio::time::timeout(Duration::from_secs(10), daemon.admin().connect())
        .await
        .expect("connect within 10 s during the flood")
        .expect("connect during the flood");
    client
        .admin
        .ping(PingRequest::default())
        .await
        .expect("Ping during the flood");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The oldest idle connections were closed to make room; established slots are still free for more
    // clients (idle connections never hold them).
    assert!(closed_by_daemon(&mut idle[0], Duration::from_secs(5)).await);
    for _ in 0..3 {
        let mut more = daemon.admin().connect().await.expect("another client");
        more.admin.ping(PingRequest::default()).await.unwrap();
    }
    drop(idle);
    assert_eq!(daemon.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_at_the_first_byte_deadline() {
    let daemon = InProcess::start(
        "first_byte_timeout_seconds = 1\nhandshake_timeout_seconds = 60",
        "",
    )
    .await;
    let mut idle = TcpStream::connect(daemon.addr()).await.unwrap();
    // Well before the handshake deadline (60 s).
    assert!(
        closed_by_daemon(&mut idle, Duration::from_secs(15)).await,
        "an idle connection stayed open past first_byte_timeout_seconds"
    );
    let mut client = daemon.client().await;
    client.admin.ping(PingRequest::default()).await.unwrap();
    assert_eq!(daemon.stop().await, 0);
}

/// Kills the process if the test ends before it exited.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({signal})");
}

/// The "brainstemd ready" log line's `name=` field.
fn ready_field(log: &str, name: &str) -> Option<std::net::SocketAddr> {
    log.lines()
        .find(|l| l.contains("brainstemd ready"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name))?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_nobody_drains_blocks_neither_reload_nor_stop() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    // The "service manager" binds and never reads; its queue is full before the daemon starts.
    let _manager = UnixDatagram::bind(&socket_path).unwrap();
    let filler = UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    loop {
        match filler.send_to(b"STATUS=filler", &socket_path) {
            Ok(_) => queued += 1,
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => panic!("filling the notify socket: {err}"),
        }
        assert!(queued < 100_000, "the notify socket never filled");
    }

    let state_dir = dir.path().join("state");
    let log_path = dir.path().join("stderr.log");
    let mut daemon = Running(
        Command::new(bin("brainstemd"))
            .args(["--dev", "--state-dir"])
            .arg(&state_dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", &socket_path)
            // Watchdog pings every 100 ms, all of them into the full queue.
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("spawn brainstemd"),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let (grpc, metrics) = eventually("brainstemd ready", Duration::from_secs(30), || {
        let text = log();
        async move {
            Some((
                ready_field(&text, "grpc=")?,
                ready_field(&text, "metrics=")?,
            ))
        }
    })
    .await;
    let mut client = admin_options(&state_dir, grpc).connect().await.unwrap();
    client.admin.ping(PingRequest::default()).await.unwrap();

    // SIGHUP: the reload sends RELOADING=1 and READY=1 into the full queue, and still applies.
    signal(&daemon.0, libc::SIGHUP);
    eventually("the reload", Duration::from_secs(10), || {
        let done = log().contains("configuration reloaded");
        async move { done.then_some(()) }
    })
    .await;
    client.admin.ping(PingRequest::default()).await.unwrap();
    let (_, body) = http_get(metrics, "/metrics").await;
    let dropped = metric_value(&body, "brainstem_notify_dropped_total").unwrap_or(0.0);
    assert!(dropped >= 3.0, "dropped {dropped}; metrics:\n{body}");
    assert!(log().contains("socket queue is full"), "{}", log());

    // SIGTERM: STOPPING=1 is dropped too, and the daemon stops within its deadline, exit 0.
    signal(&daemon.0, libc::SIGTERM);
    let child = &mut daemon.0;
    let status = eventually("brainstemd to exit", Duration::from_secs(15), || {
        let status = child.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    assert!(status.success(), "exit {status}; stderr:\n{}", log());
}

const AGENT: &str = "spiffe://brainstem.dev/agent";

fn check(action: &str) -> CheckRequest {
    CheckRequest {
        action: action.to_owned(),
        resource: "https://example.org/x".to_owned(),
        ..Default::default()
    }
}

fn with_headers<T>(message: T, values: &[String]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for value in values {
        request
            .metadata_mut()
            .append("authorization", value.parse().expect("ascii header"));
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_headers_one_bearer_token_any_case() {
    let daemon = InProcess::start(
        "",
        &format!(
            "[roles]\nadmin = [\"*\"]\nagent = [\"policy.check\", \"policy.explain\", \"tokens.issue\"]\n\
             [[grants]]\nprincipal = \"{AGENT}\"\nroles = [\"agent\"]\n"
        ),
    )
    .await;
    let mut agent = options_for(&daemon.state_dir, daemon.addr(), AGENT)
        .connect()
        .await
        .unwrap();
    let issue = |capabilities: &[&str]| IssueTokenRequest {
        principal: AGENT.into(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        ttl_seconds: 600,
    };
    let narrow = agent
        .tokens
        .issue(issue(&["policy.check"]))
        .await
        .unwrap()
        .into_inner()
        .token;
    let wide = agent
        .tokens
        .issue(issue(&["policy.check", "policy.explain"]))
        .await
        .unwrap()
        .into_inner()
        .token;

    // The scheme is case-insensitive: the token is read, and it narrows (explain is not in it).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let header = vec![format!("{scheme} {narrow}")];
        let allowed = agent
            .policy
            .check(with_headers(check("web.read"), &header))
            .await
            .unwrap_or_else(|err| panic!("{scheme}: {err:?}"));
        assert!(allowed.into_inner().allowed, "{scheme}");
        let narrowed = agent
            .policy
            .explain(with_headers(check("web.read"), &header))
            .await
            .unwrap_err();
        assert_eq!(narrowed.code(), Code::PermissionDenied, "{scheme}");
    }

    // Two headers (wide first, narrow second): refused, not decided by whichever is read first.
    let both = vec![format!("Bearer {wide}"), format!("Bearer {narrow}")];
    for refused in [
        agent
            .policy
            .explain(with_headers(check("web.read"), &both))
            .await
            .unwrap_err(),
        agent
            .policy
            .check(with_headers(check("web.read"), &both))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("more than one authorization header"),
            "{}",
            refused.message()
        );
    }
    // The same token twice is still two headers.
    let twice = vec![format!("Bearer {wide}"), format!("Bearer {wide}")];
    let refused = agent
        .policy
        .check(with_headers(check("web.read"), &twice))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // One wide token alone is fine.
    agent
        .policy
        .explain(with_headers(check("web.read"), &[format!("Bearer {wide}")]))
        .await
        .unwrap();
    assert_eq!(daemon.stop().await, 0);
}
