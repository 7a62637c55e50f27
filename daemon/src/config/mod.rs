//! Configuration: one TOML file, every error reported at once, each section owned by its subsystem.
//!
//! The framework lives here: the key walker ([`walker`]), file loading and command-line overrides,
//! `credential:` paths, the section registry (`sections!` below: one line per section), the whole-file
//! default text assembled from the sections' fragments (a test keeps `config/brainstemd.toml` equal to
//! it) and the reload rule. A subsystem owns its section: the type, its defaults, `parse`, `validate`,
//! its fragment of the default file and which of its keys a reload may apply ([`Section`]).
//!
//! **Reload rule:** a setting is restart-only unless its owner lists it in [`Section::RELOADABLE`]. A
//! reload (SIGHUP) compares the running and the new configuration key by key; a new file that changes a
//! restart-only key is refused and the running configuration keeps serving.
//!
//! **Every problem at once:** parsing (types, ranges, unknown keys) and validation (cross-field checks,
//! missing files) both run, and their problems are reported together, each with its key path.

pub mod walker;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use walker::{Table, Walker, strings, toml_list};

/// Exit code for an invalid configuration or command line (sysexits `EX_USAGE`). systemd's unit sets
/// `RestartPreventExitStatus=64` so a broken file is not restarted in a loop.
pub const EXIT_CONFIG: i32 = 64;

/// Principal of the admin certificate that dev mode mints (in `brainstem-keys`, which `brainstemctl`
/// shares); dev mode grants it the `admin` role.
pub use brainstem_keys::pki::DEV_ADMIN_PRINCIPAL;

/// Prefix of a path that names a systemd credential (`LoadCredential=`): `credential:server.key` is
/// `$CREDENTIALS_DIRECTORY/server.key`.
pub const CREDENTIAL_PREFIX: &str = "credential:";

pub const MIB: u64 = 1024 * 1024;

const DEFAULT_STATE_DIR: &str = "/var/lib/brainstem";

/// One section of the file, owned by the subsystem it configures.
pub trait Section: Default + Clone + PartialEq + fmt::Debug + serde::Serialize {
    /// The top-level key: `server` for `[server]`, `grants` for `[[grants]]`. The field of [`Config`]
    /// that holds the section has this name.
    const KEY: &'static str;
    /// Keys under [`Section::KEY`] that a reload applies (`"level"`, or `"*"` for all of them).
    /// Everything else is restart-only.
    const RELOADABLE: &'static [&'static str] = &[];

    /// Reads the section from the file's top-level table (it is absent when the file omits it).
    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>);

    /// Checks that need other fields, other sections or the file system. Runs even when parsing found
    /// problems, so that every problem is reported at once.
    fn validate(&self, _config: &Config, _issues: &mut Issues) {}

    /// The section's part of the documented default file: its header, comments and default values.
    fn default_text(&self) -> String;
}

/// Problems found by validation.
#[derive(Debug, Default)]
pub struct Issues(Vec<ConfigIssue>);

impl Issues {
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn extend(&mut self, issues: impl IntoIterator<Item = ConfigIssue>) {
        self.0.extend(issues);
    }
}

/// The registry: every section of the file, in the order of the default file. Adding a section is one
/// line here (field name = the section's [`Section::KEY`]; a test checks it).
macro_rules! sections {
    ($($field:ident: $ty:ty,)*) => {
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        pub struct Config {
            /// Dev mode: own CA and certificates under `<state_dir>/pki`, created on first start.
            pub dev_mode: bool,
            pub state_dir: PathBuf,
            $(pub $field: $ty,)*
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    dev_mode: false,
                    state_dir: PathBuf::from(DEFAULT_STATE_DIR),
                    $($field: <$ty>::default(),)*
                }
            }
        }

        fn parse_sections(walker: &mut Walker, root: &Table<'_>, config: &mut Config) {
            $(config.$field.parse(walker, root);)*
        }

        fn validate_sections(config: &Config, issues: &mut Issues) {
            $(config.$field.validate(config, issues);)*
        }

        fn sections_default_text(defaults: &Config) -> String {
            let mut text = String::new();
            $(
                text.push('\n');
                text.push_str(&defaults.$field.default_text());
            )*
            text
        }

        /// Full key patterns a reload may change (`log.level`, `tls.*`).
        fn reloadable_patterns() -> Vec<String> {
            let mut patterns = Vec::new();
            $(
                for key in <$ty as Section>::RELOADABLE {
                    patterns.push(format!("{}.{key}", <$ty as Section>::KEY));
                }
            )*
            patterns
        }

        #[cfg(test)]
        fn section_keys() -> Vec<(&'static str, &'static str)> {
            vec![$((stringify!($field), <$ty as Section>::KEY),)*]
        }
    };
}

