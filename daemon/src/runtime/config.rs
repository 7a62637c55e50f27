//! `[metrics]` (the Prometheus listener), `[log]` and `[traces]` (optional OTLP export).

use std::net::SocketAddr;

use crate::config::{Config, Issues, Section, Table, Walker};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
        }
    }
}

impl Section for MetricsConfig {
    const KEY: &'static str = "metrics";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.boolean(&t, "enabled", &mut self.enabled);
        walker.socket_addr(&t, "listen", &mut self.listen);
        walker.finish(t);
    }

    fn validate(&self, config: &Config, issues: &mut Issues) {
        if !self.enabled {
            return;
        }
        if !self.listen.ip().is_loopback() {
            issues.push(
                "metrics.listen",
                format!(
                    "{} is not a loopback address; the metrics listener is unauthenticated and serves on 127.0.0.1 or ::1 only",
                    self.listen
                ),
            );
        }
        if self.listen == config.server.listen && config.server.listen.port() != 0 {
            issues.push("metrics.listen", "must differ from server.listen");
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[metrics]
# Prometheus text format on http://<listen>/metrics, plus /healthz and /readyz. Loopback only.
enabled = {}
listen = "{}"
"#,
            self.enabled, self.listen
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `info,brainstemd::grpc=debug`. `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Human,
        }
    }
}

impl Section for LogConfig {
    const KEY: &'static str = "log";
    const RELOADABLE: &'static [&'static str] = &["level"];

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.string(&t, "level", &mut self.level);
        walker.choice(
            &t,
            "format",
            &[("human", LogFormat::Human), ("json", LogFormat::Json)],
            &mut self.format,
        );
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        if let Err(err) = crate::runtime::telemetry::check_filter(&self.level) {
            issues.push("log.level", format!("not a valid filter directive: {err}"));
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[log]
# An EnvFilter directive, e.g. "info,brainstemd::grpc=debug". RUST_LOG wins when set.
level = "{}"
# "human" or "json".
format = "{}"
"#,
            self.level,
            match self.format {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            }
        )
    }
}

/// `[traces]`: OTLP trace export, off unless `otlp_endpoint` is set. Restart-only.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TracesConfig {
    /// `http://HOST:PORT` of an OTLP/gRPC collector; empty: no export, no tracing layer at all.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Share of traces sampled where the caller sent no sampling decision (parent-based: a
    /// `traceparent` with its sampled flag decides for its own trace).
    pub sample_ratio: f64,
    /// Longest one export to the collector may take.
    pub export_timeout_ms: u64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp_endpoint: String::new(),
            service_name: "brainstemd".to_owned(),
            sample_ratio: 1.0,
            export_timeout_ms: 10_000,
        }
    }
}

impl TracesConfig {
    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }
}

/// Why `endpoint` cannot be an OTLP/gRPC collector address (`None`: it can).
pub fn check_otlp_endpoint(endpoint: &str) -> Option<String> {
    let uri: http::Uri = match endpoint.parse() {
        Ok(uri) => uri,
        Err(err) => return Some(format!("{endpoint:?} is not a URL: {err}")),
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Some(format!(
                "{endpoint:?}: https is not supported; export to a collector on this host or a \
                 private network over http://HOST:PORT"
            ));
        }
        _ => {
            return Some(format!(
                "{endpoint:?} must look like \"http://127.0.0.1:4317\" (scheme http, a host and a port)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Some(format!(
            "{endpoint:?} must name a host and a port, like \"http://127.0.0.1:4317\""
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Some(format!(
            "{endpoint:?} must have no path (the OTLP/gRPC service path is fixed)"
        ));
    }
    None
}

impl Section for TracesConfig {
    const KEY: &'static str = "traces";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.string(&t, "otlp_endpoint", &mut self.otlp_endpoint);
        walker.string(&t, "service_name", &mut self.service_name);
        walker.float(&t, "sample_ratio", 0.0..=1.0, &mut self.sample_ratio);
        walker.integer(
            &t,
            "export_timeout_ms",
            100..=60_000,
            &mut self.export_timeout_ms,
        );
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        if !self.enabled() {
            return;
        }
        if let Some(why) = check_otlp_endpoint(&self.otlp_endpoint) {
            issues.push("traces.otlp_endpoint", why);
        }
        if self.service_name.trim().is_empty() {
            issues.push("traces.service_name", "must not be empty");
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[traces]
# OpenTelemetry traces over OTLP/gRPC: a span per RPC (its parent from the caller's W3C traceparent)
# with child spans for policy decisions, store commits and actor work. Empty otlp_endpoint: off, and
# no tracing layer is installed. e.g. "http://127.0.0.1:4317". Restart to change.
otlp_endpoint = "{}"
# The service.name resource attribute.
service_name = "{}"
# Traces sampled where the caller's traceparent did not decide (0.0..=1.0).
sample_ratio = {:?}
# Longest one batch export may take; spans are exported in the background, never on the call path.
export_timeout_ms = {}
"#,
            self.otlp_endpoint, self.service_name, self.sample_ratio, self.export_timeout_ms
        )
    }
}
