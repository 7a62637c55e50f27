//! Grants: which principal holds which capabilities. Default deny: a principal that no grant names
//! holds nothing.
//!
//! A capability is a dotted name (`admin.status`, `secrets.read`). A grant holds patterns: the exact
//! name, a family (`vision.*` holds `vision.capture` and `vision.stream.open` but not `vision`), or `*`.
//! Roles are named sets of patterns. The table is swapped whole on reload.
//!
//! A pattern may be **scoped** to resources: `FAMILY:RESOURCE`, e.g. `secrets.read:/agents/web/*`.
//! The resource part is an absolute path of non-empty segments, either exact (`/agents/web/key`) or
//! ending in `/*` for everything strictly below (`/agents/web/*` holds `/agents/web/x` and
//! `/agents/web/x/y`, but not `/agents/web` itself, just as `vision.*` does not hold `vision`).
//! `/*` alone is every path. `.`/`..` segments, empty segments and `*` anywhere else are refused.
//! A scoped pattern never holds the bare capability: it satisfies the layer's family check for a
//! method whose resource the handler then checks ([`crate::access::require_scope`]), and nothing else.
//! An unscoped pattern holds its capabilities on every resource.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;

/// Longest family part of a pattern (`secrets.read`, `vision.*`).
pub const MAX_FAMILY_BYTES: usize = 128;
/// Longest resource path, in patterns and in the resources checked against them.
pub const MAX_RESOURCE_BYTES: usize = 512;

/// What one principal holds, roles expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Shared: every policy query for the principal carries them (no copy per call).
    pub roles: Arc<[String]>,
    /// Sorted, deduplicated patterns.
    pub capabilities: Vec<String>,
}

impl Holdings {
    /// Holds `capability` on everything (an unscoped pattern matches it).
    pub fn allows(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|pattern| pattern_matches(pattern, capability))
    }

    /// Holds `capability` on at least some resources (scoped or not): the layer's check for a
    /// method whose handler then checks the resource.
    pub fn allows_family(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|pattern| pattern_matches_family(pattern, capability))
    }

    /// Holds `capability` on `resource`.
    pub fn allows_on(&self, capability: &str, resource: &str) -> bool {
        self.capabilities
            .iter()
            .any(|pattern| pattern_matches_on(pattern, capability, resource))
    }

    /// Does some held pattern cover the whole of `requested` (itself a pattern)? See [`pattern_covers`].
    pub fn covers(&self, requested: &str) -> bool {
        self.capabilities
            .iter()
            .any(|held| pattern_covers(held, requested))
    }
}

/// Splits `FAMILY[:RESOURCE]` into its family and its resource scope.
pub fn split_pattern(pattern: &str) -> (&str, Option<&str>) {
    // A plain byte search: patterns are short, and every authorized call splits some (a
    // `str::split_once(char)` searcher costs more to set up than the search itself).
    match pattern.bytes().position(|b| b == b':') {
        Some(at) => (&pattern[..at], Some(&pattern[at + 1..])),
        None => (pattern, None),
    }
}

/// Does the unscoped `pattern` hold `capability` everywhere? A scoped pattern never does.
pub fn pattern_matches(pattern: &str, capability: &str) -> bool {
    match split_pattern(pattern) {
        (family, None) => family_matches(family, capability),
        (_, Some(_)) => false,
    }
}

/// Does `pattern` hold `capability` on some resources (its scope ignored)?
pub fn pattern_matches_family(pattern: &str, capability: &str) -> bool {
    family_matches(split_pattern(pattern).0, capability)
}

/// Does `pattern` hold `capability` on `resource`? An unscoped pattern holds it on every resource; a
/// scoped one only on resources its scope names (and never on a malformed path).
pub fn pattern_matches_on(pattern: &str, capability: &str, resource: &str) -> bool {
    let (family, scope) = split_pattern(pattern);
    family_matches(family, capability) && scope.is_none_or(|scope| scope_matches(scope, resource))
}

fn family_matches(family: &str, capability: &str) -> bool {
    if family == "*" {
        return true;
    }
    match family.strip_suffix(".*") {
        Some(prefix) => capability
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        None => family == capability,
    }
}

