//! The authorization layer: runs before every handler. It reads the connection's identity (fixed at the
//! handshake), looks the method up in [`super::methods`], checks the caller's grants, and hands the
//! handler a typed [`Caller`] extension. It also times every call for metrics, and runs keyed calls of
//! mutating methods through the idempotency cache ([`super::idempotency`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use super::correlation::{self, CorrelationId};
use super::idempotency::{self, Idempotency};
use super::methods::{self, Requirement};
use super::status::status_for;
use crate::access::Access;
pub use crate::access::Caller;
use crate::access::identity::PeerInfo;
use crate::error::ServiceError;
use crate::runtime::events::{AccessDenied, InFlight, MethodMetrics, RateLimited};
use crate::tokens::TokenService;

/// Why an `authorization` header could not be read as one bearer token.
#[derive(Debug, PartialEq, Eq)]
enum BadAuthorization {
    /// Not `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
    NotBearer,
    /// More than one `authorization` header: which token narrows the call would be a guess, so the
    /// call has no valid credentials.
    Repeated,
}

/// The bearer token of a request, if any.
fn bearer(headers: &http::HeaderMap) -> Option<Result<&str, BadAuthorization>> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return Some(Err(BadAuthorization::Repeated));
    }
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(BadAuthorization::NotBearer),
    )
}

/// Each method's metric handles by its label (the table's static path strings).
type MetricsByLabel = HashMap<&'static str, MethodMetrics, foldhash::fast::FixedState>;

#[derive(Clone)]
pub struct AuthLayer {
    access: Arc<Access>,
    tokens: Arc<TokenService>,
    in_flight: metrics::Gauge,
    method_metrics: Arc<MetricsByLabel>,
    default_timeout: Duration,
    idempotency: Option<Arc<Idempotency>>,
}

