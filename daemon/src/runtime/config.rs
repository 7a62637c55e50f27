//! `[metrics]` (the Prometheus listener) and `[log]`.

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
