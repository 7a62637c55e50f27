//! OTLP trace export end to end: the real daemon exports to an OTLP/gRPC receiver this test runs,
//! the caller's W3C `traceparent` becomes the RPC span's parent, and the policy, actor and store
//! work are child spans of the RPC span.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brainstem_client::v1::{CheckRequest, Episode, StoreRequest};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::harness::{DaemonProcess, eventually};

/// Every span received, with its resource's `service.name`.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    fn find(&self, pred: impl Fn(&Span) -> bool) -> Option<(String, Span)> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .find(|(_, s)| pred(s))
            .cloned()
    }

    /// Whether `span` descends from the span `ancestor` through spans received so far (the
    /// handlers' own `#[instrument]` spans may stand between).
    fn descends(&self, span: &Span, ancestor: &[u8]) -> bool {
        let spans = self.spans.lock().unwrap();
        let mut parent = span.parent_span_id.clone();
        for _ in 0..16 {
            if parent.is_empty() {
                return false;
            }
            if parent == ancestor {
                return true;
            }
            match spans.iter().find(|(_, s)| s.span_id == parent) {
                Some((_, s)) => parent = s.parent_span_id.clone(),
                None => return false,
            }
        }
        false
    }

    /// Waits for a span named `name` in trace `TRACE_ID` below the span `ancestor`.
    async fn below(&self, name: &str, ancestor: &[u8]) -> Span {
        eventually(
            &format!("span {name:?} below the RPC span"),
            Duration::from_secs(30),
            || {
                let named: Vec<Span> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, s)| s.name == name && hex(&s.trace_id) == TRACE_ID)
                    .map(|(_, s)| s.clone())
                    .collect();
                let found = named.into_iter().find(|s| self.descends(s, ancestor));
                async move { found }
            },
        )
        .await
    }
}

/// An attribute's value as text (strings as they are, numbers and booleans formatted).
fn attribute(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        _ => return None,
    })
}

/// Serves the receiver on 127.0.0.1 port 0 until the returned sender is dropped or fired.
async fn start_receiver(
    receiver: Receiver,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    (addr, stop)
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traced<T>(message: T, caller_span: &str, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(
        "traceparent",
        format!("00-{TRACE_ID}-{caller_span}-01").parse().unwrap(),
    );
    metadata.insert("tracestate", "vendor=opaque".parse().unwrap());
    metadata.insert("x-request-id", request_id.parse().unwrap());
    request
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for the span named `name` in trace `TRACE_ID` that `pred` accepts.
async fn span_named(receiver: &Receiver, name: &str, pred: impl Fn(&Span) -> bool) -> Span {
    eventually(
        &format!("span {name:?} at the receiver"),
        Duration::from_secs(30),
        || {
            let found =
                receiver.find(|s| s.name == name && hex(&s.trace_id) == TRACE_ID && pred(s));
            async move { found.map(|(_, s)| s) }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_under_the_callers_traceparent_with_children_under_the_rpc() {
    let receiver = Receiver::default();
    let (addr, stop_receiver) = start_receiver(receiver.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("brainstemd.toml");
    std::fs::write(
        &config,
        format!("[traces]\notlp_endpoint = \"http://{addr}\"\nservice_name = \"brainstemd-e2e\"\n"),
    )
    .unwrap();
    let daemon =
        DaemonProcess::start_with(dir.path(), &[OsStr::new("--config"), config.as_os_str()]).await;
    let client = daemon.client().await;

    // Policy.Check under the caller's span: the RPC span and the decision beneath it.
    let check = CheckRequest {
        action: "traces.check".to_owned(),
        resource: "https://example.org/x".to_owned(),
        ..Default::default()
    };
    client
        .policy
        .clone()
        .check(traced(check, CALLER_SPAN, "trace-check-1"))
        .await
        .expect("Policy.Check");
    let rpc = span_named(&receiver, "brainstem.v1.Policy/Check", |_| true).await;
    assert_eq!(hex(&rpc.parent_span_id), CALLER_SPAN, "{rpc:?}");
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert!(
        rpc.trace_state.contains("vendor=opaque"),
        "tracestate kept: {rpc:?}"
    );
    let attrs = |s: &Span| -> HashMap<String, String> {
        s.attributes
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), attribute(&s.attributes, &kv.key)?)))
            .collect()
    };
    let rpc_attrs = attrs(&rpc);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "brainstem.v1.Policy"),
        ("rpc.method", "Check"),
        ("rpc.grpc.status_code", "0"),
        ("correlation_id", "trace-check-1"),
    ] {
        assert_eq!(
            rpc_attrs.get(key).map(String::as_str),
            Some(value),
            "{key} in {rpc_attrs:?}"
        );
    }
    let decision = receiver.below("policy.decide", &rpc.span_id).await;
    assert!(attrs(&decision).contains_key("allowed"), "{decision:?}");
    let (service, _) = receiver
        .find(|s| s.span_id == rpc.span_id)
        .expect("the RPC span");
    assert_eq!(service, "brainstemd-e2e");

    // A write: the RPC span, the episodic actor's work below it (under the handler's own span), the
    // store commit under the actor's.
    let store_caller = "1111111111111111";
    client
        .episodic
        .clone()
        .store(traced(
            StoreRequest {
                episode: Some(Episode {
                    source: "traces-test".to_owned(),
                    kind: "observation".to_owned(),
                    text: "traced".to_owned(),
                    embedding: vec![0.5; 384],
                    ..Default::default()
                }),
            },
            store_caller,
            "trace-store-1",
        ))
        .await
        .expect("Episodic.Store");
    let rpc = span_named(&receiver, "brainstem.v1.Episodic/Store", |s| {
        hex(&s.parent_span_id) == store_caller
    })
    .await;
    let actor = receiver.below("episodic.store", &rpc.span_id).await;
    receiver.below("store.commit", &actor.span_id).await;

    // A call without traceparent starts a trace of its own (no parent).
    let mut admin = client.admin.clone();
    admin
        .ping(brainstem_client::v1::PingRequest::default())
        .await
        .expect("Ping");
    eventually("a root Ping span", Duration::from_secs(30), || {
        let found = receiver.find(|s| {
            s.name == "brainstem.v1.Admin/Ping"
                && s.parent_span_id.is_empty()
                && hex(&s.trace_id) != TRACE_ID
        });
        async move { found }
    })
    .await;

    daemon.stop().await;
    let _ = stop_receiver.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_neither_fails_calls_nor_holds_the_stop() {
    // A port nothing listens on: bind, note it, close.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("brainstemd.toml");
    std::fs::write(
        &config,
        format!("[traces]\notlp_endpoint = \"http://{addr}\"\nexport_timeout_ms = 500\n"),
    )
    .unwrap();
    let daemon =
        DaemonProcess::start_with(dir.path(), &[OsStr::new("--config"), config.as_os_str()]).await;
    let mut admin = daemon.client().await.admin;
    for _ in 0..20 {
        admin
            .ping(brainstem_client::v1::PingRequest::default())
            .await
            .expect("Ping while the collector is down");
    }
    // The failed exports are counted (the batch goes out within the SDK's 5 s schedule).
    let metrics = daemon.metrics_addr;
    eventually(
        "brainstem_trace_export_failures_total",
        Duration::from_secs(30),
        || async move {
            let (_, text) = crate::harness::http_get(metrics, "/metrics").await;
            crate::harness::metric_value(&text, "brainstem_trace_export_failures_total")
                .filter(|v| *v >= 1.0)
        },
    )
    .await;
    // stop() asserts a clean exit within its own 10 s deadline.
    daemon.stop().await;
}
