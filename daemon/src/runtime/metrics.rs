//! The metrics listener (loopback only): Prometheus text on `/metrics`, and plain `/healthz` (the
//! process answers) and `/readyz` (200 while serving, 503 while starting or draining) for probes.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::tasks::Tasks;

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from 50 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS) {
                Ok(builder) => builder,
                Err(err) => {
                    tracing::error!(error = %err, "metrics buckets rejected");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(err) => {
                    tracing::warn!(error = %err, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

#[derive(Clone)]
struct AppState {
    ready: Arc<AtomicBool>,
}

async fn metrics_text() -> (StatusCode, String) {
    match recorder() {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n".to_owned(),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the metrics endpoints until `token` is cancelled; keeps histogram upkeep running.
pub fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    tasks: &Tasks,
    token: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { ready });
    let serve_token = token.clone();
    tasks.spawn("metrics.http", async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(serve_token.cancelled_owned())
            .await;
        if let Err(err) = result {
            tracing::error!(error = %err, "metrics listener failed");
        }
    });
    tasks.spawn("metrics.upkeep", async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    if let Some(handle) = recorder() {
                        handle.run_upkeep();
                    }
                }
            }
        }
    });
}
