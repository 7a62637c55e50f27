//! `brainstem.v1.Registry`: proto ↔ [`Registry`], scope checks per model name (the resource is
//! `/<name>`, so `registry.write:/vision/*` holds every model named `vision/…`).

use std::sync::Arc;

use brainstem_proto::v1::registry_server::{Registry as RegistryApi, RegistryServer};
use brainstem_proto::v1::{
    AddModelParentRequest, AliasHistoryEntry, AliasHistoryReply, AliasHistoryRequest,
    DetectDriftReply, DetectDriftRequest, ExportModelCardReply, ExportModelCardRequest,
    GetCardPublicKeyReply, GetCardPublicKeyRequest, GetLatestRequest, GetModelRequest,
    ListModelsReply, ListModelsRequest, ListVersionsReply, ListVersionsRequest, ModelArtifactCheck,
    ModelCardSections, ModelDeployment, ModelLineageNode, ModelLineageReply, ModelLineageRequest,
    ModelParent, ModelVersion, RecordDeploymentRequest, RecordQualityMetricReply,
    RecordQualityMetricRequest, RegisterReply, RegisterRequest, SetAliasReply, SetAliasRequest,
    UpdateVersionRequest, VerifyArtifactsReply, VerifyArtifactsRequest,
};
use tonic::{Request, Response, Status};

use super::drift::RegistryDrift;
use super::{
    Actor, CardText, LineageNode, Registration, Registry, SystemClock, VersionStatus,
    VersionUpdate, VersionView,
};
use crate::access::Access;
use crate::access::caller::{Caller, caller};
use crate::daemon::StartError;
use crate::error::{FieldViolation, ServiceError};
use crate::grpc::convert::timestamp_from_unix_ms as timestamp;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration as ServiceRegistration, ServiceSpec, handler};
use crate::store::trees;

/// Read models, versions, aliases, lineage, drift, cards (scoped by model name).
pub const READ: &str = "registry.read";
/// Register versions, move aliases, add lineage, record deployments and quality metrics, edit tags,
/// description and card text (scoped by model name).
pub const WRITE: &str = "registry.write";
/// Change a version's status (archive it) (scoped by model name).
pub const ADMIN: &str = "registry.admin";

/// `brainstem.v1.Registry`.
pub struct RegistryService {
    registry: Arc<Registry>,
    access: Arc<Access>,
}

fn one(field: &str, why: impl Into<String>) -> ServiceError {
    ServiceError::InvalidArgument(vec![FieldViolation::new(field, why)])
}

/// The scope resource of a model: `/<name>` (names are checked before this is used).
fn resource(name: &str) -> String {
    format!("/{name}")
}

fn actor_of<T>(request: &Request<T>) -> Result<(Caller, Actor), ServiceError> {
    let caller = caller(request)?.clone();
    let actor = Actor {
        principal: caller.principal.name.clone(),
        correlation_id: crate::grpc::correlation::correlation_id(request),
    };
    Ok((caller, actor))
}

fn sections(card: &CardText) -> ModelCardSections {
    ModelCardSections {
        model_details: card.model_details.clone(),
        intended_use: card.intended_use.clone(),
        factors: card.factors.clone(),
        metrics: card.metrics.clone(),
        evaluation_data: card.evaluation_data.clone(),
        training_data: card.training_data.clone(),
        quantitative_analyses: card.quantitative_analyses.clone(),
        ethical_considerations: card.ethical_considerations.clone(),
        caveats: card.caveats.clone(),
    }
}

fn card_text(card: ModelCardSections) -> CardText {
    CardText {
        model_details: card.model_details,
        intended_use: card.intended_use,
        factors: card.factors,
        metrics: card.metrics,
        evaluation_data: card.evaluation_data,
        training_data: card.training_data,
        quantitative_analyses: card.quantitative_analyses,
        ethical_considerations: card.ethical_considerations,
        caveats: card.caveats,
    }
}

