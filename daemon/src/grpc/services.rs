//! The service registry: every gRPC service the daemon serves is one [`Registration`] in [`REGISTRY`].
//!
//! A registration brings everything the control plane needs to know about a service: its name (also
//! its `grpc.health.v1` name), its descriptor set (for reflection and the method-table test), its
//! method-table entries (what each method requires; see [`super::methods`]), and how to set it up at
//! start and build its handler. Adding a service is its module plus one line in [`REGISTRY`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;

use crate::access::Access;
use crate::config::Config;
use crate::crypto::keyset::KeySet;
use crate::daemon::StartError;
use crate::grpc::admin::DaemonInfo;
use crate::grpc::methods::Requirement;
use crate::store::Store;
use crate::supervisor::{Supervisor, SupervisorBuilder};
use crate::tokens::TokenService;

/// Every service, in the order they are set up at start. One line per service.
pub const REGISTRY: &[Registration] = &[
    crate::grpc::admin::REGISTRATION,
    crate::policy::api::REGISTRATION,
    crate::access::api::audit::REGISTRATION,
    crate::access::api::guardrails::REGISTRATION,
    crate::tokens::api::REGISTRATION,
    crate::supervisor::api::REGISTRATION,
    crate::actors::episodic::api::REGISTRATION,
    crate::actors::vision::api::REGISTRATION,
    crate::actors::voice::api::REGISTRATION,
    crate::flags::api::REGISTRATION,
    crate::flags::api::FLAGD_V2_REGISTRATION,
    crate::flags::api::FLAGD_V1_REGISTRATION,
    crate::secrets::api::REGISTRATION,
    crate::registry::api::REGISTRATION,
    crate::backup::api::REGISTRATION,
    // After the registry: it publishes its model there (`[learning] publish_as`).
    crate::actors::learning::api::REGISTRATION,
];

/// What the control plane knows about a service before anything starts.
#[derive(Debug)]
pub struct ServiceSpec {
    /// Full service name, `package.Service`; also its `grpc.health.v1` service name.
    pub name: &'static str,
    /// The encoded `FileDescriptorSet` that declares it (reflection; the method-table test).
    pub descriptors: &'static [u8],
    /// Whose state its health reports.
    pub health: Health,
    /// Every method by full path (`/package.Service/Method`) and what a caller needs to call it.
    pub methods: &'static [(&'static str, Requirement)],
}

/// Where a service's `grpc.health.v1` status comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// SERVING while the daemon is ready.
    Daemon,
    /// Follows the supervised actor that serves it (the actor declares its health names).
    Actor,
}

/// A service: its spec and its start-up step.
pub struct Registration {
    pub spec: ServiceSpec,
    /// Describes the service's metrics (its `events::describe`); runs once the recorder is installed.
    pub describe: fn(),
    /// Runs at start, before the actors start and before anything listens: opens the service's state
    /// and registers its actors and workers. Returns how to build the handler once the daemon's shared
    /// parts are up, or `None` when the service is disabled (its methods answer UNIMPLEMENTED).
    pub setup: fn(&mut Setup<'_>) -> Result<Option<Handler>, StartError>,
}

/// Builds a service's handler and adds it to the routes.
pub type Handler = Box<dyn FnOnce(&Shared, &mut RoutesBuilder, Limits) + Send>;

/// What a service's set-up step may use.
pub struct Setup<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    /// The master keys (`[keys]`), for services that keep key material at rest.
    pub keys: &'a Arc<KeySet>,
    /// Actors and workers registered here start in declared order once every service is set up.
    pub actors: &'a mut SupervisorBuilder,
    /// Handles one capability offers others (the episodic buffer to the perception actors, …).
    pub parts: &'a mut Parts,
}

/// Handles capabilities hand to each other at set-up, one per type: a capability `provide`s its
/// handle, and one set up after it in [`REGISTRY`] `get`s it (`None` when the provider is disabled).
/// The framework stays unaware of who offers what.
#[derive(Default)]
pub struct Parts {
    parts: std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send + Sync>>,
}

impl Parts {
    /// Offers `part` to the services set up later; a second part of the same type replaces the first.
    pub fn provide<T: Clone + Send + Sync + 'static>(&mut self, part: T) {
        self.parts
            .insert(std::any::TypeId::of::<T>(), Box::new(part));
    }

    /// The part of type `T`, if a service set up earlier provided one.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.parts
            .get(&std::any::TypeId::of::<T>())
            .and_then(|part| part.downcast_ref::<T>())
            .cloned()
    }
}

