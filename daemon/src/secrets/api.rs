//! `brainstem.v1.Secrets`: proto ↔ [`Secrets`], scope checks per path, values never in errors.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use brainstem_proto::v1::secrets_server::{Secrets as SecretsApi, SecretsServer};
use brainstem_proto::v1::{
    GetSecretReply, GetSecretRequest, ListSecretsReply, ListSecretsRequest, PutSecretReply,
    PutSecretRequest, RotateMasterKeyReply, RotateMasterKeyRequest, RotateSecretReply,
    RotateSecretRequest, SecretEvent, SecretMetadata, SecretMetadataRequest, SecretVersionInfo,
    SecretVersionsReply, SecretVersionsRequest, UpdateSecretMetadataRequest, WatchSecretsRequest,
};
use futures::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::wire::GetReply;
use super::{
    Actor, Generator, MetadataUpdate, PutRequest, SecretMeta, Secrets, SecretsRotation,
    SystemClock, VersionOp, VersionState, path,
};
use std::path::PathBuf;

use crate::access::Access;
use crate::access::caller::{Caller, caller};
use crate::crypto::MasterKey;
use crate::crypto::keyset::KeySet;
use crate::daemon::StartError;
use crate::error::{FieldViolation, ServiceError};
use crate::grpc::convert::timestamp_from_unix_ms as timestamp;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec, handler};
use crate::grpc::wire::{WireMethods, WireRoute};
use crate::store::trees;
use crate::tokens::TokenService;

/// Read values, list and watch paths, read metadata (scoped by path).
pub const READ: &str = "secrets.read";
/// Put, delete, undelete, rotate (scoped by path).
pub const WRITE: &str = "secrets.write";
/// Destroy, metadata writes (scoped by path) and master-key rotation (unscoped).
pub const ADMIN: &str = "secrets.admin";

/// Default and largest page of List.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `brainstem.v1.Secrets`.
pub struct SecretsService {
    secrets: Arc<Secrets>,
    keys: Arc<KeySet>,
    tokens: Arc<TokenService>,
    access: Arc<Access>,
    stop: CancellationToken,
}

fn one(field: &str, why: impl Into<String>) -> ServiceError {
    ServiceError::InvalidArgument(vec![FieldViolation::new(field, why)])
}

fn canonical(path: &str) -> Result<Cow<'_, str>, ServiceError> {
    path::canonical(path, "path").map_err(|v| ServiceError::InvalidArgument(vec![v]))
}

/// The caller and its correlation id (`x-request-id`, when it is at most 128 printable ASCII bytes).
fn actor_of<T>(request: &Request<T>) -> Result<(Caller, Actor), ServiceError> {
    let caller = caller(request)?.clone();
    let correlation_id = crate::grpc::correlation::correlation_id(request);
    let actor = Actor {
        principal: caller.principal.name.clone(),
        correlation_id,
    };
    Ok((caller, actor))
}

impl SecretsService {
    fn require(&self, caller: &Caller, capability: &str, path: &str) -> Result<(), ServiceError> {
        self.access.require_scope(caller, capability, path)
    }

    /// `Get`: the value of the requested version. Reads borrow the caller: no correlation id to
    /// parse, nothing to clone on the hot path.
    fn read(&self, request: &Request<GetSecretRequest>) -> Result<super::Value, ServiceError> {
        let caller = caller(request)?;
        let path = canonical(&request.get_ref().path)?;
        self.require(caller, READ, &path)?;
        self.secrets.get(&path, request.get_ref().version)
    }

    async fn versions(
        &self,
        request: Request<SecretVersionsRequest>,
        capability: &str,
        op: VersionOp,
    ) -> Result<Response<SecretVersionsReply>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let request = request.into_inner();
        let path = canonical(&request.path)?;
        if request.versions.contains(&0) {
            return Err(one("versions", "versions start at 1").into());
        }
        if request.versions.len() > super::MAX_VERSIONS_LIMIT as usize {
            return Err(one(
                "versions",
                format!("at most {} versions per call", super::MAX_VERSIONS_LIMIT),
            )
            .into());
        }
        self.require(&caller, capability, &path)?;
        let versions = self
            .secrets
            .set_versions(&actor, &path, &request.versions, op)
            .await?;
        Ok(Response::new(SecretVersionsReply { versions }))
    }
}

