//! What every RPC needs. One table: a method that is not listed here is refused (default deny), and a
//! test walks the descriptor set so that a new RPC without an entry fails the build's tests.

/// What a caller must have to call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// A verified client certificate that names a principal.
    Authenticated,
    /// A principal whose grants hold this capability.
    Capability(&'static str),
}

/// One method's entry: the metric label (the full method path) and its requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodEntry {
    pub label: &'static str,
    pub requirement: Requirement,
}

/// Every `brainstem.v1` method, by its full path.
pub const METHODS: &[(&str, Requirement)] = &[
    ("/brainstem.v1.Admin/Ping", Requirement::Authenticated),
    ("/brainstem.v1.Admin/WhoAmI", Requirement::Authenticated),
    (
        "/brainstem.v1.Admin/GetStatus",
        Requirement::Capability("admin.status"),
    ),
    (
        "/brainstem.v1.Policy/Check",
        Requirement::Capability("policy.check"),
    ),
    (
        "/brainstem.v1.Policy/BatchCheck",
        Requirement::Capability("policy.check"),
    ),
    (
        "/brainstem.v1.Policy/Explain",
        Requirement::Capability("policy.explain"),
    ),
    (
        "/brainstem.v1.Policy/Validate",
        Requirement::Capability("policy.validate"),
    ),
    (
        "/brainstem.v1.Policy/GetPolicySet",
        Requirement::Capability("policy.read"),
    ),
    (
        "/brainstem.v1.Audit/Query",
        Requirement::Capability("audit.read"),
    ),
    (
        "/brainstem.v1.Guardrails/CheckNavigation",
        Requirement::Capability("guardrails.check"),
    ),
    (
        "/brainstem.v1.Guardrails/CheckClick",
        Requirement::Capability("guardrails.check"),
    ),
    (
        "/brainstem.v1.Guardrails/CheckFormSubmit",
        Requirement::Capability("guardrails.check"),
    ),
    (
        "/brainstem.v1.Tokens/Issue",
        Requirement::Capability("tokens.issue"),
    ),
    (
        "/brainstem.v1.Tokens/Verify",
        Requirement::Capability("tokens.verify"),
    ),
    (
        "/brainstem.v1.Tokens/Revoke",
        Requirement::Capability("tokens.revoke"),
    ),
    (
        "/brainstem.v1.Tokens/List",
        Requirement::Capability("tokens.list"),
    ),
    (
        "/brainstem.v1.Tokens/Attenuate",
        Requirement::Capability("tokens.attenuate"),
    ),
    (
        "/brainstem.v1.Tokens/RotateKey",
        Requirement::Capability("tokens.rotate"),
    ),
    // Supervisor: reading state needs supervisor.read; changing it, supervisor.admin.
    (
        "/brainstem.v1.Supervisor/ListActors",
        Requirement::Capability("supervisor.read"),
    ),
    (
        "/brainstem.v1.Supervisor/GetActor",
        Requirement::Capability("supervisor.read"),
    ),
    (
        "/brainstem.v1.Supervisor/WatchActors",
        Requirement::Capability("supervisor.read"),
    ),
    (
        "/brainstem.v1.Supervisor/GetHealth",
        Requirement::Capability("supervisor.read"),
    ),
    (
        "/brainstem.v1.Supervisor/RestartActor",
        Requirement::Capability("supervisor.admin"),
    ),
    (
        "/brainstem.v1.Supervisor/StopActor",
        Requirement::Capability("supervisor.admin"),
    ),
    (
        "/brainstem.v1.Supervisor/StartActor",
        Requirement::Capability("supervisor.admin"),
    ),
    // Episodic buffer.
    (
        "/brainstem.v1.Episodic/Store",
        Requirement::Capability("episodic.write"),
    ),
    (
        "/brainstem.v1.Episodic/StoreBatch",
        Requirement::Capability("episodic.write"),
    ),
    (
        "/brainstem.v1.Episodic/Forget",
        Requirement::Capability("episodic.write"),
    ),
    (
        "/brainstem.v1.Episodic/Query",
        Requirement::Capability("episodic.read"),
    ),
    (
        "/brainstem.v1.Episodic/Recent",
        Requirement::Capability("episodic.read"),
    ),
    (
        "/brainstem.v1.Episodic/Get",
        Requirement::Capability("episodic.read"),
    ),
];

/// The `brainstem.v1` methods a rate-limit pattern names: a full path, or `/brainstem.v1.Service/*`.
pub fn matching(pattern: &str) -> impl Iterator<Item = &'static str> + '_ {
    METHODS
        .iter()
        .map(|(path, _)| *path)
        .filter(move |path| match pattern.strip_suffix('*') {
            Some(service) => service.ends_with('/') && path.starts_with(service),
            None => *path == pattern,
        })
}

/// Infrastructure services that any authenticated caller may use: health and reflection.
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Every metric label [`lookup`] can return.
pub fn labels() -> impl Iterator<Item = &'static str> {
    METHODS
        .iter()
        .map(|(path, _)| *path)
        .chain(OPEN_SERVICES.iter().copied())
}

/// Looks a request path up. `None`: the method declares no requirement and is refused.
pub fn lookup(path: &str) -> Option<MethodEntry> {
    if let Some((label, requirement)) = METHODS.iter().find(|(p, _)| *p == path) {
        return Some(MethodEntry {
            label,
            requirement: *requirement,
        });
    }
    OPEN_SERVICES
        .iter()
        .find(|prefix| path.starts_with(**prefix))
        .map(|prefix| MethodEntry {
            label: prefix,
            requirement: Requirement::Authenticated,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method in the `brainstem.v1` descriptor set has an entry, and every entry names a real method.
    #[test]
    fn every_rpc_declares_its_requirement() {
        let set = prost_types::FileDescriptorSet::decode(brainstem_proto::v1::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let mut declared = Vec::new();
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{package}.{}/{}", service.name(), method.name());
                    assert!(
                        METHODS.iter().any(|(p, _)| *p == path),
                        "{path} declares no capability in grpc::methods::METHODS"
                    );
                    declared.push(path);
                }
            }
        }
        for (path, _) in METHODS {
            assert!(
                declared.iter().any(|d| d == path),
                "{path} is not an RPC of the API"
            );
        }
    }

    #[test]
    fn unknown_methods_are_refused_and_infrastructure_is_open() {
        assert_eq!(lookup("/brainstem.v1.Admin/Nope"), None);
        assert_eq!(lookup("/other.Service/Ping"), None);
        assert_eq!(
            lookup("/grpc.health.v1.Health/Check").map(|e| e.requirement),
            Some(Requirement::Authenticated)
        );
        assert_eq!(
            lookup("/brainstem.v1.Admin/GetStatus").map(|e| e.requirement),
            Some(Requirement::Capability("admin.status"))
        );
    }
}
