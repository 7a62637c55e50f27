//! `[server]` (the gRPC listener and its limits) and `[tls]` (the mutual-TLS material).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{
    CREDENTIAL_PREFIX, Config, ConfigError, ConfigIssue, Issues, MIB, Section, Table, Walker,
    check_file, resolve_path,
};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_message_bytes: u64,
    pub max_connections: u64,
    pub max_pending_handshakes: u64,
    pub max_pending_handshakes_per_address: u64,
    pub first_byte_timeout_seconds: u64,
    pub max_concurrent_streams: u64,
    pub request_timeout_seconds: u64,
    pub handshake_timeout_seconds: u64,
    pub shutdown_grace_seconds: u64,
    pub drain_timeout_seconds: u64,
    pub stop_timeout_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 4 * MIB,
            max_connections: 1024,
            max_pending_handshakes: 256,
            max_pending_handshakes_per_address: 64,
            first_byte_timeout_seconds: 2,
            max_concurrent_streams: 256,
            request_timeout_seconds: 30,
            handshake_timeout_seconds: 10,
            shutdown_grace_seconds: 0,
            drain_timeout_seconds: 10,
            stop_timeout_seconds: 5,
        }
    }
}

impl Section for ServerConfig {
    const KEY: &'static str = "server";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.socket_addr(&t, "listen", &mut self.listen);
        walker.integer(
            &t,
            "max_message_bytes",
            1024..=64 * MIB,
            &mut self.max_message_bytes,
        );
        walker.integer(
            &t,
            "max_connections",
            1..=1_000_000,
            &mut self.max_connections,
        );
        walker.integer(
            &t,
            "max_pending_handshakes",
            1..=65_536,
            &mut self.max_pending_handshakes,
        );
        walker.integer(
            &t,
            "max_pending_handshakes_per_address",
            1..=65_536,
            &mut self.max_pending_handshakes_per_address,
        );
        walker.integer(
            &t,
            "first_byte_timeout_seconds",
            1..=60,
            &mut self.first_byte_timeout_seconds,
        );
        walker.integer(
            &t,
            "max_concurrent_streams",
            1..=65_536,
            &mut self.max_concurrent_streams,
        );
        walker.integer(
            &t,
            "request_timeout_seconds",
            1..=3600,
            &mut self.request_timeout_seconds,
        );
        walker.integer(
            &t,
            "handshake_timeout_seconds",
            1..=300,
            &mut self.handshake_timeout_seconds,
        );
        walker.integer(
            &t,
            "shutdown_grace_seconds",
            0..=300,
            &mut self.shutdown_grace_seconds,
        );
        walker.integer(
            &t,
            "drain_timeout_seconds",
            0..=600,
            &mut self.drain_timeout_seconds,
        );
        walker.integer(
            &t,
            "stop_timeout_seconds",
            0..=600,
            &mut self.stop_timeout_seconds,
        );
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        if self.max_pending_handshakes_per_address > self.max_pending_handshakes {
            issues.push(
                "server.max_pending_handshakes_per_address",
                format!(
                    "must not exceed server.max_pending_handshakes ({})",
                    self.max_pending_handshakes
                ),
            );
        }
        if self.first_byte_timeout_seconds > self.handshake_timeout_seconds {
            issues.push(
                "server.first_byte_timeout_seconds",
                format!(
                    "must not exceed server.handshake_timeout_seconds ({})",
                    self.handshake_timeout_seconds
                ),
            );
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[server]
# gRPC over mutual TLS.
listen = "{listen}"
max_message_bytes = {max_message_bytes}
# Established (TLS-handshaken) connections; more are closed before any TLS work.
max_connections = {max_connections}
# Connections still in their TLS handshake count apart from max_connections, in all and per source
# address. When either is full, the oldest one that has sent nothing yet is closed to make room; only
# when all of them are talking is a new connection refused.
max_pending_handshakes = {max_pending_handshakes}
max_pending_handshakes_per_address = {max_pending_handshakes_per_address}
# A connection that sends nothing this long after accept is closed (a TLS client speaks at once);
# handshake_timeout_seconds bounds the whole handshake.
first_byte_timeout_seconds = {first_byte_timeout_seconds}
# HTTP/2 streams (concurrent calls) per connection.
max_concurrent_streams = {max_concurrent_streams}
# Deadline for calls that carry none; a shorter grpc-timeout from the caller wins.
request_timeout_seconds = {request_timeout_seconds}
handshake_timeout_seconds = {handshake_timeout_seconds}
# On SIGTERM health turns NOT_SERVING at once; connections are still accepted for
# shutdown_grace_seconds (so health checkers can move traffic away), then in-flight calls get
# drain_timeout_seconds to finish, then background work gets stop_timeout_seconds.
shutdown_grace_seconds = {shutdown_grace_seconds}
drain_timeout_seconds = {drain_timeout_seconds}
stop_timeout_seconds = {stop_timeout_seconds}
"#,
            listen = self.listen,
            max_message_bytes = self.max_message_bytes,
            max_connections = self.max_connections,
            max_pending_handshakes = self.max_pending_handshakes,
            max_pending_handshakes_per_address = self.max_pending_handshakes_per_address,
            first_byte_timeout_seconds = self.first_byte_timeout_seconds,
            max_concurrent_streams = self.max_concurrent_streams,
            request_timeout_seconds = self.request_timeout_seconds,
            handshake_timeout_seconds = self.handshake_timeout_seconds,
            shutdown_grace_seconds = self.shutdown_grace_seconds,
            drain_timeout_seconds = self.drain_timeout_seconds,
            stop_timeout_seconds = self.stop_timeout_seconds,
        )
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TlsConfig {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: format!("{CREDENTIAL_PREFIX}ca.pem"),
            cert_file: format!("{CREDENTIAL_PREFIX}server.pem"),
            key_file: format!("{CREDENTIAL_PREFIX}server.key"),
        }
    }
}

