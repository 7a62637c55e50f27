//! brainstem-client: a typed Rust client for brainstem over mutual TLS, used by `brainstemctl`, the
//! bench harness and the end-to-end tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), brainstem_client::ClientError> {
//! let options = brainstem_client::ConnectOptions::dev(".brainstem-dev".as_ref(), "127.0.0.1:50051");
//! let mut client = options.connect().await?;
//! let me = client.admin.who_am_i(brainstem_client::v1::WhoAmIRequest {}).await?;
//! println!("{}", me.into_inner().principal);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod resilience;

use std::path::{Path, PathBuf};
use std::time::Duration;

use brainstem_proto::v1::admin_client::AdminClient;
use brainstem_proto::v1::audit_client::AuditClient;
use brainstem_proto::v1::episodic_client::EpisodicClient;
use brainstem_proto::v1::flags_client::FlagsClient;
use brainstem_proto::v1::guardrails_client::GuardrailsClient;
use brainstem_proto::v1::learning_client::LearningClient;
use brainstem_proto::v1::policy_client::PolicyClient;
use brainstem_proto::v1::registry_client::RegistryClient;
use brainstem_proto::v1::secrets_client::SecretsClient;
use brainstem_proto::v1::supervisor_client::SupervisorClient;
use brainstem_proto::v1::tokens_client::TokensClient;
pub use brainstem_proto::{code_name, flagd, v1};
pub use resilience::{
    BreakerState, CircuitBreaker, Resilience, Resilient, RetryPolicy, new_idempotency_key,
    with_idempotency_key,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
pub use tonic_health::pb::health_client::HealthClient;

/// Where and how to reach brainstemd.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` or `https://host:port`.
    pub endpoint: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// TLS name to verify instead of the endpoint's host.
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
    /// Deadline of every call (grpc-timeout), retries included.
    pub call_timeout: Duration,
    /// Retries and the circuit breaker ([`resilience`]); `None` (the default of [`ConnectOptions::dev`])
    /// sends each call once and reports the daemon's answer as it is.
    pub resilience: Option<Resilience>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A certificate or key file that does not exist: what was looked for, where, and how to point
    /// the client elsewhere.
    #[error(
        "no {what} at {}: point at the daemon's state directory with --state-dir or \
         BRAINSTEM_STATE_DIR (or give --ca, --cert and --key), or start `brainstemd --dev` there first \
         (it creates the dev PKI)",
        path.display()
    )]
    Missing { what: &'static str, path: PathBuf },
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{}", describe_status(.0))]
    Rpc(#[from] tonic::Status),
}

/// A status as one line for people: `CODE: message`, then what its details add — each field
/// violation, when to retry, the error id of an INTERNAL and the call's `x-request-id`.
pub fn describe_status(status: &tonic::Status) -> String {
    use std::fmt::Write;
    use tonic_types::StatusExt;

    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        let shown = bad.field_violations.iter().filter(|v| {
            // The message usually quotes a lone violation already.
            !(bad.field_violations.len() == 1 && status.message().contains(&v.description))
        });
        for v in shown {
            let _ = write!(text, "\n  {}: {}", v.field, v.description);
        }
    }
    if let Some(retry) = details.retry_info().and_then(|r| r.retry_delay) {
        let _ = write!(text, "\n  retry after {:.1} s", retry.as_secs_f64());
    }
    if let Some(info) = details.error_info() {
        if !info.reason.is_empty() {
            let _ = write!(text, "\n  reason: {}", info.reason);
        }
    }
    for key in ["brainstem-error-id", "x-request-id"] {
        if let Some(value) = status.metadata().get(key).and_then(|v| v.to_str().ok()) {
            let _ = write!(text, "\n  {key}: {value}");
        }
    }
    text
}