fn metadata_proto(path: &str, meta: &SecretMeta, now_ms: u64, default_max: u32) -> SecretMetadata {
    SecretMetadata {
        path: path.to_owned(),
        versions: meta
            .versions
            .iter()
            .map(|(&version, info)| {
                let state = meta.state_of(info, now_ms);
                SecretVersionInfo {
                    version,
                    deleted: matches!(state, VersionState::Deleted(_)),
                    destroyed: matches!(state, VersionState::Destroyed(_)),
                    created_at: Some(timestamp(info.created_ms)),
                    deleted_at: match state {
                        VersionState::Deleted(at) => Some(timestamp(at)),
                        _ => info.deleted_ms.map(timestamp),
                    },
                    destroyed_at: info.destroyed_ms.map(timestamp),
                    origin: info.origin.as_str().to_owned(),
                }
            })
            .collect(),
        current_version: meta.current,
        oldest_version: meta.oldest(),
        max_versions: match meta.max_versions {
            0 => default_max,
            n => n,
        },
        cas_required: meta.cas_required,
        delete_version_after_seconds: meta.delete_after_s,
        rotation_period_seconds: meta.rotation_period_s,
        generator: meta.generator.clone().unwrap_or_default(),
        next_rotation_at: meta.next_rotation_ms.map(timestamp),
        custom_metadata: meta.custom.clone().into_iter().collect(),
        created_at: Some(timestamp(meta.created_ms)),
        updated_at: Some(timestamp(meta.updated_ms)),
    }
}

