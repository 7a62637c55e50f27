//! Internal events: every metric and the log line that goes with it are emitted from these small typed
//! structs, so names, labels and units live in one file. Names follow
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
        "TLS connections, by outcome (accepted, handshake_failed, handshake_timeout, rejected_limit)"
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
    metrics::describe_gauge!("brainstem_build_info", "always 1; labels carry the version");
    metrics::describe_gauge!(
        "brainstem_boot_count",
        "times this state directory was opened"
    );
    metrics::gauge!("brainstem_build_info", "version" => version.to_owned()).set(1.0);
    describe_tokens();
}

fn describe_tokens() {
    metrics::describe_counter!(
        "brainstem_tokens_issued_total",
        "capability tokens minted, by kind (issue, attenuate)"
    );
    metrics::describe_counter!(
        "brainstem_tokens_verified_total",
        "token verifications that found the token valid"
    );
    metrics::describe_counter!(
        "brainstem_tokens_rejected_total",
        "token verifications that refused the token, by reason"
    );
    metrics::describe_counter!("brainstem_tokens_revoked_total", "tokens revoked");
    metrics::describe_counter!(
        "brainstem_tokens_key_rotations_total",
        "new token signing keys, by trigger (initial, scheduled, request)"
    );
    metrics::describe_counter!(
        "brainstem_tokens_keys_retired_total",
        "token signing keys retired"
    );
    metrics::describe_counter!(
        "brainstem_tokens_purged_total",
        "expired token records purged, by tree (issued, revoked)"
    );
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

#[derive(Clone, Copy)]
pub enum ConnectionOutcome {
    Accepted,
    HandshakeFailed,
    HandshakeTimeout,
    RejectedLimit,
}

impl ConnectionOutcome {
    pub fn emit(self, peer: Option<std::net::SocketAddr>, detail: Option<&str>) {
        let outcome = match self {
            ConnectionOutcome::Accepted => "accepted",
            ConnectionOutcome::HandshakeFailed => "handshake_failed",
            ConnectionOutcome::HandshakeTimeout => "handshake_timeout",
            ConnectionOutcome::RejectedLimit => "rejected_limit",
        };
        metrics::counter!("brainstem_grpc_connections_total", "outcome" => outcome).increment(1);
        match self {
            ConnectionOutcome::Accepted => {
                metrics::gauge!("brainstem_grpc_connections_open").increment(1.0)
            }
            ConnectionOutcome::RejectedLimit => {
                tracing::warn!(?peer, "connection refused: max_connections reached")
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

/// Policy decisions: handles registered once (the Check path is hot).
#[derive(Clone)]
pub struct DecisionMetrics {
    allowed: metrics::Counter,
    denied: metrics::Counter,
}

impl DecisionMetrics {
    pub fn new(kind: &'static str) -> Self {
        DecisionMetrics {
            allowed: metrics::counter!("brainstem_policy_decisions_total", "kind" => kind, "decision" => "allow"),
            denied: metrics::counter!("brainstem_policy_decisions_total", "kind" => kind, "decision" => "deny"),
        }
    }

    pub fn decided(&self, allowed: bool) {
        if allowed {
            self.allowed.increment(1);
        } else {
            self.denied.increment(1);
        }
    }
}

pub struct PolicyReloaded<'a> {
    pub applied: bool,
    pub trigger: &'static str,
    pub detail: &'a str,
    pub policies: usize,
}

impl PolicyReloaded<'_> {
    pub fn emit(self) {
        let result = if self.applied { "applied" } else { "refused" };
        metrics::counter!("brainstem_policy_reloads_total", "result" => result, "trigger" => self.trigger)
            .increment(1);
        if self.applied {
            metrics::gauge!("brainstem_policy_policies").set(self.policies as f64);
            tracing::info!(
                trigger = self.trigger,
                policies = self.policies,
                digest = self.detail,
                "policy set loaded"
            );
        } else {
            ErrorOccurred {
                subsystem: "policy",
                kind: "reload_refused",
            }
            .emit();
            tracing::error!(
                trigger = self.trigger,
                errors = self.detail,
                "policy set refused; the previous set keeps deciding"
            );
        }
    }
}

pub struct AuditWritten {
    pub records: usize,
}

impl AuditWritten {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_records_written_total").increment(self.records as u64);
    }
}

pub struct AuditUnrecorded<'a> {
    pub kind: &'static str,
    pub reason: &'a dyn std::fmt::Display,
}

impl AuditUnrecorded<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_unrecorded_total", "kind" => self.kind).increment(1);
        tracing::warn!(kind = self.kind, reason = %self.reason, "decision not audited");
    }
}

