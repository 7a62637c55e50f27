//! Key material: the dev-mode PKI.

pub mod config;
pub mod pki;
