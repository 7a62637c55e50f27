//! Key material: the dev-mode PKI.

pub mod pki;