/// Exit codes `brainstemctl` uses; scripts can rely on them.
pub mod exit {
    pub const OK: u8 = 0;
    /// The check ran and the answer is "no" (e.g. health is NOT_SERVING).
    pub const NEGATIVE: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// The daemon could not be reached, or answered UNAVAILABLE / DEADLINE_EXCEEDED.
    pub const UNREACHABLE: u8 = 3;
    /// PERMISSION_DENIED or UNAUTHENTICATED.
    pub const DENIED: u8 = 4;
    /// Any other RPC error (INVALID_ARGUMENT, DATA_LOSS, …).
    pub const RPC_ERROR: u8 = 5;
    /// A local file (certificate, key) could not be read or written.
    pub const LOCAL: u8 = 6;
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        use tonic::Code;
        match self {
            ClientError::File { .. } | ClientError::Missing { .. } => exit::LOCAL,
            ClientError::Endpoint { .. } => exit::USAGE,
            ClientError::Connect { .. } => exit::UNREACHABLE,
            ClientError::Rpc(status) => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded => exit::UNREACHABLE,
                Code::PermissionDenied | Code::Unauthenticated => exit::DENIED,
                _ => exit::RPC_ERROR,
            },
        }
    }
}

/// Stubs for every service, sharing one channel (one HTTP/2 connection) through [`Resilient`]
/// (deadlines, retries, the breaker, as [`ConnectOptions::resilience`] says).
#[derive(Clone)]
pub struct Client {
    /// The raw channel (no retries, no breaker).
    pub channel: Channel,
    pub admin: AdminClient<Resilient>,
    pub tokens: TokensClient<Resilient>,
    pub health: HealthClient<Resilient>,
    pub policy: PolicyClient<Resilient>,
    pub audit: AuditClient<Resilient>,
    pub guardrails: GuardrailsClient<Resilient>,
    pub supervisor: SupervisorClient<Resilient>,
    pub episodic: EpisodicClient<Resilient>,
    pub learning: LearningClient<Resilient>,
    pub flags: FlagsClient<Resilient>,
    pub secrets: SecretsClient<Resilient>,
    pub registry: RegistryClient<Resilient>,
    resilient: Resilient,
}

impl Client {
    /// The endpoint's circuit breaker, when the connection has one.
    pub fn breaker(&self) -> Option<&std::sync::Arc<CircuitBreaker>> {
        self.resilient.breaker()
    }
}

impl ConnectOptions {
    /// The dev-mode admin identity under `state_dir/pki`.
    pub fn dev(state_dir: &Path, endpoint: &str) -> Self {
        let pki = state_dir.join("pki");
        ConnectOptions {
            endpoint: endpoint.to_owned(),
            ca: pki.join("ca.pem"),
            cert: pki.join("admin.pem"),
            key: pki.join("admin.key"),
            server_name: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            resilience: None,
        }
    }

    /// The same connection settings with another client identity.
    pub fn with_identity(mut self, cert: PathBuf, key: PathBuf) -> Self {
        self.cert = cert;
        self.key = key;
        self
    }

    fn uri(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("https://{}", self.endpoint)
        }
    }

    fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
        std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ClientError::Missing {
                    what,
                    path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
                }
            } else {
                ClientError::File {
                    path: path.to_owned(),
                    source,
                }
            }
        })
    }

    /// Opens one mutual-TLS HTTP/2 connection.
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = Self::read("CA certificate", &self.ca)?;
        let cert = Self::read("client certificate", &self.cert)?;
        let key = Self::read("client key", &self.key)?;
        let uri = self.uri();
        let bad_endpoint = |reason: String| ClientError::Endpoint {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key));
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|err| bad_endpoint(err.to_string()))?
            .tls_config(tls)
            .map_err(|err| bad_endpoint(err.to_string()))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.call_timeout)
            .tcp_nodelay(true);
        endpoint
            .connect()
            .await
            .map_err(|err| ClientError::Connect {
                endpoint: self.endpoint.clone(),
                reason: self.connect_failure(&error_chain(&err)),
            })
    }

    /// A failed connection's reason with its likely cause first.
    fn connect_failure(&self, chain: &str) -> String {
        let has = |needle: &str| chain.contains(needle);
        let cause = if has("Connection refused") {
            "nothing listens there: is brainstemd running? (start it, or pass --endpoint / \
             BRAINSTEM_ENDPOINT)"
                .to_owned()
        } else if has("BadSignature") || has("UnknownIssuer") || has("invalid peer certificate") {
            format!(
                "the daemon's certificate is not signed by the CA {} (a daemon from another state \
                 directory? pass its CA with --ca or its --state-dir)",
                self.ca.display()
            )
        } else if has("NotValidForName") {
            "the daemon's certificate does not name this host (pass --server-name)".to_owned()
        } else if has("CertificateRequired") || has("BadCertificate") || has("UnknownCA") {
            format!(
                "the daemon refused the client certificate {} (not signed by its CA?)",
                self.cert.display()
            )
        } else if has("timed out") || has("deadline has elapsed") {
            format!("no answer within {} s", self.connect_timeout.as_secs_f32())
        } else {
            return chain.to_owned();
        };
        format!("{cause} [{chain}]")
    }

    /// Connects and returns stubs for every service.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        let channel = self.channel().await?;
        let resilient = Resilient::new(channel.clone(), self.resilience.clone(), self.call_timeout);
        Ok(Client {
            admin: AdminClient::new(resilient.clone()),
            tokens: TokensClient::new(resilient.clone()),
            health: HealthClient::new(resilient.clone()),
            policy: PolicyClient::new(resilient.clone()),
            audit: AuditClient::new(resilient.clone()),
            guardrails: GuardrailsClient::new(resilient.clone()),
            supervisor: SupervisorClient::new(resilient.clone()),
            episodic: EpisodicClient::new(resilient.clone()),
            learning: LearningClient::new(resilient.clone()),
            flags: FlagsClient::new(resilient.clone()),
            secrets: SecretsClient::new(resilient.clone()),
            registry: RegistryClient::new(resilient.clone()),
            resilient,
            channel,
        })
    }
}

