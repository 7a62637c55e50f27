//! The process runtime every capability shares: tracked tasks, the systemd notify protocol, logging
//! (with secrets redacted from every line), the metrics recorder and listener, and the typed events
//! that every metric and log line comes from.

pub mod clock;
pub mod config;
pub mod events;
pub mod metrics;
pub mod notify;
pub mod redact;
pub mod tasks;
pub mod telemetry;
pub mod traces;