pub struct AuditTrimmed {
    pub records: usize,
    pub why: &'static str,
}

impl AuditTrimmed {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_records_trimmed_total", "why" => self.why)
            .increment(self.records as u64);
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

pub struct GuardrailDecided {
    pub rule: &'static str,
    pub allowed: bool,
}

impl GuardrailDecided {
    pub fn emit(self) {
        let decision = if self.allowed { "allow" } else { "deny" };
        metrics::counter!("brainstem_guardrail_decisions_total", "rule" => self.rule, "decision" => decision)
            .increment(1);
    }
}

/// Token verification counters, registered once: verification is a hot path.
/// `brainstem_tokens_verified_total` counts valid tokens, `brainstem_tokens_rejected_total{reason}`
/// refused ones (reasons are a fixed set of labels).
#[derive(Clone)]
pub struct TokenVerifications {
    verified: metrics::Counter,
    rejected: Vec<(&'static str, metrics::Counter)>,
}

impl TokenVerifications {
    pub fn new(reasons: &[&'static str]) -> Self {
        TokenVerifications {
            verified: metrics::counter!("brainstem_tokens_verified_total"),
            rejected: reasons
                .iter()
                .map(|r| {
                    (
                        *r,
                        metrics::counter!("brainstem_tokens_rejected_total", "reason" => *r),
                    )
                })
                .collect(),
        }
    }

    pub fn verified(&self) {
        self.verified.increment(1);
    }

    pub fn rejected(&self, reason: &'static str, detail: &str) {
        tracing::debug!(reason, detail, "token rejected");
        match self.rejected.iter().find(|(r, _)| *r == reason) {
            Some((_, counter)) => counter.increment(1),
            None => metrics::counter!("brainstem_tokens_rejected_total", "reason" => reason)
                .increment(1),
        }
    }
}

/// A token was minted (`derived`: by Attenuate).
pub struct TokenIssued<'a> {
    pub id: &'a str,
    pub principal: &'a str,
    pub issuer: &'a str,
    pub derived: bool,
}

impl TokenIssued<'_> {
    pub fn emit(self) {
        let kind = if self.derived { "attenuate" } else { "issue" };
        metrics::counter!("brainstem_tokens_issued_total", "kind" => kind).increment(1);
        tracing::info!(
            id = self.id,
            principal = self.principal,
            issuer = self.issuer,
            kind,
            "token issued"
        );
    }
}

pub struct TokenRevoked<'a> {
    pub id: &'a str,
    pub by: &'a str,
    pub descendants: u32,
}

impl TokenRevoked<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_tokens_revoked_total").increment(1);
        tracing::info!(
            id = self.id,
            by = self.by,
            descendants = self.descendants,
            "token revoked"
        );
    }
}

/// A new signing key (`trigger`: initial, scheduled, request).
pub struct SigningKeyRotated<'a> {
    pub kid: &'a str,
    pub trigger: &'static str,
}

impl SigningKeyRotated<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_tokens_key_rotations_total", "trigger" => self.trigger)
            .increment(1);
        tracing::info!(
            kid = self.kid,
            trigger = self.trigger,
            "token signing key rotated"
        );
    }
}

pub struct SigningKeyRetired<'a> {
    pub kid: &'a str,
}

impl SigningKeyRetired<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_tokens_keys_retired_total").increment(1);
        tracing::info!(kid = self.kid, "token signing key retired");
    }
}

/// Expired token and revocation records removed by the background purge.
pub struct TokensPurged {
    pub issued: usize,
    pub revocations: usize,
}

impl TokensPurged {
    pub fn emit(self) {
        metrics::counter!("brainstem_tokens_purged_total", "tree" => "issued")
            .increment(self.issued as u64);
        metrics::counter!("brainstem_tokens_purged_total", "tree" => "revoked")
            .increment(self.revocations as u64);
        if self.issued + self.revocations > 0 {
            tracing::debug!(
                issued = self.issued,
                revocations = self.revocations,
                "expired token records purged"
            );
        }
    }
}

// --- supervisor ------------------------------------------------------------------------------------

