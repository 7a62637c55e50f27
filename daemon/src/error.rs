//! Errors that services return. They speak the domain; `grpc::status` turns them into `tonic::Status`
//! in one exhaustive match.

use std::time::Duration;

use crate::store::StoreError;

/// One invalid request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("no authenticated principal: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A limit was hit (rate, queue, quota). The caller may retry after `retry_after`.
    #[error("{what} exhausted; retry after {retry_after:?}")]
    ResourceExhausted { what: String, retry_after: Duration },
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is valid but the system is not in a state to run it.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The subsystem is temporarily unable to serve (stopped, failed, restarting).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call ran out of time (the caller's `grpc-timeout` or the server's default).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// Something broke inside the daemon. The caller sees only an error id; the cause is logged.
    #[error("{what}: {source}")]
    Internal {
        /// The subsystem, for `brainstem_errors_total{subsystem,kind="internal"}`.
        subsystem: &'static str,
        /// What was being done ("audit query", "policy validation").
        what: &'static str,
        source: BoxError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The cause of an [`ServiceError::Internal`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ServiceError {
    /// An internal failure of `subsystem` while doing `what`, e.g. a `spawn_blocking` task that
    /// panicked or was cancelled (`JoinError`).
    pub fn internal(
        subsystem: &'static str,
        what: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        ServiceError::Internal {
            subsystem,
            what,
            source: source.into(),
        }
    }
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}