/// The daemon's shared parts, handed to every handler builder.
pub struct Shared {
    pub access: Arc<Access>,
    pub tokens: Arc<TokenService>,
    pub store: Store,
    pub supervisor: Supervisor,
    pub info: Arc<DaemonInfo>,
    /// Cancelled when the server stops accepting calls (the Supervisor API's streams end with it).
    pub server_token: CancellationToken,
    /// Whether the daemon is ready (health and readiness read it).
    pub ready: Arc<AtomicBool>,
    /// The process's log filter (Admin.SetLogLevel); `None` where the embedder owns logging (tests).
    pub log: Option<Arc<dyn crate::runtime::telemetry::LogControl>>,
}

/// Message size limits every service gets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
}

/// Adds a tonic server to `routes` with the daemon's message size limits.
#[macro_export]
macro_rules! route {
    ($routes:expr, $limits:expr, $server:expr) => {{
        $routes.add_service(
            $server
                .max_decoding_message_size($limits.max_message_bytes)
                .max_encoding_message_size($limits.max_message_bytes),
        );
    }};
}

/// The `setup` of a service that keeps no state of its own: it only builds its handler from the
/// daemon's shared parts, e.g. `stateless_setup!(|shared| PolicyServer::new(…shared.access…))`.
#[macro_export]
macro_rules! stateless_setup {
    (|$shared:ident| $server:expr) => {
        |_| {
            Ok(Some($crate::grpc::services::handler(
                |$shared, routes, limits| $crate::route!(routes, limits, $server),
            )))
        }
    };
}

/// A handler builder for a service that needs no set-up step.
pub fn handler(
    build: impl FnOnce(&Shared, &mut RoutesBuilder, Limits) + Send + 'static,
) -> Handler {
    Box::new(build)
}

/// The specs of every registered service.
pub fn specs() -> impl Iterator<Item = &'static ServiceSpec> {
    REGISTRY.iter().map(|r| &r.spec)
}

/// The registered services' descriptor sets, each once (several services share a package's set).
pub fn descriptor_sets() -> Vec<&'static [u8]> {
    let mut sets: Vec<&'static [u8]> = Vec::new();
    for spec in specs() {
        if !sets.iter().any(|set| std::ptr::eq(*set, spec.descriptors)) {
            sets.push(spec.descriptors);
        }
    }
    sets
}

/// Names of the services whose health follows the daemon's readiness.
pub fn daemon_health_names() -> impl Iterator<Item = &'static str> {
    specs()
        .filter(|spec| spec.health == Health::Daemon)
        .map(|spec| spec.name)
}

/// Describes every registered service's metrics (describing one twice is harmless).
pub fn describe() {
    for registration in REGISTRY {
        (registration.describe)();
    }
}

/// Runs every service's set-up step, in registry order.
pub fn setup(setup: &mut Setup<'_>) -> Result<Vec<Handler>, StartError> {
    let mut handlers = Vec::new();
    for registration in REGISTRY {
        if let Some(handler) = (registration.setup)(setup)? {
            handlers.push(handler);
        }
    }
    Ok(handlers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_found_by_type() {
        let mut parts = Parts::default();
        assert_eq!(parts.get::<Arc<String>>(), None);
        parts.provide(Arc::new("episodic".to_owned()));
        parts.provide(7_u32);
        assert_eq!(
            parts.get::<Arc<String>>().as_deref().map(String::as_str),
            Some("episodic")
        );
        assert_eq!(parts.get::<u32>(), Some(7));
        assert_eq!(parts.get::<u64>(), None);
    }

    #[test]
    fn every_method_belongs_to_its_service_and_names_are_unique() {
        let mut names = std::collections::BTreeSet::new();
        for spec in specs() {
            assert!(names.insert(spec.name), "{} registered twice", spec.name);
            assert!(!spec.methods.is_empty(), "{} has no methods", spec.name);
            for (path, _) in spec.methods {
                let prefix = format!("/{}/", spec.name);
                assert!(
                    path.starts_with(&prefix),
                    "{path} is listed under {}",
                    spec.name
                );
            }
        }
    }
}
