//! `[tokens]`: capability token lifetimes and signing-key rotation.

use crate::config::{Config, Issues, Section, Table, Walker};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokensConfig {
    /// Longest lifetime Issue accepts.
    pub max_ttl_seconds: u64,
    /// A new signing key after this long (checked every minute); 0 = only on request (RotateKey).
    pub rotate_after_seconds: u64,
    /// How long a replaced key keeps verifying; at least `max_ttl_seconds`, so no token dies early.
    pub retire_after_seconds: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            max_ttl_seconds: 24 * 3600,
            rotate_after_seconds: 7 * 24 * 3600,
            retire_after_seconds: 8 * 24 * 3600,
        }
    }
}

impl Section for TokensConfig {
    const KEY: &'static str = "tokens";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.integer(
            &t,
            "max_ttl_seconds",
            1..=366 * 24 * 3600,
            &mut self.max_ttl_seconds,
        );
        walker.integer(
            &t,
            "rotate_after_seconds",
            0..=366 * 24 * 3600,
            &mut self.rotate_after_seconds,
        );
        walker.integer(
            &t,
            "retire_after_seconds",
            1..=2 * 366 * 24 * 3600,
            &mut self.retire_after_seconds,
        );
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        if self.retire_after_seconds < self.max_ttl_seconds {
            issues.push(
                "tokens.retire_after_seconds",
                format!(
                    "{} is less than tokens.max_ttl_seconds ({}); tokens would stop verifying before they expire",
                    self.retire_after_seconds, self.max_ttl_seconds
                ),
            );
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[tokens]
# Capability tokens (docs/TOKENS.md). Issue refuses a longer ttl_seconds.
max_ttl_seconds = {}
# A new HMAC signing key after this long (0: only on `brainstemctl tokens rotate-key`).
rotate_after_seconds = {}
# A replaced key keeps verifying this long, then is retired. At least max_ttl_seconds.
retire_after_seconds = {}
"#,
            self.max_ttl_seconds, self.rotate_after_seconds, self.retire_after_seconds
        )
    }
}