/// An error and its causes on one line, each text once: a cause whose text its parent's message
/// already holds (tonic and hyper repeat their sources) is not repeated.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chains_say_each_cause_once() {
        let err = E(
            "tcp connect error",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            error_chain(&err),
            "tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn connect_failures_name_the_likely_cause() {
        let options = ConnectOptions::dev(Path::new("/s"), "127.0.0.1:1");
        let refused =
            options.connect_failure("tcp connect error: Connection refused (os error 111)");
        assert!(refused.starts_with("nothing listens there"), "{refused}");
        let other_ca = options.connect_failure("invalid peer certificate: BadSignature");
        assert!(
            other_ca.contains("not signed by the CA /s/pki/ca.pem"),
            "{other_ca}"
        );
        assert_eq!(options.connect_failure("something new"), "something new");
    }

    #[tokio::test]
    async fn a_missing_ca_says_where_it_looked_and_how_to_point_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let options = ConnectOptions::dev(&dir.path().join("nowhere"), "127.0.0.1:1");
        let err = options.channel().await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no CA certificate at"), "{text}");
        assert!(text.contains("nowhere/pki/ca.pem"), "{text}");
        assert!(
            text.contains("--state-dir") && text.contains("brainstemd --dev"),
            "{text}"
        );
        assert_eq!(err.exit_code(), exit::LOCAL);
    }
}

#[cfg(test)]
mod status_tests {
    use std::time::Duration;

    use tonic_types::{ErrorDetails, StatusExt};

    use super::describe_status;

    #[test]
    fn a_status_is_described_with_its_violations_retry_and_ids() {
        let mut details = ErrorDetails::with_bad_request(vec![
            tonic_types::FieldViolation::new("path", "must start with /"),
            tonic_types::FieldViolation::new("value", "is empty"),
        ]);
        details.set_retry_info(Some(Duration::from_millis(1500)));
        let mut status =
            tonic::Status::with_error_details(tonic::Code::InvalidArgument, "2 problems", details);
        status
            .metadata_mut()
            .insert("x-request-id", "req-7".parse().unwrap());
        let text = describe_status(&status);
        assert_eq!(
            text,
            "INVALID_ARGUMENT: 2 problems\n  path: must start with /\n  value: is empty\n  \
             retry after 1.5 s\n  x-request-id: req-7"
        );
        // A lone violation the message already quotes is not repeated; no details, one line.
        let one = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "path: must start with /",
            ErrorDetails::with_bad_request_violation("path", "must start with /"),
        );
        assert_eq!(
            describe_status(&one),
            "INVALID_ARGUMENT: path: must start with /"
        );
        assert_eq!(
            describe_status(&tonic::Status::not_found("no such secret")),
            "NOT_FOUND: no such secret"
        );
    }
}
