//! The gRPC control plane: mutual TLS, the authorization layer, health, reflection and the service
//! registry ([`services`]). Besides the capabilities' `api` modules, only this module (and its
//! children) knows protobuf types.

pub mod admin;
pub mod config;
pub mod convert;
pub mod correlation;
pub mod events;
pub mod idempotency;
pub mod incoming;
pub mod layer;
pub mod methods;
pub mod services;
pub mod status;
pub mod tls;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::grpc::config::ServerConfig;
use crate::grpc::services::{Handler, Limits, Shared};
use crate::grpc::tls::ReloadableTls;
use crate::runtime::tasks::Tasks;

/// Sets the overall health and that of every service that follows the daemon's readiness. Services
/// served by an actor follow their actor instead: see [`crate::supervisor::api::HealthSync`].
pub async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in services::daemon_health_names() {
        health.set_service_status(service, status).await;
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
#[allow(clippy::too_many_arguments)]
pub fn serve(
    listener: TcpListener,
    config: &ServerConfig,
    tls: Arc<ReloadableTls>,
    health_service: tonic_health::pb::health_server::HealthServer<
        tonic_health::server::HealthService,
    >,
    handlers: Vec<Handler>,
    shared: Shared,
    tasks: &Tasks,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let limits = Limits {
        max_message_bytes: config.max_message_bytes as usize,
    };
    let incoming = incoming::spawn_accept_loop(
        listener,
        tls,
        incoming::AcceptLimits::from(config),
        tasks,
        token.clone(),
    );
    let mut reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in services::descriptor_sets() {
        reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
        reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
    }

    let mut routes = RoutesBuilder::default();
    routes.add_service(health_service);
    match (reflection_v1.build_v1(), reflection_v1alpha.build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => {
            routes.add_service(v1).add_service(v1alpha);
        }
        (v1, v1alpha) => {
            // The descriptor sets are compiled in; failing to read them is a build defect.
            tracing::error!(v1 = ?v1.err(), v1alpha = ?v1alpha.err(), "server reflection disabled");
        }
    }
    let access = shared.access.clone();
    let tokens = shared.tokens.clone();
    // A gRPC frame header (5 bytes) on top of the largest message.
    let idempotency = match idempotency::Idempotency::open(
        &shared.store,
        limits.max_message_bytes + 5,
    ) {
        Ok(cache) => Some(Arc::new(cache)),
        Err(err) => {
            tracing::error!(error = %err, "idempotency cache unavailable; keyed calls answer UNAVAILABLE");
            None
        }
    };
    for handler in handlers {
        handler(&shared, &mut routes, limits);
    }

    let router = Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams as u32)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(layer::AuthLayer::new(
            access,
            tokens,
            Duration::from_secs(config.request_timeout_seconds),
            idempotency,
        ))
        .add_routes(routes.routes());
    tasks.spawn("grpc.server", async move {
        let result = router
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), token.cancelled_owned())
            .await;
        if let Err(err) = result {
            tracing::error!(error = %err, "gRPC server failed");
        }
    })
}
