//! `[policy]`: where the Cedar policies live and how they are reloaded.

use crate::config::{Section, Table, Walker};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyConfig {
    /// Directory of `*.cedar` files plus `schema.cedarschema`; empty: the built-in defaults (the
    /// shipped `config/policies/`).
    pub dir: String,
    /// How often the directory is checked for changes; 0 turns the watch off (SIGHUP still reloads).
    pub watch_interval_seconds: u64,
    /// Hex Ed25519 public key file that verifies `*.cedar.sig` signatures; empty: no signed policies.
    pub signing_public_key_file: String,
    /// Most decisions in one BatchCheck.
    pub max_batch: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: String::new(),
            watch_interval_seconds: 2,
            signing_public_key_file: String::new(),
            max_batch: 1000,
        }
    }
}

impl Section for PolicyConfig {
    const KEY: &'static str = "policy";
    /// The policy set is re-read and swapped as a whole on reload; the watch interval is fixed at start.
    const RELOADABLE: &'static [&'static str] = &["dir", "signing_public_key_file", "max_batch"];

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.string(&t, "dir", &mut self.dir);
        walker.integer(
            &t,
            "watch_interval_seconds",
            0..=3600,
            &mut self.watch_interval_seconds,
        );
        walker.string(
            &t,
            "signing_public_key_file",
            &mut self.signing_public_key_file,
        );
        walker.integer(&t, "max_batch", 1..=10_000, &mut self.max_batch);
        walker.finish(t);
    }

    fn default_text(&self) -> String {
        format!(
            r#"[policy]
# Cedar policies (*.cedar) and their schema (schema.cedarschema). Empty: the built-in defaults,
# which are the files shipped in config/policies/. Policies are validated against the schema
# before they are used; an invalid set is refused and the previous set keeps deciding.
dir = "{}"
# The directory is checked for changes this often (0: only SIGHUP reloads).
watch_interval_seconds = {}
# Hex Ed25519 public key. A policy file NAME.cedar with a valid NAME.cedar.sig is "signed"; only
# signed policies can allow file writes (fs.write). Empty: signed policies are not accepted.
signing_public_key_file = "{}"
# Most decisions one BatchCheck may ask for.
max_batch = {}
"#,
            self.dir, self.watch_interval_seconds, self.signing_public_key_file, self.max_batch
        )
    }
}
