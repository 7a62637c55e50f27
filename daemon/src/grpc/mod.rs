//! The gRPC control plane: mutual TLS, the authorization layer, health, reflection and the brainstem.v1
//! services. Only this module (and its children) knows protobuf types.

pub mod admin;
pub mod convert;
pub mod incoming;
pub mod layer;
pub mod methods;
pub mod status;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use brainstem_proto::v1::admin_server::AdminServer;
use brainstem_proto::v1::audit_server::AuditServer;
use brainstem_proto::v1::episodic_server::EpisodicServer;
use brainstem_proto::v1::guardrails_server::GuardrailsServer;
use brainstem_proto::v1::policy_server::PolicyServer;
use brainstem_proto::v1::supervisor_server::SupervisorServer;
use brainstem_proto::v1::tokens_server::TokensServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::access::Access;
use crate::config::ServerConfig;
use crate::grpc::tls::ReloadableTls;
use crate::runtime::tasks::Tasks;

/// Service names reported through `grpc.health.v1` (besides "" for the whole server).
/// Actors' services (e.g. `brainstem.v1.Episodic`) follow their actor's state instead: see
/// [`supervisor::spawn_health_sync`].
pub const HEALTH_SERVICES: &[&str] = &[
    "brainstem.v1.Admin",
    "brainstem.v1.Policy",
    "brainstem.v1.Audit",
    "brainstem.v1.Guardrails",
    "brainstem.v1.Tokens",
    "brainstem.v1.Supervisor",
];

pub struct GrpcParts {
    pub tls: Arc<ReloadableTls>,
    pub access: Arc<Access>,
    pub health_service:
        tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    pub admin: admin::AdminService,
    /// Capability tokens; also what the layer will ask about bearer tokens in request metadata.
    pub tokens: Arc<crate::tokens::TokenService>,
    pub supervisor: crate::supervisor::api::SupervisorService,
    /// `None` when the episodic buffer is disabled (its RPCs answer UNIMPLEMENTED).
    pub episodic: Option<crate::actors::episodic::api::EpisodicService>,
}

/// Sets the overall and per-service health.
pub async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in HEALTH_SERVICES {
        health.set_service_status(*service, status).await;
    }
}

/// Builds the health reporter and its service.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
) {
    let reporter = HealthReporter::new();
    let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        tonic_health::pb::health_server::HealthServer::new(service),
    )
}

/// Serves gRPC on `listener` until `token` is cancelled, then drains in-flight calls (graceful).
/// The returned handle ends when the drain is complete; the caller bounds it with its deadline.
pub fn serve(
    listener: TcpListener,
    config: &ServerConfig,
    parts: GrpcParts,
    tasks: &Tasks,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let max_message = config.max_message_bytes as usize;
    let tokens_service = crate::tokens::api::TokensService::new(
        parts.tokens.clone(),
        parts.access.authorizer.clone(),
    );
    let incoming = incoming::spawn_accept_loop(
        listener,
        parts.tls,
        incoming::AcceptLimits {
            max_connections: config.max_connections as usize,
            handshake_timeout: Duration::from_secs(config.handshake_timeout_seconds),
        },
        tasks,
        token.clone(),
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(brainstem_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(brainstem_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();

    let router = Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams as u32)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(layer::AuthLayer::new(
            parts.access.clone(),
            parts.tokens.clone(),
            Duration::from_secs(config.request_timeout_seconds),
        ))
        .add_service(parts.health_service)
        .add_service(
            AdminServer::new(parts.admin)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            PolicyServer::new(crate::policy::api::PolicyService::new(parts.access.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            AuditServer::new(crate::access::api::audit::AuditService::new(
                parts.access.audit.clone(),
            ))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .add_service(
            GuardrailsServer::new(crate::access::api::guardrails::GuardrailsService::new(
                parts.access.clone(),
            ))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .add_service(
            TokensServer::new(tokens_service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            SupervisorServer::new(parts.supervisor)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_optional_service(parts.episodic.map(|episodic| {
            EpisodicServer::new(episodic)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message)
        }));
    let router = match (reflection_v1, reflection_v1alpha) {
        (Ok(v1), Ok(v1alpha)) => router.add_service(v1).add_service(v1alpha),
        (v1, v1alpha) => {
            // The descriptor sets are compiled in; failing to read them is a build defect.
            tracing::error!(v1 = ?v1.err(), v1alpha = ?v1alpha.err(), "server reflection disabled");
            router
        }
    };
    tasks.spawn("grpc.server", async move {
        let result = router
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), token.cancelled_owned())
            .await;
        if let Err(err) = result {
            tracing::error!(error = %err, "gRPC server failed");
        }
    })
}
