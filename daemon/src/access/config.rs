//! The access sections: `[roles]`, `[[grants]]`, `[audit]`, `[[rate_limits]]` and `[guardrails]`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Deref, DerefMut};

use crate::access::authz::{validate_capability_pattern, validate_family_pattern};
use crate::config::{
    Config, DEV_ADMIN_PRINCIPAL, Issues, Section, Table, Walker, strings, toml_list,
};

/// Role name → capability patterns (`[roles]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Roles(pub BTreeMap<String, Vec<String>>);

/// The `[[grants]]`: who holds what.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct GrantList(pub Vec<Grant>);

/// The `[[rate_limits]]` rules.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct RateLimits(pub Vec<RateLimit>);

macro_rules! deref {
    ($outer:ty => $inner:ty) => {
        impl Deref for $outer {
            type Target = $inner;
            fn deref(&self) -> &$inner {
                &self.0
            }
        }
        impl DerefMut for $outer {
            fn deref_mut(&mut self) -> &mut $inner {
                &mut self.0
            }
        }
    };
}
deref!(Roles => BTreeMap<String, Vec<String>>);
deref!(GrantList => Vec<Grant>);
deref!(RateLimits => Vec<RateLimit>);

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Grant {
    /// SAN URI or CN, exactly as WhoAmI reports it.
    pub principal: String,
    pub roles: Vec<String>,
    pub capabilities: Vec<String>,
}

/// The decision audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditConfig {
    /// Oldest records are trimmed beyond this many.
    pub max_records: u64,
    /// Records older than this are trimmed.
    pub max_age_seconds: u64,
    /// Oldest records are trimmed beyond this many bytes of segment files.
    pub max_bytes: u64,
    /// Decisions waiting to be written; when full, see `fail_closed_actions`.
    pub queue_capacity: u64,
    /// Action patterns that are denied when their decision cannot be audited.
    pub fail_closed_actions: Vec<String>,
}

/// A token bucket per principal for the methods a rule names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RateLimit {
    /// Full method paths (`/brainstem.v1.Policy/Explain`) or a service wildcard
    /// (`/brainstem.v1.Policy/*`).
    pub methods: Vec<String>,
    /// Refill rate.
    pub per_minute: u64,
    /// Bucket size: calls that may come at once; defaults to `per_minute`.
    pub burst: u64,
}

/// Web automation guardrails.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuardrailsConfig {
    /// Domains navigation may reach; `*.example.org` also covers its subdomains.
    pub allowed_domains: Vec<String>,
    /// Clicks per domain and principal per minute (token bucket).
    pub clicks_per_minute: u64,
    /// Form field names or values containing one of these words make a submission dangerous.
    pub dangerous_fields: Vec<String>,
    /// Field names accepted as the form's CSRF token; a submission needs one with a value.
    pub csrf_fields: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_records: 1_000_000,
            max_age_seconds: 30 * 24 * 3600,
            max_bytes: 1 << 30,
            queue_capacity: 65_536,
            fail_closed_actions: strings(&["secrets.*"]),
        }
    }
}

impl Default for GuardrailsConfig {
    fn default() -> Self {
        GuardrailsConfig {
            allowed_domains: Vec::new(),
            clicks_per_minute: 10,
            dangerous_fields: strings(&[
                "post",
                "buy",
                "delete",
                "purchase",
                "checkout",
                "pay",
                "order",
                "transfer",
                "tweet",
                "send",
                "unsubscribe",
                "remove",
            ]),
            csrf_fields: strings(&[
                "csrf",
                "csrf_token",
                "_csrf",
                "csrfmiddlewaretoken",
                "authenticity_token",
                "xsrf_token",
                "__requestverificationtoken",
            ]),
        }
    }
}

impl Default for Roles {
    fn default() -> Self {
        Roles(BTreeMap::from([("admin".to_owned(), vec!["*".to_owned()])]))
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits(vec![RateLimit {
            methods: strings(&[
                "/brainstem.v1.Policy/Explain",
                "/brainstem.v1.Policy/Validate",
            ]),
            per_minute: 60,
            burst: 60,
        }])
    }
}

