//! Core events (gRPC calls, connections, reloads, errors, build info). Every metric and the log line
//! that goes with it are emitted from small typed structs; each capability keeps its own in its
//! folder's `events.rs`, with a `describe()` that registers their descriptions. Names follow
//! `brainstem_<subsystem>_<name>_<unit>[_total]`; labels are bounded (method names come from the static
//! method table, never from the request).

use std::time::Duration;

/// Registers descriptions and the build-info gauge. Called once at start.
pub fn describe(version: &str) {
    metrics::describe_counter!(
        "brainstem_grpc_requests_total",
        "gRPC calls answered, by method and status code"
    );
    metrics::describe_histogram!(
        "brainstem_grpc_request_duration_seconds",
        metrics::Unit::Seconds,
        "time from request headers to response headers, by method"
    );
    metrics::describe_counter!(
        "brainstem_grpc_connections_total",
        "TCP connections accepted by the gRPC listener, by outcome (accepted, handshake_failed, \
         handshake_timeout, first_byte_timeout, evicted_silent, rejected_limit, rejected_pending, \
         rejected_pending_address)"
    );
    metrics::describe_gauge!("brainstem_grpc_connections_open", "open gRPC connections");
    metrics::describe_gauge!(
        "brainstem_grpc_requests_in_flight",
        "calls that passed authorization and have not answered yet"
    );
    metrics::describe_counter!(
        "brainstem_config_reloads_total",
        "configuration reloads, by result (applied, refused)"
    );
    metrics::describe_counter!("brainstem_errors_total", "errors by subsystem and kind");
    metrics::describe_counter!(
        "brainstem_notify_dropped_total",
        "sd_notify messages dropped because the service manager's socket queue was full"
    );
    metrics::describe_counter!(
        "brainstem_log_redactions_total",
        "log lines' text replaced by [redacted], by rule (value: a remembered secret value, keyword: \
         the value of a secret-named key or a bearer credential, entropy: a random-looking run)"
    );
    metrics::describe_gauge!("brainstem_build_info", "always 1; labels carry the version");
    metrics::describe_gauge!(
        "brainstem_boot_count",
        "times this state directory was opened"
    );
    metrics::gauge!("brainstem_build_info", "version" => version.to_owned()).set(1.0);
}

pub struct GrpcRequestCompleted {
    pub method: &'static str,
    pub code: &'static str,
    pub duration: Duration,
}

impl GrpcRequestCompleted {
    pub fn emit(self) {
        metrics::counter!("brainstem_grpc_requests_total", "method" => self.method, "code" => self.code)
            .increment(1);
        metrics::histogram!("brainstem_grpc_request_duration_seconds", "method" => self.method)
            .record(self.duration.as_secs_f64());
    }
}

/// Per-method handles registered once, so the hot path does no metric-key building or registry lookup
/// for the common outcome (OK). Other codes take the labelled macro path.
#[derive(Clone)]
pub struct MethodMetrics {
    method: &'static str,
    ok: metrics::Counter,
    duration: metrics::Histogram,
}

impl MethodMetrics {
    pub fn new(method: &'static str) -> Self {
        MethodMetrics {
            method,
            ok: metrics::counter!("brainstem_grpc_requests_total", "method" => method, "code" => "OK"),
            duration: metrics::histogram!("brainstem_grpc_request_duration_seconds", "method" => method),
        }
    }

    pub fn completed(&self, code: &'static str, duration: Duration) {
        if code == "OK" {
            self.ok.increment(1);
        } else {
            metrics::counter!("brainstem_grpc_requests_total", "method" => self.method, "code" => code)
                .increment(1);
        }
        self.duration.record(duration.as_secs_f64());
    }
}

/// Counts a call as in flight until dropped (also when the caller goes away mid-call).
pub struct InFlight {
    gauge: metrics::Gauge,
}

impl InFlight {
    pub fn gauge() -> metrics::Gauge {
        metrics::gauge!("brainstem_grpc_requests_in_flight")
    }

    pub fn enter(gauge: &metrics::Gauge) -> InFlight {
        gauge.increment(1.0);
        InFlight {
            gauge: gauge.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

pub struct AccessDenied<'a> {
    pub method: &'static str,
    pub principal: &'a str,
    pub reason: &'a str,
}

impl AccessDenied<'_> {
    pub fn emit(self) {
        tracing::info!(
            method = self.method,
            principal = self.principal,
            reason = self.reason,
            "access denied"
        );
        GrpcRequestCompleted {
            method: self.method,
            code: "PERMISSION_DENIED",
            duration: Duration::ZERO,
        }
        .emit();
    }
}

/// What became of an accepted TCP connection. Source addresses go to the log line, never to a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionOutcome {
    Accepted,
    HandshakeFailed,
    HandshakeTimeout,
    /// Sent nothing within `first_byte_timeout_seconds`.
    FirstByteTimeout,
    /// Closed while silent to make room for a newer connection in a full pending table.
    EvictedSilent,
    /// `max_connections` established connections.
    RejectedLimit,
    /// `max_pending_handshakes`, all of them talking.
    RejectedPending,
    /// `max_pending_handshakes_per_address` from this address, all of them talking.
    RejectedPendingAddress,
}

