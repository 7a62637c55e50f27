//! The resilient channel against a scripted server (plain HTTP/2 on 127.0.0.1:0): retries only when
//! safe, RetryInfo honoured, the breaker opening on a dead endpoint and closing after a probe.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brainstem_client::resilience::{
    BreakerState, CircuitBreaker, Resilience, Resilient, RetryPolicy,
};
use brainstem_client::v1::admin_client::AdminClient;
use brainstem_client::v1::admin_server::{Admin, AdminServer};
use brainstem_client::v1::tokens_client::TokensClient;
use brainstem_client::v1::tokens_server::{Tokens, TokensServer};
use brainstem_client::v1::*;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Answers Ping UNAVAILABLE `fail_pings` times, GetStatus RESOURCE_EXHAUSTED once (RetryInfo 300 ms),
/// and Tokens.Issue UNAVAILABLE the first time; counts every call.
#[derive(Clone, Default)]
struct Scripted {
    pings: Arc<AtomicU32>,
    fail_pings: u32,
    statuses: Arc<AtomicU32>,
    issues: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl Admin for Scripted {
    async fn ping(&self, r: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        if self.pings.fetch_add(1, Ordering::SeqCst) < self.fail_pings {
            return Err(Status::unavailable("scripted: not yet"));
        }
        Ok(Response::new(PingReply {
            payload: r.into_inner().payload,
        }))
    }
    async fn who_am_i(&self, _: Request<WhoAmIRequest>) -> Result<Response<WhoAmIReply>, Status> {
        Err(Status::permission_denied("scripted"))
    }
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusReply>, Status> {
        if self.statuses.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut details = ErrorDetails::new();
            details.set_retry_info(Some(Duration::from_millis(300)));
            return Err(Status::with_error_details(
                Code::ResourceExhausted,
                "scripted: slow down",
                details,
            ));
        }
        Ok(Response::new(GetStatusReply::default()))
    }
    async fn get_log_level(
        &self,
        _: Request<GetLogLevelRequest>,
    ) -> Result<Response<LogLevelReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn set_log_level(
        &self,
        _: Request<SetLogLevelRequest>,
    ) -> Result<Response<LogLevelReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

#[tonic::async_trait]
impl Tokens for Scripted {
    async fn issue(
        &self,
        r: Request<IssueTokenRequest>,
    ) -> Result<Response<IssueTokenReply>, Status> {
        let keyed = r.metadata().get("idempotency-key").is_some();
        if self.issues.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Status::unavailable("scripted: lost"));
        }
        Ok(Response::new(IssueTokenReply {
            token: format!("keyed={keyed}"),
            ..Default::default()
        }))
    }
    async fn verify(
        &self,
        _: Request<VerifyTokenRequest>,
    ) -> Result<Response<VerifyTokenReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn revoke(
        &self,
        _: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn list(
        &self,
        _: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn attenuate(
        &self,
        _: Request<AttenuateTokenRequest>,
    ) -> Result<Response<AttenuateTokenReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn rotate_key(
        &self,
        _: Request<RotateKeyRequest>,
    ) -> Result<Response<RotateKeyReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(script: Scripted, addr: &str) -> Server {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(script.clone()))
                .add_service(TokensServer::new(script))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

type Waits = Arc<Mutex<Vec<(String, u32, Duration, Code)>>>;

async fn resilient(addr: std::net::SocketAddr, resilience: Resilience) -> (Resilient, Waits) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let waits: Waits = Arc::default();
    let seen = waits.clone();
    let svc = Resilient::new(channel, Some(resilience), Duration::from_secs(10)).with_observer(
        Arc::new(move |path: &str, attempt, wait, code| {
            seen.lock()
                .unwrap()
                .push((path.to_owned(), attempt, wait, code));
        }),
    );
    (svc, waits)
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        multiplier: 2.0,
    }
}