/// Does the resource scope (`/a/b` or `/a/*`) hold the concrete `resource`? A resource that is not a
/// valid path (`..`, `//`, wildcards) is held by no scope.
pub fn scope_matches(scope: &str, resource: &str) -> bool {
    if validate_resource_path(resource).is_err() {
        return false;
    }
    match scope.strip_suffix("/*") {
        Some(base) => resource
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
        None => scope == resource,
    }
}

/// Does holding `holder` give everything `requested` can name? Both are patterns: `vision.*` covers
/// `vision.capture`, `vision.stream.*` and `vision.*`, but not `vision` or `*`; only `*` covers `*`.
/// Scopes narrow the same way: no scope covers every scope, `/a/*` covers `/a/b`, `/a/b/*` and
/// `/a/*` but not `/a` or `/*`, and a scoped pattern never covers an unscoped one.
/// This is the rule for delegation: a token may carry `requested` only if its issuer holds a covering
/// pattern.
pub fn pattern_covers(holder: &str, requested: &str) -> bool {
    let (held_family, held_scope) = split_pattern(holder);
    let (wanted_family, wanted_scope) = split_pattern(requested);
    family_covers(held_family, wanted_family)
        && match (held_scope, wanted_scope) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(held), Some(wanted)) => scope_covers(held, wanted),
        }
}

fn family_covers(holder: &str, requested: &str) -> bool {
    if holder == "*" || holder == requested {
        return true;
    }
    if requested == "*" {
        return false;
    }
    let body = requested.strip_suffix(".*").unwrap_or(requested);
    holder.ends_with(".*") && family_matches(holder, body)
}

fn scope_covers(holder: &str, requested: &str) -> bool {
    if holder == requested {
        return true;
    }
    let body = requested.strip_suffix("/*").unwrap_or(requested);
    holder.ends_with("/*") && scope_matches(holder, body)
}

/// A capability pattern as grants, roles and tokens hold it: `FAMILY` or `FAMILY:RESOURCE` (see the
/// module docs).
pub fn validate_capability_pattern(pattern: &str) -> Result<(), String> {
    let (family, scope) = split_pattern(pattern);
    validate_family_pattern(family)?;
    match scope {
        None => Ok(()),
        Some(scope) => {
            validate_resource_pattern(scope).map_err(|err| format!("resource scope: {err}"))
        }
    }
}

/// A pattern without a resource scope: `*`, `a.b`, or `a.b.*`.
pub fn validate_family_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let body = pattern.strip_suffix(".*").unwrap_or(pattern);
    if body.is_empty() || pattern.len() > MAX_FAMILY_BYTES {
        return Err(format!(
            "a capability is 1 to {MAX_FAMILY_BYTES} characters"
        ));
    }
    for segment in body.split('.') {
        let ok = !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(
                "expected dotted segments of [a-z0-9_-], optionally ending in \".*\"".to_owned(),
            );
        }
    }
    Ok(())
}

/// The resource part of a scoped pattern: `/*`, an absolute path, or an absolute path ending in `/*`.
pub fn validate_resource_pattern(scope: &str) -> Result<(), String> {
    if scope == "/*" {
        return Ok(());
    }
    validate_resource_path(scope.strip_suffix("/*").unwrap_or(scope))
}

/// A concrete resource: `/` then non-empty segments of `[A-Za-z0-9._~@+=,-]` joined by `/`, none of
/// them `.` or `..`, at most [`MAX_RESOURCE_BYTES`]. Services check request resources with it.
pub fn validate_resource_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_RESOURCE_BYTES {
        return Err(format!(
            "a resource path is at most {MAX_RESOURCE_BYTES} bytes"
        ));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("expected an absolute path such as \"/agents/web/*\"".to_owned());
    };
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err("empty path segment (\"//\", or \"/\" at the end)".to_owned());
        }
        if segment == "." || segment == ".." {
            return Err("\".\" and \"..\" segments are not allowed".to_owned());
        }
        if segment.contains('*') {
            return Err("\"*\" is allowed only as a final \"/*\"".to_owned());
        }
        let ok = segment.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'_' | b'~' | b'@' | b'+' | b'=' | b',' | b'-')
        });
        if !ok {
            return Err(format!(
                "segment {segment:?}: expected characters from [A-Za-z0-9._~@+=,-]"
            ));
        }
    }
    Ok(())
}

/// The grant table of one configuration.
#[derive(Debug, Default)]
pub struct Grants {
    /// foldhash, seeded per process: looked up on every authorized call, often twice.
    by_principal: HashMap<String, Holdings, foldhash::fast::RandomState>,
}