impl ConnectionOutcome {
    pub fn emit(self, peer: Option<std::net::SocketAddr>, detail: Option<&str>) {
        let outcome = match self {
            ConnectionOutcome::Accepted => "accepted",
            ConnectionOutcome::HandshakeFailed => "handshake_failed",
            ConnectionOutcome::HandshakeTimeout => "handshake_timeout",
            ConnectionOutcome::FirstByteTimeout => "first_byte_timeout",
            ConnectionOutcome::EvictedSilent => "evicted_silent",
            ConnectionOutcome::RejectedLimit => "rejected_limit",
            ConnectionOutcome::RejectedPending => "rejected_pending",
            ConnectionOutcome::RejectedPendingAddress => "rejected_pending_address",
        };
        metrics::counter!("brainstem_grpc_connections_total", "outcome" => outcome).increment(1);
        match self {
            ConnectionOutcome::Accepted => {
                metrics::gauge!("brainstem_grpc_connections_open").increment(1.0)
            }
            ConnectionOutcome::RejectedLimit => {
                tracing::warn!(?peer, "connection refused: max_connections reached")
            }
            ConnectionOutcome::RejectedPending | ConnectionOutcome::RejectedPendingAddress => {
                tracing::warn!(
                    ?peer,
                    outcome,
                    "connection refused: too many TLS handshakes in progress"
                )
            }
            // Expected under an idle-connection flood: one line each would be the flood again.
            ConnectionOutcome::FirstByteTimeout | ConnectionOutcome::EvictedSilent => {
                tracing::debug!(?peer, outcome, "connection closed before it sent anything")
            }
            ConnectionOutcome::HandshakeFailed | ConnectionOutcome::HandshakeTimeout => {
                tracing::info!(?peer, outcome, detail, "TLS handshake did not complete")
            }
        }
    }
}

pub struct ConnectionClosed;

impl ConnectionClosed {
    pub fn emit(self) {
        metrics::gauge!("brainstem_grpc_connections_open").decrement(1.0);
    }
}

/// An sd_notify message dropped on a full socket queue (the send never blocks).
pub struct NotifyDropped<'a> {
    pub message: &'a str,
    /// The first drop since messages last went through: logged; later ones are only counted.
    pub first: bool,
}

impl NotifyDropped<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_notify_dropped_total").increment(1);
        if self.first {
            tracing::warn!(
                message = self.message,
                "sd_notify: the service manager's socket queue is full; dropping messages until it drains"
            );
        }
    }
}

pub struct ConfigReloaded<'a> {
    pub applied: bool,
    pub detail: &'a str,
}

impl ConfigReloaded<'_> {
    pub fn emit(self) {
        let result = if self.applied { "applied" } else { "refused" };
        metrics::counter!("brainstem_config_reloads_total", "result" => result).increment(1);
        if self.applied {
            tracing::info!(detail = self.detail, "configuration reloaded");
        } else {
            ErrorOccurred {
                subsystem: "config",
                kind: "reload_refused",
            }
            .emit();
            tracing::error!(
                detail = self.detail,
                "configuration reload refused; the previous configuration keeps serving"
            );
        }
    }
}

pub struct ErrorOccurred {
    pub subsystem: &'static str,
    pub kind: &'static str,
}

impl ErrorOccurred {
    pub fn emit(self) {
        metrics::counter!("brainstem_errors_total", "subsystem" => self.subsystem, "kind" => self.kind)
            .increment(1);
    }
}

pub struct RateLimited<'a> {
    pub method: &'static str,
    pub principal: &'a str,
}

impl RateLimited<'_> {
    pub fn emit(self) {
        // Principals here are bounded: only granted principals get past authorization.
        metrics::counter!("brainstem_rate_limited_total", "method" => self.method, "principal" => self.principal.to_owned())
            .increment(1);
        GrpcRequestCompleted {
            method: self.method,
            code: "RESOURCE_EXHAUSTED",
            duration: Duration::ZERO,
        }
        .emit();
    }
}

/// Text replaced in one log line by one redaction rule (`runtime::redact`). Emitted from inside the
/// log writer, so it logs nothing itself.
pub struct LogRedacted {
    /// `value`, `keyword` or `entropy`.
    pub rule: &'static str,
    /// Separate ranges replaced.
    pub count: u64,
}

impl LogRedacted {
    pub fn emit(self) {
        metrics::counter!("brainstem_log_redactions_total", "rule" => self.rule)
            .increment(self.count);
    }
}

/// The boot counter from the store's boot record, set once at start.
pub struct Booted {
    pub boot_count: u64,
}

impl Booted {
    pub fn emit(&self) {
        metrics::gauge!("brainstem_boot_count").set(self.boot_count as f64);
    }
}

/// For a service whose metrics are the framework's own (described by [`describe`]).
pub fn describe_none() {}
