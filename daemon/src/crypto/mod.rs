//! Key material.
//!
//! - [`master`]: the master key (`[keys] master_key_file`) and what it seals: `seal`/`unseal` with
//!   associated data, for any subsystem that keeps secrets at rest (token signing keys today).
//! - [`files`], [`pki`]: private files and the dev PKI, from the `brainstem-keys` crate that
//!   `brainstemctl` shares (re-exported here so the daemon has one place to look).

pub mod master;

pub use brainstem_keys::{files, pki};
pub use master::{CryptoError, MasterKey};

#[cfg(test)]
mod tests {
    #[test]
    fn the_dev_pki_mints_the_admin_that_dev_mode_grants() {
        assert_eq!(
            brainstem_keys::pki::DEV_ADMIN_PRINCIPAL,
            crate::config::DEV_ADMIN_PRINCIPAL
        );
    }
}