sections! {
    server: crate::grpc::config::ServerConfig,
    metrics: crate::runtime::config::MetricsConfig,
    tls: crate::grpc::config::TlsConfig,
    store: crate::store::config::StoreConfig,
    log: crate::runtime::config::LogConfig,
    traces: crate::runtime::config::TracesConfig,
    tokens: crate::tokens::config::TokensConfig,
    keys: crate::crypto::config::KeysConfig,
    supervisor: crate::supervisor::config::SupervisorConfig,
    episodic: crate::actors::episodic::config::EpisodicConfig,
    vision: crate::actors::vision::config::VisionConfig,
    voice: crate::actors::voice::config::VoiceConfig,
    roles: crate::access::config::Roles,
    grants: crate::access::config::GrantList,
    policy: crate::policy::config::PolicyConfig,
    flags: crate::flags::config::FlagsConfig,
    secrets: crate::secrets::config::SecretsConfig,
    backup: crate::backup::config::BackupConfig,
    learning: crate::actors::learning::config::LearningConfig,
    registry: crate::registry::config::RegistryConfig,
    audit: crate::access::config::AuditConfig,
    rate_limits: crate::access::config::RateLimits,
    guardrails: crate::access::config::GuardrailsConfig,
}

/// Command-line settings that win over the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub dev_mode: bool,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: Option<crate::runtime::config::LogFormat>,
    pub log_level: Option<String>,
}

/// Where a configuration comes from, so a reload can read it again the same way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// One problem in a configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub origin: String,
    pub issues: Vec<ConfigIssue>,
}

impl ConfigError {
    /// `value` when nothing was found, else every problem found.
    pub(crate) fn unless<T>(
        origin: &str,
        issues: Vec<ConfigIssue>,
        value: T,
    ) -> Result<T, ConfigError> {
        if issues.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                origin: origin.to_owned(),
                issues,
            })
        }
    }

    pub fn single(origin: &str, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_owned(),
            issues: vec![ConfigIssue {
                key: key.to_owned(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration ({}): {} problem(s)",
            self.origin,
            self.issues.len()
        )?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

impl ConfigSource {
    /// Reads the file (if any), applies the overrides and validates the result; every problem of the
    /// file (parse and validation alike) comes back at once.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let (origin, text) = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    ConfigError::single(
                        &path.display().to_string(),
                        "",
                        format!("cannot read: {err}"),
                    )
                })?;
                (path.display().to_string(), text)
            }
            None => ("built-in defaults".to_owned(), String::new()),
        };
        load_text(&origin, &text, &self.overrides)
    }
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if self.dev_mode {
            config.dev_mode = true;
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        if let Some(addr) = self.listen {
            config.server.listen = addr;
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics.listen = addr;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
    }
}

/// Parses, applies `overrides`, validates: the configuration, or every problem found.
pub fn load_text(origin: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (mut config, mut issues) = parse_lenient(origin, text)?;
    overrides.apply(&mut config);
    // A key that did not parse keeps its default; checks on it would only repeat the problem.
    let failed: Vec<String> = issues.iter().map(|i| i.key.clone()).collect();
    issues.extend(
        config
            .check()
            .into_iter()
            .filter(|issue| !failed.iter().any(|key| key == &issue.key)),
    );
    ConfigError::unless(origin, issues, config)
}

/// Parses a configuration file's text (types, ranges, unknown keys; no cross-field validation).
/// Missing keys take their defaults.
pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
    let (config, issues) = parse_lenient(origin, text)?;
    ConfigError::unless(origin, issues, config)
}

