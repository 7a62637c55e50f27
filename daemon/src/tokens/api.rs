//! `brainstem.v1.Tokens`: translates between protobuf and the [`crate::tokens`] domain. The layer has
//! already checked the method's capability (`tokens.issue`, …); the domain checks the rest (what the
//! issuer holds, who may revoke what).

use std::sync::Arc;

use brainstem_proto::v1::tokens_server::Tokens;
use brainstem_proto::v1::{
    AttenuateTokenReply, AttenuateTokenRequest, IssueTokenReply, IssueTokenRequest,
    ListTokensReply, ListTokensRequest, RevokeTokenReply, RevokeTokenRequest, RotateKeyReply,
    RotateKeyRequest, SigningKeyInfo, TokenInfo, VerifyTokenReply, VerifyTokenRequest,
};
use tonic::{Request, Response, Status};

use crate::access::authz::validate_capability_pattern;
use crate::access::authz::{Authorizer, Holdings};
use crate::access::caller;
use crate::error::{FieldViolation, ServiceError, truncate_for_reply};
use crate::grpc::convert::timestamp_from_secs as timestamp;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};
use crate::tokens::{AttenuateRequest, IssueRequest, Requester, TokenService};

pub struct TokensService {
    tokens: Arc<TokenService>,
    authorizer: Arc<Authorizer>,
}

impl TokensService {
    pub fn new(tokens: Arc<TokenService>, authorizer: Arc<Authorizer>) -> Self {
        TokensService { tokens, authorizer }
    }

    /// The caller's principal and its current holdings. A caller acting with a presented token
    /// holds only the token's capabilities that its grants still cover, so a token can never mint
    /// a wider one.
    fn requester<T>(&self, request: &Request<T>) -> Result<(String, Holdings), ServiceError> {
        let caller = caller(request)?;
        let principal = caller.principal.name.clone();
        let mut holdings = self
            .authorizer
            .grants()
            .holdings(&principal)
            .cloned()
            .unwrap_or_default();
        if let Some(token) = &caller.token {
            holdings.capabilities = token
                .capabilities
                .iter()
                .filter(|cap| {
                    holdings
                        .capabilities
                        .iter()
                        .any(|held| crate::access::authz::pattern_covers(held, cap))
                })
                .cloned()
                .collect();
        }
        Ok((principal, holdings))
    }
}

fn error(err: impl Into<ServiceError>) -> Status {
    err.into().into()
}

#[tonic::async_trait]
impl Tokens for TokensService {
    #[tracing::instrument(skip_all)]
    async fn issue(
        &self,
        request: Request<IssueTokenRequest>,
    ) -> Result<Response<IssueTokenReply>, Status> {
        let (principal, holdings) = self.requester(&request).map_err(error)?;
        let IssueTokenRequest {
            principal: subject,
            capabilities,
            ttl_seconds,
        } = request.into_inner();
        let issued = self
            .tokens
            .issue(
                Requester {
                    principal: &principal,
                    holdings: &holdings,
                },
                IssueRequest {
                    principal: subject,
                    capabilities,
                    ttl_seconds,
                },
            )
            .await
            .map_err(error)?;
        Ok(Response::new(IssueTokenReply {
            token: issued.token,
            id: issued.id,
            expires_at: Some(timestamp(issued.expires_at)),
        }))
    }

    async fn verify(
        &self,
        request: Request<VerifyTokenRequest>,
    ) -> Result<Response<VerifyTokenReply>, Status> {
        let VerifyTokenRequest { token, capability } = request.into_inner();
        if !capability.is_empty() {
            if let Err(message) = validate_capability_pattern(&capability) {
                return Err(error(ServiceError::InvalidArgument(vec![
                    FieldViolation::new(
                        "capability",
                        format!("{:?}: {message}", truncate_for_reply(&capability)),
                    ),
                ])));
            }
        }
        let wanted = (!capability.is_empty()).then_some(capability.as_str());
        let reply = match self.tokens.verify(&token, wanted) {
            Ok(verified) => VerifyTokenReply {
                valid: true,
                reason: String::new(),
                id: verified.id,
                principal: verified.principal,
                capabilities: verified.capabilities,
                expires_at: Some(timestamp(verified.expires_at)),
            },
            Err(rejection) => VerifyTokenReply {
                valid: false,
                reason: rejection.to_string(),
                ..VerifyTokenReply::default()
            },
        };
        Ok(Response::new(reply))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenReply>, Status> {
        let (principal, holdings) = self.requester(&request).map_err(error)?;
        let id = request.into_inner().id;
        let outcome = self
            .tokens
            .revoke(
                Requester {
                    principal: &principal,
                    holdings: &holdings,
                },
                &id,
            )
            .await
            .map_err(error)?;
        Ok(Response::new(RevokeTokenReply {
            revoked_at: Some(timestamp(outcome.revoked_at)),
            already_revoked: outcome.already_revoked,
            descendants: outcome.descendants,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensReply>, Status> {
        let (principal, holdings) = self.requester(&request).map_err(error)?;
        let ListTokensRequest {
            principal: filter,
            include_expired,
        } = request.into_inner();
        let filter = (!filter.is_empty()).then_some(filter.as_str());
        let tokens = self
            .tokens
            .list(
                Requester {
                    principal: &principal,
                    holdings: &holdings,
                },
                filter,
                include_expired,
            )
            .map_err(error)?;
        Ok(Response::new(ListTokensReply {
            tokens: tokens
                .into_iter()
                .map(|t| TokenInfo {
                    id: t.id,
                    principal: t.principal,
                    issuer: t.issuer,
                    capabilities: t.capabilities,
                    issued_at: Some(timestamp(t.issued_at)),
                    expires_at: Some(timestamp(t.expires_at)),
                    parent_ids: t.parents,
                    revoked: t.revoked,
                    expired: t.expired,
                    key_id: t.key_id,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn attenuate(
        &self,
        request: Request<AttenuateTokenRequest>,
    ) -> Result<Response<AttenuateTokenReply>, Status> {
        let principal = caller(&request).map_err(error)?.principal.name.clone();
        let AttenuateTokenRequest {
            token,
            capabilities,
            ttl_seconds,
        } = request.into_inner();
        let issued = self
            .tokens
            .attenuate(
                &principal,
                AttenuateRequest {
                    token,
                    capabilities,
                    ttl_seconds,
                },
            )
            .await
            .map_err(error)?;
        Ok(Response::new(AttenuateTokenReply {
            token: issued.token,
            id: issued.id,
            expires_at: Some(timestamp(issued.expires_at)),
            parent_id: issued.parent_id.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_key(
        &self,
        _request: Request<RotateKeyRequest>,
    ) -> Result<Response<RotateKeyReply>, Status> {
        let (key_id, keys) = self.tokens.rotate_key().await.map_err(error)?;
        Ok(Response::new(RotateKeyReply {
            key_id,
            keys: keys
                .into_iter()
                .map(|k| SigningKeyInfo {
                    key_id: k.key_id,
                    created_at: Some(timestamp(k.created_at)),
                    active: k.active,
                    retires_at: k.retires_at.map(timestamp),
                })
                .collect(),
        }))
    }
}

/// The Tokens service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Tokens",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: &[
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
        ],
    },
    describe: crate::tokens::events::describe,
    setup: crate::stateless_setup!(
        |shared| brainstem_proto::v1::tokens_server::TokensServer::new(TokensService::new(
            shared.tokens.clone(),
            shared.access.authorizer.clone()
        ))
    ),
};
