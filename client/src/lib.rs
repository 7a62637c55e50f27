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

use std::path::{Path, PathBuf};
use std::time::Duration;

use brainstem_proto::v1::admin_client::AdminClient;
use brainstem_proto::v1::audit_client::AuditClient;
use brainstem_proto::v1::episodic_client::EpisodicClient;
use brainstem_proto::v1::flags_client::FlagsClient;
use brainstem_proto::v1::guardrails_client::GuardrailsClient;
use brainstem_proto::v1::policy_client::PolicyClient;
use brainstem_proto::v1::supervisor_client::SupervisorClient;
use brainstem_proto::v1::tokens_client::TokensClient;
pub use brainstem_proto::{code_name, flagd, v1};
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
    /// Deadline sent with every call (grpc-timeout).
    pub call_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] tonic::Status),
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
            ClientError::File { .. } => exit::LOCAL,
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

/// Stubs for every service, sharing one channel (one HTTP/2 connection).
#[derive(Clone)]
pub struct Client {
    pub channel: Channel,
    pub admin: AdminClient<Channel>,
    pub tokens: TokensClient<Channel>,
    pub health: HealthClient<Channel>,
    pub policy: PolicyClient<Channel>,
    pub audit: AuditClient<Channel>,
    pub guardrails: GuardrailsClient<Channel>,
    pub supervisor: SupervisorClient<Channel>,
    pub episodic: EpisodicClient<Channel>,
    pub flags: FlagsClient<Channel>,
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

    fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
        std::fs::read(path).map_err(|source| ClientError::File {
            path: path.to_owned(),
            source,
        })
    }

    /// Opens one mutual-TLS HTTP/2 connection.
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = Self::read(&self.ca)?;
        let cert = Self::read(&self.cert)?;
        let key = Self::read(&self.key)?;
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
                reason: error_chain(&err),
            })
    }

    /// Connects and returns stubs for every service.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        let channel = self.channel().await?;
        Ok(Client {
            admin: AdminClient::new(channel.clone()),
            tokens: TokensClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            policy: PolicyClient::new(channel.clone()),
            audit: AuditClient::new(channel.clone()),
            guardrails: GuardrailsClient::new(channel.clone()),
            supervisor: SupervisorClient::new(channel.clone()),
            episodic: EpisodicClient::new(channel.clone()),
            flags: FlagsClient::new(channel.clone()),
            channel,
        })
    }
}

/// An error and its causes on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