/// Parses what it can: bad values keep their defaults and are reported. Only text that is not TOML at
/// all is an error here.
fn parse_lenient(origin: &str, text: &str) -> Result<(Config, Vec<ConfigIssue>), ConfigError> {
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        ConfigError::single(origin, "", format!("not valid TOML: {}", err.message()))
    })?;
    let mut walker = Walker::default();
    let mut config = Config::default();
    let root = Table::new("", &table);
    walker.path(&root, "state_dir", &mut config.state_dir);
    walker.boolean(&root, "dev_mode", &mut config.dev_mode);
    parse_sections(&mut walker, &root, &mut config);
    if let Some(actors) = root.take("actors") {
        // The per-actor tables moved into each actor's own section.
        let names = match actors {
            toml::Value::Table(t) => t.keys().cloned().collect::<Vec<_>>().join(", "),
            _ => String::new(),
        };
        walker.issue(
            "actors",
            format!(
                "unknown key; an actor's supervision settings (restart, critical, mailbox_*, stop_deadline_ms) now live in its own section, e.g. [episodic] (found: {names})"
            ),
        );
    }
    walker.finish(root);
    Ok((config, walker.issues))
}

impl Config {
    /// Cross-field checks that parsing alone cannot do, section by section.
    pub fn check(&self) -> Vec<ConfigIssue> {
        let mut issues = Issues::default();
        if self.dev_mode && self.state_dir.as_os_str().is_empty() {
            issues.push("state_dir", "dev mode needs a state directory");
        }
        validate_sections(self, &mut issues);
        issues.0
    }

    /// [`Config::check`] as a `Result`.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        ConfigError::unless(origin, self.check(), ())
    }

    /// Keys whose change a reload cannot apply: every key whose value differs, unless its section
    /// declares it reloadable. Empty when `new` only differs in reloadable settings.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<String> {
        let (Ok(old), Ok(new)) = (serde_json::to_value(self), serde_json::to_value(new)) else {
            // Serializing plain data does not fail; if it ever did, nothing may be reloaded.
            return vec!["(configuration)".to_owned()];
        };
        let mut changed = Vec::new();
        diff_keys("", &old, &new, &mut changed);
        let reloadable = reloadable_patterns();
        changed.retain(|key| !reloadable.iter().any(|p| key_matches(p, key)));
        changed
    }
}

