//! What every RPC needs: the method table, keyed by full path (`/package.Service/Method`) across proto
//! packages. Each service declares its entries in its registration ([`super::services::REGISTRY`]);
//! this module is the one place that reads them: a method without an entry is refused (default deny),
//! a test walks the registered descriptor sets so that a new RPC without an entry fails the tests, and
//! `docs/AUTHORIZATION.md` carries the whole table (a test keeps it equal to [`render_table`]).

/// What a caller must have to call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// A verified client certificate that names a principal.
    Authenticated,
    /// A principal whose grants hold this capability.
    Capability(&'static str),
    /// A resource-scoped capability family (`secrets.read`): the layer checks that the caller holds
    /// the family on some resource; the handler checks the request's resource against the scope
    /// through [`crate::access::Access::require_scope`].
    Scoped(&'static str),
}

impl Requirement {
    /// The capability (family) the layer checks, if any.
    pub fn capability(&self) -> Option<&'static str> {
        match self {
            Requirement::Authenticated => None,
            Requirement::Capability(c) | Requirement::Scoped(c) => Some(c),
        }
    }
}

/// What repeating a call does, from the method's `option idempotency_level` in its proto (the
/// registered descriptor sets). A method that declares nothing is [`Effect::Mutating`]: a forgotten
/// declaration costs a stored reply, never a double write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `NO_SIDE_EFFECTS`: reads only.
    ReadOnly,
    /// `IDEMPOTENT`: repeating it leaves the state as one call did (decisions that are audited,
    /// revoking, stopping).
    Idempotent,
    /// Anything else: a repeat would apply twice, so the daemon honours the `idempotency-key`
    /// metadata entry on it ([`super::idempotency`]).
    Mutating,
    /// A streaming method: never deduplicated (its reply is not one message).
    Streaming,
}

/// One method's entry: the metric label (the full method path), its requirement and its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodEntry {
    pub label: &'static str,
    pub requirement: Requirement,
    pub effect: Effect,
}

/// The effect of every method of the registered descriptor sets, by full path; read once.
fn effects() -> &'static std::collections::HashMap<String, Effect> {
    use brainstem_proto::Repeat;
    static EFFECTS: std::sync::OnceLock<std::collections::HashMap<String, Effect>> =
        std::sync::OnceLock::new();
    EFFECTS.get_or_init(|| {
        super::services::descriptor_sets()
            .into_iter()
            .flat_map(brainstem_proto::method_repeats)
            .map(|(path, repeat)| {
                let effect = match repeat {
                    Repeat::NoSideEffects => Effect::ReadOnly,
                    Repeat::Idempotent => Effect::Idempotent,
                    Repeat::Changes => Effect::Mutating,
                    Repeat::Streaming => Effect::Streaming,
                };
                (path, effect)
            })
            .collect()
    })
}

/// A method's [`Effect`] (Mutating for a path no descriptor names).
pub fn effect(path: &str) -> Effect {
    effects().get(path).copied().unwrap_or(Effect::Mutating)
}

/// Every method of every registered service, by full path.
pub fn all() -> impl Iterator<Item = &'static (&'static str, Requirement)> {
    super::services::specs().flat_map(|spec| spec.methods.iter())
}

/// The methods a rate-limit pattern names: a full path, or `/package.Service/*`.
pub fn matching(pattern: &str) -> impl Iterator<Item = &'static str> + '_ {
    all()
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
    all()
        .map(|(path, _)| *path)
        .chain(OPEN_SERVICES.iter().copied())
}

/// The method table's map: full path → entry.
type Table = std::collections::HashMap<&'static str, MethodEntry, foldhash::fast::FixedState>;

/// Every registered method's entry by full path, built once (the first call, or
/// [`build_table`] at start); a call's lookup is one hash of its path.
fn table() -> &'static Table {
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        all()
            .map(|(label, requirement)| {
                let entry = MethodEntry {
                    label,
                    requirement: *requirement,
                    effect: effect(label),
                };
                (*label, entry)
            })
            .collect()
    })
}

/// Builds the method table (and reads the descriptor sets' effects) now, so that the first call
/// does not pay for it.
pub fn build_table() {
    table();
}

/// Looks a request path up. `None`: the method declares no requirement and is refused.
pub fn lookup(path: &str) -> Option<MethodEntry> {
    if let Some(entry) = table().get(path) {
        return Some(*entry);
    }
    OPEN_SERVICES
        .iter()
        .find(|prefix| path.starts_with(**prefix))
        .map(|prefix| MethodEntry {
            label: prefix,
            requirement: Requirement::Authenticated,
            effect: Effect::ReadOnly,
        })
}

/// The method table as the Markdown table `docs/AUTHORIZATION.md` shows.
pub fn render_table() -> String {
    let mut table = String::from("| Method | Requires |\n|---|---|\n");
    for (path, requirement) in all() {
        let requires = match requirement {
            Requirement::Authenticated => "any authenticated caller".to_owned(),
            Requirement::Capability(c) => format!("`{c}`"),
            Requirement::Scoped(c) => format!("`{c}` on the request's resource"),
        };
        table.push_str(&format!("| `{path}` | {requires} |\n"));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of every registered service's package has an entry, and every entry names a real
    /// method.
    #[test]
    fn every_rpc_declares_its_requirement() {
        let mut declared = Vec::new();
        for encoded in crate::grpc::services::descriptor_sets() {
            let set =
                prost_types::FileDescriptorSet::decode(encoded).expect("descriptor set decodes");
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        let path = format!("/{package}.{}/{}", service.name(), method.name());
                        assert!(
                            all().any(|(p, _)| *p == path),
                            "{path} declares no requirement in its service's registration"
                        );
                        declared.push(path);
                    }
                }
            }
        }
        for (path, _) in all() {
            assert!(
                declared.iter().any(|d| d == path),
                "{path} is not an RPC of the API"
            );
        }
    }

    #[test]
    fn the_documented_table_is_the_table() {
        let doc = include_str!("../../../docs/AUTHORIZATION.md");
        let table = render_table();
        assert!(
            doc.contains(&table),
            "docs/AUTHORIZATION.md's method table drifted; replace it with:\n{table}"
        );
    }

    #[test]
    fn effects_come_from_the_protos_idempotency_level() {
        assert_eq!(effect("/brainstem.v1.Admin/Ping"), Effect::ReadOnly);
        assert_eq!(effect("/brainstem.v1.Policy/Check"), Effect::Idempotent);
        assert_eq!(effect("/brainstem.v1.Episodic/Store"), Effect::Mutating);
        assert_eq!(
            effect("/brainstem.v1.Learning/Feedback"),
            Effect::Idempotent
        );
        assert_eq!(effect("/brainstem.v1.Learning/GetStats"), Effect::ReadOnly);
        assert_eq!(effect("/brainstem.v1.Tokens/Issue"), Effect::Mutating);
        assert_eq!(
            effect("/brainstem.v1.Supervisor/WatchActors"),
            Effect::Streaming
        );
        assert_eq!(effect("/brainstem.v1.Nope/Nope"), Effect::Mutating);
        // A second proto package declares its effects the same way.
        assert_eq!(effect("/brainstem.v1.Flags/Evaluate"), Effect::ReadOnly);
        assert_eq!(
            effect("/flagd.evaluation.v2.Service/ResolveBoolean"),
            Effect::ReadOnly
        );
        assert_eq!(
            effect("/brainstem.v1.Flags/SetOverride"),
            Effect::Idempotent
        );
        // Every registered method has an effect read from a descriptor.
        for (path, _) in all() {
            assert!(effects().contains_key(*path), "{path} has no descriptor");
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
