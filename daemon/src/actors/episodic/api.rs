//! `brainstem.v1.Episodic`: protobuf ↔ domain conversion for the episodic buffer.

use std::collections::BTreeMap;

use brainstem_proto::v1 as pb;
use brainstem_proto::v1::episodic_server::Episodic as EpisodicApi;
use tonic::{Request, Response, Status};

use crate::actors::episodic::{self, Episodic, ForgetTarget, NewEpisode};
use crate::error::{FieldViolation, ServiceError};
use crate::grpc::convert::{timestamp_from_ms as timestamp, timestamp_to_ms};
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};

pub struct EpisodicService {
    episodic: Episodic,
}

impl EpisodicService {
    pub fn new(episodic: Episodic) -> Self {
        EpisodicService { episodic }
    }
}

fn new_episode(prefix: &str, e: pb::Episode, out: &mut Vec<FieldViolation>) -> NewEpisode {
    let timestamp_ms = e.timestamp.as_ref().and_then(|ts| {
        timestamp_to_ms(&format!("{prefix}.timestamp"), ts)
            .map_err(|v| out.push(v))
            .ok()
    });
    NewEpisode {
        id: e.id,
        timestamp_ms,
        source: e.source,
        kind: e.kind,
        text: e.text,
        embedding: e.embedding,
        importance: e.importance,
        metadata: e.metadata.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

fn filter(f: Option<pb::EpisodeFilter>, out: &mut Vec<FieldViolation>) -> episodic::Filter {
    let Some(f) = f else {
        return episodic::Filter::default();
    };
    let mut time = |field: &str, ts: Option<prost_types::Timestamp>| {
        ts.and_then(|ts| timestamp_to_ms(field, &ts).map_err(|v| out.push(v)).ok())
    };
    let since_ms = time("filter.since", f.since);
    let until_ms = time("filter.until", f.until);
    episodic::Filter {
        since_ms,
        until_ms,
        source: (!f.source.is_empty()).then_some(f.source),
        kind: (!f.kind.is_empty()).then_some(f.kind),
    }
}

fn episode(e: &episodic::Episode) -> pb::Episode {
    let d = &e.data;
    pb::Episode {
        id: e.id(),
        timestamp: Some(timestamp(d.timestamp_ms)),
        source: d.source.clone(),
        kind: d.kind.clone(),
        text: d.text.clone(),
        embedding: e.embedding.clone(),
        importance: Some(d.importance),
        metadata: d
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn invalid_if_any(violations: Vec<FieldViolation>) -> Result<(), Status> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(violations).into())
    }
}

fn status(err: episodic::EpisodicError) -> Status {
    ServiceError::from(err).into()
}

#[tonic::async_trait]
impl EpisodicApi for EpisodicService {
    #[tracing::instrument(skip_all)]
    async fn store(
        &self,
        request: Request<pb::StoreRequest>,
    ) -> Result<Response<pb::StoreResponse>, Status> {
        let Some(e) = request.into_inner().episode else {
            return invalid_if_any(vec![FieldViolation::new("episode", "is required")])
                .map(|()| Response::new(pb::StoreResponse::default()));
        };
        let mut violations = Vec::new();
        let e = new_episode("episode", e, &mut violations);
        invalid_if_any(violations)?;
        let stored = self
            .episodic
            .store("episode", vec![e])
            .await
            .map_err(status)?;
        let (id, ts) = stored.episodes.into_iter().next().unwrap_or_default();
        Ok(Response::new(pb::StoreResponse {
            id,
            timestamp: Some(timestamp(ts)),
            evicted: stored.evicted,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn store_batch(
        &self,
        request: Request<pb::StoreBatchRequest>,
    ) -> Result<Response<pb::StoreBatchResponse>, Status> {
        let mut violations = Vec::new();
        let episodes: Vec<NewEpisode> = request
            .into_inner()
            .episodes
            .into_iter()
            .enumerate()
            .map(|(i, e)| new_episode(&format!("episodes[{i}]"), e, &mut violations))
            .collect();
        invalid_if_any(violations)?;
        let stored = self
            .episodic
            .store("episodes", episodes)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StoreBatchResponse {
            ids: stored.episodes.into_iter().map(|(id, _)| id).collect(),
            evicted: stored.evicted,
        }))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Vec::new();
        let filter = filter(request.filter, &mut violations);
        invalid_if_any(violations)?;
        let outcome = self
            .episodic
            .query(&request.embedding, request.k, &filter)
            .map_err(status)?;
        Ok(Response::new(pb::QueryResponse {
            results: outcome
                .results
                .iter()
                .map(|s| pb::ScoredEpisode {
                    episode: Some(episode(&s.episode)),
                    score: s.score,
                    similarity: s.similarity,
                    decay: s.decay,
                })
                .collect(),
            cached: outcome.cached,
        }))
    }

    async fn recent(
        &self,
        request: Request<pb::RecentRequest>,
    ) -> Result<Response<pb::RecentResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Vec::new();
        let filter = filter(request.filter, &mut violations);
        invalid_if_any(violations)?;
        let episodes = self.episodic.recent(request.n, &filter).map_err(status)?;
        Ok(Response::new(pb::RecentResponse {
            episodes: episodes.iter().map(episode).collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetEpisodeRequest>,
    ) -> Result<Response<pb::GetEpisodeResponse>, Status> {
        let e = self
            .episodic
            .get(&request.into_inner().id)
            .map_err(status)?;
        Ok(Response::new(pb::GetEpisodeResponse {
            episode: Some(episode(&e)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Vec::new();
        let target = match (request.ids.is_empty(), request.filter) {
            (false, Some(_)) => {
                violations.push(FieldViolation::new(
                    "filter",
                    "give ids or a filter, not both",
                ));
                ForgetTarget::Ids(request.ids)
            }
            (false, None) => ForgetTarget::Ids(request.ids),
            (true, Some(f)) => ForgetTarget::Filter(filter(Some(f), &mut violations)),
            (true, None) => ForgetTarget::Ids(Vec::new()),
        };
        invalid_if_any(violations)?;
        let forgotten = self.episodic.forget(target).await.map_err(status)?;
        Ok(Response::new(pb::ForgetResponse { forgotten }))
    }
}

/// The Episodic service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Episodic",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Actor,
        methods: &[
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
        ],
    },
    describe: crate::actors::episodic::events::describe,
    setup: |setup| {
        if !setup.config.episodic.enabled {
            return Ok(None);
        }
        let episodic = Episodic::register(
            setup.actors,
            &setup.config.episodic,
            setup.config.episodic.actor.clone(),
            setup.store,
        )
        .map_err(|err| crate::daemon::StartError::Setup {
            service: "brainstem.v1.Episodic",
            source: Box::new(err),
        })?;
        // The perception actors write their episodes through the same handle.
        setup.parts.provide(episodic.clone());
        Ok(Some(crate::grpc::services::handler(
            move |_, routes, limits| {
                crate::route!(
                    routes,
                    limits,
                    brainstem_proto::v1::episodic_server::EpisodicServer::new(
                        EpisodicService::new(episodic)
                    )
                )
            },
        )))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    // The conversion itself is tested in `grpc::convert`; here, that a bad time names its field.
    #[test]
    fn a_bad_episode_timestamp_is_named_by_its_field() {
        let mut violations = Vec::new();
        let episode = pb::Episode {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: -1,
            }),
            ..pb::Episode::default()
        };
        let new = new_episode("episodes[2]", episode, &mut violations);
        assert_eq!(new.timestamp_ms, None);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "episodes[2].timestamp");
    }
}