/// Collects the key paths whose values differ. Tables are compared key by key; anything else (arrays
/// of tables included) as a whole.
fn diff_keys(
    prefix: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_keys(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

/// `section.*` covers the section and everything in it; `section.key` covers that key and below.
fn key_matches(pattern: &str, key: &str) -> bool {
    let base = pattern.strip_suffix(".*").unwrap_or(pattern);
    key == base
        || key
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Resolves `credential:NAME` against `$CREDENTIALS_DIRECTORY`; other values are plain paths.
pub fn resolve_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    match value.strip_prefix(CREDENTIAL_PREFIX) {
        None => Ok(PathBuf::from(value)),
        Some(name) if name.is_empty() || name.contains('/') => {
            Err(format!("{value:?}: a credential name is one file name"))
        }
        Some(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Ok(Path::new(&dir).join(name)),
            None => Err(format!(
                "{value:?} needs $CREDENTIALS_DIRECTORY (systemd's LoadCredential=); outside systemd give a file path"
            )),
        },
    }
}

/// A path setting that names a file which must exist: the problem, if any, for `key`.
pub fn check_file(issues: &mut Issues, key: &str, path: &Path) {
    if let Err(err) = std::fs::metadata(path) {
        issues.push(key, format!("{}: {err}", path.display()));
    }
}

/// The default configuration as a commented TOML file; `config/brainstemd.toml` is this text (a test
/// keeps them equal) and `brainstemd print-default-config` prints it. Each section writes its part.
pub fn default_config_toml() -> String {
    let d = Config::default();
    let mut reloadable = String::from("# Reloaded on SIGHUP:");
    let mut line = reloadable.len();
    for (i, pattern) in reloadable_patterns().iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        if line + sep.len() + pattern.len() > 98 {
            reloadable.push_str(",\n#");
            line = 1;
            reloadable.push(' ');
        } else {
            reloadable.push_str(sep);
        }
        reloadable.push_str(pattern);
        line += sep.len() + pattern.len();
    }
    let mut text = format!(
        r#"# brainstemd configuration. Every key is optional; the values shown are the defaults.
{reloadable}.
# Everything else needs a restart, and a reload that changes it is refused (the running
# configuration keeps serving).
# Paths may name a systemd credential as "credential:NAME" ($CREDENTIALS_DIRECTORY/NAME).

# Where the sled database (and, in dev mode, the dev PKI) lives.
state_dir = "{state_dir}"

# Dev mode creates its own CA, server and admin certificates under <state_dir>/pki on first start
# and ignores [tls]. Never use it in production.
dev_mode = false
"#,
        state_dir = d.state_dir.display(),
    );
    text.push_str(&sections_default_text(&d));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::config::Grant;
    use crate::grpc::config::TlsConfig;
    use crate::runtime::config::LogFormat;
    use crate::store::config::FlushPolicy;
    use crate::supervisor::config::{OverflowPolicy, Strategy};

    fn keys(err: &ConfigError) -> Vec<&str> {
        err.issues.iter().map(|i| i.key.as_str()).collect()
    }

    fn dev(text: &str) -> Result<Config, ConfigError> {
        let overrides = Overrides {
            dev_mode: true,
            state_dir: Some("/tmp/brainstem-config-test".into()),
            ..Overrides::default()
        };
        load_text("t", text, &overrides)
    }

    #[test]
    fn every_section_field_is_named_after_its_key() {
        for (field, key) in section_keys() {
            assert_eq!(field, key, "Config.{field} holds the section [{key}]");
        }
    }

    #[test]
    fn printed_default_parses_to_the_default() {
        let parsed = parse("default", &default_config_toml()).expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn shipped_config_file_equals_printed_default() {
        let shipped = include_str!("../../../config/brainstemd.toml");
        assert_eq!(
            shipped,
            default_config_toml(),
            "config/brainstemd.toml drifted: regenerate it with `brainstemd print-default-config`"
        );
    }

    /// docs/OPERATIONS.md's configuration reference is the printed default, between its markers.
    #[test]
    fn the_operations_guide_holds_the_current_configuration_reference() {
        let doc = include_str!("../../../docs/OPERATIONS.md");
        let reference = operations_reference();
        assert!(
            doc.contains(&reference),
            "docs/OPERATIONS.md's configuration reference drifted; replace the text between its markers (inclusive) with:\n{reference}"
        );
    }

    /// The configuration reference block of docs/OPERATIONS.md.
    fn operations_reference() -> String {
        format!(
            "<!-- config-reference:begin (generated from the config types: `brainstemd print-default-config`) -->\n```toml\n{}```\n<!-- config-reference:end -->",
            default_config_toml()
        )
    }

    /// Each section reports a key it does not know, with its path, and that does not hide the others.
    #[test]
    fn an_unknown_key_in_every_section_is_reported_with_its_path() {
        let mut text = String::new();
        let mut expected = Vec::new();
        for (_, key) in section_keys() {
            match key {
                "grants" => {
                    text.push_str("[[grants]]\nprincipal = \"p\"\nbogus = 1\n");
                    expected.push("grants[0].bogus".to_owned());
                }
                "rate_limits" => {
                    text.push_str("[[rate_limits]]\nmethods = [\"/brainstem.v1.Admin/Ping\"]\nper_minute = 1\nbogus = 1\n");
                    expected.push("rate_limits[0].bogus".to_owned());
                }
                // Every key of [roles] is a role name; a value that is no list is what it can get wrong.
                "roles" => {
                    text.push_str("[roles]\nbogus = 1\n");
                    expected.push("roles.bogus".to_owned());
                }
                _ => {
                    text.push_str(&format!("[{key}]\nbogus = 1\n"));
                    expected.push(format!("{key}.bogus"));
                }
            }
        }
        let err = dev(&text).expect_err("unknown keys");
        let found = keys(&err);
        for key in &expected {
            assert!(
                found.contains(&key.as_str()),
                "{key} not reported: {found:?}"
            );
        }
    }

    #[test]
    fn an_unknown_key_does_not_hide_a_validation_problem() {
        let err = dev("[server]\nbogus = true\n[metrics]\nlisten = \"0.0.0.0:9091\"\n")
            .expect_err("two problems");
        assert_eq!(keys(&err), ["server.bogus", "metrics.listen"]);
    }

    #[test]
    fn every_missing_tls_file_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, [0u8; 32]).unwrap();
        let text = format!(
            "log.level = \"info\"\n[tls]\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n[keys]\nmaster_key_file = \"{k}\"\n[store]\nflush = \"never\"\n",
            d = dir.path().display(),
            k = key.display()
        )
        .replace("log.level = \"info\"\n", "");
        let err = load_text("t", &text, &Overrides::default()).expect_err("missing files");
        assert_eq!(
            keys(&err),
            [
                "store.flush",
                "tls.ca_file",
                "tls.cert_file",
                "tls.key_file"
            ]
        );
        assert!(err.issues[1].message.contains("ca.pem"), "{err}");
    }

    #[test]
    fn the_old_actors_table_points_to_the_actor_section() {
        let err = dev("[actors.episodic]\nmailbox_capacity = 4\n").expect_err("moved");
        assert_eq!(keys(&err), ["actors"]);
        assert!(err.issues[0].message.contains("[episodic]"), "{err}");
    }

    #[test]
    fn learning_publishes_only_under_a_valid_name_to_an_enabled_registry() {
        let err = dev("[learning]\npublish_as = \"Bad Name\"\n").expect_err("bad name");
        assert_eq!(keys(&err), ["learning.publish_as"]);
        let err =
            dev("[learning]\npublish_as = \"learning/online\"\n[registry]\nenabled = false\n")
                .expect_err("no registry");
        assert_eq!(keys(&err), ["learning.publish_as"]);
        assert!(err.issues[0].message.contains("registry"), "{err}");
        dev("[learning]\npublish_as = \"learning/online\"\n").expect("valid");
    }

    #[test]
    fn access_sections_are_validated() {
        let text = r#"
            [policy]
            max_batch = 0
            [audit]
            fail_closed_actions = ["Secrets"]
            [[rate_limits]]
            methods = ["/brainstem.v1.Nope/Call", "/brainstem.v1.Policy/*"]
            per_minute = 5
            [[rate_limits]]
            per_minute = 5
            [guardrails]
            allowed_domains = ["docs.rs", "*.Example.org", "http://x"]
        "#;
        let err = dev(text).expect_err("should be refused");
        let found = keys(&err);
        assert!(found.contains(&"policy.max_batch"), "{found:?}");
        assert!(found.contains(&"rate_limits[1].methods"), "{found:?}");

        let text = r#"
            [audit]
            fail_closed_actions = ["Secrets"]
            [[rate_limits]]
            methods = ["/brainstem.v1.Nope/Call", "/brainstem.v1.Policy/*"]
            per_minute = 5
            [guardrails]
            allowed_domains = ["docs.rs", "*.Example.org", "http://x"]
        "#;
        let config = parse("t", text).unwrap();
        assert_eq!(
            config.rate_limits[0].burst, 5,
            "burst defaults to per_minute"
        );
        assert_eq!(
            config.guardrails.allowed_domains.len(),
            3,
            "replaces the default list"
        );
        let err = dev(text).expect_err("invalid");
        let messages: Vec<String> = err.issues.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(
            messages[0].starts_with("audit.fail_closed_actions"),
            "{messages:?}"
        );
        assert!(messages[1].contains("Nope"), "{messages:?}");
        assert!(messages[2].contains("Example.org"), "{messages:?}");
        assert!(messages[3].contains("http://x"), "{messages:?}");
    }

    #[test]
    fn traces_are_off_by_default_and_a_bad_endpoint_is_a_config_error() {
        let config = dev("").expect("defaults");
        assert!(!config.traces.enabled());
        let config =
            dev("[traces]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsample_ratio = 0.25\n")
                .expect("a collector address");
        assert!(config.traces.enabled());
        assert_eq!(config.traces.sample_ratio, 0.25);
        for (bad, needle) in [
            ("127.0.0.1:4317", "must look like"),
            ("https://collector:4317", "https is not supported"),
            ("http://collector", "a host and a port"),
            ("http://collector:4317/v1/traces", "no path"),
            ("http://", "not a URL"),
        ] {
            let err = dev(&format!("[traces]\notlp_endpoint = \"{bad}\"\n")).expect_err(bad);
            assert_eq!(keys(&err), ["traces.otlp_endpoint"], "{bad}");
            assert!(err.issues[0].message.contains(needle), "{bad}: {err}");
        }
        let err = dev("[traces]\nsample_ratio = 1.5\nexport_timeout_ms = 5\n").expect_err("ranges");
        assert_eq!(
            keys(&err),
            ["traces.sample_ratio", "traces.export_timeout_ms"]
        );
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let text = r#"
            state_dir = 7
            bogus = true
            [server]
            listen = "not an address"
            max_message_bytes = 1
            max_concurrent_streams = "many"
            [log]
            format = "xml"
            [metrics]
            listen = "0.0.0.0:9091"
        "#;
        let err = dev(text).expect_err("bad file");
        assert_eq!(
            keys(&err),
            [
                "state_dir",
                "server.listen",
                "server.max_message_bytes",
                "server.max_concurrent_streams",
                "log.format",
                "bogus",
                "metrics.listen",
            ]
        );
    }

    #[test]
    fn unknown_keys_in_sections_and_grants_are_named() {
        let text = r#"
            [store]
            flush = "sometimes"
            flsh_interval_ms = 3
            [[grants]]
            roles = ["admin"]
            capabilities = ["Secrets.Read", 5]
            extra = 1
        "#;
        let err = parse("t", text).expect_err("bad file");
        let rendered: Vec<String> = err.issues.iter().map(ToString::to_string).collect();
        assert!(
            rendered
                .iter()
                .any(|s| s.starts_with("store.flush: \"sometimes\" is not one of always, interval")),
            "{rendered:?}"
        );
        for expected in [
            "store.flsh_interval_ms: unknown key",
            "grants[0].principal: is required",
            "grants[0].capabilities[1]: expected a string, found integer",
            "grants[0].extra: unknown key",
        ] {
            assert!(
                rendered.contains(&expected.to_owned()),
                "{expected}: {rendered:?}"
            );
        }
    }

    #[test]
    fn validation_checks_grants_and_capabilities() {
        let text = r#"
            [roles]
            ops = ["admin.*", "BAD cap"]
            [[grants]]
            principal = "spiffe://x/a"
            roles = ["nope"]
            [[grants]]
            principal = "spiffe://x/a"
            [[grants]]
            principal = "spiffe://x/web"
            capabilities = ["secrets.read:/agents/web/*"]
        "#;
        let err = dev(text).expect_err("invalid");
        let rendered: Vec<String> = err.issues.iter().map(ToString::to_string).collect();
        assert_eq!(rendered.len(), 3, "{rendered:?}");
        assert!(rendered[0].starts_with("roles.ops: \"BAD cap\""));
        assert_eq!(rendered[1], "grants[0].roles: unknown role \"nope\"");
        assert!(rendered[2].starts_with("grants[1].principal:"));
    }

    #[test]
    fn production_mode_needs_credentials_or_paths() {
        // The test only reads the variable; no test in this binary sets it.
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
            return;
        }
        let mut config = Config::default();
        let err = config.validate("t").expect_err("no credentials directory");
        assert_eq!(
            keys(&err),
            [
                "tls.ca_file",
                "tls.cert_file",
                "tls.key_file",
                "keys.master_key_file"
            ]
        );
        config.keys.master_key_file = Some("/etc/brainstem/master.key".into());
        config.tls = TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: "/nonexistent/server.pem".into(),
            key_file: "credential:a/b".into(),
        };
        let err = config
            .validate("t")
            .expect_err("missing files, bad credential name");
        assert_eq!(keys(&err), ["tls.ca_file", "tls.cert_file", "tls.key_file"]);
        assert!(err.issues[2].message.contains("one file name"), "{err}");
    }

    #[test]
    fn overrides_win_and_dev_grant_is_added() {
        let source = ConfigSource {
            file: None,
            overrides: Overrides {
                dev_mode: true,
                state_dir: Some("/tmp/x".into()),
                listen: Some("127.0.0.1:0".parse().unwrap()),
                metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
                log_format: Some(LogFormat::Json),
                log_level: None,
            },
        };
        let config = source.load().expect("valid");
        assert_eq!(config.server.listen.port(), 0);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.tls_paths().unwrap().key,
            PathBuf::from("/tmp/x/pki/server.key")
        );
        let grants = config.effective_grants();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].principal, DEV_ADMIN_PRINCIPAL);
    }

    #[test]
    fn only_keys_their_owner_declares_reloadable_reload() {
        let old = Config::default();
        let mut new = old.clone();
        new.log.level = "debug".into();
        new.tls.ca_file = "/etc/other-ca.pem".into();
        new.roles.insert("ops".into(), vec!["admin.*".into()]);
        new.grants.push(Grant {
            principal: "p".into(),
            roles: vec![],
            capabilities: vec!["admin.status".into()],
        });
        new.policy.dir = "/etc/brainstem/policies".into();
        new.rate_limits.clear();
        new.guardrails.clicks_per_minute = 3;
        assert!(
            old.restart_only_changes(&new).is_empty(),
            "{:?}",
            old.restart_only_changes(&new)
        );

        new.server.max_connections = 3;
        new.store.flush = FlushPolicy::Interval;
        new.log.format = LogFormat::Json;
        new.policy.watch_interval_seconds = 9;
        new.episodic.capacity = 5;
        new.episodic.actor.mailbox_capacity = 7;
        new.keys.master_key_file = Some("/k".into());
        assert_eq!(
            old.restart_only_changes(&new),
            [
                "episodic.capacity",
                "episodic.mailbox_capacity",
                "keys.master_key_file",
                "log.format",
                "policy.watch_interval_seconds",
                "server.max_connections",
                "store.flush",
            ]
        );
    }

    #[test]
    fn token_settings_and_master_key() {
        let err = dev("[tokens]\nmax_ttl_seconds = 600\nretire_after_seconds = 60\n")
            .expect_err("retire before max ttl");
        assert_eq!(keys(&err), ["tokens.retire_after_seconds"]);
        let config = dev("").unwrap();
        assert_eq!(
            config.master_key_path().unwrap(),
            PathBuf::from("/tmp/brainstem-config-test/master.key")
        );
        let config = parse("t", "[keys]\nmaster_key_file = \"/k\"\n").expect("parses");
        assert_eq!(config.master_key_path().unwrap(), PathBuf::from("/k"));
        let err = parse("t", "[tokens]\nmax_ttl_seconds = 0\nrotate_every = 1\n").expect_err("bad");
        assert_eq!(
            keys(&err),
            ["tokens.max_ttl_seconds", "tokens.rotate_every"]
        );
    }

    #[test]
    fn supervision_settings_live_in_the_actor_section() {
        let text = r#"
            [supervisor]
            strategy = "rest_for_one"
            hung_after_seconds = 2
            backoff_initial_ms = 500
            backoff_max_ms = 100
            [episodic]
            mailbox_overflow = "reject"
            mailbox_capacity = 0
            embedding_dimension = 8
            capacity = "lots"
        "#;
        let err = dev(text).expect_err("bad file");
        assert_eq!(
            keys(&err),
            [
                "episodic.capacity",
                "episodic.mailbox_capacity",
                "supervisor.backoff_initial_ms"
            ]
        );
        let config = dev(
            "[supervisor]\nstrategy = \"rest_for_one\"\n[episodic]\nmailbox_overflow = \"drop_oldest\"\nembedding_dimension = 8\n",
        )
        .expect("valid");
        assert_eq!(config.supervisor.strategy, Strategy::RestForOne);
        assert_eq!(
            config.episodic.actor.mailbox_overflow,
            OverflowPolicy::DropOldest
        );
        assert_eq!(config.episodic.embedding_dimension, 8);
    }
}