#[tokio::test]
async fn safe_methods_are_retried_and_mutating_ones_only_with_a_key() {
    let script = Scripted {
        fail_pings: 2,
        ..Default::default()
    };
    let server = Server::start(script.clone(), "127.0.0.1:0").await;
    let (svc, waits) = resilient(
        server.addr,
        Resilience {
            retry: quick_retries(),
            breaker: None,
        },
    )
    .await;

    let reply = AdminClient::new(svc.clone())
        .ping(PingRequest {
            payload: b"x".to_vec(),
            delay_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().payload, b"x");
    assert_eq!(
        script.pings.load(Ordering::SeqCst),
        3,
        "two UNAVAILABLE, then OK"
    );

    let mut tokens = TokensClient::new(svc.clone());
    let err = tokens
        .issue(IssueTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "a mutating call without a key is not retried"
    );
    assert_eq!(script.issues.load(Ordering::SeqCst), 1);

    script.issues.store(0, Ordering::SeqCst);
    let keyed = brainstem_client::with_idempotency_key(Request::new(IssueTokenRequest::default()));
    let reply = tokens.issue(keyed).await.unwrap().into_inner();
    assert_eq!(reply.token, "keyed=true");
    assert_eq!(
        script.issues.load(Ordering::SeqCst),
        2,
        "a keyed call is retried"
    );

    let err = AdminClient::new(svc)
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "other codes are not retried"
    );
    let paths: Vec<String> = waits.lock().unwrap().iter().map(|w| w.0.clone()).collect();
    assert_eq!(
        paths,
        [
            "/brainstem.v1.Admin/Ping",
            "/brainstem.v1.Admin/Ping",
            "/brainstem.v1.Tokens/Issue"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn resource_exhausted_waits_at_least_the_retry_info_delay() {
    let script = Scripted::default();
    let server = Server::start(script.clone(), "127.0.0.1:0").await;
    let (svc, waits) = resilient(
        server.addr,
        Resilience {
            retry: quick_retries(),
            breaker: None,
        },
    )
    .await;
    let started = Instant::now();
    AdminClient::new(svc)
        .get_status(GetStatusRequest {})
        .await
        .unwrap();
    assert_eq!(script.statuses.load(Ordering::SeqCst), 2);
    let waits = waits.lock().unwrap().clone();
    assert_eq!(waits.len(), 1);
    assert_eq!(waits[0].3, Code::ResourceExhausted);
    assert!(
        waits[0].2 >= Duration::from_millis(300),
        "waited {:?}",
        waits[0].2
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_on_a_dead_endpoint_and_closes_after_a_probe() {
    let server = Server::start(Scripted::default(), "127.0.0.1:0").await;
    let addr = server.addr;
    let now = Arc::new(Mutex::new(Instant::now()));
    let clock = now.clone();
    let breaker = Arc::new(CircuitBreaker::with_clock(
        2,
        Duration::from_secs(30),
        Arc::new(move || *clock.lock().unwrap()),
    ));
    let resilience = Resilience {
        retry: RetryPolicy::NONE,
        breaker: Some(breaker.clone()),
    };
    let (svc, _) = resilient(addr, resilience.clone()).await;
    let mut admin = AdminClient::new(svc);
    admin.ping(PingRequest::default()).await.unwrap();
    server.stop().await;

    for _ in 0..2 {
        let err = admin.ping(PingRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            !err.message().contains("circuit breaker"),
            "{}",
            err.message()
        );
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let err = admin.ping(PingRequest::default()).await.unwrap_err();
    assert!(
        err.message().contains("circuit breaker open"),
        "{}",
        err.message()
    );
    assert_eq!(breaker.stats().rejected, 1);

    let server = Server::start(Scripted::default(), &addr.to_string()).await;
    *now.lock().unwrap() += Duration::from_secs(30);
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    let (svc, _) = resilient(addr, resilience).await;
    AdminClient::new(svc)
        .ping(PingRequest::default())
        .await
        .unwrap();
    assert_eq!(breaker.state(), BreakerState::Closed);
    server.stop().await;
}