impl Section for Roles {
    const KEY: &'static str = "roles";
    const RELOADABLE: &'static [&'static str] = &["*"];

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        self.0.clear();
        for name in t.table.keys() {
            let mut caps = Vec::new();
            walker.string_list(&t, name, &mut caps);
            self.0.insert(name.clone(), caps);
        }
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        for (role, caps) in &self.0 {
            for cap in caps {
                if let Err(message) = validate_capability_pattern(cap) {
                    issues.push(format!("roles.{role}"), format!("{cap:?}: {message}"));
                }
            }
        }
    }

    fn default_text(&self) -> String {
        let mut text = "# Role name -> capability patterns (\"*\", \"vision.*\", \"secrets.read\",\n# \"secrets.read:/agents/web/*\"; docs/AUTHORIZATION.md).\n[roles]\n".to_owned();
        for (role, caps) in &self.0 {
            text.push_str(&format!("{role} = {}\n", toml_list(caps)));
        }
        text
    }
}

impl Section for GrantList {
    const KEY: &'static str = "grants";
    const RELOADABLE: &'static [&'static str] = &["*"];

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(items) = walker.array_of_tables(root, Self::KEY) else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let key = format!("grants[{i}]");
            let t = Table::new(&key, item);
            let mut grant = Grant {
                principal: String::new(),
                roles: Vec::new(),
                capabilities: Vec::new(),
            };
            if !t.table.contains_key("principal") {
                walker.issue(&t.key("principal"), "is required");
            }
            walker.string(&t, "principal", &mut grant.principal);
            walker.string_list(&t, "roles", &mut grant.roles);
            walker.string_list(&t, "capabilities", &mut grant.capabilities);
            walker.finish(t);
            self.0.push(grant);
        }
    }

    fn validate(&self, config: &Config, issues: &mut Issues) {
        let mut principals = BTreeSet::new();
        for (i, grant) in self.0.iter().enumerate() {
            let key = format!("grants[{i}]");
            if grant.principal.is_empty() {
                issues.push(format!("{key}.principal"), "must not be empty");
            } else if !principals.insert(grant.principal.as_str()) {
                issues.push(
                    format!("{key}.principal"),
                    format!("{:?} is granted twice; merge the entries", grant.principal),
                );
            }
            for role in &grant.roles {
                if !config.roles.contains_key(role) {
                    issues.push(format!("{key}.roles"), format!("unknown role {role:?}"));
                }
            }
            for cap in &grant.capabilities {
                if let Err(message) = validate_capability_pattern(cap) {
                    issues.push(format!("{key}.capabilities"), format!("{cap:?}: {message}"));
                }
            }
        }
    }

    fn default_text(&self) -> String {
        r#"# Default deny: a principal holds nothing until a grant names it, by SAN URI or CN.
# [[grants]]
# principal = "spiffe://example.org/agent/web"
# roles = ["admin"]
# capabilities = ["admin.status", "secrets.read:/agents/web/*"]
"#
        .to_owned()
    }
}

impl Section for AuditConfig {
    const KEY: &'static str = "audit";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.integer(
            &t,
            "max_records",
            1000..=1_000_000_000,
            &mut self.max_records,
        );
        walker.integer(
            &t,
            "max_age_seconds",
            60..=10 * 365 * 86_400,
            &mut self.max_age_seconds,
        );
        walker.integer(&t, "max_bytes", 65_536..=1 << 40, &mut self.max_bytes);
        walker.integer(
            &t,
            "queue_capacity",
            16..=1_048_576,
            &mut self.queue_capacity,
        );
        walker.replace_list(&t, "fail_closed_actions", &mut self.fail_closed_actions);
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        for pattern in &self.fail_closed_actions {
            if let Err(message) = validate_family_pattern(pattern) {
                issues.push(
                    "audit.fail_closed_actions",
                    format!("{pattern:?}: {message}"),
                );
            }
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[audit]
# Every policy decision, guardrail decision, refused call and token change is appended to the
# hash-chained audit log in <state_dir>/audit (docs/AUDIT.md); whole segments, oldest first, are
# removed beyond any of these limits (each segment holds 1/16 of a limit).
max_records = {}
max_age_seconds = {}
max_bytes = {}
# Decisions are written in the background, in batches. When the queue is full or the disk fails,
# decisions on these actions are denied (fail closed); others are answered and counted as
# unrecorded (brainstem_audit_unrecorded_total).
queue_capacity = {}
fail_closed_actions = {}
"#,
            self.max_records,
            self.max_age_seconds,
            self.max_bytes,
            self.queue_capacity,
            toml_list(&self.fail_closed_actions)
        )
    }
}

