//! Client-side resilience, the same rules as the Python package (docs/CLIENTS.md):
//!
//! - **Deadline**: every call has one (`ConnectOptions::call_timeout` unless the request set its own
//!   `grpc-timeout`); retries and their waits fit inside it, each attempt sending what is left.
//! - **Retries** on UNAVAILABLE (including a failed connection) and RESOURCE_EXHAUSTED, with full-jitter
//!   exponential backoff that never waits less than the daemon's `RetryInfo` delay, only when repeating
//!   is safe: the method's proto declares `idempotency_level` `NO_SIDE_EFFECTS` or `IDEMPOTENT`, or the
//!   call carries an `idempotency-key` (see [`with_idempotency_key`]; the daemon answers a repeat from
//!   the first reply). Streaming calls are never retried.
//! - **Circuit breaker** per endpoint: closed → open after `failure_threshold` consecutive
//!   UNAVAILABLE / DEADLINE_EXCEEDED → after `reset_timeout` one probe (half-open) → closed on success,
//!   open again on failure. An open breaker answers UNAVAILABLE at once without sending.
//!
//! [`Resilient`] is a tower service over the channel; every stub in [`crate::Client`] goes through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tonic::Code;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

/// The request metadata entry that names one operation for the daemon's deduplication.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A fresh random idempotency key (32 hex characters).
pub fn new_idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds a fresh `idempotency-key` to a request, so the call is applied at most once however often it
/// is retried.
pub fn with_idempotency_key<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    if let Ok(value) = new_idempotency_key().parse() {
        request.metadata_mut().insert(IDEMPOTENCY_KEY, value);
    }
    request
}

fn fill_random(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(out).is_err() {
        // No system randomness: time and address still make keys unique enough per process.
        let seed = Instant::now().elapsed().as_nanos() as u64 ^ (out.as_ptr() as u64);
        for (i, b) in out.iter_mut().enumerate() {
            *b = (seed.rotate_left(i as u32 * 8) & 0xff) as u8;
        }
    }
}

/// A uniform draw in [0, 1).
fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    fill_random(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// How a retry-safe call is retried. `max_attempts` counts the first attempt (1 = never retry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        multiplier: 1.0,
    };

    /// The jittered wait before retry `retry` (1 for the first), for a draw `unit` in [0, 1).
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exp = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let ceiling = self
            .initial_backoff
            .mul_f64(exp.min(1e6))
            .min(self.max_backoff);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The wait before retry `retry`: the jittered backoff, at least the server's RetryInfo delay.
    pub fn delay(&self, retry: u32, retry_info: Option<Duration>, unit: f64) -> Duration {
        let wait = self.backoff(retry, unit);
        retry_info.map_or(wait, |info| wait.max(info))
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Counters and state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStats {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub failures: u64,
    pub successes: u64,
    pub rejected: u64,
    pub opened: u64,
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    consecutive: u32,
    opened_at: Instant,
    probe_in_flight: bool,
    failures: u64,
    successes: u64,
    rejected: u64,
    opened: u64,
}

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The per-endpoint circuit breaker (see the module docs). The clock is injectable for tests.
pub struct CircuitBreaker {
    failure_threshold: u32,
    reset_timeout: Duration,
    clock: Clock,
    inner: Mutex<BreakerInner>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("failure_threshold", &self.failure_threshold)
            .field("reset_timeout", &self.reset_timeout)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The answers that say the endpoint is in trouble. Others (PERMISSION_DENIED, NOT_FOUND, …) mean
/// it answered.
fn is_breaker_failure(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, reset_timeout: Duration) -> Self {
        Self::with_clock(failure_threshold, reset_timeout, Arc::new(Instant::now))
    }

    pub fn with_clock(failure_threshold: u32, reset_timeout: Duration, clock: Clock) -> Self {
        let now = clock();
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            reset_timeout,
            clock,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                consecutive: 0,
                opened_at: now,
                probe_in_flight: false,
                failures: 0,
                successes: 0,
                rejected: 0,
                opened: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.state == BreakerState::Open
            && (self.clock)().saturating_duration_since(inner.opened_at) >= self.reset_timeout
        {
            inner.state = BreakerState::HalfOpen;
            inner.probe_in_flight = false;
        }
        inner
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    pub fn stats(&self) -> BreakerStats {
        let inner = self.lock();
        BreakerStats {
            state: inner.state,
            consecutive_failures: inner.consecutive,
            failures: inner.failures,
            successes: inner.successes,
            rejected: inner.rejected,
            opened: inner.opened,
        }
    }

    /// Whether a call may go out now; `Err(wait)` with the time until a probe is let through.
    pub fn allow(&self) -> Result<(), Duration> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::HalfOpen if !inner.probe_in_flight => {
                inner.probe_in_flight = true;
                Ok(())
            }
            BreakerState::HalfOpen => {
                inner.rejected += 1;
                Err(Duration::ZERO)
            }
            BreakerState::Open => {
                inner.rejected += 1;
                let open_for = (self.clock)().saturating_duration_since(inner.opened_at);
                Err(self.reset_timeout.saturating_sub(open_for))
            }
        }
    }

    /// The outcome of a call [`CircuitBreaker::allow`] let through.
    pub fn record(&self, code: Code) {
        let mut inner = self.lock();
        inner.probe_in_flight = false;
        if is_breaker_failure(code) {
            inner.failures += 1;
            inner.consecutive = inner.consecutive.saturating_add(1);
            if inner.state == BreakerState::HalfOpen || inner.consecutive >= self.failure_threshold
            {
                if inner.state != BreakerState::Open {
                    inner.opened += 1;
                }
                inner.state = BreakerState::Open;
                inner.opened_at = (self.clock)();
            }
        } else {
            inner.successes += 1;
            inner.consecutive = 0;
            inner.state = BreakerState::Closed;
        }
    }
}

