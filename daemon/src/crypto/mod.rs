//! Key material.
//!
//! - [`master`]: the master key (`[keys] master_key_file`) and what it seals: `seal`/`unseal` with
//!   associated data, for any subsystem that keeps secrets at rest (token signing keys today).
//! - [`files`], [`pki`]: private files and the dev PKI, from the `brainstem-keys` crate that
//!   `brainstemctl` shares (re-exported here so the daemon has one place to look).

pub mod config;
pub mod keyset;
pub mod master;

pub use brainstem_keys::{files, pki};
pub use master::{CryptoError, MasterKey};
