//! `brainstem.v1.Learning`: protobuf ↔ domain conversion for the learning actor.

use brainstem_proto::v1 as pb;
use brainstem_proto::v1::learning_server::Learning as LearningApi;
use tonic::{Request, Response, Status};

use crate::actors::learning::{FeedbackEvent, Learning, LearningError, Outcome};
use crate::error::ServiceError;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};

pub struct LearningService {
    learning: Learning,
}

impl LearningService {
    pub fn new(learning: Learning) -> Self {
        LearningService { learning }
    }
}

fn status(err: LearningError) -> Status {
    ServiceError::from(err).into()
}

#[tonic::async_trait]
impl LearningApi for LearningService {
    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let request = request.into_inner();
        let outcome = self
            .learning
            .feedback(FeedbackEvent {
                features: request.features,
                label: request.label,
                event_id: request.event_id,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(match outcome {
            Outcome::Accepted { seq } => pb::FeedbackResponse {
                accepted: true,
                duplicate: false,
                sequence: seq,
            },
            Outcome::Duplicate { seq } => pb::FeedbackResponse {
                accepted: false,
                duplicate: true,
                sequence: seq,
            },
        }))
    }

    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let (score, events_learned) = self
            .learning
            .predict(&request.into_inner().features)
            .map_err(status)?;
        Ok(Response::new(pb::PredictResponse {
            score,
            events_learned,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::LearningStatsRequest>,
    ) -> Result<Response<pb::LearningStatsResponse>, Status> {
        let stats = self.learning.stats().map_err(status)?;
        Ok(Response::new(pb::LearningStatsResponse {
            events_learned: stats.events_learned,
            duplicates: stats.duplicates,
            events_accepted: stats.events_accepted,
            pending: stats.pending,
            paused: stats.paused,
            prequential_accuracy: stats.accuracy,
            accuracy_window_events: stats.accuracy_window,
            dimension: u32::try_from(stats.dimension).unwrap_or(u32::MAX),
            checkpoint_sequence: stats.checkpoint_seq,
            replayed: stats.replayed,
        }))
    }
}

/// The Learning service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Learning",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Actor,
        methods: &[
            (
                "/brainstem.v1.Learning/Feedback",
                Requirement::Capability("learning.write"),
            ),
            (
                "/brainstem.v1.Learning/Predict",
                Requirement::Capability("learning.read"),
            ),
            (
                "/brainstem.v1.Learning/GetStats",
                Requirement::Capability("learning.read"),
            ),
        ],
    },
    describe: crate::actors::learning::events::describe,
    setup: |setup| {
        if !setup.config.learning.enabled {
            return Ok(None);
        }
        let learning = Learning::register(setup.actors, &setup.config.learning, setup.store)
            .map_err(|err| crate::daemon::StartError::Setup {
                service: "brainstem.v1.Learning",
                source: Box::new(err),
            })?;
        setup.parts.provide(learning.clone());
        let config = &setup.config.learning;
        if !config.publish_as.is_empty() {
            // Validation already required an enabled registry, which is set up before us.
            let registry = setup
                .parts
                .get::<std::sync::Arc<crate::registry::Registry>>()
                .ok_or_else(|| crate::daemon::StartError::Setup {
                    service: "brainstem.v1.Learning",
                    source: "learning.publish_as needs the model registry".into(),
                })?;
            let root = setup
                .config
                .registry
                .roots(&setup.config.state_dir)
                .into_iter()
                .next()
                .ok_or_else(|| crate::daemon::StartError::Setup {
                    service: "brainstem.v1.Learning",
                    source: "learning.publish_as needs a registry artifact root".into(),
                })?;
            let dir = config
                .publish_as
                .split('/')
                .fold(root.join("learning"), |dir, segment| dir.join(segment));
            setup
                .actors
                .add_worker(super::publish::LearningPublish::new(
                    learning.clone(),
                    registry,
                    config.publish_as.clone(),
                    dir,
                    std::time::Duration::from_secs(config.publish_interval_seconds),
                ));
        }
        Ok(Some(crate::grpc::services::handler(
            move |_, routes, limits| {
                crate::route!(
                    routes,
                    limits,
                    brainstem_proto::v1::learning_server::LearningServer::new(
                        LearningService::new(learning)
                    )
                )
            },
        )))
    },
};
