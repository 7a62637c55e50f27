//! brainstemd: the host daemon for machines that run AI agents.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated whole (every error at once), and its defaults.
//! - [`telemetry`]: tracing-subscriber setup (human/JSON) and live log-level changes.
//! - [`store`]: sled, the only module that touches it: versioned, checksummed records and schema migrations.
//! - [`pki`]: dev-mode CA and certificates; private-file helpers.
//! - [`tls`]: rustls server configuration (client certificates required) that reloads in place.
//! - [`identity`]: the principal of a verified client certificate (SAN URI, else CN).
//! - [`authz`]: grants (principal → capabilities), default deny.
//! - [`tokens`]: capability tokens (HMAC-SHA256, rotated keys sealed at rest, revocation, attenuation).
//! - [`grpc`]: the control plane: accept loop, authorization layer, method table, services, status mapping.
//! - [`metrics`]: the loopback metrics listener; [`events`]: every metric and its log line.
//! - [`notify`]: the systemd notify protocol; [`tasks`]: the tracked, named task set.
//! - [`supervisor`]: the actor supervisor: restart policy, progress watchdog, the systemd watchdog ping.
//! - [`episodic`]: the episodic buffer actor (short-term memory with exact embedding search).
//! - [`daemon`]: start, reload and the staged stop that `main` and the tests drive.

pub mod access;
pub mod audit;
pub mod authz;
pub mod config;
pub mod daemon;
pub mod episodic;
pub mod error;
pub mod events;
pub mod grpc;
pub mod guardrails;
pub mod identity;
pub mod metrics;
pub mod notify;
pub mod pki;
pub mod policy;
pub mod ratelimit;
pub mod store;
pub mod supervisor;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod tokens;

pub use daemon::{Daemon, ReloadOutcome, RunEnv, StartError};
