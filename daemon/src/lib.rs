//! brainstemd: the host daemon for machines that run AI agents.
//!
//! # Layout
//! Shared framework:
//! - [`config`]: the file, the key walker (every error at once), `credential:` paths, the default text.
//! - [`store`]: sled, the only module that touches it: versioned, checksummed records, migrations.
//! - [`crypto`]: key material: the dev-mode PKI.
//! - [`runtime`]: tracked tasks, sd_notify, logging, the metrics recorder and listener, typed events.
//! - [`supervisor`]: actors and workers under one loop: restarts, progress watchdog, systemd ping.
//! - [`access`]: identity, grants, rate limits, guardrails, the audit log; the Audit and Guardrails APIs.
//! - [`grpc`]: the control plane: accept loop, TLS, authorization layer, method table, status mapping.
//! - [`daemon`]: start, reload and the staged stop that `main` and the tests drive.
//!
//! Capabilities, one folder each (domain code, plus an `api` module that adapts it to gRPC):
//! - [`policy`]: Cedar policies (Policy service).
//! - [`tokens`]: capability tokens (Tokens service).
//! - [`actors`]: the supervised subsystem actors, e.g. [`actors::episodic`] (Episodic service).
//! - [`error`]: the domain errors services return.

pub mod access;
pub mod actors;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod error;
pub mod grpc;
pub mod policy;
pub mod runtime;
pub mod store;
pub mod supervisor;
pub mod tokens;

pub use daemon::{Daemon, ReloadOutcome, RunEnv, StartError};