impl AuthLayer {
    /// `default_timeout` bounds calls that carry no `grpc-timeout`; a shorter caller deadline wins.
    /// `idempotency` answers repeats of keyed mutating calls (`None`: such calls answer UNAVAILABLE).
    pub fn new(
        access: Arc<Access>,
        tokens: Arc<TokenService>,
        default_timeout: Duration,
        idempotency: Option<Arc<Idempotency>>,
    ) -> Self {
        methods::build_table();
        AuthLayer {
            access,
            tokens,
            in_flight: InFlight::gauge(),
            method_metrics: Arc::new(
                methods::labels()
                    .map(|label| (label, MethodMetrics::new(label)))
                    .collect(),
            ),
            default_timeout,
            idempotency,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            access: self.access.clone(),
            tokens: self.tokens.clone(),
            in_flight: self.in_flight.clone(),
            method_metrics: self.method_metrics.clone(),
            default_timeout: self.default_timeout,
            idempotency: self.idempotency.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    access: Arc<Access>,
    tokens: Arc<TokenService>,
    in_flight: metrics::Gauge,
    method_metrics: Arc<MetricsByLabel>,
    default_timeout: Duration,
    idempotency: Option<Arc<Idempotency>>,
}

/// A keyed call of a mutating method: who, which method, which key.
struct Keyed {
    principal: String,
    method: &'static str,
    key: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> AuthService<S> {
    /// Decides a request: `Ok((label, caller, keyed))` to go on, `Err(error)` to answer at once.
    fn authorize(
        &self,
        req: &http::Request<Body>,
        id: &CorrelationId,
    ) -> Result<(&'static str, Caller, Option<Keyed>, bool), ServiceError> {
        let path = req.uri().path();
        let principal = match req.extensions().get::<PeerInfo>().map(|p| &p.principal) {
            Some(Ok(principal)) => principal.clone(),
            Some(Err(err)) => {
                return Err(ServiceError::Unauthenticated(err.to_string()));
            }
            None => {
                return Err(ServiceError::Unauthenticated(
                    "no verified client certificate on this connection".to_owned(),
                ));
            }
        };
        let Some(entry) = methods::lookup(path) else {
            let reason = "the method declares no capability (default deny)";
            AccessDenied {
                method: "unknown",
                principal: &principal.name,
                reason,
            }
            .emit();
            return Err(ServiceError::PermissionDenied(format!("{path}: {reason}")));
        };
        let token = match bearer(req.headers()) {
            None => None,
            Some(Err(BadAuthorization::Repeated)) => {
                // UNAUTHENTICATED, not PERMISSION_DENIED: no token was read, so nothing was decided
                // about permissions; the call's credentials are ambiguous until the caller sends one.
                self.access.audit_refusal(
                    &principal.name,
                    entry.label,
                    "repeated-authorization",
                    id.as_str(),
                );
                return Err(ServiceError::Unauthenticated(
                    "more than one authorization header; send at most one \"Bearer <token>\""
                        .to_owned(),
                ));
            }
            Some(presented) => {
                let verified = presented
                    .map_err(|_| "the authorization header is not \"Bearer <token>\"".to_owned())
                    .and_then(|token| {
                        self.tokens
                            .verify_presented(token, &principal.name)
                            .map_err(|err| err.to_string())
                    });
                match verified {
                    Ok(verified) => Some(Arc::new(verified)),
                    Err(why) => {
                        let reason = format!("capability token refused: {why}");
                        AccessDenied {
                            method: entry.label,
                            principal: &principal.name,
                            reason: &reason,
                        }
                        .emit();
                        self.access.audit_refusal(
                            &principal.name,
                            entry.label,
                            "token-rejected",
                            id.as_str(),
                        );
                        return Err(ServiceError::PermissionDenied(reason));
                    }
                }
            }
        };
        let caller = Caller { principal, token };
        // Exhaustive on purpose: a new kind of requirement must decide here what the layer checks.
        match entry.requirement {
            Requirement::Authenticated => {}
            Requirement::Capability(capability) => {
                self.require(
                    &caller,
                    entry.label,
                    path,
                    capability,
                    Holding::Everywhere,
                    id,
                )?;
            }
            // The family, somewhere; the handler checks the request's resource (require_scope).
            Requirement::Scoped(family) => {
                self.require(&caller, entry.label, path, family, Holding::Somewhere, id)?;
            }
        }
        let principal = &caller.principal;
        let limits = self.access.rate_limits();
        if limits.limits(entry.label) {
            if let Err(retry_after) = limits.take(&principal.name, entry.label) {
                RateLimited {
                    method: entry.label,
                    principal: &principal.name,
                }
                .emit();
                self.access
                    .audit_refusal(&principal.name, entry.label, "rate-limit", id.as_str());
                return Err(ServiceError::ResourceExhausted {
                    what: format!("rate limit for {path}"),
                    retry_after,
                });
            }
        }
        // Validated on every method (a client learns of a bad key at once); used on mutating ones.
        let keyed = idempotency::key_of(req.headers())?
            .filter(|_| idempotency::applies_to(entry.effect))
            .map(|key| Keyed {
                principal: caller.principal.name.clone(),
                method: entry.label,
                key,
            });
        let streaming = entry.effect == methods::Effect::Streaming;
        Ok((entry.label, caller, keyed, streaming))
    }

    /// Refuses (audited, counted) a caller that does not hold `capability` as `holding` says. A
    /// resource-scoped method passes [`Holding::Somewhere`]: any grant of the family will do here, and
    /// the handler checks the resource with [`crate::access::Access::require_scope`].
    fn require(
        &self,
        caller: &Caller,
        label: &'static str,
        path: &str,
        capability: &str,
        holding: Holding,
        id: &CorrelationId,
    ) -> Result<(), ServiceError> {
        let authorizer = &self.access.authorizer;
        let name = &caller.principal.name;
        let may = match holding {
            Holding::Everywhere => caller.may(authorizer, capability),
            Holding::Somewhere => caller.may_family(authorizer, capability),
        };
        if may {
            return Ok(());
        }
        // Only a refusal asks whether the grants alone would have allowed it (a second lookup).
        let granted = match holding {
            Holding::Everywhere => authorizer.allows(name, capability),
            Holding::Somewhere => authorizer.allows_family(name, capability),
        };
        let reason = if granted {
            format!(
                "the presented capability token does not cover {capability:?}, required by {path}"
            )
        } else {
            format!("principal {name:?} lacks capability {capability:?} required by {path}")
        };
        AccessDenied {
            method: label,
            principal: name,
            reason: &reason,
        }
        .emit();
        self.access
            .audit_refusal(name, label, "missing-capability", id.as_str());
        Err(ServiceError::PermissionDenied(reason))
    }
}

/// How a method needs its capability held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Unscoped: the method acts on no particular resource.
    Everywhere,
    /// On some resources: the method is resource-scoped and its handler checks the resource.
    Somewhere,
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let id = CorrelationId::from_headers(req.headers());
        let (label, caller, keyed, streaming) = match self.authorize(&req, &id) {
            Ok(ok) => ok,
            Err(err) => {
                let response = status_for(err, Some(&id)).into_http();
                return Box::pin(std::future::ready(Ok(echo(response, &id))));
            }
        };
        let deadline = parse_grpc_timeout(req.headers().get("grpc-timeout"))
            .map_or(self.default_timeout, |t| t.min(self.default_timeout));
        req.extensions_mut().insert(caller);
        req.extensions_mut().insert(id.clone());
        // Every log line of the call (the handler's, the store's, …) carries these fields. With
        // `[traces]` on it is also the call's OpenTelemetry server span (the empty fields are filled).
        let span = tracing::info_span!(
            "rpc",
            method = %label,
            correlation_id = %id.as_str(),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            rpc.system = tracing::field::Empty,
            rpc.service = tracing::field::Empty,
            rpc.method = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let traced = crate::runtime::traces::enabled();
        if traced {
            server_span(&span, req.uri().path(), req.headers());
        }
        // The clone is the one that was driven to readiness; keep the fresh one for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future: BoxFuture<Result<Self::Response, Self::Error>> = match keyed {
            None => Box::pin(inner.call(req)),
            Some(keyed) => match self.idempotency.clone() {
                Some(cache) => Box::pin(async move {
                    cache
                        .call(&keyed.principal, keyed.method, &keyed.key, req, |req| {
                            inner.call(req)
                        })
                        .await
                }),
                None => Box::pin(std::future::ready(Ok(status_for(
                    ServiceError::Unavailable(
                        "the idempotency cache is unavailable; send the call without an idempotency-key or retry later"
                            .to_owned(),
                    ),
                    Some(&id),
                )
                .into_http()))),
            },
        };
        let in_flight = InFlight::enter(&self.in_flight);
        let method_metrics = self.method_metrics.get(label).cloned();
        let scoped_id = id.clone();
        let call = async move {
            // The deadline is enforced here rather than by tonic's server timeout, which answers
            // CANCELLED; callers rightly expect DEADLINE_EXCEEDED.
            let response = match tokio::time::timeout(deadline, future).await {
                Ok(response) => response?,
                Err(_) => status_for(
                    ServiceError::DeadlineExceeded(format!(
                        "deadline of {} ms exceeded",
                        deadline.as_millis()
                    )),
                    Some(&id),
                )
                .into_http(),
            };
            // tonic answers an undecodable request INTERNAL; the caller's mistake is INVALID_ARGUMENT.
            let response = match super::status::undecodable(&response) {
                Some(err) => status_for(err, Some(&id)).into_http(),
                None => response,
            };
            drop(in_flight);
            let end = CallEnd {
                metrics: method_metrics,
                span: traced.then(tracing::Span::current),
                started,
            };
            // A stream's status travels in its trailers (unless it failed before its first message,
            // a trailers-only answer): the call is counted, and its span ends, when they pass.
            if streaming && response.headers().get("grpc-status").is_none() {
                let response = response.map(|body| {
                    Body::new(Trailed {
                        body,
                        end: Some(end),
                    })
                });
                return Ok(echo(response, &id));
            }
            end.finish(response_code(&response));
            Ok(echo(response, &id))
        };
        Box::pin(correlation::scope(scoped_id, call).instrument(span))
    }
}

/// Makes the `rpc` span an OpenTelemetry server span after the gRPC semantic conventions, its parent
/// the caller's `traceparent` when it sent one.
fn server_span(span: &tracing::Span, path: &str, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let name = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    span.record("otel.name", name);
    span.record("otel.kind", "server");
    span.record("rpc.system", "grpc");
    span.record("rpc.service", service);
    span.record("rpc.method", method);
    if let Some(parent) = crate::runtime::traces::remote_parent(headers) {
        let _ = span.set_parent(parent);
    }
}

/// What is recorded when a call ends: its metrics (code and duration) and, with traces on, its span's
/// status. A stream's end is its trailers (or the caller going away), after its headers.
struct CallEnd {
    metrics: Option<MethodMetrics>,
    span: Option<tracing::Span>,
    started: Instant,
}

impl CallEnd {
    fn finish(self, code: tonic::Code) {
        if let Some(metrics) = self.metrics {
            metrics.completed(brainstem_proto::code_name(code), self.started.elapsed());
        }
        if let Some(span) = self.span {
            record_status(&span, code);
        }
    }
}

/// Records a call's gRPC status on its span. Codes that mean the server failed mark the span as an
/// error, as the semantic conventions ask.
fn record_status(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    if matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

/// A streamed reply's body that records the call's end when its trailers pass: the code they carry,
/// or CANCELLED when the caller goes away (or the body ends) without them. It holds the call's span,
/// so a traced stream's span lasts as long as the stream.
struct Trailed {
    body: Body,
    end: Option<CallEnd>,
}

impl http_body::Body for Trailed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
                    if let Some(end) = self.end.take() {
                        end.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(end) = self.end.take() {
                    end.finish(tonic::Code::Internal);
                }
            }
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Trailed {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            end.finish(tonic::Code::Cancelled);
        }
    }
}