/// Registers the supervisor's and the episodic buffer's metric descriptions.
pub fn describe_supervision() {
    metrics::describe_counter!(
        "brainstem_supervisor_actor_restarts_total",
        "new incarnations of an actor after its first start, by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_panics_total",
        "actor runs that ended in a panic (caught), by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_errors_total",
        "actor runs that returned an error, and errors actors recorded and survived, by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_kills_total",
        "actors killed by the supervisor, by actor and reason (frozen, stop_deadline)"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_escalations_total",
        "actors marked failed for restarting too often, by actor"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_actor_up",
        "1 while the actor is starting or running, else 0, by actor"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_actor_failed",
        "1 while the actor is failed (escalated), else 0, by actor"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_actor_mailbox_depth",
        "messages waiting in the actor's mailbox, by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_actor_mailbox_drops_total",
        "messages dropped by the drop_oldest / drop_newest overflow policies, by actor"
    );
    metrics::describe_gauge!(
        "brainstem_supervisor_actor_since_progress_seconds",
        "time since the actor last made progress, by actor"
    );
    metrics::describe_counter!(
        "brainstem_supervisor_watchdog_pings_total",
        "systemd watchdog ticks, by result (sent, withheld: a critical actor is failed)"
    );
    metrics::describe_gauge!(
        "brainstem_episodic_episodes",
        "episodes held by the episodic buffer"
    );
    metrics::describe_counter!(
        "brainstem_episodic_stored_total",
        "episodes stored (acknowledged)"
    );
    metrics::describe_counter!(
        "brainstem_episodic_evicted_total",
        "episodes evicted because the ring was full"
    );
    metrics::describe_counter!(
        "brainstem_episodic_forgotten_total",
        "episodes removed by Forget"
    );
    metrics::describe_counter!(
        "brainstem_episodic_query_cache_total",
        "episodic queries by cache result (hit, miss)"
    );
    metrics::describe_histogram!(
        "brainstem_episodic_query_duration_seconds",
        metrics::Unit::Seconds,
        "time to scan the ring for one query (cache misses only)"
    );
}

pub struct ActorStateChanged {
    pub actor: &'static str,
    pub from: crate::supervisor::ActorState,
    pub to: crate::supervisor::ActorState,
}

impl ActorStateChanged {
    pub fn emit(self) {
        use crate::supervisor::ActorState;
        metrics::gauge!("brainstem_supervisor_actor_up", "actor" => self.actor)
            .set(if self.to.is_serving() { 1.0 } else { 0.0 });
        metrics::gauge!("brainstem_supervisor_actor_failed", "actor" => self.actor).set(
            if self.to == ActorState::Failed {
                1.0
            } else {
                0.0
            },
        );
        tracing::info!(
            actor = self.actor,
            from = self.from.as_str(),
            to = self.to.as_str(),
            "actor state changed"
        );
    }
}

pub struct ActorRestarted {
    pub actor: &'static str,
}

impl ActorRestarted {
    pub fn emit(self) {
        metrics::counter!("brainstem_supervisor_actor_restarts_total", "actor" => self.actor)
            .increment(1);
    }
}

pub struct ActorExited<'a> {
    pub actor: &'static str,
    pub outcome: &'a crate::supervisor::Outcome,
    /// The supervisor asked it to stop.
    pub expected: bool,
}

impl ActorExited<'_> {
    pub fn emit(self) {
        use crate::supervisor::Outcome;
        match self.outcome {
            Outcome::Normal if self.expected => {
                tracing::info!(actor = self.actor, "actor stopped")
            }
            Outcome::Normal => tracing::warn!(actor = self.actor, "actor returned unexpectedly"),
            Outcome::Error(error) => {
                metrics::counter!("brainstem_supervisor_actor_errors_total", "actor" => self.actor)
                    .increment(1);
                tracing::warn!(actor = self.actor, error = %error, "actor failed");
            }
            Outcome::Panic(message) => {
                metrics::counter!("brainstem_supervisor_actor_panics_total", "actor" => self.actor)
                    .increment(1);
                ErrorOccurred {
                    subsystem: "supervisor",
                    kind: "actor_panic",
                }
                .emit();
                tracing::error!(actor = self.actor, panic = %message, "actor panicked");
            }
        }
    }
}

pub struct ActorErrorRecorded<'a> {
    pub actor: &'static str,
    pub error: &'a str,
}

