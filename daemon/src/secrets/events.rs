//! Secrets events: reads by result, changes by kind, rotations by trigger and outcome, how many
//! secrets are stored. No label carries a path (unbounded) or anything of a value.

/// Registers the secrets metrics' descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_secrets_reads_total",
        "secret reads, by result (ok, not_found, data_loss)"
    );
    metrics::describe_counter!(
        "brainstem_secrets_changes_total",
        "secret changes, by kind (put, rotate, delete, undelete, destroy, metadata, rewrap)"
    );
    metrics::describe_counter!(
        "brainstem_secrets_rotations_total",
        "rotations, by trigger (schedule, manual) and outcome (ok, failed)"
    );
    metrics::describe_gauge!("brainstem_secrets_stored", "secrets in the store");
    metrics::describe_gauge!(
        "brainstem_secrets_rotation_due",
        "secrets whose scheduled rotation is due and not yet done"
    );
    metrics::describe_gauge!(
        "brainstem_secrets_data_keys_kept",
        "unwrapped data keys kept in memory for repeated reads ([secrets] data_key_cache)"
    );
    metrics::describe_gauge!(
        "brainstem_secrets_sealed_value_bytes_kept",
        "bytes of sealed values kept beside those keys ([secrets] sealed_value_cache_bytes)"
    );
}

/// The outcome of a read, for `brainstem_secrets_reads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadResult {
    Ok,
    NotFound,
    DataLoss,
}

/// Handles registered once: reads are the hot path.
#[derive(Clone)]
pub struct SecretsMetrics {
    reads: [metrics::Counter; 3],
    stored: metrics::Gauge,
    due: metrics::Gauge,
    keys_kept: metrics::Gauge,
    value_bytes_kept: metrics::Gauge,
}

impl SecretsMetrics {
    pub fn new() -> Self {
        SecretsMetrics {
            reads: ["ok", "not_found", "data_loss"].map(
                |result| metrics::counter!("brainstem_secrets_reads_total", "result" => result),
            ),
            stored: metrics::gauge!("brainstem_secrets_stored"),
            due: metrics::gauge!("brainstem_secrets_rotation_due"),
            keys_kept: metrics::gauge!("brainstem_secrets_data_keys_kept"),
            value_bytes_kept: metrics::gauge!("brainstem_secrets_sealed_value_bytes_kept"),
        }
    }

    pub fn read(&self, result: ReadResult) {
        self.reads[result as usize].increment(1);
    }

    pub fn changed(&self, kind: &'static str) {
        metrics::counter!("brainstem_secrets_changes_total", "kind" => kind).increment(1);
    }

    pub fn rotated(&self, trigger: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        metrics::counter!("brainstem_secrets_rotations_total", "trigger" => trigger, "outcome" => outcome)
            .increment(1);
    }

    pub fn stored(&self, secrets: usize) {
        self.stored.set(secrets as f64);
    }

    pub fn due(&self, due: usize) {
        self.due.set(due as f64);
    }

    /// What Gets keep: data keys, and bytes of sealed values.
    pub fn kept(&self, keys: usize, value_bytes: usize) {
        self.keys_kept.set(keys as f64);
        self.value_bytes_kept.set(value_bytes as f64);
    }
}

impl Default for SecretsMetrics {
    fn default() -> Self {
        Self::new()
    }
}