impl Section for RateLimits {
    const KEY: &'static str = "rate_limits";
    const RELOADABLE: &'static [&'static str] = &["*"];

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(items) = walker.array_of_tables(root, Self::KEY) else {
            return;
        };
        self.0.clear();
        for (i, item) in items.iter().enumerate() {
            let key = format!("rate_limits[{i}]");
            let t = Table::new(&key, item);
            let mut limit = RateLimit {
                methods: Vec::new(),
                per_minute: 60,
                burst: 0,
            };
            for required in ["methods", "per_minute"] {
                if !t.table.contains_key(required) {
                    walker.issue(&t.key(required), "is required");
                }
            }
            walker.string_list(&t, "methods", &mut limit.methods);
            walker.integer(&t, "per_minute", 1..=6_000_000, &mut limit.per_minute);
            walker.integer(&t, "burst", 1..=6_000_000, &mut limit.burst);
            if limit.burst == 0 {
                limit.burst = limit.per_minute;
            }
            walker.finish(t);
            self.0.push(limit);
        }
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        for (i, limit) in self.0.iter().enumerate() {
            if limit.methods.is_empty() {
                issues.push(format!("rate_limits[{i}].methods"), "names no method");
            }
            for method in &limit.methods {
                if crate::grpc::methods::matching(method).next().is_none() {
                    issues.push(
                        format!("rate_limits[{i}].methods"),
                        format!(
                            "{method:?} names no method of the API (expected \"/package.Service/Method\" or \"/package.Service/*\")"
                        ),
                    );
                }
            }
        }
    }

    fn default_text(&self) -> String {
        let mut text = r#"# Token buckets per principal and method; a call over the limit answers RESOURCE_EXHAUSTED with
# RetryInfo. Methods are full paths or "/brainstem.v1.Service/*". burst defaults to per_minute.
# Giving any [[rate_limits]] replaces this default list.
"#
        .to_owned();
        for limit in &self.0 {
            text.push_str(&format!(
                "[[rate_limits]]\nmethods = {}\nper_minute = {}\nburst = {}\n",
                toml_list(&limit.methods),
                limit.per_minute,
                limit.burst
            ));
        }
        text
    }
}

impl Section for GuardrailsConfig {
    const KEY: &'static str = "guardrails";
    const RELOADABLE: &'static [&'static str] = &["*"];

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.replace_list(&t, "allowed_domains", &mut self.allowed_domains);
        walker.integer(
            &t,
            "clicks_per_minute",
            1..=60_000,
            &mut self.clicks_per_minute,
        );
        walker.replace_list(&t, "dangerous_fields", &mut self.dangerous_fields);
        walker.replace_list(&t, "csrf_fields", &mut self.csrf_fields);
        walker.finish(t);
    }

    fn validate(&self, _config: &Config, issues: &mut Issues) {
        for domain in &self.allowed_domains {
            if let Err(message) = validate_domain_pattern(domain) {
                issues.push(
                    "guardrails.allowed_domains",
                    format!("{domain:?}: {message}"),
                );
            }
        }
        for (key, words) in [
            ("guardrails.dangerous_fields", &self.dangerous_fields),
            ("guardrails.csrf_fields", &self.csrf_fields),
        ] {
            if words.iter().any(|w| w.is_empty() || w.len() > 64) {
                issues.push(key, "entries are 1 to 64 characters");
            }
        }
    }

    fn default_text(&self) -> String {
        format!(
            r#"[guardrails]
# Web automation: navigation only to these domains ("*.example.org" covers subdomains).
allowed_domains = {}
# Clicks per domain and principal per minute.
clicks_per_minute = {}
# A form submission whose field names or values contain one of these words is refused.
dangerous_fields = {}
# A form submission must carry one of these fields with a value.
csrf_fields = {}
"#,
            toml_list(&self.allowed_domains),
            self.clicks_per_minute,
            toml_list(&self.dangerous_fields),
            toml_list(&self.csrf_fields)
        )
    }
}

impl Config {
    /// Grants in force: the configured ones, plus the dev admin's in dev mode.
    pub fn effective_grants(&self) -> Vec<Grant> {
        let mut grants = self.grants.0.clone();
        if self.dev_mode && !grants.iter().any(|g| g.principal == DEV_ADMIN_PRINCIPAL) {
            grants.push(Grant {
                principal: DEV_ADMIN_PRINCIPAL.to_owned(),
                roles: vec!["admin".to_owned()],
                capabilities: Vec::new(),
            });
        }
        grants
    }
}

/// A navigation safelist entry: a lowercase host name, optionally `*.` for it and its subdomains.
pub fn validate_domain_pattern(pattern: &str) -> Result<(), String> {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err("expected a lowercase host name such as \"docs.rs\" or \"*.example.org\"".to_owned())
    }
}