impl Grants {
    /// Builds the table from a validated configuration (dev grant included).
    pub fn from_config(config: &Config) -> Self {
        let mut by_principal = HashMap::default();
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
                    roles: grant.roles.as_slice().into(),
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

    pub fn allows_family(&self, principal: &str, capability: &str) -> bool {
        self.holdings(principal)
            .is_some_and(|h| h.allows_family(capability))
    }

    pub fn allows_on(&self, principal: &str, capability: &str, resource: &str) -> bool {
        self.holdings(principal)
            .is_some_and(|h| h.allows_on(capability, resource))
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

    /// The roles `principal`'s grants give it (none when it has no grants).
    pub fn roles_of(&self, principal: &str) -> Arc<[String]> {
        self.grants
            .load()
            .holdings(principal)
            .map(|h| h.roles.clone())
            .unwrap_or_default()
    }

    pub fn allows_family(&self, principal: &str, capability: &str) -> bool {
        self.grants.load().allows_family(principal, capability)
    }

    pub fn allows_on(&self, principal: &str, capability: &str, resource: &str) -> bool {
        self.grants
            .load()
            .allows_on(principal, capability, resource)
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

    /// A pattern splits at its first colon, as `str::split_once` splits it.
    #[test]
    fn patterns_split_at_the_first_colon() {
        for pattern in [
            "*",
            "secrets.read",
            "secrets.read:/a/*",
            "a:b:c",
            ":",
            "x:",
            ":/y",
            "",
        ] {
            let expected = match pattern.split_once(':') {
                Some((family, scope)) => (family, Some(scope)),
                None => (pattern, None),
            };
            assert_eq!(split_pattern(pattern), expected, "{pattern:?}");
        }
    }

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
            roles: Arc::from([]),
            capabilities: vec!["secrets.read".into(), "vision.*".into()],
        };
        assert!(holdings.covers("vision.capture"));
        assert!(holdings.covers("secrets.read"));
        assert!(!holdings.covers("secrets.*"));
        assert!(!holdings.covers("*"));
    }

    #[test]
    fn scoped_pattern_syntax() {
        for ok in [
            "secrets.read:/agents/web/*",
            "secrets.read:/agents/web/api-key",
            "secrets.*:/agents/*",
            "secrets.read:/*",
            "*:/agents/web/*",
            "secrets.read:/a/b.c/d_e~f@g+h=i,j",
        ] {
            assert_eq!(validate_capability_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "secrets.read:",
            "secrets.read:agents/web",
            "secrets.read:/",
            "secrets.read:/agents//web",
            "secrets.read:/agents/web/",
            "secrets.read:/agents/../etc",
            "secrets.read:/agents/./web",
            "secrets.read:/agents/*/web",
            "secrets.read:/agents/web*",
            "secrets.read:/agents/**",
            "secrets.read:/a b",
            "secrets.read:/a:b",
            ":/agents/*",
            "Secrets.read:/agents/*",
        ] {
            assert!(validate_capability_pattern(bad).is_err(), "{bad}");
        }
        let long = format!("secrets.read:/{}", "a".repeat(MAX_RESOURCE_BYTES));
        assert!(validate_capability_pattern(&long).is_err());
        // Unscoped patterns are as before.
        for ok in ["*", "secrets.read", "vision.*", "a_b-c.d9"] {
            assert_eq!(validate_capability_pattern(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "a..b", "Secrets", "a.*.b", "*.a", "a b"] {
            assert!(validate_capability_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scoped_patterns_match_resources_below_their_path() {
        let p = "secrets.read:/agents/web/*";
        assert!(pattern_matches_on(p, "secrets.read", "/agents/web/x"));
        assert!(pattern_matches_on(p, "secrets.read", "/agents/web/x/y"));
        // "/*" is strictly below, as `vision.*` does not hold `vision`.
        assert!(!pattern_matches_on(p, "secrets.read", "/agents/web"));
        assert!(!pattern_matches_on(p, "secrets.read", "/agents/webby/x"));
        assert!(!pattern_matches_on(p, "secrets.read", "/agents/db/x"));
        assert!(!pattern_matches_on(p, "secrets.write", "/agents/web/x"));
        // A path that climbs out is held by no scope.
        assert!(!pattern_matches_on(
            p,
            "secrets.read",
            "/agents/web/../db/x"
        ));
        assert!(!pattern_matches_on(p, "secrets.read", "/agents/web//x"));
        assert!(!pattern_matches_on(p, "secrets.read", "/agents/web/*"));
        // Exact scopes hold exactly one resource.
        let exact = "secrets.read:/agents/web/key";
        assert!(pattern_matches_on(exact, "secrets.read", "/agents/web/key"));
        assert!(!pattern_matches_on(
            exact,
            "secrets.read",
            "/agents/web/key/x"
        ));
        assert!(pattern_matches_on("secrets.read:/*", "secrets.read", "/x"));
        // Family wildcards combine with scopes.
        assert!(pattern_matches_on(
            "secrets.*:/agents/*",
            "secrets.write",
            "/agents/web/x"
        ));
        // An unscoped pattern holds the capability on any resource.
        assert!(pattern_matches_on(
            "secrets.read",
            "secrets.read",
            "/anything/at/all"
        ));
        assert!(pattern_matches_on("*", "secrets.read", "/x"));
        // A scoped pattern satisfies the family check, never the unscoped one.
        assert!(pattern_matches_family(p, "secrets.read"));
        assert!(!pattern_matches_family(p, "secrets.write"));
        assert!(!pattern_matches(p, "secrets.read"));
        assert!(pattern_matches("secrets.read", "secrets.read"));
    }

    #[test]
    fn covering_scoped_patterns_only_narrows() {
        // Narrower scopes are covered.
        assert!(pattern_covers(
            "secrets.read:/agents/*",
            "secrets.read:/agents/web/*"
        ));
        assert!(pattern_covers(
            "secrets.read:/agents/*",
            "secrets.read:/agents/web/key"
        ));
        assert!(pattern_covers(
            "secrets.read:/agents/*",
            "secrets.read:/agents/*"
        ));
        assert!(pattern_covers("secrets.read:/*", "secrets.read:/agents/*"));
        // Wider or sideways ones are not.
        assert!(!pattern_covers(
            "secrets.read:/agents/web/*",
            "secrets.read:/agents/*"
        ));
        assert!(!pattern_covers(
            "secrets.read:/agents/web/*",
            "secrets.read:/agents/web"
        ));
        assert!(!pattern_covers(
            "secrets.read:/agents/web/*",
            "secrets.read:/agents/db/*"
        ));
        assert!(!pattern_covers("secrets.read:/agents/*", "secrets.read:/*"));
        assert!(!pattern_covers(
            "secrets.read:/agents/web/key",
            "secrets.read:/agents/web/*"
        ));
        // A scoped holder never covers the unscoped capability or another family.
        assert!(!pattern_covers("secrets.read:/agents/*", "secrets.read"));
        assert!(!pattern_covers(
            "secrets.read:/agents/*",
            "secrets.*:/agents/*"
        ));
        assert!(!pattern_covers(
            "secrets.read:/agents/*",
            "secrets.write:/agents/x"
        ));
        // Unscoped holders cover every scope of their family.
        assert!(pattern_covers("secrets.read", "secrets.read:/x"));
        assert!(pattern_covers("secrets.*", "secrets.read:/x"));
        assert!(pattern_covers("secrets.*", "secrets.read:/*"));
        assert!(pattern_covers("*", "secrets.read:/agents/*"));
        assert!(pattern_covers(
            "secrets.*:/agents/*",
            "secrets.read:/agents/web/*"
        ));
        assert!(!pattern_covers("secrets.*", "web.read:/x"));
        // Cover implies match: whatever the narrower pattern holds, the wider one holds.
        let resources = [
            "/agents",
            "/agents/web",
            "/agents/web/k",
            "/agents/db/k",
            "/x",
        ];
        let patterns = [
            "secrets.read",
            "secrets.*",
            "secrets.read:/*",
            "secrets.read:/agents/*",
            "secrets.read:/agents/web/*",
            "secrets.read:/agents/web",
            "secrets.read:/agents/web/k",
        ];
        for holder in patterns {
            for requested in patterns {
                if !pattern_covers(holder, requested) {
                    continue;
                }
                for resource in resources {
                    assert!(
                        !pattern_matches_on(requested, "secrets.read", resource)
                            || pattern_matches_on(holder, "secrets.read", resource),
                        "{holder} covers {requested} but not on {resource}"
                    );
                }
            }
        }
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
