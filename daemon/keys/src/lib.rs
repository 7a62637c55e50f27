//! Key material that both `brainstemd` and `brainstemctl` handle, without the daemon itself: the CLI
//! links this crate, not `brainstemd`, so it stays free of sled and Cedar.
//!
//! - [`backup`]: the backup file format (write, verify without the key, open with it).
//! - [`files`]: private files (0600, written atomically; group/world-readable keys refused).
//! - [`pki`]: the dev-mode CA and certificates (rcgen, ECDSA P-256).
//! - [`signing`]: Ed25519 keys that sign policy files, and the hex they are written in.
//! - [`card`]: the model registry's signed model cards: canonical JSON, signing and verification.

pub mod backup;
pub mod card;
pub mod files;
pub mod pki;
pub mod signing;
