//! Grants: which principal holds which capabilities. Default deny: a principal that no grant names
//! holds nothing.
//!
//! A capability is a dotted name (`admin.status`, `secrets.read`). A grant holds patterns: the exact
//! name, a family (`vision.*` holds `vision.capture` and `vision.stream.open` but not `vision`), or `*`.
//! Roles are named sets of patterns. The table is swapped whole on reload.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;

/// What one principal holds, roles expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub roles: Vec<String>,
    /// Sorted, deduplicated patterns.
    pub capabilities: Vec<String>,
}

impl Holdings {
    pub fn allows(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|pattern| pattern_matches(pattern, capability))
    }

    /// Does some held pattern cover the whole of `requested` (itself a pattern)? See [`pattern_covers`].
    pub fn covers(&self, requested: &str) -> bool {
        self.capabilities
            .iter()
            .any(|held| pattern_covers(held, requested))
    }
}

/// Does `pattern` cover `capability`?
pub fn pattern_matches(pattern: &str, capability: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(family) => capability
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        None => pattern == capability,
    }
}

/// Does holding `holder` give everything `requested` can name? Both are patterns: `vision.*` covers
/// `vision.capture`, `vision.stream.*` and `vision.*`, but not `vision` or `*`; only `*` covers `*`.
/// This is the rule for delegation: a token may carry `requested` only if its issuer holds a covering
/// pattern.
pub fn pattern_covers(holder: &str, requested: &str) -> bool {
    if holder == "*" || holder == requested {
        return true;
    }
    if requested == "*" {
        return false;
    }
    let body = requested.strip_suffix(".*").unwrap_or(requested);
    holder.ends_with(".*") && pattern_matches(holder, body)
}

/// The grant table of one configuration.
#[derive(Debug, Default)]
pub struct Grants {
    by_principal: HashMap<String, Holdings>,
}

impl Grants {
    /// Builds the table from a validated configuration (dev grant included).
    pub fn from_config(config: &Config) -> Self {
        let mut by_principal = HashMap::new();
        for grant in config.effective_grants() {
            let mut caps: BTreeSet<String> = grant.capabilities.iter().cloned().collect();
            for role in &grant.roles {
                if let Some(role_caps) = config.roles.get(role) {
                    caps.extend(role_caps.iter().cloned());
                }
            }
            by_principal.insert(
                grant.principal.clone(),
                Holdings {
                    roles: grant.roles.clone(),
                    capabilities: caps.into_iter().collect(),
                },
            );
        }
        Grants { by_principal }
    }

    pub fn holdings(&self, principal: &str) -> Option<&Holdings> {
        self.by_principal.get(principal)
    }

    pub fn allows(&self, principal: &str, capability: &str) -> bool {
        self.holdings(principal)
            .is_some_and(|h| h.allows(capability))
    }

    pub fn principal_count(&self) -> usize {
        self.by_principal.len()
    }
}

/// The live grant table, replaced whole on reload.
#[derive(Debug)]
pub struct Authorizer {
    grants: ArcSwap<Grants>,
}

impl Authorizer {
    pub fn new(grants: Grants) -> Self {
        Authorizer {
            grants: ArcSwap::from_pointee(grants),
        }
    }

    pub fn grants(&self) -> Arc<Grants> {
        self.grants.load_full()
    }

    pub fn allows(&self, principal: &str, capability: &str) -> bool {
        self.grants.load().allows(principal, capability)
    }

    pub fn replace(&self, grants: Grants) {
        self.grants.store(Arc::new(grants));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::config::Grant;
    use crate::config::parse;

    #[test]
    fn wildcards() {
        assert!(pattern_matches("*", "anything.at.all"));
        assert!(pattern_matches("vision.*", "vision.capture"));
        assert!(pattern_matches("vision.*", "vision.stream.open"));
        assert!(!pattern_matches("vision.*", "vision"));
        assert!(!pattern_matches("vision.*", "visionary.capture"));
        assert!(!pattern_matches("vision.*", "vision."));
        assert!(pattern_matches("admin.status", "admin.status"));
        assert!(!pattern_matches("admin.status", "admin.status.extra"));
    }

    #[test]
    fn covering_patterns() {
        assert!(pattern_covers("vision.*", "vision.capture"));
        assert!(pattern_covers("vision.*", "vision.*"));
        assert!(pattern_covers("vision.*", "vision.stream.*"));
        assert!(pattern_covers("vision.*", "vision.stream.open"));
        assert!(!pattern_covers("vision.*", "*"));
        assert!(!pattern_covers("vision.*", "vision"));
        assert!(!pattern_covers("vision.*", "visionary.*"));
        assert!(!pattern_covers("vision.*", "web.read"));
        assert!(pattern_covers("*", "*"));
        assert!(pattern_covers("*", "vision.*"));
        assert!(pattern_covers("admin.status", "admin.status"));
        assert!(!pattern_covers("admin.status", "admin.*"));
        assert!(!pattern_covers("admin.status", "admin.status.*"));
        assert!(!pattern_covers("vision.stream.*", "vision.*"));
        let holdings = Holdings {
            roles: vec![],
            capabilities: vec!["secrets.read".into(), "vision.*".into()],
        };
        assert!(holdings.covers("vision.capture"));
        assert!(holdings.covers("secrets.read"));
        assert!(!holdings.covers("secrets.*"));
        assert!(!holdings.covers("*"));
    }

    #[test]
    fn default_deny_and_role_expansion() {
        let mut config = parse(
            "t",
            r#"
            [roles]
            viewer = ["admin.status", "vision.*"]
            [[grants]]
            principal = "spiffe://h/agent/web"
            roles = ["viewer"]
            capabilities = ["secrets.read"]
            "#,
        )
        .unwrap();
        config.grants.push(Grant {
            principal: "nobody-special".into(),
            roles: vec![],
            capabilities: vec![],
        });
        let grants = Grants::from_config(&config);
        let web = "spiffe://h/agent/web";
        assert!(grants.allows(web, "admin.status"));
        assert!(grants.allows(web, "vision.capture"));
        assert!(grants.allows(web, "secrets.read"));
        assert!(!grants.allows(web, "secrets.write"));
        assert!(!grants.allows("nobody-special", "admin.status"));
        assert!(!grants.allows("unknown", "admin.status"));
        assert_eq!(
            grants.holdings(web).unwrap().capabilities,
            ["admin.status", "secrets.read", "vision.*"]
        );
    }

    #[test]
    fn authorizer_swaps_whole_tables() {
        let mut config = Config {
            dev_mode: true,
            ..Config::default()
        };
        let auth = Authorizer::new(Grants::from_config(&config));
        assert!(auth.allows(crate::config::DEV_ADMIN_PRINCIPAL, "anything"));
        config.dev_mode = false;
        auth.replace(Grants::from_config(&config));
        assert!(!auth.allows(crate::config::DEV_ADMIN_PRINCIPAL, "anything"));
    }
}