impl Section for TlsConfig {
    const KEY: &'static str = "tls";
    /// New certificates are picked up on SIGHUP (new handshakes use them).
    const RELOADABLE: &'static [&'static str] = &["*"];

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.string(&t, "ca_file", &mut self.ca_file);
        walker.string(&t, "cert_file", &mut self.cert_file);
        walker.string(&t, "key_file", &mut self.key_file);
        walker.finish(t);
    }

    /// Outside dev mode each file must resolve and exist; every missing one is named.
    fn validate(&self, config: &Config, issues: &mut Issues) {
        if config.dev_mode {
            return;
        }
        for (key, value) in [
            ("tls.ca_file", &self.ca_file),
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
        ] {
            match resolve_path(value) {
                Ok(path) => check_file(issues, key, &path),
                Err(message) => issues.push(key, message),
            }
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[tls]
# PEM files: the CA that signs client certificates, and the server's certificate chain and key.
# The key file must not be readable by group or others.
ca_file = "{}"
cert_file = "{}"
key_file = "{}"
"#,
            self.ca_file, self.cert_file, self.key_file
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// TLS file paths after dev mode and `credential:` resolution.
    pub fn tls_paths(&self) -> Result<TlsPaths, ConfigError> {
        if self.dev_mode {
            let pki = self.pki_dir();
            return Ok(TlsPaths {
                ca: pki.join("ca.pem"),
                cert: pki.join("server.pem"),
                key: pki.join("server.key"),
            });
        }
        let mut issues = Vec::new();
        let mut resolve = |key: &str, value: &str| match resolve_path(value) {
            Ok(path) => path,
            Err(message) => {
                issues.push(ConfigIssue {
                    key: key.to_owned(),
                    message,
                });
                PathBuf::new()
            }
        };
        let paths = TlsPaths {
            ca: resolve("tls.ca_file", &self.tls.ca_file),
            cert: resolve("tls.cert_file", &self.tls.cert_file),
            key: resolve("tls.key_file", &self.tls.key_file),
        };
        ConfigError::unless("tls", issues, paths)
    }
}