fn version_proto(view: &VersionView) -> ModelVersion {
    let r = &view.record;
    ModelVersion {
        name: r.name.clone(),
        version: r.version.clone(),
        algorithm: r.algorithm.clone(),
        weights_path: r.weights.path.clone(),
        weights_sha256: r.weights.sha256.clone(),
        weights_size: r.weights.size,
        dataset_path: r
            .dataset
            .as_ref()
            .map(|d| d.path.clone())
            .unwrap_or_default(),
        dataset_sha256: r
            .dataset
            .as_ref()
            .map(|d| d.sha256.clone())
            .unwrap_or_default(),
        dataset_size: r.dataset.as_ref().map_or(0, |d| d.size),
        training_config: Some(brainstem_proto::json::json_to_struct(&r.training_config)),
        metrics: r.metrics.clone().into_iter().collect(),
        tags: r.tags.clone().into_iter().collect(),
        description: r.description.clone(),
        created_by: r.created_by.clone(),
        created_at: Some(timestamp(r.created_ms)),
        status: r.status.as_str().to_owned(),
        parents: r
            .parents
            .iter()
            .map(|p| ModelParent {
                name: p.name.clone(),
                version: p.version.clone(),
                relationship: p.relationship.as_str().to_owned(),
            })
            .collect(),
        deployments: r
            .deployments
            .iter()
            .map(|d| ModelDeployment {
                environment: d.environment.clone(),
                endpoint: d.endpoint.clone(),
                deployed_at: Some(timestamp(d.deployed_ms)),
                deployed_by: d.deployed_by.clone(),
            })
            .collect(),
        card: Some(sections(&r.card)),
        aliases: view.aliases.clone(),
    }
}

fn lineage_nodes(nodes: Vec<LineageNode>) -> Vec<ModelLineageNode> {
    nodes
        .into_iter()
        .map(|n| ModelLineageNode {
            name: n.name,
            version: n.version,
            relationship: n.relationship.as_str().to_owned(),
            depth: n.depth,
        })
        .collect()
}

fn unix_ms(at: &prost_types::Timestamp, field: &str) -> Result<u64, ServiceError> {
    if at.seconds < 0 || !(0..1_000_000_000).contains(&at.nanos) {
        return Err(one(field, "a time after 1970 is required"));
    }
    u64::try_from(at.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(u64::try_from(at.nanos / 1_000_000).unwrap_or(0)))
        .ok_or_else(|| one(field, "out of range"))
}

fn page_size(size: u32) -> Result<usize, ServiceError> {
    match size as usize {
        0 => Ok(super::DEFAULT_PAGE),
        n if n > super::MAX_PAGE => Err(one("page_size", format!("at most {}", super::MAX_PAGE))),
        n => Ok(n),
    }
}