impl ActorErrorRecorded<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_supervisor_actor_errors_total", "actor" => self.actor)
            .increment(1);
        tracing::warn!(
            actor = self.actor,
            error = self.error,
            "actor recorded an error"
        );
    }
}

pub struct ActorKilled {
    pub actor: &'static str,
    /// "frozen" or "stop_deadline".
    pub reason: &'static str,
    /// Milliseconds without progress (frozen) or the stop deadline that passed.
    pub detail: u64,
}

impl ActorKilled {
    pub fn emit(self) {
        metrics::counter!("brainstem_supervisor_actor_kills_total", "actor" => self.actor, "reason" => self.reason)
            .increment(1);
        match self.reason {
            "frozen" => tracing::error!(
                actor = self.actor,
                no_progress_ms = self.detail,
                "actor frozen: busy without progress; cancelling and restarting it"
            ),
            _ => tracing::warn!(
                actor = self.actor,
                stop_deadline_ms = self.detail,
                "actor ignored cancellation past its stop deadline; aborted"
            ),
        }
    }
}

pub struct ActorEscalated {
    pub actor: &'static str,
    pub max_restarts: u64,
    pub window_seconds: u64,
    pub critical: bool,
    pub exit: bool,
}

impl ActorEscalated {
    pub fn emit(self) {
        metrics::counter!("brainstem_supervisor_actor_escalations_total", "actor" => self.actor)
            .increment(1);
        ErrorOccurred {
            subsystem: "supervisor",
            kind: "escalation",
        }
        .emit();
        tracing::error!(
            actor = self.actor,
            max_restarts = self.max_restarts,
            window_seconds = self.window_seconds,
            critical = self.critical,
            exiting = self.exit,
            "actor restarted too often; marked failed"
        );
    }
}

pub struct ActorGauges {
    pub actor: &'static str,
    pub mailbox_depth: u64,
    pub mailbox_drops: u64,
    pub since_progress: Duration,
}

impl ActorGauges {
    pub fn emit(self) {
        metrics::gauge!("brainstem_supervisor_actor_mailbox_depth", "actor" => self.actor)
            .set(self.mailbox_depth as f64);
        metrics::counter!("brainstem_supervisor_actor_mailbox_drops_total", "actor" => self.actor)
            .absolute(self.mailbox_drops);
        metrics::gauge!("brainstem_supervisor_actor_since_progress_seconds", "actor" => self.actor)
            .set(self.since_progress.as_secs_f64());
    }
}

pub struct WatchdogPinged {
    /// False: withheld because a critical actor is failed.
    pub sent: bool,
}

impl WatchdogPinged {
    pub fn emit(self) {
        let result = if self.sent { "sent" } else { "withheld" };
        metrics::counter!("brainstem_supervisor_watchdog_pings_total", "result" => result)
            .increment(1);
        if !self.sent {
            tracing::warn!("systemd watchdog ping withheld: a critical actor is failed");
        }
    }
}

// --- episodic --------------------------------------------------------------------------------------

pub struct EpisodicQueried {
    pub cached: bool,
    /// Scan time (zero for a cache hit).
    pub duration: Duration,
}

impl EpisodicQueried {
    pub fn emit(self) {
        let result = if self.cached { "hit" } else { "miss" };
        metrics::counter!("brainstem_episodic_query_cache_total", "result" => result).increment(1);
        if !self.cached {
            metrics::histogram!("brainstem_episodic_query_duration_seconds")
                .record(self.duration.as_secs_f64());
        }
    }
}

pub struct EpisodicWritten {
    pub stored: u64,
    pub evicted: u64,
    pub forgotten: u64,
    /// Episodes held after the write.
    pub held: u64,
}

impl EpisodicWritten {
    pub fn emit(self) {
        metrics::gauge!("brainstem_episodic_episodes").set(self.held as f64);
        if self.stored > 0 {
            metrics::counter!("brainstem_episodic_stored_total").increment(self.stored);
        }
        if self.evicted > 0 {
            metrics::counter!("brainstem_episodic_evicted_total").increment(self.evicted);
        }
        if self.forgotten > 0 {
            metrics::counter!("brainstem_episodic_forgotten_total").increment(self.forgotten);
            tracing::info!(
                forgotten = self.forgotten,
                held = self.held,
                "episodes forgotten"
            );
        }
    }
}