#[tonic::async_trait]
impl SecretsApi for SecretsService {
    async fn put(
        &self,
        request: Request<PutSecretRequest>,
    ) -> Result<Response<PutSecretReply>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let mut request = request.into_inner();
        let value = Zeroizing::new(std::mem::take(&mut request.value));
        let mut violations = Vec::new();
        let path = path::canonical(&request.path, "path")
            .map_err(|v| violations.push(v))
            .ok();
        if value.len() > self.secrets.max_value_bytes() {
            violations.push(FieldViolation::new(
                "value",
                format!(
                    "{} bytes; a value is at most {} ([secrets] max_value_bytes)",
                    value.len(),
                    self.secrets.max_value_bytes()
                ),
            ));
        }
        let generator = match request.generator.as_str() {
            "" => None,
            text => Generator::parse(text, "generator")
                .map_err(|v| violations.push(v))
                .ok(),
        };
        if value.is_empty() && request.generator.is_empty() {
            violations.push(FieldViolation::new(
                "value",
                "required (or set generator to store a generated value)",
            ));
        }
        let Some(path) = path.filter(|_| violations.is_empty()) else {
            return Err(ServiceError::InvalidArgument(violations).into());
        };
        self.require(&caller, WRITE, &path)?;
        let written = self
            .secrets
            .put(
                &actor,
                PutRequest {
                    path: path.into_owned(),
                    value: (!value.is_empty()).then_some(value),
                    cas: request.cas,
                    rotation_period_s: request.rotation_period_seconds,
                    generator,
                },
            )
            .await?;
        Ok(Response::new(PutSecretReply {
            version: written.version,
            created_at: Some(timestamp(written.created_ms)),
        }))
    }

    /// Served through [`SecretsWire`] in the daemon; this is the same call through the generated
    /// types.
    async fn get(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretReply>, Status> {
        let value = self.read(&request)?;
        Ok(Response::new(GetSecretReply {
            value: value.value,
            version: value.version,
            created_at: Some(timestamp(value.created_ms)),
        }))
    }

    async fn list(
        &self,
        request: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsReply>, Status> {
        let (caller, _) = actor_of(&request)?;
        let request = request.into_inner();
        let prefix = path::canonical_prefix(&request.prefix, "prefix")
            .map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
        let limit = match request.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(one("page_size", format!("at most {MAX_PAGE}")).into());
            }
            n => n,
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => {
                let after = path::canonical(token, "page_token")
                    .ok()
                    .filter(|p| path::under(p, &prefix))
                    .ok_or_else(|| {
                        one(
                            "page_token",
                            "not a next_page_token of a List of this prefix",
                        )
                    })?;
                Some(after)
            }
        };
        let authorizer = &self.access.authorizer;
        let (paths, next) = self.secrets.list(&prefix, after.as_deref(), limit, |path| {
            caller.may_on(authorizer, READ, path)
        });
        Ok(Response::new(ListSecretsReply {
            paths,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<SecretVersionsRequest>,
    ) -> Result<Response<SecretVersionsReply>, Status> {
        self.versions(request, WRITE, VersionOp::Delete).await
    }

    async fn undelete(
        &self,
        request: Request<SecretVersionsRequest>,
    ) -> Result<Response<SecretVersionsReply>, Status> {
        self.versions(request, WRITE, VersionOp::Undelete).await
    }

    async fn destroy(
        &self,
        request: Request<SecretVersionsRequest>,
    ) -> Result<Response<SecretVersionsReply>, Status> {
        self.versions(request, ADMIN, VersionOp::Destroy).await
    }

    async fn metadata(
        &self,
        request: Request<SecretMetadataRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let caller = caller(&request)?;
        let path = canonical(&request.get_ref().path)?;
        self.require(caller, READ, &path)?;
        let meta = self.secrets.metadata(&path)?;
        Ok(Response::new(metadata_proto(
            &path,
            &meta,
            self.secrets.now_ms(),
            self.secrets.default_max_versions,
        )))
    }

    async fn update_metadata(
        &self,
        request: Request<UpdateSecretMetadataRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let request = request.into_inner();
        let path = canonical(&request.path)?;
        let mut violations = Vec::new();
        let generator = match request.generator.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(text) => Generator::parse(text, "generator")
                .map(|g| Some(Some(g)))
                .unwrap_or_else(|v| {
                    violations.push(v);
                    None
                }),
        };
        if !request.replace_custom_metadata && !request.custom_metadata.is_empty() {
            violations.push(FieldViolation::new(
                "custom_metadata",
                "set replace_custom_metadata to replace the custom metadata",
            ));
        }
        if !violations.is_empty() {
            return Err(ServiceError::InvalidArgument(violations).into());
        }
        self.require(&caller, ADMIN, &path)?;
        let custom: Option<BTreeMap<String, String>> = request
            .replace_custom_metadata
            .then(|| request.custom_metadata.into_iter().collect());
        let update = MetadataUpdate {
            max_versions: request.max_versions,
            cas_required: request.cas_required,
            delete_after_s: request.delete_version_after_seconds,
            rotation_period_s: request.rotation_period_seconds,
            generator,
            custom,
        };
        let meta = self.secrets.update_metadata(&actor, &path, update).await?;
        Ok(Response::new(metadata_proto(
            &path,
            &meta,
            self.secrets.now_ms(),
            self.secrets.default_max_versions,
        )))
    }

    async fn rotate_now(
        &self,
        request: Request<RotateSecretRequest>,
    ) -> Result<Response<RotateSecretReply>, Status> {
        let (caller, actor) = actor_of(&request)?;
        let request = request.into_inner();
        let path = canonical(&request.path)?;
        self.require(&caller, WRITE, &path)?;
        let result = self.secrets.rotate(&actor, &path).await;
        self.secrets.rotated_manually(result.is_ok());
        Ok(Response::new(RotateSecretReply {
            version: result?.version,
        }))
    }

    type WatchStream = BoxStream<SecretEvent>;

    async fn watch(
        &self,
        request: Request<WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (caller, _) = actor_of(&request)?;
        let prefix = path::canonical_prefix(&request.into_inner().prefix, "prefix")
            .map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
        let access = self.access.clone();
        let state = (self.secrets.subscribe(), self.stop.clone());
        let stream = futures::stream::unfold(state, move |(mut changes, stop)| {
            let prefix = prefix.clone();
            let caller = caller.clone();
            let access = access.clone();
            async move {
                loop {
                    let event = tokio::select! {
                        () = stop.cancelled() => return None,
                        change = changes.recv() => match change {
                            Ok(change) => {
                                if !path::under(&change.path, &prefix)
                                    || !caller.may_on(&access.authorizer, READ, &change.path)
                                {
                                    continue;
                                }
                                SecretEvent {
                                    path: change.path,
                                    version: change.version,
                                    kind: change.kind.as_str().to_owned(),
                                    at: Some(timestamp(change.at_ms)),
                                }
                            }
                            // Fell behind: the watcher re-reads what it follows.
                            Err(broadcast::error::RecvError::Lagged(_)) => SecretEvent {
                                kind: "resync".to_owned(),
                                ..SecretEvent::default()
                            },
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    };
                    return Some((Ok(event), (changes, stop)));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn rotate_master_key(
        &self,
        request: Request<RotateMasterKeyRequest>,
    ) -> Result<Response<RotateMasterKeyReply>, Status> {
        let (_, actor) = actor_of(&request)?;
        let file = PathBuf::from(request.into_inner().new_key_file);
        if !file.is_absolute() {
            return Err(one(
                "new_key_file",
                "an absolute path on the daemon's host is required",
            )
            .into());
        }
        // The file's own checks: exactly 32 bytes, not readable by group or others.
        let new = MasterKey::load(&file).map_err(|err| one("new_key_file", err.to_string()))?;
        let key_id = new.id().to_owned();
        let guard = self
            .keys
            .begin(new, &file)
            .await
            .map_err(ServiceError::FailedPrecondition)?;
        // Token signing keys first (one batch: all or none), then every data key; a crash in
        // between leaves everything readable with one of the two keys, and a re-run finishes.
        let signing_keys = self
            .tokens
            .reseal_keys()
            .await
            .map_err(ServiceError::from)?;
        let rewrapped = self.secrets.rewrap_all().await?;
        // Other subsystems' sealed material (the registry's card-signing key).
        self.keys
            .reseal_registered()
            .await
            .map_err(ServiceError::FailedPrecondition)?;
        self.keys.finish(guard).await.map_err(ServiceError::from)?;
        self.secrets
            .audit_master_key(&actor, &key_id, rewrapped, signing_keys);
        tracing::warn!(
            key_id = %key_id,
            new_key_file = %file.display(),
            rewrapped,
            signing_keys,
            "the master key was rotated; point [keys] master_key_file (or the master.key credential) at the new key before the next start"
        );
        Ok(Response::new(RotateMasterKeyReply {
            rewrapped,
            signing_keys: signing_keys as u64,
            key_id,
        }))
    }
}

const METHODS: &[(&str, Requirement)] = &[
    ("/brainstem.v1.Secrets/Put", Requirement::Scoped(WRITE)),
    ("/brainstem.v1.Secrets/Get", Requirement::Scoped(READ)),
    ("/brainstem.v1.Secrets/List", Requirement::Scoped(READ)),
    ("/brainstem.v1.Secrets/Delete", Requirement::Scoped(WRITE)),
    ("/brainstem.v1.Secrets/Undelete", Requirement::Scoped(WRITE)),
    ("/brainstem.v1.Secrets/Destroy", Requirement::Scoped(ADMIN)),
    ("/brainstem.v1.Secrets/Metadata", Requirement::Scoped(READ)),
    (
        "/brainstem.v1.Secrets/UpdateMetadata",
        Requirement::Scoped(ADMIN),
    ),
    (
        "/brainstem.v1.Secrets/RotateNow",
        Requirement::Scoped(WRITE),
    ),
    ("/brainstem.v1.Secrets/Watch", Requirement::Scoped(READ)),
    (
        "/brainstem.v1.Secrets/RotateMasterKey",
        Requirement::Capability(ADMIN),
    ),
];

/// `brainstem.v1.Secrets`.
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Secrets",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: METHODS,
    },
    describe: super::events::describe,
    setup: |setup| {
        let config = &setup.config.secrets;
        if !config.enabled {
            return Ok(None);
        }
        let tree = setup.store.tree(trees::SECRETS)?;
        let keys = setup.keys.clone();
        let secrets = Arc::new(
            Secrets::open(tree, setup.keys.clone(), config, Arc::new(SystemClock)).map_err(
                |err| StartError::Setup {
                    service: "brainstem.v1.Secrets",
                    source: err.into(),
                },
            )?,
        );
        setup
            .actors
            .add_worker(SecretsRotation::new(secrets.clone()));
        Ok(Some(handler(move |shared, routes, limits| {
            secrets.set_audit(shared.access.audit.clone());
            let service = Arc::new(SecretsService {
                secrets,
                keys,
                tokens: shared.tokens.clone(),
                access: shared.access.clone(),
                stop: shared.server_token.clone(),
            });
            let max = limits.max_message_bytes;
            routes.add_service(WireRoute::new(
                SecretsServer::from_arc(service.clone())
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
                SecretsWire(service),
                max,
            ));
        })))
    },
};

/// The `Secrets` method served through the hand-written codec: `Get` (its reply is written from
/// the opened value and wipes it, see [`super::wire`]).
#[derive(Clone)]
pub struct SecretsWire(Arc<SecretsService>);

impl WireMethods for SecretsWire {
    type Request = GetSecretRequest;
    type Reply = GetReply;
    type Method = GetMethod;

    fn method(&self, name: &str) -> Option<GetMethod> {
        (name == "Get").then(|| GetMethod(self.0.clone()))
    }
}

/// `Secrets.Get` for [`tonic::server::UnaryService`]; a read does not wait, so no box.
pub struct GetMethod(Arc<SecretsService>);

impl tonic::server::UnaryService<GetSecretRequest> for GetMethod {
    type Response = GetReply;
    type Future = std::future::Ready<Result<Response<GetReply>, Status>>;

    fn call(&mut self, request: Request<GetSecretRequest>) -> Self::Future {
        std::future::ready(
            self.0
                .read(&request)
                .map(|value| {
                    Response::new(GetReply {
                        value: Zeroizing::new(value.value),
                        version: value.version,
                        created_at: timestamp(value.created_ms),
                    })
                })
                .map_err(Into::into),
        )
    }
}
