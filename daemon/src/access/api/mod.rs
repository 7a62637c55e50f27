//! The gRPC adapters of access: the Audit and Guardrails services.

pub mod audit;
pub mod guardrails;
