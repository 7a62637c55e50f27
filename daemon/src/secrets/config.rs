//! `[secrets]`: the secrets store's limits (docs/SECRETS.md).

use crate::config::{Section, Table, Walker};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretsConfig {
    /// Serve `brainstem.v1.Secrets`.
    pub enabled: bool,
    /// Largest value, in bytes.
    pub max_value_bytes: u64,
    /// Versions kept per secret unless its metadata says otherwise; older ones are pruned.
    pub max_versions: u32,
    /// Unwrapped data keys kept in memory so a repeated Get of a version skips unwrapping its
    /// key; 0 keeps none.
    pub data_key_cache: u64,
    /// Bytes of sealed values kept beside those keys, so a repeated Get reads nothing from the
    /// store; 0 keeps none.
    pub sealed_value_cache_bytes: u64,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            enabled: true,
            max_value_bytes: 512 * 1024,
            max_versions: 10,
            data_key_cache: 10_000,
            sealed_value_cache_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Section for SecretsConfig {
    const KEY: &'static str = "secrets";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.boolean(&t, "enabled", &mut self.enabled);
        walker.integer(
            &t,
            "max_value_bytes",
            1..=16 * 1024 * 1024,
            &mut self.max_value_bytes,
        );
        let mut versions = u64::from(self.max_versions);
        walker.integer(&t, "max_versions", 1..=1000, &mut versions);
        self.max_versions = u32::try_from(versions).unwrap_or(10);
        walker.integer(
            &t,
            "data_key_cache",
            0..=1_000_000,
            &mut self.data_key_cache,
        );
        walker.integer(
            &t,
            "sealed_value_cache_bytes",
            0..=1024 * 1024 * 1024,
            &mut self.sealed_value_cache_bytes,
        );
        walker.finish(t);
    }

    fn default_text(&self) -> String {
        format!(
            r#"[secrets]
# The secrets store (docs/SECRETS.md): values encrypted under per-version data keys wrapped by the
# master key ([keys]), versioned like Vault's KV v2, rotated by the daemon.
enabled = {}
# Largest value, in bytes (at most 16 MiB; gRPC's message limit in [server] applies too).
max_value_bytes = {}
# Versions kept per secret unless its metadata sets its own max_versions; older ones are pruned.
max_versions = {}
# Data keys a Get unwrapped, kept in memory (about 0.7 KiB each) so reading the version again skips
# the unwrap; a key is dropped with its version (pruned, destroyed or re-wrapped). 0 keeps none.
data_key_cache = {}
# Bytes of sealed values (ciphertext, as stored) kept beside those keys, so reading the version
# again reads nothing from the store; still authenticated by its data key on every read. A kept
# value leaves with its key. 0 keeps none.
sealed_value_cache_bytes = {}
"#,
            self.enabled,
            self.max_value_bytes,
            self.max_versions,
            self.data_key_cache,
            self.sealed_value_cache_bytes
        )
    }
}