/// The `grpc-status` of a header map (a trailers-only answer's headers, or a stream's trailers).
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .map_or(tonic::Code::Unknown, tonic::Code::from_i32),
    )
}

/// Echoes the call's correlation id as `x-request-id` on its response (a success's headers, or an
/// error's trailers-only headers).
fn echo(mut response: http::Response<Body>, id: &CorrelationId) -> http::Response<Body> {
    response
        .headers_mut()
        .insert(correlation::HEADER, id.header_value().clone());
    response
}

/// Parses a `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The status code of a unary response: errors are "trailers-only" responses whose headers carry
/// `grpc-status`; a response without it is a success whose status follows in trailers.
fn response_code(response: &http::Response<Body>) -> tonic::Code {
    grpc_status(response.headers()).unwrap_or(tonic::Code::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_id_once_in_its_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("req-9"));
        let id = CorrelationId::from_headers(&headers);
        let response = echo(
            status_for(ServiceError::PermissionDenied("no".into()), Some(&id)).into_http(),
            &id,
        );
        let values: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
        assert_eq!(values, ["req-9"]);
        assert_eq!(response_code(&response), tonic::Code::PermissionDenied);
        // A success's headers get it too.
        let ok = echo(http::Response::new(Body::empty()), &id);
        assert_eq!(ok.headers()["x-request-id"], "req-9");
        assert_eq!(response_code(&ok), tonic::Code::Ok);
    }

    #[test]
    fn grpc_timeout_header() {
        let parse = |s: &str| parse_grpc_timeout(Some(&http::HeaderValue::from_str(s).unwrap()));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "10", "123456789S", "5x", "-5S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse_grpc_timeout(None), None);
    }

    #[test]
    fn bearer_header() {
        let one = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(v).unwrap(),
            );
            headers
        };
        assert_eq!(bearer(&http::HeaderMap::new()), None);
        for (value, token) in [
            ("Bearer abc", "abc"),
            ("bearer abc", "abc"),
            ("BEARER  abc ", "abc"),
            ("bEaReR abc", "abc"),
        ] {
            assert_eq!(bearer(&one(value)), Some(Ok(token)), "{value:?}");
        }
        for value in ["Bearer", "Bearer ", "Basic abc", "Bearerabc", "abc"] {
            assert_eq!(
                bearer(&one(value)),
                Some(Err(BadAuthorization::NotBearer)),
                "{value:?}"
            );
        }
        let mut two = one("Bearer wide");
        two.append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer narrow"),
        );
        assert_eq!(bearer(&two), Some(Err(BadAuthorization::Repeated)));
    }
}