impl RegistryService {
    /// Checks the name's syntax, then the caller's scope on it.
    fn require(&self, caller: &Caller, capability: &str, name: &str) -> Result<(), ServiceError> {
        super::validate_name(name, "name").map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
        self.access
            .require_scope(caller, capability, &resource(name))
    }
}

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let request = request.into_inner();
        self.require(&caller, WRITE, &request.name)?;
        let registration = Registration {
            name: request.name,
            version: request.version,
            algorithm: request.algorithm,
            weights_path: request.weights_path,
            weights_sha256: request.weights_sha256,
            dataset_path: request.dataset_path,
            dataset_sha256: request.dataset_sha256,
            training_config: request
                .training_config
                .as_ref()
                .map(brainstem_proto::json::struct_to_json)
                .unwrap_or_default(),
            metrics: request.metrics.into_iter().collect(),
            tags: request.tags.into_iter().collect(),
            description: request.description,
            parents: request
                .parents
                .into_iter()
                .map(|p| (p.name, p.version, p.relationship))
                .collect(),
            card: request.card.map(card_text).unwrap_or_default(),
        };
        let record = self.registry.register(&actor, registration).await?;
        Ok(Response::new(RegisterReply {
            version: record.version.clone(),
            weights_sha256: record.weights.sha256.clone(),
            weights_size: record.weights.size,
            dataset_sha256: record
                .dataset
                .as_ref()
                .map(|d| d.sha256.clone())
                .unwrap_or_default(),
        }))
    }

    async fn get(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        self.require(caller, READ, &request.name)?;
        let view = self.registry.get(&request.name, &request.version)?;
        Ok(Response::new(version_proto(&view)))
    }

    async fn get_latest(
        &self,
        request: Request<GetLatestRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        self.require(caller, READ, &request.name)?;
        let view = self.registry.get_latest(&request.name)?;
        Ok(Response::new(version_proto(&view)))
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsReply>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        let limit = page_size(request.page_size)?;
        let after = match request.page_token.as_str() {
            "" => None,
            token => {
                super::validate_name(token, "page_token")
                    .map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
                Some(token)
            }
        };
        let authorizer = &self.access.authorizer;
        let (names, next) = self.registry.list_models(after, limit, |name| {
            caller.may_on(authorizer, READ, &resource(name))
        });
        Ok(Response::new(ListModelsReply {
            names,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsReply>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        self.require(caller, READ, &request.name)?;
        let limit = page_size(request.page_size)?;
        let before = (!request.page_token.is_empty()).then_some(request.page_token.as_str());
        let (views, next) = self.registry.list_versions(&request.name, before, limit)?;
        Ok(Response::new(ListVersionsReply {
            versions: views.iter().map(version_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn set_alias(
        &self,
        request: Request<SetAliasRequest>,
    ) -> Result<Response<SetAliasReply>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let request = request.into_inner();
        self.require(&caller, WRITE, &request.name)?;
        let version = (!request.version.is_empty()).then_some(request.version.as_str());
        let previous = self
            .registry
            .set_alias(&actor, &request.name, &request.alias, version)
            .await?;
        Ok(Response::new(SetAliasReply {
            previous_version: previous.unwrap_or_default(),
        }))
    }

    async fn alias_history(
        &self,
        request: Request<AliasHistoryRequest>,
    ) -> Result<Response<AliasHistoryReply>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        self.require(caller, READ, &request.name)?;
        let at = request
            .at
            .as_ref()
            .map(|at| unix_ms(at, "at"))
            .transpose()?;
        let spans = self
            .registry
            .alias_history(&request.name, &request.alias, at)?;
        Ok(Response::new(AliasHistoryReply {
            entries: spans
                .into_iter()
                .map(|span| AliasHistoryEntry {
                    version: span.version,
                    since: Some(timestamp(span.from_ms)),
                    until: span.to_ms.map(timestamp),
                    principal: span.principal,
                    ended_by: span.ended_by.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn add_parent(
        &self,
        request: Request<AddModelParentRequest>,
    ) -> Result<Response<ModelLineageReply>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let request = request.into_inner();
        self.require(&caller, WRITE, &request.name)?;
        let parent = request.parent.unwrap_or_default();
        self.require(&caller, READ, &parent.name)?;
        self.registry
            .add_parent(
                &actor,
                &request.name,
                &request.version,
                (&parent.name, &parent.version, &parent.relationship),
            )
            .await?;
        let (ancestors, descendants) = self.registry.lineage(&request.name, &request.version, 0)?;
        Ok(Response::new(ModelLineageReply {
            ancestors: lineage_nodes(ancestors),
            descendants: lineage_nodes(descendants),
        }))
    }

    async fn lineage(
        &self,
        request: Request<ModelLineageRequest>,
    ) -> Result<Response<ModelLineageReply>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        self.require(caller, READ, &request.name)?;
        let (ancestors, descendants) =
            self.registry
                .lineage(&request.name, &request.version, request.max_depth)?;
        Ok(Response::new(ModelLineageReply {
            ancestors: lineage_nodes(ancestors),
            descendants: lineage_nodes(descendants),
        }))
    }

    async fn record_deployment(
        &self,
        request: Request<RecordDeploymentRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let request = request.into_inner();
        self.require(&caller, WRITE, &request.name)?;
        let view = self
            .registry
            .record_deployment(
                &actor,
                &request.name,
                &request.version,
                &request.environment,
                &request.endpoint,
            )
            .await?;
        Ok(Response::new(version_proto(&view)))
    }

    async fn record_quality_metric(
        &self,
        request: Request<RecordQualityMetricRequest>,
    ) -> Result<Response<RecordQualityMetricReply>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        self.require(caller, WRITE, &request.name)?;
        let at = request
            .at
            .as_ref()
            .map(|at| unix_ms(at, "at"))
            .transpose()?;
        let samples = self
            .registry
            .record_quality_metric(
                &request.name,
                &request.version,
                &request.metric,
                request.value,
                at,
            )
            .await?;
        Ok(Response::new(RecordQualityMetricReply { samples }))
    }

    async fn detect_drift(
        &self,
        request: Request<DetectDriftRequest>,
    ) -> Result<Response<DetectDriftReply>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        self.require(caller, READ, &request.name)?;
        let drift = self.registry.detect_drift(
            &request.name,
            &request.version,
            &request.metric,
            request.threshold_percent,
            request.window_seconds,
        )?;
        Ok(Response::new(DetectDriftReply {
            drifted: drift.drifted,
            baseline: drift.baseline,
            recent: drift.recent,
            relative_change_percent: drift.relative_change_percent,
            baseline_samples: drift.baseline_samples,
            recent_samples: drift.recent_samples,
            baseline_source: drift.baseline_source.to_owned(),
        }))
    }

    async fn verify_artifacts(
        &self,
        request: Request<VerifyArtifactsRequest>,
    ) -> Result<Response<VerifyArtifactsReply>, Status> {
        let caller = caller(&request)?.clone();
        let request = request.into_inner();
        self.require(&caller, READ, &request.name)?;
        let checks = self
            .registry
            .verify_artifacts(&request.name, &request.version)
            .await?;
        Ok(Response::new(VerifyArtifactsReply {
            ok: checks.iter().all(|c| c.result == "ok"),
            files: checks
                .into_iter()
                .map(|c| ModelArtifactCheck {
                    role: c.role.to_owned(),
                    path: c.path,
                    result: c.result.to_owned(),
                    expected_sha256: c.expected_sha256,
                    actual_sha256: c.actual_sha256,
                })
                .collect(),
        }))
    }

    async fn export_model_card(
        &self,
        request: Request<ExportModelCardRequest>,
    ) -> Result<Response<ExportModelCardReply>, Status> {
        let caller = caller(&request)?;
        let request = request.get_ref();
        self.require(caller, READ, &request.name)?;
        let card = self.registry.export_card(&request.name, &request.version)?;
        Ok(Response::new(ExportModelCardReply { card }))
    }

    async fn get_card_public_key(
        &self,
        _request: Request<GetCardPublicKeyRequest>,
    ) -> Result<Response<GetCardPublicKeyReply>, Status> {
        Ok(Response::new(GetCardPublicKeyReply {
            public_key: self.registry.public_key_hex().to_owned(),
        }))
    }

    async fn update_version(
        &self,
        request: Request<UpdateVersionRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let request = request.into_inner();
        self.require(&caller, WRITE, &request.name)?;
        let status = match request.status.as_deref() {
            None => None,
            Some(text) => Some(VersionStatus::parse(text).ok_or_else(|| {
                one(
                    "status",
                    "expected registered or archived (stages are aliases)",
                )
            })?),
        };
        if status.is_some() {
            self.require(&caller, ADMIN, &request.name)?;
        }
        if !request.replace_tags && !request.tags.is_empty() {
            return Err(one("tags", "set replace_tags to replace the tags").into());
        }
        let update = VersionUpdate {
            tags: request
                .replace_tags
                .then(|| request.tags.into_iter().collect()),
            description: request.description,
            status,
            card: request.card.map(card_text),
        };
        let view = self
            .registry
            .update_version(&actor, &request.name, &request.version, update)
            .await?;
        Ok(Response::new(version_proto(&view)))
    }
}

const METHODS: &[(&str, Requirement)] = &[
    (
        "/brainstem.v1.Registry/Register",
        Requirement::Scoped(WRITE),
    ),
    ("/brainstem.v1.Registry/Get", Requirement::Scoped(READ)),
    (
        "/brainstem.v1.Registry/GetLatest",
        Requirement::Scoped(READ),
    ),
    (
        "/brainstem.v1.Registry/ListModels",
        Requirement::Scoped(READ),
    ),
    (
        "/brainstem.v1.Registry/ListVersions",
        Requirement::Scoped(READ),
    ),
    (
        "/brainstem.v1.Registry/SetAlias",
        Requirement::Scoped(WRITE),
    ),
    (
        "/brainstem.v1.Registry/AliasHistory",
        Requirement::Scoped(READ),
    ),
    (
        "/brainstem.v1.Registry/AddParent",
        Requirement::Scoped(WRITE),
    ),
    ("/brainstem.v1.Registry/Lineage", Requirement::Scoped(READ)),
    (
        "/brainstem.v1.Registry/RecordDeployment",
        Requirement::Scoped(WRITE),
    ),
    (
        "/brainstem.v1.Registry/RecordQualityMetric",
        Requirement::Scoped(WRITE),
    ),
    (
        "/brainstem.v1.Registry/DetectDrift",
        Requirement::Scoped(READ),
    ),
    (
        "/brainstem.v1.Registry/VerifyArtifacts",
        Requirement::Scoped(READ),
    ),
    (
        "/brainstem.v1.Registry/ExportModelCard",
        Requirement::Scoped(READ),
    ),
    (
        "/brainstem.v1.Registry/GetCardPublicKey",
        Requirement::Scoped(READ),
    ),
    (
        "/brainstem.v1.Registry/UpdateVersion",
        Requirement::Scoped(WRITE),
    ),
];

/// `brainstem.v1.Registry`.
pub const REGISTRATION: ServiceRegistration = ServiceRegistration {
    spec: ServiceSpec {
        name: "brainstem.v1.Registry",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: METHODS,
    },
    describe: super::events::describe,
    setup: |setup| {
        let config = &setup.config.registry;
        if !config.enabled {
            return Ok(None);
        }
        let tree = setup.store.tree(trees::REGISTRY)?;
        // A master-key rotation re-seals the card-signing key before it finishes. The key set is
        // held weakly: it owns this closure, and a cycle would keep the tree (and the store) open.
        let (reseal_tree, reseal_keys) = (tree.clone(), Arc::downgrade(setup.keys));
        setup.keys.add_resealer(
            "registry card-signing key",
            Arc::new(move || {
                let (tree, keys) = (reseal_tree.clone(), reseal_keys.upgrade());
                Box::pin(async move {
                    let Some(keys) = keys else {
                        return Ok(());
                    };
                    super::card::reseal(&tree, &keys)
                        .await
                        .map(drop)
                        .map_err(|err| err.to_string())
                })
            }),
        );
        let registry = Arc::new(
            Registry::open(
                tree,
                setup.keys,
                config,
                &setup.config.state_dir,
                Arc::new(SystemClock),
            )
            .map_err(|err| StartError::Setup {
                service: "brainstem.v1.Registry",
                source: err.into(),
            })?,
        );
        // The learning actor publishes its model through the same handle.
        setup.parts.provide(registry.clone());
        setup.actors.add_worker(RegistryDrift::new(
            registry.clone(),
            config.drift_rules.clone(),
            std::time::Duration::from_secs(config.drift_check_interval_seconds),
        ));
        Ok(Some(handler(move |shared, routes, limits| {
            registry.set_audit(shared.access.audit.clone());
            registry.set_tasks(shared.access.tasks().clone());
            crate::route!(
                routes,
                limits,
                RegistryServer::new(RegistryService {
                    registry,
                    access: shared.access.clone(),
                })
            );
        })))
    },
};
