//! brainstemd: the host daemon for machines that run AI agents.
//!
//! # Layout
//! Shared framework:
//! - [`config`]: the section registry, the key walker (every error at once), loading, `credential:`
//!   paths, the reload rule, the default text assembled from the sections' fragments.
//! - [`store`]: sled, the only module that touches it: versioned, checksummed records, migrations.
//! - [`crypto`]: key material: the master key, the dev-mode PKI.
//! - [`runtime`]: tracked tasks, sd_notify, logging, the metrics recorder and listener, typed events.
//! - [`supervisor`]: actors and workers under one loop: restarts, progress watchdog, systemd ping.
//! - [`access`]: identity, grants, rate limits, guardrails, the audit log; the Audit and Guardrails APIs.
//! - [`grpc`]: the control plane: the service registry, accept loop, TLS, authorization layer, method
//!   table, status mapping.
//! - [`daemon`]: start, reload and the staged stop that `main` and the tests drive.
//! - [`error`]: the domain errors services return.
//!
//! Capabilities, one folder each: domain code, `config.rs` (its section), `events.rs` (its metrics),
//! `api.rs` (its gRPC adapter and registration). See ARCHITECTURE.md, "Adding a capability".
//! - [`policy`]: Cedar policies (Policy service).
//! - [`tokens`]: capability tokens (Tokens service).
//! - [`flags`]: feature flags in flagd's format (Flags service, flagd evaluation protocol).
//! - [`actors`]: the supervised subsystem actors, e.g. [`actors::episodic`] (Episodic service).

pub mod access;
pub mod actors;
pub mod backup;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod error;
pub mod flags;
pub mod grpc;
pub mod policy;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod store;
pub mod supervisor;
pub mod tokens;

#[cfg(test)]
mod testing;

pub use daemon::{Daemon, ReloadOutcome, RunEnv, StartError};
