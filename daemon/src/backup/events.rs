//! Backup events. No labels: one daemon, one stream of backups (scheduled and requested alike).

use std::time::Duration;

pub const LAST_SUCCESS: &str = "brainstem_backup_last_success_timestamp_seconds";
pub const FAILURES: &str = "brainstem_backup_failures_total";
pub const DURATION: &str = "brainstem_backup_duration_seconds";
pub const SIZE: &str = "brainstem_backup_size_bytes";
pub const WRITER_PAUSE: &str = "brainstem_backup_writer_pause_seconds";

/// Registers the backup metrics' descriptions.
pub fn describe() {
    metrics::describe_gauge!(
        LAST_SUCCESS,
        metrics::Unit::Seconds,
        "unix time of the last successful backup (scheduled or requested); 0 until one succeeds. Alert when it is stale"
    );
    metrics::describe_counter!(
        FAILURES,
        "backups that failed (scheduled or requested, before the file was complete)"
    );
    metrics::describe_gauge!(
        DURATION,
        metrics::Unit::Seconds,
        "how long the last successful backup took (snapshot, reading the audit log, sealing; for a scheduled one also writing the file)"
    );
    metrics::describe_gauge!(
        SIZE,
        metrics::Unit::Bytes,
        "size of the last successful backup file"
    );
    metrics::describe_gauge!(
        WRITER_PAUSE,
        metrics::Unit::Seconds,
        "how long the last backup held store writers out while it copied every tree"
    );
}

/// Emits every backup metric once, so they are in /metrics from the first scrape.
pub fn emit_initial() {
    metrics::gauge!(LAST_SUCCESS).set(0.0);
    metrics::counter!(FAILURES).increment(0);
    metrics::gauge!(DURATION).set(0.0);
    metrics::gauge!(SIZE).set(0.0);
    metrics::gauge!(WRITER_PAUSE).set(0.0);
}

/// A snapshot held writers out for `pause`.
pub struct WriterPaused {
    pub pause: Duration,
}

impl WriterPaused {
    pub fn emit(&self) {
        metrics::gauge!(WRITER_PAUSE).set(self.pause.as_secs_f64());
    }
}

/// A backup ended.
pub struct BackupFinished {
    pub ok: bool,
    pub duration: Duration,
    pub size_bytes: u64,
    pub at_unix_ms: u64,
}

impl BackupFinished {
    pub fn emit(&self) {
        if self.ok {
            metrics::gauge!(LAST_SUCCESS).set(self.at_unix_ms as f64 / 1000.0);
            metrics::gauge!(DURATION).set(self.duration.as_secs_f64());
            metrics::gauge!(SIZE).set(self.size_bytes as f64);
        } else {
            metrics::counter!(FAILURES).increment(1);
        }
    }
}