/// The resilience settings of a connection.
#[derive(Debug, Clone)]
pub struct Resilience {
    pub retry: RetryPolicy,
    /// `None`: no breaker.
    pub breaker: Option<Arc<CircuitBreaker>>,
}

impl Default for Resilience {
    /// Four attempts with 100 ms → 5 s backoff; a breaker that opens after 5 failures for 10 s.
    fn default() -> Self {
        Resilience {
            retry: RetryPolicy::default(),
            breaker: Some(Arc::new(CircuitBreaker::new(5, Duration::from_secs(10)))),
        }
    }
}

/// What repeating a method does, from its proto's `idempotency_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// `NO_SIDE_EFFECTS` or `IDEMPOTENT`, unary: safe to retry.
    Safe,
    /// Unary, changes state: retried only with an idempotency key.
    Mutating,
    /// Streaming: never retried.
    Streaming,
}

/// The kind of a method by full path (`/brainstem.v1.Admin/Ping`), from the compiled-in descriptors.
/// A path they do not name is [`MethodKind::Mutating`].
pub fn method_kind(path: &str) -> MethodKind {
    static KINDS: OnceLock<HashMap<String, MethodKind>> = OnceLock::new();
    let kinds = KINDS.get_or_init(|| {
        use brainstem_proto::Repeat;
        brainstem_proto::method_repeats(crate::v1::FILE_DESCRIPTOR_SET)
            .into_iter()
            .map(|(path, repeat)| {
                let kind = match repeat {
                    Repeat::NoSideEffects | Repeat::Idempotent => MethodKind::Safe,
                    Repeat::Changes => MethodKind::Mutating,
                    Repeat::Streaming => MethodKind::Streaming,
                };
                (path, kind)
            })
            .collect()
    });
    kinds
        .get(path)
        .copied()
        .unwrap_or(if path.starts_with("/grpc.health.v1.Health/Check") {
            MethodKind::Safe
        } else {
            MethodKind::Mutating
        })
}

/// Observes retries (for a CLI's `--verbose`, metrics, tests): method path, retry number, wait, code.
pub type RetryObserver = Arc<dyn Fn(&str, u32, Duration, Code) + Send + Sync>;

/// The channel with deadlines, retries and the breaker (see the module docs).
#[derive(Clone)]
pub struct Resilient {
    inner: Channel,
    resilience: Option<Arc<Resilience>>,
    deadline: Duration,
    observer: Option<RetryObserver>,
}

