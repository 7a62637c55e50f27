//! The metrics listener (loopback only): Prometheus text on `/metrics`, and plain `/healthz` (liveness:
//! the process answers) and `/readyz` (200 while ready; 503 while starting, draining, or while a
//! critical actor or worker is stopped or failed) for probes. It runs as the `metrics-listener`
//! worker (`supervisor::builtin`); this module knows nothing of the supervisor, only a readiness
//! check.

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// Answers "is the daemon ready?" for `/readyz`.
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// How often histogram upkeep runs while the listener serves.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct AppState {
    ready: ReadyCheck,
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
    if (state.ready)() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the metrics endpoints until `token` is cancelled (then finishes open requests), running
/// histogram upkeep meanwhile. An error means the listener broke.
pub async fn serve(
    listener: TcpListener,
    ready: ReadyCheck,
    token: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { ready });
    let server = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
    let upkeep = async {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            if let Some(handle) = recorder() {
                handle.run_upkeep();
            }
        }
    };
    tokio::select! {
        result = server => result,
        // The upkeep loop never ends on its own.
        _ = upkeep => Ok(()),
    }
}
