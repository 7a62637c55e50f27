//! The authenticated caller of a request (inserted by the authorization layer) and the checks a
//! handler makes with it: a capability, or a capability on one resource ([`require_scope`]).

use std::sync::Arc;

use crate::access::authz::Authorizer;
use crate::access::identity::Principal;
use crate::error::ServiceError;
use crate::tokens::VerifiedToken;

/// The authenticated caller of a request, inserted by the authorization layer.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// A capability token presented with the call (`authorization: Bearer bst1.…`), verified and
    /// issued to this principal. The caller then acts with its grants *and* the token.
    pub token: Option<Arc<VerifiedToken>>,
}

impl Caller {
    /// May the caller exercise `capability` everywhere: its grants hold it unscoped and, with a
    /// token, the token does too.
    pub fn may(&self, authorizer: &Authorizer, capability: &str) -> bool {
        authorizer.allows(&self.principal.name, capability)
            && self.token.as_ref().is_none_or(|t| t.allows(capability))
    }

    /// May the caller exercise `capability` on at least some resources? This is the layer's check
    /// for a resource-scoped method; the handler then calls [`require_scope`].
    pub fn may_family(&self, authorizer: &Authorizer, capability: &str) -> bool {
        authorizer.allows_family(&self.principal.name, capability)
            && self
                .token
                .as_ref()
                .is_none_or(|t| t.allows_family(capability))
    }

    /// May the caller exercise `capability` on `resource` (grants and token both)?
    pub fn may_on(&self, authorizer: &Authorizer, capability: &str, resource: &str) -> bool {
        authorizer.allows_on(&self.principal.name, capability, resource)
            && self
                .token
                .as_ref()
                .is_none_or(|t| t.allows_on(capability, resource))
    }
}

/// The handler's half of a resource-scoped capability: `Ok` when the caller holds `capability` on
/// `resource` (an unscoped grant holds it on every resource), else PERMISSION_DENIED naming both.
/// The layer has already checked the family (`Caller::may_family`). [`crate::access::Access`] wraps
/// this to audit the refusal.
pub fn require_scope(
    authorizer: &Authorizer,
    caller: &Caller,
    capability: &str,
    resource: &str,
) -> Result<(), ServiceError> {
    if caller.may_on(authorizer, capability, resource) {
        return Ok(());
    }
    let name = &caller.principal.name;
    Err(ServiceError::PermissionDenied(
        if authorizer.allows_on(name, capability, resource) {
            format!("the presented capability token does not cover {capability:?} on {resource:?}")
        } else {
            format!("principal {name:?} lacks capability {capability:?} on resource {resource:?}")
        },
    ))
}

/// The caller the authorization layer attached to a request. Every service reads it here.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, ServiceError> {
    request.extensions().get::<Caller>().ok_or_else(|| {
        ServiceError::Unauthenticated("request did not pass the authorization layer".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::authz::Grants;
    use crate::access::identity::PrincipalSource;
    use crate::config::{ConfigSource, Overrides};

    const WEB: &str = "spiffe://h/agent/web";
    const OPS: &str = "spiffe://h/ops";

    /// Loads a config file the way `brainstemd check-config` does (parse, overrides, validate).
    fn load(text: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("brainstemd.toml");
        std::fs::write(&path, text).unwrap();
        ConfigSource {
            file: Some(path),
            overrides: Overrides::default(),
        }
        .load()
    }

    fn authorizer() -> Authorizer {
        let config = load(
            r#"
            dev_mode = true
            [roles]
            web-secrets = ["secrets.read:/agents/web/*"]
            [[grants]]
            principal = "spiffe://h/agent/web"
            roles = ["web-secrets"]
            capabilities = ["secrets.write:/agents/web/notes"]
            [[grants]]
            principal = "spiffe://h/ops"
            capabilities = ["secrets.*"]
            "#,
        )
        .expect("scoped patterns in roles and grants pass the config check");
        Authorizer::new(Grants::from_config(&config))
    }

    fn caller(name: &str, token: Option<&[&str]>) -> Caller {
        Caller {
            principal: Arc::new(Principal {
                name: name.to_owned(),
                source: PrincipalSource::SanUri,
            }),
            token: token.map(|caps| {
                Arc::new(VerifiedToken {
                    id: "t".into(),
                    principal: name.to_owned(),
                    issuer: name.to_owned(),
                    capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
                    issued_at: 0,
                    expires_at: u64::MAX,
                    parents: vec![],
                    key_id: "k1".into(),
                })
            }),
        }
    }

    #[test]
    fn config_check_accepts_scoped_grants_and_names_bad_ones() {
        let _ = authorizer();
        let err = load(
            r#"
            dev_mode = true
            [roles]
            r = ["secrets.read:/agents/*/x"]
            [[grants]]
            principal = "p"
            capabilities = ["secrets.read:/agents/../etc"]
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"roles.r"), "{err:?}");
        assert!(keys.contains(&"grants[0].capabilities"), "{err:?}");
    }

    #[test]
    fn a_scope_outside_the_grant_is_permission_denied() {
        let auth = authorizer();
        let web = caller(WEB, None);
        // The layer's family check passes for a scoped grant; the unscoped check does not.
        assert!(web.may_family(&auth, "secrets.read"));
        assert!(!web.may(&auth, "secrets.read"));
        assert!(require_scope(&auth, &web, "secrets.read", "/agents/web/api-key").is_ok());
        assert!(require_scope(&auth, &web, "secrets.write", "/agents/web/notes").is_ok());
        for (capability, resource) in [
            ("secrets.read", "/agents/db/api-key"),
            ("secrets.read", "/agents/web"),
            ("secrets.read", "/agents/web/../db/api-key"),
            ("secrets.write", "/agents/web/other"),
            ("secrets.delete", "/agents/web/api-key"),
        ] {
            let err = require_scope(&auth, &web, capability, resource).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, ServiceError::PermissionDenied(_)),
                "{capability} {resource}: {err:?}"
            );
            assert!(
                message.contains(capability) && message.contains(resource),
                "the refusal names the capability and the resource: {message}"
            );
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
        }
        // An unscoped family grant holds every resource.
        let ops = caller(OPS, None);
        assert!(require_scope(&auth, &ops, "secrets.read", "/anything/at/all").is_ok());
        assert!(ops.may(&auth, "secrets.read"));
        // Nobody holds nothing.
        let nobody = caller("spiffe://h/nobody", None);
        assert!(!nobody.may_family(&auth, "secrets.read"));
        assert!(require_scope(&auth, &nobody, "secrets.read", "/agents/web/x").is_err());
    }

    #[test]
    fn a_presented_token_narrows_the_scope() {
        let auth = authorizer();
        let narrowed = caller(WEB, Some(&["secrets.read:/agents/web/public/*"]));
        assert!(narrowed.may_family(&auth, "secrets.read"));
        assert!(require_scope(&auth, &narrowed, "secrets.read", "/agents/web/public/x").is_ok());
        let err =
            require_scope(&auth, &narrowed, "secrets.read", "/agents/web/private").unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        // A token wider than the grant does not widen it.
        let wide = caller(WEB, Some(&["secrets.*"]));
        assert!(require_scope(&auth, &wide, "secrets.read", "/agents/db/x").is_err());
        // A token of another family fails the layer's family check.
        let other = caller(WEB, Some(&["web.read"]));
        assert!(!other.may_family(&auth, "secrets.read"));
    }
}