impl Resilient {
    /// `resilience: None` passes calls straight to the channel (the bench harness and the tests that
    /// observe raw answers). `deadline` is the default whole-call deadline.
    pub fn new(inner: Channel, resilience: Option<Resilience>, deadline: Duration) -> Self {
        Resilient {
            inner,
            resilience: resilience.map(Arc::new),
            deadline,
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: RetryObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.resilience.as_ref().and_then(|r| r.breaker.as_ref())
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// The status code of a response from its headers: a trailers-only error carries `grpc-status` there.
fn header_code(response: &http::Response<Body>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

fn retry_info(response: &http::Response<Body>) -> Option<Duration> {
    use tonic_types::StatusExt;
    let status = tonic::Status::from_header_map(response.headers())?;
    status.get_details_retry_info()?.retry_delay
}

fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn set_grpc_timeout(headers: &mut http::HeaderMap, left: Duration) {
    let millis = left.as_millis().clamp(1, 99_999_999);
    if let Ok(value) = http::HeaderValue::from_str(&format!("{millis}m")) {
        headers.insert("grpc-timeout", value);
    }
}

fn unavailable(message: String) -> http::Response<Body> {
    tonic::Status::unavailable(message).into_http()
}

impl Service<http::Request<Body>> for Resilient {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let Some(resilience) = self.resilience.clone() else {
            return Box::pin(ready.call(request));
        };
        let channel = self.inner.clone();
        let observer = self.observer.clone();
        let path = request.uri().path().to_owned();
        let keyed = request.headers().contains_key(IDEMPOTENCY_KEY);
        let kind = method_kind(&path);
        let retryable = resilience.retry.max_attempts > 1
            && match kind {
                MethodKind::Safe => true,
                MethodKind::Mutating => keyed,
                MethodKind::Streaming => false,
            };
        let deadline_after = grpc_timeout(request.headers()).unwrap_or(self.deadline);
        Box::pin(async move {
            let breaker = resilience.breaker.clone();
            // Some(answer): the breaker refuses the call (answered without sending).
            let check_breaker = || match breaker.as_ref().map(|b| b.allow()) {
                Some(Err(wait)) => Some(unavailable(format!(
                    "circuit breaker open after repeated failures; next probe in {} ms",
                    wait.as_millis()
                ))),
                _ => None,
            };
            let record = |code: Code| {
                if let Some(b) = breaker.as_ref() {
                    b.record(code);
                }
            };
            if !retryable {
                if let Some(refused) = check_breaker() {
                    return Ok(refused);
                }
                let result = ready.call(request).await;
                record(match &result {
                    Ok(response) => header_code(response),
                    Err(_) => Code::Unavailable,
                });
                return result;
            }

            let started = Instant::now();
            let deadline = started + deadline_after;
            let (parts, body) = request.into_parts();
            let body: Bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(status) => return Ok(status.into_http()),
            };
            let mut attempt = 0u32;
            let mut ready = Some(ready);
            loop {
                attempt += 1;
                if let Some(refused) = check_breaker() {
                    return Ok(refused);
                }
                let mut next = http::Request::builder()
                    .method(parts.method.clone())
                    .uri(parts.uri.clone())
                    .version(parts.version)
                    .body(Body::new(http_body_util::Full::new(body.clone())))
                    .expect("parts of a valid request");
                *next.headers_mut() = parts.headers.clone();
                set_grpc_timeout(
                    next.headers_mut(),
                    deadline.saturating_duration_since(Instant::now()),
                );
                let result = match ready.take() {
                    Some(mut first) => first.call(next).await,
                    None => match channel.clone().ready_oneshot().await {
                        Ok(mut svc) => svc.call(next).await,
                        Err(err) => Err(err),
                    },
                };
                let (code, info) = match &result {
                    Ok(response) => (header_code(response), retry_info(response)),
                    Err(_) => (Code::Unavailable, None),
                };
                record(code);
                let retry_code = matches!(code, Code::Unavailable | Code::ResourceExhausted);
                if !retry_code || attempt >= resilience.retry.max_attempts {
                    return result;
                }
                let wait = resilience.retry.delay(attempt, info, unit_random());
                if Instant::now() + wait >= deadline {
                    return result;
                }
                if let Some(observe) = &observer {
                    observe(&path, attempt, wait, code);
                }
                tokio::time::sleep(wait).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
        };
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            (1..=5)
                .map(|n| ms(policy.backoff(n, 1.0)))
                .collect::<Vec<_>>(),
            vec![100, 200, 400, 800, 1000]
        );
        assert_eq!(policy.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(ms(policy.backoff(2, 0.5)), 100);
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(2)), 1.0),
            Duration::from_secs(2),
            "RetryInfo is a floor"
        );
        let draws: Vec<f64> = (0..100).map(|_| unit_random()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert!(draws.iter().any(|d| *d != draws[0]), "draws vary");
    }

    #[test]
    fn breaker_opens_probes_and_closes_on_an_injected_clock() {
        let now = Arc::new(Mutex::new(Instant::now()));
        let clock_now = now.clone();
        let b = CircuitBreaker::with_clock(
            2,
            Duration::from_secs(10),
            Arc::new(move || *clock_now.lock().unwrap()),
        );
        b.allow().unwrap();
        b.record(Code::Unavailable);
        b.allow().unwrap();
        b.record(Code::PermissionDenied);
        assert_eq!(
            b.stats().consecutive_failures,
            0,
            "an answer is not a failure"
        );
        for _ in 0..2 {
            b.allow().unwrap();
            b.record(Code::DeadlineExceeded);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(), Err(Duration::from_secs(10)));
        *now.lock().unwrap() += Duration::from_secs(10);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow().is_ok());
        assert!(b.allow().is_err(), "one probe at a time");
        b.record(Code::Unavailable);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe opens again");
        *now.lock().unwrap() += Duration::from_secs(10);
        b.allow().unwrap();
        b.record(Code::Ok);
        let stats = b.stats();
        assert_eq!(stats.state, BreakerState::Closed);
        assert_eq!((stats.opened, stats.rejected), (2, 2));
    }

    #[test]
    fn method_kinds_come_from_the_protos() {
        assert_eq!(method_kind("/brainstem.v1.Admin/Ping"), MethodKind::Safe);
        assert_eq!(method_kind("/brainstem.v1.Policy/Check"), MethodKind::Safe);
        assert_eq!(
            method_kind("/brainstem.v1.Episodic/Store"),
            MethodKind::Mutating
        );
        assert_eq!(
            method_kind("/brainstem.v1.Supervisor/WatchActors"),
            MethodKind::Streaming
        );
        assert_eq!(method_kind("/x.Y/Z"), MethodKind::Mutating);
    }

    #[test]
    fn idempotency_keys_are_fresh_and_sent_as_metadata() {
        let a = new_idempotency_key();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_idempotency_key());
        let request = with_idempotency_key(tonic::Request::new(()));
        assert!(request.metadata().get(IDEMPOTENCY_KEY).is_some());
    }
}
