//! `[keys]`: where the master key comes from.

use std::path::PathBuf;

use crate::config::{
    CREDENTIAL_PREFIX, Config, ConfigError, ConfigIssue, Issues, Section, Table, Walker,
    resolve_path,
};

/// Key material (`[keys]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeysConfig {
    /// The 32-byte master key that encrypts key material at rest. `None`: `<state_dir>/master.key` in
    /// dev mode, the systemd credential `master.key` otherwise.
    pub master_key_file: Option<String>,
}

impl Section for KeysConfig {
    const KEY: &'static str = "keys";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        let mut file = String::new();
        walker.string(&t, "master_key_file", &mut file);
        if t.table.contains_key("master_key_file") {
            self.master_key_file = Some(file);
        }
        walker.finish(t);
    }

    fn validate(&self, config: &Config, issues: &mut Issues) {
        if let Err(err) = config.master_key_path() {
            issues.extend(err.issues);
        }
    }

    fn default_text(&self) -> String {
        r#"[keys]
# The 32-byte master key that encrypts key material at rest (AES-256-GCM). Default: the systemd
# credential "master.key"; in dev mode <state_dir>/master.key (created on first start).
# master_key_file = "credential:master.key"
"#
        .to_owned()
    }
}

impl Config {
    /// The dev-mode PKI directory.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    /// The master key file after dev-mode defaults and `credential:` resolution.
    pub fn master_key_path(&self) -> Result<PathBuf, ConfigError> {
        let value = match (&self.keys.master_key_file, self.dev_mode) {
            (Some(value), _) => value.clone(),
            (None, true) => return Ok(self.state_dir.join("master.key")),
            (None, false) => format!("{CREDENTIAL_PREFIX}master.key"),
        };
        resolve_path(&value).map_err(|message| ConfigError {
            origin: "keys".to_owned(),
            issues: vec![ConfigIssue {
                key: "keys.master_key_file".to_owned(),
                message,
            }],
        })
    }
}
