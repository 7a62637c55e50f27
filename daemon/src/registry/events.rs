//! Registry events: changes by kind, files hashed and their bytes, artifact checks by result, drift
//! checks by outcome, how many models and versions are registered. No label carries a model name
//! (unbounded); the drift worker's rules are counted by outcome only and named in the audit log.

/// Registers the registry metrics' descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_registry_changes_total",
        "registry changes, by kind (register, alias, parent, deployment, quality_metric, update)"
    );
    metrics::describe_counter!(
        "brainstem_registry_hashed_bytes_total",
        "bytes of artifact files hashed (registration and verification)"
    );
    metrics::describe_counter!(
        "brainstem_registry_artifact_checks_total",
        "files checked by VerifyArtifacts, by result (ok, mismatch, missing)"
    );
    metrics::describe_counter!(
        "brainstem_registry_drift_checks_total",
        "drift rule checks by the registry-drift worker, by outcome (drifted, steady, no_data, failed)"
    );
    metrics::describe_gauge!(
        "brainstem_registry_drifting_rules",
        "drift rules whose last check found drift"
    );
    metrics::describe_gauge!("brainstem_registry_models", "models in the registry");
    metrics::describe_gauge!(
        "brainstem_registry_versions",
        "model versions in the registry"
    );
}

/// Handles for the registry's metrics.
#[derive(Clone)]
pub struct RegistryMetrics {
    hashed: metrics::Counter,
    models: metrics::Gauge,
    versions: metrics::Gauge,
    drifting: metrics::Gauge,
}

impl RegistryMetrics {
    pub fn new() -> Self {
        RegistryMetrics {
            hashed: metrics::counter!("brainstem_registry_hashed_bytes_total"),
            models: metrics::gauge!("brainstem_registry_models"),
            versions: metrics::gauge!("brainstem_registry_versions"),
            drifting: metrics::gauge!("brainstem_registry_drifting_rules"),
        }
    }

    pub fn changed(&self, kind: &'static str) {
        metrics::counter!("brainstem_registry_changes_total", "kind" => kind).increment(1);
    }

    pub fn hashed(&self, bytes: u64) {
        self.hashed.increment(bytes);
    }

    pub fn artifact_checked(&self, result: &'static str) {
        metrics::counter!("brainstem_registry_artifact_checks_total", "result" => result)
            .increment(1);
    }

    pub fn drift_checked(&self, outcome: &'static str) {
        metrics::counter!("brainstem_registry_drift_checks_total", "outcome" => outcome)
            .increment(1);
    }

    pub fn drifting(&self, rules: usize) {
        self.drifting.set(rules as f64);
    }

    pub fn sizes(&self, models: usize, versions: usize) {
        self.models.set(models as f64);
        self.versions.set(versions as f64);
    }
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self::new()
    }
}
