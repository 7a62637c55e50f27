//! Optional OpenTelemetry trace export over OTLP/gRPC (`[traces]`).
//!
//! Off by default: then nothing here runs, no OpenTelemetry layer is installed and [`enabled`] is
//! false, so the call path only pays for one relaxed atomic load. When on, every `tracing` span of
//! this crate (the `rpc` span of each call and its children: policy decisions, store commits, actor
//! work) becomes an OpenTelemetry span, batched on the SDK's own thread and exported by the tonic
//! client on the daemon's runtime. A collector that is down never slows a call: a full queue drops
//! spans, and failed exports are counted (`brainstem_trace_export_failures_total`) and logged at
//! most once a minute.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};

use crate::runtime::config::TracesConfig;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once at start).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The tracer the OpenTelemetry layer records through.
pub type Tracer = opentelemetry_sdk::trace::Tracer;

/// The running export; [`Traces::shutdown`] flushes it at stop.
pub struct Traces {
    provider: SdkTracerProvider,
}

/// Builds the exporter and the tracer provider. Must run inside the tokio runtime (the tonic channel
/// spawns its connection there); connects lazily, so a collector that is down does not fail the start.
pub fn start(config: &TracesConfig) -> Result<(Tracer, Traces), String> {
    let timeout = Duration::from_millis(config.export_timeout_ms);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.otlp_endpoint.clone())
        .with_timeout(timeout)
        .build()
        .map_err(|err| format!("cannot build the OTLP exporter: {err}"))?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(CountingExporter::new(exporter))
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("brainstemd");
    ENABLED.store(true, Ordering::Relaxed);
    Ok((tracer, Traces { provider }))
}

impl Traces {
    /// Exports what is queued and stops the exporter, waiting at most `limit` (a collector that is
    /// down must not hold the stop). Blocking: call it off the runtime's worker threads.
    pub fn shutdown(self, limit: Duration) {
        if let Err(err) = self.provider.shutdown_with_timeout(limit) {
            tracing::warn!(error = %err, "traces: the last spans may not have been exported");
        }
    }
}

/// The caller's trace context from W3C `traceparent` / `tracestate` metadata; `None` when it sent
/// none (or an invalid one: then the call starts a trace of its own).
pub fn remote_parent(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::TraceContextExt as _;
    headers.get("traceparent")?;
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The OTLP exporter, with its failures counted and logged at most once per [`LOG_EVERY`].
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    /// When the last failure was logged, and the failures since then.
    logged: Mutex<(Option<Instant>, u64)>,
}

/// How often a failing export is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

impl<E> CountingExporter<E> {
    fn new(inner: E) -> Self {
        CountingExporter {
            inner,
            logged: Mutex::new((None, 0)),
        }
    }

    fn failed(&self, err: &dyn std::fmt::Display) {
        events::ExportFailed.emit();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        logged.1 += 1;
        let now = Instant::now();
        if logged
            .0
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(
                error = %err,
                failures = logged.1,
                "traces: cannot export spans to the collector (logged at most once a minute; \
                 brainstem_trace_export_failures_total counts them)"
            );
            *logged = (Some(now), 0);
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => events::Exported { spans }.emit(),
            Err(err) => self.failed(err),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

pub mod events {
    //! The export's metrics.

    pub fn describe() {
        metrics::describe_counter!(
            "brainstem_trace_spans_exported_total",
            "spans the OTLP collector accepted"
        );
        metrics::describe_counter!(
            "brainstem_trace_export_failures_total",
            "OTLP span batches that could not be exported (collector down, slow or refusing); \
             their spans are lost"
        );
    }

    pub struct Exported {
        pub spans: usize,
    }

    impl Exported {
        pub fn emit(&self) {
            metrics::counter!("brainstem_trace_spans_exported_total").increment(self.spans as u64);
        }
    }

    pub struct ExportFailed;

    impl ExportFailed {
        pub fn emit(&self) {
            metrics::counter!("brainstem_trace_export_failures_total").increment(1);
        }
    }
}
