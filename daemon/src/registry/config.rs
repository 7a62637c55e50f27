//! `[registry]`: the model registry (docs/REGISTRY.md): where artifacts may live, how files are
//! hashed, and the drift rules the `registry-drift` worker watches.

use std::path::{Path, PathBuf};

use crate::config::{Config, Issues, Section, Table, Walker};

/// One watched drift rule: `DetectDrift` run by the `registry-drift` worker.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DriftRule {
    /// A name for the rule (audit records and logs name it).
    pub name: String,
    pub model: String,
    pub version: String,
    pub metric: String,
    pub threshold_percent: f64,
    pub window_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegistryConfig {
    /// Serve `brainstem.v1.Registry`.
    pub enabled: bool,
    /// Directories weight and dataset files must lie in. Empty: `<state_dir>/artifacts`.
    pub artifact_roots: Vec<PathBuf>,
    /// Read buffer of the streaming hash, in bytes.
    pub hash_buffer_bytes: u64,
    /// How often the drift worker checks its rules.
    pub drift_check_interval_seconds: u64,
    /// The rules the drift worker checks.
    pub drift_rules: Vec<DriftRule>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            enabled: true,
            artifact_roots: Vec::new(),
            hash_buffer_bytes: 1024 * 1024,
            drift_check_interval_seconds: 300,
            drift_rules: Vec::new(),
        }
    }
}

impl RegistryConfig {
    /// The artifact roots in force: the configured ones, or `<state_dir>/artifacts`.
    pub fn roots(&self, state_dir: &Path) -> Vec<PathBuf> {
        if self.artifact_roots.is_empty() {
            vec![state_dir.join("artifacts")]
        } else {
            self.artifact_roots.clone()
        }
    }
}

impl Section for RegistryConfig {
    const KEY: &'static str = "registry";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.boolean(&t, "enabled", &mut self.enabled);
        let mut roots = Vec::new();
        walker.string_list(&t, "artifact_roots", &mut roots);
        if t.table.contains_key("artifact_roots") {
            self.artifact_roots = roots.into_iter().map(PathBuf::from).collect();
        }
        walker.integer(
            &t,
            "hash_buffer_bytes",
            4096..=64 * 1024 * 1024,
            &mut self.hash_buffer_bytes,
        );
        walker.integer(
            &t,
            "drift_check_interval_seconds",
            1..=86_400,
            &mut self.drift_check_interval_seconds,
        );
        if let Some(items) = walker.array_of_tables(&t, "drift_rules") {
            self.drift_rules.clear();
            for (i, item) in items.iter().enumerate() {
                let key = format!("registry.drift_rules[{i}]");
                let r = Table::new(&key, item);
                let mut rule = DriftRule {
                    name: format!("rule-{i}"),
                    model: String::new(),
                    version: String::new(),
                    metric: String::new(),
                    threshold_percent: 5.0,
                    window_seconds: 7 * 86_400,
                };
                for required in ["model", "version", "metric"] {
                    if !r.table.contains_key(required) {
                        walker.issue(&r.key(required), "is required");
                    }
                }
                walker.string(&r, "name", &mut rule.name);
                walker.string(&r, "model", &mut rule.model);
                walker.string(&r, "version", &mut rule.version);
                walker.string(&r, "metric", &mut rule.metric);
                match r.take("threshold_percent") {
                    None => {}
                    Some(toml::Value::Float(f)) if f.is_finite() && *f > 0.0 => {
                        rule.threshold_percent = *f;
                    }
                    Some(toml::Value::Integer(n)) if *n > 0 => {
                        rule.threshold_percent = *n as f64;
                    }
                    Some(_) => walker.issue(
                        &r.key("threshold_percent"),
                        "expected a positive, finite number",
                    ),
                }
                walker.integer(
                    &r,
                    "window_seconds",
                    1..=366 * 86_400,
                    &mut rule.window_seconds,
                );
                walker.finish(r);
                self.drift_rules.push(rule);
            }
        }
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        for (i, root) in self.artifact_roots.iter().enumerate() {
            if !root.is_absolute() {
                issues.push(
                    format!("registry.artifact_roots[{i}]"),
                    "an artifact root must be an absolute path",
                );
            }
        }
        for (i, rule) in self.drift_rules.iter().enumerate() {
            if let Err(violation) = super::validate_name(&rule.model, "model") {
                issues.push(
                    format!("registry.drift_rules[{i}].model"),
                    violation.description,
                );
            }
            if super::Semver::parse(&rule.version).is_none() {
                issues.push(
                    format!("registry.drift_rules[{i}].version"),
                    "expected a semantic version MAJOR.MINOR.PATCH[-PRERELEASE]",
                );
            }
            if let Err(violation) = super::validate_key(&rule.metric, "metric") {
                issues.push(
                    format!("registry.drift_rules[{i}].metric"),
                    violation.description,
                );
            }
        }
    }

    fn default_text(&self) -> String {
        let roots: Vec<String> = self
            .artifact_roots
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            r#"[registry]
# The model registry (docs/REGISTRY.md): versions, hashes, lineage, aliases with history,
# deployments, quality metrics and drift, signed model cards.
enabled = {}
# Directories weight and dataset files must lie in (absolute; symlinks leading out are refused).
# Empty: <state_dir>/artifacts, created at start.
artifact_roots = {}
# Read buffer of the streaming SHA-256, in bytes (4 KiB to 64 MiB).
hash_buffer_bytes = {}
# How often the registry-drift worker checks the rules below.
drift_check_interval_seconds = {}
# Watched drift rules; a rule that fires is counted and audited (kind "registry"):
# [[registry.drift_rules]]
# name = "vision-accuracy"
# model = "vision/detector"
# version = "1.2.0"
# metric = "accuracy"
# threshold_percent = 5.0
# window_seconds = 604800
"#,
            self.enabled,
            crate::config::walker::toml_list(&roots),
            self.hash_buffer_bytes,
            self.drift_check_interval_seconds,
        )
    }
}
