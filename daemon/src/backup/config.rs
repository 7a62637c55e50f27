//! `[backup]`: scheduled backups (docs/BACKUP.md). Online backups on request
//! (`brainstemctl backup --out FILE`) need no configuration.

use crate::config::{Config, Issues, Section, Table, Walker};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupConfig {
    /// Seconds between scheduled backups; 0 turns the `backup-schedule` worker off.
    pub interval_seconds: u64,
    /// Where scheduled backups are written (created 0700 if missing).
    pub directory: String,
    /// Scheduled backups kept; older ones are removed after each success.
    pub keep: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            interval_seconds: 0,
            directory: String::new(),
            keep: 7,
        }
    }
}

impl Section for BackupConfig {
    const KEY: &'static str = "backup";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.integer(
            &t,
            "interval_seconds",
            0..=7 * 24 * 3600,
            &mut self.interval_seconds,
        );
        walker.string(&t, "directory", &mut self.directory);
        walker.integer(&t, "keep", 1..=10_000, &mut self.keep);
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        if self.interval_seconds > 0 && self.directory.is_empty() {
            issues.push(
                "backup.directory",
                "scheduled backups (interval_seconds > 0) need a directory",
            );
        }
        if self.interval_seconds > 0 && self.interval_seconds < 60 {
            issues.push(
                "backup.interval_seconds",
                "at least 60 (or 0 to turn scheduled backups off)",
            );
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[backup]
# Scheduled backups by the backup-schedule worker (docs/BACKUP.md): every interval_seconds (0: off,
# else at least 60) a point-in-time backup encrypted under the master key is written to directory as
# brainstem-<unix ms>.bsbackup, and all but the newest `keep` are removed. Prefer a directory on
# another disk than the state directory.
interval_seconds = {}
directory = "{}"
keep = {}
"#,
            self.interval_seconds, self.directory, self.keep
        )
    }
}
